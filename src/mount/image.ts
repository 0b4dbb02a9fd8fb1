/**
 * Opening and checking a composefs image before anything is mounted, so a
 * missing file, a file that is not an image, or a truncated one fails with a
 * clear message instead of an EINVAL from the kernel (EROFS itself does not
 * check the file size: a truncated image mounts and fails on read).
 */
import { fstatSync, openSync, readSync } from 'node:fs';
import { COMPOSEFS_FLAG_HAS_ACL, SUPER_OFFSET, SUPER_SIZE } from '../erofs/format.js';
import { ImageFormatError, checkImageHeader, type ImageHeader } from '../erofs/header.js';
import { UserError, describeSystemError } from '../cli/errors.js';

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

/** Open an image read-only; one-line UserError on failure. */
export function openImageFile(path: string): number {
  try {
    return openSync(path, 'r');
  } catch (err) {
    throw new UserError(describeSystemError(err, path));
  }
}

/** Check the header and superblock of the image open on `fd`; `name` is used in messages. */
export function checkImage(fd: number, name: string): ImageInfo {
  const st = fstatSync(fd);
  if (st.isDirectory()) throw new UserError(`${name}: Is a directory`);
  if (!st.isFile()) throw new UserError(`${name}: not a regular file`);
  const need = SUPER_OFFSET + SUPER_SIZE;
  const buf = Buffer.alloc(Math.min(need, st.size));
  const n = readSync(fd, buf, 0, buf.length, 0);
  if (n < buf.length) throw new UserError(`${name}: short read of the image header`);
  let header: ImageHeader;
  try {
    // The reader's header check, plus the block count against the file size (EROFS does not check it).
    header = checkImageHeader(buf, st.size, { wholeImage: true });
  } catch (err) {
    if (err instanceof ImageFormatError) throw new UserError(`${name}: ${err.message}`);
    throw err;
  }
  const blockSize = 1 << header.blkszbits;
  return {
    flags: header.flags,
    hasAcl: (header.flags & COMPOSEFS_FLAG_HAS_ACL) !== 0,
    formatVersion: header.version,
    blockSize,
    spanBytes: header.blocks * blockSize,
    fileSize: st.size,
  };
}
