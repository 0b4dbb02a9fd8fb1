/**
 * The repository as a user drives it: `cfs pull` from an OCI layout and from
 * a real registry, `images`, `inspect`, `tag`, `rm`, `gc`, `fsck --repo`,
 * mounting by name (as root), and hostile layers refused with one line,
 * no name created and a repository that stays consistent.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzip, makeTar, patternBytes, type TarEntry } from './helpers/tar-writer.js';
import { gzLayer, gzLayers, writeLayout } from './helpers/oci-layout.js';
import { cliPath, isRoot } from './helpers/paths.js';
import { cfs, ok, oneLineError } from './helpers/cli.js';
import { haveRegistry, makeCertificates, NO_REGISTRY, push, startRegistry } from './helpers/registry.js';
import { inTemp } from './helpers/temp.js';

const T = 1700000000;


const base: TarEntry[] = [
  { path: './', type: 'dir', mtime: T },
  { path: 'etc/', type: 'dir', mtime: T },
  { path: 'etc/os-release', data: 'ID=test\n', mtime: T },
  { path: 'usr/', type: 'dir', mtime: T },
  { path: 'usr/big', data: patternBytes(100_000, 1), mtime: T },
];
const second: TarEntry[] = [{ path: 'usr/second', data: patternBytes(50_000, 2), mtime: T }, { path: 'etc/.wh.os-release' }];
const third: TarEntry[] = [{ path: 'usr/third', data: patternBytes(70_000, 3), mtime: T }];

function objectCount(repo: string): number {
  return readdirSync(join(repo, 'objects')).filter((d) => /^[0-9a-f]{2}$/.test(d)).reduce((n, d) => n + readdirSync(join(repo, 'objects', d)).length, 0);
}

test('pull, images, inspect, tag, rm, gc and fsck --repo from the command line', inTemp('repo', (tmp) => {
  const layout = join(tmp, 'layout');
  const repo = join(tmp, 'repo');
  writeLayout(layout, 'one', gzLayers(base, second), { config: { Cmd: ['/bin/true'], Env: ['A=1'], Labels: { l: 'v' } } });
  writeLayout(layout, 'two', gzLayers(base, second, third));
  const digest = ok(cfs('pull', '--repo', repo, `oci:${layout}:one`, 'test/one:1')).trim();
  assert.match(digest, /^[0-9a-f]{64}$/);
  assert.ok(existsSync(join(repo, 'images', digest)));
  const rec = JSON.parse(ok(cfs('pull', '--repo', repo, '--json', `oci:${layout}:two`, 'test/two:1')));
  assert.equal(rec.name, 'test/two:1');
  assert.equal(rec.layersImported, 1, 'the two shared layers are not imported again');

  const list = JSON.parse(ok(cfs('images', '--repo', repo, '--json'))) as { name: string; image: string }[];
  assert.deepEqual(list.map((i) => i.name), ['test/one:1', 'test/two:1']);
  assert.equal(list[0].image, digest);
  assert.match(ok(cfs('images', '--repo', repo)), /test\/one:1\s+[0-9a-f]{16}/);
  const info = JSON.parse(ok(cfs('inspect', '--repo', repo, '--json', 'test/one:1')));
  assert.deepEqual(info.cmd, ['/bin/true']);
  assert.deepEqual(info.labels, { l: 'v' });
  assert.equal(info.layerBlobs.length, 2);

  ok(cfs('tag', '--repo', repo, 'test/one:1', 'alias'));
  assert.equal(JSON.parse(ok(cfs('images', '--repo', repo, '--json'))).length, 3);
  oneLineError(cfs('tag', '--repo', repo, 'nope', 'x'), /no image named 'nope'/);
  oneLineError(cfs('tag', '--repo', repo, 'alias', '../evil'), /invalid image name/);

  assert.match(ok(cfs('fsck', '--repo', repo)), /clean, \d+ objects, 2 images, 3 layers, 3 names checked/);
  const before = objectCount(repo);
  assert.match(ok(cfs('gc', '--repo', repo)), /removed 0 images, 0 layers, 0 blobs, 0 objects/);
  ok(cfs('rm', '--repo', repo, 'test/two:1'));
  assert.match(ok(cfs('gc', '--repo', repo, '--dry-run')), /would remove 1 images, 1 layers, 2 blobs, 1 objects/);
  assert.equal(objectCount(repo), before);
  assert.match(ok(cfs('gc', '--repo', repo)), /removed 1 images, 1 layers, 2 blobs, 1 objects/);
  assert.equal(objectCount(repo), before - 1);
  ok(cfs('rm', '--repo', repo, 'test/one:1'));
  assert.match(ok(cfs('gc', '--repo', repo)), /removed 0 images/, 'alias still names the image');
  ok(cfs('rm', '--repo', repo, 'alias'));
  ok(cfs('gc', '--repo', repo));
  assert.equal(objectCount(repo), 0);
  assert.deepEqual(readdirSync(join(repo, 'images')), []);

  // A corrupted object is found.
  ok(cfs('pull', '--repo', repo, '--quiet', `oci:${layout}:one`, 'again'));
  const sub = readdirSync(join(repo, 'objects')).find((d) => /^[0-9a-f]{2}$/.test(d))!;
  const obj = join(repo, 'objects', sub, readdirSync(join(repo, 'objects', sub))[0]);
  writeFileSync(obj, 'not what it was');
  const bad = cfs('fsck', '--repo', repo);
  assert.equal(bad.status, 1);
  assert.match(bad.stdout, new RegExp(`object ${sub}/[0-9a-f]{62}: content has fs-verity digest`));
}));

test('mount by name pins the recorded digest', { skip: isRoot ? false : 'needs root' }, inTemp('repo', (tmp) => {
  const layout = join(tmp, 'layout');
  const repo = join(tmp, 'repo');
  writeLayout(layout, 'one', gzLayers(base));
  writeLayout(layout, 'two', gzLayers(base, third));
  const one = ok(cfs('pull', '--repo', repo, `oci:${layout}:one`, 'one')).trim();
  const two = ok(cfs('pull', '--repo', repo, `oci:${layout}:two`, 'two')).trim();
  const mnt = join(tmp, 'mnt');
  mkdirSync(mnt);
  // digest= (pinned by the name) means verified objects: where the kernel cannot verify them (no fs-verity), the FUSE server does.
  const strict = JSON.parse(ok(cfs('mount', '--json', '--repo', repo, 'one', mnt))) as { rung: string; verity: boolean };
  try {
    assert.equal(strict.verity, true, `mounted by ${strict.rung} with verity`);
    assert.equal(readFileSync(join(mnt, 'etc/os-release'), 'utf8'), 'ID=test\n');
  } finally {
    ok(cfs('umount', mnt));
  }
  ok(cfs('mount', '--repo', repo, '-o', 'tryverity', 'one', mnt));
  try {
    assert.equal(readFileSync(join(mnt, 'etc/os-release'), 'utf8'), 'ID=test\n');
    assert.ok(readFileSync(join(mnt, 'usr/big')).equals(patternBytes(100_000, 1)));
  } finally {
    ok(cfs('umount', mnt));
  }
  // Swap the image file under the name: the mount is refused.
  copyFileSync(join(repo, 'images', two), join(repo, 'images', one));
  const r = cfs('mount', '--repo', repo, '-o', 'tryverity', 'one', mnt);
  oneLineError(r, /digest/i);
  oneLineError(cfs('mount', '--repo', repo, 'missing', mnt), /no image named 'missing'/);
}));

/** Each: layers of the image, and what the one-line error must say. */
const hostile: { what: string; layers: () => Buffer[]; error: RegExp }[] = [
  { what: 'path escape', layers: () => [makeTar([{ path: '../../etc/evil', data: 'x' }])], error: /layer sha256:[0-9a-f]{64}: entry \.\.\/\.\.\/etc\/evil: path escapes the image root/ },
  { what: 'hard link to a missing entry', layers: () => [makeTar([{ path: 'a', type: 'hardlink', linkname: 'nowhere' }])], error: /entry a: hard link to nowhere, which does not exist/ },
  { what: 'hard link to a directory', layers: () => [makeTar([{ path: 'd/', type: 'dir' }, { path: 'l', type: 'hardlink', linkname: 'd' }])], error: /entry l: hard link to d, which is a directory/ },
  { what: 'hard link escaping', layers: () => [makeTar([{ path: 'l', type: 'hardlink', linkname: '../../x' }])], error: /hard link target \.\.\/\.\.\/x escapes the image root/ },
  { what: 'absurd size', layers: () => [makeTar([{ path: 'huge', data: 'x', sizeOverride: 8 ** 11 * 7 }])], error: /entry huge: (absurd size|truncated)/ },
  { what: 'oversized PAX record', layers: () => [makeTar([{ path: 'p', data: 'x', paxRecords: { comment: 'c'.repeat(2 << 20) } }])], error: /PAX record of \d+ bytes exceeds the limit/ },
  {
    what: 'bad checksum',
    layers: () => {
      const t = makeTar([{ path: 'ok', data: 'x' }, { path: 'broken', data: 'y' }]);
      t[1024 + 10] ^= 0x01; // a byte of the second header's name
      return [t];
    },
    error: /bad tar header checksum/,
  },
  { what: 'truncated tar', layers: () => [makeTar([{ path: 'big', data: patternBytes(10_000, 1) }]).subarray(0, 3000)], error: /entry big: truncated tar archive/ },
  { what: 'root replaced', layers: () => [makeTar([{ path: './', data: 'x' }])], error: /refusing to change the type of the root directory/ },
];

test('hostile layers: one line naming the layer and entry, no name, a consistent repository', inTemp('repo', (tmp) => {
  const repo = join(tmp, 'repo');
  const layout = join(tmp, 'layout');
  writeLayout(layout, 'good', gzLayers(base));
  ok(cfs('pull', '--repo', repo, `oci:${layout}:good`, 'good'));
  for (const h of hostile) {
    const tars = h.layers();
    writeLayout(layout, 'bad', tars.map((t) => gzLayer(t, gzip(t))));
    const r = cfs('pull', '--repo', repo, `oci:${layout}:bad`, 'bad');
    oneLineError(r, h.error);
    assert.ok(!existsSync(join(repo, 'names', 'bad')), `${h.what}: no name`);
  }
  // Corrupt compressed data: the blob's digest matches (the layout says so), its contents do not decompress.
  const tar = makeTar([{ path: 'f', data: patternBytes(200_000, 9) }]);
  const gz = gzip(tar);
  const corrupt = Buffer.from(gz);
  corrupt.fill(0x55, 40, 400);
  writeLayout(layout, 'bad', [gzLayer(tar, corrupt)]);
  oneLineError(cfs('pull', '--repo', repo, `oci:${layout}:bad`, 'bad'), /layer sha256:[0-9a-f]{64}: corrupt gzip data/);
  writeLayout(layout, 'bad', [gzLayer(tar, gz.subarray(0, gz.length - 100))]);
  oneLineError(cfs('pull', '--repo', repo, `oci:${layout}:bad`, 'bad'), /layer sha256:[0-9a-f]{64}: corrupt gzip data|truncated/);
  const zst = spawnSync('zstd', ['-q', '-c'], { input: tar });
  if (zst.status === 0) {
    const z = zst.stdout as Buffer;
    writeLayout(layout, 'bad', [{ tar, blob: z.subarray(0, z.length - 50), mediaType: 'application/vnd.oci.image.layer.v1.tar+zstd' }]);
    oneLineError(cfs('pull', '--repo', repo, `oci:${layout}:bad`, 'bad'), /layer sha256:[0-9a-f]{64}: corrupt zstd data/);
  }
  // A diff_id that does not match.
  writeLayout(layout, 'bad', [gzLayer(makeTar([{ path: 'other', data: 'z' }]), gz)]);
  oneLineError(cfs('pull', '--repo', repo, `oci:${layout}:bad`, 'bad'), /uncompressed contents have digest sha256:[0-9a-f]{64}, the image config says/);
  writeLayout(layout, 'bad', [{ ...gzLayer(tar, gz), mediaType: 'application/vnd.example.unknown' }]);
  oneLineError(cfs('pull', '--repo', repo, `oci:${layout}:bad`, 'bad'), /unsupported media type application\/vnd\.example\.unknown/);

  assert.ok(!existsSync(join(repo, 'names', 'bad')));
  assert.deepEqual(JSON.parse(ok(cfs('images', '--repo', repo, '--json'))).map((i: { name: string }) => i.name), ['good']);
  ok(cfs('gc', '--repo', repo));
  assert.match(ok(cfs('fsck', '--repo', repo)), /clean/);
}));

test('pull from a real registry (HTTPS, basic auth): same image as from the layout; a second image sharing layers fetches one', { skip: haveRegistry ? false : NO_REGISTRY }, inTemp('repo', async (tmp) => {
  const layout = join(tmp, 'layout');
  const repo = join(tmp, 'repo');
  writeLayout(layout, 'one', gzLayers(base, second));
  writeLayout(layout, 'two', gzLayers(base, second, third));
  const certs = await makeCertificates(join(tmp, 'certs'));
  const registry = await startRegistry({ auth: { htpasswd: { alice: 'secret' } } }, certs);
  try {
    await push(registry, `oci:${layout}:one`, 'test/img:one', 'alice:secret');
    await push(registry, `oci:${layout}:two`, 'test/img:two', 'alice:secret');
    const certDir = certs.certDir;
    const fromLayout = ok(cfs('pull', '--repo', join(tmp, 'repo-layout'), `oci:${layout}:one`)).trim();
    const rec = JSON.parse(ok(cfs('pull', '--repo', repo, '--json', '--creds', 'alice:secret', '--cert-dir', certDir, `docker://${registry.host}/test/img:one`)));
    assert.equal(rec.image, fromLayout);
    assert.equal(rec.name, `${registry.host}/test/img:one`);
    const two = JSON.parse(ok(cfs('pull', '--repo', repo, '--json', '--creds', 'alice:secret', '--cert-dir', certDir, `docker://${registry.host}/test/img:two`)));
    assert.equal(two.layersImported, 1);
    oneLineError(cfs('pull', '--repo', repo, '--creds', 'alice:wrong', '--cert-dir', certDir, `docker://${registry.host}/test/img:one`, 'x'), /401|unauthorized|credentials/i);
    assert.ok(!existsSync(join(repo, 'names', 'x')));
  } finally {
    await registry.stop();
  }
}));

function cfsAsync(...args: string[]): { child: ChildProcess; done: Promise<{ status: number | null; stderr: string; stdout: string }> } {
  const child = spawn(cliPath('cfs'), args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  let stdout = '';
  child.stderr!.on('data', (d) => (stderr += d));
  child.stdout!.on('data', (d) => (stdout += d));
  const done = new Promise<{ status: number | null; stderr: string; stdout: string }>((resolve) => child.on('close', (status) => resolve({ status, stderr, stdout })));
  return { child, done };
}

test('two pulls and a gc at once: both names, nothing of theirs collected, a clean repository', inTemp('repo', async (tmp) => {
  const layout = join(tmp, 'layout');
  const repo = join(tmp, 'repo');
  const many = (seed: number): TarEntry[] => Array.from({ length: 200 }, (_, i) => ({ path: `f${seed}-${i}`, data: patternBytes(5000 + i, seed + i), mtime: T }));
  writeLayout(layout, 'a', gzLayers(base, many(1), many(2)));
  writeLayout(layout, 'b', gzLayers(base, many(1), many(3)));
  for (let round = 0; round < 3; round++) {
    rmSync(repo, { recursive: true, force: true });
    ok(cfs('images', '--repo', repo)); // creates it
    const runs = [cfsAsync('pull', '--repo', repo, `oci:${layout}:a`, 'a'), cfsAsync('pull', '--repo', repo, `oci:${layout}:b`, 'b'), cfsAsync('gc', '--repo', repo)];
    const results = await Promise.all(runs.map((r) => r.done));
    for (const r of results) assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(ok(cfs('images', '--repo', repo, '--json'))).map((i: { name: string }) => i.name), ['a', 'b']);
    assert.match(ok(cfs('fsck', '--repo', repo)), /clean/);
    assert.match(ok(cfs('gc', '--repo', repo, '--dry-run')), /would remove 0 images, 0 layers, 0 blobs, 0 objects, 0 temporary/);
  }
}));

test('a pull killed at any moment leaves no name, and gc removes its leftovers', inTemp('repo', async (tmp) => {
  const layout = join(tmp, 'layout');
  const repo = join(tmp, 'repo');
  const many: TarEntry[] = Array.from({ length: 300 }, (_, i) => ({ path: `f${i}`, data: patternBytes(20_000 + i, i), mtime: T }));
  writeLayout(layout, 'img', gzLayers(base, many, third));
  for (const delay of [30, 80, 150, 250, 400, 600]) {
    const run = cfsAsync('pull', '--repo', repo, `oci:${layout}:img`, 'img');
    await new Promise((r) => setTimeout(r, delay));
    run.child.kill('SIGKILL');
    const r = await run.done;
    const named = existsSync(join(repo, 'names', 'img'));
    if (r.status === 0) assert.ok(named);
    // A kill that lands after the name was written (the pull was only exiting) leaves the name: what
    // must hold is that a name only ever reaches a complete image, which fsck --repo checks (every
    // object's digest, the image's, and that each name's image and objects are there).
    if (existsSync(join(repo, 'names'))) assert.match(ok(cfs('fsck', '--repo', repo)), /clean/, `killed after ${delay} ms: the repository is consistent`);
    if (existsSync(join(repo, 'names'))) {
      if (named) ok(cfs('rm', '--repo', repo, 'img'));
      ok(cfs('gc', '--repo', repo));
      assert.deepEqual(readdirSync(join(repo, 'tmp')), [], 'tmp/ emptied by gc');
      assert.equal(objectCount(repo), 0, 'objects no name reaches are collected');
    }
  }
}));
