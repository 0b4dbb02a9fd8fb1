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
const outfile = join(root, 'dist', 'src', 'cli', 'bundle.cjs');
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
