/**
 * A composefs image as the FUSE server shows it: random access (an inode by
 * its nid, a name in a directory, a directory from an offset, an inode's
 * xattrs) decoded on each request, nothing walked ahead of time and no tree
 * built, so a /usr image is served from the moment it is read.
 *
 * The decoding, and every check on the hostile image, is the reader's own
 * decoder (src/erofs/decoder.ts): what the reader refuses, a request that
 * touches it fails with the same reason (an `ImageFormatError`, which the
 * server answers with EIO for that request alone). This file adds what the
 * kernel's composefs mount (overlayfs over the EROFS image) shows: its own
 * `trusted.overlay.*` xattrs are hidden, escaped `trusted.overlay.overlay.X`
 * show as `trusted.overlay.X` (src/erofs/overlay.ts), whiteouts (character
 * devices 0:0) are not there, and a regular file with
 * `trusted.overlay.metacopy` has its data in the object its
 * `trusted.overlay.redirect` names.
 */
import { BLOCK_SIZE, INODE_COMPACT_SIZE, LAYOUT_CHUNK_BASED, LAYOUT_FLAT_INLINE, SLOT_SIZE } from '../erofs/format.js';
import type { ImageHeader } from '../erofs/header.js';
import {
  ImageDecoder,
  NAME_MAX,
  SYMLINK_MAX,
  newDirentRecord,
  newInodeRecord,
  type DirentRecord,
  type InodeRecord,
} from '../erofs/decoder.js';
import { XattrMeaning, mountedXattrName, xattrMeaning } from '../erofs/overlay.js';
import { S_IFBLK, S_IFCHR, S_IFIFO, S_IFMT, S_IFSOCK } from '../tree/model.js';

export { SYMLINK_MAX };

/** One inode as stored (the decoder's record), with where its xattrs and inline data start. */
export interface Ino extends InodeRecord {
  /** Offset of the xattr area (right after the inode). */
  xattrOff: number;
  /** Inode size (32 or 64) plus the xattr area: where inline data starts. */
  tailOff: number;
}

/** Where a regular file's data is. */
export type Data =
  | { kind: 'image'; bytes: Buffer }
  | { kind: 'zero' }
  | { kind: 'object'; redirect: Buffer | null; digest: Buffer | null };

/** One stored directory entry: its name is image[nameStart, nameEnd). */
export type DirEntry = DirentRecord;

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

export class ImageView {
  readonly header: ImageHeader;
  readonly rootNid: number;
  private readonly decoder: ImageDecoder;

  /** Checks the header, the superblock and the root inode (ImageFormatError). */
  constructor(readonly buf: Buffer) {
    this.decoder = new ImageDecoder(buf);
    this.header = this.decoder.header;
    this.rootNid = this.header.rootNid;
    try {
      this.decoder.root(newInodeRecord());
    } catch (e) {
      throw this.decoder.atRoot(e);
    }
  }

  inode(nid: number): Ino {
    // One literal with every field: a record given its last two fields later would change shape on every request.
    const ino: Ino = {
      nid: 0, off: 0, compact: true, format: 0, layout: 0, mode: 0, nlink: 0, size: 0, u: 0,
      uid: 0, gid: 0, mtimeSec: 0, mtimeNsec: 0, isize: 0, xattrIcount: 0, xattrSize: 0, xattrOff: 0, tailOff: 0,
    };
    this.decoder.inode(nid, ino);
    ino.xattrOff = ino.off + ino.isize;
    ino.tailOff = ino.xattrOff + ino.xattrSize;
    // What the kernel's EROFS does with a nanosecond count past a second (fsck reports it).
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
    const metaStart = this.decoder.metaStart;
    const nid = Math.ceil((end - metaStart) / SLOT_SIZE);
    return metaStart + nid * SLOT_SIZE + INODE_COMPACT_SIZE <= this.buf.length ? nid : -1;
  }

  /** A whiteout the overlay hides (a character device 0:0); one with further links is damage. */
  isWhiteout(ino: Ino): boolean {
    return this.decoder.isWhiteout(ino);
  }

  /** Device number as the kernel gets it (EROFS stores new_encode_dev, which FUSE also takes). */
  rdev(ino: Ino): number {
    const t = ino.mode & S_IFMT;
    return t === S_IFCHR || t === S_IFBLK || t === S_IFIFO || t === S_IFSOCK ? ino.u : 0;
  }

  /** The data stored in the image itself (symlink targets, small files): a view when contiguous. */
  inlineData(ino: Ino): Buffer {
    return this.decoder.data(ino);
  }

  symlinkTarget(ino: Ino): Buffer {
    return this.decoder.symlinkTarget(ino);
  }

  /** Where a regular file's bytes come from, as the overlay decides. */
  data(ino: Ino): Data {
    let metacopy: Buffer | null = null;
    let redirect: Buffer | null = null;
    const b = this.buf;
    this.decoder.eachXattr(ino, (index, ns, nl, vs, ve) => {
      const meaning = xattrMeaning(b, index, ns, nl);
      if (meaning === XattrMeaning.Metacopy) metacopy = b.subarray(vs, ve);
      else if (meaning === XattrMeaning.Redirect) redirect = b.subarray(vs, ve);
    });
    if (ino.layout === LAYOUT_CHUNK_BASED) {
      if (metacopy === null) return { kind: 'zero' };
    } else {
      // Checked even when the bytes are elsewhere: damage the reader refuses is damage here too.
      this.decoder.extent(ino);
      if (metacopy === null) return { kind: 'image', bytes: this.decoder.data(ino) };
    }
    const m = metacopy as Buffer;
    return { kind: 'object', redirect, digest: metacopyDigest(m) };
  }

  /** The xattrs as the overlay shows them: its own hidden, escaped ones unescaped. */
  xattrs(ino: Ino): Array<{ name: Buffer; value: Buffer }> {
    const out: Array<{ name: Buffer; value: Buffer }> = [];
    const b = this.buf;
    this.decoder.eachXattr(ino, (index, ns, nl, vs, ve) => {
      const shown = mountedXattrName(b, index, ns, nl);
      if (shown === null) return;
      for (const x of out) {
        if (x.name.equals(shown)) {
          x.value = b.subarray(vs, ve);
          return;
        }
      }
      out.push({ name: shown, value: b.subarray(vs, ve) });
    });
    return out;
  }

  /** The entry `name` of a directory (binary search, as the kernel's EROFS does), or null. */
  lookup(dir: Ino, name: Buffer): DirEntry | null {
    const e = newDirentRecord();
    return this.decoder.lookup(dir, name, e) ? e : null;
  }

  /**
   * Directory entries from position `from` (0, or a cookie given before):
   * `fn(entry, next)` for each until it returns false. A position is
   * block * 4096 + index in the block. An entry the reader refuses (a name
   * with '/' or NUL, a bad offset) makes the listing fail there.
   */
  readdir(dir: Ino, from: number, fn: (e: DirEntry, next: number) => boolean): void {
    const d = this.decoder;
    const blocks = d.dirBlocks(dir);
    // Where the blocks are, before fn can look at other inodes.
    const starts: number[] = [];
    const lengths: number[] = [];
    for (let k = 0; k < blocks; k++) {
      starts.push(d.dirBlockStart(k));
      lengths.push(d.dirBlockLength(k));
    }
    let i = from % BLOCK_SIZE;
    for (let bi = Math.floor(from / BLOCK_SIZE); bi < blocks; bi++, i = 0) {
      const s = starts[bi];
      const l = lengths[bi];
      const n = d.direntCount(dir.nid, s, l);
      for (; i < n; i++) {
        const e = newDirentRecord();
        d.dirent(dir.nid, s, l, n, i, e);
        const next = i + 1 < n ? bi * BLOCK_SIZE + i + 1 : (bi + 1) * BLOCK_SIZE;
        if (!fn(e, next)) return;
      }
    }
  }

  name(e: DirEntry): Buffer {
    return this.buf.subarray(e.nameStart, e.nameEnd);
  }
}

/**
 * The digest a metacopy value carries: its 4-byte header (version 0, the
 * value's length, flags 0, the fs-verity algorithm) must agree with the
 * digest's length (32 bytes SHA-256, 64 SHA-512); anything else carries none.
 */
export function metacopyDigest(m: Buffer): Buffer | null {
  if (m.length < 4 || m[0] !== 0 || m[1] !== m.length || m[2] !== 0) return null;
  if (m.length === 4 + 32 && m[3] === 1) return m.subarray(4);
  if (m.length === 4 + 64 && m[3] === 2) return m.subarray(4);
  return null;
}
