/**
 * Opening and checking a composefs image before anything is mounted, so a
 * missing file, a file that is not an image, or a truncated one fails with a
 * clear message instead of an EINVAL from the kernel (EROFS itself does not
 * check the file size: a truncated image mounts and fails on read).
 */
import { closeSync, fstatSync, openSync, readSync, constants as fsc } from 'node:fs';
import {
  COMPOSEFS_FLAG_HAS_ACL,
  COMPOSEFS_HEADER_VERSION,
  COMPOSEFS_MAGIC,
  HDR,
  SB,
  SUPER_MAGIC_V1,
  SUPER_OFFSET,
  SUPER_SIZE,
} from '../erofs/format.js';
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
  if (size < need) {
    throw new MountError(
      size === 0 ? `${name}: empty file, not a composefs image` : `${name}: not a composefs image (${size} bytes, too small)`,
    );
  }
  const buf = Buffer.alloc(need);
  const n = readSync(fd, buf, 0, need, 0);
  if (n < need) throw new MountError(`${name}: short read of the image header`);
  const magic = buf.readUInt32LE(HDR.magic);
  const sbMagic = buf.readUInt32LE(SUPER_OFFSET + SB.magic);
  if (magic !== COMPOSEFS_MAGIC) {
    if (sbMagic === SUPER_MAGIC_V1) throw new MountError(`${name}: an EROFS image without a composefs header, not a composefs image`);
    throw new MountError(`${name}: not a composefs image (no composefs header)`);
  }
  const version = buf.readUInt32LE(HDR.version);
  if (version !== COMPOSEFS_HEADER_VERSION) throw new MountError(`${name}: unsupported composefs header version ${version}`);
  if (sbMagic !== SUPER_MAGIC_V1) throw new MountError(`${name}: corrupt composefs image (no EROFS superblock)`);
  const blkszbits = buf.readUInt8(SUPER_OFFSET + SB.blkszbits);
  if (blkszbits < 9 || blkszbits > 16) throw new MountError(`${name}: corrupt composefs image (block size 2^${blkszbits})`);
  const blockSize = 1 << blkszbits;
  const blocks = buf.readUInt32LE(SUPER_OFFSET + SB.blocks);
  const spanBytes = blocks * blockSize;
  if (spanBytes > size) {
    throw new MountError(`${name}: truncated composefs image (${size} bytes, the superblock says ${spanBytes})`);
  }
  const metaBlk = buf.readUInt32LE(SUPER_OFFSET + SB.metaBlkaddr);
  if (metaBlk * blockSize >= size) throw new MountError(`${name}: corrupt composefs image (metadata beyond the end of the file)`);
  const flags = buf.readUInt32LE(HDR.flags);
  return {
    flags,
    hasAcl: (flags & COMPOSEFS_FLAG_HAS_ACL) !== 0,
    formatVersion: buf.readUInt32LE(HDR.composefsVersion),
    blockSize,
    spanBytes,
    fileSize: size,
  };
}
