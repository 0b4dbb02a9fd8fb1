/** Pass 3: where every inode, inline tail and data block goes. */
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
import { S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from '../../tree/model.js';
import { roundUp } from './bytes.js';
import type { Plan } from './plan.js';
import { entrySize, type Shared } from './shared.js';

export interface Layout {
  /** Data blocks of each inode (directory blocks, file content, an oversized chunk index or symlink). */
  blocks: Int32Array;
  /** Bytes stored inline after each inode's xattrs. */
  tail: Int32Array;
  compact: Uint8Array;
  /** Zero bytes before each inode. */
  pad: Int32Array;
  xattrSize: Int32Array;
  nid: Float64Array;
  inodesEnd: number;
  dataStart: number;
  dataBlocks: number;
}

export function chunkBits(size: number): number {
  // ilog2(size - 1) + 1, at least one block, at most what the format can express.
  const m = size - 1;
  let bits: number;
  if (m <= 0) bits = 1;
  else if (m < 0x100000000) bits = 32 - Math.clz32(m);
  else bits = 32 - Math.clz32(Math.floor(m / 0x100000000)) + 32;
  if (bits < BLOCK_BITS) bits = BLOCK_BITS;
  if (bits - BLOCK_BITS > CHUNK_FORMAT_BLKBITS_MASK) bits = CHUNK_FORMAT_BLKBITS_MASK + BLOCK_BITS;
  return bits;
}

const MAX_CHUNK = 2 ** (CHUNK_FORMAT_BLKBITS_MASK + BLOCK_BITS);

/** One chunk covers any file below the largest chunk size; only bigger files need several. */
export function chunkCount(size: number): number {
  return size - 1 < MAX_CHUNK ? 1 : Math.ceil(size / MAX_CHUNK);
}

/**
 * Directory entries fill blocks in order; returns the index where each block
 * after the first starts (the last group is the tail, inlined or not).
 */
export function direntBreaks(names: Buffer[]): number[] {
  const breaks: number[] = [];
  let used = 0;
  for (let i = 0; i < names.length; i++) {
    const len = DIRENT_SIZE + names[i].length;
    if (used + len > BLOCK_SIZE) {
      breaks.push(i);
      used = 0;
    }
    used += len;
  }
  return breaks;
}

export function computeLayout(plan: Plan, shared: Shared): Layout {
  const n = plan.count;
  const blocks = new Int32Array(n);
  const tail = new Int32Array(n);
  const compact = new Uint8Array(n);
  const pad = new Int32Array(n);
  const xattrSize = new Int32Array(n);
  const nid = new Float64Array(n);
  let pos = SUPER_OFFSET + SUPER_SIZE;
  const metaStart = Math.floor(pos / BLOCK_SIZE) * BLOCK_SIZE;
  let dataBlocks = 0;
  for (let i = 0; i < n; i++) {
    const mode = plan.mode[i];
    const type = mode & S_IFMT;
    const size = plan.size[i];
    const inode = plan.inodes[i];
    // What the data needs: blocks and an inline tail.
    let nb = 0;
    let t = 0;
    if (type === S_IFDIR) {
      const names = plan.entryNames[i]!;
      let used = 0;
      for (let k = 0; k < names.length; k++) {
        const len = DIRENT_SIZE + names[k].length;
        if (used + len > BLOCK_SIZE) {
          nb++;
          used = 0;
        }
        used += len;
      }
      // Never inline more than half a block of directory entries.
      if (used > BLOCK_SIZE / 2) {
        nb++;
        used = 0;
      }
      t = used;
    } else if (type === S_IFLNK) t = inode.payload ? inode.payload.length : 0;
    else if (type === S_IFREG && size > 0) {
      if (inode.content) {
        nb = Math.floor(size / BLOCK_SIZE);
        t = size % BLOCK_SIZE;
        if (t > BLOCK_SIZE / 2) {
          nb++;
          t = 0;
        }
      } else t = chunkCount(size) * 4;
    }
    // Compact inodes take the superblock's mtime and have 16-bit ids and a 32-bit size.
    const fieldSize = type === S_IFDIR ? nb * BLOCK_SIZE + t : size;
    const small =
      inode.mtimeSec === plan.minSec &&
      inode.mtimeNsec === plan.minNsec &&
      plan.nlink[i] <= 0xffff &&
      inode.uid <= 0xffff &&
      inode.gid <= 0xffff &&
      fieldSize <= 0xffffffff;
    compact[i] = small ? 1 : 0;
    const header = small ? INODE_COMPACT_SIZE : INODE_EXTENDED_SIZE;
    // Xattrs: the header, a 4-byte id per shared one, the inline ones.
    let xs = 0;
    const from = plan.xattrStart[i];
    const to = plan.xattrStart[i + 1];
    if (to > from) {
      xs = XATTR_IBODY_HEADER_SIZE;
      for (let k = from; k < to; k++) xs += shared.offset[k] >= 0 ? 4 : entrySize(plan, k);
      xs = roundUp(xs, 4);
    }
    xattrSize[i] = xs;
    const aligned = roundUp(pos, SLOT_SIZE);
    let p = aligned - pos;
    pos = aligned;
    // The inline tail must not cross a block boundary.
    const nonTail = header + xs;
    let extra = 0;
    if (type === S_IFLNK) {
      // The kernel wants the inode and an inline symlink target in one block;
      // a target that cannot fit beside its inode goes to a data block.
      const total = nonTail + t;
      if (total >= BLOCK_SIZE) {
        nb++;
        t = 0;
      }
      if (Math.floor(pos / BLOCK_SIZE) !== Math.floor((pos + total - 1) / BLOCK_SIZE)) extra = roundUp(pos, BLOCK_SIZE) - pos;
    } else {
      let remainder = BLOCK_SIZE - ((pos + nonTail) % BLOCK_SIZE);
      if (remainder < t) {
        const slotPad = roundUp(remainder, SLOT_SIZE);
        remainder = BLOCK_SIZE - ((pos + nonTail + slotPad) % BLOCK_SIZE);
        if (t <= remainder) extra = slotPad;
        else {
          // It cannot be inlined: the tail moves to a block of its own and the inode to a fresh block.
          nb++;
          t = 0;
          extra = roundUp(pos, BLOCK_SIZE) - pos;
        }
      }
    }
    p += extra;
    pos += extra;
    pad[i] = p;
    blocks[i] = nb;
    tail[i] = t;
    dataBlocks += nb;
    nid[i] = (pos - metaStart) / SLOT_SIZE;
    pos += nonTail + t;
  }
  const inodesEnd = roundUp(pos, SLOT_SIZE);
  const dataStart = roundUp(inodesEnd + shared.size, BLOCK_SIZE);
  return { blocks, tail, compact, pad, xattrSize, nid, inodesEnd, dataStart, dataBlocks };
}
