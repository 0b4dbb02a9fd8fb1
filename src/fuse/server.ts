/**
 * A read-only FUSE server for a composefs image, speaking the kernel
 * protocol over an open /dev/fuse descriptor: no libfuse, no native addon.
 *
 * Concurrency: requests are served on worker threads (worker.ts running
 * dispatch.ts), each in a loop of blocking reads of /dev/fuse and
 * synchronous answers, so the kernel hands a request straight to a waiting
 * thread and the thread that read it answers it: no trip through libuv's
 * thread pool and the main thread's event loop, and a slow disk read holds
 * up only the thread that does it. This is the supervisor: on the main
 * thread it starts the serving threads, relays their log lines, and settles
 * when they have all stopped.
 *
 * What the threads share lives in SharedArrayBuffers (shared.ts): the image
 * bytes, what INIT settled, and the passthrough backing ids (backing-ids.ts).
 * Each thread keeps its own open object files (objects.ts). With
 * `-o verity` one thread serves.
 */
import { closeSync, constants as fsc, openSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import type { ImageView } from './image.js';
import { BackingIdTable } from './backing-ids.js';
import { CONTROL_WORDS, Control, MAX_THREADS, SharedServerState, type ServerOptions, type ServerState, type SharedState, type WorkerMessage } from './shared.js';
import { O_PATH } from '../sys/openat2.js';
import { threadExecArgv } from '../threads.js';

export type { ServerOptions, ServerState, SharedState, WorkerMessage } from './shared.js';

/** Inodes open with passthrough at once (entries of the backing id table). */
const BACKING_SLOTS = 1 << 16;

export class FuseServer {
  readonly state: ServerState;
  private readonly readers: number;
  private readonly log: (line: string) => void;
  private readonly control: Int32Array;
  private readonly shared: Omit<SharedState, 'image'>;
  /** The stores, opened once: O_PATH directories every object is opened beneath. */
  private readonly basedirFds: number[];
  private initWaiters: Array<() => void> = [];

  /** `new FuseServer(fd, image, opts)`, then serve(). */
  constructor(
    private readonly fd: number,
    readonly image: ImageView,
    private readonly opts: ServerOptions,
  ) {
    this.readers = opts.verity ? 1 : Math.min(MAX_THREADS, Math.max(1, opts.readers ?? 2));
    this.log = opts.log ?? (() => {});
    this.shared = { control: new SharedArrayBuffer(CONTROL_WORDS * 4), backing: BackingIdTable.allocate(BACKING_SLOTS) };
    this.control = new Int32Array(this.shared.control);
    this.state = new SharedServerState(this.control);
    this.state.passthrough = null;
    this.basedirFds = opts.basedirFds ?? openBasedirs(opts.basedirs);
  }

  /**
   * Serve until the file system is unmounted (or the connection aborted): on
   * `readers` worker threads, each running a ServingThread (worker.ts).
   * Resolves when every thread has stopped.
   */
  serve(): Promise<void> {
    const image = new SharedArrayBuffer(this.image.buf.length);
    Buffer.from(image).set(this.image.buf);
    const shared: SharedState = { ...this.shared, image };
    const { log: _log, ...rest } = this.opts;
    const workerOpts: ServerOptions = { ...rest, basedirFds: this.basedirFds, readers: this.readers };
    const closeBasedirs = () => {
      if (this.opts.basedirFds) return; // the caller's
      for (const fd of this.basedirFds.splice(0)) closeQuiet(fd);
    };
    return new Promise<void>((resolve, reject) => {
      let running = this.readers;
      let firstError: Error | undefined;
      const ended = (err?: Error) => {
        firstError ??= err;
        if (--running > 0) return;
        for (const w of this.initWaiters.splice(0)) w();
        closeBasedirs();
        if (firstError) reject(firstError);
        else resolve();
      };
      for (let i = 0; i < this.readers; i++) {
        // Spelled from the parent folder so the path also holds from the CLI bundle in dist/src/cli/.
        const w = new Worker(new URL('../fuse/worker.js', import.meta.url), { workerData: { fd: this.fd, shared, opts: workerOpts, thread: i }, execArgv: threadExecArgv() });
        let stopError: Error | undefined;
        w.on('message', (m: WorkerMessage) => {
          if (m.type === 'log') this.relayLog(m.thread, m.line);
          else if (m.type === 'init' || m.type === 'why') {
            this.state.passthroughWhy = m.why;
            if (m.type === 'init') for (const r of this.initWaiters.splice(0)) r();
          } else if (m.type === 'stopped' && m.error) stopError = new Error(m.error);
        });
        w.on('error', (err) => {
          this.log(`internal error: ${err.message}`);
          stopError ??= err;
        });
        w.on('exit', () => ended(stopError));
      }
    });
  }

  /** Write a serving thread's log line, then let the thread go on (it waits: see worker.ts). */
  private relayLog(thread: number, line: string): void {
    try {
      this.log(line);
    } finally {
      Atomics.store(this.control, Control.logAck + thread, 1);
      Atomics.notify(this.control, Control.logAck + thread);
    }
  }

  /** Resolves after the kernel's INIT has been answered (or the server stopped before). */
  initialised(): Promise<void> {
    if (this.state.initialised) return Promise.resolve();
    return new Promise((resolve) => this.initWaiters.push(resolve));
  }
}

function openBasedirs(dirs: string[]): number[] {
  const fds: number[] = [];
  try {
    for (const dir of dirs) fds.push(openSync(dir, O_PATH | fsc.O_DIRECTORY));
  } catch (e) {
    for (const fd of fds) closeQuiet(fd);
    throw e;
  }
  return fds;
}

function closeQuiet(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    /* already closed */
  }
}
