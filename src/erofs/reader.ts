/**
 * A userspace reader of composefs EROFS images, independent of the writer.
 *
 * `readImage` parses an image into the project's tree model the way the
 * reference's `lcfs_load_node_from_image` does, so that the tree prints as the
 * reference's `composefs-info dump` and writes back into the identical image:
 *
 *  - the overlayfs xattrs composefs adds are taken apart again: the payload
 *    comes from `trusted.overlay.redirect` (without its leading `/`), the
 *    fs-verity digest from a 36-byte `trusted.overlay.metacopy`; the escaped
 *    `trusted.overlay.overlay.*` names are un-escaped; every other
 *    `trusted.overlay.*` name and the whiteout markers are dropped;
 *  - a regular file marked `trusted.overlay.overlay.whiteout` becomes the
 *    character device 0:0 it stood for, and a real 0:0 character device (the
 *    `00`..`ff` whiteouts in the root) is left out;
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
  BLOCK_BITS,
  BLOCK_SIZE,
  CHUNK_FORMAT_BLKBITS_MASK,
  CHUNK_FORMAT_INDEXES,
  COMPOSEFS_FLAG_HAS_ACL,
  COMPOSEFS_HEADER_VERSION,
  COMPOSEFS_MAGIC,
  DE,
  DIRENT_SIZE,
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
  HDR,
  I_DATALAYOUT_BIT,
  I_DATALAYOUT_MASK,
  IC,
  IE,
  INODE_COMPACT_SIZE,
  INODE_EXTENDED_SIZE,
  LAYOUT_CHUNK_BASED,
  LAYOUT_FLAT_INLINE,
  LAYOUT_FLAT_PLAIN,
  SB,
  SLOT_SIZE,
  SUPER_MAGIC_V1,
  SUPER_OFFSET,
  SUPER_SIZE,
  XATTR_ENTRY_SIZE,
  XATTR_FILTER_BITS,
  XATTR_FILTER_SEED,
  XATTR_IBODY_HEADER_SIZE,
  XATTR_INDEX_PREFIX,
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
  type Dirent,
  type Inode,
  type Xattr,
} from '../tree/model.js';

/** An image that cannot be read: one line, with the path in the image where known. */
export class ImageFormatError extends Error {
  constructor(
    readonly reason: string,
    readonly path: Buffer | null = null,
    readonly code = 'format',
  ) {
    super(path ? `${printablePath(path)}: ${reason}` : reason);
    this.name = 'ImageFormatError';
  }
}

/** Something wrong found while checking (see `ReadImageOptions.onProblem`). */
export interface ImageProblem {
  /** Path in the image (bytes, starting with `/`), or null for the image as a whole. */
  path: Buffer | null;
  /** Short machine-readable kind, e.g. `dirent-type`, `loop`, `bounds`. */
  code: string;
  message: string;
}

export interface ReadImageOptions {
  /**
   * Check mode (what fsck uses). Every problem is reported here instead of
   * ending the read where the damage can be contained: a broken entry is
   * reported and left out, and the walk goes on. Checks that cost time and
   * do not stop the reference from reading an image (sort order, link counts,
   * `.`/`..`, dirent types, xattr filters, tails crossing blocks, counts in
   * the superblock...) only run in this mode. Image-wide damage (header,
   * superblock, root) still throws.
   */
  onProblem?: (problem: ImageProblem) => void;
  /** Called for each inode parsed and each directory entry read (for tests and tools that need the layout). */
  trace?: ReadTrace;
}

export interface ReadTrace {
  inode?(nid: number, offset: number, info: { compact: boolean; mode: number; size: number; xattrSize: number; dataOffset: number }): void;
  /** `offset` is where the 12-byte dirent is; `nameOffset` where its name starts. */
  dirent?(dirNid: number, offset: number, nameOffset: number, nid: number, name: Buffer): void;
}

export interface ImageHeader {
  /** The composefs format version in the header (what the writer must be asked for to write it again). */
  version: number;
  headerVersion: number;
  flags: number;
  featureCompat: number;
  featureIncompat: number;
  blkszbits: number;
  rootNid: number;
  /** Inode count in the superblock (includes the root's `00`..`ff` whiteouts). */
  inodes: number;
  buildTime: number;
  buildTimeNsec: number;
  /** Block count in the superblock. */
  blocks: number;
  metaBlkaddr: number;
  xattrBlkaddr: number;
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
const PATH_MAX = 4096;
const utf8 = (s: string) => Buffer.from(s, 'utf8');

const K = {
  redirect: utf8('trusted.overlay.redirect'),
  metacopy: utf8('trusted.overlay.metacopy'),
  escWhiteout: utf8('trusted.overlay.overlay.whiteout'),
  escWhiteouts: utf8('trusted.overlay.overlay.whiteouts'),
  userWhiteout: utf8('user.overlay.whiteout'),
  userWhiteouts: utf8('user.overlay.whiteouts'),
  overlayPrefix: utf8('trusted.overlay.'),
  escapePrefix: utf8('trusted.overlay.overlay.'),
  trustedPrefix: utf8('trusted.'),
  aclAccess: utf8('system.posix_acl_access'),
  aclDefault: utf8('system.posix_acl_default'),
};
const PREFIX_BUFS = XATTR_INDEX_PREFIX.map((p) => (p === null ? null : utf8(p)));
const DOT = 0x2e;
const SLASH = 0x2f;

function hasPrefix(key: Buffer, prefix: Buffer): boolean {
  return key.length >= prefix.length && key.compare(prefix, 0, prefix.length, 0, prefix.length) === 0;
}

/** A path as one printable line: the dump format's escapes for anything that is not graphic ASCII. */
export function printablePath(path: Buffer): string {
  let out = '';
  for (const c of path) {
    if (c === 0x5c) out += '\\\\';
    else if (c === 0x0a) out += '\\n';
    else if (c === 0x0d) out += '\\r';
    else if (c === 0x09) out += '\\t';
    else if (c <= 0x20 || c >= 0x7f) out += `\\x${c.toString(16).padStart(2, '0')}`;
    else out += String.fromCharCode(c);
  }
  return out;
}

/** Parse and check the composefs header and the EROFS superblock. */
export function readImageHeader(buf: Buffer): ImageHeader {
  if (buf.length < SUPER_OFFSET + SUPER_SIZE) {
    throw new ImageFormatError(`image too small (${buf.length} bytes): not a composefs image`, null, 'header');
  }
  const magic = buf.readUInt32LE(HDR.magic);
  if (magic !== COMPOSEFS_MAGIC) {
    throw new ImageFormatError(`not a composefs image (bad magic 0x${magic.toString(16).padStart(8, '0')})`, null, 'header');
  }
  const headerVersion = buf.readUInt32LE(HDR.version);
  if (headerVersion !== COMPOSEFS_HEADER_VERSION) {
    throw new ImageFormatError(`unsupported composefs header version ${headerVersion}`, null, 'header');
  }
  const sb = SUPER_OFFSET;
  const sbMagic = buf.readUInt32LE(sb + SB.magic);
  if (sbMagic !== SUPER_MAGIC_V1) {
    throw new ImageFormatError(`bad EROFS superblock magic 0x${sbMagic.toString(16).padStart(8, '0')}`, null, 'superblock');
  }
  const blkszbits = buf[sb + SB.blkszbits];
  if (blkszbits !== BLOCK_BITS) {
    throw new ImageFormatError(`unsupported block size 2^${blkszbits} (composefs uses ${BLOCK_SIZE})`, null, 'superblock');
  }
  const metaBlkaddr = buf.readUInt32LE(sb + SB.metaBlkaddr);
  const xattrBlkaddr = buf.readUInt32LE(sb + SB.xattrBlkaddr);
  if (metaBlkaddr * BLOCK_SIZE >= buf.length) {
    throw new ImageFormatError(`metadata block address ${metaBlkaddr} lies outside the image (${buf.length} bytes)`, null, 'superblock');
  }
  if (xattrBlkaddr * BLOCK_SIZE > buf.length) {
    throw new ImageFormatError(`shared xattr block address ${xattrBlkaddr} lies outside the image (${buf.length} bytes)`, null, 'superblock');
  }
  const inosLo = buf.readUInt32LE(sb + SB.inos);
  const inosHi = buf.readUInt32LE(sb + SB.inos + 4);
  const btLo = buf.readUInt32LE(sb + SB.buildTime);
  const btHi = buf.readInt32LE(sb + SB.buildTime + 4);
  return {
    version: buf.readUInt32LE(HDR.composefsVersion),
    headerVersion,
    flags: buf.readUInt32LE(HDR.flags),
    featureCompat: buf.readUInt32LE(sb + SB.featureCompat),
    featureIncompat: buf.readUInt32LE(sb + SB.featureIncompat),
    blkszbits,
    rootNid: buf.readUInt16LE(sb + SB.rootNid),
    inodes: inosHi > MAX_SAFE_HI ? Number.MAX_SAFE_INTEGER : inosHi * 0x100000000 + inosLo,
    buildTime: btHi * 0x100000000 + btLo,
    buildTimeNsec: buf.readUInt32LE(sb + SB.buildTimeNsec),
    blocks: buf.readUInt32LE(sb + SB.blocks),
    metaBlkaddr,
    xattrBlkaddr,
  };
}

/** The composefs format version of an image (checks header and superblock). */
export function imageVersion(buf: Buffer): number {
  return readImageHeader(buf).version;
}

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

interface RawDirent {
  name: Buffer;
  nid: number;
  ftype: number;
}

interface RawXattr {
  index: number;
  /** Name without the prefix of its index. */
  name: Buffer;
  key: Buffer;
  value: Buffer;
}

/** A directory being walked: paths are built only when a message needs one. */
interface Frame {
  inode: Inode;
  nid: number;
  parent: Frame | null;
  name: Buffer | null;
  entries: RawDirent[];
  next: number;
  subdirs: number;
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

function ftypeOf(mode: number): number {
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
      return -1;
  }
}

class Reader {
  readonly len: number;
  readonly metaStart: number;
  readonly xattrStart: number;
  readonly checking: boolean;
  /** Bytes of directory data, inline xattr areas and contents still allowed to be examined. */
  private budget: number;
  private readonly sharedCache = new Map<number, RawXattr>();
  private readonly filterOn: boolean;
  hasAcl = false;

  constructor(
    readonly buf: Buffer,
    readonly header: ImageHeader,
    readonly onProblem: ((p: ImageProblem) => void) | undefined,
    readonly trace: ReadTrace | undefined = undefined,
  ) {
    this.len = buf.length;
    this.metaStart = header.metaBlkaddr * BLOCK_SIZE;
    this.xattrStart = header.xattrBlkaddr * BLOCK_SIZE;
    this.checking = onProblem !== undefined;
    // A well-formed image stores every directory, xattr area and content once,
    // so their sizes add up to less than the image. Allow generous slack.
    this.budget = 4 * buf.length + (1 << 20);
    this.filterOn = (header.featureCompat & FEATURE_COMPAT_XATTR_FILTER) !== 0;
  }

  spend(n: number, what: string): void {
    this.budget -= n;
    if (this.budget < 0) {
      throw new ImageFormatError(`${what}: structures overlap far more than a valid image allows (work budget exhausted)`, null, 'overlap');
    }
  }

  need(off: number, n: number, what: string): void {
    if (!(off >= 0 && n >= 0 && off + n <= this.len)) {
      throw new EntryError('bounds', `${what} (offset ${off}, ${n} bytes) lies outside the image (${this.len} bytes)`);
    }
  }

  u64(off: number, what: string): number {
    const hi = this.buf.readUInt32LE(off + 4);
    if (hi > MAX_SAFE_HI) throw new EntryError('range', `${what} is out of range`);
    return hi * 0x100000000 + this.buf.readUInt32LE(off);
  }

  inode(nid: number): RawInode {
    if (!Number.isSafeInteger(nid) || nid < 0) throw new EntryError('bounds', `inode number ${nid} is out of range`);
    const off = this.metaStart + nid * SLOT_SIZE;
    this.need(off, INODE_COMPACT_SIZE, `inode ${nid}`);
    const b = this.buf;
    const format = b.readUInt16LE(off);
    const compact = (format & 1) === 0;
    const layout = (format >> I_DATALAYOUT_BIT) & I_DATALAYOUT_MASK;
    let raw: RawInode;
    if (compact) {
      raw = {
        nid,
        off,
        compact,
        format,
        layout,
        mode: b.readUInt16LE(off + IC.mode),
        nlink: b.readUInt16LE(off + IC.nlink),
        size: b.readUInt32LE(off + IC.size),
        u: b.readUInt32LE(off + IC.u),
        uid: b.readUInt16LE(off + IC.uid),
        gid: b.readUInt16LE(off + IC.gid),
        mtimeSec: this.header.buildTime,
        mtimeNsec: this.header.buildTimeNsec,
        isize: INODE_COMPACT_SIZE,
        xattrIcount: b.readUInt16LE(off + IC.xattrIcount),
        xattrSize: 0,
      };
    } else {
      this.need(off, INODE_EXTENDED_SIZE, `inode ${nid}`);
      const mHi = b.readInt32LE(off + IE.mtime + 4);
      if (mHi > MAX_SAFE_HI || mHi < -MAX_SAFE_HI - 1) throw new EntryError('range', `inode ${nid}: mtime is out of range`);
      raw = {
        nid,
        off,
        compact,
        format,
        layout,
        mode: b.readUInt16LE(off + IE.mode),
        nlink: b.readUInt32LE(off + IE.nlink),
        size: this.u64(off + IE.size, `inode ${nid}: size`),
        u: b.readUInt32LE(off + IE.u),
        uid: b.readUInt32LE(off + IE.uid),
        gid: b.readUInt32LE(off + IE.gid),
        mtimeSec: mHi * 0x100000000 + b.readUInt32LE(off + IE.mtime),
        mtimeNsec: b.readUInt32LE(off + IE.mtimeNsec),
        isize: INODE_EXTENDED_SIZE,
        xattrIcount: b.readUInt16LE(off + IE.xattrIcount),
        xattrSize: 0,
      };
    }
    if (raw.xattrIcount > 0) {
      raw.xattrSize = XATTR_IBODY_HEADER_SIZE + (raw.xattrIcount - 1) * 4;
      this.need(off + raw.isize, raw.xattrSize, `inode ${nid}: xattr area`);
    }
    if (ftypeOf(raw.mode) < 0) throw new EntryError('mode', `inode ${nid}: invalid file type in mode 0${raw.mode.toString(8)}`);
    if (layout !== LAYOUT_FLAT_PLAIN && layout !== LAYOUT_FLAT_INLINE && layout !== LAYOUT_CHUNK_BASED) {
      throw new EntryError('layout', `inode ${nid}: unsupported data layout ${layout}`);
    }
    this.trace?.inode?.(nid, off, { compact, mode: raw.mode, size: raw.size, xattrSize: raw.xattrSize, dataOffset: raw.u * BLOCK_SIZE });
    const type = raw.mode & S_IFMT;
    if (layout === LAYOUT_CHUNK_BASED && type !== S_IFREG) {
      throw new EntryError('layout', `inode ${nid}: chunk-based layout on a file that is not regular`);
    }
    return raw;
  }

  /** Start of the inline tail (after inode and xattr area). */
  tailOffset(raw: RawInode): number {
    return raw.off + raw.isize + raw.xattrSize;
  }

  /** The data of a flat inode as [offset, length] pieces: full blocks, then the inline tail. */
  dataPieces(raw: RawInode, what: string): Array<[number, number]> {
    const size = raw.size;
    const inline = raw.layout === LAYOUT_FLAT_INLINE;
    const nBlocks = inline ? Math.floor(size / BLOCK_SIZE) : Math.ceil(size / BLOCK_SIZE);
    const pieces: Array<[number, number]> = [];
    if (nBlocks > 0) {
      const start = raw.u * BLOCK_SIZE;
      const blockBytes = inline ? nBlocks * BLOCK_SIZE : size;
      this.need(start, blockBytes, `${what} data blocks`);
      for (let i = 0; i < nBlocks; i++) {
        pieces.push([start + i * BLOCK_SIZE, Math.min(BLOCK_SIZE, blockBytes - i * BLOCK_SIZE)]);
      }
    }
    if (inline) {
      const tail = size - nBlocks * BLOCK_SIZE;
      if (tail > 0) {
        const off = this.tailOffset(raw);
        this.need(off, tail, `${what} inline data`);
        if (this.checking && Math.floor(off / BLOCK_SIZE) !== Math.floor((off + tail - 1) / BLOCK_SIZE)) {
          this.problemAt(null, 'tail-crosses-block', `inode ${raw.nid}: inline data crosses a block boundary (the kernel refuses to read it)`);
        }
        pieces.push([off, tail]);
      }
    }
    return pieces;
  }

  data(raw: RawInode, what: string): Buffer {
    const pieces = this.dataPieces(raw, what);
    this.spend(raw.size, what);
    if (pieces.length === 1) return this.buf.subarray(pieces[0][0], pieces[0][0] + pieces[0][1]);
    const out = Buffer.allocUnsafe(raw.size);
    let p = 0;
    for (const [off, n] of pieces) {
      this.buf.copy(out, p, off, off + n);
      p += n;
    }
    return out;
  }

  /** Directory entries (without `.` and `..`), in stored order. */
  dirents(raw: RawInode, what: string, dots: { dot: number; dotdot: number }): RawDirent[] {
    const pieces = this.dataPieces(raw, what);
    const out: RawDirent[] = [];
    for (const [start, len] of pieces) {
      this.spend(len, what);
      if (len < DIRENT_SIZE) throw new EntryError('dirent', `${what}: directory block of ${len} bytes is too short`);
      const b = this.buf;
      const nameoff0 = b.readUInt16LE(start + DE.nameoff);
      if (nameoff0 < DIRENT_SIZE || nameoff0 % DIRENT_SIZE !== 0 || nameoff0 > len) {
        throw new EntryError('dirent', `${what}: bad first name offset ${nameoff0} in a directory block of ${len} bytes`);
      }
      const n = nameoff0 / DIRENT_SIZE;
      for (let i = 0; i < n; i++) {
        const p = start + i * DIRENT_SIZE;
        const nameoff = b.readUInt16LE(p + DE.nameoff);
        let end: number;
        if (i + 1 < n) {
          end = b.readUInt16LE(p + DIRENT_SIZE + DE.nameoff);
        } else {
          const nul = b.indexOf(0, start + nameoff);
          end = nul < 0 || nul > start + len ? len : nul - start;
        }
        if (nameoff < nameoff0 || end > len || end <= nameoff) {
          throw new EntryError('dirent', `${what}: entry ${i} has a bad name offset (${nameoff}..${end} in a block of ${len} bytes)`);
        }
        const name = b.subarray(start + nameoff, start + end);
        const nid = this.u64(p + DE.nid, `${what}: entry ${i} inode number`);
        this.trace?.dirent?.(raw.nid, p, start + nameoff, nid, name);
        if (name.length === 1 && name[0] === DOT) {
          dots.dot = nid;
          continue;
        }
        if (name.length === 2 && name[0] === DOT && name[1] === DOT) {
          dots.dotdot = nid;
          continue;
        }
        if (name.length > NAME_MAX) throw new EntryError('name', `${what}: entry ${i} has a name of ${name.length} bytes (at most ${NAME_MAX})`);
        if (name.includes(0) || name.includes(SLASH)) {
          throw new EntryError('name', `${what}: entry name '${printablePath(name)}' contains '/' or NUL`);
        }
        out.push({ name, nid, ftype: b[p + DE.fileType] });
      }
    }
    return out;
  }

  private entry(off: number, end: number, what: string): RawXattr {
    if (off + XATTR_ENTRY_SIZE > end) throw new EntryError('xattr', `${what}: truncated xattr entry`);
    const b = this.buf;
    const nameLen = b[off];
    const index = b[off + 1];
    const valueSize = b.readUInt16LE(off + 2);
    const total = XATTR_ENTRY_SIZE + nameLen + valueSize;
    if (off + total > end) throw new EntryError('xattr', `${what}: xattr entry of ${total} bytes runs past its area`);
    const prefix = index < PREFIX_BUFS.length ? PREFIX_BUFS[index] : null;
    if (prefix === null) throw new EntryError('xattr', `${what}: unsupported xattr name index ${index}`);
    const name = b.subarray(off + XATTR_ENTRY_SIZE, off + XATTR_ENTRY_SIZE + nameLen);
    if (name.includes(0)) throw new EntryError('xattr', `${what}: xattr name contains NUL`);
    const key = prefix.length === 0 ? name : Buffer.concat([prefix, name], prefix.length + nameLen);
    if (key.length === 0) throw new EntryError('xattr', `${what}: empty xattr name`);
    const value = b.subarray(off + XATTR_ENTRY_SIZE + nameLen, off + total);
    return { index, name, key, value };
  }

  /** Inline xattrs first, then shared ones, as the reference reads them. */
  xattrs(raw: RawInode, what: string): RawXattr[] {
    if (raw.xattrIcount === 0) return [];
    const b = this.buf;
    const h = raw.off + raw.isize;
    const end = h + raw.xattrSize;
    this.spend(raw.xattrSize, what);
    const sharedCount = b[h + XH.sharedCount];
    let pos = h + XATTR_IBODY_HEADER_SIZE + sharedCount * 4;
    if (pos > end) throw new EntryError('xattr', `${what}: ${sharedCount} shared xattrs do not fit an xattr area of ${raw.xattrSize} bytes`);
    const out: RawXattr[] = [];
    while (pos < end) {
      const x = this.entry(pos, end, what);
      out.push(x);
      pos += (XATTR_ENTRY_SIZE + x.name.length + x.value.length + 3) & ~3;
    }
    for (let i = 0; i < sharedCount; i++) {
      const id = b.readUInt32LE(h + XATTR_IBODY_HEADER_SIZE + i * 4);
      let x = this.sharedCache.get(id);
      if (!x) {
        const off = this.xattrStart + id * 4;
        if (off + XATTR_ENTRY_SIZE > this.len) throw new EntryError('bounds', `${what}: shared xattr ${id} lies outside the image`);
        x = this.entry(off, this.len, `${what}: shared xattr ${id}`);
        this.sharedCache.set(id, x);
      }
      out.push(x);
    }
    if (this.checking && this.filterOn) {
      const filter = b.readUInt32LE(h + XH.nameFilter);
      for (const x of out) {
        const bit = xxh32(x.name, (XATTR_FILTER_SEED + x.index) >>> 0) & (XATTR_FILTER_BITS - 1);
        if ((filter >>> bit) & 1) {
          this.problemAt(null, 'xattr-filter', `${what}: the xattr name filter hides '${printablePath(x.key)}' (the kernel would not find it)`);
        }
      }
    }
    return out;
  }

  problemAt(path: Buffer | null, code: string, message: string): void {
    this.onProblem?.({ path, code, message });
  }

  /** Build the tree node of an inode (its xattrs taken apart as the reference does). */
  build(raw: RawInode, what: string, check: (code: string, msg: string) => void): Inode {
    const type = raw.mode & S_IFMT;
    const node: Inode = {
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
    if (type === S_IFLNK) {
      if (raw.layout === LAYOUT_CHUNK_BASED) throw new EntryError('layout', `${what}: symlink with chunk-based layout`);
      const target = this.data(raw, what);
      if (target.includes(0)) throw new EntryError('symlink', `${what}: symlink target contains NUL`);
      if (this.checking) {
        if (target.length === 0) check('symlink', 'empty symlink target');
        else if (target.length >= PATH_MAX) check('symlink', `symlink target of ${target.length} bytes (at most ${PATH_MAX - 1})`);
      }
      node.payload = target;
    } else if (type === S_IFREG && raw.size > 0 && raw.layout !== LAYOUT_CHUNK_BASED) {
      node.content = this.data(raw, what);
    } else if (this.checking && type === S_IFREG && raw.layout === LAYOUT_CHUNK_BASED) {
      this.checkChunks(raw, check);
    } else if (this.checking && type !== S_IFDIR && type !== S_IFREG && raw.size !== 0) {
      check('size', `special file with size ${raw.size}`);
    }
    if (this.checking && !raw.compact && raw.mtimeNsec >= 1e9) check('mtime', `mtime nanoseconds ${raw.mtimeNsec} out of range`);
    if (this.checking && (raw.format & ~0xf) !== 0) check('format', `unknown inode format bits 0x${raw.format.toString(16)}`);
    let metacopySeen = false;
    let redirectSeen = false;
    for (const x of this.xattrs(raw, what)) {
      const key = x.key;
      const value = x.value;
      if (!this.hasAcl && (key.equals(K.aclAccess) || key.equals(K.aclDefault))) this.hasAcl = true;
      const isReg = (node.mode & S_IFMT) === S_IFREG;
      if (key.equals(K.redirect)) {
        if (isReg) {
          let v = value;
          if (v.length > 1 && v[0] === SLASH) v = v.subarray(1);
          const nul = v.indexOf(0);
          node.payload = nul >= 0 ? v.subarray(0, nul) : v;
          redirectSeen = true;
        }
        continue;
      }
      if (key.equals(K.metacopy)) {
        if (isReg) {
          metacopySeen = true;
          if (value.length === 4 + 32) node.digest = value.subarray(4, 36);
          if (this.checking) {
            if (value.length !== 0 && value.length !== 36) check('metacopy', `trusted.overlay.metacopy of ${value.length} bytes (expected 0 or 36)`);
            else if (value.length === 36 && (value[0] !== 0 || value[1] !== 36 || value[2] !== 0 || value[3] !== FS_VERITY_HASH_ALG_SHA256)) {
              check('metacopy', 'trusted.overlay.metacopy has a bad header (version, length, flags or hash algorithm)');
            }
          }
        }
        continue;
      }
      if (isReg && key.equals(K.escWhiteout)) {
        node.mode = (node.mode & ~S_IFMT) | S_IFCHR;
        node.rdev = 0;
        node.size = 0;
        continue;
      }
      if (key.equals(K.escWhiteouts) || key.equals(K.userWhiteout) || key.equals(K.userWhiteouts)) continue;
      let outKey = key;
      if (hasPrefix(key, K.overlayPrefix)) {
        if (!hasPrefix(key, K.escapePrefix)) continue;
        outKey = Buffer.concat([K.trustedPrefix, key.subarray(K.overlayPrefix.length)]);
      }
      setXattr(node.xattrs, outKey, value);
    }
    if ((node.mode & S_IFMT) === S_IFCHR && type === S_IFREG) {
      // An escaped whiteout: a device node has no data of its own.
      node.payload = null;
      node.content = null;
      node.digest = null;
    }
    if (this.checking && (node.mode & S_IFMT) === S_IFREG) {
      if (redirectSeen && !metacopySeen) check('metacopy', 'trusted.overlay.redirect without trusted.overlay.metacopy');
      if (raw.layout === LAYOUT_CHUNK_BASED && raw.size > 0 && !metacopySeen) {
        check('metacopy', 'file data is not in the image and there is no trusted.overlay.metacopy');
      }
    }
    return node;
  }

  /** Chunk-based files: the format bits, and the chunk index (which the kernel reads right after the xattrs) in bounds. */
  checkChunks(raw: RawInode, check: (code: string, msg: string) => void): void {
    const fmt = raw.u & 0xffff;
    if (fmt & ~(CHUNK_FORMAT_BLKBITS_MASK | CHUNK_FORMAT_INDEXES)) {
      check('chunks', `unknown chunk format bits 0x${fmt.toString(16)}`);
      return;
    }
    if (raw.size === 0) return;
    const bits = BLOCK_BITS + (fmt & CHUNK_FORMAT_BLKBITS_MASK);
    const count = Math.ceil(raw.size / 2 ** bits);
    const unit = fmt & CHUNK_FORMAT_INDEXES ? 8 : 4;
    const off = Math.ceil(this.tailOffset(raw) / unit) * unit;
    if (off + count * unit > this.len) check('chunks', `chunk index of ${count} entries lies outside the image`);
  }
}

function setXattr(list: Xattr[], key: Buffer, value: Buffer): void {
  for (const x of list) {
    if (x.key.equals(key)) {
      x.value = value;
      return;
    }
  }
  list.push({ key, value });
}

function framePath(frame: Frame | null, name: Buffer | null = null): Buffer {
  const parts: Buffer[] = [];
  if (name) parts.push(name);
  for (let f = frame; f && f.name; f = f.parent) parts.push(f.name);
  if (parts.length === 0) return Buffer.from('/');
  const pieces: Buffer[] = [];
  for (let i = parts.length - 1; i >= 0; i--) pieces.push(Buffer.from('/'), parts[i]);
  return Buffer.concat(pieces);
}

/**
 * Read a composefs image into a tree. Throws `ImageFormatError` on any
 * damage (or, with `onProblem`, reports what it can and leaves damaged entries out).
 */
export function readImage(buf: Buffer, opts: ReadImageOptions = {}): ReadImageResult {
  const header = readImageHeader(buf);
  const r = new Reader(buf, header, opts.onProblem, opts.trace);
  const checking = r.checking;
  const problem = (path: Buffer | null, code: string, message: string) => opts.onProblem?.({ path, code, message });

  if (checking) {
    if (header.version > FORMAT_VERSION_MAX) problem(null, 'version', `unknown composefs format version ${header.version}`);
    if (header.flags & ~COMPOSEFS_FLAG_HAS_ACL) problem(null, 'header', `unknown composefs header flags 0x${header.flags.toString(16)}`);
    if (header.featureIncompat !== 0) {
      problem(null, 'superblock', `incompatible EROFS features 0x${header.featureIncompat.toString(16)} (the kernel may refuse to mount)`);
    }
    if (buf.length % BLOCK_SIZE !== 0) problem(null, 'size', `image size ${buf.length} is not a multiple of the block size ${BLOCK_SIZE}`);
    if (header.blocks * BLOCK_SIZE !== buf.length) {
      problem(null, 'size', `superblock says ${header.blocks} blocks (${header.blocks * BLOCK_SIZE} bytes) but the image has ${buf.length} bytes`);
    }
  }

  const rootPath = Buffer.from('/');
  let rootRaw: RawInode;
  let root: Inode;
  const rootDots = { dot: -1, dotdot: -1 };
  let rootEntries: RawDirent[];
  try {
    rootRaw = r.inode(header.rootNid);
    if ((rootRaw.mode & S_IFMT) !== S_IFDIR) throw new EntryError('root', `root inode ${header.rootNid} is not a directory`);
    root = r.build(rootRaw, 'root directory', (code, msg) => problem(rootPath, code, msg));
    rootEntries = r.dirents(rootRaw, 'root directory', rootDots);
  } catch (e) {
    if (e instanceof EntryError) throw new ImageFormatError(e.message, rootPath, e.code);
    throw e;
  }

  const byNid = new Map<number, Inode>();
  const whiteouts = new Set<number>();
  byNid.set(header.rootNid, root);
  const stack: Frame[] = [];
  const enter = (frame: Frame, raw: RawInode, dots: { dot: number; dotdot: number }, parentNid: number) => {
    if (checking) {
      const path = framePath(frame);
      if (dots.dot !== raw.nid) problem(path, 'dot', dots.dot < 0 ? "missing '.' entry" : `'.' points at inode ${dots.dot}, not at the directory itself`);
      if (dots.dotdot !== parentNid) problem(path, 'dotdot', dots.dotdot < 0 ? "missing '..' entry" : `'..' points at inode ${dots.dotdot}, not at the parent`);
    }
    // Name order is what the tree model (and the writer) need; report when the image differs.
    const e = frame.entries;
    let sorted = true;
    for (let i = 1; i < e.length; i++) {
      if (Buffer.compare(e[i - 1].name, e[i].name) >= 0) {
        sorted = false;
        break;
      }
    }
    if (!sorted) {
      if (checking) problem(framePath(frame), 'order', 'directory entries are not sorted by name (the kernel lookup relies on it)');
      e.sort((a, b) => Buffer.compare(a.name, b.name));
    }
    stack.push(frame);
  };
  enter({ inode: root, nid: header.rootNid, parent: null, name: null, entries: rootEntries, next: 0, subdirs: 0 }, rootRaw, rootDots, header.rootNid);

  while (stack.length > 0) {
    const frame = stack[stack.length - 1];
    if (frame.next >= frame.entries.length) {
      stack.pop();
      if (checking) {
        const want = 2 + frame.subdirs;
        if (frame.inode.nlink !== want) {
          problem(framePath(frame), 'nlink', `directory link count ${frame.inode.nlink}, expected ${want} (2 + ${frame.subdirs} subdirectories)`);
        }
      }
      continue;
    }
    const ent = frame.entries[frame.next++];
    if (frame.next > 1 && Buffer.compare(frame.entries[frame.next - 2].name, ent.name) === 0) {
      const msg = 'duplicate directory entry';
      if (checking) {
        problem(framePath(frame, ent.name), 'duplicate', msg);
        continue;
      }
      throw new ImageFormatError(msg, framePath(frame, ent.name), 'duplicate');
    }
    try {
      const seen = byNid.get(ent.nid);
      if (seen) {
        if ((seen.mode & S_IFMT) === S_IFDIR) {
          throw new EntryError('loop', `entry refers to directory inode ${ent.nid}, which is already in the tree (a directory loop or a hard-linked directory)`);
        }
        if (checking && ent.ftype !== ftypeOf(seen.mode) && !((seen.mode & S_IFMT) === S_IFCHR && seen.rdev === 0 && ent.ftype === FT_REG_FILE)) {
          problem(framePath(frame, ent.name), 'dirent-type', `directory entry type ${ent.ftype} does not match the inode's file type`);
        }
        const d: Dirent = { name: ent.name, inode: seen, hardlink: true };
        frame.inode.children!.push(d);
        continue;
      }
      if (whiteouts.has(ent.nid)) continue;
      const raw = r.inode(ent.nid);
      const type = raw.mode & S_IFMT;
      if (type === S_IFCHR && raw.u === 0) {
        // An overlayfs whiteout the writer added (the 00..ff in the root): not part of the tree.
        whiteouts.add(ent.nid);
        continue;
      }
      if (checking && ent.ftype !== ftypeOf(raw.mode)) {
        problem(framePath(frame, ent.name), 'dirent-type', `directory entry type ${ent.ftype} does not match the inode's file type ${ftypeOf(raw.mode)}`);
      }
      const what = `inode ${ent.nid}`;
      let checkPath: Buffer | null = null;
      const check = (code: string, msg: string) => problem((checkPath ??= framePath(frame, ent.name)), code, msg);
      const node = r.build(raw, what, check);
      if (type === S_IFDIR) {
        const dots = { dot: -1, dotdot: -1 };
        const entries = r.dirents(raw, what, dots);
        byNid.set(ent.nid, node);
        frame.inode.children!.push({ name: ent.name, inode: node, hardlink: false });
        frame.subdirs++;
        enter({ inode: node, nid: ent.nid, parent: frame, name: ent.name, entries, next: 0, subdirs: 0 }, raw, dots, frame.nid);
      } else {
        byNid.set(ent.nid, node);
        frame.inode.children!.push({ name: ent.name, inode: node, hardlink: false });
      }
    } catch (e) {
      if (!(e instanceof EntryError)) throw e;
      const path = framePath(frame, ent.name);
      if (checking) problem(path, e.code, e.message);
      else throw new ImageFormatError(e.message, path, e.code);
    }
  }

  const inodeCount = byNid.size + whiteouts.size;
  if (checking) {
    if (header.inodes !== inodeCount) problem(null, 'inodes', `superblock counts ${header.inodes} inodes, the tree reaches ${inodeCount}`);
    const flagAcl = (header.flags & COMPOSEFS_FLAG_HAS_ACL) !== 0;
    if (flagAcl !== r.hasAcl) {
      problem(null, 'header', flagAcl ? 'header flags the image as having ACLs but no inode has one' : 'inodes have ACLs but the header does not flag them');
    }
  }
  return { root, header, version: header.version, inodeCount };
}
