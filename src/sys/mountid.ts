/**
 * Mounts named by their unique id, for the mount service's records: statx's
 * STATX_MNT_ID_UNIQUE (Linux 6.8: a 64-bit id never reused while the system
 * runs, unlike the old mount id), statmount(2) (Linux 6.8; asking in another
 * mount namespace by its id, Linux 6.11), and the id of a process's mount
 * namespace (PIDFD_GET_MNT_NAMESPACE on its pidfd, Linux 6.11, then
 * NS_GET_MNTNS_ID on the namespace, Linux 6.10). Nothing here holds a
 * namespace or a mount open beyond the call: a record of ids pins nothing.
 * Layouts are those of the uapi headers (struct statx, struct mnt_id_req,
 * struct statmount), the same on every 64-bit architecture.
 */
import { bindLazily, lastErrno, libc, SysError } from './libc.js';

export const AT_EMPTY_PATH = 0x1000;
export const AT_SYMLINK_NOFOLLOW = 0x100;
/** statx: report what the kernel has cached, never ask the file system (a FUSE daemon may never answer). */
export const AT_STATX_DONT_SYNC = 0x4000;
/** statx masks: the old mount id, and the unique one. */
export const STATX_MNT_ID = 0x1000;
export const STATX_MNT_ID_UNIQUE = 0x4000;
/** stx_attributes: the file is the root of a mount. */
export const STATX_ATTR_MOUNT_ROOT = 0x2000;

const STATX_SIZE = 256;
const STX_MASK = 0;
const STX_ATTRIBUTES = 8;
const STX_ATTRIBUTES_MASK = 56;
const STX_MNT_ID = 144;

/** statmount(2): the same number on every architecture with the unified table. */
const NR_STATMOUNT = 457;
/** struct mnt_id_req with mnt_ns_id (MNT_ID_REQ_SIZE_VER1). */
const MNT_ID_REQ_SIZE_VER1 = 32;
export const STATMOUNT_SB_BASIC = 0x1;
export const STATMOUNT_MNT_BASIC = 0x2;
export const STATMOUNT_MNT_NS_ID = 0x40;
/** The fixed part of struct statmount read here, with room for what newer kernels add. */
const STATMOUNT_BUF = 512;
const SM_MASK = 8;
const SM_SB_MAGIC = 24;
const SM_MNT_ID = 40;
const SM_MNT_NS_ID = 112;

/** _IO(PIDFS_IOCTL_MAGIC 0xFF, 3): a descriptor of the process's mount namespace. */
const PIDFD_GET_MNT_NAMESPACE = 0xff03;
/** _IOR(NSIO 0xb7, 5, __u64), and _IO(NSIO, 5) as first released (6.10). */
const NS_GET_MNTNS_ID = 0x8008b705;
const NS_GET_MNTNS_ID_OLD = 0xb705;

const ENOENT = 2;

type Syscall = (nr: number, ...args: unknown[]) => number | bigint;

interface Calls {
  statx: (dirfd: number, path: string, flags: number, mask: number, buf: Buffer) => number;
  ioctlInt: (fd: number, req: number, arg: number) => number;
  ioctlBuf: (fd: number, req: number, arg: Buffer) => number;
  close: (fd: number) => number;
  syscall: Syscall;
}

const c = bindLazily<Calls>((l) => {
  const ioctl = l.func('int ioctl(int fd, unsigned long req, ...)') as (fd: number, req: number, type: string, arg: unknown) => number;
  return {
    statx: l.func('int statx(int dirfd, const char *path, int flags, unsigned int mask, _Out_ void *buf)') as unknown as Calls['statx'],
    ioctlInt: (fd, req, arg) => ioctl(fd, req, 'unsigned long', arg),
    ioctlBuf: (fd, req, arg) => ioctl(fd, req, 'void *', arg),
    close: l.func('int close(int fd)') as unknown as Calls['close'],
    syscall: libc().func('long syscall(long number, ...)') as Syscall,
  };
});

export interface MountIdentity {
  /** STATX_MNT_ID_UNIQUE of the mount the descriptor is on. */
  mountId: bigint;
  /** The descriptor names the root of that mount (STATX_ATTR_MOUNT_ROOT), not a directory inside it. */
  mountRoot: boolean;
}

/**
 * The unique id of the mount `fd` is on (any descriptor, O_PATH included,
 * a detached mount's too), and whether it names the mount's root. Both
 * come from the VFS: the file system is not asked (AT_STATX_DONT_SYNC), so
 * a FUSE daemon that never answers cannot stall the caller. Throws SysError
 * when the kernel does not report the unique id (older than 6.8).
 */
export function mountIdOf(fd: number): MountIdentity {
  const buf = Buffer.alloc(STATX_SIZE);
  if (c().statx(fd, '', AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC, STATX_MNT_ID_UNIQUE, buf) < 0) throw new SysError('statx', lastErrno());
  if ((buf.readUInt32LE(STX_MASK) & STATX_MNT_ID_UNIQUE) === 0) throw new SysError('statx STATX_MNT_ID_UNIQUE', 95 /* EOPNOTSUPP */);
  const attributes = buf.readBigUInt64LE(STX_ATTRIBUTES);
  const known = buf.readBigUInt64LE(STX_ATTRIBUTES_MASK);
  const root = BigInt(STATX_ATTR_MOUNT_ROOT);
  if ((known & root) === 0n) throw new SysError('statx STATX_ATTR_MOUNT_ROOT', 95 /* EOPNOTSUPP */);
  return { mountId: buf.readBigUInt64LE(STX_MNT_ID), mountRoot: (attributes & root) !== 0n };
}

export interface MountStatus {
  mountId: bigint;
  /** The magic number of its file system (the superblock's, read without asking the file system). */
  fsMagic: number;
  /** The id of the mount namespace the mount is in. */
  mountNsId: bigint;
}

/**
 * statmount(2) of mount `mountId` in the mount namespace `mountNsId` (0:
 * this thread's): its status, or null when no such mount is in that
 * namespace (unmounted, or the namespace is gone). Asking in another
 * namespace needs CAP_SYS_ADMIN over it. Other errors (ENOSYS on a kernel
 * without statmount) throw SysError.
 */
export function statMount(mountId: bigint, mountNsId: bigint = 0n): MountStatus | null {
  const req = Buffer.alloc(MNT_ID_REQ_SIZE_VER1);
  req.writeUInt32LE(MNT_ID_REQ_SIZE_VER1, 0);
  req.writeBigUInt64LE(mountId, 8);
  req.writeBigUInt64LE(BigInt(STATMOUNT_SB_BASIC | STATMOUNT_MNT_BASIC | STATMOUNT_MNT_NS_ID), 16);
  req.writeBigUInt64LE(mountNsId, 24);
  const buf = Buffer.alloc(STATMOUNT_BUF);
  const r = Number(c().syscall(NR_STATMOUNT, 'void *', req, 'void *', buf, 'size_t', buf.length, 'uint', 0));
  if (r < 0) {
    const errno = lastErrno();
    if (errno === ENOENT) return null;
    throw new SysError('statmount', errno, `mount ${mountId}`);
  }
  const mask = buf.readBigUInt64LE(SM_MASK);
  return {
    mountId: buf.readBigUInt64LE(SM_MNT_ID),
    fsMagic: Number(buf.readBigUInt64LE(SM_SB_MAGIC) & 0xffffffffn),
    mountNsId: (mask & BigInt(STATMOUNT_MNT_NS_ID)) !== 0n ? buf.readBigUInt64LE(SM_MNT_NS_ID) : mountNsId,
  };
}

/** The id of the mount namespace `nsFd` refers to (a /proc/PID/ns/mnt descriptor). */
export function mountNsIdOfNsFd(nsFd: number): bigint {
  const id = Buffer.alloc(8);
  if (c().ioctlBuf(nsFd, NS_GET_MNTNS_ID, id) === 0) return id.readBigUInt64LE(0);
  const errno = lastErrno();
  if (errno === 25 /* ENOTTY */ && c().ioctlBuf(nsFd, NS_GET_MNTNS_ID_OLD, id) === 0) return id.readBigUInt64LE(0);
  throw new SysError('ioctl NS_GET_MNTNS_ID', errno);
}

/**
 * The id of the mount namespace the process of `pidfd` is in now. The
 * namespace's descriptor is opened and closed here: nothing stays pinned.
 */
export function mountNsIdOfPidfd(pidfd: number): bigint {
  const nsFd = c().ioctlInt(pidfd, PIDFD_GET_MNT_NAMESPACE, 0);
  if (nsFd < 0) throw new SysError('ioctl PIDFD_GET_MNT_NAMESPACE', lastErrno());
  try {
    return mountNsIdOfNsFd(nsFd);
  } finally {
    c().close(nsFd);
  }
}
