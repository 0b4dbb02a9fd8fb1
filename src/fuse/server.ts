/**
 * A read-only FUSE server for a composefs image, speaking the kernel
 * protocol over an open /dev/fuse descriptor: no libfuse, no native addon.
 *
 * Concurrency: requests are served on worker threads (worker.ts), each in a
 * loop of blocking reads of /dev/fuse and synchronous answers, so the kernel
 * hands a request straight to a waiting thread and the thread that read it
 * answers it: no trip through libuv's thread pool and the main thread's
 * event loop. Reading every file of /usr/share once (53,629 entries,
 * 556 MB, cold caches; the two designs alternated, three runs each) took
 * 7.1-8.5 s with two reads outstanding in the thread pool and answers on
 * the main thread, 6.1-6.4 s with two serving threads; with passthrough
 * 8.2-8.8 s and 6.0-6.5 s. A slow disk read now holds up only the thread
 * that does it. The main thread only starts the threads and relays their
 * log lines.
 *
 * What the threads share lives in SharedArrayBuffers: the image bytes, what
 * INIT settled, and the passthrough backing ids (the kernel wants one id per
 * inode however many times it is open, whichever thread answers the OPEN).
 * Each thread keeps its own open object files. With `-o verity` one thread
 * serves: an object's Merkle leaves are that thread's, and a block read is
 * checked against the leaves measured when the object was first served.
 *
 * Node ids are derived from the image (nid + 2; the root is 1), so the
 * server keeps no table of looked-up inodes and FORGET costs nothing.
 */
import { closeSync, constants as fsc, fstatSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { constants as osConstants } from 'node:os';
import { ImageView, objectPath, type Data, type Ino } from './image.js';
import { ImageFormatError } from '../erofs/header.js';
import { S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from '../tree/model.js';
import * as P from './protocol.js';
import { checkBlocks, measureSync, BLOCK } from './verity.js';
import { backingClose, backingOpen } from '../sys/fuse.js';
import { readAhead } from '../sys/readahead.js';
import { closeFd, O_PATH, openBeneath } from '../sys/openat2.js';
import { escapeField } from '../dumpfile/escape.js';

const E = osConstants.errno;
/** Names and attributes never change: the kernel may cache them for a year. */
const VALID = 365 * 24 * 3600;
/** Largest READ we let the kernel send (FUSE_MAX_PAGES pages of 4 KiB): 1 MiB. */
const MAX_PAGES = 256;
const MAX_READ = MAX_PAGES * 4096;
/** Each read of /dev/fuse needs room for the largest request: with max_write at 4 KiB, 8 KiB is the kernel's minimum. */
const REQUEST_BUFFER = 16 * 1024;
/** Object files kept open for READs (they are opened on first READ when OPEN is skipped). */
const OPEN_OBJECTS = 512;
/**
 * Reading ahead in image order: when the objects are opened in the order the
 * image stores their inodes (a directory's files one after another, as a
 * walk that reads every file goes), the objects of the next PREFETCH files
 * are opened and their first PREFETCH_BYTES asked for with readahead(2), so
 * their disk reads overlap instead of queueing behind one another. Objects
 * opened in any other order start nothing. Reading every file of /usr/share
 * once, cold caches, medians of 4 rounds side by side (npm run bench):
 * 8.44 s -> 4.79 s without passthrough, 8.16 s -> 5.35 s with it; with
 * verity (where the objects are only read ahead, measured when first read)
 * 8.7-8.9 s -> 6.4 s. CFS_FUSE_PREFETCH=0 turns it off (for measuring).
 */
const PREFETCH = Number(process.env.CFS_FUSE_PREFETCH ?? 8) || 0;
const PREFETCH_BYTES = 128 * 1024;
/** Inodes looked at, at most, to find the next object file (directories, symlinks and inline files between). */
const PREFETCH_SCAN = 16;

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

/** Non-blocking, so a FIFO or device planted in a store cannot hold a serving thread; the type is checked after. */
const OBJECT_OPEN = fsc.O_RDONLY | fsc.O_NONBLOCK | fsc.O_NOCTTY;

/** Bytes from an image or a store as one printable word for a log line (the dump format's escapes). */
function shown(b: Buffer): string {
  return escapeField(b);
}

export interface ServerState {
  /** Whether the INIT handshake has happened, and what it settled. */
  initialised: boolean;
  kernelMinor: number;
  /** null until decided (at INIT and the first OPEN of an object). */
  passthrough: boolean | null;
  passthroughWhy: string;
  requests: number;
}

interface ObjectFile {
  fd: number;
  size: number;
  /** Verity: the object's Merkle leaves once measured and matching, or the errno every READ of it gets. */
  verified: Buffer | number | null;
}

/**
 * What the serving threads share (Int32Array over a SharedArrayBuffer): a
 * lock, what INIT settled, and the table of passthrough backing ids.
 */
const C = { lock: 0, initialised: 1, kernelMinor: 2, noOpen: 3, passthrough: 4, requests: 5, nextObject: 6, prefetchedTo: 7, logAck: 8 } as const;
/** Threads at most (fuse_readers=N allows 64): each has a word at logAck + its index. */
const MAX_THREADS = 64;
const CONTROL_WORDS = C.logAck + MAX_THREADS;
/** Open-addressed table of (nid + 1, backing id, users): inodes open with passthrough at once. */
const BACKING_SLOTS = 1 << 16;

/** The shared memory of one server: what worker.ts is given. */
export interface SharedState {
  image: SharedArrayBuffer;
  control: SharedArrayBuffer;
  backing: SharedArrayBuffer;
}

/** What a serving thread tells the main thread. */
export type WorkerMessage =
  | { type: 'init'; why: string }
  | { type: 'why'; why: string }
  | { type: 'log'; line: string; thread: number }
  | { type: 'stopped'; error?: string };

class ReplyError extends Error {
  constructor(readonly errno: number) {
    super(`errno ${errno}`);
  }
}

function hasCapSysAdminInInitNs(): { ok: boolean; why: string } {
  try {
    const status = readFileSync('/proc/self/status', 'utf8');
    const capEff = /CapEff:\s*([0-9a-f]+)/.exec(status)?.[1];
    const effective = capEff ? (BigInt(`0x${capEff}`) >> 21n) & 1n : 0n;
    if (effective !== 1n) return { ok: false, why: 'the server lacks CAP_SYS_ADMIN, which FUSE_DEV_IOC_BACKING_OPEN requires' };
    const uidMap = readFileSync('/proc/self/uid_map', 'utf8').trim().split(/\s+/);
    if (!(uidMap[0] === '0' && uidMap[1] === '0' && uidMap[2] === '4294967295')) {
      return { ok: false, why: 'the server runs in a user namespace: FUSE_DEV_IOC_BACKING_OPEN requires CAP_SYS_ADMIN in the initial one' };
    }
    return { ok: true, why: 'granted' };
  } catch {
    return { ok: false, why: 'could not read /proc/self/status' };
  }
}

/** ServerState read from and written to the shared control words, so every thread sees the same. */
class SharedServerState implements ServerState {
  passthroughWhy = 'not negotiated yet';
  constructor(private readonly c: Int32Array) {}
  get initialised(): boolean {
    return Atomics.load(this.c, C.initialised) === 1;
  }
  set initialised(v: boolean) {
    Atomics.store(this.c, C.initialised, v ? 1 : 0);
  }
  get kernelMinor(): number {
    return Atomics.load(this.c, C.kernelMinor);
  }
  set kernelMinor(v: number) {
    Atomics.store(this.c, C.kernelMinor, v);
  }
  get passthrough(): boolean | null {
    const v = Atomics.load(this.c, C.passthrough);
    return v < 0 ? null : v === 1;
  }
  set passthrough(v: boolean | null) {
    Atomics.store(this.c, C.passthrough, v === null ? -1 : v ? 1 : 0);
  }
  get requests(): number {
    return Atomics.load(this.c, C.requests);
  }
  set requests(v: number) {
    Atomics.store(this.c, C.requests, v);
  }
}

export class FuseServer {
  readonly state: ServerState;
  private readonly basedirs: string[];
  private readonly verity: boolean;
  private readonly wantPassthrough: boolean;
  private readonly readers: number;
  private readonly log: (line: string) => void;
  private readonly reply = Buffer.allocUnsafeSlow(P.OUT_HEADER_SIZE + MAX_READ);
  private readonly data = Buffer.allocUnsafeSlow(P.OUT_HEADER_SIZE + MAX_READ + 2 * BLOCK);
  private readonly objects = new Map<number, ObjectFile>();
  private readonly shared: SharedState;
  private readonly control: Int32Array;
  private readonly backing: Int32Array;
  /** In a serving thread: where its messages go. On the main thread: null. */
  private readonly post: ((m: WorkerMessage) => void) | null;
  private stopped = false;
  private stopError: Error | undefined;
  private initWaiters: Array<() => void> = [];

  /**
   * On the main thread: `new FuseServer(fd, image, opts)`, then serve().
   * worker.ts makes one per serving thread with the shared memory and a way
   * to post messages back.
   */
  constructor(
    private readonly fd: number,
    readonly image: ImageView,
    private readonly opts: ServerOptions,
    worker?: { shared: SharedState; post: (m: WorkerMessage) => void; thread: number },
  ) {
    this.basedirs = opts.basedirs;
    this.verity = opts.verity ?? false;
    this.wantPassthrough = (opts.passthrough ?? 'auto') === 'auto' && !this.verity;
    this.readers = this.verity ? 1 : Math.min(MAX_THREADS, Math.max(1, opts.readers ?? 2));
    this.log = worker ? (line) => this.logFromThread(worker.thread, line) : opts.log ?? (() => {});
    this.post = worker?.post ?? null;
    this.shared = worker?.shared ?? {
      image: new SharedArrayBuffer(0),
      control: new SharedArrayBuffer(CONTROL_WORDS * 4),
      backing: new SharedArrayBuffer(worker ? 0 : BACKING_SLOTS * 3 * 4),
    };
    this.control = new Int32Array(this.shared.control);
    this.backing = new Int32Array(this.shared.backing);
    this.state = new SharedServerState(this.control);
    if (!worker) this.state.passthrough = null;
    this.basedirFds = opts.basedirFds ?? (worker ? [] : this.openBasedirs());
  }

  /** The stores, opened once: O_PATH directories every object is opened beneath. */
  private readonly basedirFds: number[];

  private openBasedirs(): number[] {
    const fds: number[] = [];
    try {
      for (const dir of this.basedirs) fds.push(openSync(dir, O_PATH | fsc.O_DIRECTORY));
    } catch (e) {
      for (const fd of fds) closeQuiet(fd);
      throw e;
    }
    return fds;
  }

  /**
   * Serve until the file system is unmounted (or the connection aborted): on
   * `readers` worker threads, each running serveHere() (worker.ts). Resolves
   * when every thread has stopped.
   */
  serve(): Promise<void> {
    const image = new SharedArrayBuffer(this.image.buf.length);
    Buffer.from(image).set(this.image.buf);
    const shared: SharedState = { ...this.shared, image };
    const { log: _log, ...rest } = this.opts;
    const workerOpts: ServerOptions = { ...rest, basedirFds: this.basedirFds };
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
        const w = new Worker(new URL('../fuse/worker.js', import.meta.url), { workerData: { fd: this.fd, shared, opts: { ...workerOpts, readers: this.readers }, thread: i } });
        let stopError: Error | undefined;
        w.on('message', (m: WorkerMessage) => {
          if (m.type === 'log') {
            try {
              this.log(m.line);
            } finally {
              Atomics.store(this.control, C.logAck + m.thread, 1);
              Atomics.notify(this.control, C.logAck + m.thread);
            }
          } else if (m.type === 'init' || m.type === 'why') {
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

  /**
   * A serving thread's log line is written by the main thread; the thread
   * waits until it is (at most a second), so the line is there before the
   * answer that it explains reaches the kernel.
   */
  private logFromThread(thread: number, line: string): void {
    const c = this.control;
    Atomics.store(c, C.logAck + thread, 0);
    this.post!({ type: 'log', line, thread });
    Atomics.wait(c, C.logAck + thread, 0, 1000);
  }

  /** Resolves after the kernel's INIT has been answered (or the server stopped before). */
  initialised(): Promise<void> {
    if (this.state.initialised) return Promise.resolve();
    return new Promise((resolve) => this.initWaiters.push(resolve));
  }

  private stop(err?: Error): void {
    if (this.stopped) return;
    this.stopped = true;
    this.stopError ??= err;
  }

  /**
   * One serving thread's loop: a blocking read of /dev/fuse, the answer,
   * again, until the connection ends. Returns the error that stopped it, if
   * any but the end of the mount.
   */
  serveHere(): Error | undefined {
    const buf = Buffer.allocUnsafeSlow(REQUEST_BUFFER);
    while (!this.stopped) {
      let n: number;
      try {
        n = readSync(this.fd, buf, 0, buf.length, null);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        // ENOENT: the request was interrupted before we got it; EINTR/EAGAIN: try again.
        if (code === 'ENOENT' || code === 'EINTR' || code === 'EAGAIN') continue;
        // ENODEV: unmounted (or the connection aborted).
        this.stop(code === 'ENODEV' ? undefined : (err as Error));
        break;
      }
      if (n === 0) break;
      try {
        this.dispatch(buf, n);
        // After the answer: the kernel's next request meanwhile goes to another thread.
        if (this.prefetchAfter !== null) this.prefetch();
      } catch (e) {
        this.log(`internal error: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
    for (const o of this.objects.values()) closeFd(o.fd);
    this.objects.clear();
    return this.stopError;
  }

  /**
   * Write one answer. Only a connection that is gone (ENODEV) stops the
   * thread: an answer the kernel refuses (EINVAL: too long for the request)
   * concerns that request alone, which the kernel then fails itself, and
   * ENOENT means the request was interrupted meanwhile.
   */
  private send(len: number, buf: Buffer = this.reply, at = 0): void {
    try {
      writeSync(this.fd, buf, at, len);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENODEV') this.stop();
      else if (code !== 'ENOENT') this.log(`reply of ${len} bytes refused by the kernel: ${code ?? String(e)}`);
    }
  }

  private error(unique: number, errno: number): void {
    P.writeOutHeader(this.reply, 0, P.OUT_HEADER_SIZE, -errno, unique);
    this.send(P.OUT_HEADER_SIZE);
  }

  /** Answer with the body already written at reply[16, 16+bodyLen). */
  private ok(unique: number, bodyLen: number): void {
    P.writeOutHeader(this.reply, 0, P.OUT_HEADER_SIZE + bodyLen, 0, unique);
    this.send(P.OUT_HEADER_SIZE + bodyLen);
  }

  private nidOf(nodeid: number): number {
    return nodeid === P.FUSE_ROOT_ID ? this.image.rootNid : nodeid - 2;
  }

  private nodeidOf(nid: number): number {
    return nid === this.image.rootNid ? P.FUSE_ROOT_ID : nid + 2;
  }

  private attrOf(ino: Ino): P.Attr {
    const type = ino.mode & S_IFMT;
    const hasBlocks = type === S_IFREG || type === S_IFDIR || type === S_IFLNK;
    return {
      ino: ino.nid,
      size: ino.size,
      blocks: hasBlocks ? Math.ceil(ino.size / 4096) * 8 : 0,
      mtimeSec: ino.mtimeSec,
      mtimeNsec: ino.mtimeNsec,
      mode: ino.mode,
      nlink: ino.nlink,
      uid: ino.uid,
      gid: ino.gid,
      rdev: this.image.rdev(ino),
    };
  }

  private dispatch(buf: Buffer, n: number): void {
    Atomics.add(this.control, C.requests, 1);
    const opcode = buf.readUInt32LE(P.IH.opcode);
    const unique = P.getU64(buf, P.IH.unique);
    const nodeid = P.getU64(buf, P.IH.nodeid);
    const body = P.IN_HEADER_SIZE;
    const end = Math.min(n, buf.readUInt32LE(P.IH.len));
    if (P.NO_REPLY_OPS.has(opcode)) return; // FORGET, BATCH_FORGET: node ids are stateless; INTERRUPT: answers are quick
    try {
      switch (opcode) {
        case P.Op.INIT:
          return this.init(buf, unique);
        case P.Op.DESTROY:
          this.ok(unique, 0);
          return this.stop();
        case P.Op.LOOKUP:
          return this.lookup(unique, nodeid, cString(buf, body, end));
        case P.Op.GETATTR: {
          const ino = this.image.inode(this.nidOf(nodeid));
          const r = this.reply;
          P.putU64(r, 16, VALID);
          r.writeUInt32LE(0, 24);
          r.writeUInt32LE(0, 28);
          P.writeAttr(r, 32, this.attrOf(ino));
          return this.ok(unique, P.ATTR_OUT_SIZE);
        }
        case P.Op.READLINK: {
          const ino = this.image.inode(this.nidOf(nodeid));
          if ((ino.mode & S_IFMT) !== S_IFLNK) return this.error(unique, E.EINVAL);
          const target = this.image.symlinkTarget(ino);
          target.copy(this.reply, 16);
          return this.ok(unique, target.length);
        }
        case P.Op.OPEN:
          return this.open(unique, nodeid);
        case P.Op.RELEASE:
          return this.release(unique, P.getU64(buf, body + P.ReleaseIn.fh));
        case P.Op.OPENDIR:
          // The kernel offers zero-message opendir: ENOSYS says we need none, and the kernel
          // then caches directory contents as if we had answered FOPEN_CACHE_DIR|FOPEN_KEEP_CACHE
          // (fuse_do_open's default for no-open, fs/fuse/file.c; measured). Answering OPENDIR with those
          // flags costs an OPENDIR and a RELEASEDIR per directory opened, for the same cache.
          // Measured, `find MNT -printf '%s %m %u\n'` over /usr/share (53,629 entries, 3,240
          // directories), 3 runs each on a loaded 2-core VM: a second (warm) walk sends 1 request
          // with ENOSYS against 6,535 with the reply, 370-720 ms against 505-1,124 ms; a cold
          // walk 6,654 requests against 13,187, 925-1,414 ms against 1,070-1,350 ms.
          return this.error(unique, E.ENOSYS);
        case P.Op.RELEASEDIR:
          return this.ok(unique, 0);
        case P.Op.READ:
          return this.read(unique, nodeid, P.getU64(buf, body + P.ReadIn.offset), buf.readUInt32LE(body + P.ReadIn.size));
        case P.Op.READDIR:
        case P.Op.READDIRPLUS:
          return this.readdir(unique, nodeid, P.getU64(buf, body + P.ReadIn.offset), buf.readUInt32LE(body + P.ReadIn.size), opcode === P.Op.READDIRPLUS);
        case P.Op.GETXATTR:
          return this.getxattr(unique, nodeid, buf.readUInt32LE(body), cString(buf, body + 8, end));
        case P.Op.LISTXATTR:
          return this.listxattr(unique, nodeid, buf.readUInt32LE(body), buf.readUInt32LE(P.IH.uid));
        case P.Op.STATFS:
          return this.statfs(unique);
        case P.Op.ACCESS:
          // default_permissions: the kernel checks modes itself and does not ask; anything that does ask may.
          return this.ok(unique, 0);
        default:
          return this.error(unique, P.WRITE_OPS.has(opcode) ? E.EROFS : E.ENOSYS);
      }
    } catch (e) {
      if (e instanceof ImageFormatError) {
        this.log(`image: ${e.message}`);
        return this.error(unique, E.EIO);
      }
      if (e instanceof ReplyError) return this.error(unique, e.errno);
      // A defect of ours: still answered, or the caller would wait for ever.
      this.log(`internal error: ${e instanceof Error ? e.message : String(e)}`);
      return this.error(unique, E.EIO);
    }
  }

  private init(buf: Buffer, unique: number): void {
    const body = P.IN_HEADER_SIZE;
    const major = buf.readUInt32LE(body + P.InitIn.major);
    const minor = buf.readUInt32LE(body + P.InitIn.minor);
    const r = this.reply;
    r.fill(0, 0, P.OUT_HEADER_SIZE + P.INIT_OUT_SIZE);
    if (major !== P.FUSE_KERNEL_VERSION) {
      // Tell the kernel our major; it retries or gives up.
      r.writeUInt32LE(P.FUSE_KERNEL_VERSION, 16);
      r.writeUInt32LE(P.FUSE_OUR_MINOR, 20);
      return this.ok(unique, 8);
    }
    const maxReadahead = buf.readUInt32LE(body + P.InitIn.maxReadahead);
    const kflags = buf.readUInt32LE(body + P.InitIn.flags);
    const kflags2 = kflags & P.Init.INIT_EXT ? buf.readUInt32LE(body + P.InitIn.flags2) : 0;
    let want =
      P.Init.ASYNC_READ | P.Init.PARALLEL_DIROPS | P.Init.DO_READDIRPLUS | P.Init.CACHE_SYMLINKS | P.Init.MAX_PAGES | P.Init.POSIX_ACL | P.Init.INIT_EXT;
    let want2 = 0;
    let passthroughWhy = '';
    if (!this.wantPassthrough) passthroughWhy = this.verity ? 'off: -o verity checks every block in the server' : 'off: not wanted (passthrough=off)';
    else if (!(kflags2 & P.Init.PASSTHROUGH_HI)) passthroughWhy = 'off: this kernel does not offer FUSE passthrough';
    else {
      const cap = hasCapSysAdminInInitNs();
      if (cap.ok) want2 |= P.Init.PASSTHROUGH_HI;
      else passthroughWhy = `off: ${cap.why}`;
    }
    want &= kflags;
    want2 &= kflags2;
    this.state.kernelMinor = minor;
    this.state.passthrough = want2 & P.Init.PASSTHROUGH_HI ? null : false;
    this.state.passthroughWhy = this.state.passthrough === false ? passthroughWhy : 'negotiated; on once the first object is opened';
    this.noOpen = (kflags & P.Init.NO_OPEN_SUPPORT) !== 0 && this.state.passthrough === false;
    // Settled before the answer goes: the kernel sends nothing else to any thread until it has it.
    this.state.initialised = true;
    const o = 16;
    r.writeUInt32LE(P.FUSE_KERNEL_VERSION, o + 0);
    r.writeUInt32LE(Math.min(minor, P.FUSE_OUR_MINOR), o + 4);
    r.writeUInt32LE(maxReadahead, o + 8);
    r.writeUInt32LE(want >>> 0, o + 12);
    r.writeUInt16LE(64, o + 16); // max_background
    r.writeUInt16LE(48, o + 18); // congestion_threshold
    r.writeUInt32LE(4096, o + 20); // max_write: nothing is ever written
    r.writeUInt32LE(1, o + 24); // time_gran: nanoseconds
    r.writeUInt16LE(MAX_PAGES, o + 28);
    r.writeUInt16LE(0, o + 30);
    r.writeUInt32LE(want2 >>> 0, o + 32);
    r.writeUInt32LE(want2 & P.Init.PASSTHROUGH_HI ? P.MAX_STACK_DEPTH : 0, o + 36);
    this.ok(unique, P.INIT_OUT_SIZE);
    this.post?.({ type: 'init', why: this.state.passthroughWhy });
  }

  /** Whether OPEN is answered ENOSYS (zero-message open): when passthrough is off. */
  private get noOpen(): boolean {
    return Atomics.load(this.control, C.noOpen) === 1;
  }
  private set noOpen(v: boolean) {
    Atomics.store(this.control, C.noOpen, v ? 1 : 0);
  }

  private dir(nodeid: number): Ino {
    const dir = this.image.inode(this.nidOf(nodeid));
    if ((dir.mode & S_IFMT) !== S_IFDIR) throw new ReplyError(E.ENOTDIR);
    return dir;
  }

  private lookup(unique: number, parent: number, name: Buffer): void {
    const dir = this.dir(parent);
    const e = name.length > 255 ? null : this.image.lookup(dir, name);
    const r = this.reply;
    if (e !== null) {
      const ino = this.image.inode(e.nid);
      if (!this.image.isWhiteout(ino)) {
        P.writeEntry(r, 16, this.nodeidOf(e.nid), VALID, this.attrOf(ino));
        return this.ok(unique, P.ENTRY_OUT_SIZE);
      }
    }
    // A negative entry, cached as long as the positive ones: the image never changes.
    r.fill(0, 16, 16 + P.ENTRY_OUT_SIZE);
    P.putU64(r, 16 + 16, VALID);
    return this.ok(unique, P.ENTRY_OUT_SIZE);
  }

  private readdir(unique: number, nodeid: number, offset: number, size: number, plus: boolean): void {
    const dir = this.dir(nodeid);
    const r = this.reply;
    const limit = Math.min(size, r.length - 16);
    let len = 0;
    this.image.readdir(dir, offset, (e, next) => {
      const name = this.image.name(e);
      const recLen = P.align8((plus ? P.DIRENTPLUS_HEADER : P.DIRENT_HEADER) + name.length);
      if (len + recLen > limit) return false;
      let ino: Ino | null = null;
      const dots = name.length <= 2 && name[0] === 0x2e && (name.length === 1 || name[1] === 0x2e);
      if ((plus && !dots) || e.ftype === 3 /* character device: maybe a whiteout */) {
        try {
          ino = this.image.inode(e.nid);
        } catch (err) {
          if (!(err instanceof ImageFormatError)) throw err;
          this.log(`image: ${err.message}`);
        }
        if (ino !== null && this.image.isWhiteout(ino)) return true;
      }
      const type = P.DT_OF_FT[e.ftype] ?? 0;
      const at = 16 + len;
      if (plus) {
        if (ino !== null && !dots) P.writeEntry(r, at, this.nodeidOf(e.nid), VALID, this.attrOf(ino));
        else r.fill(0, at, at + P.ENTRY_OUT_SIZE); // node id 0: the kernel only lists the name
        P.writeDirent(r, at + P.ENTRY_OUT_SIZE, e.nid, next, type, name);
      } else P.writeDirent(r, at, e.nid, next, type, name);
      len += recLen;
      return true;
    });
    this.ok(unique, len);
  }

  private getxattr(unique: number, nodeid: number, size: number, name: Buffer): void {
    const ino = this.image.inode(this.nidOf(nodeid));
    const x = this.image.xattrs(ino).find((a) => a.name.equals(name));
    if (!x) return this.error(unique, E.ENODATA);
    return this.sized(unique, size, x.value);
  }

  /**
   * The kernel mount lists trusted.* names only to callers with
   * CAP_SYS_ADMIN. A request carries the caller's uid, not its capabilities:
   * uid 0 stands for privilege here (the kernel still refuses reading a
   * trusted.* value to a caller without it).
   */
  private listxattr(unique: number, nodeid: number, size: number, uid: number): void {
    const ino = this.image.inode(this.nidOf(nodeid));
    const parts: Buffer[] = [];
    for (const x of this.image.xattrs(ino)) {
      if (uid !== 0 && x.name.length >= 8 && x.name.toString('latin1', 0, 8) === 'trusted.') continue;
      parts.push(x.name, Buffer.from([0]));
    }
    return this.sized(unique, size, Buffer.concat(parts));
  }

  /** The xattr answer: the size alone when asked with size 0, ERANGE when it does not fit. */
  private sized(unique: number, size: number, value: Buffer): void {
    const r = this.reply;
    if (size === 0) {
      r.writeUInt32LE(value.length, 16);
      r.writeUInt32LE(0, 20);
      return this.ok(unique, P.GETXATTR_OUT_SIZE);
    }
    if (value.length > size) return this.error(unique, E.ERANGE);
    value.copy(r, 16);
    return this.ok(unique, value.length);
  }

  private statfs(unique: number): void {
    const r = this.reply;
    const h = this.image.header;
    r.fill(0, 16, 16 + P.STATFS_OUT_SIZE);
    P.putU64(r, 16, h.blocks);
    P.putU64(r, 40, h.inodes);
    r.writeUInt32LE(4096, 56); // bsize
    r.writeUInt32LE(255, 60); // namelen
    r.writeUInt32LE(4096, 64); // frsize
    return this.ok(unique, P.STATFS_OUT_SIZE);
  }

  private regular(nodeid: number): Ino {
    const ino = this.image.inode(this.nidOf(nodeid));
    const t = ino.mode & S_IFMT;
    if (t === S_IFDIR) throw new ReplyError(E.EISDIR);
    if (t !== S_IFREG) throw new ReplyError(E.EINVAL);
    return ino;
  }

  private open(unique: number, nodeid: number): void {
    if (this.noOpen) return this.error(unique, E.ENOSYS);
    const ino = this.regular(nodeid);
    const data = this.image.data(ino);
    const r = this.reply;
    const answer = (flags: number, backingId: number) => {
      P.putU64(r, 16, ino.nid);
      r.writeUInt32LE(flags, 24);
      r.writeInt32LE(backingId, 28);
      this.ok(unique, P.OPEN_OUT_SIZE);
    };
    if (data.kind !== 'object' || this.state.passthrough === false) return answer(P.FOPEN_KEEP_CACHE, 0);
    this.lock();
    let id: number;
    try {
      id = this.backingId(ino, data);
    } finally {
      this.unlock();
    }
    if (PREFETCH > 0 && !this.verity) this.prefetchAfter = ino;
    if (id > 0) return answer(P.FOPEN_PASSTHROUGH, id);
    if (id < 0) return this.error(unique, -id);
    answer(P.FOPEN_KEEP_CACHE, 0);
  }

  /**
   * The backing id the OPEN of `ino` answers with (one per inode while it is
   * open, shared by the threads), 0 for no passthrough, or -errno. Under the lock.
   */
  private backingId(ino: Ino, data: Data): number {
    const slot = this.backingSlot(ino.nid);
    const b = this.backing;
    if (slot >= 0 && b[slot * 3] === ino.nid + 1) {
      b[slot * 3 + 2]++;
      return b[slot * 3 + 1];
    }
    // The kernel may have turned passthrough off meanwhile (a refused backing file).
    if (this.state.passthrough === false) return 0;
    let obj: ObjectFile;
    try {
      obj = this.objectFile(ino, data);
    } catch (e) {
      return -(e instanceof ReplyError ? e.errno : E.EIO);
    }
    // A table full of open inodes: no passthrough for this one (rather, EMFILE: an
    // inode open both with and without passthrough is refused by the kernel).
    if (slot < 0) return -E.EMFILE;
    let id: number;
    try {
      id = backingOpen(this.fd, obj.fd);
    } catch (e) {
      this.state.passthrough = false;
      this.state.passthroughWhy = `off: the kernel refused a backing file (${(e as Error).message})`;
      this.post?.({ type: 'why', why: this.state.passthroughWhy });
      return 0;
    }
    b[slot * 3] = ino.nid + 1;
    b[slot * 3 + 1] = id;
    b[slot * 3 + 2] = 1;
    if (this.state.passthrough === null) {
      this.state.passthrough = true;
      this.state.passthroughWhy = 'on: object reads go from the kernel straight to the object files';
      this.post?.({ type: 'why', why: this.state.passthroughWhy });
    }
    return id;
  }

  /** The slot of `nid` in the backing table, or the empty slot where it would go; -1 when full. Linear probing. */
  private backingSlot(nid: number): number {
    const b = this.backing;
    let i = Math.imul(nid, 0x9e3779b1) >>> 16;
    for (let n = 0; n < BACKING_SLOTS; n++, i = (i + 1) & (BACKING_SLOTS - 1)) {
      const k = b[i * 3];
      if (k === 0 || k === nid + 1) return i;
    }
    return -1;
  }

  /** Empty slot i and move up the entries after it that probing would no longer find. */
  private backingRemove(i: number): void {
    const b = this.backing;
    const mask = BACKING_SLOTS - 1;
    let hole = i;
    b[hole * 3] = 0;
    for (let j = (hole + 1) & mask; b[j * 3] !== 0; j = (j + 1) & mask) {
      const home = Math.imul(b[j * 3] - 1, 0x9e3779b1) >>> 16;
      // Entry j stays unless its home lies cyclically outside (hole, j].
      const stays = hole <= j ? hole < home && home <= j : hole < home || home <= j;
      if (stays) continue;
      b[hole * 3] = b[j * 3];
      b[hole * 3 + 1] = b[j * 3 + 1];
      b[hole * 3 + 2] = b[j * 3 + 2];
      b[j * 3] = 0;
      hole = j;
    }
  }

  /** The threads' one lock (held for a table look-up and at most one ioctl). */
  private lock(): void {
    const c = this.control;
    while (Atomics.compareExchange(c, C.lock, 0, 1) !== 0) Atomics.wait(c, C.lock, 1, 10);
  }

  private unlock(): void {
    Atomics.store(this.control, C.lock, 0);
    Atomics.notify(this.control, C.lock, 1);
  }

  private release(unique: number, fh: number): void {
    if (this.state.passthrough === true) {
      this.lock();
      try {
        const slot = this.backingSlot(fh);
        const b = this.backing;
        if (slot >= 0 && b[slot * 3] === fh + 1 && --b[slot * 3 + 2] === 0) {
          const id = b[slot * 3 + 1];
          this.backingRemove(slot);
          try {
            backingClose(this.fd, id);
          } catch {
            /* the connection is going away */
          }
        }
      } finally {
        this.unlock();
      }
    }
    this.ok(unique, 0);
  }

  private read(unique: number, nodeid: number, offset: number, size: number): void {
    const ino = this.regular(nodeid);
    const want = Math.max(0, Math.min(size, MAX_READ, ino.size - offset));
    const data = this.image.data(ino);
    const r = this.reply;
    if (want === 0) return this.ok(unique, 0);
    if (data.kind === 'zero') {
      r.fill(0, 16, 16 + want);
      return this.ok(unique, want);
    }
    if (data.kind === 'image') {
      const n = Math.max(0, Math.min(want, data.bytes.length - offset));
      data.bytes.copy(r, 16, offset, offset + n);
      return this.ok(unique, n);
    }
    try {
      this.readObject(unique, ino, this.objectFile(ino, data), offset, want);
      if (offset === 0 && PREFETCH > 0) this.prefetchAfter = ino;
    } catch (e) {
      if (e instanceof ReplyError) throw e;
      this.log(`object: ${this.objectName(ino)} (inode ${ino.nid}): ${e instanceof Error ? e.message : String(e)}; EIO`);
      throw new ReplyError(E.EIO);
    }
  }

  private readObject(unique: number, ino: Ino, obj: ObjectFile, offset: number, want: number): void {
    const out = this.data;
    const leaves = obj.verified;
    if (typeof leaves === 'number') throw new ReplyError(leaves);
    if (leaves === null) {
      const n = preadFull(obj.fd, out, P.OUT_HEADER_SIZE, want, offset);
      P.writeOutHeader(out, 0, P.OUT_HEADER_SIZE + n, 0, unique);
      this.send(P.OUT_HEADER_SIZE + n, out);
      return;
    }
    // Verity: read whole blocks, check each against its leaf, answer the part asked for.
    const start = Math.floor(offset / BLOCK) * BLOCK;
    const end = Math.min(Math.ceil((offset + want) / BLOCK) * BLOCK, ino.size);
    const skip = offset - start;
    // Read to where the answer's header can go right before the byte asked for.
    const at = P.OUT_HEADER_SIZE + BLOCK - skip;
    const n = preadFull(obj.fd, out, at, end - start, start);
    if (n !== end - start || checkBlocks(leaves, out.subarray(at), n, start) >= 0) {
      this.log(`verity: ${this.objectName(ino)} (inode ${ino.nid}): content changed since it was checked; EIO`);
      throw new ReplyError(E.EIO);
    }
    // The answer starts `skip` bytes into what was read: put the header right before it.
    const from = at + skip - P.OUT_HEADER_SIZE;
    P.writeOutHeader(out, from, P.OUT_HEADER_SIZE + want, 0, unique);
    this.send(P.OUT_HEADER_SIZE + want, out, from);
  }

  private objectName(ino: Ino): string {
    const d = this.image.data(ino);
    return d.kind === 'object' && d.redirect ? shown(d.redirect.subarray(d.redirect[0] === 0x2f ? 1 : 0)) : `inode ${ino.nid}`;
  }

  /**
   * The object behind a regular file, opened (and with verity measured) once
   * and kept by this thread; the map's order is the order of last use.
   */
  private objectFile(ino: Ino, data: Data, quiet = false): ObjectFile {
    const have = this.objects.get(ino.nid);
    if (have) {
      this.objects.delete(ino.nid);
      this.objects.set(ino.nid, have);
      return have;
    }
    if (data.kind !== 'object') throw new ReplyError(E.EIO);
    if (!data.redirect || data.redirect.length === 0) {
      if (!quiet) this.log(`object: inode ${ino.nid} has trusted.overlay.metacopy but no redirect; EIO`);
      throw new ReplyError(E.EIO);
    }
    const fd = this.openObject(ino, data.redirect, quiet);
    const rel = this.objectName(ino);
    const obj: ObjectFile = { fd, size: ino.size, verified: null };
    if (this.verity) obj.verified = this.measureObject(ino, obj, rel, data.digest);
    this.evict();
    this.objects.set(ino.nid, obj);
    return obj;
  }

  /** The object a request just began to read (OPEN, or a READ at offset 0): what to read ahead from once it is answered. */
  private prefetchAfter: Ino | null = null;

  /** The next object file after `ino` in image order, or null. */
  private nextObject(ino: Ino): Ino | null {
    let at = ino;
    for (let i = 0; i < PREFETCH_SCAN; i++) {
      const nid = this.image.nextNid(at);
      if (nid < 0) return null;
      try {
        at = this.image.inode(nid);
        if ((at.mode & S_IFMT) === S_IFREG && this.image.data(at).kind === 'object') return at;
      } catch {
        return null; // damage: nothing to read ahead
      }
    }
    return null;
  }

  /**
   * If the object just opened is the one after the previous (shared by the
   * threads), open the next PREFETCH objects not yet read ahead and start
   * reading them.
   */
  private prefetch(): void {
    const from = this.prefetchAfter!;
    this.prefetchAfter = null;
    const c = this.control;
    const expected = Atomics.exchange(c, C.nextObject, 0) - 1;
    let next = this.nextObject(from);
    Atomics.store(c, C.nextObject, next ? next.nid + 1 : 0);
    if (from.nid !== expected) return;
    // The window slides: what lies up to the last object read ahead was asked for before.
    const before = Atomics.load(c, C.prefetchedTo) - 1;
    const window: Ino[] = [];
    for (let i = 0; i < PREFETCH && next; i++, next = this.nextObject(next)) {
      window.push(next);
      if (next.nid === before) window.length = 0;
    }
    for (const ino of window) {
      try {
        const data = this.image.data(ino);
        if (!this.verity) {
          const obj = this.objectFile(ino, data, true);
          readAhead(obj.fd, 0, Math.min(obj.size, PREFETCH_BYTES));
        } else if (!this.objects.has(ino.nid) && data.kind === 'object' && data.redirect) {
          // Verity measures an object when it is first read, not before: only its bytes are asked for.
          const fd = this.openObject(ino, data.redirect, true);
          readAhead(fd, 0, Math.min(ino.size, PREFETCH_BYTES));
          closeFd(fd);
        }
      } catch {
        /* only a hint: the request for it will say what is wrong */
      }
    }
    if (window.length > 0) Atomics.store(c, C.prefetchedTo, window[window.length - 1].nid + 1);
  }

  /** The object's leaves when its digest is the one recorded, else the errno its READs get (logged once). */
  private measureObject(ino: Ino, obj: ObjectFile, rel: string, want: Buffer | null): Buffer | number {
    if (!want) {
      this.log(`verity: ${rel} (inode ${ino.nid}): the image records no digest for it; EIO`);
      return E.EIO;
    }
    let m: ReturnType<typeof measureSync>;
    try {
      m = measureSync(obj.fd, ino.size);
    } catch (e) {
      this.log(`verity: ${rel} (inode ${ino.nid}): ${e instanceof Error ? e.message : String(e)}; EIO`);
      return E.EIO;
    }
    if (m.read !== ino.size) {
      this.log(`verity: ${rel} (inode ${ino.nid}): object has ${m.read} bytes, the image says ${ino.size}; EIO`);
      return E.EIO;
    }
    if (!m.digest.equals(want)) {
      this.log(`verity: ${rel} (inode ${ino.nid}): fs-verity digest ${m.digest.toString('hex')} is not the ${want.toString('hex')} the image records; EIO`);
      return E.EIO;
    }
    return m.leaves;
  }

  /**
   * The object a redirect names, opened from the first store that has it:
   * a regular file, opened beneath the store as overlayfs follows a redirect
   * into a data-only layer (no `..` out, no symlink, no other mount: see
   * openBeneath), non-blocking (a FIFO or device in a store must not hold a
   * serving thread) and then checked to be a regular file. Anything
   * else is EIO, logged unless `quiet`: a redirect that is not an object path,
   * one that leaves the store or meets a symlink, a FIFO or device.
   */
  private openObject(ino: Ino, redirect: Buffer, quiet: boolean): number {
    const fail = (why: string): never => {
      if (!quiet) this.log(`object: ${shown(redirect)} (inode ${ino.nid}) ${why}; EIO`);
      throw new ReplyError(E.EIO);
    };
    const rel = objectPath(redirect);
    if (rel === null) return fail('is not an object path (a relative path of plain names)');
    for (let i = 0; i < this.basedirFds.length; i++) {
      let fd: number;
      try {
        fd = openBeneath(this.basedirFds[i], rel, OBJECT_OPEN);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOENT' || code === 'ENOTDIR') continue; // not in this store: try the next
        if (code === 'ELOOP') return fail(`meets a symlink in ${this.basedirs[i]}`);
        if (code === 'EXDEV') return fail(`leaves ${this.basedirs[i]}`);
        return fail(`in ${this.basedirs[i]}: ${code ?? String(e)}`);
      }
      let regular = false;
      try {
        regular = fstatSync(fd).isFile();
      } catch {
        /* reported below */
      }
      if (!regular) {
        closeFd(fd);
        return fail(`in ${this.basedirs[i]} is not a regular file`);
      }
      return fd;
    }
    return fail('is in none of the object stores');
  }

  /** Close the least recently used objects beyond the limit. */
  private evict(): void {
    if (this.objects.size < OPEN_OBJECTS) return;
    let drop = this.objects.size - OPEN_OBJECTS / 2;
    for (const [nid, o] of this.objects) {
      if (drop-- <= 0) break;
      this.objects.delete(nid);
      closeFd(o.fd);
    }
  }
}

function cString(buf: Buffer, start: number, end: number): Buffer {
  let e = start;
  while (e < end && buf[e] !== 0) e++;
  return Buffer.from(buf.subarray(start, e));
}

function closeQuiet(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    /* already closed */
  }
}

/** pread until `len` bytes or end of file; returns the bytes read. */
function preadFull(fd: number, buf: Buffer, at: number, len: number, pos: number): number {
  let done = 0;
  while (done < len) {
    const n = readSync(fd, buf, at + done, len - done, pos + done);
    if (n <= 0) break;
    done += n;
  }
  return done;
}
