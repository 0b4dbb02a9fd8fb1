/**
 * Unix-domain socket calls Node lacks: socketpair(2), and recvmsg(2) of a
 * file descriptor passed with SCM_RIGHTS (how fusermount3 hands back the
 * /dev/fuse descriptor it opened and mounted); and, for the mount service,
 * non-blocking listen/accept/connect, messages carrying several descriptors,
 * the peer's credentials and pidfd, and systemd socket activation. Layouts are Linux x86-64 and
 * arm64 (LP64): struct msghdr is 56 bytes, struct cmsghdr 16.
 */
import { closeSync } from 'node:fs';
import { bindLazily, koffi, lastErrno, SysError } from './libc.js';

export const AF_UNIX = 1;
export const SOCK_STREAM = 1;
export const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const MSG_CMSG_CLOEXEC = 0x40000000;

interface Calls {
  socketpair: (domain: number, type: number, protocol: number, sv: Int32Array) => number;
  recvmsg: (fd: number, msg: Buffer, flags: number) => number;
}

const c = bindLazily<Calls>((l) => ({
    socketpair: l.func('int socketpair(int domain, int type, int protocol, _Out_ int *sv)') as unknown as Calls['socketpair'],
    recvmsg: l.func('recvmsg', 'intptr_t', ['int', 'void *', 'int']) as unknown as Calls['recvmsg'],
}));

/** A connected pair of stream sockets (close-on-exec unless `inheritable`). */
export function socketPair(inheritable = false): [number, number] {
  const sv = new Int32Array(2);
  const ok = c().socketpair(AF_UNIX, SOCK_STREAM | (inheritable ? 0 : SOCK_CLOEXEC), 0, sv);
  if (ok < 0) throw new SysError('socketpair', lastErrno());
  return [sv[0], sv[1]];
}

/**
 * Receive one message and the first descriptor passed with it (made
 * close-on-exec). Returns null when the peer closed without sending one.
 * Blocks.
 */
export function receiveFd(sock: number): number | null {
  // Off-heap, unpooled memory: the kernel writes through the addresses taken here.
  const slow = (n: number) => Buffer.allocUnsafeSlow(n).fill(0);
  const data = slow(16);
  const iov = slow(16);
  const control = slow(64);
  const msg = slow(56);
  const addr = (b: Buffer) => BigInt(Number(koffi.address(b)));
  iov.writeBigUInt64LE(addr(data), 0);
  iov.writeBigUInt64LE(BigInt(data.length), 8);
  msg.writeBigUInt64LE(0n, 0); // msg_name
  msg.writeUInt32LE(0, 8); // msg_namelen
  msg.writeBigUInt64LE(addr(iov), 16); // msg_iov
  msg.writeBigUInt64LE(1n, 24); // msg_iovlen
  msg.writeBigUInt64LE(addr(control), 32); // msg_control
  msg.writeBigUInt64LE(BigInt(control.length), 40); // msg_controllen
  let n: number;
  for (;;) {
    n = Number(c().recvmsg(sock, msg, MSG_CMSG_CLOEXEC));
    if (n >= 0) break;
    const e = lastErrno();
    if (e !== 4 /* EINTR */) throw new SysError('recvmsg', e);
  }
  const controlLen = Number(msg.readBigUInt64LE(40));
  for (let off = 0; off + 16 <= controlLen; ) {
    const len = Number(control.readBigUInt64LE(off));
    const level = control.readInt32LE(off + 8);
    const type = control.readInt32LE(off + 12);
    if (len < 16) break;
    if (level === SOL_SOCKET && type === SCM_RIGHTS && len >= 20) return control.readInt32LE(off + 16);
    off += (len + 7) & ~7;
  }
  return null;
}

// ---------------------------------------------------------------------------
// The mount service's transport: a listening socket, connections accepted
// without blocking, messages carrying several descriptors each way, and who
// is at the other end. Every call here is non-blocking (the caller waits for
// readiness through src/sys/epoll.ts), so one slow peer never stalls others.

export const SOCK_NONBLOCK = 0o4000;
const SO_PEERCRED = 17;
const SO_ACCEPTCONN = 30;
const SO_PEERPIDFD = 77;
const SO_PEERGROUPS = 59;
const ERANGE = 34;
const MSG_CTRUNC = 0x8;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const F_SETFD = 2;
const F_GETFL = 3;
const F_SETFL = 4;
const FD_CLOEXEC = 1;
const O_NONBLOCK = 0o4000;
const EINTR = 4;
const EAGAIN = 11;
const ENOPROTOOPT = 92;
/** sizeof(struct sockaddr_un): a 2-byte family and 108 bytes of path, NUL included. */
const SOCKADDR_UN_SIZE = 110;
/** The most data one sendmsg/recvmsg moves; larger messages take several calls. */
const CHUNK = 64 * 1024;

interface StreamCalls {
  socket: (domain: number, type: number, protocol: number) => number;
  bind: (fd: number, addr: Buffer, len: number) => number;
  listen: (fd: number, backlog: number) => number;
  connect: (fd: number, addr: Buffer, len: number) => number;
  accept4: (fd: number, addr: null, len: null, flags: number) => number;
  sendmsg: (fd: number, msg: Buffer, flags: number) => number | bigint;
  recvmsg: (fd: number, msg: Buffer, flags: number) => number | bigint;
  getsockopt: (fd: number, level: number, name: number, value: Buffer, len: Buffer) => number;
  fcntl: (fd: number, cmd: number, ...rest: unknown[]) => number;
  pidfd_open: (pid: number, flags: number) => number;
}

const s = bindLazily<StreamCalls>((l) => ({
  socket: l.func('int socket(int domain, int type, int protocol)') as unknown as StreamCalls['socket'],
  bind: l.func('bind', 'int', ['int', 'void *', 'uint32_t']) as unknown as StreamCalls['bind'],
  listen: l.func('int listen(int fd, int backlog)') as unknown as StreamCalls['listen'],
  connect: l.func('connect', 'int', ['int', 'void *', 'uint32_t']) as unknown as StreamCalls['connect'],
  accept4: l.func('accept4', 'int', ['int', 'void *', 'void *', 'int']) as unknown as StreamCalls['accept4'],
  sendmsg: l.func('sendmsg', 'intptr_t', ['int', 'void *', 'int']) as unknown as StreamCalls['sendmsg'],
  recvmsg: l.func('recvmsg', 'intptr_t', ['int', 'void *', 'int']) as unknown as StreamCalls['recvmsg'],
  getsockopt: l.func('getsockopt', 'int', ['int', 'int', 'int', 'void *', 'void *']) as unknown as StreamCalls['getsockopt'],
  fcntl: l.func('int fcntl(int fd, int cmd, ...)') as unknown as StreamCalls['fcntl'],
  pidfd_open: l.func('int pidfd_open(int pid, unsigned int flags)') as unknown as StreamCalls['pidfd_open'],
}));

/** Run a call again while a signal interrupts it; -1 and errno otherwise. */
function retrying(call: () => number | bigint): { result: number; errno: number } {
  for (;;) {
    const result = Number(call());
    if (result >= 0) return { result, errno: 0 };
    const errno = lastErrno();
    if (errno !== EINTR) return { result, errno };
  }
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // already closed or never valid: nothing more to release
  }
}

/** Close each descriptor, ignoring those already gone. */
export function closeFds(fds: Iterable<number>): void {
  for (const fd of fds) closeQuietly(fd);
}

function unixAddress(path: string): Buffer {
  const bytes = Buffer.from(path);
  if (bytes.length === 0 || bytes.includes(0)) throw new SysError('socket address', 22 /* EINVAL */, path);
  if (bytes.length > SOCKADDR_UN_SIZE - 3) throw new SysError('socket address', 36 /* ENAMETOOLONG */, path);
  const addr = Buffer.alloc(SOCKADDR_UN_SIZE);
  addr.writeUInt16LE(AF_UNIX, 0);
  bytes.copy(addr, 2);
  return addr;
}

/** A new non-blocking, close-on-exec unix stream socket. */
function streamSocket(): number {
  const fd = s().socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw new SysError('socket', lastErrno());
  return fd;
}

/**
 * A non-blocking listening socket bound at `path` (which must not exist).
 * The socket file gets the creator's umask; callers that need a mode bind
 * in a private directory, chmod, and rename it into place.
 */
export function listenUnix(path: string, backlog = 128): number {
  const addr = unixAddress(path);
  const fd = streamSocket();
  try {
    if (s().bind(fd, addr, addr.length) < 0) throw new SysError('bind', lastErrno(), path);
    if (s().listen(fd, backlog) < 0) throw new SysError('listen', lastErrno(), path);
    return fd;
  } catch (err) {
    closeQuietly(fd);
    throw err;
  }
}

/**
 * A non-blocking connection to the socket at `path`, or null when its backlog
 * is full (EAGAIN: the caller waits and tries again). Errors (ENOENT,
 * ECONNREFUSED, EACCES…) throw.
 */
export function connectUnix(path: string): number | null {
  const addr = unixAddress(path);
  const fd = streamSocket();
  const { result, errno } = retrying(() => s().connect(fd, addr, addr.length));
  if (result === 0) return fd;
  closeQuietly(fd);
  if (errno === EAGAIN) return null;
  throw new SysError('connect', errno, path);
}

/** The next pending connection (non-blocking, close-on-exec), or null when none waits. */
export function acceptConnection(listenFd: number): number | null {
  const { result, errno } = retrying(() => s().accept4(listenFd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC));
  if (result >= 0) return result;
  if (errno === EAGAIN) return null;
  throw new SysError('accept4', errno);
}

// Off-heap, unpooled memory: the kernel reads and writes through the addresses
// taken here. One set for the process: every call below is synchronous.
const slow = (n: number) => Buffer.allocUnsafeSlow(n).fill(0);
const address = (b: Buffer) => BigInt(Number(koffi.address(b)));
let scratch: { data: Buffer; iov: Buffer; msg: Buffer; control: Buffer } | null = null;

function scratchFor(maxFds: number) {
  const controlSize = 16 + ((maxFds * 4 + 7) & ~7);
  if (!scratch || scratch.control.length < controlSize) {
    scratch = { data: scratch?.data ?? slow(CHUNK), iov: scratch?.iov ?? slow(16), msg: scratch?.msg ?? slow(56), control: slow(controlSize) };
  }
  return scratch;
}

function fillMessageHeader(sc: NonNullable<typeof scratch>, dataLength: number, controlLength: number): void {
  sc.iov.writeBigUInt64LE(address(sc.data), 0);
  sc.iov.writeBigUInt64LE(BigInt(dataLength), 8);
  sc.msg.fill(0);
  sc.msg.writeBigUInt64LE(address(sc.iov), 16); // msg_iov
  sc.msg.writeBigUInt64LE(1n, 24); // msg_iovlen
  if (controlLength > 0) {
    sc.msg.writeBigUInt64LE(address(sc.control), 32); // msg_control
    sc.msg.writeBigUInt64LE(BigInt(controlLength), 40); // msg_controllen
  }
}

/**
 * Send up to 64 KiB of `data` with `fds` attached (SCM_RIGHTS) without
 * blocking. Returns the bytes sent (the descriptors went with them), or null
 * when the socket is full. A peer that hung up is EPIPE (no SIGPIPE).
 */
export function sendWithFds(fd: number, data: Buffer, fds: readonly number[] = []): number | null {
  const sc = scratchFor(fds.length);
  const length = Math.min(data.length, CHUNK);
  data.copy(sc.data, 0, 0, length);
  const controlLength = fds.length > 0 ? 16 + ((fds.length * 4 + 7) & ~7) : 0;
  fillMessageHeader(sc, length, controlLength);
  if (fds.length > 0) {
    sc.control.fill(0, 0, controlLength);
    sc.control.writeBigUInt64LE(BigInt(16 + fds.length * 4), 0); // CMSG_LEN
    sc.control.writeInt32LE(SOL_SOCKET, 8);
    sc.control.writeInt32LE(SCM_RIGHTS, 12);
    fds.forEach((f, i) => sc.control.writeInt32LE(f, 16 + i * 4));
  }
  const { result, errno } = retrying(() => s().sendmsg(fd, sc.msg, MSG_DONTWAIT | MSG_NOSIGNAL));
  if (result >= 0) return result;
  if (errno === EAGAIN) return null;
  throw new SysError('sendmsg', errno);
}

export interface Received {
  /** The bytes read (empty: the peer closed its end). */
  data: Buffer;
  /** Descriptors that came with them, close-on-exec, now the caller's. */
  fds: number[];
  /** More descriptors were sent than `maxFds`: the kernel dropped the rest and those that arrived were closed here (`fds` is empty). */
  truncated: boolean;
}

/**
 * Read what is waiting on `fd` (up to 64 KiB) and at most `maxFds`
 * descriptors sent with it, without blocking; null when nothing waits.
 * Descriptors beyond `maxFds` are dropped by the kernel (MSG_CTRUNC); then
 * none are kept, since a request missing some of its descriptors must fail
 * as a whole.
 */
export function receiveWithFds(fd: number, maxFds: number): Received | null {
  const sc = scratchFor(Math.max(maxFds, 1));
  const controlLength = 16 + ((Math.max(maxFds, 1) * 4 + 7) & ~7);
  sc.control.fill(0, 0, controlLength);
  fillMessageHeader(sc, CHUNK, controlLength);
  const { result, errno } = retrying(() => s().recvmsg(fd, sc.msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC));
  if (result < 0) {
    if (errno === EAGAIN) return null;
    throw new SysError('recvmsg', errno);
  }
  const fds: number[] = [];
  const filled = Number(sc.msg.readBigUInt64LE(40));
  for (let off = 0; off + 16 <= filled; ) {
    const len = Number(sc.control.readBigUInt64LE(off));
    if (len < 16 || off + len > filled) break;
    if (sc.control.readInt32LE(off + 8) === SOL_SOCKET && sc.control.readInt32LE(off + 12) === SCM_RIGHTS) {
      for (let p = off + 16; p + 4 <= off + len; p += 4) fds.push(sc.control.readInt32LE(p));
    }
    off += (len + 7) & ~7;
  }
  const truncated = (sc.msg.readInt32LE(48) & MSG_CTRUNC) !== 0;
  // Beyond maxFds, only a single descriptor fits in the rounding of the control buffer: keep the count honest.
  if (truncated || fds.length > maxFds) {
    closeFds(fds);
    return { data: Buffer.from(sc.data.subarray(0, result)), fds: [], truncated: true };
  }
  return { data: Buffer.from(sc.data.subarray(0, result)), fds, truncated: false };
}

export interface PeerCredentials {
  pid: number;
  uid: number;
  gid: number;
  /** Supplementary groups (SO_PEERGROUPS), when asked for: see peerGroups. */
  groups?: readonly number[];
}

/** Who connected (SO_PEERCRED): the process and its ids as they were at connect(2). */
export function peerCredentials(fd: number): PeerCredentials {
  const value = Buffer.alloc(12);
  const len = Buffer.alloc(4);
  len.writeUInt32LE(12, 0);
  if (s().getsockopt(fd, SOL_SOCKET, SO_PEERCRED, value, len) < 0) throw new SysError('getsockopt SO_PEERCRED', lastErrno());
  return { pid: value.readInt32LE(0), uid: value.readUInt32LE(4), gid: value.readUInt32LE(8) };
}

/**
 * The supplementary groups of the process at the other end of `fd`
 * (SO_PEERGROUPS, Linux 4.13), as they were at connect(2), like
 * SO_PEERCRED: the caller's groups as the kernel reports them, never as the
 * caller says. At most NGROUPS_MAX (65536) of them.
 */
export function peerGroups(fd: number): number[] {
  let size = 64 * 4;
  for (let attempt = 0; attempt < 3; attempt++) {
    const value = Buffer.alloc(size);
    const len = Buffer.alloc(4);
    len.writeUInt32LE(size, 0);
    if (s().getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, value, len) === 0) {
      const got = len.readUInt32LE(0);
      const groups: number[] = [];
      for (let off = 0; off + 4 <= Math.min(got, size); off += 4) groups.push(value.readUInt32LE(off));
      return groups;
    }
    const errno = lastErrno();
    // Too small a buffer: the kernel says how much it needs in `len`.
    if (errno !== ERANGE) throw new SysError('getsockopt SO_PEERGROUPS', errno);
    size = Math.min(Math.max(len.readUInt32LE(0), size * 2), 65536 * 4);
  }
  throw new SysError('getsockopt SO_PEERGROUPS', ERANGE);
}

/**
 * A pidfd (close-on-exec) for the process at the other end of `fd`.
 * SO_PEERPIDFD (Linux 6.5) names the very process that connected. Older
 * kernels fall back to pidfd_open(2) on SO_PEERCRED's pid, which is racy:
 * if the peer exited and its pid was reused, the pidfd names another process
 * (`exact: false` says so; callers that act on the peer's namespaces should
 * refuse then, or check the peer is still connected after opening it).
 */
export function peerPidfd(fd: number): { pidfd: number; exact: boolean } {
  const value = Buffer.alloc(4);
  const len = Buffer.alloc(4);
  len.writeUInt32LE(4, 0);
  if (s().getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, value, len) === 0) return { pidfd: value.readInt32LE(0), exact: true };
  const errno = lastErrno();
  if (errno !== ENOPROTOOPT) throw new SysError('getsockopt SO_PEERPIDFD', errno);
  const { pid } = peerCredentials(fd);
  const pidfd = s().pidfd_open(pid, 0);
  if (pidfd < 0) throw new SysError('pidfd_open', lastErrno());
  return { pidfd, exact: false };
}

/** Whether `fd` is a listening socket (SO_ACCEPTCONN). */
function isListening(fd: number): boolean {
  const value = Buffer.alloc(4);
  const len = Buffer.alloc(4);
  len.writeUInt32LE(4, 0);
  return s().getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, value, len) === 0 && value.readInt32LE(0) !== 0;
}

/**
 * The listening sockets systemd passed (socket activation: LISTEN_PID is this
 * process, LISTEN_FDS of them from fd 3), made close-on-exec and
 * non-blocking, the variables removed so children do not take them too.
 * Empty when not socket-activated. A passed descriptor that is not a
 * listening socket is an error naming it.
 */
export function systemdListenFds(env: NodeJS.ProcessEnv = process.env): number[] {
  const pid = env.LISTEN_PID;
  const count = env.LISTEN_FDS;
  if (pid === undefined || count === undefined) return [];
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  if (!/^[1-9][0-9]*$/.test(pid) || Number(pid) !== process.pid) return [];
  if (!/^[0-9]+$/.test(count) || Number(count) > 64) throw new SysError('LISTEN_FDS', 22 /* EINVAL */, count);
  const fds: number[] = [];
  for (let fd = 3; fd < 3 + Number(count); fd++) {
    if (s().fcntl(fd, F_SETFD, 'int', FD_CLOEXEC) < 0) throw new SysError('fcntl F_SETFD', lastErrno(), `fd ${fd}`);
    if (!isListening(fd)) throw new SysError('socket activation', 88 /* ENOTSOCK */, `fd ${fd}`);
    const flags = s().fcntl(fd, F_GETFL);
    if (flags < 0 || s().fcntl(fd, F_SETFL, 'int', flags | O_NONBLOCK) < 0) throw new SysError('fcntl F_SETFL', lastErrno(), `fd ${fd}`);
    fds.push(fd);
  }
  return fds;
}
