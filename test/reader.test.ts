/**
 * The image reader: round trips through the writer, images the writer did
 * not make (mkfs.erofs), the reference's conformance vectors, and hostile
 * images built by hand (loops, out-of-range offsets and counts, truncation).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, symlinkSync, writeFileSync, linkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { ImageFormatError, imageVersion, readImage, type ImageProblem } from '../src/erofs/reader.js';
import { writeImage, writeImageWithInfo } from '../src/erofs/writer.js';
import { parseDump } from '../src/dumpfile/parse.js';
import { writeDump } from '../src/dumpfile/write.js';
import { S_IFDIR, S_IFMT, S_IFREG, S_IFLNK, S_IFCHR, newInode, type Inode } from '../src/tree/model.js';
import { Rng, layoutOf, normalizeTree, randomTree, checkTreeInvariants } from './fuzz-long.js';
import { conformanceDir, NO_CONFORMANCE } from './helpers/paths.js';

const B = (s: string) => Buffer.from(s);
const has = (tool: string) => spawnSync('sh', ['-c', `command -v ${tool}`]).status === 0;

/**
 * The tree as comparable data, without what the image decides for itself
 * (directory sizes and link counts). With `opaqueMarks` (a version-1 image),
 * directories holding whiteouts carry the `opaque=x` xattrs the writer adds and
 * the reference's reader, like ours, gives back.
 */
function xattrsOf(n: Inode, opaqueMarks: boolean): string[] {
  const m = new Map(n.xattrs.map((x) => [x.key.toString('hex'), x.value.toString('hex')]));
  if (opaqueMarks && n.children?.some((d) => (d.inode.mode & S_IFMT) === S_IFCHR && d.inode.rdev === 0)) {
    for (const k of ['trusted.overlay.opaque', 'user.overlay.opaque']) m.set(B(k).toString('hex'), B('x').toString('hex'));
  }
  return [...m].map(([k, v]) => `${k}=${v}`).sort();
}

function comparable(tree: Inode, opaqueMarks = false): unknown {
  const seen = new Map<Inode, number>();
  const conv = (n: Inode): unknown => {
    if (seen.has(n)) return { link: seen.get(n) };
    seen.set(n, seen.size);
    const isDir = (n.mode & S_IFMT) === S_IFDIR;
    return {
      mode: n.mode,
      nlink: isDir ? null : n.nlink,
      uid: n.uid,
      gid: n.gid,
      rdev: n.rdev,
      size: isDir ? null : n.size,
      mtime: [n.mtimeSec, n.mtimeNsec],
      payload: n.payload?.toString('hex') ?? null,
      content: n.content?.toString('hex') ?? null,
      digest: n.digest?.toString('hex') ?? null,
      xattrs: xattrsOf(n, opaqueMarks),
      children: n.children?.map((d) => ({ name: d.name.toString('hex'), hardlink: d.hardlink, inode: conv(d.inode) })) ?? null,
    };
  };
  return conv(tree);
}

test('generated trees: image -> tree -> image is byte-identical, and the tree comes back', () => {
  const rnd = new Rng(20240611);
  for (let i = 0; i < 24; i++) {
    const tree = randomTree(rnd, { entries: rnd.pick([5, 30, 90]) });
    const { image, version } = writeImageWithInfo(tree, { minVersion: i % 2, maxVersion: 1 });
    const res = readImage(image);
    assert.equal(res.version, version);
    assert.equal(imageVersion(image), version);
    checkTreeInvariants(res.root);
    assert.deepEqual(comparable(res.root), comparable(tree, version >= 1), `tree ${i} differs after the round trip`);
    const again = writeImage(res.root, { minVersion: res.version, maxVersion: res.version });
    assert.ok(again.equals(image), `tree ${i}: the image written from the read tree differs`);
    // Check mode finds nothing wrong with a writer-made image.
    const problems: ImageProblem[] = [];
    readImage(image, { onProblem: (p) => problems.push(p) });
    assert.deepEqual(problems, [], `tree ${i}: ${problems.map((p) => p.message).join('; ')}`);
  }
});

test('what the reader gives back: whiteouts, escaped xattrs, payloads, digests, hard links, compact mtimes', () => {
  const root = newInode(S_IFDIR | 0o755, { mtimeSec: 50 });
  const file = newInode(S_IFREG | 0o644, { size: 5, content: B('hello'), nlink: 2 });
  const ext = newInode(S_IFREG | 0o600, { size: 99999, payload: B('ab/cdef'), digest: Buffer.alloc(32, 9), mtimeSec: 77, mtimeNsec: 5 });
  root.children!.push(
    { name: B('a-file'), inode: file, hardlink: false },
    { name: B('b-link'), inode: file, hardlink: true },
    { name: B('c-ext'), inode: ext, hardlink: false },
    { name: B('d-whiteout'), inode: newInode(S_IFCHR | 0o644, { rdev: 0 }), hardlink: false },
    { name: B('e-sym'), inode: newInode(S_IFLNK | 0o777, { size: 3, payload: B('a/b') }), hardlink: false },
  );
  root.xattrs.push({ key: B('trusted.overlay.opaque'), value: B('y') }, { key: B('user.x'), value: B('1') });
  normalizeTree(root);
  const res = readImage(writeImage(root, { minVersion: 0, maxVersion: 0 }));
  const [a, b, c, d, e] = res.root.children!;
  assert.equal(res.version, 0);
  assert.equal(a.inode, b.inode, 'hard links share one Inode');
  assert.deepEqual([a.hardlink, b.hardlink], [false, true]);
  assert.deepEqual(a.inode.content, B('hello'));
  assert.deepEqual(c.inode.payload, B('ab/cdef'));
  assert.deepEqual(c.inode.digest, Buffer.alloc(32, 9));
  assert.deepEqual([c.inode.mtimeSec, c.inode.mtimeNsec], [77, 5]);
  // Compact inodes take the superblock's build time: the smallest mtime (0 here).
  assert.deepEqual([a.inode.mtimeSec, a.inode.mtimeNsec], [0, 0]);
  assert.equal(d.inode.mode, S_IFCHR | 0o644);
  assert.equal(d.inode.rdev, 0);
  assert.deepEqual(e.inode.payload, B('a/b'));
  // The user's trusted.overlay.opaque was escaped in the image and comes back un-escaped; the
  // writer's own opaque=y, the whiteout markers and the 00..ff whiteouts are gone.
  const keys = res.root.xattrs.map((x) => `${x.key}=${x.value}`);
  assert.ok(keys.includes('trusted.overlay.opaque=y'));
  assert.ok(keys.includes('user.x=1'));
  assert.ok(!keys.some((k) => k.includes('whiteouts')), keys.join(' '));
  assert.equal(res.root.children!.length, 5, 'the 256 root whiteouts are not part of the tree');
  assert.equal(res.inodeCount, 1 + 4 + 256);
});

test('reads an EROFS image that mkfs.erofs made (the reader does not depend on our writer)', { skip: !has('mkfs.erofs') && 'mkfs.erofs not installed' }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-reader-'));
  try {
    const src = join(dir, 'src');
    mkdirSync(join(src, 'sub', 'deeper'), { recursive: true });
    writeFileSync(join(src, 'small'), 'hello\n');
    const big = Buffer.alloc(10000);
    for (let i = 0; i < big.length; i++) big[i] = (i * 7) & 0xff;
    writeFileSync(join(src, 'big'), big);
    writeFileSync(join(src, 'sub', 'deeper', 'x'), 'x');
    symlinkSync('small', join(src, 'sym'));
    linkSync(join(src, 'small'), join(src, 'sub', 'hard'));
    for (let i = 0; i < 300; i++) writeFileSync(join(src, 'sub', `entry-with-a-longish-name-${i}`), '');
    const img = join(dir, 'plain.img');
    const r = spawnSync('mkfs.erofs', ['-T0', '--all-root', '-x', '-1', img, src], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const image = readFileSync(img);
    // A plain EROFS image lacks the composefs header: refused, then accepted once it has one.
    assert.throws(() => readImage(image), /not a composefs image/);
    image.writeUInt32LE(0xd078629a, 0);
    image.writeUInt32LE(1, 4);
    const res = readImage(image);
    checkTreeInvariants(res.root);
    // Compare with the directory it was made from.
    const check = (tree: Inode, path: string) => {
      const names = readdirSync(path).sort((x, y) => Buffer.compare(B(x), B(y)));
      assert.deepEqual(tree.children!.map((d) => d.name.toString()), names, path);
      for (const d of tree.children!) {
        const p = join(path, d.name.toString());
        const st = lstatSync(p);
        assert.equal(d.inode.mode, st.mode, p);
        if (st.isDirectory()) check(d.inode, p);
        else if (st.isSymbolicLink()) assert.equal(d.inode.payload!.toString(), readlinkSync(p));
        else {
          assert.equal(d.inode.size, st.size, p);
          if (st.size > 0) assert.ok(d.inode.content!.equals(readFileSync(p)), p);
          assert.equal(d.inode.nlink, st.nlink, p);
        }
      }
    };
    check(res.root, src);
    const hard = res.root.children!.find((d) => d.name.toString() === 'sub')!.inode.children!.find((d) => d.name.toString() === 'hard')!;
    assert.equal(hard.inode, res.root.children!.find((d) => d.name.toString() === 'small')!.inode);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** A small image and where its pieces are. */
function sample(): { image: Buffer; layout: ReturnType<typeof layoutOf> } {
  const root = newInode(S_IFDIR | 0o755);
  const sub = newInode(S_IFDIR | 0o755);
  const subsub = newInode(S_IFDIR | 0o755);
  sub.children!.push({ name: B('inner'), inode: subsub, hardlink: false });
  subsub.children!.push({ name: B('f'), inode: newInode(S_IFREG | 0o644, { size: 3, content: B('abc'), xattrs: [{ key: B('user.k'), value: B('v') }] }), hardlink: false });
  root.children!.push({ name: B('sub'), inode: sub, hardlink: false });
  root.children!.push({ name: B('zfile'), inode: newInode(S_IFREG | 0o644, { size: 10, payload: B('aa/bb'), digest: Buffer.alloc(32, 1) }), hardlink: false });
  normalizeTree(root);
  const image = writeImage(root);
  return { image, layout: layoutOf(image) };
}

function direntNamed(image: Buffer, layout: ReturnType<typeof layoutOf>, name: string) {
  const d = layout.dirents.find((e) => image.subarray(e.nameOff, e.nameOff + e.nameLen).toString() === name);
  assert.ok(d, `no entry ${name}`);
  return d;
}

function refuses(image: Buffer, pattern: RegExp, path?: string): void {
  let err: unknown;
  try {
    readImage(image);
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof ImageFormatError, `expected an ImageFormatError, got ${String(err)}`);
  assert.match(err.message, pattern);
  assert.ok(!err.message.includes('\n'));
  if (path !== undefined) assert.equal(err.path?.toString(), path);
  // Check mode reports it instead of throwing (unless the damage is image-wide).
  const problems: ImageProblem[] = [];
  try {
    readImage(image, { onProblem: (p) => problems.push(p) });
    assert.ok(problems.length > 0, 'check mode found nothing');
  } catch (e) {
    assert.ok(e instanceof ImageFormatError);
  }
}

test('hostile images: loops and hard-linked directories are refused, with the path', () => {
  const { image, layout } = sample();
  const inner = direntNamed(image, layout, 'inner');
  // /sub/inner -> root: a loop.
  let img = Buffer.from(image);
  img.writeBigUInt64LE(BigInt(layout.rootNid), inner.off);
  refuses(img, /directory loop|already in the tree/, '/sub/inner');
  // /sub/inner -> /sub itself.
  img = Buffer.from(image);
  img.writeBigUInt64LE(BigInt(inner.dirNid), inner.off);
  refuses(img, /already in the tree/, '/sub/inner');
  // /zfile -> /sub: the same directory under two names.
  const zfile = direntNamed(image, layout, 'zfile');
  img = Buffer.from(image);
  img.writeBigUInt64LE(BigInt(inner.dirNid), zfile.off);
  refuses(img, /already in the tree/, '/zfile');
  // In check mode the walk goes on past the loop and finds the rest.
  img = Buffer.from(image);
  img.writeBigUInt64LE(BigInt(layout.rootNid), inner.off);
  const problems: ImageProblem[] = [];
  const res = readImage(img, { onProblem: (p) => problems.push(p) });
  assert.ok(problems.some((p) => p.code === 'loop' && p.path?.toString() === '/sub/inner'));
  assert.ok(res.root.children!.some((d) => d.name.toString() === 'zfile'));
});

test('hostile images: offsets, lengths and counts out of range are refused cleanly', () => {
  const { image, layout } = sample();
  const fileIno = layout.inodes.find((i) => (i.mode & S_IFMT) === S_IFREG && i.size === 3)!;
  const cases: Array<[string, (b: Buffer) => void, RegExp]> = [
    ['bad composefs magic', (b) => b.writeUInt32LE(0x12345678, 0), /not a composefs image/],
    ['bad header version', (b) => b.writeUInt32LE(2, 4), /header version/],
    ['bad superblock magic', (b) => b.writeUInt32LE(0, 1024), /superblock magic/],
    ['odd block size', (b) => (b[1024 + 12] = 9), /block size/],
    ['metadata beyond the end', (b) => b.writeUInt32LE(0xffffffff, 1024 + 40), /outside the image/],
    ['root nid beyond the end', (b) => b.writeUInt16LE(0xffff, 1024 + 14), /outside the image/],
    ['dirent nid huge', (b) => b.writeBigUInt64LE(2n ** 64n - 1n, direntNamed(image, layout, 'zfile').off), /out of range/],
    ['dirent nid beyond the end', (b) => b.writeBigUInt64LE(2n ** 40n, direntNamed(image, layout, 'zfile').off), /outside the image/],
    ['name offset past the block', (b) => b.writeUInt16LE(0xffff, direntNamed(image, layout, 'zfile').off + 8), /name offset/],
    ['xattr count past the end', (b) => b.writeUInt16LE(0xffff, fileIno.off + 2), /outside the image|runs past|xattr/],
    ['shared xattr count too big', (b) => (b[fileIno.off + fileIno.xattrSize + 32 - fileIno.xattrSize + 4] = 255), /shared xattrs do not fit/],
    ['content size past the end', (b) => b.writeUInt32LE(0xfffffff0, fileIno.off + 8), /outside the image/],
    ['unknown data layout', (b) => b.writeUInt16LE(3 << 1, fileIno.off), /data layout/],
    ['bad file type', (b) => b.writeUInt16LE(0o644, fileIno.off + 4), /file type/],
  ];
  for (const [what, damage, pattern] of cases) {
    const img = Buffer.from(image);
    damage(img);
    assert.doesNotThrow(() => {
      try {
        refuses(img, pattern);
      } catch (e) {
        throw new Error(`${what}: ${(e as Error).message}`);
      }
    });
  }
  // Every truncation of the image is refused cleanly (or still readable when only data is cut).
  for (let len = 0; len < image.length; len += 97) {
    try {
      readImage(image.subarray(0, len));
    } catch (e) {
      assert.ok(e instanceof ImageFormatError, `truncated to ${len}: ${String(e)}`);
    }
  }
});

test('check mode reports what the normal read lets pass', () => {
  const { image, layout } = sample();
  const img = Buffer.from(image);
  // Wrong dirent type, wrong inode count, wrong block count.
  img[direntNamed(image, layout, 'zfile').off + 10] = 2;
  img.writeBigUInt64LE(5n, 1024 + 16);
  img.writeUInt32LE(1, 1024 + 36);
  const problems: ImageProblem[] = [];
  readImage(img, { onProblem: (p) => problems.push(p) });
  const codes = problems.map((p) => p.code).sort();
  assert.deepEqual(codes, ['dirent-type', 'inodes', 'size']);
  assert.equal(problems.find((p) => p.code === 'dirent-type')!.path!.toString(), '/zfile');
  assert.doesNotThrow(() => readImage(img));
});

const conformance = conformanceDir();

test('conformance: for every generated dump, dump(read(write(dump))) is the file, byte for byte', { skip: !conformance && NO_CONFORMANCE }, () => {
  const dir = join(conformance!, 'generated');
  const files = readdirSync(dir).filter((f) => f.endsWith('.dump'));
  assert.ok(files.length > 0);
  for (const f of files) {
    const text = readFileSync(join(dir, f));
    const vfile = join(dir, `${f}.version`);
    const v = existsSync(vfile) ? Number(readFileSync(vfile, 'utf8').trim()) : 0;
    const image = writeImage(parseDump(text), { minVersion: v, maxVersion: existsSync(vfile) ? v : 1 });
    const sha = readFileSync(join(dir, `${f}.sha256`), 'utf8').trim().split(/\s+/)[0];
    assert.equal(createHash('sha256').update(image).digest('hex'), sha, `${f}: image differs from the reference's`);
    const res = readImage(image);
    const out = writeDump(res.root);
    assert.ok(out.equals(text), `${f}: the dump of the image differs from the file`);
    assert.ok(writeImage(res.root, { minVersion: res.version, maxVersion: res.version }).equals(image), `${f}: image -> tree -> image differs`);
  }
});

test('conformance: every upstream vector image -> tree -> image is byte-identical', { skip: !conformance && NO_CONFORMANCE }, () => {
  const dir = join(conformance!, 'upstream');
  const lenient = new Set(['no-newline.dump', 'longlink.dump', 'honggfuzz-longlink-unterminated.dump']);
  let n = 0;
  for (const f of readdirSync(dir)) {
    if (!/\.dump(\.gz)?$/.test(f) || f.startsWith('should-fail') || !existsSync(join(dir, `${f}.sha256`))) continue;
    const raw = readFileSync(join(dir, f));
    const text = f.endsWith('.gz') ? gunzipSync(raw) : raw;
    const vfile = join(dir, `${f}.version`);
    const v = existsSync(vfile) ? Number(readFileSync(vfile, 'utf8').trim()) : 0;
    const tree = parseDump(text, lenient.has(f) ? {} : { strict: true });
    const image = writeImage(tree, { minVersion: v, maxVersion: existsSync(vfile) ? v : 1 });
    const sha = readFileSync(join(dir, `${f}.sha256`), 'utf8').trim().split(/\s+/)[0];
    if (createHash('sha256').update(image).digest('hex') !== sha) continue; // the writer's own tests report this
    const res = readImage(image);
    checkTreeInvariants(res.root);
    const again = writeImage(res.root, { minVersion: res.version, maxVersion: res.version });
    assert.ok(again.equals(image), `${f}: image -> tree -> image differs`);
    // And the dump of the read tree reads back into the same image.
    assert.ok(writeImage(parseDump(writeDump(res.root)), { minVersion: res.version, maxVersion: res.version }).equals(image), `${f}: via the dump`);
    n++;
  }
  assert.ok(n >= 10, `only ${n} upstream vectors checked`);
});

test('a directory chain 10,000 deep is read, dumped and checked without recursion', async () => {
  const { dumpImage } = await import('../src/dumpfile/from-image.js');
  const { fsckImage } = await import('../src/check/fsck.js');
  const root = newInode(S_IFDIR | 0o755);
  let dir = root;
  for (let i = 0; i < 10000; i++) {
    const sub = newInode(S_IFDIR | 0o755);
    dir.children!.push({ name: B('d'), inode: sub, hardlink: false });
    dir = sub;
  }
  dir.children!.push({ name: B('f'), inode: newInode(S_IFREG | 0o644, { size: 1, content: B('x') }), hardlink: false });
  const image = writeImage(root);
  const res = readImage(image);
  let depth = 0;
  for (let n = res.root; n.children!.length > 0 && n.children![0].inode.children; n = n.children![0].inode) depth++;
  assert.equal(depth, 10000);
  const dump = dumpImage(image);
  assert.ok(dump.subarray(dump.length - 40).toString().endsWith('/d/f 1 100644 1 0 0 0 0.0 - x -\n'));
  assert.equal(fsckImage(image).ok, true);
});
