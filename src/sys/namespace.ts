/**
 * Joining another process's mount namespace, for one thread: pidfd_open,
 * unshare(CLONE_FS) (a thread shares its root and working directory with
 * the others, and the kernel lets only a thread with its own join a mount
 * namespace), setns; and faccessat2 (an access check on an open
 * descriptor, as the thread's credentials allow).
 */
import { lastErrno, libc, SysError } from './libc.js';

export const CLONE_FS = 0x200;
export const CLONE_NEWNS = 0x20000;
export const AT_EMPTY_PATH = 0x1000;
export const AT_EACCESS = 0x200;
export const W_OK = 2;
export const X_OK = 1;

const NR: Record<string, { unshare: number; setns: number; pidfd_open: number; faccessat2: number }> = {
  x64: { unshare: 272, setns: 308, pidfd_open: 434, faccessat2: 439 },
  arm64: { unshare: 97, setns: 268, pidfd_open: 434, faccessat2: 439 },
};

type Syscall = (nr: number, ...args: unknown[]) => number | bigint;
let syscallFn: Syscall | null = null;

function call(name: 'unshare' | 'setns' | 'pidfd_open' | 'faccessat2', ...typed: unknown[]): number {
  const table = NR[process.arch];
  if (!table) throw new Error(`namespaces: no system call numbers for ${process.arch}`);
  syscallFn ??= libc().func('long syscall(long number, ...)') as Syscall;
  return Number(syscallFn(table[name], ...typed));
}

/** A pidfd of process `pid` (close-on-exec by the kernel's default). */
export function pidfdOpen(pid: number): number {
  const fd = call('pidfd_open', 'int', pid, 'uint32', 0);
  if (fd < 0) throw new SysError('pidfd_open', lastErrno(), `pid ${pid}`);
  return fd;
}

export function unshare(flags: number): void {
  if (call('unshare', 'int', flags) < 0) throw new SysError('unshare', lastErrno());
}

/** Join the namespaces `nstype` of `fd` (a namespace file, or a pidfd). */
export function setns(fd: number, nstype: number): void {
  if (call('setns', 'int', fd, 'int', nstype) < 0) throw new SysError('setns', lastErrno());
}

/** Whether this thread may access the file open on `fd` with `mode` (W_OK...), by its effective (file-system) credentials; errno when not. */
export function accessFd(fd: number, mode: number): number {
  return call('faccessat2', 'int', fd, 'str', '', 'int', mode, 'int', AT_EMPTY_PATH | AT_EACCESS) < 0 ? lastErrno() : 0;
}

let fchdirFn: ((fd: number) => number) | null = null;

/** Make the directory open on `fd` this thread's working directory (after unshare(CLONE_FS), this thread's alone). */
export function fchdir(fd: number): void {
  fchdirFn ??= libc().func('int fchdir(int fd)') as (fd: number) => number;
  if (fchdirFn(fd) < 0) throw new SysError('fchdir', lastErrno());
}
