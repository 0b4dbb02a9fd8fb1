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
 * Why not an O_TMPFILE linked into place, as src/store/objects.ts does: a
 * first measurement here (ext4, Linux 6.18, through libuv's pool) gave 300 µs
 * a file against 47 µs for create + write + renameat2; measured again with
 * synchronous calls (30,000 files of 12 KB, twice each) the two cost the same
 * (38-40 µs against 32-42 µs), as does creating the final name directly: the
 * file's creation is the cost, not the way it is named.
 *
 * Files of up to 64 bytes are not stored: their contents go inline into the
 * image, as `mkcomposefs` does. Files up to BUFFER_LIMIT are copied out of
 * the tar stream into a batch buffer, and the full batch is handed
 * (transferred, not copied) to a worker thread that hashes and writes its
 * objects with synchronous system calls (object-worker.ts) and hands the
 * digests and the buffer back; larger files stream straight into their
 * temporary file on the main thread.
 */
import { closeSync, constants, writeSync } from 'node:fs';
import { join } from 'node:path';
import { DIGEST_SIZE, FsVerityHasher, digestToHex } from '../fsverity/index.js';
import { openAt, renameAt, statAt, unlinkAt } from '../sys/dirfd.js';
import { closeObjectDirs, makeObjectDirs, objectDir, type ObjectDirs } from '../store/object-dirs.js';
import { Worker } from 'node:worker_threads';
import { IoError, ioError } from '../errors.js';
import type { ObjectBatch, ObjectBatchResult, SyncRequest } from './object-worker.js';
import type { TarSink } from '../oci/tar.js';

/** The reference inlines regular files of at most this many bytes (LCFS_BUILD_INLINE_FILE_SIZE_LIMIT). */
export const INLINE_LIMIT = 64;
/**
 * Files up to this size are buffered and hashed before anything is written.
 * Measured on a /usr layer (most files are small): ~15% fewer system calls
 * than streaming every file, and no write at all for content already stored.
 * 16 MiB (so that the /usr image's 470 MB in files over 1 MiB are written by
 * the writer threads too) measured no better: median 13.8 s against 11.2 s,
 * 5 interleaved rounds of a noisy machine.
 */
const BUFFER_LIMIT = 1 << 20;

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

/**
 * Why worker threads doing synchronous writes: creating the /usr image's
 * 54,736 objects (1.05 GB) from the parsed tars took 14.3-16.0 s through
 * fs.promises, 16 files in flight (each open, write and close a hop through
 * libuv's pool, shared with gunzip; 3.6 s of main-thread CPU in promises and
 * garbage), 6.1-11.0 s with synchronous calls on the main thread (which then
 * waits for the ext4 journal now and then), and 6.2-7.1 s on two worker
 * threads (0.8 s of CPU in the process besides the kernel's): the floor of
 * creating those files here.
 */
const WORKERS = 2;
/** One message to a worker: a few hundred small files, or one up to BUFFER_LIMIT. */
const BATCH_BYTES = 4 << 20;
/** Batches handed over and not yet written: past this the importer waits (memory stays bounded). */
const MAX_BYTES_IN_FLIGHT = 32 << 20;

interface Batch {
  id: number;
  data: Buffer;
  /** data's length (data is detached once handed over). */
  capacity: number;
  used: number;
  /** Files still arriving into it: it is sent once sealed and none is. */
  open: number;
  sealed: boolean;
  offsets: number[];
  sizes: number[];
  /** Called with each file's digest once the writer thread has hashed and stored it. */
  stored: ((digest: Buffer) => void)[];
  done: Promise<void>;
  finish: () => void;
  /** Not objects: a syncfs of the store. */
  sync?: true;
}

/** A place in a batch for one file's bytes. */
export interface Reservation {
  batch: Batch;
  offset: number;
}

export class ObjectWriter {
  readonly stats: ObjectWriterStats = { objectsWritten: 0, bytesWritten: 0, bytesHashed: 0 };
  private readonly dirs: ObjectDirs;
  private readonly hasher = new FsVerityHasher();
  private readonly workers: { w: Worker; outstanding: number; ready: Promise<void> }[] = [];
  private current: Batch | null = null;
  /** Sealed and sent (or queued to be), not yet written. */
  private readonly unfinished = new Map<number, Batch>();
  private readonly queue: Batch[] = [];
  private bytesInFlight = 0;
  private nextId = 0;
  private failure: unknown = null;
  private waiters: (() => void)[] = [];
  private closed = false;
  /** Batch buffers the writer threads handed back, to be filled again rather than allocated. */
  private readonly spare: ArrayBuffer[] = [];

  /** `objectsFd`: the store's directory (objects/), `root` its path for messages. */
  constructor(objectsFd: number, readonly root: string) {
    this.dirs = makeObjectDirs(objectsFd, root);
  }

  /**
   * A sink for one file of `size` bytes; `done` gets what was stored: at once
   * for an inlined or streamed file, when its batch is written for a buffered
   * one (flush() waits for that).
   */
  file(size: number, done: (stored: StoredFile) => void): FileSink {
    return new FileSink(this, size, done);
  }

  /** @internal */
  hash(data: Buffer): Buffer {
    return this.hasher.reset().update(data).digest();
  }

  /** @internal Room for `size` bytes in the batch being filled. */
  reserve(size: number): Reservation {
    let b = this.current;
    if (b === null || b.used + size > b.capacity) {
      if (b !== null) this.seal(b);
      let finish!: () => void;
      const done = new Promise<void>((res) => (finish = res));
      // Its own ArrayBuffer (not the shared pool's), so that it can be transferred.
      const capacity = Math.max(BATCH_BYTES, size);
      const spare = capacity === BATCH_BYTES ? this.spare.pop() : undefined;
      const data = spare ? Buffer.from(spare) : Buffer.allocUnsafeSlow(capacity);
      b = { id: this.nextId++, data, capacity, used: 0, open: 0, sealed: false, offsets: [], sizes: [], stored: [], done, finish };
      this.current = b;
    }
    const offset = b.used;
    b.used += size;
    b.open++;
    return { batch: b, offset };
  }

  /**
   * @internal The file reserved at `r` is complete: store its `size` bytes,
   * and call `stored` with their digest once that is done (null: nothing to store).
   */
  release(r: Reservation, size: number, stored: ((digest: Buffer) => void) | null): void {
    const b = r.batch;
    if (stored !== null) {
      b.offsets.push(r.offset);
      b.sizes.push(size);
      b.stored.push(stored);
    }
    b.open--;
    if (b.sealed && b.open === 0) this.send(b);
  }

  private seal(b: Batch): void {
    if (this.current === b) this.current = null;
    b.sealed = true;
    this.unfinished.set(b.id, b);
    if (b.open === 0) this.send(b);
  }

  private send(b: Batch): void {
    if ((b.offsets.length === 0 && !b.sync) || this.failure !== null || this.closed) {
      this.finished(b);
      return;
    }
    this.bytesInFlight += b.capacity;
    this.queue.push(b);
    this.pump();
  }

  private pump(): void {
    while (this.queue.length > 0) {
      if (this.workers.length < WORKERS && this.workers.every((s) => s.outstanding > 0)) this.spawn();
      let best = -1;
      for (let i = 0; i < this.workers.length; i++) {
        if (this.workers[i].outstanding < 2 && (best < 0 || this.workers[i].outstanding < this.workers[best].outstanding)) best = i;
      }
      if (best < 0) return;
      const b = this.queue.shift()!;
      if (this.workers[best].outstanding++ === 0) this.workers[best].w.ref();
      if (b.sync) {
        const msg: SyncRequest = { id: b.id, sync: true };
        this.workers[best].w.postMessage(msg);
      } else {
        const msg: ObjectBatch = { id: b.id, offsets: b.offsets, sizes: b.sizes, data: b.data.buffer as ArrayBuffer };
        this.workers[best].w.postMessage(msg, [msg.data]);
      }
    }
  }

  private spawn(): void {
    const index = this.workers.length;
    // Spelled from the parent folder so the path also holds from the CLI bundle in dist/src/cli/.
    const w = new Worker(new URL('../repo/object-worker.js', import.meta.url), {
      workerData: { root: this.root, fd: this.dirs.root, table: this.dirs.table },
      // The thread opens files with openat (koffi) and closes them with closeSync: not Node's own fds to track.
      trackUnmanagedFds: false,
    });
    let setReady!: () => void;
    const ready = new Promise<void>((res) => (setReady = res));
    w.once('exit', () => setReady());
    w.once('error', () => setReady());
    w.on('message', (m: ObjectBatchResult | { ready: true }) => {
      if ('ready' in m) {
        setReady();
        return;
      }
      // An idle thread does not keep the process alive (should a caller never close()).
      if (--this.workers[index].outstanding === 0) w.unref();
      this.stats.objectsWritten += m.objectsWritten;
      this.stats.bytesWritten += m.bytesWritten;
      if (m.error !== undefined) this.fail(new IoError(m.error, m.errno));
      const b = this.unfinished.get(m.id);
      // Reused rather than allocated: a fresh 4 MiB buffer per batch is 1,024 page faults, each page
      // zeroed by the kernel (clear_page was 1-4 % of a pull's CPU under perf).
      if (m.data !== undefined && m.data.byteLength === BATCH_BYTES && this.spare.length < MAX_BYTES_IN_FLIGHT / BATCH_BYTES) this.spare.push(m.data);
      if (b && m.digests !== undefined) {
        const digests = Buffer.from(m.digests);
        for (let i = 0; i < b.stored.length; i++) b.stored[i](digests.subarray(i * DIGEST_SIZE, (i + 1) * DIGEST_SIZE));
      }
      if (b) {
        this.bytesInFlight -= b.capacity;
        this.finished(b);
      }
      this.pump();
    });
    // A thread gone answers nothing more: whatever it held is abandoned with the pull.
    const lost = (err: unknown) => {
      this.fail(err);
      for (const b of [...this.unfinished.values()]) this.finished(b);
    };
    w.on('error', (err) => lost(ioError(err, `cannot write objects into ${this.root}`)));
    w.on('exit', (code) => {
      if (code !== 0 && !this.closed) lost(new IoError(`cannot write objects into ${this.root}: the writer thread exited with code ${code}`));
    });
    this.workers.push({ w, outstanding: 0, ready });
  }

  private finished(b: Batch): void {
    this.unfinished.delete(b.id);
    b.finish();
    this.wake();
  }

  private fail(err: unknown): void {
    this.failure ??= err;
    // Nothing more will be written: whoever waits for a batch stops waiting.
    for (const b of this.queue.splice(0)) {
      this.bytesInFlight -= b.capacity;
      this.finished(b);
    }
    this.wake();
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** True when the caller should `await drain()` before handing over more. */
  get busy(): boolean {
    return this.bytesInFlight >= MAX_BYTES_IN_FLIGHT || this.failure !== null;
  }

  /** Wait until few enough bytes are in flight; throws the first write's failure. */
  async drain(): Promise<void> {
    while (this.bytesInFlight >= MAX_BYTES_IN_FLIGHT && this.failure === null) await new Promise<void>((res) => this.waiters.push(res));
    if (this.failure !== null) throw this.failure;
  }

  /** Wait until every file completed so far is written; throws the first write's failure. */
  async flush(): Promise<void> {
    if (this.current !== null) this.seal(this.current);
    const waiting = [...this.unfinished.values()].map((b) => b.done);
    await Promise.all(waiting);
    if (this.failure !== null) throw this.failure;
  }

  /**
   * Make every object written so far durable (one syncfs), on a writer
   * thread: a layer's syncfs waited for the writeback of all three layers'
   * objects so far with the main thread blocked (1.0-1.5 s of a /usr pull),
   * the other layers stalled behind it.
   */
  async sync(): Promise<void> {
    await this.flush();
    let finish!: () => void;
    const done = new Promise<void>((res) => (finish = res));
    const b: Batch = { id: this.nextId++, data: Buffer.alloc(0), capacity: 0, used: 0, open: 0, sealed: true, offsets: [], sizes: [], stored: [], done, finish, sync: true };
    this.unfinished.set(b.id, b);
    this.send(b);
    await done;
    if (this.failure !== null) throw this.failure;
  }

  /** Stop the worker threads (after a flush, or after a failure: what they were writing is abandoned). */
  async close(): Promise<void> {
    this.closed = true;
    // Never terminate a worker still loading its modules: a native addon
    // (koffi) interrupted in its initialisation aborts the whole process.
    await Promise.all(
      this.workers.map(async (s) => {
        await s.ready;
        await s.w.terminate();
      }),
    );
    closeObjectDirs(this.dirs);
  }

  /** @internal Where the object `digest` goes: its `XX/` directory's fd and its name there. */
  placeOf(digest: Buffer): { dir: number; name: string; path: string } {
    const hex = digestToHex(digest);
    return { dir: objectDir(this.dirs, hex), name: hex.slice(2), path: join(this.root, hex.slice(0, 2), hex.slice(2)) };
  }

  /** @internal A new dot-named file of ours in the store's directory. */
  openTemp(what: string): { fd: number; name: string } {
    const name = `.tmp.${process.pid}.${tmpCounter++}`;
    try {
      return { fd: openAt(this.dirs.root, name, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644), name };
    } catch (err) {
      throw ioError(err, `cannot write object ${what}`);
    }
  }

  /** @internal Give the (closed) temporary file its object name, never replacing: false when another writer named it first. */
  name(tmp: string, dest: { dir: number; name: string; path: string }): boolean {
    try {
      if (statAt(dest.dir, dest.name, dest.path) !== null) return false;
      renameAt(this.dirs.root, tmp, dest.dir, dest.name, true, dest.path);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw ioError(err, `cannot write object ${dest.path}`);
    }
  }

  /** @internal Close the temporary file if open, and remove it unless it was renamed. */
  discard(tmp: { fd: number; name: string }, named: boolean): void {
    if (tmp.fd >= 0) closeSync(tmp.fd);
    tmp.fd = -1;
    if (!named) {
      try {
        unlinkAt(this.dirs.root, tmp.name);
      } catch {
        /* already gone */
      }
    }
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
  private received = 0;
  /** Buffered (up to BUFFER_LIMIT): where its bytes go in a batch. */
  private slot: Reservation | null = null;
  /** Streaming (large file): the temporary file and the running hash. */
  private tmp: { fd: number; name: string } | null = null;
  private readonly hasher: FsVerityHasher | null;

  constructor(
    private readonly w: ObjectWriter,
    private readonly size: number,
    private readonly done: (stored: StoredFile) => void,
  ) {
    this.hasher = size > BUFFER_LIMIT ? new FsVerityHasher() : null;
    if (this.hasher) this.tmp = w.openTemp(`of ${size} bytes into ${w.root}`);
    else if (size > 0) this.slot = w.reserve(size);
  }

  write(chunk: Buffer): void {
    const at = this.received;
    this.received += chunk.length;
    if (this.tmp) {
      this.hasher!.update(chunk);
      try {
        writeAll(this.tmp.fd, chunk, `of ${this.size} bytes into ${this.w.root}`);
      } catch (err) {
        this.abort();
        throw err;
      }
    } else {
      if (this.received > this.size) throw new Error(`file of ${this.size} bytes given ${this.received}`);
      chunk.copy(this.slot!.batch.data, this.slot!.offset + at);
    }
  }

  end(): void {
    const size = this.received;
    this.w.stats.bytesHashed += size;
    if (size === 0) {
      this.abort();
      this.done({ size, digest: null, content: null });
      return;
    }
    if (this.slot) {
      const slot = this.slot;
      this.slot = null;
      if (size !== this.size) {
        this.w.release(slot, 0, null);
        this.done({ size, digest: null, content: null });
        return;
      }
      if (size <= INLINE_LIMIT) {
        const content = Buffer.from(slot.batch.data.subarray(slot.offset, slot.offset + size));
        this.w.release(slot, size, null);
        this.done({ size, digest: this.w.hash(content), content });
        return;
      }
      // Hashed and stored by a writer thread; `done` comes when the batch is written.
      this.w.release(slot, size, (digest) => this.done({ size, digest, content: null }));
      return;
    }
    const digest = this.hasher!.digest();
    const tmp = this.tmp!;
    this.tmp = null;
    let named = false;
    try {
      closeSync(tmp.fd);
      tmp.fd = -1;
      named = this.w.name(tmp.name, this.w.placeOf(digest));
    } finally {
      this.w.discard(tmp, named);
    }
    if (named) {
      this.w.stats.objectsWritten++;
      this.w.stats.bytesWritten += size;
    }
    this.done({ size, digest, content: null });
  }

  /** Drop what was received (the import failed). */
  abort(): void {
    if (this.tmp) {
      this.w.discard(this.tmp, false);
      this.tmp = null;
    }
    if (this.slot) {
      this.w.release(this.slot, 0, null);
      this.slot = null;
    }
  }
}
