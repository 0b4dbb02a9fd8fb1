import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync, mkdirSync } from 'node:fs';

import { join } from 'node:path';
import { writeImage, writeImageWithInfo, ImageWriteError } from '../src/erofs/writer.js';
import { newInode, S_IFCHR, S_IFDIR, S_IFREG } from '../src/tree/model.js';
import { sampleTree, compareMountWithTree } from './helpers/trees.js';
import { isRoot } from './helpers/paths.js';
import { withTemp } from './helpers/temp.js';

const hasTool = (tool: string) => spawnSync('sh', ['-c', `command -v ${tool}`]).status === 0;

test('writing the same tree twice gives the same bytes, and the tree is left untouched', () => {
  const tree = sampleTree();
  const before = JSON.stringify(tree, (_k, v) => (v && v.type === 'Buffer' ? Buffer.from(v.data).toString('hex') : v));
  const a = writeImage(tree);
  const b = writeImage(sampleTree());
  const c = writeImage(tree);
  assert.ok(a.equals(b), 'two equal trees give equal images');
  assert.ok(a.equals(c), 'the same tree gives the same image again');
  const after = JSON.stringify(tree, (_k, v) => (v && v.type === 'Buffer' ? Buffer.from(v.data).toString('hex') : v));
  assert.equal(after, before);
});

test('the version rises to 1 for a whiteout only when allowed', () => {
  const tree = newInode(S_IFDIR | 0o755);
  tree.children!.push({ name: Buffer.from('wh'), inode: newInode(S_IFCHR, { rdev: 0 }), hardlink: false });
  assert.equal(writeImageWithInfo(tree).version, 1);
  assert.equal(writeImageWithInfo(tree, { maxVersion: 0 }).version, 0);
  const plain = newInode(S_IFDIR | 0o755);
  assert.equal(writeImageWithInfo(plain).version, 0);
  assert.equal(writeImageWithInfo(plain, { minVersion: 1 }).version, 1);
  assert.equal(writeImage(plain, { minVersion: 1 }).readUInt32LE(12), 1, 'the header records the version');
  assert.throws(() => writeImage(plain, { minVersion: 2 }), ImageWriteError);
});

test('names the image cannot hold are refused', () => {
  for (const name of ['', '.', '..', 'a/b', 'x'.repeat(256)]) {
    const tree = newInode(S_IFDIR | 0o755);
    tree.children!.push({ name: Buffer.from(name), inode: newInode(S_IFREG | 0o644), hardlink: false });
    assert.throws(() => writeImage(tree), ImageWriteError, `name ${JSON.stringify(name.slice(0, 10))}`);
  }
});

test('fsck.erofs accepts what we write', (t) => {
  if (!hasTool('fsck.erofs')) return t.skip('fsck.erofs (erofs-utils) is not installed');
  withTemp('writer', (dir) => {
    for (const [name, opts] of [['v0', { maxVersion: 0 }], ['v1', {}]] as const) {
      const img = join(dir, `${name}.img`);
      writeFileSync(img, writeImage(sampleTree(), opts));
      const r = spawnSync('fsck.erofs', [img], { encoding: 'utf8' });
      assert.equal(r.status, 0, `fsck.erofs ${name}: ${r.stdout}${r.stderr}`);
    }
  });
});

test('the kernel mounts what we write and shows the tree', (t) => {
  if (!isRoot) return t.skip('mounting needs root');
  withTemp('writer', (dir) => {
    for (const version of [0, 1]) {
      const img = join(dir, `v${version}.img`);
      const mnt = join(dir, `mnt${version}`);
      mkdirSync(mnt);
      const tree = sampleTree();
      writeFileSync(img, writeImage(tree, { minVersion: version, maxVersion: version }));
      const m = spawnSync('mount', ['-t', 'erofs', '-o', 'ro', img, mnt], { encoding: 'utf8' });
      assert.equal(m.status, 0, `mount: ${m.stderr}`);
      try {
        const checked = compareMountWithTree(mnt, tree, version);
        assert.ok(checked > 700, `compared ${checked} entries`);
      } finally {
        spawnSync('umount', [mnt]);
      }
    }
  });
});

test('a tree that reaches a directory twice is refused instead of walked forever', () => {
  const root = newInode(S_IFDIR | 0o755);
  const sub = newInode(S_IFDIR | 0o755);
  sub.children!.push({ name: Buffer.from('loop'), inode: root, hardlink: false });
  root.children!.push({ name: Buffer.from('sub'), inode: sub, hardlink: false });
  assert.throws(() => writeImage(root), ImageWriteError);
});
