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
  direntFileType,
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

/** How an xattr's value is held: as bytes, or derived from the file's digest or backing path. */
const enum ValueKind {
  Bytes,
  /** `trusted.overlay.metacopy`: a 4-byte header and the fs-verity digest (or empty without one). */
  Metacopy,
  /** `trusted.overlay.redirect`: `/` followed by the backing path. */
  Redirect,
}

interface WXattr {
  /** The name as a latin1 string: one char per byte, so string order is byte order. */
  key: string;
  kind: ValueKind;
  /** The value (Bytes), the digest (Metacopy) or the backing path (Redirect). */
  data: Buffer | null;
  /** Offset in the shared xattr area, or -1 when stored inline. */
  sharedOffset: number;
  /** Prefix index, stored suffix and filter bit of the name (set once the names are final). */
  info?: KeyInfo;
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
const X = utf8('x');
const Y = utf8('y');
const DOT = utf8('.');
const DOTDOT = utf8('..');
const SLASH = utf8('/');

function setXattr(node: WNode, key: string, kind: ValueKind, data: Buffer | null): void {
  const list = node.xattrs;
  for (let i = 0; i < list.length; i++) {
    if (list[i].key === key) {
      list[i].kind = kind;
      list[i].data = data;
      return;
    }
  }
  list.push({ key, kind, data, sharedOffset: -1 });
}

function valueLength(x: WXattr): number {
  if (x.kind === ValueKind.Bytes) return x.data!.length;
  if (x.kind === ValueKind.Metacopy) return x.data ? 4 + 32 : 0;
  return 1 + x.data!.length;
}

function writeValue(b: Buffer, pos: number, x: WXattr): void {
  if (x.kind === ValueKind.Bytes) b.set(x.data!, pos);
  else if (x.kind === ValueKind.Metacopy) {
    if (!x.data) return;
    b[pos] = 0; // version
    b[pos + 1] = 4 + 32; // length
    b[pos + 2] = 0; // flags
    b[pos + 3] = FS_VERITY_HASH_ALG_SHA256;
    copyBytes(b, pos + 4, x.data, 0, 32);
  } else {
    b[pos] = 0x2f; // '/'
    b.set(x.data!, pos + 1);
  }
}

function valueBytes(x: WXattr): Buffer {
  if (x.kind === ValueKind.Bytes) return x.data!;
  const b = Buffer.alloc(valueLength(x));
  writeValue(b, 0, x);
  return b;
}

function sameValue(a: WXattr, b: WXattr): boolean {
  if (a.kind !== b.kind) return valueBytes(a).equals(valueBytes(b));
  if (a.data === b.data) return true;
  if (!a.data || !b.data) return false;
  return a.data.equals(b.data);
}

/** strcmp on names (which hold no NUL). */
function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = a.length < b.length ? a.length : b.length;
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

function insertSorted(entries: WEntry[], entry: WEntry): void {
  let lo = 0;
  let hi = entries.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (compareBytes(entries[mid].name, entry.name) < 0) lo = mid + 1;
    else hi = mid;
  }
  entries.splice(lo, 0, entry);
}

/** A directory entry name the image can hold: not empty, not `.`/`..`, no `/` or NUL, at most 255 bytes. */
function checkName(name: Buffer): void {
  const n = name.length;
  let bad = n === 0 || n > 255 || (name[0] === 0x2e && (n === 1 || (n === 2 && name[1] === 0x2e)));
  for (let i = 0; i < n && !bad; i++) bad = name[i] === 0x2f || name[i] === 0;
  if (bad) throw new ImageWriteError(`invalid file name '${name.toString('latin1')}'`);
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

/** Xattr names as latin1 strings, decoded once per distinct name. */
class KeyInterner {
  private readonly table = new Map<number, Array<[Buffer, string]>>();

  get(bytes: Buffer): string {
    let h = 0x811c9dc5;
    for (let i = 0; i < bytes.length; i++) h = Math.imul(h ^ bytes[i], 0x01000193);
    let bucket = this.table.get(h);
    if (bucket) {
      for (let i = 0; i < bucket.length; i++) if (compareBytes(bucket[i][0], bytes) === 0) return bucket[i][1];
    } else this.table.set(h, (bucket = []));
    const str = bytes.toString('latin1');
    bucket.push([bytes, str]);
    return str;
  }
}

function copyNode(inode: Inode, parent: WNode | null, keys: KeyInterner): WNode {
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
  const xs = inode.xattrs;
  for (let i = 0; i < xs.length; i++) {
    n.xattrs.push({ key: keys.get(xs[i].key), kind: ValueKind.Bytes, data: xs[i].value, sharedOffset: -1 });
  }
  return n;
}

/** Copy the caller's tree into writer nodes (without recursion); hard links keep pointing at one node. */
function copyTree(root: Inode): { root: WNode; hasWhiteout: boolean } {
  let hasWhiteout = false;
  const keys = new KeyInterner();
  const rootNode = copyNode(root, null, keys);
  const copiedFrom: Inode[] = [root];
  const copies: WNode[] = [rootNode];
  const links: Array<[WEntry, Inode]> = [];
  const stackIn: Inode[] = [root];
  const stackOut: WNode[] = [rootNode];
  while (stackIn.length > 0) {
    const inode = stackIn.pop()!;
    const node = stackOut.pop()!;
    const children = inode.children;
    if (!children) continue;
    if ((node.mode & S_IFMT) !== S_IFDIR) throw new ImageWriteError('only directories can have children');
    const out = node.children!;
    for (let i = 0; i < children.length; i++) {
      const d = children[i];
      checkName(d.name);
      if (d.hardlink) {
        const entry: WEntry = { name: d.name, node: rootNode, isLink: true };
        links.push([entry, d.inode]);
        out.push(entry);
        continue;
      }
      const child = copyNode(d.inode, node, keys);
      if (!hasWhiteout) hasWhiteout = isWhiteout(child);
      copiedFrom.push(d.inode);
      copies.push(child);
      out.push({ name: d.name, node: child, isLink: false });
      if (d.inode.children) {
        stackIn.push(d.inode);
        stackOut.push(child);
      }
    }
  }
  if (links.length > 0) {
    const byInode = new Map<Inode, WNode>();
    for (let i = 0; i < copiedFrom.length; i++) byInode.set(copiedFrom[i], copies[i]);
    if (byInode.size !== copiedFrom.length) throw new ImageWriteError('an inode is reachable under two primary names');
    for (const [entry, target] of links) {
      const t = byInode.get(target);
      const name = entry.name.toString();
      if (!t) throw new ImageWriteError(`hard link ${name} points outside the tree`);
      if ((t.mode & S_IFMT) === S_IFDIR) throw new ImageWriteError(`hard link ${name} points at a directory`);
      entry.node = t;
    }
  }
  return { root: rootNode, hasWhiteout };
}

function isWhiteout(n: WNode): boolean {
  return (n.mode & S_IFMT) === S_IFCHR && n.rdev === 0;
}

/** The reference upgrades to version 1 (xwhiteout marking) when the tree holds a whiteout. */
function chooseVersion(hasWhiteout: boolean, min: number, max: number): number {
  return min < 1 && max >= 1 && hasWhiteout ? 1 : min;
}

function addOverlayXattrs(node: WNode, version: number): void {
  for (const x of node.xattrs) {
    if (x.key.startsWith(K.overlayPrefix)) x.key = K.escapePrefix + x.key.slice(K.overlayPrefix.length);
  }
  const type = node.mode & S_IFMT;
  if (type === S_IFREG && node.size > 0 && node.content === null) {
    setXattr(node, K.metacopy, ValueKind.Metacopy, node.digest);
    if (node.payload && node.payload.length > 0) setXattr(node, K.redirect, ValueKind.Redirect, node.payload);
  }
  if (isWhiteout(node)) {
    // A whiteout has no data, whatever size the input claimed.
    node.size = 0;
    node.mode = S_IFREG | (node.mode & ~S_IFMT);
    setXattr(node, K.escWhiteout, ValueKind.Bytes, EMPTY);
    setXattr(node, K.userWhiteout, ValueKind.Bytes, EMPTY);
    const parent = node.parent;
    if (parent) {
      setXattr(parent, K.escWhiteouts, ValueKind.Bytes, EMPTY);
      setXattr(parent, K.userWhiteouts, ValueKind.Bytes, EMPTY);
      if (version >= 1) {
        setXattr(parent, K.escOpaque, ValueKind.Bytes, X);
        setXattr(parent, K.userOpaque, ValueKind.Bytes, X);
      }
    }
  }
}

function rewriteTree(root: WNode, version: number): void {
  const nodes: WNode[] = [root];
  const parents: WNode[] = [root];
  while (nodes.length > 0) {
    const node = nodes.pop()!;
    const parent = parents.pop()!;
    addOverlayXattrs(node, version);
    const children = node.children;
    if (!children) continue;
    // Names were checked: the tree holds no `.` or `..` of its own.
    insertSorted(children, { name: DOT, node, isLink: true });
    insertSorted(children, { name: DOTDOT, node: parent, isLink: true });
    for (let i = 0; i < children.length; i++) {
      if (!children[i].isLink) {
        nodes.push(children[i].node);
        parents.push(node);
      }
    }
  }
}

const HEX = '0123456789abcdef';

function addRootWhiteouts(root: WNode): void {
  const selinux = root.xattrs.find((x) => x.key === K.selinux) ?? null;
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
    if (selinux) child.xattrs.push({ ...selinux, sharedOffset: -1 });
    insertSorted(children, { name: Buffer.from(name, 'latin1'), node: child, isLink: false });
  }
}

interface Order {
  nodes: WNode[];
  minSec: number;
  minNsec: number;
  hasAcl: boolean;
}

function byKey(a: WXattr, b: WXattr): number {
  return a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
}

function isSortedByKey(xattrs: WXattr[]): boolean {
  for (let i = 1; i < xattrs.length; i++) if (xattrs[i - 1].key > xattrs[i].key) return false;
  return true;
}

function computeOrder(root: WNode): Order {
  const nodes: WNode[] = [root];
  let minSec = root.mtimeSec;
  let minNsec = root.mtimeNsec;
  let hasAcl = false;
  for (let i = 0; i < nodes.length; i++) {
    const node = nodes[i];
    const children = node.children;
    if (children) {
      let nlink = 2;
      for (let j = 0; j < children.length; j++) {
        const e = children[j];
        if (!e.isLink && (e.node.mode & S_IFMT) === S_IFDIR) nlink++;
      }
      node.nlink = nlink;
    }
    const xattrs = node.xattrs;
    if (xattrs.length > 1 && !isSortedByKey(xattrs)) xattrs.sort(byKey);
    if (node.mtimeSec < minSec || (node.mtimeSec === minSec && node.mtimeNsec < minNsec)) {
      minSec = node.mtimeSec;
      minNsec = node.mtimeNsec;
    }
    node.ino = i;
    if (!hasAcl) {
      for (let j = 0; j < xattrs.length; j++) if (xattrs[j].key === K.aclAccess || xattrs[j].key === K.aclDefault) hasAcl = true;
    }
    if (children) for (let j = 0; j < children.length; j++) if (!children[j].isLink) nodes.push(children[j].node);
  }
  return { nodes, minSec, minNsec, hasAcl };
}

interface KeyInfo {
  /** EROFS name index of the prefix (0: none, the whole name is stored). */
  index: number;
  /** The name without its prefix, as stored in the image. */
  suffix: Buffer;
  /** This name's bit in the per-inode xattr bloom filter. */
  filterBit: number;
}

const keyInfos = new Map<string, KeyInfo>();

function keyInfo(key: string): KeyInfo {
  let info = keyInfos.get(key);
  if (!info) {
    let index = 0;
    let plen = 0;
    for (const [prefix, i] of XATTR_PREFIXES) {
      if (key.startsWith(prefix)) {
        index = i;
        plen = prefix.length;
        break;
      }
    }
    const suffix = Buffer.from(key.slice(plen), 'latin1');
    const filterBit = xxh32(suffix, (XATTR_FILTER_SEED + index) >>> 0) & (XATTR_FILTER_BITS - 1);
    info = { index, suffix, filterBit };
    // Names repeat across a tree; bound the cache for trees where they do not.
    if (keyInfos.size < 65536) keyInfos.set(key, info);
  }
  return info;
}

function xattrEntrySize(x: WXattr): number {
  return roundUp(XATTR_ENTRY_SIZE + (x.info ?? keyInfo(x.key)).suffix.length + valueLength(x), 4);
}

function roundUp(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}

interface SharedXattrs {
  list: WXattr[];
  size: number;
}

/**
 * FNV-1a over the length and the first and last bytes: only used to bucket
 * values before comparing them, and digests and object paths differ early.
 */
function hashBytes(b: Buffer | null, seed: number): number {
  let h = 0x811c9dc5 ^ seed;
  if (!b) return h >>> 0;
  const n = b.length;
  h = Math.imul(h ^ n, 0x01000193);
  const head = n < 16 ? n : 16;
  for (let i = 0; i < head; i++) h = Math.imul(h ^ b[i], 0x01000193);
  for (let i = n - 8 > head ? n - 8 : head; i < n; i++) h = Math.imul(h ^ b[i], 0x01000193);
  return h >>> 0;
}

/** Every (name, value) pair used by more than one inode goes to the shared area once. */
function sameXattr(a: WXattr, b: WXattr): boolean {
  return a.key === b.key && sameValue(a, b);
}

/**
 * Every (name, value) pair used by more than one inode goes to the shared area
 * once. Pairs are grouped by sorting (hash, position) keys in a Float64Array,
 * which costs far less than a hash table of objects for the many unique pairs.
 */
function computeSharedXattrs(nodes: WNode[]): SharedXattrs {
  const all: WXattr[] = [];
  const keyHashes = new Map<string, number>();
  for (let n = 0; n < nodes.length; n++) {
    const xattrs = nodes[n].xattrs;
    for (let i = 0; i < xattrs.length; i++) {
      const x = xattrs[i];
      x.info = keyInfo(x.key);
      all.push(x);
    }
  }
  // Positions need 21 bits (2M xattrs); beyond that, fall back to a plain sort.
  const POS = 0x200000;
  const keys = new Float64Array(all.length);
  for (let i = 0; i < all.length; i++) {
    const x = all[i];
    let kh = keyHashes.get(x.key);
    if (kh === undefined) keyHashes.set(x.key, (kh = hashBytes(x.info!.suffix, x.info!.index)));
    keys[i] = hashBytes(x.data, kh ^ x.kind) * POS + i;
  }
  if (all.length < POS) keys.sort();
  else keys.sort((a, b) => a - b);
  const groupOf = new Int32Array(all.length).fill(-1);
  const count = new Int32Array(all.length);
  const shared: WXattr[] = [];
  for (let start = 0; start < keys.length; ) {
    const hash = Math.floor(keys[start] / POS);
    let end = start + 1;
    while (end < keys.length && Math.floor(keys[end] / POS) === hash) end++;
    // Within one hash, sort out the distinct values (almost always exactly one).
    for (let i = start; i < end; i++) {
      const xi = keys[i] % POS;
      if (groupOf[xi] >= 0) continue;
      groupOf[xi] = xi;
      let c = 1;
      for (let j = i + 1; j < end; j++) {
        const xj = keys[j] % POS;
        if (groupOf[xj] < 0 && sameXattr(all[xi], all[xj])) {
          groupOf[xj] = xi;
          c++;
        }
      }
      count[xi] = c;
      if (c > 1) shared.push(all[xi]);
    }
    start = end;
  }
  // The reference's canonical order: name, then value length, then value, all descending.
  const sortable = shared.map((x) => ({ x, value: valueBytes(x) }));
  sortable.sort((a, b) => {
    if (a.x.key !== b.x.key) return a.x.key < b.x.key ? 1 : -1;
    if (a.value.length !== b.value.length) return b.value.length - a.value.length;
    return compareBytes(b.value, a.value);
  });
  shared.length = 0;
  for (const e of sortable) shared.push(e.x);
  const offsetOf = new Map<WXattr, number>();
  let offset = 0;
  for (const x of shared) {
    offsetOf.set(x, offset);
    offset += xattrEntrySize(x);
  }
  let k = 0;
  for (let n = 0; n < nodes.length; n++) {
    const xattrs = nodes[n].xattrs;
    let nShared = 0;
    for (let i = 0; i < xattrs.length; i++, k++) {
      const leader = groupOf[k];
      const off = count[leader] > 1 ? offsetOf.get(all[leader])! : -1;
      if (off >= 0 && nShared < XATTR_LONG_PREFIX) {
        xattrs[i].sharedOffset = off;
        nShared++;
      } else xattrs[i].sharedOffset = -1;
    }
  }
  return { list: shared, size: offset };
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

const MAX_CHUNK = 2 ** (CHUNK_FORMAT_BLKBITS_MASK + BLOCK_BITS);

/** One chunk covers any file below the largest chunk size; only bigger files need several. */
function chunkCount(size: number): number {
  return size - 1 < MAX_CHUNK ? 1 : Math.ceil(size / MAX_CHUNK);
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


/** src[from..to) into dst at pos, without making a view of src first. */
function copyBytes(dst: Uint8Array, pos: number, src: Uint8Array, from: number, to: number): void {
  if (from === 0 && to === src.length) dst.set(src, pos);
  else if (to - from <= 64) for (let i = from; i < to; i++) dst[pos++] = src[i];
  else dst.set(new Uint8Array(src.buffer, src.byteOffset + from, to - from), pos);
}

function put16(b: Uint8Array, p: number, v: number): void {
  b[p] = v & 0xff;
  b[p + 1] = (v >>> 8) & 0xff;
}

function put32(b: Uint8Array, p: number, v: number): void {
  b[p] = v & 0xff;
  b[p + 1] = (v >>> 8) & 0xff;
  b[p + 2] = (v >>> 16) & 0xff;
  b[p + 3] = (v >>> 24) & 0xff;
}

/** A 64-bit little-endian integer from a safe integer (negative values as two's complement). */
function put64(b: Uint8Array, p: number, v: number): void {
  put32(b, p, v >>> 0);
  put32(b, p + 4, Math.floor(v / 0x100000000) >>> 0);
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
  const { index, suffix } = x.info ?? keyInfo(x.key);
  const b = out.buf;
  const p = out.pos;
  const vlen = valueLength(x);
  b[p] = suffix.length;
  b[p + 1] = index;
  put16(b, p + 2, vlen);
  b.set(suffix, p + XATTR_ENTRY_SIZE);
  writeValue(b, p + XATTR_ENTRY_SIZE + suffix.length, x);
  out.pos = p + XATTR_ENTRY_SIZE + suffix.length + vlen;
  out.align(4);
}

function xattrFilter(node: WNode): number {
  let filter = 0;
  const xattrs = node.xattrs;
  for (let i = 0; i < xattrs.length; i++) filter |= 1 << (xattrs[i].info ?? keyInfo(xattrs[i].key)).filterBit;
  return (XATTR_FILTER_DEFAULT & ~filter) >>> 0;
}

/** Write directory entries children[first..end) as one chunk (block or inline tail). */
function writeDirents(out: Emitter, entries: WEntry[], first: number, end: number): void {
  const b = out.buf;
  let nameoff = (end - first) * DIRENT_SIZE;
  for (let i = first; i < end; i++) {
    const e = entries[i];
    const p = out.pos;
    put64(b, p, e.node.nid);
    put16(b, p + 8, nameoff);
    b[p + 10] = direntFileType(e.node.mode);
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
  let nShared = 0;
  for (let i = 0; i < node.xattrs.length; i++) if (node.xattrs[i].sharedOffset >= 0) nShared++;
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
      chunks = chunkCount(size);
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
    put16(b, p + IC.format, format);
    put16(b, p + IC.xattrIcount, icount);
    put16(b, p + IC.mode, node.mode & 0xffff);
    put16(b, p + IC.nlink, node.nlink);
    put32(b, p + IC.size, size);
    put32(b, p + IC.u, u);
    put32(b, p + IC.ino, node.ino);
    put16(b, p + IC.uid, node.uid);
    put16(b, p + IC.gid, node.gid);
    out.pos += INODE_COMPACT_SIZE;
  } else {
    put16(b, p + IE.format, format);
    put16(b, p + IE.xattrIcount, icount);
    put16(b, p + IE.mode, node.mode & 0xffff);
    put64(b, p + IE.size, size);
    put32(b, p + IE.u, u);
    put32(b, p + IE.ino, node.ino);
    put32(b, p + IE.uid, node.uid >>> 0);
    put32(b, p + IE.gid, node.gid >>> 0);
    put64(b, p + IE.mtime, node.mtimeSec);
    put32(b, p + IE.mtimeNsec, node.mtimeNsec >>> 0);
    put32(b, p + IE.nlink, node.nlink >>> 0);
    out.pos += INODE_EXTENDED_SIZE;
  }
  if (node.xattrSize > 0) {
    const h = out.pos;
    put32(b, h + XH.nameFilter, xattrFilter(node));
    b[h + XH.sharedCount] = nShared;
    out.pos += XATTR_IBODY_HEADER_SIZE;
    for (const x of node.xattrs) {
      if (x.sharedOffset < 0) continue;
      put32(b, out.pos, ((layout.inodesEnd % BLOCK_SIZE) + x.sharedOffset) / 4);
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
    if (node.content) {
      copyBytes(out.buf, out.pos, node.content, node.size - node.tailSize, node.size);
      out.pos += node.tailSize;
    }
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
    const n = Math.min(node.size, node.nBlocks * BLOCK_SIZE);
    copyBytes(out.buf, out.pos, data, 0, n);
    out.pos += n;
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
  const { root, hasWhiteout } = copyTree(tree);
  const version = chooseVersion(hasWhiteout || isWhiteout(root), min, max);

  rewriteTree(root, version);
  setXattr(root, K.opaque, ValueKind.Bytes, Y);
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
