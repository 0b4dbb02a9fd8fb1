/** Pass 4: the bytes of inodes, xattrs, directory entries and data blocks. */
import {
  BLOCK_BITS,
  BLOCK_SIZE,
  DIRENT_SIZE,
  direntFileType,
  I_DATALAYOUT_BIT,
  IC,
  IE,
  INODE_COMPACT_SIZE,
  INODE_EXTENDED_SIZE,
  LAYOUT_CHUNK_BASED,
  LAYOUT_FLAT_INLINE,
  LAYOUT_FLAT_PLAIN,
  XATTR_ENTRY_SIZE,
  XATTR_FILTER_DEFAULT,
  XATTR_IBODY_HEADER_SIZE,
  XH,
} from '../format.js';
import { copyBytes, put16, put32, put64, roundUp } from './bytes.js';
import { S_IFBLK, S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from '../../tree/model.js';
import { type WXattr, type WEntry, type WNode, valueLength, writeValue } from './nodes.js';
import { keyInfo } from './xattrs.js';
import { chunkBits, chunkCount, type Layout } from './layout.js';





export class Emitter {
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

export function writeXattrEntry(out: Emitter, x: WXattr): void {
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

export function xattrFilter(node: WNode): number {
  let filter = 0;
  const xattrs = node.xattrs;
  for (let i = 0; i < xattrs.length; i++) filter |= 1 << (xattrs[i].info ?? keyInfo(xattrs[i].key)).filterBit;
  return (XATTR_FILTER_DEFAULT & ~filter) >>> 0;
}

/** Write directory entries children[first..end) as one chunk (block or inline tail). */
export function writeDirents(out: Emitter, entries: WEntry[], first: number, end: number): void {
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
export function direntChunks(node: WNode): Array<[number, number]> {
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

export function writeInode(out: Emitter, node: WNode, layout: Layout, state: { blockCursor: number }): void {
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

export function writeNullChunks(out: Emitter, count: number): void {
  out.buf.fill(0xff, out.pos, out.pos + count * 4);
  out.pos += count * 4;
}

export function writeDataBlocks(out: Emitter, node: WNode): void {
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
