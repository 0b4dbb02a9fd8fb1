// Writes dist/src/cli/bundle.cache, V8's code cache for the CLI bundle (see
// bin/load.js): compiles the bundle, runs what users run most (an image build
// from the sample dump, then a dump of that image) so the functions they use
// are compiled too, and saves the result (what it saves, measured:
// bin/load.js); then a signature check on a key made on the spot. Run by scripts/bundle.mjs with its standard output discarded.
'use strict';
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { loadBundle, cachePath, loadVendor, vendorCachePath } = require('../bin/load.js');

async function main() {
  const { cli, script, key } = loadBundle();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cfs-train-'));
  try {
    const image = path.join(dir, 'sample.img');
    await cli.main('mkcomposefs', ['--from-file', path.join(__dirname, '..', 'samples', 'demo.dump'), image]);
    await cli.main('cfs', ['info', 'dump', image]);
    await cli.main('cfs', ['info', 'ls', image]);
    // A pull with a signedBy policy: OpenPGP.js, the policy and registries.d compiled too.
    await cli.trainSignatureCheck();
    if (process.exitCode) throw new Error(`a training command failed (exit ${process.exitCode})`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  fs.writeFileSync(cachePath, Buffer.concat([key, script.createCachedData()]));
  // The signature libraries' bundle, loaded by the check above, with what it compiled.
  const vendor = loadVendor();
  fs.writeFileSync(vendorCachePath, Buffer.concat([vendor.key, vendor.script.createCachedData()]));
}

main().catch((err) => {
  process.stderr.write(`train-code-cache: ${err.message}\n`);
  process.exitCode = 1;
});
