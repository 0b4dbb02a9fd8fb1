/**
 * epoll(7) and eventfd(2), for waiting on sockets whose messages carry
 * descriptors: Node's own sockets read with read(2), which drops SCM_RIGHTS,
 * so the mount service does its reading itself and needs readiness. The wait
 * runs as a koffi asynchronous call (one libuv worker thread blocks in
 * epoll_wait) and its result comes back to the event loop.
 *
 * struct epoll_event is packed on x86-64 (12 bytes: events at 0, data at 4)
 * and naturally aligned elsewhere (16 bytes: data at 8).
 */
import { bindLazily, koffi, lastErrno, SysError } from './libc.js';

export const EPOLLIN = 0x1;
export const EPOLLOUT = 0x4;
export const EPOLLERR = 0x8;
export const EPOLLHUP = 0x10;
export const EPOLLRDHUP = 0x2000;
const EPOLL_CLOEXEC = 0o2000000;
const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const EPOLL_CTL_MOD = 3;
const EFD_CLOEXEC = 0o2000000;
const EFD_NONBLOCK = 0o4000;

const packed = process.arch === 'x64';
export const EPOLL_EVENT_SIZE = packed ? 12 : 16;
const DATA_OFFSET = packed ? 4 : 8;

type AsyncCallback = (err: unknown, result: number) => void;

interface Calls {
  epoll_create1: (flags: number) => number;
  epoll_ctl: (epfd: number, op: number, fd: number, event: Buffer | null) => number;
  epoll_wait: ((epfd: number, events: bigint, maxevents: number, timeout: number) => number) & {
    async: (epfd: number, events: bigint, maxevents: number, timeout: number, done: AsyncCallback) => void;
  };
  eventfd: (initval: number, flags: number) => number;
  write: (fd: number, buf: Buffer, count: number) => number | bigint;
  read: (fd: number, buf: Buffer, count: number) => number | bigint;
}

const c = bindLazily<Calls>((l) => ({
  epoll_create1: l.func('int epoll_create1(int flags)') as unknown as Calls['epoll_create1'],
  epoll_ctl: l.func('epoll_ctl', 'int', ['int', 'int', 'int', 'void *']) as unknown as Calls['epoll_ctl'],
  // The events array is passed as an address: the worker thread writes into memory the caller keeps alive.
  epoll_wait: l.func('epoll_wait', 'int', ['int', 'uint64_t', 'int', 'int']) as unknown as Calls['epoll_wait'],
  eventfd: l.func('int eventfd(unsigned int initval, int flags)') as unknown as Calls['eventfd'],
  write: l.func('write', 'intptr_t', ['int', 'void *', 'size_t']) as unknown as Calls['write'],
  read: l.func('read', 'intptr_t', ['int', 'void *', 'size_t']) as unknown as Calls['read'],
}));

export function epollCreate(): number {
  const fd = c().epoll_create1(EPOLL_CLOEXEC);
  if (fd < 0) throw new SysError('epoll_create1', lastErrno());
  return fd;
}

function ctl(op: number, epfd: number, fd: number, events: number, token: number): void {
  const ev = Buffer.alloc(EPOLL_EVENT_SIZE);
  ev.writeUInt32LE(events >>> 0, 0);
  ev.writeBigUInt64LE(BigInt(token), DATA_OFFSET);
  if (c().epoll_ctl(epfd, op, fd, ev) < 0) throw new SysError('epoll_ctl', lastErrno());
}

/** Watch `fd` for `events`; its events report `token` (never the fd, which may be reused once closed). */
export function epollAdd(epfd: number, fd: number, events: number, token: number): void {
  ctl(EPOLL_CTL_ADD, epfd, fd, events, token);
}

export function epollModify(epfd: number, fd: number, events: number, token: number): void {
  ctl(EPOLL_CTL_MOD, epfd, fd, events, token);
}

/** Stop watching `fd` (before closing it: a duplicate left open elsewhere would keep it registered). */
export function epollRemove(epfd: number, fd: number): void {
  if (c().epoll_ctl(epfd, EPOLL_CTL_DEL, fd, null) < 0) throw new SysError('epoll_ctl', lastErrno());
}

export interface EpollEvent {
  token: number;
  events: number;
}

/** Memory for `epollWaitAsync` to fill: off-heap, so its address stays put while a worker writes to it. */
export function epollEventBuffer(maxEvents: number): Buffer {
  return Buffer.allocUnsafeSlow(maxEvents * EPOLL_EVENT_SIZE).fill(0);
}

/**
 * Wait on a worker thread for events (`timeoutMs` -1: until one comes), then
 * call `done` on the event loop with them; a failed wait (EINTR or worse)
 * reports `null`. `buffer` must stay referenced until `done` runs.
 */
export function epollWaitAsync(epfd: number, buffer: Buffer, timeoutMs: number, done: (events: EpollEvent[] | null) => void): void {
  const max = Math.floor(buffer.length / EPOLL_EVENT_SIZE);
  c().epoll_wait.async(epfd, BigInt(Number(koffi.address(buffer))), max, timeoutMs, (err, n) => {
    if (err || n < 0) return done(null);
    const events: EpollEvent[] = [];
    for (let i = 0; i < n; i++) {
      const off = i * EPOLL_EVENT_SIZE;
      events.push({ events: buffer.readUInt32LE(off), token: Number(buffer.readBigUInt64LE(off + DATA_OFFSET)) });
    }
    done(events);
  });
}

/** A non-blocking, close-on-exec eventfd: the way to wake a worker blocked in epoll_wait. */
export function eventFd(): number {
  const fd = c().eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) throw new SysError('eventfd', lastErrno());
  return fd;
}

export function eventFdSignal(fd: number): void {
  const one = Buffer.alloc(8);
  one.writeBigUInt64LE(1n, 0);
  c().write(fd, one, 8); // a full counter (EAGAIN) is already a wake-up
}

export function eventFdDrain(fd: number): void {
  const value = Buffer.alloc(8);
  c().read(fd, value, 8);
}
