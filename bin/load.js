// The CLI from its bundle (dist/src/cli/bundle.cjs, made by scripts/bundle.mjs),
// or from the compiled modules when only `tsc` has run.
//
// The bundle is compiled with V8's code cache (dist/src/cli/bundle.cache,
// made at build time by scripts/train-code-cache.cjs) when there is one for
// this very bundle: parsing 270 KB of JavaScript and compiling the functions
// a build or a dump runs costs 10-15 ms per command otherwise. (Node 22 has
// this built in as module.enableCompileCache(); Node 20 does not.)
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const bundlePath = path.join(__dirname, '..', 'dist', 'src', 'cli', 'bundle.cjs');
const cachePath = path.join(__dirname, '..', 'dist', 'src', 'cli', 'bundle.cache');

/** Identifies the bundle a cache was made for: V8 itself checks little more than the source's length. */
function bundleKey(st) {
  return `${st.size}:${st.mtimeMs}\n`;
}

/** The bundle's exports, and the compiled script (for writing a cache). */
function loadBundle() {
  const vm = require('node:vm');
  const { createRequire, wrap } = require('node:module');
  const source = fs.readFileSync(bundlePath, 'utf8');
  const key = Buffer.from(bundleKey(fs.statSync(bundlePath)));
  let cachedData;
  try {
    const c = fs.readFileSync(cachePath);
    if (c.subarray(0, key.length).equals(key)) cachedData = c.subarray(key.length);
  } catch {
    // no cache: compile from source
  }
  const script = new vm.Script(wrap(source), { filename: bundlePath, cachedData });
  const module = { exports: {} };
  script.runInThisContext()(module.exports, createRequire(bundlePath), module, bundlePath, path.dirname(bundlePath));
  return { cli: module.exports, script, key };
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
