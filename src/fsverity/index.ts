/**
 * fs-verity file digests (SHA-256 or SHA-512, 4096-byte blocks, no salt),
 * the names of objects in a composefs store: the algorithms the OCI sealing
 * specification calls `fsverity-sha256-12` and `fsverity-sha512-12`.
 *
 * The digest is the hash of a 256-byte `fsverity_descriptor` that holds
 * the file size and the root of a Merkle tree: the data is cut into 4096-byte
 * blocks (the last one zero-padded), each block is hashed, the hashes are
 * packed 4096 bytes to a block (128 SHA-256 or 64 SHA-512 hashes; again
 * zero-padded) and hashed, and so on until one block remains; the root hash
 * is the hash of that block. A file of at most one block has the hash of its
 * (padded) block as root; an empty file has an all-zero root.
 *
 * The hasher streams: it keeps one partial data block and one partial block
 * per tree level, so memory stays constant whatever the file size.
 */
import { closeSync, openSync, read, readSync } from 'node:fs';
import { open as openAsync } from 'node:fs/promises';
import { addressOf, hashInto, rawHash, type RawHash } from './native-hash.js';

export const FSVERITY_BLOCK_SIZE = 4096;
/** The size of a SHA-256 fs-verity digest, the default algorithm's. */
export const DIGEST_SIZE = 32;
const MAX_DIGEST_SIZE = 64;
const MAX_LEVELS = 10; // 64^10 blocks of 4 KiB is far beyond any file size.

/** The fs-verity hash algorithms composefs names objects and images by (4096-byte blocks, no salt). */
export type VerityAlgorithm = 'sha256' | 'sha512';
export const VERITY_ALGORITHMS: readonly VerityAlgorithm[] = ['sha256', 'sha512'];
/** `FS_VERITY_HASH_ALG_*`, the descriptor's and the metacopy xattr's number for each. */
export const VERITY_ALGORITHM_IDS: Readonly<Record<VerityAlgorithm, number>> = { sha256: 1, sha512: 2 };

export function verityDigestSize(algorithm: VerityAlgorithm): number {
  return algorithm === 'sha512' ? 64 : 32;
}

/** The algorithm whose digests are `size` bytes (32 or 64), or null. */
export function verityAlgorithmOfSize(size: number): VerityAlgorithm | null {
  return size === 32 ? 'sha256' : size === 64 ? 'sha512' : null;
}

/** The algorithm `FS_VERITY_HASH_ALG_*` number `id` names (1 or 2), or null. */
export function verityAlgorithmOfId(id: number): VerityAlgorithm | null {
  return id === 1 ? 'sha256' : id === 2 ? 'sha512' : null;
}

/** Whether `name` is one of VERITY_ALGORITHMS (for parsing options and files). */
export function isVerityAlgorithm(name: unknown): name is VerityAlgorithm {
  return name === 'sha256' || name === 'sha512';
}

export interface HasherOptions {
  /** Default sha256. */
  algorithm?: VerityAlgorithm;
  /** `false` hashes through Node's crypto, without loading koffi (worth it only for many blocks). */
  native?: boolean;
}

/** Incremental fs-verity digest. Feed `update()` any chunk sizes, then call `digest()` once. */
export class FsVerityHasher {
  readonly algorithm: VerityAlgorithm;
  /** Bytes in one digest: 32 or 64. */
  readonly digestSize: number;
  private readonly hashesPerBlock: number;
  private readonly native: RawHash | null;
  /** Partial data block, and the Merkle levels' partial hash blocks, in one buffer. */
  private readonly mem = Buffer.allocUnsafeSlow(FSVERITY_BLOCK_SIZE * (MAX_LEVELS + 1));
  private readonly memAddr: number;
  private pending = 0; // bytes in the partial data block
  /** The fsverity_descriptor, rebuilt for each digest, and room for its hash after it. */
  private readonly desc = Buffer.allocUnsafeSlow(256 + MAX_DIGEST_SIZE);
  /** Hashes appended to each level so far (total, not only the partial block). */
  private readonly counts = new Array<number>(MAX_LEVELS).fill(0);
  private size = 0;
  private done = false;

  private readonly descAddr: number;

  constructor(opts: HasherOptions = {}) {
    this.algorithm = opts.algorithm ?? 'sha256';
    if (!isVerityAlgorithm(this.algorithm)) throw new Error(`FsVerityHasher: unknown algorithm '${String(this.algorithm)}'`);
    this.digestSize = verityDigestSize(this.algorithm);
    this.hashesPerBlock = FSVERITY_BLOCK_SIZE / this.digestSize;
    this.native = opts.native === false ? null : rawHash(this.algorithm);
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

  /** The fs-verity digest (32 or 64 bytes) of everything fed. */
  digest(): Buffer {
    if (this.done) throw new Error('FsVerityHasher: digest called twice');
    this.done = true;
    const size = this.digestSize;
    if (this.pending > 0) {
      this.mem.fill(0, this.pending, FSVERITY_BLOCK_SIZE);
      this.hashDataBlockFromMem();
    }
    // struct fsverity_descriptor: version 1, the algorithm's number,
    // log2(block size) 12, no salt, 4 reserved bytes, le64 data size,
    // 64-byte root hash (zero-padded), 32-byte salt and 144 reserved bytes,
    // all zero.
    const desc = this.desc;
    desc.fill(0, 0, 256);
    desc[0] = 1;
    desc[1] = VERITY_ALGORITHM_IDS[this.algorithm];
    desc[2] = 12;
    desc.writeUInt32LE(this.size % 0x100000000, 8);
    desc.writeUInt32LE(Math.floor(this.size / 0x100000000), 12);
    if (this.size > 0) {
      for (let level = 0; ; level++) {
        const n = this.counts[level];
        const blk = this.levelOffset(level);
        if (n === 1) {
          this.mem.copy(desc, 16, blk, blk + size);
          break;
        }
        const inBlock = n % this.hashesPerBlock;
        if (inBlock !== 0) {
          this.mem.fill(0, blk + inBlock * size, blk + FSVERITY_BLOCK_SIZE);
          this.hashLevelBlock(level);
        }
      }
    }
    const out = Buffer.allocUnsafe(size);
    if (this.native) {
      this.native(this.descAddr, 256, this.descAddr + 256);
      desc.copy(out, 0, 256, 256 + size);
    } else hashInto(this.algorithm, desc.subarray(0, 256), out, 0);
    return out;
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
    const slot = n % this.hashesPerBlock;
    this.native!(addr, FSVERITY_BLOCK_SIZE, this.memAddr + FSVERITY_BLOCK_SIZE + slot * this.digestSize);
    this.counts[0] = n + 1;
    if (slot === this.hashesPerBlock - 1) this.hashLevelBlock(0);
  }

  private pushJs(block: Uint8Array): void {
    const n = this.counts[0];
    const slot = n % this.hashesPerBlock;
    hashInto(this.algorithm, block, this.mem, FSVERITY_BLOCK_SIZE + slot * this.digestSize);
    this.counts[0] = n + 1;
    if (slot === this.hashesPerBlock - 1) this.hashLevelBlock(0);
  }

  /** Hash the (full or zero-padded) block of `level` into the next level up. */
  private hashLevelBlock(level: number): void {
    const up = level + 1;
    if (up >= MAX_LEVELS) throw new Error('FsVerityHasher: file too large');
    const n = this.counts[up];
    const slot = n % this.hashesPerBlock;
    const src = this.levelOffset(level);
    const dst = this.levelOffset(up) + slot * this.digestSize;
    if (this.native) this.native(this.memAddr + src, FSVERITY_BLOCK_SIZE, this.memAddr + dst);
    else hashInto(this.algorithm, this.mem.subarray(src, src + FSVERITY_BLOCK_SIZE), this.mem, dst);
    this.counts[up] = n + 1;
    if (slot === this.hashesPerBlock - 1) this.hashLevelBlock(up);
  }
}

const NATIVE_THRESHOLD = 64 << 20;

/** fs-verity digest of an in-memory buffer. */
export function fsverityDigest(data: Uint8Array, algorithm: VerityAlgorithm = 'sha256'): Buffer {
  // Loading koffi costs more than it saves below some tens of MiB.
  return new FsVerityHasher({ algorithm, native: data.length >= NATIVE_THRESHOLD }).update(data).digest();
}

/** Read buffer size for file digests: large reads, few system calls. */
export const READ_CHUNK = 1 << 20;

let sharedReadBuf: Buffer | null = null;
const sharedHashers: Partial<Record<VerityAlgorithm, FsVerityHasher>> = {};

export interface FileDigestOptions {
  /** Default sha256. */
  algorithm?: VerityAlgorithm;
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
    const algorithm = options.algorithm ?? 'sha256';
    const h = (sharedHashers[algorithm] ??= new FsVerityHasher({ algorithm })).reset();
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
export async function fsverityDigestOfFile(file: string | Buffer | number, algorithm: VerityAlgorithm = 'sha256'): Promise<Buffer> {
  if (typeof file === 'number') {
    const buf = Buffer.allocUnsafeSlow(READ_CHUNK);
    const h = new FsVerityHasher({ algorithm });
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
    const h = new FsVerityHasher({ algorithm });
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

/** The pattern of a digest's hex form: 64 digits for sha256, 128 for sha512. */
export function digestHexPattern(algorithm: VerityAlgorithm): RegExp {
  return algorithm === 'sha512' ? SHA512_HEX : SHA256_HEX;
}
const SHA256_HEX = /^[0-9a-f]{64}$/;
const SHA512_HEX = /^[0-9a-f]{128}$/;

/**
 * Parse hex digits (either case) into a digest: exactly `algorithm`'s
 * length when given, else 64 (sha256) or 128 (sha512); throws on anything else.
 */
export function hexToDigest(hex: string, algorithm?: VerityAlgorithm): Buffer {
  const ok = algorithm === undefined ? /^(?:[0-9a-fA-F]{64}){1,2}$/.test(hex) : hex.length === 2 * verityDigestSize(algorithm) && /^[0-9a-fA-F]*$/.test(hex);
  if (!ok) {
    const want = algorithm === undefined ? '64 or 128 hex digits' : `${2 * verityDigestSize(algorithm)} hex digits (an fs-verity ${algorithm} digest)`;
    throw new Error(`invalid fs-verity digest '${hex.length > 140 ? `${hex.slice(0, 140)}…` : hex}': expected ${want}`);
  }
  return Buffer.from(hex, 'hex');
}
