/**
 * The *at system calls, for walking a tree that others may write (a shared
 * repository) without ever following a symbolic link: every call takes a
 * directory fd and ONE name (no '/'), and none follows a final symlink, so a
 * link planted anywhere is met as a link, never as what it points at.
 *
 * Errors throw `SysError` with errno (its `code` as Node's: ENOENT, ELOOP...).
 */
import { constants, readdirSync } from 'node:fs';
import { bindLazily, check, lastErrno, SysError } from './libc.js';
import { Mode, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from '../tree/model.js';

interface Calls {
  openat: (dirfd: number, path: Buffer, flags: number, mode: number) => number;
  unlinkat: (dirfd: number, path: string, flags: number) => number;
  mkdirat: (dirfd: number, path: string, mode: number) => number;
  renameat2: (olddirfd: number, oldpath: string, newdirfd: number, newpath: string, flags: number) => number;
  statx: (dirfd: number, path: string, flags: number, mask: number, out: Buffer) => number;
  linkat: (olddirfd: number, oldpath: string, newdirfd: number, newpath: string, flags: number) => number;
}

const c = bindLazily<Calls>((l) => ({
    // The path as bytes (NUL-terminated by the caller): names are any bytes but NUL and '/', not only UTF-8.
    openat: l.func('int openat(int dirfd, const void *path, int flags, unsigned int mode)') as unknown as Calls['openat'],
    unlinkat: l.func('unlinkat', 'int', ['int', 'const char *', 'int']) as unknown as Calls['unlinkat'],
    mkdirat: l.func('mkdirat', 'int', ['int', 'const char *', 'unsigned int']) as unknown as Calls['mkdirat'],
    renameat2: l.func('renameat2', 'int', ['int', 'const char *', 'int', 'const char *', 'unsigned int']) as unknown as Calls['renameat2'],
    statx: l.func('statx', 'int', ['int', 'const char *', 'int', 'unsigned int', 'void *']) as unknown as Calls['statx'],
    linkat: l.func('linkat', 'int', ['int', 'const char *', 'int', 'const char *', 'int']) as unknown as Calls['linkat'],
}));

export const O_NOFOLLOW = constants.O_NOFOLLOW;
export const O_DIRECTORY = constants.O_DIRECTORY;
export const O_NONBLOCK = constants.O_NONBLOCK;
export const O_CLOEXEC = 0o2000000;
const AT_REMOVEDIR = 0x200;
const AT_FDCWD = -100;
const AT_SYMLINK_FOLLOW = 0x400;
/** __O_TMPFILE (the generic value) | this platform's O_DIRECTORY. */
const O_TMPFILE = 0o20000000 | O_DIRECTORY;
const AT_SYMLINK_NOFOLLOW = 0x100;
const AT_EMPTY_PATH = 0x1000;
const RENAME_NOREPLACE = 1;
const STATX_BASIC_STATS = 0x7ff;

// The file-type bits are the tree model's (defined once there); re-exported for the callers of statAt.
export { S_IFDIR, S_IFLNK, S_IFMT, S_IFREG };

/** A single name: the *at calls here resolve exactly one component. */
function one(name: string): string {
  if (name === '' || name.includes('/') || name.includes('\0') || name === '.' || name === '..') throw new SysError('openat', 22 /* EINVAL */, name);
  return name;
}

/** open `name` in `dirfd`, never following it if it is a link (O_NOFOLLOW and O_CLOEXEC always added). */
export function openAt(dirfd: number, name: string, flags: number, mode = 0o644, what?: string): number {
  return check('open', c().openat(dirfd, cString(one(name)), flags | O_NOFOLLOW | O_CLOEXEC, mode), what ?? name);
}

/** `path` (bytes or a string, without NUL) with the NUL C wants. */
function cString(path: Buffer | string): Buffer {
  const p = typeof path === 'string' ? Buffer.from(path) : path;
  const out = Buffer.alloc(p.length + 1);
  p.copy(out);
  return out;
}

/**
 * openat(2) of `path` as given (bytes; O_CLOEXEC added, nothing else: the
 * caller chooses O_NOFOLLOW, and checks the names), for callers that resolve
 * a path name by name themselves (openat2.ts's fallback).
 */
export function openatBytes(dirfd: number, path: Buffer | string, flags: number, mode = 0): number {
  return check('openat', c().openat(dirfd, cString(path), flags | O_CLOEXEC, mode), (typeof path === 'string' ? path : path.toString()));
}

/** The directory `name` in `dirfd`, or ENOTDIR/ELOOP when that is anything else (a link included). */
export function openDirAt(dirfd: number, name: string, what?: string): number {
  return openAt(dirfd, name, constants.O_RDONLY | O_DIRECTORY, 0, what);
}

/** Remove `name` from `dirfd` (an empty directory with `dir`); a link is removed, never its target. */
export function unlinkAt(dirfd: number, name: string, dir = false, what?: string): void {
  check('unlink', c().unlinkat(dirfd, one(name), dir ? AT_REMOVEDIR : 0), what ?? name);
}

/** mkdir in `dirfd`: false when `name` exists already (whatever it is). */
export function mkdirAt(dirfd: number, name: string, mode = 0o755, what?: string): boolean {
  if (c().mkdirat(dirfd, one(name), mode) === 0) return true;
  const e = lastErrno();
  if (e === 17 /* EEXIST */) return false;
  throw new SysError('mkdir', e, what ?? name);
}

/** An unnamed file (O_TMPFILE) in the directory `dirfd`; `flags` adds to O_TMPFILE (default O_RDWR). */
export function openTmpfileAt(dirfd: number, mode = 0o644, flags: number = constants.O_RDWR, what?: string): number {
  return check('open(O_TMPFILE)', c().openat(dirfd, cString('.'), O_TMPFILE | flags | O_CLOEXEC, mode), what);
}

/** Hard link `from` (in `fromDir`, not followed) as `to` in `toDir`: EEXIST rather than replacing. */
export function linkAt(fromDir: number, from: string, toDir: number, to: string, what?: string): void {
  check('link', c().linkat(fromDir, one(from), toDir, one(to), 0), what ?? to);
}

/**
 * Give the open file `fd` (an O_TMPFILE) the name `to` in `toDir`: through
 * /proc/self/fd (no privilege needed), else AT_EMPTY_PATH. EEXIST rather than replacing.
 */
export function linkFdAt(fd: number, toDir: number, to: string, what?: string): void {
  const f = c();
  if (f.linkat(AT_FDCWD, `/proc/self/fd/${fd}`, toDir, one(to), AT_SYMLINK_FOLLOW) === 0) return;
  const e = lastErrno();
  if (e !== 2 /* ENOENT: no /proc */) throw new SysError('link', e, what ?? to);
  check('link', f.linkat(fd, '', toDir, to, AT_EMPTY_PATH), what ?? to);
}

/** rename between two directories; with `noReplace` EEXIST rather than replacing. */
export function renameAt(fromDir: number, from: string, toDir: number, to: string, noReplace = false, what?: string): void {
  check('rename', c().renameat2(fromDir, one(from), toDir, one(to), noReplace ? RENAME_NOREPLACE : 0), what ?? to);
}

export interface AtStat {
  mode: number;
  uid: number;
  gid: number;
  size: number;
  nlink: number;
}

const statBuf = Buffer.alloc(256);

function readStat(): AtStat {
  return {
    nlink: statBuf.readUInt32LE(16),
    uid: statBuf.readUInt32LE(20),
    gid: statBuf.readUInt32LE(24),
    mode: statBuf.readUInt16LE(28),
    size: statBuf.readUInt32LE(40) + statBuf.readUInt32LE(44) * 0x100000000,
  };
}

/** lstat of `name` in `dirfd` (a link is described, not followed); null when there is nothing there. */
export function statAt(dirfd: number, name: string, what?: string): AtStat | null {
  if (c().statx(dirfd, one(name), AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, statBuf) === 0) return readStat();
  const e = lastErrno();
  if (e === 2 /* ENOENT */) return null;
  throw new SysError('stat', e, what ?? name);
}

/** fstat of an open fd. */
export function statFd(fd: number, what?: string): AtStat {
  check('stat', c().statx(fd, '', AT_EMPTY_PATH, STATX_BASIC_STATS, statBuf), what);
  return readStat();
}

/**
 * The names in the open directory `fd`. Read through /proc/self/fd/N, which
 * the kernel resolves to the very directory the fd holds (not by its path),
 * so a directory renamed or replaced by a link meanwhile cannot redirect it.
 */
export function listFd(fd: number): string[] {
  return readdirSync(`/proc/self/fd/${fd}`);
}

/** What a file type is called in messages. */
export function typeName(mode: number): string {
  switch (mode & S_IFMT) {
    case S_IFREG:
      return 'a regular file';
    case S_IFDIR:
      return 'a directory';
    case S_IFLNK:
      return 'a symbolic link';
    case Mode.FIFO:
      return 'a FIFO';
    case Mode.SOCK:
      return 'a socket';
    case Mode.CHR:
      return 'a character device';
    case Mode.BLK:
      return 'a block device';
    default:
      return 'a file of unknown type';
  }
}

export { SysError };
