#!/usr/bin/env node
// Makes a fresh clone runnable: installs npm dependencies when they are missing,
// compiles TypeScript (and bundles the CLI) when a source is newer than its
// output and, with --test-tools, installs the Debian tools the tests check
// against (as root).
//
// npm runs it as the package's `prepare` (after `npm install` in a clone, for
// a git install, and for `npm install -g ./clone`, which links the folder and
// installs none of its dependencies: then they are installed here) and
// `prepack` (before `npm pack`/`publish`), with --package: the bundle is
// required, since a package ships it. --clean removes dist/src first, so a
// packed package holds nothing compiled from a source that no longer exists.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const log = (msg) => process.stderr.write(`ensure: ${msg}\n`);

function run(cmd, args, env = process.env) {
  const r = spawnSync(cmd, args, { cwd: root, env, stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.status !== 0) {
    log(`${cmd} ${args.join(' ')} failed (exit ${r.status ?? r.signal})`);
    process.exit(1);
  }
}

function newestMtime(dir) {
  let newest = 0;
  if (!existsSync(dir)) return 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    if (entry.isDirectory()) newest = Math.max(newest, newestMtime(p));
    else if (entry.name.endsWith('.ts')) newest = Math.max(newest, statSync(p).mtimeMs);
  }
  return newest;
}

const forPackage = process.argv.includes('--package');
if (['typescript', 'koffi', 'fzstd', 'esbuild'].some((pkg) => !existsSync(join(root, 'node_modules', pkg)))) {
  log('installing npm dependencies');
  // Inside an npm command (a script of `npm install -g ./clone`) its settings come as npm_config_*: this
  // install is of this folder, with the dev dependencies the build needs, whatever the outer one was.
  const outer = ['global', 'location', 'prefix', 'omit', 'include', 'production', 'only', 'install_links', 'save', 'dry_run'];
  const outerSetting = (k) => /^npm_config_/i.test(k) && outer.includes(k.slice('npm_config_'.length).toLowerCase());
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !outerSetting(k)));
  run('npm', existsSync(join(root, 'package-lock.json')) ? ['ci', '--no-audit', '--no-fund'] : ['install', '--no-audit', '--no-fund'], env);
}

const stamp = join(root, 'dist', '.build-stamp');
if (process.argv.includes('--clean')) {
  rmSync(join(root, 'dist', 'src'), { recursive: true, force: true });
  rmSync(stamp, { force: true });
}
const sourceTime = Math.max(...['src', 'test', 'bench'].map((d) => newestMtime(join(root, d))), statSync(join(root, 'tsconfig.json')).mtimeMs);
if (!existsSync(stamp) || statSync(stamp).mtimeMs < sourceTime) {
  log('compiling TypeScript');
  run(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', root]);
  // The executables fall back to the compiled modules without the bundle: slower to start, nothing else.
  const bundled = spawnSync(process.execPath, [join(root, 'scripts', 'bundle.mjs')], { cwd: root, stdio: ['ignore', 'inherit', 'inherit'] });
  if (bundled.status !== 0) {
    if (forPackage) {
      log('bundling the CLI failed');
      process.exit(1);
    }
    log('bundling the CLI failed: the executables load the compiled modules instead');
  }
  run('touch', [stamp]);
}

if (process.argv.includes('--test-tools')) {
  const wanted = { 'fsck.erofs': 'erofs-utils', script: 'bsdutils', fsverity: 'fsverity', getfattr: 'attr', '/usr/bin/time': 'time', 'docker-registry': 'docker-registry', skopeo: 'skopeo', umoci: 'umoci', openssl: 'openssl', gpg: 'gnupg', zstd: 'zstd', fusermount3: 'fuse3', squashfuse: 'squashfuse', mksquashfs: 'squashfs-tools' };
  const has = (tool) => spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status === 0;
  const missing = Object.entries(wanted).filter(([tool]) => !has(tool)).map(([, pkg]) => pkg);
  if (missing.length > 0) {
    if (process.getuid?.() === 0 && has('apt-get')) {
      log(`installing ${missing.join(', ')} from Debian`);
      const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
      execFileSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env });
      execFileSync('apt-get', ['install', '-y', '-qq', ...missing], { stdio: 'inherit', env });
    } else {
      log(`missing ${missing.join(', ')}: tests that need them will be skipped`);
    }
  }
}
