#!/usr/bin/env node
// Bundles the CLI into one CommonJS file, dist/src/cli/bundle.cjs, which the
// executables in bin/ load. Resolving, reading and linking some twenty ES
// modules costs about 10 ms on every command, a large share of a 50 ms
// `cfs info --help`; one CommonJS file skips the ES module loader altogether.
// Code is still only run when a command needs it: each command module stays
// behind a lazy initialiser, and V8 compiles function bodies on first call.
import { build } from 'esbuild';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
await build({
  absWorkingDir: root,
  entryPoints: ['src/cli/main.ts'],
  outfile: 'dist/src/cli/bundle.cjs',
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  // koffi loads its native binary by path: it stays a package of its own.
  external: ['koffi', '@koromix/*'],
  // The bundle sits where main.js does, so paths made from import.meta.url
  // (the repository root, the store's worker) point where they did.
  define: { 'import.meta.url': '__cfsModuleUrl' },
  banner: { js: "const __cfsModuleUrl = require('node:url').pathToFileURL(__filename).href;" },
  logLevel: 'warning',
});
