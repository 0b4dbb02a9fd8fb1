/**
 * One serving thread of the FUSE server (worker.ts runs one per thread): a
 * loop of blocking reads of /dev/fuse, each request dispatched by opcode to
 * its handler and answered by the thread that read it. The answers about
 * names and inodes are in inode-requests.ts, INIT in init.ts; here are the
 * loop, the dispatch, and the file data: OPEN (with passthrough), RELEASE,
 * READ (with verity) and the read-ahead that follows an answer.
 *
 * With `-o verity` one thread serves: an object's Merkle leaves are that
 * thread's, and a block read is checked against the leaves measured when the
 * object was first served.
 */
import { readSync, writeSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import type { ImageView, Ino } from './image.js';
import { ImageFormatError } from '../erofs/header.js';
import { S_IFMT, S_IFREG } from '../tree/model.js';
import * as P from './protocol.js';
import { BackingIdTable } from './backing-ids.js';
import { InodeRequests } from './inode-requests.js';
import { MAX_READ, negotiate } from './init.js';
import { objectName, ObjectSource } from './objects.js';
import type { ObjectFile } from './object-files.js';
import { ReadAhead } from './read-ahead.js';
import { Control, SharedServerState, type ServerOptions, type SharedState, type WorkerMessage } from './shared.js';
import { checkBlocks, BLOCK } from './verity.js';
import { backingClose, backingOpen } from '../sys/fuse.js';
import { readAhead } from '../sys/readahead.js';
import { closeFd } from '../sys/openat2.js';

const E = osConstants.errno;
/** Each read of /dev/fuse needs room for the largest request: with max_write at 4 KiB, 8 KiB is the kernel's minimum. */
const REQUEST_BUFFER = 16 * 1024;
/** Objects read ahead (read-ahead.ts) after one begun in image order; CFS_FUSE_PREFETCH=0 turns it off (for measuring). */
const PREFETCH = Number(process.env.CFS_FUSE_PREFETCH ?? 8) || 0;
/** What is asked of the disk for each object read ahead. */
const PREFETCH_BYTES = 128 * 1024;
/** Inodes looked at, at most, to find the next object file (directories, symlinks and inline files between). */
const PREFETCH_SCAN = 16;

export class ServingThread {
  private readonly reply = Buffer.allocUnsafeSlow(P.OUT_HEADER_SIZE + MAX_READ);
  /** READ answers of object data: room to read whole blocks around the range asked for (verity). */
  private readonly data = Buffer.allocUnsafeSlow(P.OUT_HEADER_SIZE + MAX_READ + 2 * BLOCK);
  private readonly state: SharedServerState;
  private readonly inodes: InodeRequests;
  private readonly objects: ObjectSource;
  private readonly backing: BackingIdTable;
  private readonly readAhead: ReadAhead<Ino>;
  private readonly verity: boolean;
  private readonly wantPassthrough: boolean;
  private stopped = false;
  private stopError: Error | undefined;
  /** The object a request just began to read (OPEN, or a READ at offset 0): what to read ahead from once it is answered. */
  private readAheadFrom: Ino | null = null;

  constructor(
    private readonly fd: number,
    private readonly image: ImageView,
    opts: ServerOptions,
    shared: SharedState,
    private readonly post: (m: WorkerMessage) => void,
    private readonly log: (line: string) => void,
  ) {
    this.verity = opts.verity ?? false;
    this.wantPassthrough = (opts.passthrough ?? 'auto') === 'auto' && !this.verity;
    const control = new Int32Array(shared.control);
    this.state = new SharedServerState(control);
    this.inodes = new InodeRequests(image, this.reply, log);
    this.objects = new ObjectSource(opts.basedirs, opts.basedirFds ?? [], this.verity, log);
    this.backing = new BackingIdTable(shared.backing);
    this.readAhead = new ReadAhead(control, Control.readAhead, PREFETCH, (ino) => this.nextObject(ino));
  }

  /**
   * The thread's loop: a blocking read of /dev/fuse, the answer, again,
   * until the connection ends. Returns the error that stopped it, if any
   * but the end of the mount.
   */
  serve(): Error | undefined {
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
        if (this.readAheadFrom !== null) this.startReadAhead();
      } catch (e) {
        this.log(`internal error: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
    this.objects.closeAll();
    return this.stopError;
  }

  private stop(err?: Error): void {
    if (this.stopped) return;
    this.stopped = true;
    this.stopError ??= err;
  }

  /**
   * Write one answer. Only a connection that is gone (ENODEV) stops the
   * thread: an answer the kernel refuses (EINVAL: too long for the request)
   * concerns that request alone, which the kernel then fails itself, and
   * ENOENT means the request was interrupted meanwhile.
   */
  private send(buf: Buffer, at: number, len: number): void {
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
    this.send(this.reply, 0, P.OUT_HEADER_SIZE);
  }

  /** Answer with the body already written at reply[BODY, BODY + bodyLen). */
  private ok(unique: number, bodyLen: number): void {
    P.writeOutHeader(this.reply, 0, P.OUT_HEADER_SIZE + bodyLen, 0, unique);
    this.send(this.reply, 0, P.OUT_HEADER_SIZE + bodyLen);
  }

  /** Opcode → handler. Handlers answer themselves or return the length of the body they wrote at reply[BODY..]. */
  private dispatch(buf: Buffer, n: number): void {
    this.state.countRequest();
    const opcode = buf.readUInt32LE(P.IH.opcode);
    const unique = P.getU64(buf, P.IH.unique);
    const nodeid = P.getU64(buf, P.IH.nodeid);
    const body = P.IN_HEADER_SIZE;
    const end = Math.min(n, buf.readUInt32LE(P.IH.len));
    if (P.NO_REPLY_OPS.has(opcode)) return; // FORGET, BATCH_FORGET: node ids are stateless; INTERRUPT: answers are quick
    const inodes = this.inodes;
    try {
      switch (opcode) {
        case P.Op.INIT:
          this.ok(unique, negotiate(buf, this.reply, this.state, { wantPassthrough: this.wantPassthrough, verity: this.verity }));
          if (this.state.initialised) this.post({ type: 'init', why: this.state.passthroughWhy });
          return;
        case P.Op.DESTROY:
          this.ok(unique, 0);
          return this.stop();
        case P.Op.LOOKUP:
          return this.ok(unique, inodes.lookup(nodeid, cString(buf, body, end)));
        case P.Op.GETATTR:
          return this.ok(unique, inodes.getattr(nodeid));
        case P.Op.READLINK:
          return this.ok(unique, inodes.readlink(nodeid));
        case P.Op.OPEN:
          return this.open(unique, nodeid);
        case P.Op.RELEASE:
          this.release(P.getU64(buf, body + P.ReleaseIn.fh));
          return this.ok(unique, 0);
        case P.Op.OPENDIR:
          // The kernel offers zero-message opendir: ENOSYS says we need none, and the kernel
          // then caches directory contents as if we had answered FOPEN_CACHE_DIR|FOPEN_KEEP_CACHE
          // (fuse_do_open's default for no-open, fs/fuse/file.c). Answering OPENDIR with those
          // flags costs an OPENDIR and a RELEASEDIR per directory opened, for the same cache.
          return this.error(unique, E.ENOSYS);
        case P.Op.RELEASEDIR:
          return this.ok(unique, 0);
        case P.Op.READ:
          return this.read(unique, nodeid, P.getU64(buf, body + P.ReadIn.offset), buf.readUInt32LE(body + P.ReadIn.size));
        case P.Op.READDIR:
        case P.Op.READDIRPLUS: {
          const offset = P.getU64(buf, body + P.ReadIn.offset);
          return this.ok(unique, inodes.readdir(nodeid, offset, buf.readUInt32LE(body + P.ReadIn.size), opcode === P.Op.READDIRPLUS));
        }
        case P.Op.GETXATTR:
          return this.ok(unique, inodes.getxattr(nodeid, buf.readUInt32LE(body + P.GetxattrIn.size), cString(buf, body + P.GetxattrIn.name, end)));
        case P.Op.LISTXATTR:
          return this.ok(unique, inodes.listxattr(nodeid, buf.readUInt32LE(body + P.GetxattrIn.size), buf.readUInt32LE(P.IH.uid)));
        case P.Op.STATFS:
          return this.ok(unique, inodes.statfs());
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
      if (e instanceof P.ReplyError) return this.error(unique, e.errno);
      // A defect of ours: still answered, or the caller would wait for ever.
      this.log(`internal error: ${e instanceof Error ? e.message : String(e)}`);
      return this.error(unique, E.EIO);
    }
  }

  private open(unique: number, nodeid: number): void {
    if (this.state.noOpen) return this.error(unique, E.ENOSYS);
    const ino = this.inodes.regular(nodeid);
    let flags = P.FOPEN_KEEP_CACHE;
    let id = 0;
    if (this.state.passthrough !== false && this.image.data(ino).kind === 'object') {
      this.backing.lock();
      try {
        id = this.backingId(ino);
      } finally {
        this.backing.unlock();
      }
      if (PREFETCH > 0) this.readAheadFrom = ino;
      if (id < 0) return this.error(unique, -id);
      if (id > 0) flags = P.FOPEN_PASSTHROUGH;
    }
    this.ok(unique, P.encodeOpenOut(this.reply, P.BODY, ino.nid, flags, id));
  }

  /**
   * The backing id the OPEN of `ino` answers with (one per inode while it is
   * open, shared by the threads), 0 for no passthrough, or -errno. Under the lock.
   */
  private backingId(ino: Ino): number {
    const have = this.backing.acquire(ino.nid);
    if (have > 0) return have;
    // The kernel may have turned passthrough off meanwhile (a refused backing file).
    if (this.state.passthrough === false) return 0;
    let obj: ObjectFile;
    try {
      obj = this.objects.file(ino, this.image.data(ino));
    } catch (e) {
      return -(e instanceof P.ReplyError ? e.errno : E.EIO);
    }
    // A table full of open inodes: no passthrough for this one (rather, EMFILE: an
    // inode open both with and without passthrough is refused by the kernel).
    if (!this.backing.hasRoomFor(ino.nid)) return -E.EMFILE;
    let id: number;
    try {
      id = backingOpen(this.fd, obj.fd);
    } catch (e) {
      this.passthroughNow(false, `off: the kernel refused a backing file (${(e as Error).message})`);
      return 0;
    }
    this.backing.insert(ino.nid, id);
    if (this.state.passthrough === null) this.passthroughNow(true, 'on: object reads go from the kernel straight to the object files');
    return id;
  }

  private passthroughNow(on: boolean, why: string): void {
    this.state.passthrough = on;
    this.state.passthroughWhy = why;
    this.post({ type: 'why', why });
  }

  /** The last RELEASE of an inode open with passthrough closes its backing id. */
  private release(fh: number): void {
    if (this.state.passthrough !== true) return;
    this.backing.lock();
    try {
      const id = this.backing.release(fh);
      if (id > 0) backingClose(this.fd, id);
    } catch {
      /* the connection is going away */
    } finally {
      this.backing.unlock();
    }
  }

  private read(unique: number, nodeid: number, offset: number, size: number): void {
    const ino = this.inodes.regular(nodeid);
    const want = Math.max(0, Math.min(size, MAX_READ, ino.size - offset));
    const data = this.image.data(ino);
    if (want === 0) return this.ok(unique, 0);
    if (data.kind === 'zero') {
      this.reply.fill(0, P.BODY, P.BODY + want);
      return this.ok(unique, want);
    }
    if (data.kind === 'image') {
      const n = Math.max(0, Math.min(want, data.bytes.length - offset));
      return this.ok(unique, data.bytes.copy(this.reply, P.BODY, offset, offset + n));
    }
    try {
      this.readObject(unique, ino, this.objects.file(ino, data), offset, want);
      if (offset === 0 && PREFETCH > 0) this.readAheadFrom = ino;
    } catch (e) {
      if (e instanceof P.ReplyError) throw e;
      this.log(`object: ${objectName(data, ino)} (inode ${ino.nid}): ${e instanceof Error ? e.message : String(e)}; EIO`);
      throw new P.ReplyError(E.EIO);
    }
  }

  private readObject(unique: number, ino: Ino, obj: ObjectFile, offset: number, want: number): void {
    const out = this.data;
    const leaves = obj.verified;
    if (typeof leaves === 'number') throw new P.ReplyError(leaves);
    if (leaves === null) {
      const n = preadFull(obj.fd, out, P.OUT_HEADER_SIZE, want, offset);
      P.writeOutHeader(out, 0, P.OUT_HEADER_SIZE + n, 0, unique);
      return this.send(out, 0, P.OUT_HEADER_SIZE + n);
    }
    // Verity: read whole blocks, check each against its leaf, answer the part asked for.
    const start = Math.floor(offset / BLOCK) * BLOCK;
    const end = Math.min(Math.ceil((offset + want) / BLOCK) * BLOCK, ino.size);
    const skip = offset - start;
    // Read to where the answer's header can go right before the byte asked for.
    const at = P.OUT_HEADER_SIZE + BLOCK - skip;
    const n = preadFull(obj.fd, out, at, end - start, start);
    if (n !== end - start || checkBlocks(leaves, out.subarray(at), n, start, obj.algorithm) >= 0) {
      this.log(`verity: ${objectName(this.image.data(ino), ino)} (inode ${ino.nid}): content changed since it was checked; EIO`);
      throw new P.ReplyError(E.EIO);
    }
    // The answer starts `skip` bytes into what was read: put the header right before it.
    const from = at + skip - P.OUT_HEADER_SIZE;
    P.writeOutHeader(out, from, P.OUT_HEADER_SIZE + want, 0, unique);
    this.send(out, from, P.OUT_HEADER_SIZE + want);
  }

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

  /** Open the objects the read-ahead window gives and ask for their first bytes with readahead(2). */
  private startReadAhead(): void {
    const from = this.readAheadFrom!;
    this.readAheadFrom = null;
    for (const ino of this.readAhead.after(from)) {
      try {
        const data = this.image.data(ino);
        if (!this.verity) {
          const obj = this.objects.file(ino, data, true);
          readAhead(obj.fd, 0, Math.min(obj.size, PREFETCH_BYTES));
        } else if (!this.objects.isOpen(ino.nid) && data.kind === 'object' && data.redirect) {
          // Verity measures an object when it is first read, not before: only its bytes are asked for.
          const fd = this.objects.openObject(ino, data.redirect, true);
          readAhead(fd, 0, Math.min(ino.size, PREFETCH_BYTES));
          closeFd(fd);
        }
      } catch {
        /* only a hint: the request for it will say what is wrong */
      }
    }
  }
}

function cString(buf: Buffer, start: number, end: number): Buffer {
  let e = start;
  while (e < end && buf[e] !== 0) e++;
  return Buffer.from(buf.subarray(start, e));
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
