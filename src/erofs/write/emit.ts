/**
 * Pass 4: the image's bytes after the superblock, into a zeroed buffer of the
 * final size: one loop over the inodes for their headers, xattr areas and
 * inline file data, then the shared xattr area, the directory entries
 * (inline and in blocks) and the other data blocks. Fields are stored as
 * aligned 16- and 32-bit words (bytes.ts), byte strings copied from the pool.
 */
import { direntFileType } from '../format.js';
import { Erofs, Mode } from './consts.js';
import { copyBytes, words, type Words } from './bytes.js';
import { ImageWriteError, SYNTH, badNameMessage, type Plan } from './plan.js';
import { writeXattr, type Shared } from './shared.js';
import { Key } from './keys.js';
import { Flag, type Layout } from './layout.js';

/** Directory-entry file type by `(mode >> 12) & 15`: a table lookup instead of a call per entry. */
const FILE_TYPE = Uint8Array.from({ length: 16 }, (_, t) => direntFileType(t << 12));

/**
 * Each inode: its header (fields as IC and IE in format.ts; inodes sit on
 * 32-byte slots, so every field is aligned), its xattr area, and what
 * follows for a file or symlink (its last bytes, its target or its chunk
 * index; a directory's entries come later).
 */
function writeInodes(out: Words, plan: Plan, l: Layout): void {
  const { b, u16, u32 } = out;
  const flat = plan.flat;
  const pool = flat.pool;
  const { mode, entry, xattrStart } = plan;
  const { nid, flags, tail, blocks, firstBlock, union, size: sizes, nlink: nlinks, xattrSize } = l;
  const uid = flat.uid;
  const gid = flat.gid;
  const { xattrKey, xattrLength, xattrFrom } = plan;
  const { offset, xattrFilter, sharedIds } = l;
  const firstDataBlock = l.dataStart / Erofs.BLOCK_SIZE;
  const sharedBase = l.inodesEnd & (Erofs.BLOCK_SIZE - 1);
  // trusted.overlay.redirect, on nearly every file: its entry header and name suffix (16 bytes), as words.
  const keys = plan.keys;
  const redirectHead = keys.suffixLength[Key.REDIRECT] | (keys.prefixIndex[Key.REDIRECT] << 8);
  const rs = keys.suffixStart[Key.REDIRECT];
  const r0 = keys.suffixWords[rs];
  const r1 = keys.suffixWords[rs + 1];
  const r2 = keys.suffixWords[rs + 2];
  const r3 = keys.suffixWords[rs + 3];
  const poolBuffer = pool.buffer;
  const poolOffset = pool.byteOffset;
  let from = 0;
  for (let i = 0; i < plan.count; i++) {
    const m = mode[i];
    const e = entry[i];
    const f = flags[i];
    const t = tail[i];
    const nb = blocks[i];
    const xs = xattrSize[i];
    const size = sizes[i];
    let u = union[i];
    if (nb > 0) {
      const address = firstDataBlock + firstBlock[i];
      // A chunk index moved to a block keeps its chunk format in the low 16 bits.
      u = (f & Flag.CHUNKED) !== 0 ? (address & 0xffff0000) | u : address;
    }
    const dataLayout = (f & Flag.CHUNKED) !== 0 ? Erofs.LAYOUT_CHUNK_BASED : t > 0 ? Erofs.LAYOUT_FLAT_INLINE : Erofs.LAYOUT_FLAT_PLAIN;
    const w = nid[i] * (Erofs.SLOT_SIZE / 4);
    // xattr_icount: the xattr area in 4-byte units past its 12-byte header, plus one.
    const icount = xs === 0 ? 0 : ((xs - Erofs.XATTR_HEADER_SIZE) >> 2) + 1;
    u32[w + 4] = u;
    u32[w + 5] = i;
    let at: number;
    if ((f & Flag.COMPACT) !== 0) {
      u32[w] = (dataLayout << Erofs.DATALAYOUT_BIT) | (icount << 16);
      u32[w + 1] = (m & 0xffff) | (nlinks[i] << 16);
      u32[w + 2] = size;
      u32[w + 6] = uid[e] | (gid[e] << 16);
      at = 4 * w + Erofs.COMPACT_SIZE;
    } else {
      const sec = flat.mtimeSec[e];
      u32[w] = (dataLayout << Erofs.DATALAYOUT_BIT) | 1 | (icount << 16);
      u16[2 * w + 2] = m;
      u32[w + 2] = size;
      u32[w + 3] = Math.floor(size / 0x100000000);
      u32[w + 6] = uid[e];
      u32[w + 7] = gid[e];
      u32[w + 8] = sec;
      u32[w + 9] = Math.floor(sec / 0x100000000);
      u32[w + 10] = flat.mtimeNsec[e];
      u32[w + 11] = nlinks[i];
      at = 4 * w + Erofs.EXTENDED_SIZE;
    }
    if (xs > 0) {
      // The xattr area: name filter and count, the shared ids, the other entries.
      const to = xattrStart[i + 1];
      const ids = sharedIds[i];
      u32[at >> 2] = ~xattrFilter[i];
      b[at + 4] = ids;
      let id = (at + Erofs.XATTR_HEADER_SIZE) >> 2;
      let p = at + Erofs.XATTR_HEADER_SIZE + 4 * ids;
      for (let x = from; x < to; x++) {
        const o = offset[x];
        if (o >= 0) u32[id++] = (sharedBase + o) >> 2;
        else if (xattrKey[x] === Key.REDIRECT) {
          const length = xattrLength[x];
          const v = p >> 2;
          u32[v] = redirectHead | ((length + 1) << 16);
          u32[v + 1] = r0;
          u32[v + 2] = r1;
          u32[v + 3] = r2;
          u32[v + 4] = r3;
          b[p + 20] = 0x2f; // '/'
          b.set(new Uint8Array(poolBuffer, poolOffset + xattrFrom[x], length), p + 21);
          p = (p + 21 + length + 3) & ~3;
        } else p = writeXattr(out, p, plan, x);
      }
      from = to;
      at += xs;
    }
    if (t > 0 && (m & Mode.TYPE) !== Mode.DIR) {
      if ((f & Flag.CHUNKED) !== 0) {
        // Null chunk indexes: the data lives in the store.
        for (let k = 0; k < t; k += 4) u32[(at + k) >> 2] = 0xffffffff;
      } else if ((m & Mode.TYPE) === Mode.LNK) copyBytes(b, at, pool, flat.payloadStart[e], t);
      else copyBytes(b, at, pool, flat.contentStart[e] + size - t, t);
    }
  }
}

/**
 * Entries [first, end) of a directory as one chunk at pos (4-aligned): the
 * dirents, then the names. Names are checked for `/` and NUL as they are
 * copied rather than in a pass of their own; returns whether one had any.
 */
function writeDirents(out: Words, pos: number, plan: Plan, nid: Uint32Array, first: number, end: number): boolean {
  const { b, u32 } = out;
  const target = plan.direntTarget;
  const length = plan.direntLength;
  const name = plan.direntName;
  const mode = plan.mode;
  let nameoff = (end - first) * Erofs.DIRENT_SIZE;
  let w = pos >> 2;
  // nid < 2^32: the high half of the 64-bit field stays zero.
  for (let d = first; d < end; d++) {
    const t = target[d];
    u32[w] = nid[t];
    u32[w + 2] = nameoff | (FILE_TYPE[(mode[t] >>> 12) & 15] << 16);
    w += Erofs.DIRENT_SIZE / 4;
    nameoff += length[d];
  }
  const pool = plan.flat.pool;
  let p = w << 2;
  let bad = false;
  for (let d = first; d < end; d++) {
    const s = name[d];
    const n = length[d];
    if (s >= 0) {
      for (let i = 0; i < n; i++) {
        const c = pool[s + i];
        if (c === 0x2f || c === 0) bad = true;
        b[p + i] = c;
      }
    } else for (let i = 0; i < n; i++) b[p + i] = SYNTH[~s + i];
    p += n;
  }
  return bad;
}

/** Each directory's entries: those that fill blocks, in its blocks; the rest inline after its xattrs. */
function writeDirectories(out: Words, plan: Plan, l: Layout): boolean {
  const { nid, flags, dirs, tail, blocks, firstBlock, tailFrom, xattrSize } = l;
  const { direntStart, direntEnd } = plan;
  const direntLength = plan.direntLength;
  let bad = false;
  for (let k = 0; k < l.dirCount; k++) {
    const i = dirs[k];
    const inline = tail[i] > 0;
    if (inline) {
      const at = nid[i] * Erofs.SLOT_SIZE + ((flags[i] & Flag.COMPACT) !== 0 ? Erofs.COMPACT_SIZE : Erofs.EXTENDED_SIZE) + xattrSize[i];
      if (writeDirents(out, at, plan, nid, tailFrom[i], direntEnd[i])) bad = true;
    }
    if (blocks[i] === 0) continue;
    const end = inline ? tailFrom[i] : direntEnd[i];
    let first = direntStart[i];
    let used = 0;
    let at = l.dataStart + firstBlock[i] * Erofs.BLOCK_SIZE;
    for (let d = first; d < end; d++) {
      const len = Erofs.DIRENT_SIZE + direntLength[d];
      if (used + len > Erofs.BLOCK_SIZE) {
        if (writeDirents(out, at, plan, nid, first, d)) bad = true;
        at += Erofs.BLOCK_SIZE;
        first = d;
        used = 0;
      }
      used += len;
    }
    if (end > first && writeDirents(out, at, plan, nid, first, end)) bad = true;
  }
  return bad;
}

/** Fill `image` (zeroed, of the layout's size, owning its ArrayBuffer from offset 0) from the superblock's end on. */
export function emitImage(image: Buffer, plan: Plan, shared: Shared, l: Layout): void {
  // A plain Uint8Array: the helpers see one kind of array.
  const out = words(new Uint8Array(image.buffer, image.byteOffset, image.length));
  const flat = plan.flat;
  writeInodes(out, plan, l);
  let pos = l.inodesEnd;
  for (let k = 0; k < shared.list.length; k++) pos = writeXattr(out, pos, plan, shared.list[k]);
  if (pos !== l.inodesEnd + shared.size) throw new ImageWriteError(`internal layout mismatch in the shared xattrs (${pos} != ${l.inodesEnd + shared.size})`);
  const badName = writeDirectories(out, plan, l);
  // The other data blocks: inline content or a symlink target too big to inline, or a chunk index.
  for (let k = 0; k < l.blockOwnerCount; k++) {
    const i = l.blockOwners[k];
    const type = plan.mode[i] & Mode.TYPE;
    if (type === Mode.DIR) continue;
    const e = plan.entry[i];
    const at = l.dataStart + l.firstBlock[i] * Erofs.BLOCK_SIZE;
    if ((l.flags[i] & Flag.CHUNKED) !== 0) out.b.fill(0xff, at, at + Erofs.BLOCK_SIZE);
    else {
      const from = type === Mode.REG ? flat.contentStart[e] : flat.payloadStart[e];
      const have = (type === Mode.REG ? flat.contentEnd[e] : flat.payloadEnd[e]) - from;
      copyBytes(out.b, at, flat.pool, from, Math.min(flat.size[e], l.blocks[i] * Erofs.BLOCK_SIZE, have));
    }
  }
  if (l.dataStart + l.dataBlocks * Erofs.BLOCK_SIZE !== image.length) throw new ImageWriteError('internal layout mismatch at image end');
  if (badName) throw new ImageWriteError(badNameMessage(flat) ?? 'invalid file name');
}
