/** Passes 2 and 3: inode order, then where every inode, tail and block goes. */
import {
  BLOCK_BITS,
  BLOCK_SIZE,
  CHUNK_FORMAT_BLKBITS_MASK,
  DIRENT_SIZE,
  INODE_COMPACT_SIZE,
  INODE_EXTENDED_SIZE,
  SLOT_SIZE,
  SUPER_OFFSET,
  SUPER_SIZE,
  XATTR_IBODY_HEADER_SIZE,
} from '../format.js';
import { roundUp } from './bytes.js';
import { S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from '../../tree/model.js';
import { type WXattr, type WNode, K } from './nodes.js';
import { xattrEntrySize, type SharedXattrs } from './xattrs.js';

export interface Order {
  nodes: WNode[];
  minSec: number;
  minNsec: number;
  hasAcl: boolean;
}

export function byKey(a: WXattr, b: WXattr): number {
  return a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
}

export function isSortedByKey(xattrs: WXattr[]): boolean {
  for (let i = 1; i < xattrs.length; i++) if (xattrs[i - 1].key > xattrs[i].key) return false;
  return true;
}

export function computeOrder(root: WNode): Order {
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

export function chunkBits(size: number): number {
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

export const MAX_CHUNK = 2 ** (CHUNK_FORMAT_BLKBITS_MASK + BLOCK_BITS);

/** One chunk covers any file below the largest chunk size; only bigger files need several. */
export function chunkCount(size: number): number {
  return size - 1 < MAX_CHUNK ? 1 : Math.ceil(size / MAX_CHUNK);
}

export function computeDirSize(node: WNode): void {
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

export function computeDataSize(node: WNode): void {
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

export function fitsCompact(node: WNode, order: Order): boolean {
  if (node.mtimeSec !== order.minSec || node.mtimeNsec !== order.minNsec) return false;
  if (node.nlink > 0xffff || node.uid > 0xffff || node.gid > 0xffff) return false;
  const type = node.mode & S_IFMT;
  const size = type === S_IFDIR ? node.nBlocks * BLOCK_SIZE + node.tailSize : node.size;
  return size <= 0xffffffff;
}

export function xattrAreaSize(node: WNode): number {
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
export function tailPadding(node: WNode, pos: number, headerSize: number): number {
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

export interface Layout {
  inodesEnd: number;
  dataStart: number;
  nDataBlocks: number;
}

export function computeLayout(order: Order, shared: SharedXattrs): Layout {
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
