/**
 * The composefs image writer: tree in, EROFS image bytes out, byte for byte
 * what the reference mkcomposefs writes for the same tree.
 *
 * The work happens in four passes over a private copy of the tree:
 *  1. rewrite: add the overlayfs xattrs (metacopy, redirect, escaped
 *     `trusted.overlay.*`, whiteout escapes), `.`/`..` entries, the opaque
 *     root and the 256 `00`..`ff` whiteouts overlayfs needs in the root;
 *  2. order: breadth-first inode order, directory link counts, minimum mtime;
 *  3. layout: shared xattrs, then each inode's slot, inline tail and blocks;
 *  4. emit: one buffer of the final size, filled in place.
 */
import {
  BLOCK_BITS,
  BLOCK_SIZE,
  CHUNK_FORMAT_BLKBITS_MASK,
  COMPOSEFS_FLAG_HAS_ACL,
  COMPOSEFS_HEADER_VERSION,
  COMPOSEFS_MAGIC,
  DEFAULT_MAX_VERSION,
  DEFAULT_MIN_VERSION,
  DIRENT_SIZE,
  FEATURE_COMPAT_MTIME,
  FEATURE_COMPAT_XATTR_FILTER,
  FORMAT_VERSION_MAX,
  FS_VERITY_HASH_ALG_SHA256,
  FT_BLKDEV,
  FT_CHRDEV,
  FT_DIR,
  FT_FIFO,
  FT_REG_FILE,
  FT_SOCK,
  FT_SYMLINK,
  FT_UNKNOWN,
  HDR,
  I_DATALAYOUT_BIT,
  IC,
  IE,
  INODE_COMPACT_SIZE,
  INODE_EXTENDED_SIZE,
  LAYOUT_CHUNK_BASED,
  LAYOUT_FLAT_INLINE,
  LAYOUT_FLAT_PLAIN,
  NULL_CHUNK,
  SB,
  SLOT_SIZE,
  SUPER_MAGIC_V1,
  SUPER_OFFSET,
  SUPER_SIZE,
  XATTR_ENTRY_SIZE,
  XATTR_FILTER_BITS,
  XATTR_FILTER_DEFAULT,
  XATTR_FILTER_SEED,
  XATTR_IBODY_HEADER_SIZE,
  XATTR_LONG_PREFIX,
  XATTR_PREFIXES,
  XH,
} from './format.js';
import { xxh32 } from './xxhash.js';
import {
  S_IFBLK,
  S_IFCHR,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  S_IFSOCK,
  type Inode,
} from '../tree/model.js';

export interface WriteOptions {
  /** Lowest composefs format version to write (default 0). */
  minVersion?: number;
  /** Highest version the writer may upgrade to when the tree needs it (default 1). */
  maxVersion?: number;
}

export interface WriteResult {
  image: Buffer;
  /** The composefs format version written into the header. */
  version: number;
}

export class ImageWriteError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ImageWriteError';
  }
}

interface WXattr {
  /** The name as a latin1 string: one char per byte, so string order is byte order. */
  key: string;
  value: Buffer;
  /** Offset in the shared xattr area, or -1 when stored inline. */
  sharedOffset: number;
}

interface WEntry {
  name: Buffer;
  node: WNode;
  /** `.`, `..` and secondary hard-link names: not inodes of their own. */
  isLink: boolean;
}

interface WNode {
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: number;
  size: number;
  mtimeSec: number;
  mtimeNsec: number;
  payload: Buffer | null;
  content: Buffer | null;
  digest: Buffer | null;
  xattrs: WXattr[];
  children: WEntry[] | null;
  parent: WNode | null;
  // Layout results.
  ino: number;
  nid: number;
  nBlocks: number;
  tailSize: number;
  compact: boolean;
  pad: number;
  xattrSize: number;
}

const utf8 = (s: string) => Buffer.from(s, 'utf8');
const EMPTY = Buffer.alloc(0);
const K = {
  metacopy: 'trusted.overlay.metacopy',
  redirect: 'trusted.overlay.redirect',
  opaque: 'trusted.overlay.opaque',
  overlayPrefix: 'trusted.overlay.',
  escapePrefix: 'trusted.overlay.overlay.',
  escWhiteout: 'trusted.overlay.overlay.whiteout',
  escWhiteouts: 'trusted.overlay.overlay.whiteouts',
  escOpaque: 'trusted.overlay.overlay.opaque',
  userWhiteout: 'user.overlay.whiteout',
  userWhiteouts: 'user.overlay.whiteouts',
  userOpaque: 'user.overlay.opaque',
  selinux: 'security.selinux',
  aclAccess: 'system.posix_acl_access',
  aclDefault: 'system.posix_acl_default',
};
const DOT = utf8('.');
const DOTDOT = utf8('..');
const SLASH = utf8('/');

function setXattr(node: WNode, key: string, value: Buffer): void {
  for (const x of node.xattrs) {
    if (x.key === key) {
      x.value = value;
      return;
    }
  }
  node.xattrs.push({ key, value, sharedOffset: -1 });
}

function getXattr(node: WNode, key: string): Buffer | null {
  for (const x of node.xattrs) if (x.key === key) return x.value;
  return null;
}

function insertSorted(entries: WEntry[], entry: WEntry): void {
  let lo = 0;
  let hi = entries.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (Buffer.compare(entries[mid].name, entry.name) < 0) lo = mid + 1;
    else hi = mid;
  }
  entries.splice(lo, 0, entry);
}

function newWNode(mode: number, parent: WNode | null): WNode {
  return {
    mode,
    nlink: 1,
    uid: 0,
    gid: 0,
    rdev: 0,
    size: 0,
    mtimeSec: 0,
    mtimeNsec: 0,
    payload: null,
    content: null,
    digest: null,
    xattrs: [],
    children: (mode & S_IFMT) === S_IFDIR ? [] : null,
    parent,
    ino: 0,
    nid: 0,
    nBlocks: 0,
    tailSize: 0,
    compact: false,
    pad: 0,
    xattrSize: 0,
  };
}

/** Copy the caller's tree into writer nodes; hard links keep pointing at one node. */
function copyTree(root: Inode): WNode {
  const seen = new Map<Inode, WNode>();
  const copy = (inode: Inode, parent: WNode | null): WNode => {
    const n = newWNode(inode.mode, parent);
    n.nlink = inode.nlink;
    n.uid = inode.uid;
    n.gid = inode.gid;
    n.rdev = inode.rdev;
    n.size = inode.size;
    n.mtimeSec = inode.mtimeSec;
    n.mtimeNsec = inode.mtimeNsec;
    n.payload = inode.payload;
    n.content = inode.content;
    n.digest = inode.digest;
    n.xattrs = inode.xattrs.map((x) => ({ key: x.key.toString('latin1'), value: x.value, sharedOffset: -1 }));
    seen.set(inode, n);
    return n;
  };
  const rootNode = copy(root, null);
  // Primary entries first (depth first), so every hard link finds its target copied.
  const links: Array<[WNode, Buffer, Inode]> = [];
  const walk = (inode: Inode, node: WNode) => {
    if (!inode.children) return;
    if ((node.mode & S_IFMT) !== S_IFDIR) throw new ImageWriteError('only directories can have children');
    for (const d of inode.children) {
      if (d.hardlink) {
        links.push([node, d.name, d.inode]);
        node.children!.push({ name: d.name, node: null as unknown as WNode, isLink: true });
        continue;
      }
      if (seen.has(d.inode)) throw new ImageWriteError(`inode reachable under two primary names (${d.name.toString()})`);
      const child = copy(d.inode, node);
      node.children!.push({ name: d.name, node: child, isLink: false });
      walk(d.inode, child);
    }
  };
  walk(root, rootNode);
  for (const [parent, name, target] of links) {
    const t = seen.get(target);
    if (!t) throw new ImageWriteError(`hard link ${name.toString()} points outside the tree`);
    if ((t.mode & S_IFMT) === S_IFDIR) throw new ImageWriteError(`hard link ${name.toString()} points at a directory`);
    const entry = parent.children!.find((e) => e.name === name)!;
    entry.node = t;
  }
  return rootNode;
}

function isWhiteout(n: WNode): boolean {
  return (n.mode & S_IFMT) === S_IFCHR && n.rdev === 0;
}

/** The reference upgrades to version 1 (xwhiteout marking) when the tree holds a whiteout. */
function chooseVersion(root: WNode, min: number, max: number): number {
  if (min >= 1 || max < 1) return min;
  const stack = [root];
  while (stack.length) {
    const n = stack.pop()!;
    if (isWhiteout(n)) return 1;
    for (const e of n.children ?? []) if (!e.isLink) stack.push(e.node);
  }
  return min;
}

function addOverlayXattrs(node: WNode, version: number): void {
  for (const x of node.xattrs) {
    if (x.key.startsWith(K.overlayPrefix)) x.key = K.escapePrefix + x.key.slice(K.overlayPrefix.length);
  }
  const type = node.mode & S_IFMT;
  if (type === S_IFREG && node.size > 0 && node.content === null) {
    let metacopy = EMPTY;
    if (node.digest) {
      metacopy = Buffer.alloc(4 + 32);
      metacopy[0] = 0; // version
      metacopy[1] = metacopy.length;
      metacopy[2] = 0; // flags
      metacopy[3] = FS_VERITY_HASH_ALG_SHA256;
      node.digest.copy(metacopy, 4, 0, 32);
    }
    setXattr(node, K.metacopy, metacopy);
    if (node.payload && node.payload.length > 0) {
      setXattr(node, K.redirect, Buffer.concat([SLASH, node.payload]));
    }
  }
  if (isWhiteout(node)) {
    // A whiteout has no data, whatever size the input claimed.
    node.size = 0;
    node.mode = S_IFREG | (node.mode & ~S_IFMT);
    setXattr(node, K.escWhiteout, EMPTY);
    setXattr(node, K.userWhiteout, EMPTY);
    const parent = node.parent;
    if (parent) {
      setXattr(parent, K.escWhiteouts, EMPTY);
      setXattr(parent, K.userWhiteouts, EMPTY);
      if (version >= 1) {
        setXattr(parent, K.escOpaque, utf8('x'));
        setXattr(parent, K.userOpaque, utf8('x'));
      }
    }
  }
}

function rewriteNode(node: WNode, parent: WNode, version: number): void {
  addOverlayXattrs(node, version);
  if (node.children) {
    if (!node.children.some((e) => e.name.equals(DOT))) insertSorted(node.children, { name: DOT, node, isLink: true });
    if (!node.children.some((e) => e.name.equals(DOTDOT))) insertSorted(node.children, { name: DOTDOT, node: parent, isLink: true });
    for (const e of node.children) if (!e.isLink) rewriteNode(e.node, node, version);
  }
}

const HEX = '0123456789abcdef';

function addRootWhiteouts(root: WNode): void {
  const selinux = getXattr(root, K.selinux);
  const children = root.children!;
  const existing = new Set(children.map((e) => e.name.toString('latin1')));
  for (let i = 0; i < 256; i++) {
    const name = HEX[i >> 4] + HEX[i & 15];
    if (existing.has(name)) continue;
    const child = newWNode(S_IFCHR | 0o644, root);
    child.uid = root.uid;
    child.gid = root.gid;
    child.mtimeSec = root.mtimeSec;
    child.mtimeNsec = root.mtimeNsec;
    if (selinux) child.xattrs.push({ key: K.selinux, value: selinux, sharedOffset: -1 });
    insertSorted(children, { name: Buffer.from(name, 'latin1'), node: child, isLink: false });
  }
}

interface Order {
  nodes: WNode[];
  minSec: number;
  minNsec: number;
  hasAcl: boolean;
}

function computeOrder(root: WNode): Order {
  const nodes: WNode[] = [root];
  let minSec = root.mtimeSec;
  let minNsec = root.mtimeNsec;
  let hasAcl = false;
  for (let i = 0; i < nodes.length; i++) {
    const node = nodes[i];
    if (node.children) {
      let nlink = 2;
      for (const e of node.children) if (!e.isLink && (e.node.mode & S_IFMT) === S_IFDIR) nlink++;
      node.nlink = nlink;
    }
    if (node.xattrs.length > 1) node.xattrs.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    if (node.mtimeSec < minSec || (node.mtimeSec === minSec && node.mtimeNsec < minNsec)) {
      minSec = node.mtimeSec;
      minNsec = node.mtimeNsec;
    }
    node.ino = i;
    if (!hasAcl) {
      for (const x of node.xattrs) if (x.key === K.aclAccess || x.key === K.aclDefault) hasAcl = true;
    }
    if (node.children) for (const e of node.children) if (!e.isLink) nodes.push(e.node);
  }
  return { nodes, minSec, minNsec, hasAcl };
}

const prefixCache = new Map<string, readonly [number, number]>();

/** Name index and the length of the prefix it replaces. */
function xattrPrefix(key: string): readonly [index: number, prefixLen: number] {
  let hit = prefixCache.get(key);
  if (!hit) {
    hit = [0, 0];
    for (const [prefix, index] of XATTR_PREFIXES) {
      if (key.startsWith(prefix)) {
        hit = [index, prefix.length];
        break;
      }
    }
    if (prefixCache.size < 4096) prefixCache.set(key, hit);
  }
  return hit;
}

function xattrEntrySize(x: WXattr): number {
  const [, plen] = xattrPrefix(x.key);
  return roundUp(XATTR_ENTRY_SIZE + x.key.length - plen + x.value.length, 4);
}

function roundUp(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}

interface SharedXattrs {
  list: WXattr[];
  size: number;
}

/** FNV-1a over the bytes: cheap, and only used to bucket values before comparing them. */
function hashBytes(b: Buffer): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < b.length; i++) h = Math.imul(h ^ b[i], 0x01000193);
  return h >>> 0;
}

/** Every (name, value) pair used by more than one inode goes to the shared area once. */
function computeSharedXattrs(nodes: WNode[]): SharedXattrs {
  interface Count {
    x: WXattr;
    count: number;
    offset: number;
  }
  // Names repeat a lot and values rarely: count per name, then per value.
  // Values are told apart by a hash first, by their bytes only when hashes collide.
  const byName = new Map<string, Map<number, Count[]>>();
  const all: Count[] = [];
  const entryOf: Count[][] = [];
  for (const node of nodes) {
    const mine: Count[] = [];
    for (const x of node.xattrs) {
      let values = byName.get(x.key);
      if (!values) byName.set(x.key, (values = new Map()));
      const h = hashBytes(x.value);
      let bucket = values.get(h);
      if (!bucket) values.set(h, (bucket = []));
      let c = bucket.find((e) => e.x.value.equals(x.value));
      if (c) c.count++;
      else {
        c = { x, count: 1, offset: -1 };
        bucket.push(c);
        all.push(c);
      }
      mine.push(c);
    }
    entryOf.push(mine);
  }
  const shared = all.filter((c) => c.count > 1);
  // The reference's canonical order: name, then value length, then value, all descending.
  shared.sort((a, b) => {
    if (a.x.key !== b.x.key) return a.x.key < b.x.key ? 1 : -1;
    if (a.x.value.length !== b.x.value.length) return b.x.value.length - a.x.value.length;
    return Buffer.compare(b.x.value, a.x.value);
  });
  let offset = 0;
  for (const c of shared) {
    c.offset = offset;
    offset += xattrEntrySize(c.x);
  }
  for (let n = 0; n < nodes.length; n++) {
    const node = nodes[n];
    const mine = entryOf[n];
    let nShared = 0;
    for (let i = 0; i < node.xattrs.length; i++) {
      const x = node.xattrs[i];
      const c = mine[i];
      if (c.offset >= 0 && nShared < XATTR_LONG_PREFIX) {
        x.sharedOffset = c.offset;
        nShared++;
      } else x.sharedOffset = -1;
    }
  }
  return { list: shared.map((c) => c.x), size: offset };
}

function chunkBits(size: number): number {
  // ilog2(size - 1) + 1, at least one block, at most what the format can express.
  const m = size - 1;
  let bits: number;
  if (m <= 0) bits = 1;
  else if (m < 0x100000000) bits = 32 - Math.clz32(m);
  else {
    bits = 32 - Math.clz32(Math.floor(m / 0x100000000)) + 32;
  }
  if (bits < BLOCK_BITS) bits = BLOCK_BITS;
  if (bits - BLOCK_BITS > CHUNK_FORMAT_BLKBITS_MASK) bits = CHUNK_FORMAT_BLKBITS_MASK + BLOCK_BITS;
  return bits;
}

function chunkCount(size: number): number {
  return Math.ceil(size / 2 ** chunkBits(size));
}

function computeDirSize(node: WNode): void {
  let nBlocks = 0;
  let used = 0;
  for (const e of node.children!) {
    const len = DIRENT_SIZE + e.name.length;
    if (used + len > BLOCK_SIZE) {
      nBlocks++;
      used = 0;
    }
    used += len;
  }
  // Never inline more than half a block of directory entries.
  if (used > BLOCK_SIZE / 2) {
    nBlocks++;
    used = 0;
  }
  node.nBlocks = nBlocks;
  node.tailSize = used;
}

function computeDataSize(node: WNode): void {
  const type = node.mode & S_IFMT;
  node.nBlocks = 0;
  node.tailSize = 0;
  if (type === S_IFDIR) computeDirSize(node);
  else if (type === S_IFLNK) node.tailSize = node.payload ? node.payload.length : 0;
  else if (type === S_IFREG && node.size > 0) {
    if (node.content) {
      node.nBlocks = Math.floor(node.size / BLOCK_SIZE);
      node.tailSize = node.size % BLOCK_SIZE;
      if (node.tailSize > BLOCK_SIZE / 2) {
        node.nBlocks++;
        node.tailSize = 0;
      }
    } else node.tailSize = chunkCount(node.size) * 4;
  }
}

function inodeSizeField(node: WNode): number {
  const type = node.mode & S_IFMT;
  if (type === S_IFDIR || type === S_IFLNK) return node.nBlocks * BLOCK_SIZE + node.tailSize;
  if (type === S_IFREG) return node.size;
  return 0;
}

function fitsCompact(node: WNode, order: Order): boolean {
  if (node.mtimeSec !== order.minSec || node.mtimeNsec !== order.minNsec) return false;
  if (node.nlink > 0xffff || node.uid > 0xffff || node.gid > 0xffff) return false;
  const type = node.mode & S_IFMT;
  const size = type === S_IFDIR ? node.nBlocks * BLOCK_SIZE + node.tailSize : node.size;
  return size <= 0xffffffff;
}

function xattrAreaSize(node: WNode): number {
  let nShared = 0;
  let inline = 0;
  for (const x of node.xattrs) {
    if (x.sharedOffset >= 0) nShared++;
    else inline += xattrEntrySize(x);
  }
  if (nShared === 0 && inline === 0) return 0;
  return roundUp(XATTR_IBODY_HEADER_SIZE + nShared * 4 + inline, 4);
}

/** Padding before an inode so its inline tail does not cross a block boundary. */
function tailPadding(node: WNode, pos: number, headerSize: number): number {
  const nonTail = headerSize + node.xattrSize;
  if ((node.mode & S_IFMT) === S_IFLNK) {
    // The kernel wants the inode and an inline symlink target in one block;
    // a target that cannot fit beside its inode goes to a data block.
    const total = nonTail + node.tailSize;
    if (total >= BLOCK_SIZE) {
      node.nBlocks++;
      node.tailSize = 0;
    }
    if (Math.floor(pos / BLOCK_SIZE) !== Math.floor((pos + total - 1) / BLOCK_SIZE)) return roundUp(pos, BLOCK_SIZE) - pos;
    return 0;
  }
  let remainder = BLOCK_SIZE - ((pos + nonTail) % BLOCK_SIZE);
  if (remainder < node.tailSize) {
    const pad = roundUp(remainder, SLOT_SIZE);
    remainder = BLOCK_SIZE - ((pos + nonTail + pad) % BLOCK_SIZE);
    if (node.tailSize <= remainder) return pad;
    // It cannot be inlined: the tail moves to a block of its own and the inode to a fresh block.
    node.nBlocks++;
    node.tailSize = 0;
    return roundUp(pos, BLOCK_SIZE) - pos;
  }
  return 0;
}

interface Layout {
  inodesEnd: number;
  dataStart: number;
  nDataBlocks: number;
}

function computeLayout(order: Order, shared: SharedXattrs): Layout {
  let pos = SUPER_OFFSET + SUPER_SIZE;
  const metaStart = Math.floor(pos / BLOCK_SIZE) * BLOCK_SIZE;
  let nDataBlocks = 0;
  for (const node of order.nodes) {
    computeDataSize(node);
    node.compact = fitsCompact(node, order);
    const headerSize = node.compact ? INODE_COMPACT_SIZE : INODE_EXTENDED_SIZE;
    node.xattrSize = xattrAreaSize(node);
    const aligned = roundUp(pos, SLOT_SIZE);
    node.pad = aligned - pos;
    pos = aligned;
    const extra = tailPadding(node, pos, headerSize);
    node.pad += extra;
    pos += extra;
    nDataBlocks += node.nBlocks;
    node.nid = (pos - metaStart) / SLOT_SIZE;
    pos += headerSize + node.xattrSize + node.tailSize;
  }
  const inodesEnd = roundUp(pos, SLOT_SIZE);
  const dataStart = roundUp(inodesEnd + shared.size, BLOCK_SIZE);
  return { inodesEnd, dataStart, nDataBlocks };
}

function fileTypeOf(mode: number): number {
  switch (mode & S_IFMT) {
    case S_IFREG:
      return FT_REG_FILE;
    case S_IFDIR:
      return FT_DIR;
    case S_IFLNK:
      return FT_SYMLINK;
    case S_IFCHR:
      return FT_CHRDEV;
    case S_IFBLK:
      return FT_BLKDEV;
    case S_IFIFO:
      return FT_FIFO;
    case S_IFSOCK:
      return FT_SOCK;
    default:
      return FT_UNKNOWN;
  }
}

class Emitter {
  pos = 0;
  constructor(readonly buf: Buffer) {}
  bytes(b: Uint8Array): void {
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
  skip(n: number): void {
    this.pos += n; // the buffer starts zeroed
  }
  align(n: number): void {
    this.pos = roundUp(this.pos, n);
  }
}

function writeXattrEntry(out: Emitter, x: WXattr): void {
  const [index, plen] = xattrPrefix(x.key);
  const nameLen = x.key.length - plen;
  const b = out.buf;
  b[out.pos] = nameLen;
  b[out.pos + 1] = index;
  b.writeUInt16LE(x.value.length, out.pos + 2);
  out.pos += XATTR_ENTRY_SIZE;
  if (nameLen > 0) b.write(x.key.slice(plen), out.pos, 'latin1');
  out.pos += nameLen;
  b.set(x.value, out.pos);
  out.pos += x.value.length;
  out.align(4);
}

const filterCache = new Map<string, number>();

function filterBit(key: string, index: number, plen: number): number {
  let bit = filterCache.get(key);
  if (bit === undefined) {
    bit = xxh32(Buffer.from(key, 'latin1'), (XATTR_FILTER_SEED + index) >>> 0, plen) & (XATTR_FILTER_BITS - 1);
    if (filterCache.size < 4096) filterCache.set(key, bit);
  }
  return bit;
}

function xattrFilter(node: WNode): number {
  let filter = 0;
  for (const x of node.xattrs) {
    const [index, plen] = xattrPrefix(x.key);
    const bit = filterBit(x.key, index, plen);
    filter |= 1 << bit;
  }
  return (XATTR_FILTER_DEFAULT & ~filter) >>> 0;
}

/** Write directory entries children[first..end) as one chunk (block or inline tail). */
function writeDirents(out: Emitter, entries: WEntry[], first: number, end: number): void {
  const b = out.buf;
  let nameoff = (end - first) * DIRENT_SIZE;
  for (let i = first; i < end; i++) {
    const e = entries[i];
    const p = out.pos;
    b.writeUInt32LE(e.node.nid % 0x100000000, p);
    b.writeUInt32LE(Math.floor(e.node.nid / 0x100000000), p + 4);
    b.writeUInt16LE(nameoff, p + 8);
    b[p + 10] = fileTypeOf(e.node.mode);
    out.pos += DIRENT_SIZE;
    nameoff += e.name.length;
  }
  for (let i = first; i < end; i++) out.bytes(entries[i].name);
}

/** Split a directory's entries into full blocks and the inline tail, as layout decided. */
function direntChunks(node: WNode): Array<[number, number]> {
  const entries = node.children!;
  const chunks: Array<[number, number]> = [];
  let used = 0;
  let first = 0;
  for (let i = 0; i < entries.length; i++) {
    const len = DIRENT_SIZE + entries[i].name.length;
    if (used + len > BLOCK_SIZE) {
      chunks.push([first, i]);
      used = 0;
      first = i;
    }
    used += len;
  }
  if (first < entries.length) chunks.push([first, entries.length]);
  return chunks;
}

function writeInode(out: Emitter, node: WNode, layout: Layout, state: { blockCursor: number }): void {
  out.skip(node.pad);
  const b = out.buf;
  const p = out.pos;
  const type = node.mode & S_IFMT;
  const nShared = node.xattrs.reduce((n, x) => n + (x.sharedOffset >= 0 ? 1 : 0), 0);
  const icount = node.xattrSize === 0 ? 0 : (node.xattrSize - XATTR_IBODY_HEADER_SIZE) / 4 + 1;
  let layoutKind = node.tailSize > 0 ? LAYOUT_FLAT_INLINE : LAYOUT_FLAT_PLAIN;
  let size = 0;
  let chunks = 0;
  let chunkFormat = 0;
  if (type === S_IFDIR) size = node.nBlocks * BLOCK_SIZE + node.tailSize;
  else if (type === S_IFLNK) size = node.nBlocks === 0 ? node.tailSize : node.size;
  else if (type === S_IFREG) {
    size = node.size;
    if (size > 0 && node.content === null) {
      const bits = chunkBits(size);
      layoutKind = LAYOUT_CHUNK_BASED;
      chunks = Math.ceil(size / 2 ** bits);
      chunkFormat = bits - BLOCK_BITS;
    }
  }
  const format = (layoutKind << I_DATALAYOUT_BIT) | (node.compact ? 0 : 1);
  let u = 0;
  if ((type === S_IFDIR || type === S_IFREG || type === S_IFLNK) && node.nBlocks > 0) {
    u = state.blockCursor / BLOCK_SIZE;
    state.blockCursor += node.nBlocks * BLOCK_SIZE;
  } else if (type === S_IFCHR || type === S_IFBLK) u = node.rdev >>> 0;
  // The chunk format shares the union with the block address: it replaces only the low 16 bits.
  if (layoutKind === LAYOUT_CHUNK_BASED) u = ((u & 0xffff0000) | chunkFormat) >>> 0;
  if (node.compact) {
    b.writeUInt16LE(format, p + IC.format);
    b.writeUInt16LE(icount, p + IC.xattrIcount);
    b.writeUInt16LE(node.mode & 0xffff, p + IC.mode);
    b.writeUInt16LE(node.nlink, p + IC.nlink);
    b.writeUInt32LE(size, p + IC.size);
    b.writeUInt32LE(u, p + IC.u);
    b.writeUInt32LE(node.ino, p + IC.ino);
    b.writeUInt16LE(node.uid, p + IC.uid);
    b.writeUInt16LE(node.gid, p + IC.gid);
    out.pos += INODE_COMPACT_SIZE;
  } else {
    b.writeUInt16LE(format, p + IE.format);
    b.writeUInt16LE(icount, p + IE.xattrIcount);
    b.writeUInt16LE(node.mode & 0xffff, p + IE.mode);
    b.writeBigUInt64LE(BigInt(size), p + IE.size);
    b.writeUInt32LE(u, p + IE.u);
    b.writeUInt32LE(node.ino, p + IE.ino);
    b.writeUInt32LE(node.uid >>> 0, p + IE.uid);
    b.writeUInt32LE(node.gid >>> 0, p + IE.gid);
    b.writeBigInt64LE(BigInt(node.mtimeSec), p + IE.mtime);
    b.writeUInt32LE(node.mtimeNsec >>> 0, p + IE.mtimeNsec);
    b.writeUInt32LE(node.nlink >>> 0, p + IE.nlink);
    out.pos += INODE_EXTENDED_SIZE;
  }
  if (node.xattrSize > 0) {
    const h = out.pos;
    b.writeUInt32LE(xattrFilter(node), h + XH.nameFilter);
    b[h + XH.sharedCount] = nShared;
    out.pos += XATTR_IBODY_HEADER_SIZE;
    for (const x of node.xattrs) {
      if (x.sharedOffset < 0) continue;
      b.writeUInt32LE(((layout.inodesEnd % BLOCK_SIZE) + x.sharedOffset) / 4, out.pos);
      out.pos += 4;
    }
    for (const x of node.xattrs) if (x.sharedOffset < 0) writeXattrEntry(out, x);
  }
  if (type === S_IFDIR) {
    if (node.tailSize > 0) {
      const chunks = direntChunks(node);
      const [first, end] = chunks[chunks.length - 1];
      writeDirents(out, node.children!, first, end);
    }
  } else if (type === S_IFLNK) {
    if (node.nBlocks === 0 && node.payload) out.bytes(node.payload);
  } else if (type === S_IFREG && node.tailSize > 0) {
    if (node.content) out.bytes(node.content.subarray(node.size - node.tailSize, node.size));
    else writeNullChunks(out, chunks);
  }
}

function writeNullChunks(out: Emitter, count: number): void {
  out.buf.fill(0xff, out.pos, out.pos + count * 4);
  out.pos += count * 4;
}

function writeDataBlocks(out: Emitter, node: WNode): void {
  if (node.nBlocks === 0) return;
  const type = node.mode & S_IFMT;
  if (type === S_IFDIR) {
    const chunks = direntChunks(node);
    const inBlocks = node.tailSize > 0 ? chunks.slice(0, -1) : chunks;
    for (const [first, end] of inBlocks) {
      writeDirents(out, node.children!, first, end);
      out.align(BLOCK_SIZE);
    }
  } else if (type === S_IFREG && !node.content) {
    // A chunk index too large to inline fills one block of null chunks.
    writeNullChunks(out, BLOCK_SIZE / 4);
  } else if (type === S_IFREG || type === S_IFLNK) {
    const data = type === S_IFREG ? node.content! : node.payload!;
    out.bytes(data.subarray(0, Math.min(node.size, node.nBlocks * BLOCK_SIZE)));
    out.align(BLOCK_SIZE);
  }
}

function validateVersions(opts: WriteOptions): [number, number] {
  const min = opts.minVersion ?? DEFAULT_MIN_VERSION;
  let max = opts.maxVersion ?? DEFAULT_MAX_VERSION;
  if (!Number.isInteger(min) || min < 0 || min > FORMAT_VERSION_MAX) {
    throw new ImageWriteError(`unsupported format version ${min} (supported: 0..${FORMAT_VERSION_MAX})`);
  }
  if (!Number.isInteger(max) || max < 0 || max > FORMAT_VERSION_MAX) {
    throw new ImageWriteError(`unsupported format version ${max} (supported: 0..${FORMAT_VERSION_MAX})`);
  }
  if (max < min) max = min;
  return [min, max];
}

/** Write the composefs image of a tree. The tree itself is not modified. */
export function writeImageWithInfo(tree: Inode, opts: WriteOptions = {}): WriteResult {
  const [min, max] = validateVersions(opts);
  if ((tree.mode & S_IFMT) !== S_IFDIR) throw new ImageWriteError('the root of an image must be a directory');
  const root = copyTree(tree);
  const version = chooseVersion(root, min, max);

  rewriteNode(root, root, version);
  setXattr(root, K.opaque, utf8('y'));
  addRootWhiteouts(root);

  const order = computeOrder(root);
  const shared = computeSharedXattrs(order.nodes);
  const layout = computeLayout(order, shared);
  const rootNid = order.nodes[0].nid;
  if (rootNid > 0xffff) throw new ImageWriteError('root inode does not fit in the superblock');

  const totalSize = layout.dataStart + layout.nDataBlocks * BLOCK_SIZE;
  const image = Buffer.alloc(totalSize);
  image.writeUInt32LE(COMPOSEFS_MAGIC, HDR.magic);
  image.writeUInt32LE(COMPOSEFS_HEADER_VERSION, HDR.version);
  image.writeUInt32LE(order.hasAcl ? COMPOSEFS_FLAG_HAS_ACL : 0, HDR.flags);
  image.writeUInt32LE(version, HDR.composefsVersion);

  const sb = SUPER_OFFSET;
  image.writeUInt32LE(SUPER_MAGIC_V1, sb + SB.magic);
  image.writeUInt32LE(FEATURE_COMPAT_MTIME | FEATURE_COMPAT_XATTR_FILTER, sb + SB.featureCompat);
  image[sb + SB.blkszbits] = BLOCK_BITS;
  image.writeUInt16LE(rootNid, sb + SB.rootNid);
  image.writeBigUInt64LE(BigInt(order.nodes.length), sb + SB.inos);
  image.writeBigInt64LE(BigInt(order.minSec), sb + SB.buildTime);
  image.writeUInt32LE(order.minNsec >>> 0, sb + SB.buildTimeNsec);
  image.writeUInt32LE(layout.dataStart / BLOCK_SIZE + layout.nDataBlocks, sb + SB.blocks);
  image.writeUInt32LE(Math.floor((SUPER_OFFSET + SUPER_SIZE) / BLOCK_SIZE), sb + SB.metaBlkaddr);
  image.writeUInt32LE(Math.floor(layout.inodesEnd / BLOCK_SIZE), sb + SB.xattrBlkaddr);

  const out = new Emitter(image);
  out.pos = SUPER_OFFSET + SUPER_SIZE;
  const state = { blockCursor: layout.dataStart };
  for (const node of order.nodes) writeInode(out, node, layout, state);
  out.align(SLOT_SIZE);
  if (out.pos !== layout.inodesEnd) throw new ImageWriteError(`internal layout mismatch at inode table end (${out.pos} != ${layout.inodesEnd})`);
  for (const x of shared.list) writeXattrEntry(out, x);
  out.align(BLOCK_SIZE);
  if (out.pos !== layout.dataStart) throw new ImageWriteError('internal layout mismatch at data start');
  for (const node of order.nodes) writeDataBlocks(out, node);
  if (out.pos !== totalSize) throw new ImageWriteError(`internal layout mismatch at image end (${out.pos} != ${totalSize})`);
  return { image, version };
}

export function writeImage(tree: Inode, opts: WriteOptions = {}): Buffer {
  return writeImageWithInfo(tree, opts).image;
}
