/**
 * openat2(2) (Linux 5.6+; glibc has no wrapper): open a path beneath a
 * directory descriptor with the kernel refusing `..` out of it, symlinks and
 * magic links on the way, and mount crossings, as overlayfs does when it
 * follows a redirect into a data-only layer.
 */
import { fstatSync } from 'node:fs';
import { check, libc, SysError } from './libc.js';
import { openatBytes } from './dirfd.js';

/** The same number on every architecture (the unified syscall table from 5.x on). */
const SYS_openat2 = 437;

export const RESOLVE_NO_XDEV = 0x01;
export const RESOLVE_NO_MAGICLINKS = 0x02;
export const RESOLVE_NO_SYMLINKS = 0x04;
export const RESOLVE_BENEATH = 0x08;

/** O_PATH is not in Node's fs.constants; its value is the same on every Linux architecture but alpha/parisc/sparc. */
export const O_PATH = 0o10000000;

const O_NOFOLLOW = 0o400000;

/**
 * Open `path`, a relative path of plain names (no `..`, `.` or empty one:
 * the caller checks), beneath `dirfd` following no symlink: openat2 with
 * RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV,
 * or where the kernel (before 5.6) or a seccomp filter refuses openat2
 * (ENOSYS, EPERM), one openat per name with O_NOFOLLOW (the directories as
 * O_PATH): the same refusals but of another mount. A symlink on the way
 * is ELOOP either way.
 */
export function openBeneath(dirfd: number, path: Buffer, flags: number): number {
  if (openat2Works) {
    try {
      return openat2(dirfd, path, flags, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV);
    } catch (e) {
      const code = (e as SysError).code;
      if (code !== 'ENOSYS' && code !== 'EPERM') throw e;
      openat2Works = false;
    }
  }
  const names: Buffer[] = [];
  let start = 0;
  for (let i = 0; i <= path.length; i++) {
    if (i === path.length || path[i] === 0x2f) {
      names.push(path.subarray(start, i));
      start = i + 1;
    }
  }
  let at = dirfd;
  try {
    for (let i = 0; i < names.length - 1; i++) {
      // O_PATH|O_NOFOLLOW opens a symlink itself: it is told apart as openat2 would (ELOOP).
      const next = openatBytes(at, names[i], O_PATH | O_NOFOLLOW);
      if (at !== dirfd) closeFd(at);
      at = next;
      const st = fstatSync(at);
      if (st.isSymbolicLink()) throw new SysError('openat', 40 /* ELOOP */, path.toString());
      if (!st.isDirectory()) throw new SysError('openat', 20 /* ENOTDIR */, path.toString());
    }
    return openatBytes(at, names[names.length - 1], flags | O_NOFOLLOW);
  } finally {
    if (at !== dirfd) closeFd(at);
  }
}

let openat2Works = true;

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
