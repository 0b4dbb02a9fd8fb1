/**
 * A repository others can write (issue 16, item 4): an unprivileged user
 * (`nobody`, through setpriv) plants links in a world-writable repository;
 * root's gc and pull must not touch anything outside it, and fsck --repo must
 * name the links. A repository owned by someone else, or writable by group
 * or others, is refused unless the user says it is shared.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { patternBytes, type TarEntry } from './helpers/tar-writer.js';
import { gzLayers, writeLayout } from './helpers/oci-layout.js';
import { cliPath, isRoot } from './helpers/paths.js';
import { ok, oneLineError } from './helpers/cli.js';
import { inTemp } from './helpers/temp.js';

const T = 1700000000;
const NOBODY = 65534;
const haveSetpriv = spawnSync('setpriv', ['--version']).status === 0;
const skip = !isRoot ? 'needs root (files of another user)' : !haveSetpriv ? 'needs setpriv' : false;

/** Many objects, so that most of the 256 objects/XX prefixes are met. */
function manyFiles(seed: number, count: number): TarEntry[] {
  const out: TarEntry[] = [{ path: './', type: 'dir', mtime: T }, { path: 'data/', type: 'dir', mtime: T }];
  for (let i = 0; i < count; i++) out.push({ path: `data/f${i}`, data: patternBytes(100 + i, seed + i), mtime: T });
  return out;
}

/** `cfs` as root, with `env` added. */
function cfsEnv(env: Record<string, string>, ...args: string[]): SpawnSyncReturns<string> {
  return spawnSync(cliPath('cfs'), args, { encoding: 'utf8', env: { ...process.env, ...env } });
}

/** A shell command as nobody, no groups. */
function asNobody(script: string): void {
  const r = spawnSync('setpriv', ['--reuid', String(NOBODY), '--regid', String(NOBODY), '--clear-groups', 'sh', '-ec', script], { encoding: 'utf8' });
  assert.equal(r.status, 0, `as nobody: ${script}\n${r.stderr}`);
}


/** Every directory of the repository world-writable (files keep their modes), as a careless shared setup leaves it. */
function openToAll(dir: string): void {
  chmodSync(dir, 0o777);
  for (const e of readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) openToAll(join(dir, e.name));
}

/** Files (recursively) under `dir`, relative. */
function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' }).sort();
}

/** A scratch directory nobody may reach into (the repository inside is made shared or not by each test). */
const withTemp = (fn: (dir: string) => Promise<void> | void) => inTemp('trust', fn, 0o755);

const prefixes = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

test('links planted by another user in a shared repository: gc removes the links, never what they point at; fsck --repo names them', { skip }, withTemp((tmp) => {
  const layout = join(tmp, 'layout');
  const repo = join(tmp, 'repo');
  writeLayout(layout, 'one', gzLayers(manyFiles(1, 40)));
  ok(cfsEnv({}, 'pull', '--repo', repo, '--quiet', `oci:${layout}:one`, 'one'));
  ok(cfsEnv({}, 'rm', '--repo', repo, 'one')); // everything is garbage now
  openToAll(repo);
  const shared = { CFS_SHARED_REPOS: repo };

  // DIR: files that look like what gc removes; nobody links every objects/XX not yet there to it.
  const outside = join(tmp, 'outside');
  mkdirSync(outside);
  writeFileSync(join(outside, 'victim'), 'precious\n');
  writeFileSync(join(outside, 'c'.repeat(62)), 'precious too\n');
  chmodSync(outside, 0o755);
  const free = prefixes.filter((p) => !existsSync(join(repo, 'objects', p)));
  assert.ok(free.length > 0);
  asNobody(free.map((p) => `ln -s ${outside} ${repo}/objects/${p}`).join('\n'));

  const fsck = cfsEnv(shared, 'fsck', '--repo', repo);
  assert.equal(fsck.status, 1, `fsck reports the links: ${fsck.stdout}${fsck.stderr}`);
  assert.match(fsck.stdout, new RegExp(`^objects/${free[0]}: a symbolic link`, "m"));

  const gc = cfsEnv(shared, 'gc', '--repo', repo);
  assert.equal(gc.status, 0, gc.stderr);
  assert.deepEqual(filesUnder(outside), ['c'.repeat(62), 'victim'], 'nothing outside the repository removed');
  assert.match(gc.stdout, new RegExp(`${free.length} symbolic links`));
  for (const p of free) assert.ok(!existsSync(join(repo, 'objects', p)), `the link objects/${p} itself is gone`);

  // tmp -> DIR2 (a tree): gc stops before removing anything, naming it; fsck names it.
  const outside2 = join(tmp, 'outside2');
  mkdirSync(join(outside2, 'sub'), { recursive: true });
  writeFileSync(join(outside2, 'sub', 'file'), 'precious\n');
  writeFileSync(join(outside2, '.image.1.x.0'), 'precious\n');
  chmodSync(outside2, 0o755);
  asNobody(`rmdir ${repo}/tmp\nln -s ${outside2} ${repo}/tmp`);
  oneLineError(cfsEnv(shared, 'gc', '--repo', repo), new RegExp(`${repo}/tmp is a symbolic link, not a directory`));
  assert.deepEqual(filesUnder(outside2), ['.image.1.x.0', 'sub', 'sub/file'], 'nothing outside the repository removed');
  const fsck2 = cfsEnv(shared, 'fsck', '--repo', repo);
  assert.equal(fsck2.status, 1);
  assert.match(fsck2.stdout, /^tmp\/: a symbolic link/m);
  assert.ok(readFileSync(join(outside, 'victim'), 'utf8') === 'precious\n');
}));

test('a pull into a shared repository never writes through a planted objects/XX link', { skip }, withTemp((tmp) => {
  const layout = join(tmp, 'layout');
  const repo = join(tmp, 'repo');
  writeLayout(layout, 'one', gzLayers([{ path: './', type: 'dir', mtime: T }, { path: 'a', data: patternBytes(1000, 9), mtime: T }]));
  writeLayout(layout, 'two', gzLayers(manyFiles(50, 60)));
  ok(cfsEnv({}, 'pull', '--repo', repo, '--quiet', `oci:${layout}:one`, 'one'));
  openToAll(repo);
  const outside = join(tmp, 'outside');
  mkdirSync(outside);
  chmodSync(outside, 0o777);
  const free = prefixes.filter((p) => !existsSync(join(repo, 'objects', p)));
  asNobody(free.map((p) => `ln -s ${outside} ${repo}/objects/${p}`).join('\n'));

  const r = cfsEnv({ CFS_SHARED_REPOS: repo }, 'pull', '--repo', repo, '--quiet', `oci:${layout}:two`, 'two');
  assert.deepEqual(filesUnder(outside), [], 'nothing written outside the repository');
  oneLineError(r, /objects\/[0-9a-f]{2}: it is a symbolic link, not a directory/);
  assert.ok(!existsSync(join(repo, 'names', 'two')), 'no name');
}));

test('a repository owned by another user, or writable by group or others, is refused unless said to be shared', { skip }, withTemp((tmp) => {
  const layout = join(tmp, 'layout');
  const repo = join(tmp, 'repo');
  writeLayout(layout, 'one', gzLayers([{ path: './', type: 'dir', mtime: T }, { path: 'a', data: patternBytes(1000, 3), mtime: T }]));
  ok(cfsEnv({}, 'pull', '--repo', repo, '--quiet', `oci:${layout}:one`, 'one'));

  // Owned by root, mode 0755: root and others may use it (others read it).
  assert.match(ok(cfsEnv({}, 'images', '--repo', repo)), /^one\s/m);
  const asUser = spawnSync('setpriv', ['--reuid', String(NOBODY), '--regid', String(NOBODY), '--clear-groups', cliPath('cfs'), 'images', '--repo', repo], { encoding: 'utf8' });
  assert.equal(asUser.status, 0, asUser.stderr);
  assert.match(asUser.stdout, /^one\s/m);

  // Writable by others.
  chmodSync(repo, 0o777);
  for (const cmd of [['gc'], ['images'], ['pull', '--quiet', `oci:${layout}:one`, 'again'], ['fsck']]) {
    const args = cmd[0] === 'fsck' ? ['fsck', '--repo', repo] : [cmd[0], '--repo', repo, ...cmd.slice(1)];
    oneLineError(cfsEnv({}, ...args), new RegExp(`refusing repository ${repo}: its directory is writable by group and others \\(mode 0777\\).*--shared.*CFS_SHARED_REPOS=${repo}`));
  }
  assert.ok(!existsSync(join(repo, 'names', 'again')));
  // The way out: --shared, or the variable (naming it, or '*').
  assert.match(ok(cfsEnv({}, 'gc', '--repo', repo, '--shared')), /removed 0 images/);
  assert.match(ok(cfsEnv({ CFS_SHARED_REPOS: `/elsewhere:${repo}` }, 'images', '--repo', repo)), /^one\s/m);
  assert.match(ok(cfsEnv({ CFS_SHARED_REPOS: '*' }, 'fsck', '--repo', repo)), /clean/);
  chmodSync(repo, 0o755);

  // A directory inside writable by its group.
  chmodSync(join(repo, 'objects'), 0o775);
  oneLineError(cfsEnv({}, 'gc', '--repo', repo), /refusing repository .*: objects\/ is writable by its group \(mode 0775\)/);
  chmodSync(join(repo, 'objects'), 0o755);

  // Owned by nobody.
  chownSync(repo, NOBODY, NOBODY);
  oneLineError(cfsEnv({}, 'images', '--repo', repo), /refusing repository .*: its directory is owned by uid 65534( \(nobody\))?, not by you or root/);
  oneLineError(cfsEnv({}, 'rm', '--repo', repo, 'one'), /owned by uid 65534/);
  assert.ok(existsSync(join(repo, 'names', 'one')));
  assert.match(ok(cfsEnv({}, 'images', '--repo', repo, '--shared')), /^one\s/m);

  // A new repository made under a umask that lets the group write (002) is 0755 (mkdir's 0755 less the umask), and accepted.
  const fresh = join(tmp, 'fresh');
  const r = spawnSync('sh', ['-c', `umask 002; exec "$0" "$@"`, cliPath('cfs'), 'pull', '--repo', fresh, '--quiet', `oci:${layout}:one`, 'one'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(statSync(fresh).mode & 0o777, 0o755);
  assert.equal(statSync(join(fresh, 'objects')).mode & 0o777, 0o755);
  ok(cfsEnv({}, 'gc', '--repo', fresh));
}));

test('fsck --repo reports a foreign file and a FIFO where a record should be, without blocking on it', { skip }, withTemp((tmp) => {
  const layout = join(tmp, 'layout');
  const repo = join(tmp, 'repo');
  writeLayout(layout, 'one', gzLayers([{ path: './', type: 'dir', mtime: T }, { path: 'a', data: patternBytes(1000, 4), mtime: T }]));
  ok(cfsEnv({}, 'pull', '--repo', repo, '--quiet', `oci:${layout}:one`, 'one'));
  const blob = readdirSync(join(repo, 'blobs/sha256'))[0];
  chownSync(join(repo, 'blobs/sha256', blob), NOBODY, NOBODY);
  assert.equal(spawnSync('mkfifo', [join(repo, 'names', 'fifo')]).status, 0);
  const r = spawnSync(cliPath('cfs'), ['fsck', '--repo', repo], { encoding: 'utf8', timeout: 20_000 });
  assert.equal(r.status, 1, `${r.stdout}${r.stderr}`);
  assert.match(r.stdout, new RegExp(`^blobs/sha256/${blob}: owned by uid 65534, not by the repository's owner \\(uid 0\\) or root`, 'm'));
  assert.match(r.stdout, /^names\/fifo: a FIFO, not a regular file/m);
  // gc refuses what it cannot read as a name, without blocking either.
  const gc = spawnSync(cliPath('cfs'), ['gc', '--repo', repo], { encoding: 'utf8', timeout: 20_000 });
  oneLineError(gc, /names\/fifo is a FIFO, not a regular file/);
}));

test('fsck --basedir --repair never removes through a planted XX link in the store', withTemp((tmp) => {
  const src = join(tmp, 'src');
  const store = join(tmp, 'store');
  mkdirSync(src);
  writeFileSync(join(src, 'file'), patternBytes(5000, 7));
  const image = join(tmp, 'image.cfs');
  ok(cfsEnv({}, 'mkcomposefs', `--digest-store=${store}`, src, image));
  const xx = readdirSync(store).find((d) => /^[0-9a-f]{2}$/.test(d))!;
  const name = readdirSync(join(store, xx))[0];
  // The store's XX moved away and replaced by a link to a directory holding a file of that name, not the object.
  const outside = join(tmp, 'outside');
  mkdirSync(outside);
  writeFileSync(join(outside, name), 'precious, and not the object\n');
  rmSync(join(store, xx), { recursive: true });
  symlinkSync(outside, join(store, xx));
  const r = cfsEnv({}, 'fsck', `--basedir=${store}`, '--repair', image);
  assert.equal(r.status, 1, `${r.stdout}${r.stderr}`);
  assert.ok(existsSync(join(outside, name)), 'the file outside the store is still there');
  assert.match(r.stdout, new RegExp(`its directory '${xx}' is a symbolic link`));
  assert.doesNotMatch(r.stdout, /removed \(/);
}));

test('mkcomposefs --digest-store never writes through a planted XX link in the store', withTemp((tmp) => {
  const src = join(tmp, 'src');
  const store = join(tmp, 'store');
  const outside = join(tmp, 'outside');
  mkdirSync(src);
  mkdirSync(store);
  mkdirSync(outside);
  for (let i = 0; i < 20; i++) writeFileSync(join(src, `f${i}`), patternBytes(1000 + i, i));
  for (const p of prefixes) symlinkSync(outside, join(store, p));
  for (const threads of ['1', '4']) {
    const r = spawnSync(cliPath('mkcomposefs'), [`--threads=${threads}`, `--digest-store=${store}`, src, join(tmp, 'image.cfs')], { encoding: 'utf8' });
    assert.deepEqual(filesUnder(outside), [], 'nothing written outside the store');
    assert.notEqual(r.status, 0);
    assert.match(r.stderr.trim(), /^mkcomposefs: .*store\/[0-9a-f]{2}: it is a symbolic link, not a directory/);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.ok(!existsSync(join(tmp, 'image.cfs')));
  }
}));
