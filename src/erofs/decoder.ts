/**
 * Random access to a composefs EROFS image: an inode by its nid, a
 * directory's blocks and entries, an inode's xattr entries, a name in a
 * directory. The one decoder under both the reader's walk
 * (src/erofs/reader.ts) and the FUSE server's view of an image
 * (src/fuse/image.ts), so that both hold an image to one set of rules and
 * refuse damage with the same reasons.
 *
 * The image is hostile input. Every offset, length, count and name is checked
 * against the image's bounds before it is used, and damage is an
 * `ImageEntryError` (an `ImageFormatError` confined to one inode or entry:
 * the reader adds the path where it met it, the FUSE server answers that
 * request with EIO).
 *
 * Nothing here allocates per inode or per entry: inodes and entries are
 * decoded into records the caller owns and refills, names are ranges of the
 * image, and where a flat inode's data is goes into fields of the decoder
 * (`extent`). The reader's walk over a large image depends on that.
 */
import {
  BLOCK_SIZE,
  DE,
  DIRENT_SIZE,
  FT_UNKNOWN,
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
  direntFileType,
} from './format.js';
import { ImageFormatError, printablePath, readImageHeader, type ImageHeader } from './header.js';
import { XATTR_NAME_PREFIXES } from './overlay.js';
import { NAME_MAX, PATH_MAX, S_IFCHR, S_IFDIR, S_IFMT, S_IFREG } from '../tree/model.js';

export { NAME_MAX };
/**
 * The longest symlink target: below PATH_MAX (4096 with its NUL), what
 * symlink(2) makes, what the dump format takes, and the most a FUSE READLINK
 * answer may carry (the kernel reads it into one page and keeps a byte for
 * the NUL, fs/fuse/dir.c).
 */
export const SYMLINK_MAX = PATH_MAX - 1;

/** High 32 bits of a u64 that still fits a double exactly. */
const MAX_SAFE_HI = 0x1fffff;
const DOT = 0x2e;
const SLASH = 0x2f;
const ROOT_PATH = Buffer.from('/');

/** What `dirent` found: a name, `.` or `..`. */
export const ENTRY_NAME = 0;
export const ENTRY_DOT = 1;
export const ENTRY_DOTDOT = 2;

/** Damage confined to one inode or entry (`code`: the problem code fsck reports). */
export class ImageEntryError extends ImageFormatError {
  constructor(code: string, reason: string) {
    super(reason, null, code);
  }
}

/** One inode as stored, after bounds checks. */
export interface InodeRecord {
  nid: number;
  /** Where the inode is in the image. */
  off: number;
  compact: boolean;
  /** The stored i_format (version and layout bits). */
  format: number;
  layout: number;
  mode: number;
  nlink: number;
  size: number;
  /** The union field: block address, device number (new_encode_dev) or chunk format. */
  u: number;
  uid: number;
  gid: number;
  mtimeSec: number;
  mtimeNsec: number;
  /** 32 (compact) or 64 (extended). */
  isize: number;
  xattrIcount: number;
  /** Bytes of the xattr area after the inode (0: none). */
  xattrSize: number;
}

export function newInodeRecord(): InodeRecord {
  return {
    nid: 0, off: 0, compact: true, format: 0, layout: 0, mode: 0, nlink: 0, size: 0, u: 0,
    uid: 0, gid: 0, mtimeSec: 0, mtimeNsec: 0, isize: 0, xattrIcount: 0, xattrSize: 0,
  };
}

/** One stored directory entry: its name is image[nameStart, nameEnd). */
export interface DirentRecord {
  nid: number;
  ftype: number;
  nameStart: number;
  nameEnd: number;
}

export function newDirentRecord(): DirentRecord {
  return { nid: 0, ftype: 0, nameStart: 0, nameEnd: 0 };
}

/** Little-endian reads as plain arithmetic: cheaper than Buffer's methods in code that has not warmed up. */
export function u16(b: Uint8Array, o: number): number {
  return b[o] | (b[o + 1] << 8);
}

export function u32(b: Uint8Array, o: number): number {
  return (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16)) + b[o + 3] * 0x1000000;
}

function i32(b: Uint8Array, o: number): number {
  return b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24);
}

/**
 * hi * 2^32 + lo, with the multiplication skipped when hi is 0: before V8 has
 * optimised the code, arithmetic with 2^32 (a double) yields a boxed double
 * even for small results, and every nid passed on would then allocate.
 */
function join64(hi: number, lo: number): number {
  return hi === 0 ? lo : hi * 0x100000000 + lo;
}

export class ImageDecoder {
  readonly header: ImageHeader;
  readonly len: number;
  readonly metaStart: number;
  readonly xattrStart: number;
  /**
   * Bytes of directory data, xattr areas and contents still allowed to be
   * examined (the reader's walk sets a budget; random access, where every
   * request is bounded by itself, has none).
   */
  budget = Infinity;
  /** Hears every inode decoded, before its type and layout are checked (the reader's trace). */
  onInode: ((rec: InodeRecord) => void) | null = null;
  /** Hears where inline data is found (a checking walk passes it on). */
  onInlineTail: ((nid: number, offset: number, length: number) => void) | null = null;

  /**
   * Where the data of the inode `extent` last looked at is: `extBlockBytes`
   * bytes from `extBlocks` (the last block partial for the plain layout),
   * then `extTail` bytes inline at `extTailOff`. Fields, not an object per call.
   */
  extBlocks = 0;
  extBlockBytes = 0;
  extTailOff = 0;
  extTail = 0;

  /** Checks the header and superblock (ImageFormatError). */
  constructor(readonly buf: Buffer) {
    this.header = readImageHeader(buf);
    this.len = buf.length;
    this.metaStart = this.header.metaBlkaddr * BLOCK_SIZE;
    this.xattrStart = this.header.xattrBlkaddr * BLOCK_SIZE;
  }

  spend(n: number, nid: number): void {
    this.budget -= n;
    if (this.budget < 0) {
      // Image-wide: a checking walk cannot step over it and go on.
      throw new ImageFormatError(`inode ${nid}: structures overlap far more than a valid image allows (work budget exhausted)`, null, 'overlap');
    }
  }

  need(off: number, n: number, nid: number, what: string): void {
    if (!(off >= 0 && n >= 0 && off + n <= this.len)) {
      throw new ImageEntryError('bounds', `inode ${nid}: ${what} (offset ${off}, ${n} bytes) lies outside the image (${this.len} bytes)`);
    }
  }

  private u64(off: number, nid: number, what: string): number {
    const hi = u32(this.buf, off + 4);
    if (hi > MAX_SAFE_HI) throw new ImageEntryError('range', `inode ${nid}: ${what} is out of range`);
    return join64(hi, u32(this.buf, off));
  }

  /** Decode inode `nid` into `rec` (refilled; returned). */
  inode(nid: number, rec: InodeRecord): InodeRecord {
    const b = this.buf;
    const off = this.metaStart + nid * SLOT_SIZE;
    if (!(nid >= 0 && off + INODE_COMPACT_SIZE <= this.len)) {
      throw new ImageEntryError('bounds', `inode ${nid} lies outside the image (${this.len} bytes)`);
    }
    const format = u16(b, off);
    const compact = (format & 1) === 0;
    const layout = (format >> I_DATALAYOUT_BIT) & I_DATALAYOUT_MASK;
    rec.nid = nid;
    rec.off = off;
    rec.compact = compact;
    rec.format = format;
    rec.layout = layout;
    rec.xattrSize = 0;
    if (compact) {
      rec.mode = u16(b, off + IC.mode);
      rec.nlink = u16(b, off + IC.nlink);
      rec.size = u32(b, off + IC.size);
      rec.u = u32(b, off + IC.u);
      rec.uid = u16(b, off + IC.uid);
      rec.gid = u16(b, off + IC.gid);
      rec.mtimeSec = this.header.buildTime;
      rec.mtimeNsec = this.header.buildTimeNsec;
      rec.isize = INODE_COMPACT_SIZE;
      rec.xattrIcount = u16(b, off + IC.xattrIcount);
    } else {
      if (off + INODE_EXTENDED_SIZE > this.len) throw new ImageEntryError('bounds', `inode ${nid} lies outside the image (${this.len} bytes)`);
      const mHi = i32(b, off + IE.mtime + 4);
      if (mHi > MAX_SAFE_HI || mHi < -MAX_SAFE_HI - 1) throw new ImageEntryError('range', `inode ${nid}: mtime is out of range`);
      rec.mode = u16(b, off + IE.mode);
      rec.nlink = u32(b, off + IE.nlink);
      rec.size = this.u64(off + IE.size, nid, 'size');
      rec.u = u32(b, off + IE.u);
      rec.uid = u32(b, off + IE.uid);
      rec.gid = u32(b, off + IE.gid);
      rec.mtimeSec = join64(mHi, u32(b, off + IE.mtime));
      rec.mtimeNsec = u32(b, off + IE.mtimeNsec);
      rec.isize = INODE_EXTENDED_SIZE;
      rec.xattrIcount = u16(b, off + IE.xattrIcount);
    }
    if (rec.xattrIcount > 0) {
      rec.xattrSize = XATTR_IBODY_HEADER_SIZE + (rec.xattrIcount - 1) * 4;
      this.need(off + rec.isize, rec.xattrSize, nid, 'xattr area');
    }
    if (this.onInode !== null) this.onInode(rec);
    if (direntFileType(rec.mode) === FT_UNKNOWN) throw new ImageEntryError('mode', `inode ${nid}: invalid file type in mode 0${rec.mode.toString(8)}`);
    if (layout !== LAYOUT_FLAT_PLAIN && layout !== LAYOUT_FLAT_INLINE && layout !== LAYOUT_CHUNK_BASED) {
      throw new ImageEntryError('layout', `inode ${nid}: unsupported data layout ${layout}`);
    }
    if (layout === LAYOUT_CHUNK_BASED && (rec.mode & S_IFMT) !== S_IFREG) {
      throw new ImageEntryError('layout', `inode ${nid}: chunk-based layout on a file that is not regular`);
    }
    return rec;
  }

  /** The root inode into `rec`, checked to be a directory. */
  root(rec: InodeRecord): InodeRecord {
    this.inode(this.header.rootNid, rec);
    if ((rec.mode & S_IFMT) !== S_IFDIR) throw new ImageEntryError('root', `root inode ${this.header.rootNid} is not a directory`);
    return rec;
  }

  /** Damage met at the root, as the error of the whole image (with the path `/`). */
  atRoot(e: unknown): unknown {
    return e instanceof ImageEntryError ? new ImageFormatError(e.reason, ROOT_PATH, e.code) : e;
  }

  /** Start of the inline tail (after inode and xattr area). */
  tailOffset(rec: InodeRecord): number {
    return rec.off + rec.isize + rec.xattrSize;
  }

  /**
   * A whiteout the overlay hides (a character device 0:0). As the
   * reference's reader: a whiteout stands for a file's absence, so one with
   * further links is damage.
   */
  isWhiteout(rec: InodeRecord): boolean {
    if ((rec.mode & S_IFMT) !== S_IFCHR || rec.u !== 0) return false;
    if (rec.nlink > 1) throw new ImageEntryError('whiteout-nlink', `whiteout (character device 0:0) with link count ${rec.nlink}: a whiteout cannot be hard-linked`);
    return true;
  }

  /** Where a flat inode's data is, checked against the image: into the ext* fields. */
  extent(rec: InodeRecord): void {
    const size = rec.size;
    const inline = rec.layout === LAYOUT_FLAT_INLINE;
    const nBlocks = inline ? Math.floor(size / BLOCK_SIZE) : Math.ceil(size / BLOCK_SIZE);
    const blocks = rec.u * BLOCK_SIZE;
    const blockBytes = inline ? nBlocks * BLOCK_SIZE : size;
    if (blockBytes > 0) this.need(blocks, blockBytes, rec.nid, 'data blocks');
    const tail = inline ? size - nBlocks * BLOCK_SIZE : 0;
    const tailOff = this.tailOffset(rec);
    if (tail > 0) {
      this.need(tailOff, tail, rec.nid, 'inline data');
      if (this.onInlineTail !== null) this.onInlineTail(rec.nid, tailOff, tail);
    }
    this.extBlocks = blocks;
    this.extBlockBytes = blockBytes;
    this.extTailOff = tailOff;
    this.extTail = tail;
  }

  /** A flat inode's data stored in the image: a view when contiguous. */
  data(rec: InodeRecord): Buffer {
    this.extent(rec);
    const blocks = this.extBlocks;
    const blockBytes = this.extBlockBytes;
    const tailOff = this.extTailOff;
    const tail = this.extTail;
    this.spend(rec.size, rec.nid);
    const b = this.buf;
    if (tail === 0) return b.subarray(blocks, blocks + blockBytes);
    if (blockBytes === 0) return b.subarray(tailOff, tailOff + tail);
    const out = Buffer.allocUnsafe(blockBytes + tail);
    b.copy(out, 0, blocks, blocks + blockBytes);
    b.copy(out, blockBytes, tailOff, tailOff + tail);
    return out;
  }

  /** A symlink's target, checked: below PATH_MAX, no NUL. */
  symlinkTarget(rec: InodeRecord): Buffer {
    if (rec.size > SYMLINK_MAX) throw new ImageEntryError('symlink', `inode ${rec.nid}: symlink target of ${rec.size} bytes is too long (the limit is ${SYMLINK_MAX})`);
    const target = this.data(rec);
    for (let i = 0; i < target.length; i++) if (target[i] === 0) throw new ImageEntryError('symlink', `inode ${rec.nid}: symlink target contains NUL`);
    return target;
  }

  /**
   * How many directory blocks a directory has (the inline tail counts as the
   * last), its extent checked; block `i` is then at dirBlockStart(i),
   * dirBlockLength(i) until the next `extent`.
   */
  dirBlocks(dir: InodeRecord): number {
    if ((dir.mode & S_IFMT) !== S_IFDIR) throw new ImageEntryError('mode', `inode ${dir.nid} is not a directory`);
    this.extent(dir);
    return Math.ceil(this.extBlockBytes / BLOCK_SIZE) + (this.extTail > 0 ? 1 : 0);
  }

  dirBlockStart(i: number): number {
    const p = i * BLOCK_SIZE;
    return p < this.extBlockBytes ? this.extBlocks + p : this.extTailOff;
  }

  dirBlockLength(i: number): number {
    const p = i * BLOCK_SIZE;
    return p < this.extBlockBytes ? Math.min(BLOCK_SIZE, this.extBlockBytes - p) : this.extTail;
  }

  /** The number of entries in the directory block of `nid` at image[start, start+len), checked. */
  direntCount(nid: number, start: number, len: number): number {
    this.spend(len, nid);
    if (len < DIRENT_SIZE) throw new ImageEntryError('dirent', `inode ${nid}: directory block of ${len} bytes is too short`);
    const nameoff0 = u16(this.buf, start + DE.nameoff);
    if (nameoff0 < DIRENT_SIZE || nameoff0 % DIRENT_SIZE !== 0 || nameoff0 > len) {
      throw new ImageEntryError('dirent', `inode ${nid}: bad first name offset ${nameoff0} in a directory block of ${len} bytes`);
    }
    return nameoff0 / DIRENT_SIZE;
  }

  /**
   * Entry `i` of the `n` in a directory block of `nid` into `out`, checked
   * (a name other than `.` and `..`: at most NAME_MAX bytes, no '/' or NUL).
   * Returns ENTRY_NAME, ENTRY_DOT or ENTRY_DOTDOT.
   */
  dirent(nid: number, start: number, len: number, n: number, i: number, out: DirentRecord): number {
    const b = this.buf;
    const p = start + i * DIRENT_SIZE;
    const nameoff = u16(b, p + DE.nameoff);
    let end: number;
    if (i + 1 < n) end = u16(b, p + DIRENT_SIZE + DE.nameoff);
    else {
      // The last name runs to the first NUL or the end of the block.
      end = nameoff;
      while (end < len && b[start + end] !== 0) end++;
    }
    if (nameoff < n * DIRENT_SIZE || end > len || end <= nameoff) {
      throw new ImageEntryError('dirent', `inode ${nid}: entry ${i} has a bad name offset (${nameoff}..${end} in a block of ${len} bytes)`);
    }
    const hi = u32(b, p + DE.nid + 4);
    if (hi > MAX_SAFE_HI) throw new ImageEntryError('range', `inode ${nid}: entry ${i} has an inode number out of range`);
    const ns = start + nameoff;
    const ne = start + end;
    out.nid = join64(hi, u32(b, p + DE.nid));
    out.ftype = b[p + DE.fileType];
    out.nameStart = ns;
    out.nameEnd = ne;
    if (b[ns] === DOT && (ne - ns === 1 || (ne - ns === 2 && b[ns + 1] === DOT))) return ne - ns === 1 ? ENTRY_DOT : ENTRY_DOTDOT;
    if (ne - ns > NAME_MAX) throw new ImageEntryError('name', `inode ${nid}: entry ${i} has a name of ${ne - ns} bytes (at most ${NAME_MAX})`);
    for (let q = ns; q < ne; q++) {
      if (b[q] === 0 || b[q] === SLASH) throw new ImageEntryError('name', `inode ${nid}: entry name '${printablePath(b.subarray(ns, ne))}' contains '/' or NUL`);
    }
    return ENTRY_NAME;
  }

  /** `name` against the stored name of an entry, as memcmp then length. */
  private compareName(name: Uint8Array, e: DirentRecord): number {
    const b = this.buf;
    const ns = e.nameStart;
    const ln = e.nameEnd - ns;
    const n = name.length < ln ? name.length : ln;
    for (let q = 0; q < n; q++) {
      const d = name[q] - b[ns + q];
      if (d !== 0) return d;
    }
    return name.length - ln;
  }

  /**
   * The entry `name` of a directory into `out` (binary search over the
   * blocks, then in the block, as the kernel's EROFS does); false when there
   * is none. Every entry it looks at is checked.
   */
  lookup(dir: InodeRecord, name: Uint8Array, out: DirentRecord): boolean {
    const nid = dir.nid;
    const blocks = this.dirBlocks(dir);
    let lo = 0;
    let hi = blocks - 1;
    // The last block whose first name is <= name.
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const s = this.dirBlockStart(mid);
      const l = this.dirBlockLength(mid);
      this.dirent(nid, s, l, this.direntCount(nid, s, l), 0, out);
      const c = this.compareName(name, out);
      if (c === 0) return true;
      if (c > 0) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    if (found < 0) return false;
    const s = this.dirBlockStart(found);
    const l = this.dirBlockLength(found);
    const n = this.direntCount(nid, s, l);
    let a = 1;
    let z = n - 1;
    while (a <= z) {
      const mid = (a + z) >> 1;
      this.dirent(nid, s, l, n, mid, out);
      const c = this.compareName(name, out);
      if (c === 0) return true;
      if (c > 0) a = mid + 1;
      else z = mid - 1;
    }
    return false;
  }

  /**
   * The position of an inode's first inline xattr entry, its area checked
   * (and spent); the area ends at tailOffset(rec). The shared ones are
   * listed before it (sharedXattrId).
   */
  xattrArea(rec: InodeRecord): number {
    const h = rec.off + rec.isize;
    this.spend(rec.xattrSize, rec.nid);
    const sharedCount = this.buf[h + XH.sharedCount];
    const pos = h + XATTR_IBODY_HEADER_SIZE + sharedCount * 4;
    if (pos > h + rec.xattrSize) throw new ImageEntryError('xattr', `inode ${rec.nid}: ${sharedCount} shared xattrs do not fit an xattr area of ${rec.xattrSize} bytes`);
    return pos;
  }

  /** How many shared xattrs the inode refers to (after xattrArea checked the area). */
  sharedXattrCount(rec: InodeRecord): number {
    return this.buf[rec.off + rec.isize + XH.sharedCount];
  }

  /** The id of the inode's shared xattr `i`. */
  sharedXattrId(rec: InodeRecord, i: number): number {
    return u32(this.buf, rec.off + rec.isize + XATTR_IBODY_HEADER_SIZE + i * 4);
  }

  /** The name filter word of the inode's xattr area. */
  xattrFilter(rec: InodeRecord): number {
    return u32(this.buf, rec.off + rec.isize + XH.nameFilter);
  }

  /** Where shared xattr `id` is, checked as xattrEntry checks an entry (its size: xattrEntry again). */
  sharedXattr(id: number, nid: number): number {
    const pos = this.xattrStart + id * 4;
    if (pos + XATTR_ENTRY_SIZE > this.len) throw new ImageEntryError('bounds', `inode ${nid}: shared xattr ${id} lies outside the image`);
    this.xattrEntry(pos, this.len, nid);
    return pos;
  }

  /**
   * Checks on one xattr entry at `pos` (its name index b[pos+1], name of
   * b[pos] bytes at pos + XATTR_ENTRY_SIZE, then the value) in an area ending
   * at `end`; returns the entry's total (unpadded) size.
   */
  xattrEntry(pos: number, end: number, nid: number): number {
    const b = this.buf;
    if (pos + XATTR_ENTRY_SIZE > end) throw new ImageEntryError('xattr', `inode ${nid}: truncated xattr entry`);
    const nameLen = b[pos];
    const index = b[pos + 1];
    const total = XATTR_ENTRY_SIZE + nameLen + u16(b, pos + 2);
    if (pos + total > end) throw new ImageEntryError('xattr', `inode ${nid}: xattr entry of ${total} bytes runs past its area`);
    if (index >= XATTR_NAME_PREFIXES.length || XATTR_NAME_PREFIXES[index] === null) throw new ImageEntryError('xattr', `inode ${nid}: unsupported xattr name index ${index}`);
    const s = pos + XATTR_ENTRY_SIZE;
    for (let i = 0; i < nameLen; i++) if (b[s + i] === 0) throw new ImageEntryError('xattr', `inode ${nid}: xattr name contains NUL`);
    if (nameLen === 0 && index === 0) throw new ImageEntryError('xattr', `inode ${nid}: empty xattr name`);
    return total;
  }

  /**
   * Every xattr of the inode, inline ones then shared ones (the reference's
   * order), each checked: fn(name index, name start, name length, value
   * start, value end).
   */
  eachXattr(rec: InodeRecord, fn: (index: number, nameStart: number, nameLength: number, valueStart: number, valueEnd: number) => void): void {
    if (rec.xattrSize === 0) return;
    const b = this.buf;
    const end = this.tailOffset(rec);
    let pos = this.xattrArea(rec);
    while (pos < end) {
      const total = this.xattrEntry(pos, end, rec.nid);
      fn(b[pos + 1], pos + XATTR_ENTRY_SIZE, b[pos], pos + XATTR_ENTRY_SIZE + b[pos], pos + total);
      pos += (total + 3) & ~3;
    }
    const shared = this.sharedXattrCount(rec);
    for (let i = 0; i < shared; i++) {
      const at = this.sharedXattr(this.sharedXattrId(rec, i), rec.nid);
      const total = this.xattrEntry(at, this.len, rec.nid);
      fn(b[at + 1], at + XATTR_ENTRY_SIZE, b[at], at + XATTR_ENTRY_SIZE + b[at], at + total);
    }
  }
}
