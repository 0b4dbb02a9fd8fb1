/**
 * The kernel's mount interfaces: the new mount API (fsopen, fsconfig, fsmount,
 * move_mount, open_tree, mount_setattr) and the legacy mount(2)/umount2(2).
 *
 * Every wrapper throws `SysError` (with errno) on failure. Functions are bound
 * lazily, on first use, so importing this module costs nothing. glibc 2.36 and
 * later export the new-API wrappers; on an older glibc we go through
 * syscall(2) with the numbers, which are the same on every architecture
 * except alpha.
 */
import { closeSync, readSync } from 'node:fs';
import { SysError, koffi, libc } from './libc.js';

export const AT_FDCWD = -100;
export const AT_EMPTY_PATH = 0x1000;
export const AT_RECURSIVE = 0x8000;

export const FSOPEN_CLOEXEC = 0x1;
export const FSMOUNT_CLOEXEC = 0x1;

export const FSCONFIG_SET_FLAG = 0;
export const FSCONFIG_SET_STRING = 1;
export const FSCONFIG_SET_BINARY = 2;
export const FSCONFIG_SET_PATH = 3;
export const FSCONFIG_SET_PATH_EMPTY = 4;
export const FSCONFIG_SET_FD = 5;
export const FSCONFIG_CMD_CREATE = 6;
export const FSCONFIG_CMD_RECONFIGURE = 7;

export const MOVE_MOUNT_F_EMPTY_PATH = 0x4;
export const MOVE_MOUNT_T_EMPTY_PATH = 0x40;

export const OPEN_TREE_CLONE = 0x1;
export const OPEN_TREE_CLOEXEC = 0o2000000;

/** Mount attributes (fsmount's attr_flags, mount_setattr's attr_set/attr_clr). */
export const MOUNT_ATTR_RDONLY = 0x1;
export const MOUNT_ATTR_NOSUID = 0x2;
export const MOUNT_ATTR_NODEV = 0x4;
export const MOUNT_ATTR_NOEXEC = 0x8;
export const MOUNT_ATTR__ATIME = 0x70;
export const MOUNT_ATTR_RELATIME = 0x0;
export const MOUNT_ATTR_NOATIME = 0x10;
export const MOUNT_ATTR_STRICTATIME = 0x20;
export const MOUNT_ATTR_NODIRATIME = 0x80;
export const MOUNT_ATTR_IDMAP = 0x100000;
export const MOUNT_ATTR_SIZE_VER0 = 32;

/** Legacy mount(2) flags. */
export const MS_RDONLY = 0x1;
export const MS_NOSUID = 0x2;
export const MS_NODEV = 0x4;
export const MS_NOEXEC = 0x8;
export const MS_NOATIME = 0x400;
export const MS_NODIRATIME = 0x800;
export const MS_SILENT = 0x8000;
export const MS_PRIVATE = 1 << 18;
export const MS_RELATIME = 1 << 21;
export const MS_STRICTATIME = 1 << 24;

export const MNT_FORCE = 0x1;
export const MNT_DETACH = 0x2;
export const UMOUNT_NOFOLLOW = 0x8;

/** O_PATH is not in Node's fs.constants; its value is the same on every Linux architecture but alpha/parisc/sparc. */
export const O_PATH = 0o10000000;
/** __O_TMPFILE; O_TMPFILE is this | O_DIRECTORY. */
export const O__TMPFILE = 0o20000000;

const SYS = { open_tree: 428, move_mount: 429, fsopen: 430, fsconfig: 431, fsmount: 432, fspick: 433, mount_setattr: 442 } as const;

interface Bindings {
  fsopen(name: string, flags: number): number;
  fsconfig(fd: number, cmd: number, key: string | null, value: string | null, aux: number): number;
  fsmount(fd: number, flags: number, attr: number): number;
  move_mount(fromDfd: number, fromPath: string, toDfd: number, toPath: string, flags: number): number;
  open_tree(dfd: number, path: string, flags: number): number;
  mount_setattr(dfd: number, path: string, flags: number, attr: Buffer, size: number): number;
  mount(source: string | null, target: string, fstype: string | null, flags: number, data: string | null): number;
  umount2(target: string, flags: number): number;
}

let b: Bindings | null = null;

function bind(): Bindings {
  if (b) return b;
  const lib = libc();
  const tryFunc = (proto: string): ((...a: unknown[]) => number) | null => {
    try {
      return lib.func(proto) as (...a: unknown[]) => number;
    } catch {
      return null; // symbol missing: glibc older than 2.36
    }
  };
  let sys: ((...a: unknown[]) => number) | null = null;
  const viaSyscall = (nr: number, types: string[]) => (...args: unknown[]) => {
    sys ??= lib.func('long syscall(long number, ...)') as (...a: unknown[]) => number;
    const va: unknown[] = [];
    types.forEach((t, i) => va.push(t, args[i]));
    return Number(sys(nr, ...va));
  };
  const pick = (proto: string, nr: number, types: string[]) => tryFunc(proto) ?? viaSyscall(nr, types);
  b = {
    fsopen: pick('int fsopen(const char *fs_name, unsigned int flags)', SYS.fsopen, ['str', 'uint']) as Bindings['fsopen'],
    fsconfig: pick('int fsconfig(int fd, unsigned int cmd, const char *key, const char *value, int aux)', SYS.fsconfig, [
      'int',
      'uint',
      'str',
      'str',
      'int',
    ]) as Bindings['fsconfig'],
    fsmount: pick('int fsmount(int fd, unsigned int flags, unsigned int attr_flags)', SYS.fsmount, ['int', 'uint', 'uint']) as Bindings['fsmount'],
    move_mount: pick(
      'int move_mount(int from_dfd, const char *from_path, int to_dfd, const char *to_path, unsigned int flags)',
      SYS.move_mount,
      ['int', 'str', 'int', 'str', 'uint'],
    ) as Bindings['move_mount'],
    open_tree: pick('int open_tree(int dfd, const char *path, unsigned int flags)', SYS.open_tree, ['int', 'str', 'uint']) as Bindings['open_tree'],
    mount_setattr: pick('int mount_setattr(int dfd, const char *path, unsigned int flags, void *attr, size_t size)', SYS.mount_setattr, [
      'int',
      'str',
      'uint',
      'void *',
      'size_t',
    ]) as Bindings['mount_setattr'],
    mount: lib.func(
      'int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const char *data)',
    ) as Bindings['mount'],
    umount2: lib.func('int umount2(const char *target, int flags)') as Bindings['umount2'],
  };
  return b;
}

function fail(syscall: string, path?: string): never {
  throw new SysError(syscall, koffi.errno(), path);
}

export function fsopen(fsName: string, flags = FSOPEN_CLOEXEC): number {
  const fd = bind().fsopen(fsName, flags);
  if (fd < 0) fail('fsopen', fsName);
  return fd;
}

/**
 * A failed fsconfig() carries the kernel's own explanation in the context's
 * message log ("e erofs: ..."); `FsConfigError` keeps it next to errno.
 */
export class FsConfigError extends SysError {
  constructor(readonly key: string, errno: number, readonly kernelLog: string[]) {
    super(`fsconfig ${key}`, errno);
    if (kernelLog.length) this.message += ` (kernel: ${kernelLog.map(stripLogPrefix).join('; ')})`;
  }
}

function stripLogPrefix(line: string): string {
  return line.replace(/^[ewi] /, '');
}

function fsconfigCall(fd: number, cmd: number, key: string | null, value: string | null, aux: number, what: string): void {
  if (bind().fsconfig(fd, cmd, key, value, aux) < 0) {
    const errno = koffi.errno();
    throw new FsConfigError(what, errno, readFsLog(fd));
  }
}

export function fsconfigString(fd: number, key: string, value: string): void {
  fsconfigCall(fd, FSCONFIG_SET_STRING, key, value, 0, `${key}=${value}`);
}

export function fsconfigFlag(fd: number, key: string): void {
  fsconfigCall(fd, FSCONFIG_SET_FLAG, key, null, 0, key);
}

export function fsconfigFd(fd: number, key: string, valueFd: number): void {
  fsconfigCall(fd, FSCONFIG_SET_FD, key, null, valueFd, `${key} (file descriptor)`);
}

export function fsconfigCreate(fd: number): void {
  fsconfigCall(fd, FSCONFIG_CMD_CREATE, null, null, 0, 'create');
}

/** Drain the filesystem context's message log (messages the kernel attached to the last errors). */
export function readFsLog(fd: number): string[] {
  const out: string[] = [];
  const buf = Buffer.allocUnsafe(1024);
  for (let i = 0; i < 16; i++) {
    let n: number;
    try {
      n = readSync(fd, buf, 0, buf.length, null);
    } catch {
      break; // ENODATA: log empty
    }
    if (n <= 0) break;
    out.push(buf.toString('utf8', 0, n).trimEnd());
  }
  return out;
}

export function fsmount(fsfd: number, attrFlags: number, flags = FSMOUNT_CLOEXEC): number {
  const fd = bind().fsmount(fsfd, flags, attrFlags);
  if (fd < 0) fail('fsmount');
  return fd;
}

/** Attach a detached mount (fd) at `target` (a path, or with `toFd` an O_PATH fd of the directory). */
export function moveMountTo(mntFd: number, target: string, toFd?: number): void {
  const r =
    toFd === undefined
      ? bind().move_mount(mntFd, '', AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)
      : bind().move_mount(mntFd, '', toFd, '', MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH);
  if (r < 0) fail('move_mount', target);
}

export function openTree(dfd: number, path: string, flags: number): number {
  const fd = bind().open_tree(dfd, path, flags);
  if (fd < 0) fail('open_tree', path);
  return fd;
}

/** mount_setattr on a mount fd (AT_EMPTY_PATH). */
export function mountSetattrFd(mntFd: number, attr: { set?: number; clr?: number; propagation?: number; usernsFd?: number }): void {
  const a = Buffer.alloc(MOUNT_ATTR_SIZE_VER0);
  a.writeBigUInt64LE(BigInt(attr.set ?? 0), 0);
  a.writeBigUInt64LE(BigInt(attr.clr ?? 0), 8);
  a.writeBigUInt64LE(BigInt(attr.propagation ?? 0), 16);
  a.writeBigUInt64LE(BigInt(attr.usernsFd ?? 0), 24);
  if (bind().mount_setattr(mntFd, '', AT_EMPTY_PATH, a, a.length) < 0) fail('mount_setattr');
}

export function mount(source: string | null, target: string, fstype: string | null, flags: number, data: string | null): void {
  if (bind().mount(source, target, fstype, flags, data) < 0) fail(`mount ${fstype ?? ''}`.trim(), target);
}

export function umount2(target: string, flags = 0): void {
  if (bind().umount2(target, flags) < 0) fail('umount', target);
}

/** Close, ignoring errors: for cleanup paths. */
export function closeQuiet(fd: number): void {
  if (fd < 0) return;
  try {
    closeSync(fd);
  } catch {
    /* already closed */
  }
}
