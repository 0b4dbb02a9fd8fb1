/**
 * Objects written from a stream: file contents arrive in chunks (from a
 * decompressed tar layer) and go into the composefs object store
 * (`XX/YYYY…`, as `mkcomposefs --digest-store` writes it) with their
 * fs-verity digest computed on the way.
 *
 * The same guarantees as src/store/objects.ts: an object appears complete or
 * not at all (its bytes go into a temporary file of ours, renamed into place
 * only when full, with RENAME_NOREPLACE so nothing is ever replaced), it is
 * named after the digest of exactly the bytes written into it (the digest
 * is taken from the very chunks written, never re-read from elsewhere), and
 * nothing is fsync'ed per object: the caller runs one `syncStore` before
 * naming anything that refers to the objects. A crash can leave dot-named
 * temporary files in the store; gc removes them.
 *
 * Why not an O_TMPFILE linked into place, as src/store/objects.ts does: on
 * this project's machine (ext4, Linux 6.18) O_TMPFILE + linkat through
 * /proc/self/fd took 300 µs a file against 47 µs for create + write +
 * renameat2 (20,000 files of 3 KB): a /usr layer of 60k files spent 5 s
 * of a 14 s pull in it.
 *
 * Files of up to 64 bytes are not stored: their contents go inline into the
 * image, as `mkcomposefs` does. Files up to BUFFER_LIMIT are held in memory
 * until their digest is known, so one already in the store costs no write
 * at all; larger ones stream straight into their temporary file.
 */
import { closeSync, constants, lstatSync, mkdirSync, openSync, unlinkSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { FsVerityHasher, digestToHex } from '../fsverity/index.js';
import { renameNoReplace } from '../sys/fs.js';
import { open as openAsync, lstat as lstatAsync, unlink as unlinkAsync } from 'node:fs/promises';
import { ComposefsError, ioError } from '../errors.js';
import type { TarSink } from '../oci/tar.js';

/** The reference inlines regular files of at most this many bytes (LCFS_BUILD_INLINE_FILE_SIZE_LIMIT). */
export const INLINE_LIMIT = 64;
/**
 * Files up to this size are buffered and hashed before anything is written.
 * Measured on a /usr layer (most files are small): ~15% fewer system calls
 * than streaming every file, and no write at all for content already stored.
 */
const BUFFER_LIMIT = 1 << 20;
/** Buffered files being written at once, and their bytes (memory stays bounded). */
const MAX_IN_FLIGHT = 16;
const MAX_BYTES_IN_FLIGHT = 32 << 20;

export interface StoredFile {
  size: number;
  /** fs-verity digest (32 bytes); null for an empty file. */
  digest: Buffer | null;
  /** Contents of a file of 1..64 bytes, inlined in the image. */
  content: Buffer | null;
}

export interface ObjectWriterStats {
  objectsWritten: number;
  bytesWritten: number;
  bytesHashed: number;
}

let tmpCounter = 0;

export class ObjectWriter {
  readonly stats: ObjectWriterStats = { objectsWritten: 0, bytesWritten: 0, bytesHashed: 0 };
  private readonly dirs = new Set<string>();
  private readonly hasher = new FsVerityHasher();

  constructor(readonly root: string) {}

  /** A sink for one file of `size` bytes; `done` gets what was stored once all its bytes arrived. */
  file(size: number, done: (stored: StoredFile) => void): FileSink {
    return new FileSink(this, size, done);
  }

  /** @internal */
  hashAll(chunks: Buffer[]): Buffer {
    const h = this.hasher.reset();
    for (const c of chunks) h.update(c);
    return h.digest();
  }

  /**
   * @internal Store buffered contents under `digest` unless already there.
   * Written asynchronously, a few files at once on libuv's thread pool: on
   * ext4 a file's creation waits for the journal now and then (open took 6.7
   * of 16 s of a /usr pull done one file at a time), and several in flight
   * overlap those waits. The caller bounds what is in flight with `drain`.
   */
  storeBuffered(digest: Buffer, chunks: Buffer[], size: number): void {
    const dest = this.destOf(digest);
    this.pendingBytes += size;
    const p: Promise<void> = this.writeFile(dest, chunks, size)
      .catch((err: unknown) => {
        this.failure ??= err;
      })
      .finally(() => {
        this.pending.delete(p);
        this.pendingBytes -= size;
      });
    this.pending.add(p);
  }

  private readonly pending = new Set<Promise<void>>();
  private pendingBytes = 0;
  private failure: unknown = null;

  /** True when the caller should `await drain()` before handing over more. */
  get busy(): boolean {
    return this.pending.size >= MAX_IN_FLIGHT || this.pendingBytes >= MAX_BYTES_IN_FLIGHT || this.failure !== null;
  }

  /** Wait until few enough writes are in flight; throws the first write's failure. */
  async drain(): Promise<void> {
    while ((this.pending.size >= MAX_IN_FLIGHT || this.pendingBytes >= MAX_BYTES_IN_FLIGHT) && this.failure === null) await Promise.race(this.pending);
    if (this.failure !== null) throw this.failure;
  }

  /** Wait for every write in flight; throws the first write's failure. */
  async flush(): Promise<void> {
    while (this.pending.size > 0) await Promise.all([...this.pending]);
    if (this.failure !== null) throw this.failure;
  }

  private async writeFile(dest: string, chunks: Buffer[], size: number): Promise<void> {
    try {
      await lstatAsync(dest);
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(err, `cannot access object ${dest}`);
    }
    const tmp = join(dirname(dest), `.tmp.${process.pid}.${tmpCounter++}`);
    let named = false;
    try {
      const fh = await openAsync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
      try {
        const { bytesWritten } = await fh.writev(chunks);
        if (bytesWritten < size) {
          // A short write is how a full disk first shows (the rest of the
          // page fitted): writing the rest gets the reason, ENOSPC or EDQUOT.
          const rest = Buffer.concat(chunks).subarray(bytesWritten);
          for (let off = 0; off < rest.length; ) {
            const n = (await fh.write(rest, off, rest.length - off)).bytesWritten;
            if (n === 0) throw new Error(`short write (${bytesWritten + off} of ${size} bytes)`);
            off += n;
          }
        }
      } finally {
        await fh.close();
      }
      named = this.name(tmp, dest);
    } catch (err) {
      throw err instanceof ComposefsError ? err : ioError(err, `cannot write object ${dest}`);
    } finally {
      if (!named) await unlinkAsync(tmp).catch(() => {});
    }
    if (named) {
      this.stats.objectsWritten++;
      this.stats.bytesWritten += size;
    }
  }

  /** @internal */
  destOf(digest: Buffer): string {
    const hex = digestToHex(digest);
    const dir = join(this.root, hex.slice(0, 2));
    if (!this.dirs.has(dir)) {
      try {
        mkdirSync(dir, { mode: 0o755 });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw ioError(err, `cannot create ${dir}`);
      }
      this.dirs.add(dir);
    }
    return join(dir, hex.slice(2));
  }

  /** @internal A new dot-named file of ours in `dir` (the store root by default). */
  openTemp(what: string, dir: string = this.root): { fd: number; path: string } {
    const path = join(dir, `.tmp.${process.pid}.${tmpCounter++}`);
    try {
      return { fd: openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644), path };
    } catch (err) {
      throw ioError(err, `cannot write object ${what}`);
    }
  }

  /** @internal Give the (closed) temporary file the name `dest`, never replacing: false when another writer named it first. */
  name(tmp: string, dest: string): boolean {
    try {
      renameNoReplace(tmp, dest);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw ioError(err, `cannot write object ${dest}`);
    }
  }

  /** @internal Close the temporary file if open, and remove it unless it was renamed. */
  discard(tmp: { fd: number; path: string }, named: boolean): void {
    if (tmp.fd >= 0) closeSync(tmp.fd);
    tmp.fd = -1;
    if (!named) {
      try {
        unlinkSync(tmp.path);
      } catch {
        /* already gone */
      }
    }
  }
}

function exists(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw ioError(err, `cannot access object ${path}`);
  }
}

function writeAll(fd: number, chunk: Buffer, what: string): void {
  let off = 0;
  try {
    while (off < chunk.length) off += writeSync(fd, chunk, off, chunk.length - off);
  } catch (err) {
    throw ioError(err, `cannot write object ${what}`);
  }
}

export class FileSink implements TarSink {
  private chunks: Buffer[] = [];
  private received = 0;
  /** Streaming (large file): the temporary file and the running hash. */
  private tmp: { fd: number; path: string } | null = null;
  private readonly hasher: FsVerityHasher | null;

  constructor(
    private readonly w: ObjectWriter,
    private readonly size: number,
    private readonly done: (stored: StoredFile) => void,
  ) {
    this.hasher = size > BUFFER_LIMIT ? new FsVerityHasher() : null;
    if (this.hasher) this.tmp = w.openTemp(`of ${size} bytes into ${w.root}`);
  }

  write(chunk: Buffer): void {
    this.received += chunk.length;
    if (this.tmp) {
      this.hasher!.update(chunk);
      try {
        writeAll(this.tmp.fd, chunk, `of ${this.size} bytes into ${this.w.root}`);
      } catch (err) {
        this.abort();
        throw err;
      }
    } else this.chunks.push(Buffer.from(chunk));
  }

  end(): void {
    const size = this.received;
    this.w.stats.bytesHashed += size;
    if (size === 0) {
      this.done({ size, digest: null, content: null });
      return;
    }
    if (!this.tmp) {
      const digest = this.w.hashAll(this.chunks);
      if (size <= INLINE_LIMIT) {
        this.done({ size, digest, content: this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks) });
      } else {
        this.w.storeBuffered(digest, this.chunks, size);
        this.done({ size, digest, content: null });
      }
      this.chunks = [];
      return;
    }
    const digest = this.hasher!.digest();
    const tmp = this.tmp;
    this.tmp = null;
    let named = false;
    try {
      closeSync(tmp.fd);
      tmp.fd = -1;
      const dest = this.w.destOf(digest);
      if (!exists(dest)) named = this.w.name(tmp.path, dest);
    } finally {
      this.w.discard(tmp, named);
    }
    if (named) {
      this.w.stats.objectsWritten++;
      this.w.stats.bytesWritten += size;
    }
    this.done({ size, digest, content: null });
  }

  /** Drop the temporary file (the import failed). */
  abort(): void {
    if (this.tmp) {
      this.w.discard(this.tmp, false);
      this.tmp = null;
    }
  }
}
