/** Pass 4: the bytes of inodes, xattrs, directory entries and data blocks, into a zeroed buffer of the final size. */
import {
  BLOCK_BITS,
  BLOCK_SIZE,
  DIRENT_SIZE,
  I_DATALAYOUT_BIT,
  IC,
  IE,
  INODE_COMPACT_SIZE,
  INODE_EXTENDED_SIZE,
  LAYOUT_CHUNK_BASED,
  LAYOUT_FLAT_INLINE,
  LAYOUT_FLAT_PLAIN,
  SLOT_SIZE,
  SUPER_OFFSET,
  SUPER_SIZE,
  XATTR_ENTRY_SIZE,
  XATTR_FILTER_DEFAULT,
  XATTR_IBODY_HEADER_SIZE,
  XH,
  direntFileType,
} from '../format.js';
import { S_IFBLK, S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from '../../tree/model.js';
import { copyBytes, put16, put32, put64, roundUp } from './bytes.js';
import { ImageWriteError, type Plan } from './plan.js';
import { valueLength, writeValue, type Shared } from './shared.js';
import { chunkBits, chunkCount, direntBreaks, type Layout } from './layout.js';

function writeXattr(b: Uint8Array, pos: number, plan: Plan, k: number): number {
  const key = plan.xattrKey[k];
  const suffix = plan.keys.suffix[key];
  const kind = plan.xattrKind[k];
  const data = plan.xattrData[k];
  const vlen = valueLength(kind, data);
  b[pos] = suffix.length;
  b[pos + 1] = plan.keys.index[key];
  put16(b, pos + 2, vlen);
  copyBytes(b, pos + XATTR_ENTRY_SIZE, suffix, 0, suffix.length);
  writeValue(b, pos + XATTR_ENTRY_SIZE + suffix.length, kind, data);
  return roundUp(pos + XATTR_ENTRY_SIZE + suffix.length + vlen, 4);
}

/** Entries [first, end) of a directory as one chunk: the dirents, then the names. */
function writeDirents(b: Uint8Array, pos: number, plan: Plan, layout: Layout, dir: number, first: number, end: number): number {
  const names = plan.entryNames[dir]!;
  const targets = plan.entryTargets[dir]!;
  let nameoff = (end - first) * DIRENT_SIZE;
  let p = pos;
  for (let k = first; k < end; k++) {
    const t = targets[k];
    put64(b, p, layout.nid[t]);
    put16(b, p + 8, nameoff);
    b[p + 10] = direntFileType(plan.mode[t]);
    p += DIRENT_SIZE;
    nameoff += names[k].length;
  }
  for (let k = first; k < end; k++) {
    copyBytes(b, p, names[k], 0, names[k].length);
    p += names[k].length;
  }
  return p;
}

/** Fill `image` (zeroed, of the layout's size) from the superblock's end on. */
export function emitImage(image: Buffer, plan: Plan, shared: Shared, layout: Layout): void {
  const b = image;
  let pos = SUPER_OFFSET + SUPER_SIZE;
  let blockCursor = layout.dataStart;
  const sharedBase = layout.inodesEnd % BLOCK_SIZE;
  for (let i = 0; i < plan.count; i++) {
    pos += layout.pad[i];
    const p = pos;
    const inode = plan.inodes[i];
    const mode = plan.mode[i];
    const type = mode & S_IFMT;
    const size = plan.size[i];
    const nb = layout.blocks[i];
    const tail = layout.tail[i];
    const xs = layout.xattrSize[i];
    const icount = xs === 0 ? 0 : (xs - XATTR_IBODY_HEADER_SIZE) / 4 + 1;
    let dataLayout = tail > 0 ? LAYOUT_FLAT_INLINE : LAYOUT_FLAT_PLAIN;
    let fieldSize = 0;
    let chunks = 0;
    let chunkFormat = 0;
    if (type === S_IFDIR) fieldSize = nb * BLOCK_SIZE + tail;
    else if (type === S_IFLNK) fieldSize = nb === 0 ? tail : size;
    else if (type === S_IFREG) {
      fieldSize = size;
      if (size > 0 && inode.content === null) {
        dataLayout = LAYOUT_CHUNK_BASED;
        chunks = chunkCount(size);
        chunkFormat = chunkBits(size) - BLOCK_BITS;
      }
    }
    const compact = layout.compact[i] === 1;
    const format = (dataLayout << I_DATALAYOUT_BIT) | (compact ? 0 : 1);
    let u = 0;
    if ((type === S_IFDIR || type === S_IFREG || type === S_IFLNK) && nb > 0) {
      u = blockCursor / BLOCK_SIZE;
      blockCursor += nb * BLOCK_SIZE;
    } else if (type === S_IFCHR || type === S_IFBLK) u = inode.rdev >>> 0;
    // The chunk format shares the union with the block address: it replaces only the low 16 bits.
    if (dataLayout === LAYOUT_CHUNK_BASED) u = ((u & 0xffff0000) | chunkFormat) >>> 0;
    const nlink = plan.nlink[i];
    if (compact) {
      put16(b, p + IC.format, format);
      put16(b, p + IC.xattrIcount, icount);
      put16(b, p + IC.mode, mode & 0xffff);
      put16(b, p + IC.nlink, nlink);
      put32(b, p + IC.size, fieldSize);
      put32(b, p + IC.u, u);
      put32(b, p + IC.ino, i);
      put16(b, p + IC.uid, inode.uid);
      put16(b, p + IC.gid, inode.gid);
      pos += INODE_COMPACT_SIZE;
    } else {
      put16(b, p + IE.format, format);
      put16(b, p + IE.xattrIcount, icount);
      put16(b, p + IE.mode, mode & 0xffff);
      put64(b, p + IE.size, fieldSize);
      put32(b, p + IE.u, u);
      put32(b, p + IE.ino, i);
      put32(b, p + IE.uid, inode.uid >>> 0);
      put32(b, p + IE.gid, inode.gid >>> 0);
      put64(b, p + IE.mtime, inode.mtimeSec);
      put32(b, p + IE.mtimeNsec, inode.mtimeNsec >>> 0);
      put32(b, p + IE.nlink, nlink >>> 0);
      pos += INODE_EXTENDED_SIZE;
    }
    if (xs > 0) {
      const from = plan.xattrStart[i];
      const to = plan.xattrStart[i + 1];
      let filter = 0;
      let nShared = 0;
      for (let k = from; k < to; k++) {
        filter |= 1 << plan.keys.filterBit[plan.xattrKey[k]];
        if (shared.offset[k] >= 0) nShared++;
      }
      put32(b, pos + XH.nameFilter, (XATTR_FILTER_DEFAULT & ~filter) >>> 0);
      b[pos + XH.sharedCount] = nShared;
      pos += XATTR_IBODY_HEADER_SIZE;
      for (let k = from; k < to; k++) {
        if (shared.offset[k] < 0) continue;
        put32(b, pos, (sharedBase + shared.offset[k]) / 4);
        pos += 4;
      }
      for (let k = from; k < to; k++) if (shared.offset[k] < 0) pos = writeXattr(b, pos, plan, k);
    }
    if (tail > 0) {
      if (type === S_IFDIR) {
        const names = plan.entryNames[i]!;
        const breaks = direntBreaks(names);
        pos = writeDirents(b, pos, plan, layout, i, breaks.length > 0 ? breaks[breaks.length - 1] : 0, names.length);
      } else if (type === S_IFLNK) {
        copyBytes(b, pos, inode.payload!, 0, tail);
        pos += tail;
      } else if (type === S_IFREG) {
        if (inode.content) copyBytes(b, pos, inode.content, size - tail, size);
        else b.fill(0xff, pos, pos + chunks * 4); // null chunk indexes
        pos += tail;
      }
    }
  }
  pos = roundUp(pos, SLOT_SIZE);
  if (pos !== layout.inodesEnd) throw new ImageWriteError(`internal layout mismatch at inode table end (${pos} != ${layout.inodesEnd})`);
  for (const k of shared.list) pos = writeXattr(b, pos, plan, k);
  pos = roundUp(pos, BLOCK_SIZE);
  if (pos !== layout.dataStart) throw new ImageWriteError('internal layout mismatch at data start');
  for (let i = 0; i < plan.count; i++) {
    const nb = layout.blocks[i];
    if (nb === 0) continue;
    const type = plan.mode[i] & S_IFMT;
    const inode = plan.inodes[i];
    if (type === S_IFDIR) {
      const names = plan.entryNames[i]!;
      const breaks = direntBreaks(names);
      const starts = [0, ...breaks];
      // With an inline tail, the last group is not in a block.
      const inBlocks = layout.tail[i] > 0 ? starts.length - 1 : starts.length;
      for (let g = 0; g < inBlocks; g++) {
        const end = g + 1 < starts.length ? starts[g + 1] : names.length;
        writeDirents(b, pos, plan, layout, i, starts[g], end);
        pos += BLOCK_SIZE;
      }
    } else if (type === S_IFREG && !inode.content) {
      // A chunk index too large to inline fills one block of null chunks.
      b.fill(0xff, pos, pos + BLOCK_SIZE);
      pos += BLOCK_SIZE;
    } else if (type === S_IFREG || type === S_IFLNK) {
      const data = type === S_IFREG ? inode.content! : inode.payload!;
      const n = Math.min(plan.size[i], nb * BLOCK_SIZE);
      copyBytes(b, pos, data, 0, n);
      pos = roundUp(pos + n, BLOCK_SIZE);
    }
  }
  if (pos !== image.length) throw new ImageWriteError(`internal layout mismatch at image end (${pos} != ${image.length})`);
}
