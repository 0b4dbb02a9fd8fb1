/**
 * A userspace reader of composefs EROFS images, independent of the writer.
 *
 * `readImage` parses an image into the project's tree model the way the
 * reference's `lcfs_load_node_from_image` does, so that the tree prints as the
 * reference's `composefs-info dump` and writes back into the identical image:
 *
 *  - this file decodes the structure (header, inodes, data, directory
 *    entries, xattr entries); what the overlayfs xattrs composefs adds mean
 *    (payload, digest, escaped names, whiteouts) is src/erofs/overlay.ts,
 *    the header check is src/erofs/header.ts, and fsck's checks are a pass
 *    over the layout facts a checking walk hands over (src/erofs/decoded.ts,
 *    src/erofs/image-checks.ts);
 *  - a real 0:0 character device (the `00`..`ff` whiteouts in the root) is
 *    left out;
 *  - entries are visited depth first in name order; the first name that
 *    reaches an inode is its primary one, later names are hard links to the
 *    same `Inode` object;
 *  - compact inodes take the superblock's build time as their mtime.
 *
 * The image is hostile input. Every offset, length, count and name is checked
 * against the image's bounds before it is used; nothing recurses (a deep tree
 * cannot overflow the stack); a directory reached twice (a loop, or a hard
 * link to a directory) is an error; and the bytes the walk may look at are
 * budgeted, so overlapping structures cannot make the work or the memory grow
 * faster than the image. Every failure is an `ImageFormatError` with a
 * one-line message (and the path in the image where there is one).
 *
 * The returned tree shares memory with the image buffer (names, xattr values
 * and file contents are views into it): do not modify the buffer while the
 * tree is in use.
 */
import {
  BLOCK_SIZE,
  DE,
  DIRENT_SIZE,
  FEATURE_COMPAT_XATTR_FILTER,
  FT_UNKNOWN,
  direntFileType,
  I_DATALAYOUT_BIT,
  I_DATALAYOUT_MASK,
  IC,
  IE,
  INODE_COMPACT_SIZE,
  INODE_EXTENDED_SIZE,
  LAYOUT_CHUNK_BASED,
  LAYOUT_FLAT_INLINE,
  LAYOUT_FLAT_PLAIN,
  SLOT_SIZE,
  XATTR_ENTRY_SIZE,
  XATTR_IBODY_HEADER_SIZE,
  XH,
} from './format.js';
import { ImageChecker, type ImageProblem } from './image-checks.js';
import { placePath, type DecodeListener, type DirectoryPlace, type EntryPlace } from './decoded.js';

export type { ImageProblem } from './image-checks.js';
import { XATTR_NAME_PREFIXES, XattrMeaning, applyXattr, treeXattrName, xattrMeaning } from './overlay.js';
import { ImageFormatError, printablePath, readImageHeader, type ImageHeader } from './header.js';

export { ImageFormatError, printablePath, readImageHeader, imageVersion, checkImageHeader, type ImageHeader } from './header.js';
import {
  S_IFBLK,
  S_IFCHR,
  S_IFDIR,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  type Inode,
} from '../tree/model.js';

export interface ReadImageOptions {
  /**
   * Check mode (what fsck uses). Every problem is reported here instead of
   * ending the read where the damage can be contained: a broken entry is
   * reported and left out, and the walk goes on. The walk hands the layout
   * it decoded to the checks that do not stop the reference from reading an
   * image (sort order, link counts, `.`/`..`, dirent types, xattr filters,
   * tails crossing blocks, counts in the superblock...: a pass of their own,
   * src/erofs/image-checks.ts), in the order it met what they look at.
   * Image-wide damage (header, superblock, root) still throws, after the
   * problems found before it are reported.
   */
  onProblem?: (problem: ImageProblem) => void;
  /** Called for each inode parsed and each directory entry read (for tests and tools that need the layout). */
  trace?: ReadTrace;
  /**
   * Read only these entries of the root directory, and everything below
   * them (the reference's `toplevel_entries`, composefs-info --filter). The
   * others are skipped unread.
   */
  topLevel?: readonly Buffer[];
}

export interface ReadTrace {
  inode?(nid: number, offset: number, info: { compact: boolean; mode: number; size: number; xattrSize: number; dataOffset: number }): void;
  /** `offset` is where the 12-byte dirent is; `nameOffset` where its name starts. */
  dirent?(dirNid: number, offset: number, nameOffset: number, nid: number, name: Buffer): void;
}

export interface ReadImageResult {
  root: Inode;
  header: ImageHeader;
  /** The composefs format version (same as header.version). */
  version: number;
  /** Distinct inodes met, including the whiteouts left out of the tree. */
  inodeCount: number;
}

const MAX_SAFE_HI = 0x1fffff; // high 32 bits of a u64 that still fits a double exactly
const NAME_MAX = 255;

const DOT = 0x2e;
const SLASH = 0x2f;
/** The longest symlink target: PATH_MAX (4096) less its NUL. */
const SYMLINK_MAX = 4095;


/** One inode as stored, after bounds checks. */
interface RawInode {
  nid: number;
  off: number;
  compact: boolean;
  format: number;
  layout: number;
  mode: number;
  nlink: number;
  size: number;
  u: number;
  uid: number;
  gid: number;
  mtimeSec: number;
  mtimeNsec: number;
  isize: number;
  xattrIcount: number;
  xattrSize: number;
}

/** A shared xattr, parsed once however many inodes refer to it. */
interface SharedXattr {
  index: number;
  nameStart: number;
  nameLen: number;
  meaning: XattrMeaning;
  key: Buffer | null;
  /** The value is image[valueStart..valueEnd). */
  valueStart: number;
  valueEnd: number;
}

/** A directory being walked: its entries are `entries[base, end)`; paths are built only for messages. */
interface Frame extends DirectoryPlace {
  readonly inode: Inode;
  nid: number;
  readonly parent: Frame | null;
  readonly name: Buffer | null;
  base: number;
  end: number;
  /** Visiting order (absolute indices) when the stored entries were not sorted (else null: stored order). */
  order: number[] | null;
  next: number;
  subdirs: number;
}

/**
 * The entries of every directory on the walk's path, in one stack of typed
 * arrays: a directory's entries are pushed when it is entered and dropped
 * when it is left, which the depth-first walk does in stack order. One set of
 * arrays for the whole walk instead of four growing arrays per directory.
 */
class DirentStack {
  /** Where each entry's name is in the image. */
  starts = new Uint32Array(256);
  ends = new Uint32Array(256);
  nids = new Float64Array(256);
  ftypes = new Uint8Array(256);
  top = 0;
  /** What `.` and `..` of the directory read last point at (-1: missing). */
  dot = -1;
  dotdot = -1;

  push(start: number, end: number, nid: number, ftype: number): void {
    const i = this.top;
    if (i === this.starts.length) this.grow();
    this.starts[i] = start;
    this.ends[i] = end;
    this.nids[i] = nid;
    this.ftypes[i] = ftype;
    this.top = i + 1;
  }

  private grow(): void {
    const n = this.starts.length * 2;
    const starts = new Uint32Array(n);
    const ends = new Uint32Array(n);
    const nids = new Float64Array(n);
    const ftypes = new Uint8Array(n);
    starts.set(this.starts);
    ends.set(this.ends);
    nids.set(this.nids);
    ftypes.set(this.ftypes);
    this.starts = starts;
    this.ends = ends;
    this.nids = nids;
    this.ftypes = ftypes;
  }
}

/** Thrown for damage confined to one entry; check mode reports it and skips the entry. */
class EntryError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** The dirent file type of a mode, or -1 when the mode has no valid type. */
function ftypeOf(mode: number): number {
  const ft = direntFileType(mode);
  return ft === FT_UNKNOWN ? -1 : ft;
}

/** Little-endian reads as plain arithmetic: cheaper than Buffer's methods in code that has not warmed up. */
function u16(b: Uint8Array, o: number): number {
  return b[o] | (b[o + 1] << 8);
}

function u32(b: Uint8Array, o: number): number {
  return (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16)) + b[o + 3] * 0x1000000;
}

/**
 * hi * 2^32 + lo, with the multiplication skipped when hi is 0: before V8 has
 * optimised the code, arithmetic with 2^32 (a double) yields a boxed double
 * even for small results, and every nid passed on would then allocate.
 */
function join64(hi: number, lo: number): number {
  return hi === 0 ? lo : hi * 0x100000000 + lo;
}

function i32(b: Uint8Array, o: number): number {
  return b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24);
}



const NONE = 0;
const WHITEOUT = -1;
/** Seen, a directory, node not kept. */
const SEEN_DIR = -2;
/** Seen, not a directory, node not kept (the dump keeps only inodes that may have hard links). */
const SEEN_FILE = -3;

/** nid -> kept node (index + 1) or a marker; a typed array for images of usual size, a Map beyond. */
class NidTable {
  private readonly slots: Int32Array | null;
  private readonly map: Map<number, number> | null;
  readonly nodes: Inode[] = [];
  count = 0;
  whiteouts = 0;

  constructor(maxNid: number) {
    if (maxNid < 1 << 22) {
      this.slots = new Int32Array(Math.max(0, maxNid) + 1);
      this.map = null;
    } else {
      this.slots = null;
      this.map = new Map();
    }
  }

  get(nid: number): number {
    if (this.slots) return nid < this.slots.length ? this.slots[nid] : NONE;
    return this.map!.get(nid) ?? NONE;
  }

  private set(nid: number, v: number): void {
    if (this.slots) this.slots[nid] = v;
    else this.map!.set(nid, v);
  }

  add(nid: number, node: Inode, keep: boolean): void {
    this.count++;
    if (keep) {
      this.nodes.push(node);
      this.set(nid, this.nodes.length);
    } else this.set(nid, node.children ? SEEN_DIR : SEEN_FILE);
  }

  node(v: number): Inode {
    return this.nodes[v - 1];
  }

  whiteout(nid: number): void {
    this.whiteouts++;
    this.set(nid, WHITEOUT);
  }
}

/** @internal What the walk does with each entry: build a tree, or print a dump. */
export interface Visitor {
  /**
   * Whether entry() is done with a non-directory's node when it returns, so
   * the walk may refill one node for all of them (a printer). A transient
   * visitor gets a hard link's node decoded again from its nid; otherwise
   * every node is kept and a hard link gets the very node of its first name.
   */
  transient?: boolean;
  root(node: Inode): void;
  /**
   * An entry of `parent` (its name at image[nameStart..nameEnd), its inode
   * `nid`), depth first in name order; a directory's entries follow until leave().
   */
  entry(parent: Inode, nameStart: number, nameEnd: number, node: Inode, hardlink: boolean, nid: number): void;
  leave(dir: Inode): void;
}

class Reader {
  readonly b: Buffer;
  readonly len: number;
  readonly metaStart: number;
  readonly xattrStart: number;
  /** Bytes of directory data, xattr areas and contents still allowed to be examined. */
  private budget: number;
  private readonly shared = new Map<number, SharedXattr>();
  private readonly filterOn: boolean;
  private readonly raw: RawInode = {
    nid: 0, off: 0, compact: true, format: 0, layout: 0, mode: 0, nlink: 0, size: 0, u: 0,
    uid: 0, gid: 0, mtimeSec: 0, mtimeNsec: 0, isize: 0, xattrIcount: 0, xattrSize: 0,
  };
  /** Where the data of the inode extent() last looked at is (see there); fields, not an object per call. */
  private extBlocks = 0;
  private extBlockBytes = 0;
  private extTailOff = 0;
  private extTail = 0;

  constructor(
    buf: Buffer,
    readonly header: ImageHeader,
    /** Who hears the layout a checking walk decoded (null: a plain read). */
    readonly listener: DecodeListener | null,
    readonly trace: ReadTrace | undefined,
  ) {
    this.b = buf;
    this.len = buf.length;
    this.metaStart = header.metaBlkaddr * BLOCK_SIZE;
    this.xattrStart = header.xattrBlkaddr * BLOCK_SIZE;
    // A well-formed image stores every directory, xattr area and content once,
    // so their sizes add up to less than the image. Allow generous slack.
    this.budget = 4 * buf.length + (1 << 20);
    this.filterOn = (header.featureCompat & FEATURE_COMPAT_XATTR_FILTER) !== 0;
  }

  spend(n: number, nid: number): void {
    this.budget -= n;
    if (this.budget < 0) {
      throw new ImageFormatError(`inode ${nid}: structures overlap far more than a valid image allows (work budget exhausted)`, null, 'overlap');
    }
  }

  need(off: number, n: number, nid: number, what: string): void {
    if (!(off >= 0 && n >= 0 && off + n <= this.len)) {
      throw new EntryError('bounds', `inode ${nid}: ${what} (offset ${off}, ${n} bytes) lies outside the image (${this.len} bytes)`);
    }
  }

  u64(off: number, nid: number, what: string): number {
    const hi = u32(this.b, off + 4);
    if (hi > MAX_SAFE_HI) throw new EntryError('range', `inode ${nid}: ${what} is out of range`);
    return join64(hi, u32(this.b, off));
  }

  inode(nid: number): RawInode {
    const b = this.b;
    const off = this.metaStart + nid * SLOT_SIZE;
    if (!(nid >= 0 && off + INODE_COMPACT_SIZE <= this.len)) {
      throw new EntryError('bounds', `inode ${nid} lies outside the image (${this.len} bytes)`);
    }
    const format = u16(b, off);
    const compact = (format & 1) === 0;
    const layout = (format >> I_DATALAYOUT_BIT) & I_DATALAYOUT_MASK;
    // One record, refilled for every inode: its users are done with it before the next.
    const raw = this.raw;
    raw.nid = nid;
    raw.off = off;
    raw.compact = compact;
    raw.format = format;
    raw.layout = layout;
    raw.xattrSize = 0;
    if (compact) {
      raw.mode = u16(b, off + IC.mode);
      raw.nlink = u16(b, off + IC.nlink);
      raw.size = u32(b, off + IC.size);
      raw.u = u32(b, off + IC.u);
      raw.uid = u16(b, off + IC.uid);
      raw.gid = u16(b, off + IC.gid);
      raw.mtimeSec = this.header.buildTime;
      raw.mtimeNsec = this.header.buildTimeNsec;
      raw.isize = INODE_COMPACT_SIZE;
      raw.xattrIcount = u16(b, off + IC.xattrIcount);
    } else {
      if (off + INODE_EXTENDED_SIZE > this.len) throw new EntryError('bounds', `inode ${nid} lies outside the image (${this.len} bytes)`);
      const mHi = i32(b, off + IE.mtime + 4);
      if (mHi > MAX_SAFE_HI || mHi < -MAX_SAFE_HI - 1) throw new EntryError('range', `inode ${nid}: mtime is out of range`);
      raw.mode = u16(b, off + IE.mode);
      raw.nlink = u32(b, off + IE.nlink);
      raw.size = this.u64(off + IE.size, nid, 'size');
      raw.u = u32(b, off + IE.u);
      raw.uid = u32(b, off + IE.uid);
      raw.gid = u32(b, off + IE.gid);
      raw.mtimeSec = join64(mHi, u32(b, off + IE.mtime));
      raw.mtimeNsec = u32(b, off + IE.mtimeNsec);
      raw.isize = INODE_EXTENDED_SIZE;
      raw.xattrIcount = u16(b, off + IE.xattrIcount);
    }
    if (raw.xattrIcount > 0) {
      raw.xattrSize = XATTR_IBODY_HEADER_SIZE + (raw.xattrIcount - 1) * 4;
      this.need(off + raw.isize, raw.xattrSize, nid, 'xattr area');
    }
    if (this.trace?.inode) {
      this.trace.inode(nid, off, { compact, mode: raw.mode, size: raw.size, xattrSize: raw.xattrSize, dataOffset: raw.u * BLOCK_SIZE });
    }
    const type = raw.mode & S_IFMT;
    if (ftypeOf(raw.mode) < 0) throw new EntryError('mode', `inode ${nid}: invalid file type in mode 0${raw.mode.toString(8)}`);
    if (layout !== LAYOUT_FLAT_PLAIN && layout !== LAYOUT_FLAT_INLINE && layout !== LAYOUT_CHUNK_BASED) {
      throw new EntryError('layout', `inode ${nid}: unsupported data layout ${layout}`);
    }
    if (layout === LAYOUT_CHUNK_BASED && type !== S_IFREG) {
      throw new EntryError('layout', `inode ${nid}: chunk-based layout on a file that is not regular`);
    }
    return raw;
  }

  /** Start of the inline tail (after inode and xattr area). */
  tailOffset(raw: RawInode): number {
    return raw.off + raw.isize + raw.xattrSize;
  }

  /**
   * Where a flat inode's data is: `nBlocks` contiguous blocks from `blocks`
   * (the last one partial for the plain layout), then `tail` bytes inline.
   */
  private extent(raw: RawInode): void {
    const size = raw.size;
    const inline = raw.layout === LAYOUT_FLAT_INLINE;
    const nBlocks = inline ? Math.floor(size / BLOCK_SIZE) : Math.ceil(size / BLOCK_SIZE);
    const blocks = raw.u * BLOCK_SIZE;
    const blockBytes = inline ? nBlocks * BLOCK_SIZE : size;
    if (blockBytes > 0) this.need(blocks, blockBytes, raw.nid, 'data blocks');
    const tail = inline ? size - nBlocks * BLOCK_SIZE : 0;
    const tailOff = this.tailOffset(raw);
    if (tail > 0) {
      this.need(tailOff, tail, raw.nid, 'inline data');
      if (this.listener !== null) this.listener.fact({ kind: 'inline-tail', nid: raw.nid, offset: tailOff, length: tail });
    }
    this.extBlocks = blocks;
    this.extBlockBytes = blockBytes;
    this.extTailOff = tailOff;
    this.extTail = tail;
  }

  data(raw: RawInode): Buffer {
    this.extent(raw);
    const blocks = this.extBlocks;
    const blockBytes = this.extBlockBytes;
    const tailOff = this.extTailOff;
    const tail = this.extTail;
    this.spend(raw.size, raw.nid);
    const b = this.b;
    if (tail === 0) return b.subarray(blocks, blocks + blockBytes);
    if (blockBytes === 0) return b.subarray(tailOff, tailOff + tail);
    const out = Buffer.allocUnsafe(blockBytes + tail);
    b.copy(out, 0, blocks, blocks + blockBytes);
    b.copy(out, blockBytes, tailOff, tailOff + tail);
    return out;
  }

  /** Directory entries (without `.` and `..`) into `sink`, in stored order. */
  dirents(raw: RawInode, sink: DirentStack): void {
    sink.dot = -1;
    sink.dotdot = -1;
    this.extent(raw);
    const blocks = this.extBlocks;
    const blockBytes = this.extBlockBytes;
    const tailOff = this.extTailOff;
    const tail = this.extTail;
    for (let p = 0; p < blockBytes; p += BLOCK_SIZE) this.direntBlock(raw, blocks + p, Math.min(BLOCK_SIZE, blockBytes - p), sink);
    if (tail > 0) this.direntBlock(raw, tailOff, tail, sink);
  }

  private direntBlock(raw: RawInode, start: number, len: number, sink: DirentStack): void {
    const nid = raw.nid;
    this.spend(len, nid);
    if (len < DIRENT_SIZE) throw new EntryError('dirent', `inode ${nid}: directory block of ${len} bytes is too short`);
    const b = this.b;
    const nameoff0 = b[start + DE.nameoff] | (b[start + DE.nameoff + 1] << 8);
    if (nameoff0 < DIRENT_SIZE || nameoff0 % DIRENT_SIZE !== 0 || nameoff0 > len) {
      throw new EntryError('dirent', `inode ${nid}: bad first name offset ${nameoff0} in a directory block of ${len} bytes`);
    }
    const n = nameoff0 / DIRENT_SIZE;
    for (let i = 0; i < n; i++) {
      const p = start + i * DIRENT_SIZE;
      const nameoff = b[p + DE.nameoff] | (b[p + DE.nameoff + 1] << 8);
      let end: number;
      if (i + 1 < n) {
        end = b[p + DIRENT_SIZE + DE.nameoff] | (b[p + DIRENT_SIZE + DE.nameoff + 1] << 8);
      } else {
        // The last name runs to the first NUL or the end of the block.
        end = nameoff;
        while (end < len && b[start + end] !== 0) end++;
      }
      if (nameoff < nameoff0 || end > len || end <= nameoff) {
        throw new EntryError('dirent', `inode ${nid}: entry ${i} has a bad name offset (${nameoff}..${end} in a block of ${len} bytes)`);
      }
      const hi = u32(b, p + DE.nid + 4);
      if (hi > MAX_SAFE_HI) throw new EntryError('range', `inode ${nid}: entry ${i} has an inode number out of range`);
      const child = join64(hi, u32(b, p + DE.nid));
      const ns = start + nameoff;
      const ne = start + end;
      if (this.trace?.dirent) this.trace.dirent(nid, p, ns, child, b.subarray(ns, ne));
      if (b[ns] === DOT && (ne - ns === 1 || (ne - ns === 2 && b[ns + 1] === DOT))) {
        if (ne - ns === 1) sink.dot = child;
        else sink.dotdot = child;
        continue;
      }
      if (ne - ns > NAME_MAX) throw new EntryError('name', `inode ${nid}: entry ${i} has a name of ${ne - ns} bytes (at most ${NAME_MAX})`);
      for (let q = ns; q < ne; q++) {
        if (b[q] === 0 || b[q] === SLASH) throw new EntryError('name', `inode ${nid}: entry name '${printablePath(b.subarray(ns, ne))}' contains '/' or NUL`);
      }
      sink.push(ns, ne, child, b[p + DE.fileType]);
    }
  }

  /** Checks on one xattr entry header; returns the entry's total (unpadded) size. */
  private entryAt(pos: number, end: number, nid: number): number {
    const b = this.b;
    if (pos + XATTR_ENTRY_SIZE > end) throw new EntryError('xattr', `inode ${nid}: truncated xattr entry`);
    const nameLen = b[pos];
    const index = b[pos + 1];
    const total = XATTR_ENTRY_SIZE + nameLen + (b[pos + 2] | (b[pos + 3] << 8));
    if (pos + total > end) throw new EntryError('xattr', `inode ${nid}: xattr entry of ${total} bytes runs past its area`);
    if (index >= XATTR_NAME_PREFIXES.length || XATTR_NAME_PREFIXES[index] === null) throw new EntryError('xattr', `inode ${nid}: unsupported xattr name index ${index}`);
    const s = pos + XATTR_ENTRY_SIZE;
    for (let i = 0; i < nameLen; i++) if (b[s + i] === 0) throw new EntryError('xattr', `inode ${nid}: xattr name contains NUL`);
    if (nameLen === 0 && index === 0) throw new EntryError('xattr', `inode ${nid}: empty xattr name`);
    return total;
  }

  private sharedXattr(id: number, nid: number): SharedXattr {
    let x = this.shared.get(id);
    if (x) return x;
    const pos = this.xattrStart + id * 4;
    if (pos + XATTR_ENTRY_SIZE > this.len) throw new EntryError('bounds', `inode ${nid}: shared xattr ${id} lies outside the image`);
    const total = this.entryAt(pos, this.len, nid);
    const b = this.b;
    const index = b[pos + 1];
    const nameStart = pos + XATTR_ENTRY_SIZE;
    const nameLen = b[pos];
    const meaning = xattrMeaning(b, index, nameStart, nameLen);
    const key = treeXattrName(b, meaning, index, nameStart, nameLen);
    x = { index, nameStart, nameLen, meaning, key, valueStart: nameStart + nameLen, valueEnd: pos + total };
    this.shared.set(id, x);
    return x;
  }

  /**
   * Inline xattrs first, then shared ones, applied in the reference's order.
   * Returns the overlay flags (HAS_REDIRECT, HAS_METACOPY); with `at`, each
   * xattr is passed to the listener where it lies.
   */
  private xattrs(raw: RawInode, node: Inode, at: EntryPlace | null): number {
    const b = this.b;
    const nid = raw.nid;
    const h = raw.off + raw.isize;
    const end = h + raw.xattrSize;
    this.spend(raw.xattrSize, nid);
    const sharedCount = b[h + XH.sharedCount];
    let pos = h + XATTR_IBODY_HEADER_SIZE + sharedCount * 4;
    if (pos > end) throw new EntryError('xattr', `inode ${nid}: ${sharedCount} shared xattrs do not fit an xattr area of ${raw.xattrSize} bytes`);
    const listener = at === null ? null : this.listener;
    const filter = listener !== null && this.filterOn ? u32(b, h + XH.nameFilter) : 0;
    let flags = 0;
    while (pos < end) {
      const total = this.entryAt(pos, end, nid);
      const nameLen = b[pos];
      const index = b[pos + 1];
      const s = pos + XATTR_ENTRY_SIZE;
      const meaning = xattrMeaning(b, index, s, nameLen);
      const overlayFlags = applyXattr(node, meaning, treeXattrName(b, meaning, index, s, nameLen), b, s + nameLen, pos + total);
      if (listener !== null) {
        listener.fact({ kind: 'xattr', at: at!, nid, filter, nameIndex: index, nameStart: s, nameLength: nameLen, valueStart: s + nameLen, valueEnd: pos + total, overlayFlags });
      }
      flags |= overlayFlags;
      pos += (total + 3) & ~3;
    }
    for (let i = 0; i < sharedCount; i++) {
      const x = this.sharedXattr(u32(b, h + XATTR_IBODY_HEADER_SIZE + i * 4), nid);
      const overlayFlags = applyXattr(node, x.meaning, x.key, b, x.valueStart, x.valueEnd);
      if (listener !== null) {
        listener.fact({ kind: 'xattr', at: at!, nid, filter, nameIndex: x.index, nameStart: x.nameStart, nameLength: x.nameLen, valueStart: x.valueStart, valueEnd: x.valueEnd, overlayFlags });
      }
      flags |= overlayFlags;
    }
    return flags;
  }

  /**
   * Build the tree node of an inode (its xattrs taken apart as the reference
   * does), into `into` when given (a node of a non-directory to refill). With
   * `at` (where the entry is) a checking walk passes the inode's layout on.
   */
  build(raw: RawInode, into: Inode | null, at: EntryPlace | null): Inode {
    const type = raw.mode & S_IFMT;
    let node: Inode;
    if (into !== null && type !== S_IFDIR) {
      node = into;
      node.mode = raw.mode;
      node.nlink = raw.nlink;
      node.uid = raw.uid;
      node.gid = raw.gid;
      node.rdev = type === S_IFCHR || type === S_IFBLK ? raw.u : 0;
      node.size = raw.size;
      node.mtimeSec = raw.mtimeSec;
      node.mtimeNsec = raw.mtimeNsec;
      node.payload = null;
      node.content = null;
      node.digest = null;
      node.xattrs.length = 0;
      node.children = null;
    } else {
      node = {
        mode: raw.mode,
        nlink: raw.nlink,
        uid: raw.uid,
        gid: raw.gid,
        rdev: type === S_IFCHR || type === S_IFBLK ? raw.u : 0,
        size: raw.size,
        mtimeSec: raw.mtimeSec,
        mtimeNsec: raw.mtimeNsec,
        payload: null,
        content: null,
        digest: null,
        xattrs: [],
        children: type === S_IFDIR ? [] : null,
      };
    }
    const nid = raw.nid;
    let symlinkLength = -1;
    if (type === S_IFLNK) {
      // Below PATH_MAX, as symlink(2) makes them and the dump format takes them: a longer one the kernel cannot hand to a reader.
      if (raw.size > SYMLINK_MAX) throw new EntryError('symlink', `inode ${nid}: symlink target of ${raw.size} bytes is too long (the limit is ${SYMLINK_MAX})`);
      const target = this.data(raw);
      for (let i = 0; i < target.length; i++) if (target[i] === 0) throw new EntryError('symlink', `inode ${nid}: symlink target contains NUL`);
      node.payload = target;
      symlinkLength = target.length;
    } else if (type === S_IFREG && raw.size > 0 && raw.layout !== LAYOUT_CHUNK_BASED) {
      node.content = this.data(raw);
    }
    const listener = at === null ? null : this.listener;
    if (listener !== null) {
      listener.fact({
        kind: 'inode', at: at!, nid, compact: raw.compact, format: raw.format, layout: raw.layout, mode: raw.mode,
        size: raw.size, union: raw.u, mtimeNsec: raw.mtimeNsec, tailOffset: this.tailOffset(raw), symlinkLength,
      });
    }
    const flags = raw.xattrIcount === 0 ? 0 : this.xattrs(raw, node, at);
    if ((node.mode & S_IFMT) === S_IFCHR && type === S_IFREG) {
      // An escaped whiteout: a device node has no data of its own.
      node.payload = null;
      node.content = null;
      node.digest = null;
    }
    if (listener !== null) listener.fact({ kind: 'overlay', at: at!, mode: node.mode, layout: raw.layout, size: raw.size, flags });
    return node;
  }
}

/**
 * Read a composefs image into a tree. Throws `ImageFormatError` on any
 * damage (or, with `onProblem`, reports what it can and leaves damaged entries out).
 */
export function readImage(buf: Buffer, opts: ReadImageOptions = {}): ReadImageResult {
  const visitor: Visitor = {
    root: () => {},
    entry: (parent, start, end, node, hardlink) => {
      parent.children!.push({ name: buf.subarray(start, end), inode: node, hardlink });
    },
    leave: () => {},
  };
  return walkImage(buf, opts, visitor, opts.onProblem === undefined ? null : new ImageChecker(buf, opts.onProblem));
}

/**
 * @internal The walk behind readImage and the printers of
 * src/dumpfile/from-image.ts. With a `listener`, damage confined to one entry
 * is passed on and the entry left out instead of ending the walk, and the
 * listener hears the layout decoded, in decoding order.
 */
export function walkImage(buf: Buffer, opts: Pick<ReadImageOptions, 'trace' | 'topLevel'>, visitor: Visitor, listener: DecodeListener | null = null): ReadImageResult {
  const header = readImageHeader(buf);
  if (listener !== null) listener.header(header);
  const r = new Reader(buf, header, listener, opts.trace);
  const damage = (path: Buffer, code: string, message: string) => listener!.fact({ kind: 'damage', path, code, message });

  const table = new NidTable(Math.floor((buf.length - r.metaStart) / SLOT_SIZE));
  const stack: Frame[] = [];
  const entries = new DirentStack();
  const cmpAt = (i: number, j: number): number => {
    const si = entries.starts[i];
    const sj = entries.starts[j];
    const li = entries.ends[i] - si;
    const lj = entries.ends[j] - sj;
    const n = li < lj ? li : lj;
    for (let q = 0; q < n; q++) {
      const d = buf[si + q] - buf[sj + q];
      if (d !== 0) return d;
    }
    return li - lj;
  };

  /** Push a directory whose entries were just read into entries[base, top): check `.`/`..` and their order. */
  const enter = (inode: Inode, nid: number, parent: Frame | null, name: Buffer | null, base: number, parentNid: number) => {
    const end = entries.top;
    const frame: Frame = { inode, nid, parent, name, base, end, order: null, next: base, subdirs: 0 };
    // Name order is what the tree model (and the writer) need; the checks hear when the image differs.
    for (let i = base + 1; i < end; i++) {
      if (cmpAt(i - 1, i) >= 0) {
        const order: number[] = [];
        for (let k = base; k < end; k++) order.push(k);
        frame.order = order.sort((a, b) => cmpAt(a, b) || a - b);
        break;
      }
    }
    if (listener !== null) listener.fact({ kind: 'directory', at: frame, nid, parentNid, dot: entries.dot, dotdot: entries.dotdot, sorted: frame.order === null });
    stack.push(frame);
  };

  const rootPath = Buffer.from('/');
  const scratch: Inode | null = visitor.transient
    ? { mode: 0, nlink: 0, uid: 0, gid: 0, rdev: 0, size: 0, mtimeSec: 0, mtimeNsec: 0, payload: null, content: null, digest: null, xattrs: [], children: null }
    : null;
  let rootNode: Inode | null = null;
  try {
    const rootRaw = r.inode(header.rootNid);
    if ((rootRaw.mode & S_IFMT) !== S_IFDIR) throw new EntryError('root', `root inode ${header.rootNid} is not a directory`);
    const root = r.build(rootRaw, null, listener !== null ? { directory: null, nameStart: -1, nameEnd: -1 } : null);
    r.dirents(rootRaw, entries);
    table.add(header.rootNid, root, false);
    rootNode = root;
    visitor.root(root);
    enter(root, header.rootNid, null, null, 0, header.rootNid);
  } catch (e) {
    if (e instanceof EntryError) throw new ImageFormatError(e.message, rootPath, e.code);
    throw e;
  }
  const root = rootNode!;
  const topLevel = opts.topLevel ? new Set(opts.topLevel.map((name) => name.toString('latin1'))) : null;

  while (stack.length > 0) {
    const frame = stack[stack.length - 1];
    if (frame.next >= frame.end) {
      stack.pop();
      entries.top = frame.base;
      if (frame.parent !== null) visitor.leave(frame.inode);
      if (listener !== null) listener.fact({ kind: 'directory-done', at: frame, subdirectories: frame.subdirs });
      continue;
    }
    const pos = frame.next++;
    const k = frame.order === null ? pos : frame.order[pos - frame.base];
    const start = entries.starts[k];
    const end = entries.ends[k];
    const nid = entries.nids[k];
    if (topLevel !== null && frame.parent === null && !topLevel.has(buf.toString('latin1', start, end))) continue;
    if (frame.order !== null && pos > frame.base && cmpAt(frame.order[pos - frame.base - 1], k) === 0) {
      const msg = 'duplicate directory entry';
      if (listener !== null) {
        damage(placePath(frame, buf.subarray(start, end)), 'duplicate', msg);
        continue;
      }
      throw new ImageFormatError(msg, placePath(frame, buf.subarray(start, end)), 'duplicate');
    }
    try {
      const seen = table.get(nid);
      if (seen === SEEN_DIR || (seen > 0 && table.node(seen).children !== null)) {
        throw new EntryError('loop', `entry refers to directory inode ${nid}, which is already in the tree (a directory loop or a hard-linked directory)`);
      }
      if (seen === SEEN_FILE) {
        // A hard link for a transient visitor: its node was not kept, decode it again.
        visitor.entry(frame.inode, start, end, r.build(r.inode(nid), scratch, null), true, nid);
        continue;
      }
      if (seen > 0) {
        const node = table.node(seen);
        if (listener !== null) {
          const at = { directory: frame, nameStart: start, nameEnd: end };
          listener.fact({ kind: 'entry-type', at, direntType: entries.ftypes[k], mode: node.mode, rdev: node.rdev, linked: true });
        }
        visitor.entry(frame.inode, start, end, node, true, nid);
        continue;
      }
      if (seen === WHITEOUT) continue;
      const raw = r.inode(nid);
      const type = raw.mode & S_IFMT;
      if (type === S_IFCHR && raw.u === 0) {
        // As the reference's reader: a whiteout stands for a file's absence, so it cannot be hard-linked.
        if (raw.nlink > 1) throw new EntryError('whiteout-nlink', `whiteout (character device 0:0) with link count ${raw.nlink}: a whiteout cannot be hard-linked`);
        // An overlayfs whiteout the writer added (the 00..ff in the root): not part of the tree.
        table.whiteout(nid);
        continue;
      }
      let at: EntryPlace | null = null;
      if (listener !== null) {
        at = { directory: frame, nameStart: start, nameEnd: end };
        listener.fact({ kind: 'entry-type', at, direntType: entries.ftypes[k], mode: raw.mode, rdev: raw.u, linked: false });
      }
      const node = r.build(raw, scratch, at);
      if (type === S_IFDIR) {
        const base = entries.top;
        r.dirents(raw, entries);
        table.add(nid, node, false);
        visitor.entry(frame.inode, start, end, node, false, nid);
        frame.subdirs++;
        enter(node, nid, frame, buf.subarray(start, end), base, frame.nid);
      } else {
        table.add(nid, node, scratch === null);
        visitor.entry(frame.inode, start, end, node, false, nid);
      }
    } catch (e) {
      if (!(e instanceof EntryError)) throw e;
      // Entries of a directory that failed half-way through being read.
      entries.top = frame.end;
      const path = placePath(frame, buf.subarray(start, end));
      if (listener !== null) damage(path, e.code, e.message);
      else throw new ImageFormatError(e.message, path, e.code);
    }
  }

  const inodeCount = table.count + table.whiteouts;
  if (listener !== null) listener.completed(inodeCount);
  return { root, header, version: header.version, inodeCount };
}
