/**
 * File system calls Node lacks, through koffi: extended attributes without
 * following symlinks, FICLONE reflinks, copy_file_range, syncfs, O_TMPFILE
 * and linking an open file into the tree, fs-verity enabling.
 *
 * Paths are Buffers (any bytes but NUL; we append the NUL), so file names
 * that are not UTF-8 survive. Errors throw `SysError` with errno.
 */
import { openSync } from 'node:fs';
import { bindLazily, check, koffi, lastErrno, SysError } from './libc.js';
import type { Xattr } from '../tree/model.js';

interface Calls {
  llistxattr: (path: Buffer, list: Buffer | null, size: number) => number;
  lgetxattr: (path: Buffer, name: Buffer, value: Buffer | null, size: number) => number;
  /** Variadic: koffi wants each extra argument's type before its value. */
  ioctl: (fd: number, req: number, argType: string, arg: number | Buffer) => number;
  copyFileRange: (fdIn: number, offIn: Buffer, fdOut: number, offOut: Buffer, len: number, flags: number) => number;
  syncfs: (fd: number) => number;
  linkat: (olddirfd: number, oldpath: Buffer, newdirfd: number, newpath: Buffer, flags: number) => number;
  renameat2: (olddirfd: number, oldpath: Buffer, newdirfd: number, newpath: Buffer, flags: number) => number;
  statx: (dirfd: number, path: Buffer, flags: number, mask: number, out: Buffer) => number;
}

const c = bindLazily<Calls>((l) => ({
    llistxattr: l.func('llistxattr', 'intptr_t', ['const void *', 'void *', 'size_t']) as unknown as Calls['llistxattr'],
    lgetxattr: l.func('lgetxattr', 'intptr_t', ['const void *', 'const void *', 'void *', 'size_t']) as unknown as Calls['lgetxattr'],
    ioctl: l.func('int ioctl(int fd, unsigned long req, ...)') as unknown as Calls['ioctl'],
    copyFileRange: l.func('copy_file_range', 'intptr_t', ['int', 'void *', 'int', 'void *', 'size_t', 'unsigned int']) as unknown as Calls['copyFileRange'],
    syncfs: l.func('syncfs', 'int', ['int']) as unknown as Calls['syncfs'],
    linkat: l.func('linkat', 'int', ['int', 'const void *', 'int', 'const void *', 'int']) as unknown as Calls['linkat'],
    renameat2: l.func('renameat2', 'int', ['int', 'const void *', 'int', 'const void *', 'unsigned int']) as unknown as Calls['renameat2'],
    statx: l.func('statx', 'int', ['int', 'const void *', 'int', 'unsigned int', 'void *']) as unknown as Calls['statx'],
}));

function ioctlInt(fd: number, req: number, arg: number): number {
  return c().ioctl(fd, req, 'int', arg);
}
function ioctlPtr(fd: number, req: number, arg: Buffer): number {
  return c().ioctl(fd, req, 'void *', arg);
}

export const AT_FDCWD = -100;
export const AT_SYMLINK_FOLLOW = 0x400;
export const AT_EMPTY_PATH = 0x1000;
export const RENAME_NOREPLACE = 1;
export const O_TMPFILE = 0o20000000 | 0o200000; // __O_TMPFILE | O_DIRECTORY
export const FICLONE = 0x40049409; // _IOW(0x94, 9, int)
export const FS_IOC_ENABLE_VERITY = 0x40806685; // _IOW('f', 133, struct fsverity_enable_arg)

/** A path as a NUL-terminated Buffer for C. */
export function cPath(path: string | Buffer): Buffer {
  const b = typeof path === 'string' ? Buffer.from(path) : path;
  const out = Buffer.allocUnsafe(b.length + 1);
  b.copy(out);
  out[b.length] = 0;
  return out;
}

function shown(path: Buffer | string): string {
  return typeof path === 'string' ? path : path.toString();
}

let scratch = Buffer.allocUnsafeSlow(64 * 1024);

/**
 * All extended attributes of `path` (not following a final symlink), in the
 * order the file system lists them. With `userOnly`, only `user.*`.
 * `cpath` must be NUL-terminated (see cPath).
 */
export function readXattrs(cpath: Buffer, userOnly = false): Xattr[] {
  const f = c();
  let n: number;
  for (;;) {
    n = f.llistxattr(cpath, scratch, scratch.length);
    if (n >= 0) break;
    const e = lastErrno();
    if (e === 34 /* ERANGE */) {
      const need = f.llistxattr(cpath, null, 0);
      if (need < 0) throw new SysError('llistxattr', lastErrno(), shown(cpath.subarray(0, -1)));
      scratch = Buffer.allocUnsafeSlow(Math.max(need, scratch.length * 2));
      continue;
    }
    if (e === 95 /* EOPNOTSUPP */) return [];
    throw new SysError('llistxattr', e, shown(cpath.subarray(0, -1)));
  }
  if (n === 0) return [];
  const names: Buffer[] = [];
  let start = 0;
  for (let i = 0; i < n; i++) {
    if (scratch[i] === 0) {
      if (i > start) names.push(Buffer.from(scratch.subarray(start, i)));
      start = i + 1;
    }
  }
  const out: Xattr[] = [];
  const userPrefix = Buffer.from('user.');
  for (const key of names) {
    if (userOnly && !(key.length >= 5 && key.subarray(0, 5).equals(userPrefix))) continue;
    out.push({ key, value: getXattr(cpath, key) });
  }
  return out;
}

/** One extended attribute's value (not following a final symlink). */
export function getXattr(cpath: Buffer, key: Buffer): Buffer {
  const f = c();
  const cname = cPath(key);
  for (;;) {
    const n = f.lgetxattr(cpath, cname, scratch, scratch.length);
    if (n >= 0) return Buffer.from(scratch.subarray(0, n));
    const e = lastErrno();
    if (e !== 34 /* ERANGE */) throw new SysError(`lgetxattr ${key.toString()}`, e, shown(cpath.subarray(0, -1)));
    const need = f.lgetxattr(cpath, cname, null, 0);
    if (need < 0) throw new SysError(`lgetxattr ${key.toString()}`, lastErrno(), shown(cpath.subarray(0, -1)));
    scratch = Buffer.allocUnsafeSlow(Math.max(need, scratch.length * 2));
  }
}

/** Reflink all of `srcFd` into `dstFd`. Throws SysError (EOPNOTSUPP, EXDEV, EINVAL...) when impossible. */
export function ficlone(dstFd: number, srcFd: number): void {
  check('ioctl(FICLONE)', ioctlInt(dstFd, FICLONE, srcFd));
}

const offIn = Buffer.alloc(8);
const offOut = Buffer.alloc(8);

/**
 * copy_file_range from offset `from` of `srcFd` to the same offset of
 * `dstFd`, at most `len` bytes; returns bytes copied (0 at end of file).
 */
export function copyFileRange(srcFd: number, dstFd: number, from: number, len: number): number {
  offIn.writeBigInt64LE(BigInt(from));
  offOut.writeBigInt64LE(BigInt(from));
  return check('copy_file_range', c().copyFileRange(srcFd, offIn, dstFd, offOut, len, 0));
}

/** Flush every dirty page and inode of the file system holding `fd`. */
export function syncfs(fd: number, what?: string): void {
  check('syncfs', c().syncfs(fd), what);
}

/**
 * Give the anonymous (O_TMPFILE) file open on `fd` the name `dest`. Fails
 * with EEXIST if `dest` exists (never replaces). Uses /proc/self/fd, which
 * needs no privilege, then AT_EMPTY_PATH.
 */
export function linkFd(fd: number, dest: string | Buffer): void {
  const f = c();
  const cdest = cPath(dest);
  if (f.linkat(AT_FDCWD, cPath(`/proc/self/fd/${fd}`), AT_FDCWD, cdest, AT_SYMLINK_FOLLOW) === 0) return;
  const e = lastErrno();
  if (e === 2 /* ENOENT: no /proc */) {
    check('linkat', f.linkat(fd, cPath(''), AT_FDCWD, cdest, AT_EMPTY_PATH), shown(dest));
    return;
  }
  throw new SysError('linkat', e, shown(dest));
}

/** rename that fails with EEXIST instead of replacing `to`. */
export function renameNoReplace(from: string | Buffer, to: string | Buffer): void {
  check('renameat2', c().renameat2(AT_FDCWD, cPath(from), AT_FDCWD, cPath(to), RENAME_NOREPLACE), shown(to));
}

/** Open an unnamed file in directory `dir` (O_TMPFILE); `flags` adds to O_TMPFILE (default O_RDWR). */
export function openTmpfile(dir: string, mode = 0o644, flags = 2 /* O_RDWR */): number {
  return openSync(dir, O_TMPFILE | flags | 0o2000000 /* O_CLOEXEC */, mode);
}

export interface EnableVerityOptions {
  /** FS_VERITY_HASH_ALG_*: 1 SHA-256 (default), 2 SHA-512. */
  hashAlgorithm?: number;
  /** A builtin signature (PKCS#7 DER over the fsverity_formatted_digest) the kernel checks against its .fs-verity keyring. */
  signature?: Uint8Array;
}

/** Try to enable fs-verity (4 KiB blocks) on a read-only fd. Returns errno, 0 on success. */
export function enableVerity(fd: number, options: EnableVerityOptions = {}): number {
  // struct fsverity_enable_arg: u32 version, u32 hash_algorithm, u32 block_size,
  // u32 salt_size, u64 salt_ptr, u32 sig_size, u32 reserved1, u64 sig_ptr, u64 reserved2[11]
  const arg = Buffer.alloc(128);
  arg.writeUInt32LE(1, 0);
  arg.writeUInt32LE(options.hashAlgorithm ?? 1, 4);
  arg.writeUInt32LE(4096, 8);
  // Off-heap and unpooled: the kernel reads the signature through the address written here.
  const signature = options.signature !== undefined && options.signature.length > 0 ? Buffer.allocUnsafeSlow(options.signature.length) : null;
  if (signature !== null) {
    signature.set(options.signature!);
    arg.writeUInt32LE(signature.length, 24);
    arg.writeBigUInt64LE(BigInt(Number(koffi.address(signature))), 32);
  }
  return ioctlPtr(fd, FS_IOC_ENABLE_VERITY, arg) === 0 ? 0 : lastErrno();
}

/** What lstat tells, with exact nanosecond times and no BigInt. */
export interface StatInfo {
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  /** st_rdev in glibc's dev_t encoding (what Node's Stats.rdev holds). */
  rdev: number;
  /** st_dev in glibc's dev_t encoding, for hard-link identity. */
  dev: number;
  ino: number;
  size: number;
  mtimeSec: number;
  mtimeNsec: number;
  ctimeSec: number;
  ctimeNsec: number;
}

const STATX_BASIC_STATS = 0x7ff;
const AT_SYMLINK_NOFOLLOW = 0x100;
const statxBuf = Buffer.alloc(256);
const EMPTY_CPATH = Buffer.from([0]);

/** glibc's makedev(). */
export function makedev(major: number, minor: number): number {
  return (major & 0xfff) * 0x100 + (minor & 0xff) + (minor & ~0xff) * 0x1000 + Math.floor(major / 0x1000) * 0x100000000000;
}

// 64-bit fields without BigInt (exact below 2^53, which sizes, inode numbers and times stay under).
function u64(b: Buffer, off: number): number {
  return b.readUInt32LE(off) + b.readUInt32LE(off + 4) * 0x100000000;
}
function i64(b: Buffer, off: number): number {
  return b.readUInt32LE(off) + b.readInt32LE(off + 4) * 0x100000000;
}

function readStatx(): StatInfo {
  const b = statxBuf;
  return {
    nlink: b.readUInt32LE(16),
    uid: b.readUInt32LE(20),
    gid: b.readUInt32LE(24),
    mode: b.readUInt16LE(28),
    ino: u64(b, 32),
    size: u64(b, 40),
    ctimeSec: i64(b, 96),
    ctimeNsec: b.readUInt32LE(104),
    mtimeSec: i64(b, 112),
    mtimeNsec: b.readUInt32LE(120),
    rdev: makedev(b.readUInt32LE(128), b.readUInt32LE(132)),
    dev: makedev(b.readUInt32LE(136), b.readUInt32LE(140)),
  };
}

/** lstat through statx (cheaper than Node's BigInt stats). `cpath` NUL-terminated (see cPath). */
export function lstatx(cpath: Buffer): StatInfo {
  check('lstat', c().statx(AT_FDCWD, cpath, AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, statxBuf), shown(cpath.subarray(0, -1)));
  return readStatx();
}

/** fstat through statx. */
export function fstatx(fd: number): StatInfo {
  check('fstat', c().statx(fd, EMPTY_CPATH, AT_EMPTY_PATH, STATX_BASIC_STATS, statxBuf));
  return readStatx();
}

export { SysError };
