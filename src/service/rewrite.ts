/**
 * The mount service's image rewrite: the caller's image read with the
 * hardened reader and written again by our writer, so the kernel only ever
 * parses bytes we wrote (rewriteImage), and the same on a thread of its own
 * (rewriteInWorker), so that one caller's image does not stop the service.
 *
 * Reading and writing a large image takes the CPU for a good while (README,
 * Performance, "Mount service"), and a hostile image is built to take as long
 * and as much memory as the reader lets it. On the service's event loop that time would
 * be taken from every other caller (their replies, their hang-ups, their
 * SIGTERM); so each rewrite runs in a worker thread with its own heap:
 *  - a few at once (one per CPU, at most four), the rest wait in a bounded
 *    queue (a count and a total of bytes); past it the request is refused;
 *  - with `idleMs`, a thread that answered waits, warm, for the next
 *    rewrite (a new thread first loads its modules and then runs cold
 *    code), and is ended once unused that long; by default each rewrite has
 *    a new thread, ended after it (a waiting thread holds descriptors of its
 *    own, which a caller counting the process's descriptors would see);
 *  - a time limit: the thread is ended and the image refused;
 *  - a heap limit (resourceLimits): an image whose tree does not fit is
 *    refused, and only its thread dies;
 *  - the image handed over by transferring its memory where the caller may
 *    give it up, and the written image always transferred back, with its
 *    fs-verity digest taken there too.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { readImage, ImageFormatError } from '../erofs/reader.js';
import { writeImageWithInfo, ImageWriteError } from '../erofs/writer.js';
import { fsverityDigest } from '../fsverity/index.js';
import { MountError } from '../mount/errors.js';
import { printable, printableBytes } from '../printable.js';
import { objectPathToDigest } from '../store/layout.js';
import { S_IFBLK, S_IFCHR, S_IFDIR, S_IFMT, S_IFREG, walk, type Inode } from '../tree/model.js';

/** The setuid and setgid bits of a mode. */
const SET_ID_BITS = 0o6000;
const FILE_CAPABILITY = Buffer.from('security.capability');

/** What the rewrite took out of the caller's tree. */
export interface Stripped {
  /** Files whose setuid/setgid bits were cleared. */
  setId: number;
  /** File capabilities (security.capability) dropped. */
  fileCapabilities: number;
}

export interface Rewritten {
  image: Buffer;
  version: number;
  stripped: Stripped;
  /** The fs-verity digest (sha256, hex) of the written image: what the service names it by. */
  digest: string;
}

/** A refusal of the image: one line, "image refused: <reason>" (the service answers it as ImageRefused). */
export class ImageRefusal extends MountError {
  constructor(
    readonly reason: string,
    cause?: unknown,
  ) {
    super(`image refused: ${reason}`, cause === undefined ? undefined : { cause });
  }
}

function imageRefused(why: string, cause?: unknown): ImageRefusal {
  return new ImageRefusal(why, cause);
}

/**
 * The image as our writer writes it: read with the hardened reader, every
 * regular file's redirect an object name, written again. Nothing in it
 * grants privilege, whatever the mount's flags become: a caller who attaches
 * the mount in a user namespace of its own may clear nosuid and nodev there
 * (the kernel locks mount flags only when it copies mounts into such a
 * namespace, not when one is moved in), so setuid/setgid bits and file
 * capabilities are taken out, and device nodes (but overlayfs's 0:0
 * whiteouts) refused. Exported for the service's tests and tools: this is
 * what the kernel gets to parse. Runs on the calling thread: the service
 * uses rewriteInWorker.
 */
export function rewriteImage(image: Buffer): Rewritten {
  let tree;
  try {
    tree = readImage(image);
  } catch (err) {
    if (err instanceof ImageFormatError) throw imageRefused(err.message, err);
    throw imageRefused(`unreadable (${err instanceof Error ? err.message : String(err)})`, err);
  }
  const stripped: Stripped = { setId: 0, fileCapabilities: 0 };
  const seen = new Set<Inode>();
  walk(tree.root, (path, inode) => {
    const shownPath = () => printableBytes(path.length ? path : Buffer.from('/'));
    const type = inode.mode & S_IFMT;
    if ((type === S_IFCHR && inode.rdev !== 0) || type === S_IFBLK) {
      throw imageRefused(`${shownPath()}: a device node (${type === S_IFCHR ? 'character' : 'block'} ${inode.rdev >>> 8 & 0xfff}:${(inode.rdev & 0xff) | (inode.rdev >>> 12 & 0xfff00)})`);
    }
    if (seen.has(inode)) return; // a hard link: done under its first name
    seen.add(inode);
    if (type !== S_IFDIR && (inode.mode & SET_ID_BITS) !== 0) {
      inode.mode &= ~SET_ID_BITS;
      stripped.setId++;
    }
    const kept = inode.xattrs.filter((x) => !x.key.equals(FILE_CAPABILITY));
    if (kept.length !== inode.xattrs.length) {
      inode.xattrs = kept;
      stripped.fileCapabilities++;
    }
    if (type !== S_IFREG || inode.payload === null) return;
    if (objectPathToDigest(inode.payload.toString('latin1')) === null) {
      const shown = printableBytes(inode.payload.subarray(0, 200));
      throw imageRefused(`${shownPath()}: redirect '${shown}' is not an object name (ab/ and 62 or 126 hex digits)`);
    }
  });
  try {
    const written = writeImageWithInfo(tree.root, { minVersion: tree.version });
    return { image: written.image, version: written.version, stripped, digest: fsverityDigest(written.image).toString('hex') };
  } catch (err) {
    if (err instanceof ImageWriteError) throw imageRefused(err.message, err);
    throw err;
  }
}

// ------------------------------------------------------------ on a thread

/** One message to rewrite-worker.ts: an image's bytes (moved or copied into the thread). */
export interface RewriteRequest {
  image: Uint8Array;
}

/** What rewrite-worker.ts answers: the written image's memory (transferred), or why not. */
export type RewriteAnswer =
  | { ok: true; image: ArrayBuffer; offset: number; length: number; version: number; stripped: Stripped; digest: string }
  | { ok: false; refusal: string }
  | { ok: false; failure: string };

export interface RewriteLimits {
  /** Rewrites running at once (default: one per CPU, at most 4). */
  threads?: number;
  /** Rewrites waiting for a thread (default 64); one more is refused. */
  waiting?: number;
  /** Bytes of images waiting for a thread (default 1 GiB); one more image is refused. */
  waitingBytes?: number;
  /** A rewrite's time on its thread, in ms (default 30 s); past it the thread is ended and the image refused. */
  timeLimitMs?: number;
  /**
   * The thread's JavaScript heap, in MiB (default 1024). The tree read from
   * an image takes heap in proportion to its entries, about 1 KiB each: the
   * default takes images of about a million entries.
   */
  heapMb?: number;
  /** How long a thread done with a rewrite waits for the next before it is ended, in ms (default 0: ended at once). */
  idleMs?: number;
}

export interface RewriteInWorkerOptions {
  /**
   * Move the image's memory into the thread instead of copying it: the
   * caller's Buffer is then empty (its memory detached). Only when the Buffer
   * spans its whole ArrayBuffer; else the bytes are copied once.
   */
  transfer?: boolean;
  /**
   * The caller is gone (it hung up): a rewrite still waiting leaves the
   * queue, one running has its thread ended; either rejects (MountError,
   * "image: the rewrite was abandoned: the caller went away").
   */
  signal?: AbortSignal;
}

function abandoned(): MountError {
  return new MountError('image: the rewrite was abandoned: the caller went away');
}

/** Rewrites on threads, a bounded number at once, the rest queued up to a bound. */
export class RewritePool {
  readonly threads: number;
  readonly waitingLimit: number;
  readonly waitingBytesLimit: number;
  readonly timeLimitMs: number;
  readonly heapMb: number;
  private running = 0;
  private readonly queue: Array<{ bytes: number; start: () => void }> = [];
  private queuedBytes = 0;
  /** Threads done with a rewrite, waiting for the next (at most `threads`). */
  private readonly idle: Array<{ worker: Worker; timer: NodeJS.Timeout }> = [];
  private readonly idleMs: number;

  constructor(limits: RewriteLimits = {}) {
    this.threads = Math.max(1, limits.threads ?? Math.min(4, availableParallelism()));
    this.waitingLimit = Math.max(0, limits.waiting ?? 64);
    this.waitingBytesLimit = Math.max(0, limits.waitingBytes ?? 1 << 30);
    this.timeLimitMs = Math.max(1, limits.timeLimitMs ?? 30_000);
    this.heapMb = Math.max(8, limits.heapMb ?? 1024);
    this.idleMs = Math.max(0, limits.idleMs ?? 0);
  }

  /** Threads waiting, warm, for the next rewrite. */
  get idleThreads(): number {
    return this.idle.length;
  }

  /** Rewrites running now, and waiting for a thread. */
  get load(): { running: number; waiting: number } {
    return { running: this.running, waiting: this.queue.length };
  }

  /** rewriteImage(image) on a thread of its own; rejects with a one-line MountError ("image refused: …"). */
  async rewrite(image: Buffer, options: RewriteInWorkerOptions = {}): Promise<Rewritten> {
    if (options.signal?.aborted) throw abandoned();
    await this.slot(image.length, options.signal);
    try {
      return await this.onThread(image, options);
    } finally {
      this.running--;
      const next = this.queue.shift();
      if (next) {
        this.queuedBytes -= next.bytes;
        next.start();
      }
    }
  }

  /** Wait for a free thread (this.running is counted for the caller when it resolves). */
  private slot(bytes: number, signal?: AbortSignal): Promise<void> {
    if (this.running < this.threads) {
      this.running++;
      return Promise.resolve();
    }
    if (this.queue.length >= this.waitingLimit || this.queuedBytes + bytes > this.waitingBytesLimit) {
      return Promise.reject(
        imageRefused(`the service is busy (${this.running} rewrites running, ${this.queue.length} waiting with ${mib(this.queuedBytes)} MiB); try again later`),
      );
    }
    this.queuedBytes += bytes;
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        const at = this.queue.indexOf(waiter);
        if (at < 0) return;
        this.queue.splice(at, 1);
        this.queuedBytes -= bytes;
        reject(abandoned());
      };
      const waiter = {
        bytes,
        start: () => {
          signal?.removeEventListener('abort', onAbort);
          this.running++;
          resolve();
        },
      };
      this.queue.push(waiter);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** A thread for one rewrite: an idle one (warm: its code loaded and compiled), or a new one. */
  private takeThread(): Worker {
    const idle = this.idle.pop();
    if (idle) {
      clearTimeout(idle.timer);
      idle.worker.ref();
      return idle.worker;
    }
    // Spelled from the parent folder so the path also holds from the CLI bundle in dist/src/cli/.
    const worker = new Worker(new URL('../service/rewrite-worker.js', import.meta.url), {
      // Not the parent's node options (a flag for its entry point, --input-type with -e, fails a thread's start), and
      // no warning printed into the service's log. (Its output is not piped: a piped thread keeps the process alive.)
      execArgv: ['--no-warnings'],
      resourceLimits: { maxOldGenerationSizeMb: this.heapMb, maxYoungGenerationSizeMb: Math.min(64, Math.max(4, this.heapMb >> 4)) },
    });
    worker.once('exit', () => {
      const at = this.idle.findIndex((i) => i.worker === worker);
      if (at >= 0) {
        clearTimeout(this.idle[at].timer);
        this.idle.splice(at, 1);
      }
    });
    return worker;
  }

  /** A thread that answered goes back to wait for the next rewrite, ended after a while unused (its heap given back). */
  private giveBack(worker: Worker): void {
    worker.unref();
    const timer = setTimeout(() => void worker.terminate(), this.idleMs);
    timer.unref();
    this.idle.push({ worker, timer });
  }

  private async onThread(image: Buffer, options: RewriteInWorkerOptions): Promise<Rewritten> {
    const whole = image.byteOffset === 0 && image.byteLength === image.buffer.byteLength && !(image.buffer instanceof SharedArrayBuffer);
    let message: RewriteRequest;
    let transferList: ArrayBuffer[] = [];
    if (options.transfer && whole) {
      message = { image: new Uint8Array(image.buffer, 0, image.length) };
      transferList = [image.buffer as ArrayBuffer];
    } else {
      // A view is cloned with its whole ArrayBuffer: an exact copy of the bytes is what crosses, once.
      message = { image: whole ? image : new Uint8Array(image) };
    }
    const limitS = Number((this.timeLimitMs / 1000).toFixed(3));
    const worker = this.takeThread();
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    let onMessage: ((answer: RewriteAnswer) => void) | undefined;
    let onError: ((err: Error & { code?: string }) => void) | undefined;
    let onExit: ((code: number) => void) | undefined;
    let answered = false;
    try {
      const answer = await new Promise<RewriteAnswer>((resolve, reject) => {
        onMessage = (answer) => {
          answered = true;
          resolve(answer);
        };
        onError = (err) => {
          if (err.code === 'ERR_WORKER_OUT_OF_MEMORY') reject(imageRefused(`the rewrite needs more memory than the service gives it (${this.heapMb} MiB of heap)`, err));
          else reject(new MountError(`image: the rewriting thread failed: ${oneLine(err.message)}`, { cause: err }));
        };
        onExit = (code) => reject(new MountError(`image: the rewriting thread ended (exit ${code}) without an answer`));
        worker.on('message', onMessage);
        worker.on('error', onError);
        worker.on('exit', onExit);
        timer = setTimeout(() => reject(imageRefused(`the rewrite took longer than ${limitS} s`)), this.timeLimitMs);
        onAbort = () => reject(abandoned());
        if (options.signal?.aborted) onAbort();
        else options.signal?.addEventListener('abort', onAbort, { once: true });
        worker.postMessage(message, transferList);
      });
      if (!answer.ok) {
        if ('refusal' in answer) throw new ImageRefusal(answer.refusal);
        throw new MountError(`image: the rewrite failed: ${oneLine(answer.failure)}`);
      }
      return { image: Buffer.from(answer.image, answer.offset, answer.length), version: answer.version, stripped: answer.stripped, digest: answer.digest };
    } finally {
      clearTimeout(timer);
      if (onAbort) options.signal?.removeEventListener('abort', onAbort);
      if (onMessage) worker.off('message', onMessage);
      if (onError) worker.off('error', onError);
      if (onExit) worker.off('exit', onExit);
      // A thread that answered may be kept for the next rewrite; one that ran out of time, memory or caller is ended.
      if (answered && this.idleMs > 0 && worker.threadId >= 0) this.giveBack(worker);
      else await worker.terminate();
    }
  }
}

function mib(bytes: number): number {
  return Math.ceil(bytes / (1 << 20));
}

function oneLine(text: string): string {
  return printable(text.split('\n')[0].slice(0, 300));
}

let defaultPool: RewritePool | null = null;

/**
 * rewriteImage(image) on a worker thread of the service's pool: bounded in
 * threads, queue, time and heap (RewritePool's defaults). Rejects with a
 * one-line ImageRefusal ("image refused: <why>") for the image's fault (and
 * for a full queue), a MountError ("image: …") for the thread's.
 */
export function rewriteInWorker(image: Buffer, options: RewriteInWorkerOptions = {}): Promise<Rewritten> {
  defaultPool ??= new RewritePool();
  return defaultPool.rewrite(image, options);
}

/**
 * Set the bounds of rewriteInWorker's pool (before its first rewrite: a pool
 * made with others is replaced, its running rewrites finish as they were).
 * A long-running service sets `idleMs` to keep warm threads.
 */
export function configureRewrites(limits: RewriteLimits): void {
  defaultPool = new RewritePool(limits);
}
