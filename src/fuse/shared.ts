/**
 * What the FUSE server's threads share and tell each other: the options a
 * serving thread is started with, the shared memory (SharedArrayBuffers) and
 * the layout of its control words, and the messages a thread posts to the
 * main thread.
 */

export interface ServerOptions {
  /** Object store directories, searched in order (the basedir= list). */
  basedirs: string[];
  /** Check every object against the digest the image records, and every block read (see verity.ts). */
  verity?: boolean;
  /** Use FUSE passthrough for object files when the kernel grants it ('auto', the default), or never. */
  passthrough?: 'auto' | 'off';
  /** Serving threads, each with one outstanding read of /dev/fuse (default 2; 1 with verity). */
  readers?: number;
  /** Where messages about objects go (verity failures, missing objects). */
  log?: (line: string) => void;
  /**
   * The basedirs opened O_PATH (what serve() hands its threads): objects are
   * opened beneath these for the server's life, whatever becomes of the paths.
   */
  basedirFds?: number[];
}

export interface ServerState {
  /** Whether the INIT handshake has happened, and what it settled. */
  readonly initialised: boolean;
  readonly kernelMinor: number;
  /** null until decided (at INIT and the first OPEN of an object). */
  passthrough: boolean | null;
  passthroughWhy: string;
  readonly requests: number;
}

/** The shared memory of one server: what worker.ts is given. */
export interface SharedState {
  image: SharedArrayBuffer;
  control: SharedArrayBuffer;
  /** The passthrough backing ids (backing-ids.ts). */
  backing: SharedArrayBuffer;
}

/** What a serving thread tells the main thread. */
export type WorkerMessage =
  | { type: 'init'; why: string }
  | { type: 'why'; why: string }
  | { type: 'log'; line: string; thread: number }
  | { type: 'stopped'; error?: string };

/** Threads at most (fuse_readers=N allows 64): each has a word at Control.logAck + its index. */
export const MAX_THREADS = 64;

/**
 * The control words (an Int32Array over a SharedArrayBuffer): what INIT
 * settled, the request count, the read-ahead's two words (read-ahead.ts),
 * and one word per thread on which it waits until its log line is written.
 */
export const Control = { settled: 0, kernelMinor: 1, passthrough: 2, requests: 3, readAhead: 4, logAck: 6 } as const;
export const CONTROL_WORDS = Control.logAck + MAX_THREADS;

/** What INIT settled, in Control.settled. */
const Settled = { notYet: 0, open: 1, noOpen: 2 } as const;

/** ServerState read from and written to the shared control words, so every thread sees the same. */
export class SharedServerState implements ServerState {
  passthroughWhy = 'not negotiated yet';
  constructor(private readonly c: Int32Array) {}

  /** What the INIT handshake settled, for every thread at once. */
  settle(kernelMinor: number, noOpen: boolean): void {
    Atomics.store(this.c, Control.kernelMinor, kernelMinor);
    Atomics.store(this.c, Control.settled, noOpen ? Settled.noOpen : Settled.open);
  }
  get initialised(): boolean {
    return Atomics.load(this.c, Control.settled) !== Settled.notYet;
  }
  /** Whether OPEN is answered ENOSYS (zero-message open): when passthrough is off. */
  get noOpen(): boolean {
    return Atomics.load(this.c, Control.settled) === Settled.noOpen;
  }
  get kernelMinor(): number {
    return Atomics.load(this.c, Control.kernelMinor);
  }
  get passthrough(): boolean | null {
    const v = Atomics.load(this.c, Control.passthrough);
    return v < 0 ? null : v === 1;
  }
  set passthrough(v: boolean | null) {
    Atomics.store(this.c, Control.passthrough, v === null ? -1 : v ? 1 : 0);
  }
  get requests(): number {
    return Atomics.load(this.c, Control.requests);
  }
  countRequest(): void {
    Atomics.add(this.c, Control.requests, 1);
  }
}
