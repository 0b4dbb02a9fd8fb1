/**
 * Fuzzing the image reader with hostile images, and the pieces the tests
 * share: a seeded random tree generator, the layout of a real image (where
 * its inodes, xattrs and directory entries are), and mutators that damage
 * images the ways an attacker or a bad disk would: bit flips, bytes set to
 * extremes, length and count fields set to their limits, directory entries
 * pointed back up the tree (loops), at themselves or out of range, spliced
 * and truncated images.
 *
 * Every case must end in a tree or in a clean `ImageFormatError` from the
 * reader, in a report from fsck, and in output or a clean error from the
 * commands that consume the tree (dump, ls, objects, writing the image again)
 * within a time bound; anything else is a failure.
 *
 * `npm run fuzz` (this file, compiled) runs for longer:
 *   node dist/test/fuzz-long.js [--cases=N] [--seconds=S] [--seed=N] [--save=DIR]
 * Failing images are written to --save (default: the system temp directory).
 */
import { mkdirSync, readFileSync, readdirSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { gunzipSync } from 'node:zlib';
import { ImageFormatError, readImage, type ReadImageResult } from '../src/erofs/reader.js';
import { dumpImage, listImage } from '../src/dumpfile/from-image.js';
import { ImageWriteError, writeImage, writeImageWithInfo } from '../src/erofs/writer.js';
import { fsckImage } from '../src/check/fsck.js';
import { Output } from '../src/cli/image-io.js';
import { collectObjects, listTree } from '../src/cli/info.js';
import {
  S_IFBLK,
  S_IFCHR,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  S_IFSOCK,
  newInode,
  type Dirent,
  type Inode,
} from '../src/tree/model.js';
import { conformanceDir } from './helpers/paths.js';

// ---------------------------------------------------------------- randomness

/** Small seeded PRNG (mulberry32): cases are reproducible from the seed. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 0x9e3779b9;
  }
  next(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
}

// ------------------------------------------------------------- random trees

const NAME_CHARS = Buffer.from('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-=+ ~@%');

function randomName(rnd: Rng, taken: Set<string>): Buffer {
  for (;;) {
    const len = rnd.chance(0.05) ? rnd.range(200, 255) : rnd.range(1, 16);
    const b = Buffer.alloc(len);
    for (let i = 0; i < len; i++) {
      b[i] = rnd.chance(0.03) ? rnd.range(0x80, 0xff) : rnd.chance(0.01) ? rnd.pick([0x0a, 0x09, 0x5c, 0x01]) : rnd.pick([...NAME_CHARS]);
    }
    const key = b.toString('latin1');
    if (key === '.' || key === '..' || taken.has(key)) continue;
    taken.add(key);
    return b;
  }
}

function randomDigest(rnd: Rng): Buffer {
  return rnd.bytes(32);
}

const SHARED_VALUES = [Buffer.from('system_u:object_r:usr_t:s0\0'), Buffer.from('system_u:object_r:etc_t:s0\0')];

function randomXattrs(rnd: Rng, type: number): Inode['xattrs'] {
  const xs: Inode['xattrs'] = [];
  const keys = new Set<string>();
  const add = (k: string, v: Buffer) => {
    if (keys.has(k)) return;
    keys.add(k);
    xs.push({ key: Buffer.from(k), value: v });
  };
  if (rnd.chance(0.3)) add('security.selinux', rnd.pick(SHARED_VALUES));
  if (rnd.chance(0.15)) add(`user.k${rnd.int(5)}`, rnd.bytes(rnd.range(0, 40)));
  if (rnd.chance(0.05)) add('trusted.overlay.custom', Buffer.from('/x'));
  if (rnd.chance(0.03)) add('trusted.overlay.opaque', Buffer.from('y'));
  if (rnd.chance(0.03)) add('user.overlay.redirect', Buffer.from('/elsewhere'));
  if (rnd.chance(0.02)) add('system.posix_acl_access', Buffer.from('0200000001000600ffffffff', 'hex'));
  if (type === S_IFDIR && rnd.chance(0.02)) add('system.posix_acl_default', Buffer.from('0200000001000700ffffffff', 'hex'));
  if (rnd.chance(0.02)) add(`trusted.big${rnd.int(3)}`, rnd.bytes(rnd.range(100, 3000)));
  return xs;
}

export interface TreeOptions {
  entries?: number;
  /** Probability that an entry is a hard link to an earlier file. */
  hardlinks?: number;
  whiteouts?: boolean;
}

/**
 * A random tree the writer accepts: every file type, inline and external
 * files of the sizes around block and half-block limits, long names and
 * symlinks, shared and escaped xattrs, hard links, whiteouts, big directories.
 * Primary names are the first in depth-first name order (what the reader returns).
 */
export function randomTree(rnd: Rng, opts: TreeOptions = {}): Inode {
  const total = opts.entries ?? 60;
  const baseTime = rnd.range(0, 2_000_000_000);
  const mtime = (n: Inode) => {
    if (rnd.chance(0.6)) return;
    n.mtimeSec = baseTime + rnd.range(0, 1000);
    n.mtimeNsec = rnd.chance(0.5) ? rnd.int(1_000_000_000) : 0;
  };
  const root = newInode(S_IFDIR | 0o755, { mtimeSec: baseTime, xattrs: randomXattrs(rnd, S_IFDIR) });
  const dirs: Array<{ dir: Inode; taken: Set<string> }> = [{ dir: root, taken: new Set() }];
  const files: Inode[] = [];
  for (let i = 0; i < total; i++) {
    const parent = rnd.chance(0.1) ? dirs[0] : rnd.pick(dirs);
    const name = randomName(rnd, parent.taken);
    const kind = rnd.int(100);
    let node: Inode;
    let hardlink = false;
    if (kind < 15) {
      node = newInode(S_IFDIR | rnd.pick([0o755, 0o700, 0o555]));
      dirs.push({ dir: node, taken: new Set() });
    } else if (kind < 40) {
      const size = rnd.pick([1, 17, 100, 2048, 2049, 4095, 4096, 4097, 8192, 10000]);
      node = newInode(S_IFREG | 0o644, { size, content: rnd.bytes(size) });
    } else if (kind < 60) {
      const size = rnd.pick([1, 4096, 123456, 1 << 30, 9_000_000_000_000_000]);
      const digest = rnd.chance(0.8) ? randomDigest(rnd) : null;
      const payload = digest ? Buffer.from(`${digest.toString('hex').slice(0, 2)}/${digest.toString('hex').slice(2)}`) : rnd.chance(0.5) ? Buffer.from('some/object') : null;
      node = newInode(S_IFREG | 0o600, { size, digest, payload });
    } else if (kind < 65) {
      node = newInode(S_IFREG | 0o644);
    } else if (kind < 75) {
      const len = rnd.chance(0.2) ? rnd.range(1000, 4000) : rnd.range(1, 40);
      const target = Buffer.alloc(len);
      for (let j = 0; j < len; j++) target[j] = rnd.pick([...NAME_CHARS, 0x2f]);
      node = newInode(S_IFLNK | 0o777, { size: len, payload: target });
    } else if (kind < 80) {
      node = newInode(rnd.pick([S_IFCHR, S_IFBLK]) | 0o600, { rdev: rnd.range(1, 0xfffff) });
    } else if (kind < 83) {
      node = newInode(rnd.pick([S_IFIFO, S_IFSOCK]) | 0o644);
    } else if (kind < 87 && opts.whiteouts !== false) {
      node = newInode(S_IFCHR | 0o000, { rdev: 0 });
    } else if (files.length > 0 && rnd.chance(opts.hardlinks ?? 0.8)) {
      node = rnd.pick(files);
      hardlink = true;
    } else {
      node = newInode(S_IFREG | 0o644, { size: 3, content: Buffer.from('abc') });
    }
    if (!hardlink) {
      node.uid = rnd.chance(0.1) ? rnd.range(65536, 0xfffffff) : rnd.pick([0, 0, 1000]);
      node.gid = rnd.chance(0.1) ? rnd.range(65536, 0xfffffff) : rnd.pick([0, 0, 100]);
      node.xattrs = randomXattrs(rnd, node.mode & S_IFMT);
      mtime(node);
      if ((node.mode & S_IFMT) !== S_IFDIR && !((node.mode & S_IFMT) === S_IFCHR && node.rdev === 0)) files.push(node);
    }
    parent.dir.children!.push({ name, inode: node, hardlink });
  }
  // A directory big enough to need several blocks.
  if (rnd.chance(0.5)) {
    const big = newInode(S_IFDIR | 0o755);
    const taken = new Set<string>();
    for (let i = 0; i < 400; i++) big.children!.push({ name: randomName(rnd, taken), inode: newInode(S_IFREG | 0o644), hardlink: false });
    root.children!.push({ name: Buffer.from('big-directory'), inode: big, hardlink: false });
  }
  normalizeTree(root);
  return root;
}

/** Sort every directory, make the first name in depth-first order primary and set nlink to the name count. */
export function normalizeTree(root: Inode): void {
  const names = new Map<Inode, number>();
  const seen = new Set<Inode>();
  const stack: Inode[] = [root];
  const order: Inode[] = [];
  // Depth first, pre-order, in name order.
  const visit = (dir: Inode) => {
    const frames: Array<{ dir: Inode; i: number }> = [{ dir, i: 0 }];
    dir.children!.sort((a, b) => Buffer.compare(a.name, b.name));
    while (frames.length) {
      const f = frames[frames.length - 1];
      if (f.i >= f.dir.children!.length) {
        frames.pop();
        continue;
      }
      const d = f.dir.children![f.i++];
      names.set(d.inode, (names.get(d.inode) ?? 0) + 1);
      d.hardlink = seen.has(d.inode);
      if (!d.hardlink) {
        seen.add(d.inode);
        order.push(d.inode);
        if (d.inode.children) {
          d.inode.children.sort((a, b) => Buffer.compare(a.name, b.name));
          frames.push({ dir: d.inode, i: 0 });
        }
      }
    }
  };
  void stack;
  visit(root);
  for (const n of order) if (!n.children) n.nlink = names.get(n) ?? 1;
}

// ----------------------------------------------------------- image layouts

export interface Layout {
  rootNid: number;
  inodes: Array<{ nid: number; off: number; compact: boolean; mode: number; size: number; xattrSize: number; dataOffset: number }>;
  dirents: Array<{ dirNid: number; off: number; nameOff: number; nid: number; nameLen: number }>;
  dirNids: number[];
  /** Parent directory nid of each directory nid. */
  parentOf: Map<number, number>;
  metaEnd: number;
}

/** Where the inodes, xattr areas and directory entries of a (valid) image are. */
export function layoutOf(image: Buffer): Layout {
  const layout: Layout = { rootNid: image.readUInt16LE(1024 + 14), inodes: [], dirents: [], dirNids: [], parentOf: new Map(), metaEnd: 0 };
  readImage(image, {
    trace: {
      inode: (nid, off, info) => {
        layout.inodes.push({ nid, off, ...info });
        if ((info.mode & S_IFMT) === S_IFDIR) layout.dirNids.push(nid);
        layout.metaEnd = Math.max(layout.metaEnd, off + (info.compact ? 32 : 64) + info.xattrSize);
      },
      dirent: (dirNid, off, nameOff, nid, name) => {
        layout.dirents.push({ dirNid, off, nameOff, nid, nameLen: name.length });
        if (!(name.length <= 2 && name.every((c) => c === 0x2e))) layout.parentOf.set(nid, dirNid);
      },
    },
  });
  return layout;
}

// ------------------------------------------------------------------ mutators

export interface Base {
  name: string;
  image: Buffer;
  layout: Layout;
}

const U16 = [0, 1, 0x7fff, 0x8000, 0xfffe, 0xffff];
const U32 = [0, 1, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];

function setU64(b: Buffer, off: number, v: bigint): void {
  if (off >= 0 && off + 8 <= b.length) b.writeBigUInt64LE(BigInt.asUintN(64, v), off);
}
function setU32(b: Buffer, off: number, v: number): void {
  if (off >= 0 && off + 4 <= b.length) b.writeUInt32LE(v >>> 0, off);
}
function setU16(b: Buffer, off: number, v: number): void {
  if (off >= 0 && off + 2 <= b.length) b.writeUInt16LE(v & 0xffff, off);
}

function extreme32(rnd: Rng, b: Buffer): number {
  return rnd.chance(0.7) ? rnd.pick(U32) : rnd.pick([rnd.int(0x100000000), b.length >>> 12, (b.length >>> 12) + 1, b.length, rnd.int(b.length)]);
}
function extreme64(rnd: Rng): bigint {
  return rnd.pick([0n, 1n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 63n, 2n ** 64n - 1n, BigInt(rnd.int(0x100000000)) << 20n, BigInt(rnd.int(0x100000000))]);
}

type Mutator = (rnd: Rng, img: Buffer, base: Base) => { image: Buffer; what: string };

const mutators: Array<[string, number, Mutator]> = [
  [
    'bitflip',
    20,
    (rnd, img, base) => {
      const n = rnd.range(1, 8);
      const region = rnd.chance(0.7) ? Math.max(base.layout.metaEnd, 1200) : img.length;
      const at: number[] = [];
      for (let i = 0; i < n; i++) {
        const p = rnd.int(Math.min(region, img.length));
        img[p] ^= 1 << rnd.int(8);
        at.push(p);
      }
      return { image: img, what: `flip bits at ${at.join(',')}` };
    },
  ],
  [
    'bytes',
    8,
    (rnd, img, base) => {
      const p = rnd.int(Math.min(img.length, Math.max(base.layout.metaEnd, 1200)));
      const n = rnd.range(1, 8);
      const v = rnd.pick([0x00, 0xff, rnd.int(256)]);
      img.fill(v, p, Math.min(img.length, p + n));
      return { image: img, what: `fill ${n} bytes at ${p} with ${v}` };
    },
  ],
  [
    'inode-field',
    20,
    (rnd, img, base) => {
      const ino = rnd.pick(base.layout.inodes);
      const o = ino.off;
      const fields: Array<[string, () => void]> = ino.compact
        ? [
            ['format', () => setU16(img, o, rnd.chance(0.5) ? rnd.int(16) : rnd.pick(U16))],
            ['xattr_icount', () => setU16(img, o + 2, rnd.pick([...U16, rnd.int(300)]))],
            ['mode', () => setU16(img, o + 4, rnd.chance(0.5) ? (rnd.int(16) << 12) | 0o644 : rnd.pick(U16))],
            ['nlink', () => setU16(img, o + 6, rnd.pick(U16))],
            ['size', () => setU32(img, o + 8, extreme32(rnd, img))],
            ['u', () => setU32(img, o + 16, extreme32(rnd, img))],
            ['uid', () => setU16(img, o + 24, rnd.pick(U16))],
          ]
        : [
            ['format', () => setU16(img, o, rnd.chance(0.5) ? rnd.int(16) : rnd.pick(U16))],
            ['xattr_icount', () => setU16(img, o + 2, rnd.pick([...U16, rnd.int(300)]))],
            ['mode', () => setU16(img, o + 4, rnd.chance(0.5) ? (rnd.int(16) << 12) | 0o644 : rnd.pick(U16))],
            ['size', () => setU64(img, o + 8, extreme64(rnd))],
            ['u', () => setU32(img, o + 16, extreme32(rnd, img))],
            ['mtime', () => setU64(img, o + 32, extreme64(rnd))],
            ['mtime_nsec', () => setU32(img, o + 40, rnd.pick(U32))],
            ['nlink', () => setU32(img, o + 44, rnd.pick(U32))],
          ];
      const [field, set] = rnd.pick(fields);
      set();
      return { image: img, what: `inode ${ino.nid} ${field}` };
    },
  ],
  [
    'xattr-field',
    12,
    (rnd, img, base) => {
      const withX = base.layout.inodes.filter((i) => i.xattrSize > 0);
      if (withX.length === 0) return { image: img, what: 'no xattrs' };
      const ino = rnd.pick(withX);
      const h = ino.off + (ino.compact ? 32 : 64);
      const shared = h + 4 < img.length ? img[h + 4] : 0;
      const entry = h + 12 + shared * 4;
      const choices: Array<[string, () => void]> = [
        ['shared_count', () => h + 4 < img.length && (img[h + 4] = rnd.pick([0, 1, 2, 127, 128, 255, rnd.int(256)]))],
        ['filter', () => setU32(img, h, rnd.pick(U32))],
        ['shared id', () => (shared > 0 ? setU32(img, h + 12, extreme32(rnd, img)) : setU32(img, h + 12, rnd.pick(U32)))],
        ['name_len', () => entry < img.length && (img[entry] = rnd.pick([0, 1, 254, 255, rnd.int(256)]))],
        ['name_index', () => entry + 1 < img.length && (img[entry + 1] = rnd.pick([0, 5, 6, 7, 0x80, 0x81, 255, rnd.int(256)]))],
        ['value_size', () => setU16(img, entry + 2, rnd.pick(U16))],
      ];
      const [field, set] = rnd.pick(choices);
      set();
      return { image: img, what: `inode ${ino.nid} xattr ${field}` };
    },
  ],
  [
    'dirent-field',
    16,
    (rnd, img, base) => {
      const l = base.layout;
      if (l.dirents.length === 0) return { image: img, what: 'no dirents' };
      const d = rnd.pick(l.dirents);
      const choice = rnd.int(3);
      if (choice === 0) {
        const v = rnd.pick([
          BigInt(l.rootNid),
          BigInt(d.dirNid),
          BigInt(l.parentOf.get(d.dirNid) ?? l.rootNid),
          BigInt(rnd.pick(l.dirNids)),
          BigInt(rnd.pick(l.inodes).nid),
          BigInt(d.nid + 1),
          2n ** 64n - 1n,
          2n ** 32n,
          2n ** 53n,
          BigInt(rnd.int(0x10000)),
        ]);
        setU64(img, d.off, v);
        return { image: img, what: `dirent nid in dir ${d.dirNid} -> ${v}` };
      }
      if (choice === 1) {
        const cur = d.off + 10 <= img.length ? img.readUInt16LE(d.off + 8) : 0;
        setU16(img, d.off + 8, rnd.pick([0, 1, 11, 12, 13, 0xffff, cur - 1, cur + 1, cur + 255, rnd.int(0x10000)]));
        return { image: img, what: `dirent nameoff in dir ${d.dirNid}` };
      }
      if (d.off + 10 < img.length) img[d.off + 10] = rnd.int(256);
      return { image: img, what: `dirent file type in dir ${d.dirNid}` };
    },
  ],
  [
    'loop',
    8,
    (rnd, img, base) => {
      const l = base.layout;
      // Point a directory's entry at an ancestor (or at the directory itself).
      const cands = l.dirents.filter((d) => d.nameLen > 2 || img[d.nameOff] !== 0x2e);
      if (cands.length === 0) return { image: img, what: 'no entries' };
      const d = rnd.pick(cands);
      const ancestors = [d.dirNid];
      for (let n = d.dirNid; l.parentOf.has(n) && ancestors.length < 64; ) {
        n = l.parentOf.get(n)!;
        ancestors.push(n);
      }
      ancestors.push(l.rootNid);
      const target = rnd.pick(ancestors);
      setU64(img, d.off, BigInt(target));
      if (rnd.chance(0.7) && d.off + 10 < img.length) img[d.off + 10] = 2; // claim it is a directory
      return { image: img, what: `loop: entry in dir ${d.dirNid} -> ${target}` };
    },
  ],
  [
    'super-field',
    8,
    (rnd, img, base) => {
      const sb = 1024;
      const choices: Array<[string, () => void]> = [
        ['root_nid', () => setU16(img, sb + 14, rnd.pick([...U16, rnd.pick(base.layout.inodes).nid]))],
        ['meta_blkaddr', () => setU32(img, sb + 40, extreme32(rnd, img))],
        ['xattr_blkaddr', () => setU32(img, sb + 44, extreme32(rnd, img))],
        ['blkszbits', () => sb + 12 < img.length && (img[sb + 12] = rnd.pick([0, 9, 11, 13, 255]))],
        ['inos', () => setU64(img, sb + 16, extreme64(rnd))],
        ['build_time', () => setU64(img, sb + 24, extreme64(rnd))],
        ['build_time_nsec', () => setU32(img, sb + 32, rnd.pick(U32))],
        ['blocks', () => setU32(img, sb + 36, extreme32(rnd, img))],
        ['feature_incompat', () => setU32(img, sb + 80, rnd.pick(U32))],
        ['composefs version', () => setU32(img, 12, rnd.pick([0, 1, 2, 0xffffffff]))],
        ['composefs flags', () => setU32(img, 8, rnd.pick(U32))],
      ];
      const [field, set] = rnd.pick(choices);
      set();
      return { image: img, what: `superblock ${field}` };
    },
  ],
  [
    'truncate',
    6,
    (rnd, img, base) => {
      const len = rnd.pick([rnd.int(img.length), rnd.int(base.layout.metaEnd + 1), img.length - 4096 * rnd.range(1, 3), img.length - rnd.range(1, 64), 1100, 1152, 4096]);
      const n = Math.max(0, Math.min(img.length, len));
      return { image: img.subarray(0, n), what: `truncate to ${n}` };
    },
  ],
  [
    'splice',
    6,
    (rnd, img, base) => {
      const region = Math.max(base.layout.metaEnd, 1200);
      const n = rnd.pick([12, 32, 64, 128, rnd.range(1, 4096)]);
      const from = rnd.int(img.length);
      const to = rnd.int(Math.min(region, img.length));
      const chunk = Buffer.from(img.subarray(from, from + n));
      chunk.copy(img, to);
      return { image: img, what: `copy ${chunk.length} bytes from ${from} to ${to}` };
    },
  ],
];
const totalWeight = mutators.reduce((s, [, w]) => s + w, 0);

function pickMutator(rnd: Rng): [string, Mutator] {
  let r = rnd.int(totalWeight);
  for (const [name, w, m] of mutators) {
    if (r < w) return [name, m];
    r -= w;
  }
  return [mutators[0][0], mutators[0][2]];
}

/** One mutated copy of a base image (one to four mutations). */
export function mutate(rnd: Rng, base: Base): { image: Buffer; what: string } {
  let image = Buffer.from(base.image);
  const steps = rnd.chance(0.75) ? 1 : rnd.range(2, 4);
  const whats: string[] = [];
  for (let i = 0; i < steps; i++) {
    const [name, m] = pickMutator(rnd);
    const r = m(rnd, image, base);
    image = r.image;
    whats.push(`${name}: ${r.what}`);
  }
  return { image, what: whats.join('; ') };
}

// ---------------------------------------------------------------- one case

export interface CaseResult {
  outcome: 'tree' | 'error';
  message?: string;
  ms: number;
  fsckProblems: number;
}

export class FuzzFailure extends Error {}

let writeDumpFn: ((root: Inode) => Buffer) | null | undefined;

/** The dump writer, if that module is present in this build. */
export async function loadWriteDump(): Promise<((root: Inode) => Buffer) | null> {
  if (writeDumpFn !== undefined) return writeDumpFn;
  try {
    const mod = (await import(new URL('../src/dumpfile/write.js', import.meta.url).href)) as { writeDump?: (root: Inode) => Buffer };
    writeDumpFn = mod.writeDump ?? null;
  } catch {
    writeDumpFn = null;
  }
  return writeDumpFn;
}

/** The tree model's rules, which the reader must never break whatever the image. */
export function checkTreeInvariants(root: Inode): void {
  const fail = (msg: string) => {
    throw new FuzzFailure(`reader returned a malformed tree: ${msg}`);
  };
  if ((root.mode & S_IFMT) !== S_IFDIR || !root.children) fail('root is not a directory');
  const primaries = new Set<Inode>([root]);
  const linked: Inode[] = [];
  const stack: Inode[] = [root];
  while (stack.length) {
    const dir = stack.pop()!;
    const ch = dir.children!;
    for (let i = 0; i < ch.length; i++) {
      const d: Dirent = ch[i];
      if (i > 0 && Buffer.compare(ch[i - 1].name, d.name) >= 0) fail('children not strictly sorted');
      if (d.name.length === 0 || d.name.length > 255 || d.name.includes(0) || d.name.includes(0x2f)) fail('bad name');
      if (d.name.equals(Buffer.from('.')) || d.name.equals(Buffer.from('..'))) fail('dot entry in tree');
      const isDir = (d.inode.mode & S_IFMT) === S_IFDIR;
      if (isDir !== (d.inode.children !== null)) fail('children on a non-directory (or none on a directory)');
      if (d.hardlink) {
        if (isDir) fail('hard link to a directory');
        linked.push(d.inode);
      } else {
        if (primaries.has(d.inode)) fail('inode with two primary names');
        primaries.add(d.inode);
        if (isDir) stack.push(d.inode);
      }
    }
  }
  for (const n of linked) if (!primaries.has(n)) fail('hard link to an inode without a primary name');
}


/** Run every consumer over one image; throws FuzzFailure (or anything unexpected) on a bug. */
export async function runCase(image: Buffer, maxMs = 5000): Promise<CaseResult> {
  const writeDump = await loadWriteDump();
  const t0 = performance.now();
  let res: ReadImageResult | null = null;
  let message: string | undefined;
  try {
    res = readImage(image);
  } catch (err) {
    if (!(err instanceof ImageFormatError)) throw err;
    if (typeof err.message !== 'string' || err.message.length === 0 || err.message.includes('\n')) throw new FuzzFailure('error message is not one line');
    message = err.message;
    try {
      dumpImage(image);
      throw new FuzzFailure('dumpImage accepted an image readImage refused');
    } catch (e) {
      if (!(e instanceof ImageFormatError)) throw e;
    }
  }
  if (res) {
    checkTreeInvariants(res.root);
    const chunks: Buffer[] = [];
    const out = new Output((c) => chunks.push(c));
    listTree(res.root, out);
    out.flush();
    if (!listImage(image).equals(Buffer.concat(chunks))) throw new FuzzFailure('listImage differs from listTree(readImage())');
    collectObjects(res.root, new Map());
    if (writeDump) {
      // The dump printed while walking the image is the dump of the tree.
      const fromTree = writeDump(res.root);
      if (!dumpImage(image).equals(fromTree)) throw new FuzzFailure('dumpImage differs from writeDump(readImage())');
    }
    try {
      writeImage(res.root, { minVersion: res.version, maxVersion: res.version });
    } catch (err) {
      if (!(err instanceof ImageWriteError)) throw err;
    }
  }
  const report = fsckImage(image);
  if (res && report.problems.some((p) => p.code === 'bounds' || p.code === 'loop')) {
    throw new FuzzFailure('fsck found damage the normal read did not refuse');
  }
  if (!res && report.ok) throw new FuzzFailure(`the read failed (${message}) but fsck found nothing`);
  const ms = performance.now() - t0;
  if (ms > maxMs) throw new FuzzFailure(`case took ${ms.toFixed(0)} ms`);
  return { outcome: res ? 'tree' : 'error', message, ms, fsckProblems: report.problems.length };
}

// ------------------------------------------------------------ base images

/** Images of generated trees (always available), both format versions. */
export function generatedBases(seed: number, count: number): Base[] {
  const rnd = new Rng(seed);
  const bases: Base[] = [];
  for (let i = 0; i < count; i++) {
    const tree = randomTree(rnd, { entries: rnd.pick([10, 40, 120]) });
    const version = rnd.int(2);
    const { image } = writeImageWithInfo(tree, { minVersion: version, maxVersion: 1 });
    bases.push({ name: `random-${seed}-${i}`, image, layout: layoutOf(image) });
  }
  return bases;
}

/** Images written from the conformance dumps (when ../shared and the dump parser are there). */
export async function conformanceBases(opts: { includeLarge?: boolean } = {}): Promise<Base[]> {
  const dir = conformanceDir();
  if (!dir) return [];
  let parseDump: ((buf: Buffer, opts?: unknown) => Inode) | undefined;
  try {
    const mod = (await import(new URL('../src/dumpfile/parse.js', import.meta.url).href)) as { parseDump?: (buf: Buffer, opts?: unknown) => Inode };
    parseDump = mod.parseDump;
  } catch {
    return [];
  }
  if (!parseDump) return [];
  const bases: Base[] = [];
  for (const sub of ['generated', 'upstream']) {
    const d = join(dir, sub);
    if (!existsSync(d)) continue;
    for (const f of readdirSync(d).sort()) {
      if (!/\.dump(\.gz)?$/.test(f) || f.startsWith('should-fail')) continue;
      const raw = readFileSync(join(d, f));
      if (!opts.includeLarge && raw.length > 400_000) continue;
      try {
        const text = f.endsWith('.gz') ? gunzipSync(raw) : raw;
        const versionFile = join(d, `${f}.version`);
        const v = existsSync(versionFile) ? Number(readFileSync(versionFile, 'utf8').trim()) : 0;
        const image = writeImage(parseDump(text), { minVersion: v, maxVersion: existsSync(versionFile) ? v : 1 });
        bases.push({ name: f, image, layout: layoutOf(image) });
      } catch {
        // Vectors that need a lenient parse or fail to build are not fuzz material.
      }
    }
  }
  return bases;
}

// ------------------------------------------------------------- long runs

export interface FuzzStats {
  cases: number;
  trees: number;
  errors: number;
  slowestMs: number;
  peakRssMiB: number;
  seconds: number;
}

export async function fuzz(
  bases: Base[],
  opts: { seed: number; cases: number; seconds?: number; onFailure?: (image: Buffer, what: string, err: unknown, index: number) => void; maxMs?: number },
): Promise<FuzzStats> {
  const rnd = new Rng(opts.seed);
  const start = performance.now();
  const stats: FuzzStats = { cases: 0, trees: 0, errors: 0, slowestMs: 0, peakRssMiB: 0, seconds: 0 };
  for (let i = 0; i < opts.cases; i++) {
    if (opts.seconds !== undefined && (performance.now() - start) / 1000 > opts.seconds) break;
    const base = bases[i % bases.length];
    const { image, what } = mutate(rnd, base);
    try {
      const r = await runCase(image, opts.maxMs);
      if (r.outcome === 'tree') stats.trees++;
      else stats.errors++;
      stats.slowestMs = Math.max(stats.slowestMs, r.ms);
    } catch (err) {
      if (opts.onFailure) opts.onFailure(image, `${base.name}: ${what}`, err, i);
      else throw new FuzzFailure(`case ${i} (${base.name}: ${what}): ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
    }
    stats.cases++;
    if ((i & 63) === 0) stats.peakRssMiB = Math.max(stats.peakRssMiB, process.memoryUsage().rss / 1048576);
  }
  stats.seconds = (performance.now() - start) / 1000;
  stats.peakRssMiB = Math.max(stats.peakRssMiB, process.memoryUsage().rss / 1048576);
  return stats;
}

async function main(): Promise<void> {
  const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
  const seed = Number(arg('seed') ?? Math.floor(Math.random() * 0xffffffff));
  const seconds = arg('seconds') !== undefined ? Number(arg('seconds')) : arg('cases') !== undefined ? undefined : 300;
  const cases = Number(arg('cases') ?? Number.MAX_SAFE_INTEGER);
  const saveDir = resolve(arg('save') ?? tmpdir());
  process.stdout.write(`fuzz: seed ${seed}${seconds !== undefined ? `, ${seconds} s` : ''}${cases !== Number.MAX_SAFE_INTEGER ? `, ${cases} cases` : ''}\n`);
  const bases = [...generatedBases(seed, 24), ...(await conformanceBases({ includeLarge: true }))];
  process.stdout.write(`fuzz: ${bases.length} base images (${bases.filter((b) => !b.name.startsWith('random-')).length} from the conformance vectors)\n`);
  let failures = 0;
  const stats = await fuzz(bases, {
    seed,
    cases,
    seconds,
    maxMs: 20000,
    onFailure: (image, what, err, i) => {
      failures++;
      mkdirSync(saveDir, { recursive: true });
      const file = join(saveDir, `cfs-fuzz-${seed}-${i}.img`);
      writeFileSync(file, image);
      process.stdout.write(`FAIL case ${i} (${what}): ${err instanceof Error ? err.stack ?? err.message : String(err)}\n  image saved to ${file}\n`);
    },
  });
  process.stdout.write(
    `fuzz: ${stats.cases} cases in ${stats.seconds.toFixed(1)} s (${(stats.cases / stats.seconds).toFixed(0)}/s): ${stats.trees} read into a tree, ${stats.errors} refused cleanly, ${failures} failures; slowest ${stats.slowestMs.toFixed(1)} ms, peak RSS ${stats.peakRssMiB.toFixed(0)} MiB\n`,
  );
  process.stdout.write(`${stats.cases - failures} passed, ${failures} failed\n`);
  process.exitCode = failures > 0 ? 1 : 0;
}

// Run only as a program: `node --test dist/test/` also loads this file (it runs every .js below test/).
if (!process.env.NODE_TEST_CONTEXT && process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  main().catch((err) => {
    process.stderr.write(`fuzz: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
    process.exitCode = 1;
  });
}
