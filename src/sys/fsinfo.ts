/**
 * Small file-system queries the mount code needs: the type of the file
 * system holding an fd (fstatfs) and the kernel's fs-verity measurement of a
 * file (FS_IOC_MEASURE_VERITY).
 */
import { SysError, koffi, libc } from './libc.js';

type FdBuf = (fd: number, buf: Buffer) => number;
type Ioctl = (fd: number, req: number, arg: Buffer) => number;
let fstatfsFn: FdBuf | null = null;
let ioctlFn: Ioctl | null = null;

export const TMPFS_MAGIC = 0x01021994;
export const RAMFS_MAGIC = 0x858458f6;
export const EXT4_SUPER_MAGIC = 0xef53;
export const OVERLAYFS_SUPER_MAGIC = 0x794c7630;

/** f_type of the file system holding `fd`. */
export function fsTypeOf(fd: number): number {
  fstatfsFn ??= libc().func('int fstatfs(int fd, void *buf)') as FdBuf;
  const buf = Buffer.alloc(128); // struct statfs is 120 bytes on 64-bit Linux; f_type comes first
  if (fstatfsFn(fd, buf) < 0) throw new SysError('fstatfs', koffi.errno());
  return Number(buf.readBigInt64LE(0)) >>> 0;
}

/** FS_IOC_MEASURE_VERITY = _IOWR('f', 134, struct fsverity_digest{u16 alg; u16 size}). */
const FS_IOC_MEASURE_VERITY = 0xc0046686;
const MAX_DIGEST = 64;

export type VerityMeasurement =
  | { ok: true; algorithm: number; digest: Buffer }
  /** ENODATA: the kernel and file system do fs-verity, this file has none. */
  | { ok: false; reason: 'no-verity'; errno: number }
  /** EOPNOTSUPP/ENOTTY: the kernel or this file system cannot do fs-verity at all. */
  | { ok: false; reason: 'unsupported'; errno: number }
  | { ok: false; reason: 'error'; errno: number }
  /** Measured, but with another hash algorithm than the one wanted (set by callers, not the ioctl). */
  | { ok: false; reason: 'other-algorithm'; errno: number };

export function measureVerity(fd: number): VerityMeasurement {
  ioctlFn ??= libc().func('int ioctl(int fd, unsigned long request, void *arg)') as Ioctl;
  const buf = Buffer.alloc(4 + MAX_DIGEST);
  buf.writeUInt16LE(MAX_DIGEST, 2);
  if (ioctlFn(fd, FS_IOC_MEASURE_VERITY, buf) < 0) {
    const errno = koffi.errno();
    if (errno === 61 /* ENODATA */) return { ok: false, reason: 'no-verity', errno };
    if (errno === 95 /* EOPNOTSUPP */ || errno === 25 /* ENOTTY */ || errno === 22 /* EINVAL */) return { ok: false, reason: 'unsupported', errno };
    return { ok: false, reason: 'error', errno };
  }
  const size = buf.readUInt16LE(2);
  return { ok: true, algorithm: buf.readUInt16LE(0), digest: Buffer.from(buf.subarray(4, 4 + size)) };
}
