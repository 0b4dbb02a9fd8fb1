/**
 * gc and live mounts (issue 16, item 5): a mount by name holds its image
 * (a lease in the repository) for as long as the mount exists, whatever
 * happens to the name (a pull of a new image under it, `cfs rm`), kernel
 * and FUSE mounts alike; once unmounted, the next gc removes it all.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { patternBytes, type TarEntry } from './helpers/tar-writer.js';
import { gzLayers, writeLayout } from './helpers/oci-layout.js';
import { isRoot } from './helpers/paths.js';
import { cfs, ok } from './helpers/cli.js';
import { inTemp } from './helpers/temp.js';

const T = 1700000000;

function image(seed: number): TarEntry[] {
  return [
    { path: './', type: 'dir', mtime: T },
    { path: 'etc/', type: 'dir', mtime: T },
    { path: 'etc/os-release', data: `ID=test${seed}\n`, mtime: T },
    { path: 'usr/', type: 'dir', mtime: T },
    { path: 'usr/big', data: patternBytes(100_000, seed), mtime: T },
    { path: 'usr/other', data: patternBytes(30_000, seed + 100), mtime: T },
  ];
}

function objectCount(repo: string): number {
  return readdirSync(join(repo, 'objects')).filter((d) => /^[0-9a-f]{2}$/.test(d)).reduce((n, d) => n + readdirSync(join(repo, 'objects', d)).length, 0);
}

/** A scratch directory, removed with whatever a failed test left mounted in it. */
const withTemp = (fn: (dir: string) => Promise<void> | void) => inTemp('lease', fn);

/** Reads through the mount give the image's bytes (the objects are there). */
function readsBack(mnt: string, seed: number): void {
  assert.equal(readFileSync(join(mnt, 'etc/os-release'), 'utf8'), `ID=test${seed}\n`);
  assert.ok(readFileSync(join(mnt, 'usr/big')).equals(patternBytes(100_000, seed)), 'usr/big through the mount');
  assert.ok(readFileSync(join(mnt, 'usr/other')).equals(patternBytes(30_000, seed + 100)), 'usr/other through the mount');
}

for (const how of ['kernel', 'fuse'] as const) {
  const fuseOk = existsSync('/dev/fuse');
  test(`a ${how} mount by name holds its image against gc: after a pull under the same name, after rm; gone once unmounted`, { skip: !isRoot ? 'needs root' : how === 'fuse' && !fuseOk ? 'no /dev/fuse' : false }, withTemp((tmp) => {
    const layout = join(tmp, 'layout');
    const repo = join(tmp, 'repo');
    writeLayout(layout, 'a', gzLayers(image(1)));
    writeLayout(layout, 'b', gzLayers(image(2)));
    const a = ok(cfs('pull', '--repo', repo, '--quiet', `oci:${layout}:a`, 'app')).trim();
    const mnt = join(tmp, 'mnt');
    mkdirSync(mnt);
    // The kernel path without fs-verity needs tryverity to accept unchecked objects; the FUSE server checks every one.
    const opts = how === 'fuse' ? ['--fuse'] : ['-o', 'tryverity'];
    ok(cfs('mount', '--repo', repo, ...opts, 'app', mnt));
    let mounted = true;
    try {
      readsBack(mnt, 1);

      // An update: the name now points at another image; gc keeps the mounted one.
      const b = ok(cfs('pull', '--repo', repo, '--quiet', `oci:${layout}:b`, 'app')).trim();
      assert.notEqual(a, b);
      const gc = ok(cfs('gc', '--repo', repo));
      assert.match(gc, /removed 0 images, 0 layers, 0 blobs, 0 objects/, gc);
      assert.match(gc, /kept what 1 live mount by name uses/);
      assert.ok(existsSync(join(repo, 'images', a)));
      readsBack(mnt, 1);
      const list = ok(cfs('images', '--repo', repo));
      assert.match(list, new RegExp(`^app\\s+${b.slice(0, 16)}\\s.*\\s-$`, 'm'), 'the name\'s new image is not mounted');
      assert.match(list, new RegExp(`^\\(was app\\)\\s+${a.slice(0, 16)}\\s.*\\s${mnt}$`, 'm'), 'the image held by the mount is listed');
      const json = JSON.parse(ok(cfs('images', '--repo', repo, '--json'))) as { name: string | null; image: string; mounts: string[] }[];
      assert.deepEqual(json.map((r) => [r.name, r.image, r.mounts]), [['app', b, []], [null, a, [mnt]]]);

      // rm: the name goes, the mounted image stays.
      ok(cfs('rm', '--repo', repo, 'app'));
      assert.match(ok(cfs('gc', '--repo', repo)), /removed 1 images, 1 layers, 2 blobs, 2 objects/, 'only the unmounted image b goes');
      assert.ok(existsSync(join(repo, 'images', a)));
      assert.ok(!existsSync(join(repo, 'images', b)));
      readsBack(mnt, 1);
      assert.equal(ok(cfs('fsck', '--repo', repo)).trim().split('\n').at(-1)?.includes('clean'), true);

      ok(cfs('umount', mnt));
      mounted = false;
      assert.match(ok(cfs('gc', '--repo', repo)), /removed 1 images, 1 layers, 2 blobs, 2 objects, 0 temporary files, 1 stale leases/);
      assert.equal(objectCount(repo), 0);
      assert.deepEqual(readdirSync(join(repo, 'images')), []);
      assert.deepEqual(readdirSync(join(repo, 'leases')), []);
    } finally {
      if (mounted) cfs('umount', mnt);
    }
  }));
}

test('a mount by name that fails leaves no lease; a lease whose mount is still being made is honoured', { skip: isRoot ? false : 'needs root' }, withTemp(async (tmp) => {
  const layout = join(tmp, 'layout');
  const repo = join(tmp, 'repo');
  writeLayout(layout, 'a', gzLayers(image(3)));
  ok(cfs('pull', '--repo', repo, '--quiet', `oci:${layout}:a`, 'app'));
  const r = cfs('mount', '--repo', repo, '-o', 'tryverity', 'app', join(tmp, 'no-such-dir'));
  assert.notEqual(r.status, 0);
  assert.deepEqual(existsSync(join(repo, 'leases')) ? readdirSync(join(repo, 'leases')) : [], [], 'no lease left by the failed mount');

  // A mount in progress (its lease written and locked, nothing mounted yet): gc keeps the image.
  const [{ Repository }, { writeLease }] = await Promise.all([import('../src/repo/repository.js'), import('../src/repo/leases.js')]);
  const lib = Repository.open(repo, { create: false });
  const lease = writeLease(lib, lib.getName('app'), join(tmp, 'mnt'));
  try {
    assert.match(ok(cfs('images', '--repo', repo)), new RegExp(`^app\\s+[0-9a-f]{16}\\s.*\\s${join(tmp, 'mnt')}$`, 'm'), 'images shows where the name is mounted');
    ok(cfs('rm', '--repo', repo, 'app'));
    assert.match(ok(cfs('gc', '--repo', repo)), /removed 0 images, 0 layers, 0 blobs, 0 objects/);
    assert.ok(objectCount(repo) > 0);
  } finally {
    lease.abandon();
    lib.close();
  }
  assert.match(ok(cfs('gc', '--repo', repo)), /removed 1 images, 1 layers, 2 blobs, 2 objects/);
  assert.equal(objectCount(repo), 0);
}));
