/**
 * fs-verity file digests (SHA-256, 4096-byte blocks, no salt), the names of
 * objects in a composefs store.
 *
 * The digest is the SHA-256 of a 256-byte `fsverity_descriptor` that holds
 * the file size and the root of a Merkle tree: the data is cut into 4096-byte
 * blocks (the last one zero-padded), each block is hashed, the hashes are
 * packed 128 to a block (again zero-padded) and hashed, and so on until one
 * block remains; the root hash is the hash of that block. A file of at most
 * one block has the hash of its (padded) block as root; an empty file has an
 * all-zero root.
 *
 * The hasher streams: it keeps one partial data block and one partial block
 * per tree level, so memory stays constant whatever the file size.
 */
import { closeSync, openSync, read, readSync } from 'node:fs';
import { open as openAsync } from 'node:fs/promises';
import crypto from 'node:crypto';
import { addressOf, rawSha256, sha256Into, type RawSha256 } from './sha256.js';

export const FSVERITY_BLOCK_SIZE = 4096;
export const DIGEST_SIZE = 32;
const HASHES_PER_BLOCK = FSVERITY_BLOCK_SIZE / DIGEST_SIZE;
const MAX_LEVELS = 8; // 128^8 blocks of 4 KiB is far beyond any file size.

/** Incremental fs-verity digest. Feed `update()` any chunk sizes, then call `digest()` once. */
export class FsVerityHasher {
  private readonly native: RawSha256 | null;
  /** Partial data block, and the Merkle levels' partial hash blocks, in one buffer. */
  private readonly mem = Buffer.allocUnsafeSlow(FSVERITY_BLOCK_SIZE * (MAX_LEVELS + 1));
  private readonly memAddr: number;
  private pending = 0; // bytes in the partial data block
  /** The fsverity_descriptor, rebuilt for each digest. */
  private readonly desc = Buffer.allocUnsafeSlow(256 + DIGEST_SIZE);
  /** Hashes appended to each level so far (total, not only the partial block). */
  private readonly counts = new Array<number>(MAX_LEVELS).fill(0);
  private size = 0;
  private done = false;

  private readonly descAddr: number;

  /** `native: false` hashes through Node's crypto, without loading koffi (worth it only for many blocks). */
  constructor(opts: { native?: boolean } = {}) {
    this.native = opts.native === false ? null : rawSha256();
    this.memAddr = this.native ? addressOf(this.mem) : 0;
    this.descAddr = this.native ? addressOf(this.desc) : 0;
  }

  /** Start over, for another file: reuses this hasher's memory. */
  reset(): this {
    this.pending = 0;
    this.counts.fill(0);
    this.size = 0;
    this.done = false;
    return this;
  }

  /** Bytes fed so far. */
  get length(): number {
    return this.size;
  }

  update(chunk: Uint8Array): this {
    if (this.done) throw new Error('FsVerityHasher: update after digest');
    let off = 0;
    const len = chunk.length;
    this.size += len;
    if (this.pending > 0) {
      const take = Math.min(FSVERITY_BLOCK_SIZE - this.pending, len);
      this.mem.set(take === len ? chunk : chunk.subarray(0, take), this.pending);
      this.pending += take;
      off = take;
      if (this.pending < FSVERITY_BLOCK_SIZE) return this;
      this.hashDataBlockFromMem();
    }
    const full = off + Math.floor((len - off) / FSVERITY_BLOCK_SIZE) * FSVERITY_BLOCK_SIZE;
    if (full > off) {
      if (this.native) {
        const base = addressOf(chunk);
        for (let o = off; o < full; o += FSVERITY_BLOCK_SIZE) this.pushNative(base + o);
      } else {
        for (let o = off; o < full; o += FSVERITY_BLOCK_SIZE) this.pushJs(chunk.subarray(o, o + FSVERITY_BLOCK_SIZE));
      }
      off = full;
    }
    if (off < len) {
      this.mem.set(chunk.subarray(off), 0);
      this.pending = len - off;
    }
    return this;
  }

  /** The 32-byte fs-verity digest of everything fed. */
  digest(): Buffer {
    if (this.done) throw new Error('FsVerityHasher: digest called twice');
    this.done = true;
    if (this.pending > 0) {
      this.mem.fill(0, this.pending, FSVERITY_BLOCK_SIZE);
      this.hashDataBlockFromMem();
    }
    // struct fsverity_descriptor: version 1, SHA-256 (1), log2(block size) 12,
    // no salt, 4 reserved bytes, le64 data size, 64-byte root hash (32 used),
    // 32-byte salt and 144 reserved bytes, all zero.
    const desc = this.desc;
    desc.fill(0, 0, 256);
    desc[0] = 1;
    desc[1] = 1;
    desc[2] = 12;
    desc.writeUInt32LE(this.size % 0x100000000, 8);
    desc.writeUInt32LE(Math.floor(this.size / 0x100000000), 12);
    if (this.size > 0) {
      for (let level = 0; ; level++) {
        const n = this.counts[level];
        const blk = this.levelOffset(level);
        if (n === 1) {
          this.mem.copy(desc, 16, blk, blk + DIGEST_SIZE);
          break;
        }
        const inBlock = n % HASHES_PER_BLOCK;
        if (inBlock !== 0) {
          this.mem.fill(0, blk + inBlock * DIGEST_SIZE, blk + FSVERITY_BLOCK_SIZE);
          this.hashLevelBlock(level);
        }
      }
    }
    if (this.native) {
      const out = Buffer.allocUnsafe(DIGEST_SIZE);
      this.native(this.descAddr, 256, this.descAddr + 256);
      desc.copy(out, 0, 256, 256 + DIGEST_SIZE);
      return out;
    }
    return crypto.createHash('sha256').update(desc.subarray(0, 256)).digest();
  }

  private levelOffset(level: number): number {
    return FSVERITY_BLOCK_SIZE * (level + 1);
  }

  private hashDataBlockFromMem(): void {
    this.pending = 0;
    if (this.native) this.pushNative(this.memAddr);
    else this.pushJs(this.mem.subarray(0, FSVERITY_BLOCK_SIZE));
  }

  /** Hash the data block at `addr` into level 0. */
  private pushNative(addr: number): void {
    const n = this.counts[0];
    const slot = n % HASHES_PER_BLOCK;
    this.native!(addr, FSVERITY_BLOCK_SIZE, this.memAddr + FSVERITY_BLOCK_SIZE + slot * DIGEST_SIZE);
    this.counts[0] = n + 1;
    if (slot === HASHES_PER_BLOCK - 1) this.hashLevelBlock(0);
  }

  private pushJs(block: Uint8Array): void {
    const n = this.counts[0];
    const slot = n % HASHES_PER_BLOCK;
    sha256Into(block, this.mem, FSVERITY_BLOCK_SIZE + slot * DIGEST_SIZE);
    this.counts[0] = n + 1;
    if (slot === HASHES_PER_BLOCK - 1) this.hashLevelBlock(0);
  }

  /** Hash the (full or zero-padded) block of `level` into the next level up. */
  private hashLevelBlock(level: number): void {
    const up = level + 1;
    if (up >= MAX_LEVELS) throw new Error('FsVerityHasher: file too large');
    const n = this.counts[up];
    const slot = n % HASHES_PER_BLOCK;
    const src = this.levelOffset(level);
    const dst = this.levelOffset(up) + slot * DIGEST_SIZE;
    if (this.native) this.native(this.memAddr + src, FSVERITY_BLOCK_SIZE, this.memAddr + dst);
    else sha256Into(this.mem.subarray(src, src + FSVERITY_BLOCK_SIZE), this.mem, dst);
    this.counts[up] = n + 1;
    if (slot === HASHES_PER_BLOCK - 1) this.hashLevelBlock(up);
  }
}

const NATIVE_THRESHOLD = 64 << 20;

/** The fs-verity hash algorithms composefs names objects and images by (4096-byte blocks, no salt). */
export type VerityAlgorithm = 'sha256' | 'sha512';
export const VERITY_ALGORITHMS: readonly VerityAlgorithm[] = ['sha256', 'sha512'];
/** `FS_VERITY_HASH_ALG_*`, the descriptor's and the metacopy xattr's number for each. */
export const VERITY_ALGORITHM_IDS: Readonly<Record<VerityAlgorithm, number>> = { sha256: 1, sha512: 2 };

export function verityDigestSize(algorithm: VerityAlgorithm): number {
  return algorithm === 'sha512' ? 64 : 32;
}

/** fs-verity digest of an in-memory buffer. */
export function fsverityDigest(data: Uint8Array, algorithm: VerityAlgorithm = 'sha256'): Buffer {
  if (algorithm === 'sha512') return fsverityDigestGeneric(data, algorithm);
  // Loading koffi costs more than it saves below some tens of MiB.
  return new FsVerityHasher({ native: data.length >= NATIVE_THRESHOLD }).update(data).digest();
}

/** The Merkle tree over whole buffers, for any algorithm Node's crypto has (the streaming hasher is SHA-256's). */
function fsverityDigestGeneric(data: Uint8Array, algorithm: VerityAlgorithm): Buffer {
  const size = verityDigestSize(algorithm);
  const hash = (b: Uint8Array): Buffer => crypto.createHash(algorithm).update(b).digest();
  const blocksOf = (buf: Uint8Array): Buffer[] => {
    const out: Buffer[] = [];
    for (let o = 0; o < buf.length; o += FSVERITY_BLOCK_SIZE) {
      const block = Buffer.alloc(FSVERITY_BLOCK_SIZE);
      block.set(buf.subarray(o, o + FSVERITY_BLOCK_SIZE));
      out.push(hash(block));
    }
    return out;
  };
  let root = Buffer.alloc(size);
  if (data.length > 0) {
    let level = blocksOf(data);
    while (level.length > 1) level = blocksOf(Buffer.concat(level));
    root = level[0];
  }
  const desc = Buffer.alloc(256);
  desc[0] = 1;
  desc[1] = VERITY_ALGORITHM_IDS[algorithm];
  desc[2] = 12;
  desc.writeBigUInt64LE(BigInt(data.length), 8);
  root.copy(desc, 16);
  return hash(desc);
}

/** Read buffer size for file digests: large reads, few system calls. */
export const READ_CHUNK = 1 << 20;

let sharedReadBuf: Buffer | null = null;
let sharedHasher: FsVerityHasher | null = null;

export interface FileDigestOptions {
  /** Called with each chunk read (a view into a reused buffer: copy what you keep). */
  onChunk?: (chunk: Buffer) => void;
  /**
   * Stop once this many bytes are read, without the extra read that would
   * find end of file: for callers that already know the size and check it
   * (with fstat) afterwards.
   */
  knownSize?: number;
  /** Read from this offset (pread) instead of the fd's current position. */
  position?: number;
}

/**
 * fs-verity digest of a file (path or open fd), streamed through one reused
 * 1 MiB buffer; reads from the fd's current position (or `position`) to end of file.
 * Synchronous and not re-entrant: meant for worker threads and tools.
 */
export function fsverityDigestOfFileSync(file: string | Buffer | number, options: FileDigestOptions = {}): { digest: Buffer; size: number } {
  const fd = typeof file === 'number' ? file : openSync(file, 'r');
  try {
    const buf = (sharedReadBuf ??= Buffer.allocUnsafeSlow(READ_CHUNK));
    const h = (sharedHasher ??= new FsVerityHasher()).reset();
    const { onChunk, knownSize, position } = options;
    for (;;) {
      const want = knownSize === undefined ? buf.length : Math.min(buf.length, knownSize - h.length);
      if (want === 0) break;
      const n = readSync(fd, buf, 0, want, position === undefined ? null : position + h.length);
      if (n === 0) break;
      const chunk = n === buf.length ? buf : buf.subarray(0, n);
      h.update(chunk);
      onChunk?.(chunk);
    }
    return { digest: h.digest(), size: h.length };
  } finally {
    if (typeof file !== 'number') closeSync(fd);
  }
}

/** Asynchronous streaming fs-verity digest of a file (path or fd). */
export async function fsverityDigestOfFile(file: string | Buffer | number): Promise<Buffer> {
  if (typeof file === 'number') {
    const buf = Buffer.allocUnsafeSlow(READ_CHUNK);
    const h = new FsVerityHasher();
    for (;;) {
      const n = await new Promise<number>((res, rej) => read(file, buf, 0, buf.length, null, (e, k) => (e ? rej(e) : res(k))));
      if (n === 0) break;
      h.update(n === buf.length ? buf : buf.subarray(0, n));
    }
    return h.digest();
  }
  const fh = await openAsync(file, 'r');
  try {
    const buf = Buffer.allocUnsafeSlow(READ_CHUNK);
    const h = new FsVerityHasher();
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      h.update(bytesRead === buf.length ? buf : buf.subarray(0, bytesRead));
    }
    return h.digest();
  } finally {
    await fh.close();
  }
}

export function digestToHex(digest: Uint8Array): string {
  return Buffer.from(digest.buffer, digest.byteOffset, digest.byteLength).toString('hex');
}

/** Parse 64 hex digits (either case) into a 32-byte digest; throws on anything else. */
export function hexToDigest(hex: string): Buffer {
  if (!/^[0-9a-fA-F]{64}$/.test(hex)) throw new Error(`invalid fs-verity digest '${hex}': expected 64 hex digits`);
  return Buffer.from(hex, 'hex');
}
