// The CLI from its bundle (dist/src/cli/bundle.cjs, made by scripts/bundle.mjs),
// or from the compiled modules when only `tsc` has run.
//
// Every executable starts here, so the three start-up tricks are explained
// here, each with what it saves (medians of 30-40 runs side by side, Node 20,
// 2 cores; `cfs info dump` of the 16 KiB sample image takes 31.7 ms with all
// three):
//
// - Node without NODE_EXTRA_CA_CERTS: the shebang of every bin/*.js
//   (`env -S -u NODE_EXTRA_CA_CERTS node`) and the mount.composefs helper
//   script (src/cli/install-helper.ts). When it is set, Node 20 builds its
//   whole root store and parses the extra bundle before running anything.
//   Only `cfs pull` makes TLS connections, and it trusts what skopeo does
//   (the system store, --cert-dir: src/oci/registry/tls.ts). `node -e 0`:
//   52.2 -> 22.1 ms; `cfs info dump` of the sample: 60.7 -> 30.8 ms.
// - One CommonJS bundle instead of the ES modules (scripts/bundle.mjs): no
//   resolving and linking of some twenty modules by the ES module loader.
//   `cfs info dump` of the sample: 45.1 -> 40.0 ms; `mkcomposefs` of cs9:
//   130.7 -> 114.9 ms (both without the code cache).
// - V8's code cache for the bundle (dist/src/cli/bundle.cache, made at build
//   time by scripts/train-code-cache.cjs, used below when it was made for
//   this very bundle): no parsing of 590 KB of JavaScript nor compiling of
//   the functions a build or a dump runs. `cfs info dump` of the sample:
//   40.4 -> 31.7 ms; `mkcomposefs` of cs9: 107.5 -> 102.2 ms. (Node 22 has
//   this built in as module.enableCompileCache(); Node 20 does not.)
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const bundlePath = path.join(__dirname, '..', 'dist', 'src', 'cli', 'bundle.cjs');
const cachePath = path.join(__dirname, '..', 'dist', 'src', 'cli', 'bundle.cache');
const vendorPath = path.join(__dirname, '..', 'dist', 'src', 'cli', 'vendor.cjs');
const vendorCachePath = path.join(__dirname, '..', 'dist', 'src', 'cli', 'vendor.cache');

/**
 * Identifies the bundle a cache was made for (V8 itself checks little more
 * than the source's length): its first line, which scripts/bundle.mjs makes
 * from a digest of the rest, so it survives npm pack and install.
 */
function bundleKey(source) {
  return source.slice(0, source.indexOf('\n') + 1);
}

/**
 * A bundle's exports, and its compiled script (for writing a cache): run
 * from its V8 code cache when the cache was made for this very bundle.
 */
function loadScript(file, cacheFile) {
  const vm = require('node:vm');
  const { createRequire, wrap } = require('node:module');
  const source = fs.readFileSync(file, 'utf8');
  const key = Buffer.from(bundleKey(source));
  let cachedData;
  try {
    const c = fs.readFileSync(cacheFile);
    if (c.subarray(0, key.length).equals(key)) cachedData = c.subarray(key.length);
  } catch {
    // no cache: compile from source
  }
  const script = new vm.Script(wrap(source), { filename: file, cachedData });
  const module = { exports: {} };
  script.runInThisContext()(module.exports, createRequire(file), module, file, path.dirname(file));
  return { exports: module.exports, script, key };
}

/** The CLI bundle's exports, and the compiled script (for writing a cache). */
function loadBundle() {
  const { exports, script, key } = loadScript(bundlePath, cachePath);
  return { cli: exports, script, key };
}

/**
 * The npm libraries only signature work needs (OpenPGP.js, yaml,
 * @noble/ciphers), in a bundle of their own with a cache of its own
 * (scripts/bundle.mjs): loaded when a command first needs one, so that
 * every other command starts without parsing their 1.3 MB.
 */
let vendor;
function loadVendor() {
  vendor ??= loadScript(vendorPath, vendorCachePath);
  return vendor;
}

function run(prog) {
  const args = process.argv.slice(2);
  let cli;
  try {
    cli = loadBundle().cli;
  } catch (err) {
    if (err.code !== 'ENOENT' || err.path !== bundlePath) throw err;
    import('../dist/src/cli/main.js').then((m) => m.main(prog, args));
    return;
  }
  cli.main(prog, args);
}

module.exports = run;
module.exports.loadBundle = loadBundle;
module.exports.cachePath = cachePath;
module.exports.loadVendor = loadVendor;
module.exports.vendorCachePath = vendorCachePath;
