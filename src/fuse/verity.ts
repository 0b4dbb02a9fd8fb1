/**
 * fs-verity in userspace for `-o verity` under FUSE: what the kernel's
 * fs-verity does for an overlay with verity=require, on kernels (or file
 * systems) without it and without root.
 *
 * Before an object is served its whole content is hashed into the first
 * level of its Merkle tree (one hash per 4 KiB block, kept: 32 bytes per
 * block for SHA-256, 64 for SHA-512, 0.8 or 1.6 % of the data) and the fs-verity digest computed from those
 * leaves must equal the digest the image records. From then on every block
 * read for the kernel is hashed again and compared with its leaf, so a
 * change to the object after the check gives EIO, never other bytes.
 */
import { readSync } from 'node:fs';
import { addressOf, hashInto, rawHash, type RawHash } from '../fsverity/native-hash.js';
import { VERITY_ALGORITHM_IDS, verityDigestSize, type VerityAlgorithm } from '../fsverity/index.js';

export const BLOCK = 4096;

const natives: Partial<Record<VerityAlgorithm, RawHash | null>> = {};
const padBlock = Buffer.allocUnsafeSlow(BLOCK);
const scratchHash = Buffer.allocUnsafeSlow(64);

/** The hash `algorithm` of data[start, start+len) (zero-padded to a block when short) into out[outOff]. */
function hashBlock(algorithm: VerityAlgorithm, data: Buffer, start: number, len: number, out: Buffer, outOff: number): void {
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
  let native = natives[algorithm];
  if (native === undefined) native = natives[algorithm] = rawHash(algorithm);
  if (native) {
    native(addressOf(src) + s, n, addressOf(out) + outOff);
    return;
  }
  hashInto(algorithm, src.subarray(s, s + n), out, outOff);
}

/** The fs-verity digest (4 KiB blocks, no salt) of a file of `size` bytes whose level-0 hashes are `leaves`. */
export function digestFromLeaves(leaves: Buffer, size: number, algorithm: VerityAlgorithm = 'sha256'): Buffer {
  const hash = verityDigestSize(algorithm);
  const root = Buffer.alloc(hash);
  if (size > 0) {
    let level = leaves;
    while (level.length > hash) {
      const blocks = Math.ceil(level.length / BLOCK);
      const up = Buffer.allocUnsafeSlow(blocks * hash);
      for (let i = 0; i < blocks; i++) hashBlock(algorithm, level, i * BLOCK, Math.min(BLOCK, level.length - i * BLOCK), up, i * hash);
      level = up;
    }
    level.copy(root, 0, 0, hash);
  }
  const desc = Buffer.alloc(256);
  desc[0] = 1; // version
  desc[1] = VERITY_ALGORITHM_IDS[algorithm];
  desc[2] = 12; // log2(block size)
  desc.writeUInt32LE(size % 0x100000000, 8);
  desc.writeUInt32LE(Math.floor(size / 0x100000000), 12);
  root.copy(desc, 16);
  const out = Buffer.allocUnsafe(hash);
  hashInto(algorithm, desc, out, 0);
  return out;
}

const chunk = Buffer.allocUnsafeSlow(1 << 20);

/** Hash a whole open file: its leaves and digest. Reads `size` bytes (a shorter file is an error for the caller to report). */
export function measureSync(fd: number, size: number, algorithm: VerityAlgorithm = 'sha256'): { leaves: Buffer; digest: Buffer; read: number } {
  const hash = verityDigestSize(algorithm);
  const blocks = Math.ceil(size / BLOCK);
  const leaves = Buffer.allocUnsafeSlow(blocks * hash);
  let pos = 0;
  while (pos < size) {
    const want = Math.min(chunk.length, size - pos);
    const n = readSync(fd, chunk, 0, want, pos);
    if (n <= 0) break;
    for (let o = 0; o < n; o += BLOCK) hashBlock(algorithm, chunk, o, Math.min(BLOCK, n - o), leaves, ((pos + o) / BLOCK) * hash);
    pos += n;
    if (n % BLOCK !== 0 && pos < size) break; // a short read in the middle: the file shrank
  }
  return { leaves, digest: digestFromLeaves(leaves, size, algorithm), read: pos };
}

/**
 * Check `len` bytes at data[0..] read from file offset `pos` (a block
 * boundary) against the leaves; the last block may be partial only at end
 * of file. Returns the index of the first bad block, or -1.
 */
export function checkBlocks(leaves: Buffer, data: Buffer, len: number, pos: number, algorithm: VerityAlgorithm = 'sha256'): number {
  const hash = verityDigestSize(algorithm);
  for (let o = 0; o < len; o += BLOCK) {
    const block = (pos + o) / BLOCK;
    hashBlock(algorithm, data, o, Math.min(BLOCK, len - o), scratchHash, 0);
    if ((block + 1) * hash > leaves.length || scratchHash.compare(leaves, block * hash, (block + 1) * hash, 0, hash) !== 0) return block;
  }
  return -1;
}
