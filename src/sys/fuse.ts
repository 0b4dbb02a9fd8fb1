/**
 * The /dev/fuse ioctls for FUSE passthrough (Linux 6.9+): register an open
 * file as the backing file of FUSE files (FUSE_DEV_IOC_BACKING_OPEN, which
 * returns a backing id for OPEN answers) and drop it again. The kernel lets
 * only CAP_SYS_ADMIN in the initial user namespace do the first.
 */
import { lastErrno, libc, SysError } from './libc.js';

/** _IOW(229, 1, struct fuse_backing_map): 16-byte argument. */
export const FUSE_DEV_IOC_BACKING_OPEN = 0x4010e501;
/** _IOW(229, 2, uint32_t). */
export const FUSE_DEV_IOC_BACKING_CLOSE = 0x4004e502;

let ioctl: ((fd: number, req: number, argType: string, arg: Buffer) => number) | null = null;

function call(fd: number, req: number, arg: Buffer): number {
  ioctl ??= libc().func('int ioctl(int fd, unsigned long req, ...)') as unknown as typeof ioctl;
  return ioctl!(fd, req, 'void *', arg);
}

/** Register `fileFd` as a backing file; returns its backing id. Throws SysError (EPERM without privilege). */
export function backingOpen(fuseFd: number, fileFd: number): number {
  const map = Buffer.alloc(16);
  map.writeInt32LE(fileFd, 0);
  const id = call(fuseFd, FUSE_DEV_IOC_BACKING_OPEN, map);
  if (id < 0) throw new SysError('ioctl(FUSE_DEV_IOC_BACKING_OPEN)', lastErrno());
  return id;
}

/** Drop a backing id (files opened with it keep their backing file). */
export function backingClose(fuseFd: number, id: number): void {
  const arg = Buffer.alloc(4);
  arg.writeUInt32LE(id, 0);
  if (call(fuseFd, FUSE_DEV_IOC_BACKING_CLOSE, arg) < 0) throw new SysError('ioctl(FUSE_DEV_IOC_BACKING_CLOSE)', lastErrno());
}
