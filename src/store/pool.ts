/**
 * A pool of worker threads that digest (and, with a store, copy) regular
 * files. The scanner adds files as it finds them; they travel in batches
 * (a few hundred files or a few MiB) to keep messages few, and each worker
 * holds at most a few batches so a big file on one worker does not leave
 * the others idle.
 */
import type { ObjectDirs } from './object-dirs.js';
import { Worker } from 'node:worker_threads';

export interface BatchRequest {
  id: number;
  /** Paths as latin1 strings (one char per byte: any byte survives, and strings clone cheaply). */
  paths: string[];
  sizes: number[];
  /** 1 when the file is small enough to inline: send its content back. */
  inline: Uint8Array;
  /** ctime at scan time: a file whose ctime moved since changed under us. */
  ctimeSec: number[];
  ctimeNsec: number[];
}

export interface JobResult {
  content?: Buffer | Uint8Array | null;
  written?: number;
  error?: string;
  /** The store itself failed (full, read-only): no point going on. */
  fatal?: boolean;
}

export interface BatchResult {
  id: number;
  digests: Uint8Array;
  results: JobResult[];
  bytes: number;
}

export interface FileDone {
  digest: Buffer;
  content: Buffer | null;
  written: number;
}

const BATCH_FILES = 256;
const BATCH_BYTES = 8 << 20;
const MAX_OUTSTANDING = 3;
/** More threads than this only costs memory. */
const MAX_WORKERS = 64;

interface Pending {
  paths: string[];
  sizes: number[];
  inline: number[];
  ctimeSec: number[];
  ctimeNsec: number[];
  tags: number[];
  bytes: number;
}

export class DigestPool {
  private readonly workers: { w: Worker; outstanding: number; ready: Promise<void> }[] = [];
  private readonly queue: { req: BatchRequest; tags: number[] }[] = [];
  private readonly inflight = new Map<number, { tags: number[]; worker: number }>();
  private current: Pending = this.empty();
  private nextId = 0;
  private failure: Error | null = null;
  private idleWaiters: (() => void)[] = [];
  private closing = false;
  filesDone = 0;
  bytesDone = 0;
  /** bytesDone plus what workers reported of the files they are still reading (for progress). */
  bytesProgress = 0;
  private readonly partial: number[] = [];
  objectsWritten = 0;
  bytesWritten = 0;

  /**
   * `onDone(tag, result)` runs on the main thread for each file, with the
   * tag given to `add`.
   */
  private readonly maxWorkers: number;

  constructor(
    threads: number,
    /** The object store's path and its directory fds (ObjectStore.shared()), shared with the threads. */
    private readonly store: { path: string; dirs: ObjectDirs } | null,
    private readonly onDone: (tag: number, r: FileDone) => void,
  ) {
    this.maxWorkers = Math.max(1, Math.min(threads, MAX_WORKERS));
  }

  /** Workers start on demand: a small tree never pays for threads it cannot use. */
  private spawn(): void {
    const i = this.workers.length;
    // Spelled from the parent folder so the path also holds from the CLI bundle in dist/src/cli/.
    const w = new Worker(new URL('../store/worker.js', import.meta.url), {
      workerData: { store: this.store ? { path: this.store.path, fd: this.store.dirs.root, table: this.store.dirs.table } : null },
      // The thread opens object files with openat (koffi) and closes them with closeSync: not Node's own fds to track.
      trackUnmanagedFds: false,
    });
    let setReady!: () => void;
    const ready = new Promise<void>((res) => (setReady = res));
    this.partial.push(0);
    w.once('exit', () => setReady());
    w.once('error', () => setReady());
    w.on('message', (m: BatchResult | { progress: number } | { ready: true }) => {
      if ('ready' in m) setReady();
      else if ('progress' in m) {
        this.partial[i] += m.progress;
        this.bytesProgress += m.progress;
      } else this.onResult(i, m);
    });
    w.on('error', (err) => this.fail(err));
    w.on('exit', (code) => {
      if (code !== 0 && !this.closing) this.fail(new Error(`digest worker exited with code ${code}`));
    });
    this.workers.push({ w, outstanding: 0, ready });
  }

  private empty(): Pending {
    return { paths: [], sizes: [], inline: [], ctimeSec: [], ctimeNsec: [], tags: [], bytes: 0 };
  }

  /** Queue one regular file; `ctimeSec`/`ctimeNsec` as the scan saw them. */
  add(path: Buffer, size: number, inline: boolean, ctimeSec: number, ctimeNsec: number, tag: number): void {
    const c = this.current;
    c.paths.push(path.toString('latin1'));
    c.sizes.push(size);
    c.inline.push(inline ? 1 : 0);
    c.ctimeSec.push(ctimeSec);
    c.ctimeNsec.push(ctimeNsec);
    c.tags.push(tag);
    c.bytes += size;
    if (c.paths.length >= BATCH_FILES || c.bytes >= BATCH_BYTES) this.flush();
  }

  /** Send what has been added so far, even if the batch is not full. */
  flush(): void {
    const c = this.current;
    if (c.paths.length === 0) return;
    this.current = this.empty();
    const req: BatchRequest = { id: this.nextId++, paths: c.paths, sizes: c.sizes, inline: Uint8Array.from(c.inline), ctimeSec: c.ctimeSec, ctimeNsec: c.ctimeNsec };
    this.queue.push({ req, tags: c.tags });
    this.pump();
  }

  private pump(): void {
    while (this.queue.length > 0 && !this.failure) {
      if (this.workers.length < this.maxWorkers && this.workers.every((s) => s.outstanding > 0)) this.spawn();
      let best = -1;
      for (let i = 0; i < this.workers.length; i++) {
        if (this.workers[i].outstanding < MAX_OUTSTANDING && (best < 0 || this.workers[i].outstanding < this.workers[best].outstanding)) best = i;
      }
      if (best < 0) return;
      const { req, tags } = this.queue.shift()!;
      this.workers[best].outstanding++;
      this.inflight.set(req.id, { tags, worker: best });
      this.workers[best].w.postMessage(req);
    }
  }

  private onResult(worker: number, m: BatchResult): void {
    const entry = this.inflight.get(m.id);
    if (!entry) return;
    this.inflight.delete(m.id);
    this.workers[worker].outstanding--;
    const digests = Buffer.from(m.digests.buffer, m.digests.byteOffset, m.digests.byteLength);
    for (let i = 0; i < m.results.length; i++) {
      const r = m.results[i];
      if (r.error) {
        this.fail(new PoolJobError(r.error, r.fatal === true));
        return;
      }
      const written = r.written ?? 0;
      if (written > 0) {
        this.objectsWritten++;
        this.bytesWritten += written;
      }
      this.filesDone++;
      const content = r.content ? Buffer.from(r.content.buffer, r.content.byteOffset, r.content.byteLength) : null;
      this.onDone(entry.tags[i], { digest: Buffer.from(digests.subarray(i * 32, i * 32 + 32)), content, written });
    }
    this.bytesDone += m.bytes;
    this.bytesProgress += m.bytes - this.partial[worker];
    this.partial[worker] = 0;
    this.pump();
    if (this.inflight.size === 0 && this.queue.length === 0) this.wakeIdle();
  }

  private fail(err: Error): void {
    if (!this.failure) this.failure = err;
    this.wakeIdle();
  }

  private wakeIdle(): void {
    const w = this.idleWaiters;
    this.idleWaiters = [];
    for (const f of w) f();
  }

  /** The first error, if any (checked by the scanner between directories). */
  get error(): Error | null {
    return this.failure;
  }

  /** Flush and wait until every file added is done; rejects with the first error. */
  async drain(): Promise<void> {
    this.flush();
    while (!this.failure && (this.inflight.size > 0 || this.queue.length > 0)) {
      await new Promise<void>((res) => this.idleWaiters.push(res));
    }
    if (this.failure) throw this.failure;
  }

  async close(): Promise<void> {
    this.closing = true;
    // Never terminate a worker still loading its modules: a native addon
    // (koffi) interrupted in its initialisation aborts the whole process.
    await Promise.all(
      this.workers.map(async (s) => {
        await s.ready;
        await s.w.terminate();
      }),
    );
  }
}

export class PoolJobError extends Error {
  constructor(message: string, readonly fatal: boolean) {
    super(message);
    this.name = 'PoolJobError';
  }
}
