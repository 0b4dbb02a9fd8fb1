/**
 * The store's worker threads (worker.ts), one kind for every user: the scan
 * hands them batches of files to digest (and, with a store, copy in), the
 * pull batches of file contents to hash and publish. `Threads` starts them
 * on demand (a small job never pays for threads it cannot use), gives each
 * message to the least busy one with room, and stops them; `DigestPool` is
 * the scan's use of it, `ObjectWriter` (object-writer.ts) the pull's.
 *
 * Scan files travel in batches (a few hundred files or a few MiB) to keep
 * messages few, and each worker holds at most a few batches so a big file on
 * one worker does not leave the others idle.
 */
import type { ObjectDirs } from './object-dirs.js';
import { Worker } from 'node:worker_threads';
import { verityDigestSize, type VerityAlgorithm } from '../fsverity/index.js';
import { threadExecArgv } from '../threads.js';

/** What every thread is started with: the store (its path and directory fds, ObjectStore.shared()), if any. */
export interface WorkerInit {
  store: { path: string; fd: number; table: Int32Array } | null;
  /** The fs-verity algorithm digests are computed with (objects named by). */
  algorithm: VerityAlgorithm;
}

export interface ThreadEvents {
  /** A message from thread `index` (the thread's answers and anything else it sends). */
  message(index: number, m: unknown): void;
  /** A thread failed or exited before `close()`: what it held is lost. */
  failed(err: Error): void;
}

/** Worker threads running worker.ts, each given at most `perThread` messages at a time. */
export class Threads {
  private readonly workers: { w: Worker; outstanding: number; ready: Promise<void> }[] = [];
  private closing = false;

  constructor(
    private readonly max: number,
    private readonly perThread: number,
    private readonly init: WorkerInit,
    private readonly events: ThreadEvents,
  ) {}

  /** A thread with room for one more message (started when every one is busy and more may be), or -1. */
  free(): number {
    if (this.workers.length < this.max && this.workers.every((s) => s.outstanding > 0)) this.spawn();
    let best = -1;
    for (let i = 0; i < this.workers.length; i++) {
      if (this.workers[i].outstanding < this.perThread && (best < 0 || this.workers[i].outstanding < this.workers[best].outstanding)) best = i;
    }
    return best;
  }

  /** Give thread `index` (from `free()`) a message that it will answer. */
  send(index: number, msg: unknown, transfer?: ArrayBuffer[]): void {
    const s = this.workers[index];
    if (s.outstanding++ === 0) s.w.ref();
    s.w.postMessage(msg, transfer);
  }

  /** Thread `index` answered one message. */
  answered(index: number): void {
    // An idle thread does not keep the process alive (should a caller never close()).
    if (--this.workers[index].outstanding === 0) this.workers[index].w.unref();
  }

  private spawn(): void {
    const index = this.workers.length;
    // Spelled from the parent folder so the path also holds from the CLI bundle in dist/src/cli/.
    const w = new Worker(new URL('../store/worker.js', import.meta.url), {
      workerData: this.init,
      execArgv: threadExecArgv(),
      // The thread opens object files with openat (koffi) and closes them with closeSync: not Node's own fds to track.
      trackUnmanagedFds: false,
    });
    let setReady!: () => void;
    const ready = new Promise<void>((res) => (setReady = res));
    w.once('exit', () => setReady());
    w.once('error', () => setReady());
    w.on('message', (m: { ready: true } | unknown) => {
      if (typeof m === 'object' && m !== null && 'ready' in m) setReady();
      else this.events.message(index, m);
    });
    w.on('error', (err) => this.events.failed(err));
    w.on('exit', (code) => {
      if (code !== 0 && !this.closing) this.events.failed(new Error(`the store's worker thread exited with code ${code}`));
    });
    this.workers.push({ w, outstanding: 0, ready });
  }

  /** Stop the threads (what they were doing is abandoned). */
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

export interface BatchRequest {
  kind: 'files';
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
  private readonly threads: Threads;
  private readonly queue: { req: BatchRequest; tags: number[] }[] = [];
  private readonly inflight = new Map<number, { tags: number[]; worker: number }>();
  private current: Pending = this.empty();
  private nextId = 0;
  private failure: Error | null = null;
  private idleWaiters: (() => void)[] = [];
  filesDone = 0;
  bytesDone = 0;
  /** bytesDone plus what workers reported of the files they are still reading (for progress). */
  bytesProgress = 0;
  private readonly partial: number[] = [];
  objectsWritten = 0;
  bytesWritten = 0;
  private readonly digestSize: number;

  /**
   * `onDone(tag, result)` runs on the main thread for each file, with the
   * tag given to `add`.
   */
  constructor(
    threads: number,
    /** The object store's path and its directory fds (ObjectStore.shared()), shared with the threads. */
    store: { path: string; dirs: ObjectDirs } | null,
    private readonly onDone: (tag: number, r: FileDone) => void,
    algorithm: VerityAlgorithm = 'sha256',
  ) {
    this.digestSize = verityDigestSize(algorithm);
    const init: WorkerInit = { store: store ? { path: store.path, fd: store.dirs.root, table: store.dirs.table } : null, algorithm };
    this.threads = new Threads(Math.max(1, Math.min(threads, MAX_WORKERS)), MAX_OUTSTANDING, init, {
      message: (i, m) => {
        const msg = m as BatchResult | { progress: number };
        if ('progress' in msg) {
          this.partial[i] = (this.partial[i] ?? 0) + msg.progress;
          this.bytesProgress += msg.progress;
        } else this.onResult(i, msg);
      },
      failed: (err) => this.fail(err),
    });
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
    const req: BatchRequest = { kind: 'files', id: this.nextId++, paths: c.paths, sizes: c.sizes, inline: Uint8Array.from(c.inline), ctimeSec: c.ctimeSec, ctimeNsec: c.ctimeNsec };
    this.queue.push({ req, tags: c.tags });
    this.pump();
  }

  private pump(): void {
    while (this.queue.length > 0 && !this.failure) {
      const best = this.threads.free();
      if (best < 0) return;
      const { req, tags } = this.queue.shift()!;
      this.inflight.set(req.id, { tags, worker: best });
      this.threads.send(best, req);
    }
  }

  private onResult(worker: number, m: BatchResult): void {
    const entry = this.inflight.get(m.id);
    if (!entry) return;
    this.inflight.delete(m.id);
    this.threads.answered(worker);
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
      this.onDone(entry.tags[i], { digest: Buffer.from(digests.subarray(i * this.digestSize, (i + 1) * this.digestSize)), content, written });
    }
    this.bytesDone += m.bytes;
    this.bytesProgress += m.bytes - (this.partial[worker] ?? 0);
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
    await this.threads.close();
  }
}

export class PoolJobError extends Error {
  constructor(message: string, readonly fatal: boolean) {
    super(message);
    this.name = 'PoolJobError';
  }
}
