/**
 * Objects written from a stream: file contents arrive in chunks (from a
 * decompressed tar layer) and go into the object store (objects.ts, the one
 * way an object is published) with their fs-verity digest computed from the
 * very bytes written. Nothing is fsync'ed per object: the caller runs
 * `sync()` (one syncfs) before naming anything that refers to the objects.
 *
 * Files of up to INLINE_LIMIT bytes are not stored: their contents go inline
 * into the image, as `mkcomposefs` does. Files up to BUFFER_LIMIT are copied
 * out of the tar stream into a batch buffer, and the full batch is handed
 * (transferred, not copied) to the store's worker threads (pool.ts,
 * worker.ts), which hash and publish its objects with synchronous system
 * calls and hand the digests and the buffer back; larger files stream into
 * an ObjectDraft on the main thread.
 */
import { FsVerityHasher, verityDigestSize, type VerityAlgorithm } from '../fsverity/index.js';
import { IoError, ioError } from '../errors.js';
import { closeObjectDirs, makeObjectDirs, type ObjectDirs } from './object-dirs.js';
import { INLINE_LIMIT, ObjectStore, type ObjectDraft } from './objects.js';
import { Threads } from './pool.js';
import type { ObjectBatch, ObjectBatchResult, SyncRequest } from './worker.js';

/**
 * Files up to this size are buffered and hashed before anything is written:
 * on a /usr layer (most files are small) fewer system calls than streaming
 * every file, and no write at all for content already stored.
 */
const BUFFER_LIMIT = 1 << 20;

/** Where a file's contents go: written in order, then ended (or aborted). */
export interface ObjectSink {
  write(chunk: Buffer): void;
  end(): void;
  /** Drop what was received (the import failed). */
  abort(): void;
}

export interface StoredFile {
  size: number;
  /** fs-verity digest (32 bytes, 64 for SHA-512); null for an empty file. */
  digest: Buffer | null;
  /** Contents of a file of 1..64 bytes, inlined in the image. */
  content: Buffer | null;
}

export interface ObjectWriterStats {
  objectsWritten: number;
  bytesWritten: number;
  bytesHashed: number;
}

/**
 * Why worker threads doing synchronous writes: creating the /usr image's
 * objects from the parsed tars through fs.promises (each open, write and
 * close a hop through libuv's pool, shared with gunzip) or with synchronous
 * calls on the main thread (which then waits for the ext4 journal now and
 * then) were both slower than two threads, the floor of creating those files
 * here (the README has the figures).
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
  /** The store, for the large files streamed on this thread. */
  private readonly store: ObjectStore;
  private readonly threads: Threads;
  private readonly hasher: FsVerityHasher;
  private readonly digestSize: number;
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

  /** `objectsFd`: the store's directory (objects/), `root` its path for messages; objects named by `algorithm`'s digests. */
  constructor(
    objectsFd: number,
    readonly root: string,
    readonly algorithm: VerityAlgorithm = 'sha256',
  ) {
    this.dirs = makeObjectDirs(objectsFd, root);
    this.store = new ObjectStore(root, this.dirs, { algorithm });
    this.hasher = new FsVerityHasher({ algorithm });
    this.digestSize = verityDigestSize(algorithm);
    this.threads = new Threads(WORKERS, 2, { store: { path: root, fd: objectsFd, table: this.dirs.table }, algorithm }, {
      message: (index, m) => this.answered(index, m as ObjectBatchResult),
      // A thread gone answers nothing more: whatever it held is abandoned with the pull.
      failed: (err) => {
        if (this.closed) return;
        this.fail(ioError(err, `cannot write objects into ${this.root}`));
        for (const b of [...this.unfinished.values()]) this.finished(b);
      },
    });
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
      const best = this.threads.free();
      if (best < 0) return;
      const b = this.queue.shift()!;
      if (b.sync) {
        const msg: SyncRequest = { kind: 'sync', id: b.id };
        this.threads.send(best, msg);
      } else {
        const msg: ObjectBatch = { kind: 'objects', id: b.id, offsets: b.offsets, sizes: b.sizes, data: b.data.buffer as ArrayBuffer };
        this.threads.send(best, msg, [msg.data]);
      }
    }
  }

  private answered(index: number, m: ObjectBatchResult): void {
    this.threads.answered(index);
    this.stats.objectsWritten += m.objectsWritten;
    this.stats.bytesWritten += m.bytesWritten;
    if (m.error !== undefined) this.fail(new IoError(m.error, m.errno));
    const b = this.unfinished.get(m.id);
    // Reused rather than allocated: a fresh buffer per batch is a page fault per page, each page
    // zeroed by the kernel.
    if (m.data !== undefined && m.data.byteLength === BATCH_BYTES && this.spare.length < MAX_BYTES_IN_FLIGHT / BATCH_BYTES) this.spare.push(m.data);
    if (b && m.digests !== undefined) {
      const digests = Buffer.from(m.digests);
      for (let i = 0; i < b.stored.length; i++) b.stored[i](digests.subarray(i * this.digestSize, (i + 1) * this.digestSize));
    }
    if (b) {
      this.bytesInFlight -= b.capacity;
      this.finished(b);
    }
    this.pump();
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
   * thread: on the main thread a layer's syncfs waited for the writeback of
   * every layer's objects so far, the other layers stalled behind it.
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
    await this.threads.close();
    closeObjectDirs(this.dirs);
  }

  /** @internal A draft for a large file streamed on this thread. */
  draft(size: number): ObjectDraft {
    return this.store.draft(`of ${size} bytes`);
  }
}

export class FileSink implements ObjectSink {
  private received = 0;
  /** Buffered (up to BUFFER_LIMIT): where its bytes go in a batch. */
  private slot: Reservation | null = null;
  /** Streaming (large file): the object being written. */
  private draft: ObjectDraft | null = null;

  constructor(
    private readonly w: ObjectWriter,
    private readonly size: number,
    private readonly done: (stored: StoredFile) => void,
  ) {
    if (size > BUFFER_LIMIT) this.draft = w.draft(size);
    else if (size > 0) this.slot = w.reserve(size);
  }

  write(chunk: Buffer): void {
    const at = this.received;
    this.received += chunk.length;
    if (this.draft) {
      try {
        this.draft.write(chunk);
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
    const draft = this.draft!;
    this.draft = null;
    const published = draft.commit();
    if (published.written > 0) {
      this.w.stats.objectsWritten++;
      this.w.stats.bytesWritten += published.written;
    }
    this.done({ size, digest: published.digest, content: null });
  }

  /** Drop what was received (the import failed). */
  abort(): void {
    if (this.draft) {
      this.draft.abort();
      this.draft = null;
    }
    if (this.slot) {
      this.w.release(this.slot, 0, null);
      this.slot = null;
    }
  }
}
