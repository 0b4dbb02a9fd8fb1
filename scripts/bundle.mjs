#!/usr/bin/env node
// Bundles the CLI into one CommonJS file, dist/src/cli/bundle.cjs, which the
// executables in bin/ load: one CommonJS file skips the ES module loader
// (what that saves, measured: bin/load.js). Code is still only run when a
// command needs it: each command module stays behind a lazy initialiser, and
// V8 compiles function bodies on first call.
import { build } from 'esbuild';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
// A cache made for the previous bundle must never meet the new one.
rmSync(join(root, 'dist', 'src', 'cli', 'bundle.cache'), { force: true });
rmSync(join(root, 'dist', 'src', 'cli', 'vendor.cache'), { force: true });
const outfile = join(root, 'dist', 'src', 'cli', 'bundle.cjs');
const vendorFile = join(root, 'dist', 'src', 'cli', 'vendor.cjs');

// The libraries only signature work needs go to a bundle of their own
// (src/cli/vendor.ts), which bin/load.js loads when one is first imported:
// in the CLI bundle they would be parsed by every command (measured: `cfs
// info dump` of the sample 36 -> 46 ms with OpenPGP.js inside). Each import
// of one becomes a lookup in that bundle.
const vendored = { openpgp: 'openpgp', yaml: 'yaml', '@noble/ciphers/salsa.js': 'nobleSalsa' };
const vendorPlugin = {
  name: 'vendor',
  setup(b) {
    b.onResolve({ filter: /^(openpgp|yaml|@noble\/ciphers\/salsa\.js)$/ }, (args) => ({ path: args.path, namespace: 'vendor' }));
    b.onLoad({ filter: /.*/, namespace: 'vendor' }, (args) => ({
      // A path esbuild cannot follow, so bin/load.js stays outside the bundle (which sits in dist/src/cli).
      contents: `const load = require(require('node:path').join(__dirname, '..', '..', '..', 'bin', 'load.js'));\nmodule.exports = load.loadVendor().exports[${JSON.stringify(vendored[args.path])}];\n`,
      loader: 'js',
    }));
  },
};
const vendorBuild = await build({
  absWorkingDir: root,
  entryPoints: ['src/cli/vendor.ts'],
  write: false,
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  // OpenPGP.js makes a require from import.meta.url, as the CLI's own modules do (below).
  define: { 'import.meta.url': '__cfsModuleUrl' },
  banner: { js: "const __cfsModuleUrl = require('node:url').pathToFileURL(__filename).href;" },
  logLevel: 'warning',
});
{
  const body = vendorBuild.outputFiles[0].contents;
  const id = `// composefs-ts vendor bundle sha256:${createHash('sha256').update(body).digest('hex')}\n`;
  mkdirSync(dirname(vendorFile), { recursive: true });
  writeFileSync(`${vendorFile}.tmp`, Buffer.concat([Buffer.from(id), body]));
  renameSync(`${vendorFile}.tmp`, vendorFile);
}

const { outputFiles } = await build({
  absWorkingDir: root,
  entryPoints: ['src/cli/main.ts'],
  outfile,
  write: false,
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  // koffi loads its native binary by path: it stays a package of its own.
  external: ['koffi', '@koromix/*'],
  plugins: [vendorPlugin],
  // The bundle sits where main.js does, so paths made from import.meta.url
  // (the repository root, the store's worker) point where they did.
  define: { 'import.meta.url': '__cfsModuleUrl' },
  banner: { js: "const __cfsModuleUrl = require('node:url').pathToFileURL(__filename).href;" },
  logLevel: 'warning',
});
// The first line names the bundle by its content: bin/load.js uses a code
// cache only when it was made for this very line. (A file's size and mtime
// would not do: npm pack gives every file the same mtime.)
const body = outputFiles[0].contents;
const id = `// composefs-ts CLI bundle sha256:${createHash('sha256').update(body).digest('hex')}\n`;
mkdirSync(dirname(outfile), { recursive: true });
writeFileSync(`${outfile}.tmp`, Buffer.concat([Buffer.from(id), body]));
renameSync(`${outfile}.tmp`, outfile);

// V8's code cache for the bundle (bin/load.js, with what it saves). Without it
// the CLI still works, only slower to start.
const train = spawnSync(process.execPath, [join(root, 'scripts', 'train-code-cache.cjs')], { stdio: ['ignore', 'ignore', 'inherit'] });
if (train.status !== 0) process.stderr.write('bundle: no code cache made; the CLI compiles from source\n');
