/**
 * A read-only FUSE server for a composefs image, speaking the kernel
 * protocol over an open /dev/fuse descriptor: no libfuse, no native addon.
 *
 * Concurrency: several reads of /dev/fuse are outstanding at once, each in
 * libuv's thread pool, so the kernel always has a reader to hand the next
 * request to while the main thread answers one. Metadata comes from the
 * image in memory and is answered at once; object data is read with
 * asynchronous preads, so many READs are in flight together. Answers are
 * written synchronously (a write to /dev/fuse only copies to the waiting
 * request).
 *
 * Node ids are derived from the image (nid + 2; the root is 1), so the
 * server keeps no table of looked-up inodes and FORGET costs nothing.
 */
import { close, closeSync, open, openSync, read, readFileSync, readSync, writeSync } from 'node:fs';

/**
 * Objects are opened and read on the main thread. Each trip through libuv's
 * thread pool costs more than the system call it carries: reading every file
 * of /usr/share (53,629 entries, 556 MB, cold caches) took 11.4-13.2 s with
 * asynchronous open and pread and 8.4 s with synchronous ones. The cost is
 * that one slow disk read holds up the requests behind it; CFS_FUSE_SYNC_IO=0
 * goes back to the thread pool.
 */
const SYNC_IO = process.env.CFS_FUSE_SYNC_IO !== '0';
import { constants as osConstants } from 'node:os';
import { BadImageError, ImageView, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, type Ino } from './image.js';
import * as P from './protocol.js';
import { checkBlocks, measure, BLOCK } from './verity.js';
import { backingClose, backingOpen } from '../sys/fuse.js';

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

export interface ServerOptions {
  /** Object store directories, searched in order (the basedir= list). */
  basedirs: string[];
  /** Check every object against the digest the image records, and every block read (see verity.ts). */
  verity?: boolean;
  /** Use FUSE passthrough for object files when the kernel grants it ('auto', the default), or never. */
  passthrough?: 'auto' | 'off';
  /** Outstanding reads of /dev/fuse (default 2). */
  readers?: number;
  /** Where messages about objects go (verity failures, missing objects). */
  log?: (line: string) => void;
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
  /** Verity: resolves once the object is measured and matches; rejects with the errno to answer. */
  verified: Promise<Buffer | null> | null;
  users: number;
  lastUse: number;
}

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

export class FuseServer {
  readonly state: ServerState = { initialised: false, kernelMinor: 0, passthrough: null, passthroughWhy: 'not negotiated yet', requests: 0 };
  private readonly basedirs: string[];
  private readonly verity: boolean;
  private readonly wantPassthrough: boolean;
  private readonly readers: number;
  private readonly log: (line: string) => void;
  private readonly reply = Buffer.allocUnsafeSlow(P.OUT_HEADER_SIZE + MAX_READ);
  private readonly objects = new Map<number, ObjectFile>();
  private readonly opening = new Map<number, Promise<ObjectFile>>();
  private readonly backing = new Map<number, { id: number; users: number }>();
  private readonly dataBuffers: Buffer[] = [];
  private useClock = 0;
  private running = 0;
  private stopped = false;
  private finish!: (err?: Error) => void;
  private readonly done: Promise<void>;
  private initWaiters: Array<() => void> = [];

  constructor(private readonly fd: number, readonly image: ImageView, opts: ServerOptions) {
    this.basedirs = opts.basedirs;
    this.verity = opts.verity ?? false;
    this.wantPassthrough = (opts.passthrough ?? 'auto') === 'auto' && !this.verity;
    this.readers = Math.max(1, opts.readers ?? 2);
    this.log = opts.log ?? (() => {});
    this.done = new Promise<void>((resolve, reject) => {
      this.finish = (err) => (err ? reject(err) : resolve());
    });
  }

  /** Serve until the file system is unmounted (or the connection aborted). */
  serve(): Promise<void> {
    for (let i = 0; i < this.readers; i++) this.readLoop(Buffer.allocUnsafeSlow(REQUEST_BUFFER));
    return this.done;
  }

  /** Resolves after the kernel's INIT has been answered. */
  initialised(): Promise<void> {
    if (this.state.initialised) return Promise.resolve();
    return new Promise((resolve) => this.initWaiters.push(resolve));
  }

  private stop(err?: Error): void {
    if (this.stopped) return;
    this.stopped = true;
    for (const o of this.objects.values()) closeQuiet(o.fd);
    this.objects.clear();
    this.finish(err);
  }

  private readLoop(buf: Buffer): void {
    if (this.stopped) return;
    this.running++;
    read(this.fd, buf, 0, buf.length, null, (err, n) => {
      this.running--;
      if (this.stopped) return;
      if (err) {
        const code = (err as NodeJS.ErrnoException).code;
        // ENOENT: the request was interrupted before we got it; EINTR/EAGAIN: try again.
        if (code === 'ENOENT' || code === 'EINTR' || code === 'EAGAIN') return this.readLoop(buf);
        // ENODEV: unmounted (or the connection aborted).
        if (code === 'ENODEV') return this.stop();
        return this.stop(err);
      }
      if (n === 0) return this.stop();
      try {
        this.dispatch(buf, n);
      } catch (e) {
        this.log(`internal error: ${e instanceof Error ? e.message : String(e)}`);
      }
      this.readLoop(buf);
    });
  }

  private send(len: number, buf: Buffer = this.reply): void {
    try {
      writeSync(this.fd, buf, 0, len);
    } catch (e) {
      // ENOENT: the request was interrupted meanwhile; anything else means the connection is gone.
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT') this.stop(code === 'ENODEV' ? undefined : (e as Error));
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
    this.state.requests++;
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
      if (e instanceof BadImageError) {
        this.log(`image: ${e.message}`);
        return this.error(unique, E.EIO);
      }
      if (e instanceof ReplyError) return this.error(unique, e.errno);
      throw e;
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
    this.state.initialised = true;
    for (const w of this.initWaiters.splice(0)) w();
  }

  /** Whether OPEN is answered ENOSYS (zero-message open): when passthrough is off. */
  private noOpen = true;

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
          if (!(err instanceof BadImageError)) throw err;
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
    const have = this.backing.get(ino.nid);
    if (have) {
      have.users++;
      return answer(P.FOPEN_PASSTHROUGH, have.id);
    }
    this.objectFile(ino).then(
      (obj) => {
        if (this.state.passthrough !== false) {
          try {
            const id = backingOpen(this.fd, obj.fd);
            const again = this.backing.get(ino.nid);
            if (again) {
              backingClose(this.fd, id);
              again.users++;
              return answer(P.FOPEN_PASSTHROUGH, again.id);
            }
            this.backing.set(ino.nid, { id, users: 1 });
            if (this.state.passthrough === null) {
              this.state.passthrough = true;
              this.state.passthroughWhy = 'on: object reads go from the kernel straight to the object files';
            }
            return answer(P.FOPEN_PASSTHROUGH, id);
          } catch (e) {
            this.state.passthrough = false;
            this.state.passthroughWhy = `off: the kernel refused a backing file (${(e as Error).message})`;
          }
        }
        answer(P.FOPEN_KEEP_CACHE, 0);
      },
      (e) => this.error(unique, e instanceof ReplyError ? e.errno : E.EIO),
    );
  }

  private release(unique: number, fh: number): void {
    const b = this.backing.get(fh);
    if (b && --b.users === 0) {
      this.backing.delete(fh);
      try {
        backingClose(this.fd, b.id);
      } catch {
        /* the connection is going away */
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
    this.objectFile(ino)
      .then((obj) => this.readObject(unique, ino, obj, offset, want))
      .catch((e) => this.error(unique, e instanceof ReplyError ? e.errno : E.EIO));
  }

  private takeBuffer(): Buffer {
    return this.dataBuffers.pop() ?? Buffer.allocUnsafeSlow(P.OUT_HEADER_SIZE + MAX_READ + 2 * BLOCK);
  }

  private async readObject(unique: number, ino: Ino, obj: ObjectFile, offset: number, want: number): Promise<void> {
    obj.users++;
    const out = this.takeBuffer();
    try {
      const leaves = obj.verified ? await obj.verified : null;
      if (leaves === null) {
        const n = SYNC_IO ? preadFullSync(obj.fd, out, P.OUT_HEADER_SIZE, want, offset) : await preadFull(obj.fd, out, P.OUT_HEADER_SIZE, want, offset);
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
      const n = await preadFull(obj.fd, out, at, end - start, start);
      if (n !== end - start || checkBlocks(leaves, out.subarray(at), n, start) >= 0) {
        this.log(`verity: ${this.objectName(ino)} (inode ${ino.nid}): content changed since it was checked; EIO`);
        throw new ReplyError(E.EIO);
      }
      // The answer starts `skip` bytes into what was read: put the header right before it.
      const from = at + skip - P.OUT_HEADER_SIZE;
      P.writeOutHeader(out, from, P.OUT_HEADER_SIZE + want, 0, unique);
      try {
        writeSync(this.fd, out, from, P.OUT_HEADER_SIZE + want);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== 'ENOENT') this.stop(code === 'ENODEV' ? undefined : (e as Error));
      }
    } finally {
      obj.users--;
      obj.lastUse = ++this.useClock;
      this.dataBuffers.push(out);
    }
  }

  private objectName(ino: Ino): string {
    const d = this.image.data(ino);
    return d.kind === 'object' && d.redirect ? d.redirect.toString().replace(/^\//, '') : `inode ${ino.nid}`;
  }

  /** The object behind a regular file, opened (and with verity measured) once and kept. */
  private objectFile(ino: Ino): Promise<ObjectFile> {
    const have = this.objects.get(ino.nid);
    if (have) {
      have.lastUse = ++this.useClock;
      return Promise.resolve(have);
    }
    let p = this.opening.get(ino.nid);
    if (!p) {
      p = this.openObject(ino).finally(() => this.opening.delete(ino.nid));
      this.opening.set(ino.nid, p);
    }
    return p;
  }

  private async openObject(ino: Ino): Promise<ObjectFile> {
    const data = this.image.data(ino);
    if (data.kind !== 'object') throw new ReplyError(E.EIO);
    if (!data.redirect || data.redirect.length === 0) {
      this.log(`object: inode ${ino.nid} has trusted.overlay.metacopy but no redirect; EIO`);
      throw new ReplyError(E.EIO);
    }
    const rel = data.redirect.toString('utf8').replace(/^\/+/, '');
    let fd = -1;
    for (const base of this.basedirs) {
      try {
        fd = SYNC_IO ? openSync(`${base}/${rel}`, 'r') : await openAsync(`${base}/${rel}`);
        break;
      } catch {
        /* not in this store: try the next */
      }
    }
    if (fd < 0) {
      this.log(`object: ${rel} (inode ${ino.nid}) is in none of the object stores; EIO`);
      throw new ReplyError(E.EIO);
    }
    const obj: ObjectFile = { fd, size: ino.size, verified: null, users: 0, lastUse: ++this.useClock };
    if (this.verity) obj.verified = this.measureObject(ino, obj, rel, data.digest);
    this.evict();
    this.objects.set(ino.nid, obj);
    return obj;
  }

  private async measureObject(ino: Ino, obj: ObjectFile, rel: string, want: Buffer | null): Promise<Buffer> {
    if (!want) {
      this.log(`verity: ${rel} (inode ${ino.nid}): the image records no digest for it; EIO`);
      throw new ReplyError(E.EIO);
    }
    const m = await measure(obj.fd, ino.size);
    if (m.read !== ino.size) {
      this.log(`verity: ${rel} (inode ${ino.nid}): object has ${m.read} bytes, the image says ${ino.size}; EIO`);
      throw new ReplyError(E.EIO);
    }
    if (!m.digest.equals(want)) {
      this.log(`verity: ${rel} (inode ${ino.nid}): fs-verity digest ${m.digest.toString('hex')} is not the ${want.toString('hex')} the image records; EIO`);
      throw new ReplyError(E.EIO);
    }
    return m.leaves;
  }

  /** Close the least recently used idle objects beyond the limit. */
  private evict(): void {
    if (this.objects.size < OPEN_OBJECTS) return;
    const idle = [...this.objects.entries()].filter(([, o]) => o.users === 0).sort((a, b) => a[1].lastUse - b[1].lastUse);
    for (const [nid, o] of idle.slice(0, Math.max(1, this.objects.size - OPEN_OBJECTS / 2))) {
      this.objects.delete(nid);
      close(o.fd, () => {});
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

function openAsync(path: string): Promise<number> {
  return new Promise((resolve, reject) => open(path, 'r', (err, fd) => (err ? reject(err) : resolve(fd))));
}

/** pread until `len` bytes or end of file; returns the bytes read. */
async function preadFull(fd: number, buf: Buffer, at: number, len: number, pos: number): Promise<number> {
  let done = 0;
  while (done < len) {
    const n = await new Promise<number>((resolve, reject) => read(fd, buf, at + done, len - done, pos + done, (err, k) => (err ? reject(err) : resolve(k))));
    if (n <= 0) break;
    done += n;
  }
  return done;
}

function preadFullSync(fd: number, buf: Buffer, at: number, len: number, pos: number): number {
  let done = 0;
  while (done < len) {
    const n = readSync(fd, buf, at + done, len - done, pos + done);
    if (n <= 0) break;
    done += n;
  }
  return done;
}
