/**
 * The composefs header and EROFS superblock of an image: the one check both
 * the reader and the mount code make, and the error every unreadable image
 * ends in.
 */
import { ComposefsError } from '../errors.js';
import { printableBytes } from '../printable.js';
import { BLOCK_BITS, BLOCK_SIZE, COMPOSEFS_HEADER_VERSION, COMPOSEFS_MAGIC, HDR, SB, SUPER_MAGIC_V1, SUPER_OFFSET, SUPER_SIZE } from './format.js';

/** High 32 bits of a u64 that still fits a double exactly. */
const MAX_SAFE_HI = 0x1fffff;

export interface HeaderCheckOptions {
  /**
   * Also refuse a file shorter than the superblock's block count says (the
   * mount code: EROFS does not check, and a truncated image mounts and fails
   * on read). The reader leaves this out: it checks every structure's bounds
   * as it reads, as the reference's reader does.
   */
  wholeImage?: boolean;
}

/**
 * An image that cannot be read: one line, with the path in the image where
 * known. `code` says what is wrong (`header`, `superblock`, `bounds`, `loop`…:
 * the problem codes fsck reports).
 */
export class ImageFormatError extends ComposefsError {
  constructor(
    readonly reason: string,
    readonly path: Buffer | null = null,
    code = 'format',
  ) {
    super(path ? `${printablePath(path)}: ${reason}` : reason, code);
  }
}

export interface ImageHeader {
  /** The composefs format version in the header (what the writer must be asked for to write it again). */
  version: number;
  headerVersion: number;
  flags: number;
  featureCompat: number;
  featureIncompat: number;
  blkszbits: number;
  rootNid: number;
  /** Inode count in the superblock (includes the root's `00`..`ff` whiteouts). */
  inodes: number;
  buildTime: number;
  buildTimeNsec: number;
  /** Block count in the superblock. */
  blocks: number;
  metaBlkaddr: number;
  xattrBlkaddr: number;
}

/** A path as one printable line: the dump format's escapes for anything that is not graphic ASCII. */
export const printablePath = printableBytes;

/**
 * The one check of an image's composefs header and EROFS superblock, used by
 * the reader (src/erofs/reader.ts) and, before anything is mounted, by the
 * mount code (src/mount/image.ts).
 *
 * The block size rule: exactly 4 KiB (blkszbits 12). The kernel's EROFS
 * accepts 2^9 up to the page size (fs/erofs/super.c, erofs_read_superblock),
 * but every composefs image is written with 4 KiB blocks, and the reference's
 * reader (lcfs_load_node_from_image_ext) ignores blkszbits and addresses
 * everything in 4 KiB blocks: an image claiming another size would mean one
 * thing to the kernel and another to composefs-info, fsck and the digest
 * checks. 4 KiB is also within what every kernel accepts (page size >= 4 KiB).
 */
export function checkImageHeader(head: Uint8Array, fileSize: number, opts: HeaderCheckOptions = {}): ImageHeader {
  const buf = Buffer.from(head.buffer, head.byteOffset, head.byteLength);
  if (fileSize === 0) throw new ImageFormatError('empty file, not a composefs image', null, 'header');
  if (fileSize < SUPER_OFFSET + SUPER_SIZE || buf.length < SUPER_OFFSET + SUPER_SIZE) {
    throw new ImageFormatError(`image too small (${fileSize} bytes): not a composefs image`, null, 'header');
  }
  const sb = SUPER_OFFSET;
  const sbMagic = buf.readUInt32LE(sb + SB.magic);
  const magic = buf.readUInt32LE(HDR.magic);
  if (magic !== COMPOSEFS_MAGIC) {
    if (sbMagic === SUPER_MAGIC_V1) throw new ImageFormatError('an EROFS image without a composefs header, not a composefs image', null, 'header');
    throw new ImageFormatError(`not a composefs image (bad magic 0x${magic.toString(16).padStart(8, '0')})`, null, 'header');
  }
  const headerVersion = buf.readUInt32LE(HDR.version);
  if (headerVersion !== COMPOSEFS_HEADER_VERSION) {
    throw new ImageFormatError(`unsupported composefs header version ${headerVersion}`, null, 'header');
  }
  if (sbMagic !== SUPER_MAGIC_V1) {
    throw new ImageFormatError(`bad EROFS superblock magic 0x${sbMagic.toString(16).padStart(8, '0')}`, null, 'superblock');
  }
  const blkszbits = buf[sb + SB.blkszbits];
  if (blkszbits !== BLOCK_BITS) {
    throw new ImageFormatError(`unsupported block size 2^${blkszbits} (composefs uses ${BLOCK_SIZE})`, null, 'superblock');
  }
  const blocks = buf.readUInt32LE(sb + SB.blocks);
  if (opts.wholeImage && blocks * BLOCK_SIZE > fileSize) {
    throw new ImageFormatError(`truncated composefs image (${fileSize} bytes, the superblock says ${blocks * BLOCK_SIZE})`, null, 'size');
  }
  const metaBlkaddr = buf.readUInt32LE(sb + SB.metaBlkaddr);
  const xattrBlkaddr = buf.readUInt32LE(sb + SB.xattrBlkaddr);
  if (metaBlkaddr * BLOCK_SIZE >= fileSize) {
    throw new ImageFormatError(`metadata block address ${metaBlkaddr} lies outside the image (${fileSize} bytes)`, null, 'superblock');
  }
  if (xattrBlkaddr * BLOCK_SIZE > fileSize) {
    throw new ImageFormatError(`shared xattr block address ${xattrBlkaddr} lies outside the image (${fileSize} bytes)`, null, 'superblock');
  }
  const inosLo = buf.readUInt32LE(sb + SB.inos);
  const inosHi = buf.readUInt32LE(sb + SB.inos + 4);
  const buildTimeLo = buf.readUInt32LE(sb + SB.buildTime);
  const buildTimeHi = buf.readInt32LE(sb + SB.buildTime + 4);
  if (buildTimeHi > MAX_SAFE_HI || buildTimeHi < -MAX_SAFE_HI - 1) {
    throw new ImageFormatError('superblock build time is out of range', null, 'superblock');
  }
  return {
    version: buf.readUInt32LE(HDR.composefsVersion),
    headerVersion,
    flags: buf.readUInt32LE(HDR.flags),
    featureCompat: buf.readUInt32LE(sb + SB.featureCompat),
    featureIncompat: buf.readUInt32LE(sb + SB.featureIncompat),
    blkszbits,
    rootNid: buf.readUInt16LE(sb + SB.rootNid),
    inodes: inosHi > MAX_SAFE_HI ? Number.MAX_SAFE_INTEGER : inosHi * 0x100000000 + inosLo,
    buildTime: buildTimeHi * 0x100000000 + buildTimeLo,
    buildTimeNsec: buf.readUInt32LE(sb + SB.buildTimeNsec),
    blocks,
    metaBlkaddr,
    xattrBlkaddr,
  };
}

/** Parse and check the header and superblock of a whole image in memory (the reader checks every other bound as it reads). */
export function readImageHeader(buf: Buffer): ImageHeader {
  return checkImageHeader(buf, buf.length);
}

/** The composefs format version of an image (checks header and superblock). */
export function imageVersion(buf: Buffer): number {
  return readImageHeader(buf).version;
}


