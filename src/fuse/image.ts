/**
 * Random access to a composefs image for the FUSE server: an inode by its
 * nid, a name in a directory, a directory from an offset, an inode's
 * xattrs — decoded from the image bytes on each request, nothing walked
 * ahead of time and no tree built (a /usr image is served from the moment
 * it is read).
 *
 * What the server shows is what the kernel's composefs mount (overlayfs over
 * the EROFS image) shows, so the overlay's view is applied here: its own
 * `trusted.overlay.*` xattrs are hidden, escaped `trusted.overlay.overlay.X`
 * show as `trusted.overlay.X`, whiteouts (character devices 0:0) are not
 * there, and a regular file with `trusted.overlay.metacopy` has its data in
 * the object its `trusted.overlay.redirect` names.
 *
 * This is the one file of src/fuse/ that knows the EROFS layout; the image
 * header is checked by the shared reader (readImageHeader). The image is
 * hostile input: every offset is checked before use and damage is a
 * `BadImageError` naming the inode, which the server answers with EIO for
 * that request alone.
 */
import {
  BLOCK_SIZE,
  DE,
  DIRENT_SIZE,
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
  XATTR_INDEX_PREFIX,
  XH,
  direntFileType,
  FT_UNKNOWN,
} from '../erofs/format.js';
import { readImageHeader, type ImageHeader } from '../erofs/reader.js';

export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const S_IFCHR = 0o020000;
export const S_IFBLK = 0o060000;

/** Damage in the image confined to one inode or directory: the request touching it fails with EIO. */
export class BadImageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BadImageError';
  }
}

/** One inode as stored. */
export interface Ino {
  nid: number;
  mode: number;
  nlink: number;
  size: number;
  uid: number;
  gid: number;
  mtimeSec: number;
  mtimeNsec: number;
  /** Raw union field: block address, device number (new_encode_dev) or chunk format. */
  u: number;
  layout: number;
  /** Offset of the inode in the image. */
  off: number;
  /** Inode size (32 or 64) plus the xattr area: where inline data starts. */
  tailOff: number;
  xattrOff: number;
  xattrSize: number;
}

/** Where a regular file's data is. */
export type Data =
  | { kind: 'image'; bytes: Buffer }
  | { kind: 'zero' }
  | { kind: 'object'; redirect: Buffer | null; digest: Buffer | null };

const MAX_SAFE_HI = 0x1fffff;
const NAME_MAX = 255;
/**
 * The longest symlink target: below PATH_MAX (4096 with its NUL), what
 * symlink(2) makes and the most a FUSE READLINK answer may carry (the kernel
 * reads it into one page and keeps a byte for the NUL, fs/fuse/dir.c).
 */
export const SYMLINK_MAX = 4095;
const SLASH = 0x2f;
const DOT = 0x2e;

/**
 * The path of the object a `trusted.overlay.redirect` names, relative to a
 * store, or null when it names none. The kernel follows a redirect into a
 * data-only layer only beneath the layer, without symlinks; composefs writes
 * `/XX/<62 hex digits>`. Taken: one optional leading `/`, then names
 * separated by single slashes, none empty, `.` or `..` (so no path can leave
 * the store however it is resolved), no NUL, each at most NAME_MAX bytes and
 * the whole below PATH_MAX.
 */
export function objectPath(redirect: Buffer): Buffer | null {
  const rel = redirect.length > 0 && redirect[0] === SLASH ? redirect.subarray(1) : redirect;
  if (rel.length === 0 || rel.length > SYMLINK_MAX) return null;
  let start = 0;
  for (let i = 0; i <= rel.length; i++) {
    if (i < rel.length && rel[i] !== SLASH) {
      if (rel[i] === 0) return null;
      continue;
    }
    const n = i - start;
    if (n === 0 || n > NAME_MAX) return null;
    if (rel[start] === DOT && (n === 1 || (n === 2 && rel[start + 1] === DOT))) return null;
    start = i + 1;
  }
  return rel;
}
const latin1 = (s: string) => Buffer.from(s, 'latin1');
const PREFIXES = XATTR_INDEX_PREFIX.map((p) => (p === null ? null : latin1(p)));
const OVERLAY = latin1('trusted.overlay.');
const ESCAPED = latin1('trusted.overlay.overlay.');
const REDIRECT = latin1('trusted.overlay.redirect');
const METACOPY = latin1('trusted.overlay.metacopy');

function u16(b: Buffer, o: number): number {
  return b[o] | (b[o + 1] << 8);
}
function u32(b: Buffer, o: number): number {
  return (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16)) + b[o + 3] * 0x1000000;
}

function startsWith(b: Buffer, prefix: Buffer): boolean {
  return b.length >= prefix.length && b.compare(prefix, 0, prefix.length, 0, prefix.length) === 0;
}

/** One stored directory entry: its name is image[nameStart, nameEnd). */
export interface DirEntry {
  nid: number;
  ftype: number;
  nameStart: number;
  nameEnd: number;
}

export class ImageView {
  readonly header: ImageHeader;
  readonly rootNid: number;
  private readonly metaStart: number;
  private readonly xattrStart: number;

  constructor(readonly buf: Buffer) {
    this.header = readImageHeader(buf);
    this.rootNid = this.header.rootNid;
    this.metaStart = this.header.metaBlkaddr * BLOCK_SIZE;
    this.xattrStart = this.header.xattrBlkaddr * BLOCK_SIZE;
  }

  private need(off: number, n: number, nid: number, what: string): void {
    if (!(off >= 0 && n >= 0 && off + n <= this.buf.length)) {
      throw new BadImageError(`inode ${nid}: ${what} (offset ${off}, ${n} bytes) lies outside the image`);
    }
  }

  inode(nid: number): Ino {
    const b = this.buf;
    const off = this.metaStart + nid * SLOT_SIZE;
    if (!(Number.isSafeInteger(nid) && nid >= 0 && off + INODE_COMPACT_SIZE <= b.length)) throw new BadImageError(`inode ${nid} lies outside the image`);
    const format = u16(b, off);
    const layout = (format >> I_DATALAYOUT_BIT) & I_DATALAYOUT_MASK;
    let ino: Ino;
    if ((format & 1) === 0) {
      const xattrIcount = u16(b, off + IC.xattrIcount);
      const xattrSize = xattrIcount > 0 ? XATTR_IBODY_HEADER_SIZE + (xattrIcount - 1) * 4 : 0;
      ino = {
        nid,
        mode: u16(b, off + IC.mode),
        nlink: u16(b, off + IC.nlink),
        size: u32(b, off + IC.size),
        uid: u16(b, off + IC.uid),
        gid: u16(b, off + IC.gid),
        mtimeSec: this.header.buildTime,
        mtimeNsec: this.header.buildTimeNsec,
        u: u32(b, off + IC.u),
        layout,
        off,
        xattrOff: off + INODE_COMPACT_SIZE,
        xattrSize,
        tailOff: off + INODE_COMPACT_SIZE + xattrSize,
      };
    } else {
      if (off + INODE_EXTENDED_SIZE > b.length) throw new BadImageError(`inode ${nid} lies outside the image`);
      const sizeHi = u32(b, off + IE.size + 4);
      const mHi = b.readInt32LE(off + IE.mtime + 4);
      if (sizeHi > MAX_SAFE_HI || mHi > MAX_SAFE_HI || mHi < -MAX_SAFE_HI - 1) throw new BadImageError(`inode ${nid}: size or mtime out of range`);
      const xattrIcount = u16(b, off + IE.xattrIcount);
      const xattrSize = xattrIcount > 0 ? XATTR_IBODY_HEADER_SIZE + (xattrIcount - 1) * 4 : 0;
      ino = {
        nid,
        mode: u16(b, off + IE.mode),
        nlink: u32(b, off + IE.nlink),
        size: sizeHi * 0x100000000 + u32(b, off + IE.size),
        uid: u32(b, off + IE.uid),
        gid: u32(b, off + IE.gid),
        mtimeSec: mHi * 0x100000000 + u32(b, off + IE.mtime),
        mtimeNsec: u32(b, off + IE.mtimeNsec),
        u: u32(b, off + IE.u),
        layout,
        off,
        xattrOff: off + INODE_EXTENDED_SIZE,
        xattrSize,
        tailOff: off + INODE_EXTENDED_SIZE + xattrSize,
      };
    }
    if (ino.xattrSize > 0) this.need(ino.xattrOff, ino.xattrSize, nid, 'xattr area');
    if (direntFileType(ino.mode) === FT_UNKNOWN) throw new BadImageError(`inode ${nid}: invalid file type in mode 0${ino.mode.toString(8)}`);
    if (layout !== LAYOUT_FLAT_PLAIN && layout !== LAYOUT_FLAT_INLINE && layout !== LAYOUT_CHUNK_BASED) {
      throw new BadImageError(`inode ${nid}: unsupported data layout ${layout}`);
    }
    if (ino.mtimeNsec >= 1e9) ino.mtimeNsec = 0;
    return ino;
  }

  /**
   * The nid of the inode stored right after `ino` (the writer stores the
   * inodes of a directory's entries one after another), or -1 when what
   * follows is not where an inode can start (inline data padded to a block).
   */
  nextNid(ino: Ino): number {
    const inlineTail = ino.layout === LAYOUT_FLAT_INLINE ? ino.size % BLOCK_SIZE : 0;
    const end = ino.tailOff + inlineTail;
    const nid = Math.ceil((end - this.metaStart) / SLOT_SIZE);
    return this.metaStart + nid * SLOT_SIZE + INODE_COMPACT_SIZE <= this.buf.length ? nid : -1;
  }

  /** A whiteout the overlay hides (a character device 0:0). */
  isWhiteout(ino: Ino): boolean {
    return (ino.mode & S_IFMT) === S_IFCHR && ino.u === 0;
  }

  /** Device number as the kernel gets it (EROFS stores new_encode_dev, which FUSE also takes). */
  rdev(ino: Ino): number {
    const t = ino.mode & S_IFMT;
    return t === S_IFCHR || t === S_IFBLK || t === 0o010000 || t === 0o140000 ? ino.u : 0;
  }

  /**
   * A flat inode's data as (blocks at `blockStart` of `blockBytes` bytes,
   * then `tail` bytes inline at ino.tailOff), checked against the image.
   */
  private extent(ino: Ino): { blockStart: number; blockBytes: number; tail: number } {
    if (ino.layout === LAYOUT_CHUNK_BASED) return { blockStart: 0, blockBytes: 0, tail: 0 };
    const inline = ino.layout === LAYOUT_FLAT_INLINE;
    const nBlocks = inline ? Math.floor(ino.size / BLOCK_SIZE) : Math.ceil(ino.size / BLOCK_SIZE);
    const blockStart = ino.u * BLOCK_SIZE;
    const blockBytes = inline ? nBlocks * BLOCK_SIZE : ino.size;
    const tail = inline ? ino.size - blockBytes : 0;
    if (blockBytes > 0) this.need(blockStart, blockBytes, ino.nid, 'data blocks');
    if (tail > 0) this.need(ino.tailOff, tail, ino.nid, 'inline data');
    return { blockStart, blockBytes, tail };
  }

  /** The data stored in the image itself (symlink targets, small files): a view when contiguous. */
  inlineData(ino: Ino): Buffer {
    const { blockStart, blockBytes, tail } = this.extent(ino);
    if (tail === 0) return this.buf.subarray(blockStart, blockStart + blockBytes);
    if (blockBytes === 0) return this.buf.subarray(ino.tailOff, ino.tailOff + tail);
    return Buffer.concat([this.buf.subarray(blockStart, blockStart + blockBytes), this.buf.subarray(ino.tailOff, ino.tailOff + tail)]);
  }

  symlinkTarget(ino: Ino): Buffer {
    if (ino.size > SYMLINK_MAX) throw new BadImageError(`inode ${ino.nid}: symlink target of ${ino.size} bytes (at most ${SYMLINK_MAX})`);
    const t = this.inlineData(ino);
    if (t.length === 0 || t.includes(0)) throw new BadImageError(`inode ${ino.nid}: bad symlink target`);
    return t;
  }

  /** Where a regular file's bytes come from, as the overlay decides. */
  data(ino: Ino): Data {
    let metacopy: Buffer | null = null;
    let redirect: Buffer | null = null;
    // Compared in place (prefix index + stored suffix): READ asks this for every request.
    this.eachXattr(ino, (index, ns, nl, vs, ve) => {
      if (this.isTrusted(index, ns, nl, METACOPY)) metacopy = this.buf.subarray(vs, ve);
      else if (this.isTrusted(index, ns, nl, REDIRECT)) redirect = this.buf.subarray(vs, ve);
    });
    if (metacopy !== null) {
      const m = metacopy as Buffer;
      const digest = m.length === 36 ? m.subarray(4, 36) : null;
      return { kind: 'object', redirect, digest };
    }
    if (ino.layout === LAYOUT_CHUNK_BASED) return { kind: 'zero' };
    return { kind: 'image', bytes: this.inlineData(ino) };
  }

  /** Whether the stored name (prefix index, suffix at ns..ns+nl) is the full name `full`. */
  private isTrusted(index: number, ns: number, nl: number, full: Buffer): boolean {
    const prefix = index < PREFIXES.length ? PREFIXES[index] : null;
    if (prefix === null || prefix.length + nl !== full.length) return false;
    if (full.compare(prefix, 0, prefix.length, 0, prefix.length) !== 0) return false;
    return this.buf.compare(full, prefix.length, full.length, ns, ns + nl) === 0;
  }

  /**
   * Every stored xattr of the inode, inline ones then shared ones, with its
   * full name and where its value is; a name with an unknown prefix index,
   * empty or with a NUL is damage (BadImageError).
   */
  private eachXattr(ino: Ino, fn: (index: number, nameStart: number, nameLen: number, valueStart: number, valueEnd: number) => void): void {
    if (ino.xattrSize === 0) return;
    const b = this.buf;
    const h = ino.xattrOff;
    const end = h + ino.xattrSize;
    const shared = b[h + XH.sharedCount];
    let pos = h + XATTR_IBODY_HEADER_SIZE + shared * 4;
    if (pos > end) throw new BadImageError(`inode ${ino.nid}: ${shared} shared xattrs do not fit its xattr area`);
    while (pos < end) {
      const total = this.entry(pos, end, ino.nid, fn);
      pos += (total + 3) & ~3;
    }
    for (let i = 0; i < shared; i++) {
      const at = this.xattrStart + u32(b, h + XATTR_IBODY_HEADER_SIZE + i * 4) * 4;
      if (at + XATTR_ENTRY_SIZE > b.length) throw new BadImageError(`inode ${ino.nid}: shared xattr lies outside the image`);
      this.entry(at, b.length, ino.nid, fn);
    }
  }

  private entry(pos: number, end: number, nid: number, fn: (index: number, ns: number, nl: number, vs: number, ve: number) => void): number {
    const b = this.buf;
    if (pos + XATTR_ENTRY_SIZE > end) throw new BadImageError(`inode ${nid}: truncated xattr entry`);
    const nameLen = b[pos];
    const index = b[pos + 1];
    const total = XATTR_ENTRY_SIZE + nameLen + u16(b, pos + 2);
    if (pos + total > end) throw new BadImageError(`inode ${nid}: xattr entry runs past its area`);
    // What the shared reader refuses (src/erofs/reader.ts) is damage here too: the inode's requests get EIO.
    const prefix = index < PREFIXES.length ? PREFIXES[index] : null;
    if (prefix === null) throw new BadImageError(`inode ${nid}: xattr with unknown name prefix index ${index}`);
    if (prefix.length + nameLen === 0) throw new BadImageError(`inode ${nid}: empty xattr name`);
    const s = pos + XATTR_ENTRY_SIZE;
    for (let i = s; i < s + nameLen; i++) if (b[i] === 0) throw new BadImageError(`inode ${nid}: xattr name contains NUL`);
    fn(index, s, nameLen, s + nameLen, pos + total);
    return total;
  }

  /** The xattrs as the overlay shows them: its own hidden, escaped ones unescaped. */
  xattrs(ino: Ino): Array<{ name: Buffer; value: Buffer }> {
    const out: Array<{ name: Buffer; value: Buffer }> = [];
    this.eachXattr(ino, (index, ns, nl, vs, ve) => {
      const name = Buffer.concat([PREFIXES[index]!, this.buf.subarray(ns, ns + nl)]);
      let shown = name;
      if (startsWith(name, OVERLAY)) {
        if (!startsWith(name, ESCAPED)) return;
        shown = Buffer.concat([OVERLAY, name.subarray(ESCAPED.length)]);
      }
      for (const x of out) {
        if (x.name.equals(shown)) {
          x.value = this.buf.subarray(vs, ve);
          return;
        }
      }
      out.push({ name: shown, value: this.buf.subarray(vs, ve) });
    });
    return out;
  }

  /** Directory blocks: [start, len) of each, the inline tail last. */
  private dirBlocks(dir: Ino): Array<[number, number]> {
    if (dir.layout === LAYOUT_CHUNK_BASED) throw new BadImageError(`inode ${dir.nid}: chunk-based directory`);
    const { blockStart, blockBytes, tail } = this.extent(dir);
    const blocks: Array<[number, number]> = [];
    for (let p = 0; p < blockBytes; p += BLOCK_SIZE) blocks.push([blockStart + p, Math.min(BLOCK_SIZE, blockBytes - p)]);
    if (tail > 0) blocks.push([dir.tailOff, tail]);
    return blocks;
  }

  /** Number of entries in the directory block at [start, start+len), checked. */
  private blockCount(nid: number, start: number, len: number): number {
    if (len < DIRENT_SIZE) throw new BadImageError(`inode ${nid}: directory block of ${len} bytes`);
    const first = u16(this.buf, start + DE.nameoff);
    if (first < DIRENT_SIZE || first % DIRENT_SIZE !== 0 || first > len) throw new BadImageError(`inode ${nid}: bad directory block`);
    return first / DIRENT_SIZE;
  }

  /** Entry i of a directory block (n entries), checked. */
  private blockEntry(nid: number, start: number, len: number, n: number, i: number): DirEntry {
    const b = this.buf;
    const p = start + i * DIRENT_SIZE;
    const nameoff = u16(b, p + DE.nameoff);
    let end: number;
    if (i + 1 < n) end = u16(b, p + DIRENT_SIZE + DE.nameoff);
    else {
      end = nameoff;
      while (end < len && b[start + end] !== 0) end++;
    }
    if (nameoff < n * DIRENT_SIZE || end > len || end <= nameoff || end - nameoff > NAME_MAX) {
      throw new BadImageError(`inode ${nid}: directory entry with a bad name offset`);
    }
    const hi = u32(b, p + DE.nid + 4);
    if (hi > MAX_SAFE_HI) throw new BadImageError(`inode ${nid}: directory entry with an inode number out of range`);
    return { nid: hi * 0x100000000 + u32(b, p + DE.nid), ftype: b[p + DE.fileType], nameStart: start + nameoff, nameEnd: start + end };
  }

  private compareName(name: Buffer, e: DirEntry): number {
    return name.compare(this.buf, e.nameStart, e.nameEnd);
  }

  /** The entry `name` of a directory (binary search, as the kernel's EROFS does), or null. */
  lookup(dir: Ino, name: Buffer): DirEntry | null {
    const blocks = this.dirBlocks(dir);
    let lo = 0;
    let hi = blocks.length - 1;
    // The last block whose first name is <= name.
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const [s, l] = blocks[mid];
      const n = this.blockCount(dir.nid, s, l);
      const c = this.compareName(name, this.blockEntry(dir.nid, s, l, n, 0));
      if (c === 0) return this.blockEntry(dir.nid, s, l, n, 0);
      if (c > 0) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    if (found < 0) return null;
    const [s, l] = blocks[found];
    const n = this.blockCount(dir.nid, s, l);
    let a = 1;
    let z = n - 1;
    while (a <= z) {
      const mid = (a + z) >> 1;
      const e = this.blockEntry(dir.nid, s, l, n, mid);
      const c = this.compareName(name, e);
      if (c === 0) return e;
      if (c > 0) a = mid + 1;
      else z = mid - 1;
    }
    return null;
  }

  /**
   * Directory entries from position `from` (0, or a cookie given before):
   * `fn(entry, next)` for each until it returns false. A position is
   * block * 4096 + index in the block.
   */
  readdir(dir: Ino, from: number, fn: (e: DirEntry, next: number) => boolean): void {
    const blocks = this.dirBlocks(dir);
    let bi = Math.floor(from / BLOCK_SIZE);
    let i = from % BLOCK_SIZE;
    for (; bi < blocks.length; bi++, i = 0) {
      const [s, l] = blocks[bi];
      const n = this.blockCount(dir.nid, s, l);
      for (; i < n; i++) {
        const e = this.blockEntry(dir.nid, s, l, n, i);
        // A name with '/' or NUL is damage, as for the shared reader: the listing is EIO. (A lookup
        // never matches one: the kernel asks only for names without either.)
        for (let q = e.nameStart; q < e.nameEnd; q++) {
          if (this.buf[q] === SLASH || this.buf[q] === 0) throw new BadImageError(`inode ${dir.nid}: directory entry name contains '/' or NUL`);
        }
        const next = i + 1 < n ? bi * BLOCK_SIZE + i + 1 : (bi + 1) * BLOCK_SIZE;
        if (!fn(e, next)) return;
      }
    }
  }

  name(e: DirEntry): Buffer {
    return this.buf.subarray(e.nameStart, e.nameEnd);
  }
}
