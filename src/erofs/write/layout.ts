/**
 * Pass 3: where every inode, inline tail and data block goes: one loop over
 * the inodes, storing what the emitter needs in typed arrays.
 */
import { Erofs, Mode } from './consts.js';
import { Kind, type Plan } from './plan.js';
import type { Shared } from './shared.js';
import { Key } from './keys.js';
import { ImageWriteError } from './errors.js';

export interface Layout {
  /** Inode numbers in the image: byte offset / 32. */
  nid: Uint32Array;
  /** The header's size and nlink fields. */
  size: Float64Array;
  nlink: Uint32Array;
  /** Per inode: Flag bits. */
  flags: Uint8Array;
  /** Bytes stored inline after the inode's xattrs. */
  tail: Int32Array;
  /** Data blocks, and the first one's index from the data start. */
  blocks: Int32Array;
  firstBlock: Int32Array;
  /** The union field before any block address: the chunk format, or the device number. */
  union: Uint32Array;
  /** The xattr area: its size (0 without xattrs), name filter bits and count of shared ids. */
  xattrSize: Int32Array;
  xattrFilter: Int32Array;
  sharedIds: Uint8Array;
  /** Per xattr: its offset in the shared area, or -1 when stored inline. */
  offset: Int32Array;
  /** Directory inodes, in order; for each, its first entry not in a block. */
  dirs: Int32Array;
  dirCount: number;
  tailFrom: Int32Array;
  /** Inodes with data blocks, in order. */
  blockOwners: Int32Array;
  blockOwnerCount: number;
  inodesEnd: number;
  dataStart: number;
  dataBlocks: number;
}

export const enum Flag {
  /** A 32-byte inode (the superblock's mtime, 16-bit ids and nlink, 32-bit size). */
  COMPACT = 1,
  /** A regular file of chunks (its data lives in the store). */
  CHUNKED = 2,
}

const enum Chunk {
  /** The largest chunk: 2^(12 + 31) bytes. */
  MAX = 2 ** 43,
}

/** Positions are small integers (checked), so rounding them is bit arithmetic. */
const enum Limit {
  /** The inode table may not reach 2^31 bytes. */
  TABLE = 0x7fffffff - 2 * Erofs.BLOCK_SIZE,
}

/**
 * Directory inode i's data: its entries fill blocks in order, and what is
 * left over is the tail. Sets `blocks[i]` and `tailFrom[i]`; returns the
 * tail's size. Called once per directory, so V8 optimises it early.
 */
function directorySize(plan: Plan, i: number, blocks: Int32Array, tailFrom: Int32Array): number {
  const direntLength = plan.direntLength;
  const end = plan.direntEnd[i];
  let used = 0;
  let nb = 0;
  let last = plan.direntStart[i];
  for (let d = last; d < end; d++) {
    const len = Erofs.DIRENT_SIZE + direntLength[d];
    if (used + len > Erofs.BLOCK_SIZE) {
      nb++;
      used = 0;
      last = d;
    }
    used += len;
  }
  tailFrom[i] = last;
  // Never inline more than half a block of directory entries.
  if (used > Erofs.BLOCK_SIZE / 2) {
    blocks[i] = nb + 1;
    return 0;
  }
  blocks[i] = nb;
  return used;
}

/** The chunk size's bits over the block's for a file of `size` (> 0) bytes: ilog2(size - 1) + 1 - 12, at least 0, at most 31. */
function chunkBits(size: number): number {
  const bits = size <= 0x100000000 ? 20 - Math.clz32(size - 1) : 52 - Math.clz32(Math.floor((size - 1) / 0x100000000));
  return bits < 0 ? 0 : bits > Erofs.CHUNK_BITS_MAX ? Erofs.CHUNK_BITS_MAX : bits;
}

/**
 * Each inode in turn: what its header, data and xattr area need, then its
 * place: on a 32-byte slot, with its inline tail in the same block (or moved
 * to a block of its own). Returns the end of the inode table.
 *
 * The xattr area: which xattrs are shared ids (at most 128, the first ones),
 * and its size (a header, 4 bytes per id, the inline entries) and name filter.
 */
function place(plan: Plan, shared: Shared, l: Layout): number {
  const flat = plan.flat;
  const { mode, kind, entry, dirNlink, xattrStart, xattrKey, xattrLength } = plan;
  const { filterMask, suffixLength } = plan.keys;
  const { leader, users, areaOffset } = shared;
  const { nid, flags, tail, blocks, firstBlock, union, size: sizes, nlink: nlinks, xattrSize, xattrFilter, sharedIds, offset, dirs, tailFrom, blockOwners } = l;
  const fsize = flat.size;
  const fnlink = flat.nlink;
  const mtimeSec = flat.mtimeSec;
  const mtimeNsec = flat.mtimeNsec;
  const uid = flat.uid;
  const gid = flat.gid;
  const payloadStart = flat.payloadStart;
  const payloadEnd = flat.payloadEnd;
  const contentStart = flat.contentStart;
  const minSec = plan.minSec;
  const minNsec = plan.minNsec;
  let pos = Erofs.META_START as number;
  let dataBlocks = 0;
  let owners = 0;
  let dirCount = 0;
  let from = 0;
  for (let i = 0; i < plan.count; i++) {
    const type = mode[i] & Mode.TYPE;
    const e = entry[i];
    let size: number;
    let nlink: number;
    let f = 0;
    let nb = 0;
    let t = 0;
    if (type === Mode.DIR) {
      t = directorySize(plan, i, blocks, tailFrom);
      nb = blocks[i];
      size = nb * Erofs.BLOCK_SIZE + t;
      nlink = dirNlink[i];
      dirs[dirCount++] = i;
    } else {
      // Stubs and whiteouts are empty.
      const k = kind[i];
      size = k === Kind.PLAIN ? fsize[e] : 0;
      nlink = k === Kind.STUB ? 1 : fnlink[e];
      if (type === Mode.REG) {
        if (size > 0) {
          if (contentStart[e] < 0) {
            f = Flag.CHUNKED;
            union[i] = chunkBits(size);
            // One chunk covers any file below the largest chunk size; only bigger files need several.
            t = size <= Chunk.MAX ? 4 : Math.ceil(size / Chunk.MAX) * 4;
          } else {
            nb = Math.floor(size / Erofs.BLOCK_SIZE);
            t = size - nb * Erofs.BLOCK_SIZE;
            // Never inline more than half a block of content.
            if (t > Erofs.BLOCK_SIZE / 2) {
              nb++;
              t = 0;
            }
          }
        }
      } else if (type === Mode.LNK) {
        const ps = payloadStart[e];
        if (ps >= 0) t = payloadEnd[e] - ps;
      } else if ((type === Mode.CHR || type === Mode.BLK) && k !== Kind.STUB) union[i] = flat.rdev[e];
    }
    // Compact inodes take the superblock's mtime and have 16-bit ids and a 32-bit size.
    const compact = mtimeSec[e] === minSec && mtimeNsec[e] === minNsec && nlink <= 0xffff && uid[e] <= 0xffff && gid[e] <= 0xffff && size <= 0xffffffff;
    nlinks[i] = nlink;
    if (compact) f |= Flag.COMPACT;
    flags[i] = f;

    let xs = 0;
    const to = xattrStart[i + 1];
    if (to > from) {
      xs = Erofs.XATTR_HEADER_SIZE;
      let filter = 0;
      let ids = 0;
      for (let x = from; x < to; x++) {
        const key = xattrKey[x];
        filter |= filterMask[key];
        const p = leader[x];
        if (users[p] > 1 && ids < Erofs.MAX_SHARED) {
          offset[x] = areaOffset[p];
          ids++;
          xs += 4;
        } else {
          offset[x] = -1;
          // The entry: header, name suffix, value (valueLength(), inlined), padded to 4.
          const length = xattrLength[x];
          xs += (Erofs.XATTR_ENTRY_SIZE + 3 + suffixLength[key] + length + (key > Key.REDIRECT ? 0 : key === Key.REDIRECT ? 1 : length > 0 ? 4 : 0)) & ~3;
        }
      }
      xattrSize[i] = xs;
      xattrFilter[i] = filter;
      sharedIds[i] = ids;
      from = to;
    }

    const nonTail = (compact ? Erofs.COMPACT_SIZE : Erofs.EXTENDED_SIZE) + xs;
    pos = (pos + Erofs.SLOT_SIZE - 1) & -Erofs.SLOT_SIZE;
    if (type === Mode.LNK) {
      // The kernel wants the inode and an inline symlink target in one block;
      // a target that cannot fit beside its inode goes to a data block.
      const all = nonTail + t;
      if (all >= Erofs.BLOCK_SIZE) {
        nb = 1;
        t = 0;
      }
      if ((pos & -Erofs.BLOCK_SIZE) !== ((pos + all - 1) & -Erofs.BLOCK_SIZE)) pos = (pos + Erofs.BLOCK_SIZE - 1) & -Erofs.BLOCK_SIZE;
      if (nb === 0) size = t;
    } else if (t > 0) {
      let remainder = Erofs.BLOCK_SIZE - ((pos + nonTail) & (Erofs.BLOCK_SIZE - 1));
      if (remainder < t) {
        const slotPad = (remainder + Erofs.SLOT_SIZE - 1) & -Erofs.SLOT_SIZE;
        remainder = Erofs.BLOCK_SIZE - ((pos + nonTail + slotPad) & (Erofs.BLOCK_SIZE - 1));
        if (t <= remainder) pos += slotPad;
        else {
          // It cannot be inlined: the tail moves to a block of its own and the inode to a fresh block.
          nb++;
          t = 0;
          pos = (pos + Erofs.BLOCK_SIZE - 1) & -Erofs.BLOCK_SIZE;
          if (type === Mode.DIR) size = nb * Erofs.BLOCK_SIZE;
        }
      }
    }
    if (pos > Limit.TABLE) throw new ImageWriteError('the inode table would exceed 2 GiB');
    nid[i] = pos >> 5;
    sizes[i] = size;
    if (t > 0) tail[i] = t;
    if (nb > 0) {
      blocks[i] = nb;
      firstBlock[i] = dataBlocks;
      dataBlocks += nb;
      blockOwners[owners++] = i;
    }
    pos += nonTail + t;
  }
  l.dirCount = dirCount;
  l.blockOwnerCount = owners;
  l.dataBlocks = dataBlocks;
  return (pos + Erofs.SLOT_SIZE - 1) & -Erofs.SLOT_SIZE;
}

export function computeLayout(plan: Plan, shared: Shared): Layout {
  const n = plan.count;
  const l: Layout = {
    nid: new Uint32Array(n),
    size: new Float64Array(n),
    nlink: new Uint32Array(n),
    flags: new Uint8Array(n),
    tail: new Int32Array(n),
    blocks: new Int32Array(n),
    firstBlock: new Int32Array(n),
    union: new Uint32Array(n),
    xattrSize: new Int32Array(n),
    xattrFilter: new Int32Array(n),
    sharedIds: new Uint8Array(n),
    offset: new Int32Array(plan.xattrStart[n]),
    dirs: new Int32Array(n),
    dirCount: 0,
    tailFrom: new Int32Array(n),
    blockOwners: new Int32Array(n),
    blockOwnerCount: 0,
    inodesEnd: 0,
    dataStart: 0,
    dataBlocks: 0,
  };
  l.inodesEnd = place(plan, shared, l);
  l.dataStart = Math.ceil((l.inodesEnd + shared.size) / Erofs.BLOCK_SIZE) * Erofs.BLOCK_SIZE;
  return l;
}
