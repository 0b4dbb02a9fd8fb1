/**
 * openat2(2) (Linux 5.6+; glibc has no wrapper): open a path beneath a
 * directory descriptor with the kernel refusing `..` out of it, symlinks and
 * magic links on the way, and mount crossings, as overlayfs does when it
 * follows a redirect into a data-only layer.
 */
import { check, libc, SysError } from './libc.js';

/** The same number on every architecture (the unified syscall table from 5.x on). */
const SYS_openat2 = 437;

export const RESOLVE_NO_XDEV = 0x01;
export const RESOLVE_NO_MAGICLINKS = 0x02;
export const RESOLVE_NO_SYMLINKS = 0x04;
export const RESOLVE_BENEATH = 0x08;

/** O_PATH is not in Node's fs.constants; its value is the same on every Linux architecture but alpha/parisc/sparc. */
export const O_PATH = 0o10000000;

let closeFn: ((fd: number) => number) | null = null;

/**
 * close(2) of a descriptor openat2 returned. Not fs.closeSync: Node keeps
 * account of the descriptors a worker thread opened through fs, and warns
 * when a worker closes one it did not.
 */
export function closeFd(fd: number): void {
  closeFn ??= libc().func('int close(int fd)') as unknown as typeof closeFn;
  closeFn!(fd);
}

let syscall: ((nr: number, t1: string, dirfd: number, t2: string, path: Buffer, t3: string, how: Buffer, t4: string, size: number) => number) | null = null;

/**
 * Open `path` (bytes, no NUL) relative to `dirfd` with `flags` (open(2)
 * flags, O_CLOEXEC added) and `resolve` (RESOLVE_*). Returns the descriptor;
 * throws SysError (ENOENT, ELOOP for a symlink, EXDEV for an escape or
 * another mount, ENOSYS before Linux 5.6).
 */
export function openat2(dirfd: number, path: Buffer | string, flags: number, resolve: number): number {
  syscall ??= libc().func('long syscall(long nr, ...)') as unknown as typeof syscall;
  const p = typeof path === 'string' ? Buffer.from(path) : path;
  const cpath = Buffer.alloc(p.length + 1);
  p.copy(cpath);
  // struct open_how { u64 flags; u64 mode; u64 resolve; }
  const how = Buffer.alloc(24);
  how.writeBigUInt64LE(BigInt((flags | 0o2000000) >>> 0), 0);
  how.writeBigUInt64LE(BigInt(resolve), 16);
  return check('openat2', syscall!(SYS_openat2, 'int', dirfd, 'void *', cpath, 'void *', how, 'size_t', 24), p.toString());
}

export { SysError };
