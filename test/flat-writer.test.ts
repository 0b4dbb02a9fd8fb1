import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ImageWriteError, writeFlatImage, writeImage, writeImageWithInfo } from '../src/erofs/writer.js';
import { flatten } from '../src/erofs/write/flatten.js';
import { words } from '../src/erofs/write/bytes.js';
import { Erofs, Mode } from '../src/erofs/write/consts.js';
import * as format from '../src/erofs/format.js';
import { newInode, S_IFBLK, S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, type Inode } from '../src/tree/model.js';
import type { FlatTree } from '../src/tree/flat.js';
import { sampleTree } from './helpers/trees.js';

/** A deep copy, every column its own (so a test may break one, and a write be checked to leave it alone). */
function copy(flat: FlatTree): FlatTree {
  const out: Record<string, unknown> = {};
  // %TypedArray%.prototype.slice copies (Buffer's own slice would not).
  for (const [k, v] of Object.entries(flat)) out[k] = ArrayBuffer.isView(v) ? Uint8Array.prototype.slice.call(v as Uint8Array) : v;
  return out as unknown as FlatTree;
}

function sameColumns(a: FlatTree, b: FlatTree): boolean {
  for (const [k, v] of Object.entries(a)) {
    const w = (b as unknown as Record<string, unknown>)[k];
    if (ArrayBuffer.isView(v)) {
      if (!Buffer.from((v as Uint8Array).buffer, (v as Uint8Array).byteOffset, (v as Uint8Array).byteLength).equals(Buffer.from((w as Uint8Array).buffer, (w as Uint8Array).byteOffset, (w as Uint8Array).byteLength))) return false;
    } else if (v !== w) return false;
  }
  return true;
}

/** A small tree: root/{dir/{file}, link-to-file, whiteout}. */
function smallTree(): Inode {
  const root = newInode(S_IFDIR | 0o755, { mtimeSec: 1000 });
  const dir = newInode(S_IFDIR | 0o755, { mtimeSec: 1000 });
  const file = newInode(S_IFREG | 0o644, { size: 5000, payload: Buffer.from('ab/cdef'), mtimeSec: 1000 });
  dir.children!.push({ name: Buffer.from('file'), inode: file, hardlink: false });
  root.children!.push({ name: Buffer.from('dir'), inode: dir, hardlink: false });
  root.children!.push({ name: Buffer.from('link-to-file'), inode: file, hardlink: true });
  root.children!.push({ name: Buffer.from('whiteout'), inode: newInode(S_IFCHR | 0o600, { rdev: 0, mtimeSec: 1000 }), hardlink: false });
  return root;
}

/** The entry of the name `name` in a flat tree. */
function entryNamed(flat: FlatTree, name: string): number {
  for (let e = 0; e < flat.count; e++) {
    if (Buffer.from(flat.pool.buffer, flat.pool.byteOffset + flat.nameStart[e], flat.nameEnd[e] - flat.nameStart[e]).toString() === name) return e;
  }
  throw new Error(`no entry ${name}`);
}

test('writeFlatImage writes what writeImage writes, and leaves the flat tree as it was', () => {
  for (const tree of [sampleTree(), smallTree()]) {
    for (const opts of [{}, { maxVersion: 0 }, { minVersion: 1 }]) {
      const flat = flatten(tree);
      const before = copy(flat);
      const { image, version } = writeFlatImage(flat, opts);
      assert.ok(sameColumns(flat, before), 'the flat tree is unchanged');
      const expected = writeImageWithInfo(tree, opts);
      assert.equal(version, expected.version);
      assert.ok(image.equals(expected.image), 'same bytes');
    }
  }
});

test('writeFlatImage refuses a malformed flat tree with an ImageWriteError', () => {
  const base = flatten(smallTree());
  const cases: Array<[string, (f: FlatTree) => void, RegExp]> = [
    ['a child index out of range', (f) => (f.children[0] = f.count + 5), /child entry \d+ out of range/],
    ['a negative child index', (f) => (f.children[f.childStart[1]] = -1), /child entry -1 out of range/],
    ['a directory reached twice', (f) => (f.children[f.childStart[entryNamed(f, 'dir')]] = 0), /appears twice/],
    ['an entry named twice', (f) => (f.children[f.childStart[entryNamed(f, 'dir')]] = entryNamed(f, 'whiteout')), /two primary names/],
    ['a hard link to a hard link', (f) => (f.linkTo[entryNamed(f, 'link-to-file')] = entryNamed(f, 'link-to-file')), /another hard link/],
    ['a hard link to a directory', (f) => (f.linkTo[entryNamed(f, 'link-to-file')] = entryNamed(f, 'dir')), /points at a directory/],
    ['a hard link out of range', (f) => (f.linkTo[entryNamed(f, 'link-to-file')] = f.count), /outside the tree/],
    [
      'an entry in no directory',
      (f) => {
        const dir = entryNamed(f, 'dir');
        f.childStart[dir + 1] = f.childStart[dir];
      },
      /not in the tree/,
    ],
    ['a name outside the pool', (f) => (f.nameEnd[entryNamed(f, 'dir')] = f.pool.length + 10), /invalid file name/],
    ['a name with a slash', (f) => (f.pool[f.nameStart[entryNamed(f, 'dir')]] = 0x2f), /invalid file name '\/ir'/],
    ['a payload outside the pool', (f) => (f.payloadEnd[entryNamed(f, 'file')] = f.pool.length + 1), /payload .* outside the byte pool/],
    ['children of a file', (f) => (f.childStart[entryNamed(f, 'file')] -= 1), /only directories can have children/],
    ['a column too short', (f) => (f.nlink = f.nlink.subarray(0, 2)), /shorter/],
    ['a root that is a file', (f) => (f.mode[0] = S_IFREG | 0o644), /root .* must be a directory/],
  ];
  for (const [what, breakIt, message] of cases) {
    const flat = copy(base);
    breakIt(flat);
    assert.throws(() => writeFlatImage(flat), (err: Error) => err instanceof ImageWriteError && message.test(err.message), what);
  }
});

test('names the image cannot hold are reported as the old writer did, first met first', () => {
  const tree = newInode(S_IFDIR | 0o755);
  for (const name of ['a/b', 'ok', '..']) tree.children!.push({ name: Buffer.from(name), inode: newInode(S_IFREG | 0o644), hardlink: false });
  tree.children!.sort((x, y) => Buffer.compare(x.name, y.name));
  // '..' sorts first, so the reference meets it first.
  assert.throws(() => writeImage(tree), { name: 'ImageWriteError', message: "invalid file name '..'" });
  tree.children = tree.children!.filter((d) => d.name.toString() !== '..');
  assert.throws(() => writeImage(tree), { name: 'ImageWriteError', message: "invalid file name 'a/b'" });
});

test('the byte-store fallback (for big-endian hosts) stores what typed arrays store here', () => {
  const native = new Uint8Array(64);
  const bytewise = new Uint8Array(64);
  for (const [b, force] of [
    [native, false],
    [bytewise, true],
  ] as const) {
    const w = words(b, force);
    w.u32[1] = 0xdeadbeef;
    w.u32[2] = ~0x1234;
    w.u32[3] = 2 ** 32 + 7;
    w.u16[9] = 0xabcd;
    w.u32[5] = 0x10;
    w.u32[5] += 0x20;
  }
  assert.deepEqual(bytewise, native);
});

test('the writer\'s constants are those of the format and the tree model', () => {
  assert.equal(Mode.TYPE, S_IFMT);
  assert.equal(Mode.DIR, S_IFDIR);
  assert.equal(Mode.REG, S_IFREG);
  assert.equal(Mode.LNK, S_IFLNK);
  assert.equal(Mode.CHR, S_IFCHR);
  assert.equal(Mode.BLK, S_IFBLK);
  assert.equal(Erofs.BLOCK_BITS, format.BLOCK_BITS);
  assert.equal(Erofs.BLOCK_SIZE, format.BLOCK_SIZE);
  assert.equal(Erofs.SLOT_SIZE, format.SLOT_SIZE);
  assert.equal(Erofs.META_START, format.SUPER_OFFSET + format.SUPER_SIZE);
  assert.equal(Erofs.COMPACT_SIZE, format.INODE_COMPACT_SIZE);
  assert.equal(Erofs.EXTENDED_SIZE, format.INODE_EXTENDED_SIZE);
  assert.equal(Erofs.XATTR_HEADER_SIZE, format.XATTR_IBODY_HEADER_SIZE);
  assert.equal(Erofs.XATTR_ENTRY_SIZE, format.XATTR_ENTRY_SIZE);
  assert.equal(Erofs.MAX_SHARED, format.XATTR_LONG_PREFIX);
  assert.equal(Erofs.DIRENT_SIZE, format.DIRENT_SIZE);
  assert.equal(Erofs.LAYOUT_FLAT_PLAIN, format.LAYOUT_FLAT_PLAIN);
  assert.equal(Erofs.LAYOUT_FLAT_INLINE, format.LAYOUT_FLAT_INLINE);
  assert.equal(Erofs.LAYOUT_CHUNK_BASED, format.LAYOUT_CHUNK_BASED);
  assert.equal(Erofs.DATALAYOUT_BIT, format.I_DATALAYOUT_BIT);
  assert.equal(Erofs.CHUNK_BITS_MAX, format.CHUNK_FORMAT_BLKBITS_MASK);
  assert.equal(Erofs.FS_VERITY_SHA256, format.FS_VERITY_HASH_ALG_SHA256);
  // Field offsets the emitter writes as words.
  assert.deepEqual([format.IC.format, format.IC.mode, format.IC.size, format.IC.u, format.IC.ino, format.IC.uid, format.IC.gid], [0, 4, 8, 16, 20, 24, 26]);
  assert.deepEqual([format.IE.size, format.IE.u, format.IE.uid, format.IE.gid, format.IE.mtime, format.IE.mtimeNsec, format.IE.nlink], [8, 16, 24, 28, 32, 40, 44]);
});
