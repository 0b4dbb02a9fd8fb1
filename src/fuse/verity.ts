/**
 * fs-verity in userspace for `-o verity` under FUSE: what the kernel's
 * fs-verity does for an overlay with verity=require, on kernels (or file
 * systems) without it and without root.
 *
 * Before an object is served its whole content is hashed into the first
 * level of its Merkle tree (one SHA-256 per 4 KiB block, kept: 32 bytes per
 * block, 0.8 % of the data) and the fs-verity digest computed from those
 * leaves must equal the digest the image records. From then on every block
 * read for the kernel is hashed again and compared with its leaf, so a
 * change to the object after the check gives EIO, never other bytes.
 */
import { readSync } from 'node:fs';
import crypto from 'node:crypto';
import { addressOf, rawSha256, type RawSha256 } from '../fsverity/sha256.js';

export const BLOCK = 4096;
const HASH = 32;

let native: RawSha256 | null | undefined;
const padBlock = Buffer.allocUnsafeSlow(BLOCK);
const scratchHash = Buffer.allocUnsafeSlow(HASH);

/** SHA-256 of data[start, start+len) (zero-padded to a block when `pad`) into out[outOff]. */
function hashBlock(data: Buffer, start: number, len: number, out: Buffer, outOff: number): void {
  let src = data;
  let s = start;
  let n = len;
  if (len < BLOCK) {
    padBlock.fill(0);
    data.copy(padBlock, 0, start, start + len);
    src = padBlock;
    s = 0;
    n = BLOCK;
  }
  if (native === undefined) native = rawSha256();
  if (native) {
    native(addressOf(src) + s, n, addressOf(out) + outOff);
    return;
  }
  crypto.createHash('sha256').update(src.subarray(s, s + n)).digest().copy(out, outOff);
}

function sha256(data: Buffer): Buffer {
  return crypto.createHash('sha256').update(data).digest();
}

/** The fs-verity digest (SHA-256, 4 KiB blocks, no salt) of a file of `size` bytes whose level-0 hashes are `leaves`. */
export function digestFromLeaves(leaves: Buffer, size: number): Buffer {
  const root = Buffer.alloc(HASH);
  if (size > 0) {
    let level = leaves;
    while (level.length > HASH) {
      const blocks = Math.ceil(level.length / BLOCK);
      const up = Buffer.allocUnsafeSlow(blocks * HASH);
      for (let i = 0; i < blocks; i++) hashBlock(level, i * BLOCK, Math.min(BLOCK, level.length - i * BLOCK), up, i * HASH);
      level = up;
    }
    level.copy(root, 0, 0, HASH);
  }
  const desc = Buffer.alloc(256);
  desc[0] = 1; // version
  desc[1] = 1; // SHA-256
  desc[2] = 12; // log2(block size)
  desc.writeUInt32LE(size % 0x100000000, 8);
  desc.writeUInt32LE(Math.floor(size / 0x100000000), 12);
  root.copy(desc, 16);
  return sha256(desc);
}

const chunk = Buffer.allocUnsafeSlow(1 << 20);

/** Hash a whole open file: its leaves and digest. Reads `size` bytes (a shorter file is an error for the caller to report). */
export function measureSync(fd: number, size: number): { leaves: Buffer; digest: Buffer; read: number } {
  const blocks = Math.ceil(size / BLOCK);
  const leaves = Buffer.allocUnsafeSlow(blocks * HASH);
  let pos = 0;
  while (pos < size) {
    const want = Math.min(chunk.length, size - pos);
    const n = readSync(fd, chunk, 0, want, pos);
    if (n <= 0) break;
    for (let o = 0; o < n; o += BLOCK) hashBlock(chunk, o, Math.min(BLOCK, n - o), leaves, ((pos + o) / BLOCK) * HASH);
    pos += n;
    if (n % BLOCK !== 0 && pos < size) break; // a short read in the middle: the file shrank
  }
  return { leaves, digest: digestFromLeaves(leaves, size), read: pos };
}

/**
 * Check `len` bytes at data[0..] read from file offset `pos` (a block
 * boundary) against the leaves; the last block may be partial only at end
 * of file. Returns the index of the first bad block, or -1.
 */
export function checkBlocks(leaves: Buffer, data: Buffer, len: number, pos: number): number {
  for (let o = 0; o < len; o += BLOCK) {
    const block = (pos + o) / BLOCK;
    hashBlock(data, o, Math.min(BLOCK, len - o), scratchHash, 0);
    if ((block + 1) * HASH > leaves.length || scratchHash.compare(leaves, block * HASH, (block + 1) * HASH) !== 0) return block;
  }
  return -1;
}
