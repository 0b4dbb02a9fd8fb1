/**
 * Opening and checking a composefs image before anything is mounted, so a
 * missing file, a file that is not an image, or a truncated one fails with a
 * clear message instead of an EINVAL from the kernel (EROFS itself does not
 * check the file size: a truncated image mounts and fails on read).
 */
import { closeSync, fstatSync, openSync, readSync, constants as fsc } from 'node:fs';
import { COMPOSEFS_FLAG_HAS_ACL, SUPER_OFFSET, SUPER_SIZE } from '../erofs/format.js';
import { ImageFormatError, checkImageHeader, type ImageHeader } from '../erofs/header.js';
import { ioError } from '../errors.js';
import { MountError } from './errors.js';
import { seekableSize } from '../sys/extents.js';

export interface ImageInfo {
  /** composefs header flags (bit 0: the image has ACLs). */
  flags: number;
  hasAcl: boolean;
  /** composefs format version from the header. */
  formatVersion: number;
  blockSize: number;
  /** Bytes the superblock says the image spans. */
  spanBytes: number;
  fileSize: number;
}

/**
 * Open an image read-only; one-line error on failure. Opened without
 * blocking (a FIFO would otherwise wait forever for a writer) and refused
 * unless it is a regular file or a block device. O_NONBLOCK means nothing
 * to reads of either, so the descriptor is used as it is.
 */
export function openImageFile(path: string): number {
  const shown = path === '' ? "''" : path;
  let fd: number;
  try {
    fd = openSync(path, fsc.O_RDONLY | fsc.O_NONBLOCK | fsc.O_NOCTTY);
  } catch (err) {
    throw ioError(err, shown);
  }
  const st = fstatSync(fd);
  if (st.isFile() || st.isBlockDevice()) return fd;
  closeSync(fd);
  throw new MountError(st.isDirectory() ? `${shown}: Is a directory` : `${shown}: not a regular file or block device`);
}

/** Check the header and superblock of the image open on `fd`; `name` is used in messages. */
export function checkImage(fd: number, name: string): ImageInfo {
  const st = fstatSync(fd);
  if (st.isDirectory()) throw new MountError(`${name}: Is a directory`);
  if (!st.isFile() && !st.isBlockDevice()) throw new MountError(`${name}: not a regular file or block device`);
  const size = st.isFile() ? st.size : seekableSize(fd);
  const need = SUPER_OFFSET + SUPER_SIZE;
  const buf = Buffer.alloc(Math.min(need, size));
  const n = readSync(fd, buf, 0, buf.length, 0);
  if (n < buf.length) throw new MountError(`${name}: short read of the image header`);
  let header: ImageHeader;
  try {
    // The reader's header check, plus the block count against the file size (EROFS does not check it).
    header = checkImageHeader(buf, size, { wholeImage: true });
  } catch (err) {
    if (err instanceof ImageFormatError) throw new MountError(`${name}: ${err.message}`, { cause: err });
    throw err;
  }
  const blockSize = 1 << header.blkszbits;
  return {
    flags: header.flags,
    hasAcl: (header.flags & COMPOSEFS_FLAG_HAS_ACL) !== 0,
    formatVersion: header.version,
    blockSize,
    spanBytes: header.blocks * blockSize,
    fileSize: size,
  };
}
