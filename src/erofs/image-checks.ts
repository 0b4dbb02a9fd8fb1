/**
 * The checks of fsck: a pass over what a checking walk of the reader
 * decoded (src/erofs/decoded.ts), rather than branches through the walk.
 * The header before the walk, each fact in the order the walk met it, and
 * the totals after it. None of these stops the reference from reading an
 * image, so a plain read neither hands facts over nor checks.
 */
import {
  BLOCK_BITS,
  BLOCK_SIZE,
  CHUNK_FORMAT_BLKBITS_MASK,
  CHUNK_FORMAT_INDEXES,
  COMPOSEFS_FLAG_HAS_ACL,
  FORMAT_VERSION_MAX,
  FS_VERITY_HASH_ALG_SHA256,
  FS_VERITY_HASH_ALG_SHA512,
  FT_REG_FILE,
  FT_UNKNOWN,
  LAYOUT_CHUNK_BASED,
  XATTR_FILTER_BITS,
  XATTR_FILTER_SEED,
  direntFileType,
} from './format.js';
import { printablePath, type ImageHeader } from './header.js';
import { HAS_METACOPY, HAS_REDIRECT, XATTR_NAME_PREFIXES, isAclXattr } from './overlay.js';
import { xxh32 } from './xxhash.js';
import { entryPath, placePath, type DecodeListener, type DecodedFact } from './decoded.js';
import { S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, PATH_MAX } from '../tree/model.js';

/** Something wrong found while checking (see `ReadImageOptions.onProblem`). */
export interface ImageProblem {
  /** Path in the image (bytes, starting with `/`), or null for the image as a whole. */
  path: Buffer | null;
  /** Short machine-readable kind, e.g. `dirent-type`, `loop`, `bounds`. */
  code: string;
  message: string;
}

/**
 * A metacopy value: 4 header bytes (version 0, the value's length, flags 0,
 * hash algorithm) and a digest: 36 bytes with SHA-256's, 68 with SHA-512's.
 */
const METACOPY_SIZES: Readonly<Record<number, number>> = { [4 + 32]: FS_VERITY_HASH_ALG_SHA256, [4 + 64]: FS_VERITY_HASH_ALG_SHA512 };

const imageProblem = (code: string, message: string): ImageProblem => ({ path: null, code, message });

/** What the header and superblock say that a reader may pass over but a checker reports. */
export function headerProblems(header: ImageHeader, imageLength: number): ImageProblem[] {
  const problems: ImageProblem[] = [];
  if (header.version > FORMAT_VERSION_MAX) problems.push(imageProblem('version', `unknown composefs format version ${header.version}`));
  if (header.flags & ~COMPOSEFS_FLAG_HAS_ACL) problems.push(imageProblem('header', `unknown composefs header flags 0x${header.flags.toString(16)}`));
  if (header.featureIncompat !== 0) {
    problems.push(imageProblem('superblock', `incompatible EROFS features 0x${header.featureIncompat.toString(16)} (the kernel may refuse to mount)`));
  }
  if (imageLength % BLOCK_SIZE !== 0) problems.push(imageProblem('size', `image size ${imageLength} is not a multiple of the block size ${BLOCK_SIZE}`));
  if (header.blocks * BLOCK_SIZE !== imageLength) {
    problems.push(imageProblem('size', `superblock says ${header.blocks} blocks (${header.blocks * BLOCK_SIZE} bytes) but the image has ${imageLength} bytes`));
  }
  return problems;
}

/** The superblock's and header's totals against what the walk met. */
export function totalsProblems(header: ImageHeader, inodeCount: number, hasAcl: boolean): ImageProblem[] {
  const problems: ImageProblem[] = [];
  if (header.inodes !== inodeCount) problems.push(imageProblem('inodes', `superblock counts ${header.inodes} inodes, the tree reaches ${inodeCount}`));
  const flagAcl = (header.flags & COMPOSEFS_FLAG_HAS_ACL) !== 0;
  if (flagAcl !== hasAcl) {
    problems.push(imageProblem('header', flagAcl ? 'header flags the image as having ACLs but no inode has one' : 'inodes have ACLs but the header does not flag them'));
  }
  return problems;
}

/**
 * The checks, as a pass over what a walk of `image` decoded, in the order the
 * walk met it: the header's problems, then each entry's (sort order, link
 * counts, `.`/`..`, dirent types, xattr filters and overlay xattrs, tails
 * crossing blocks, raw fields out of range) together with the damage the
 * walk stepped over, then the totals when the walk completed.
 */
export class ImageChecker implements DecodeListener {
  private imageHeader: ImageHeader | null = null;
  private hasAcl = false;

  constructor(
    private readonly image: Buffer,
    private readonly report: (problem: ImageProblem) => void,
  ) {}

  header(header: ImageHeader): void {
    this.imageHeader = header;
    for (const problem of headerProblems(header, this.image.length)) this.report(problem);
  }

  fact(fact: DecodedFact): void {
    if (fact.kind === 'xattr' && !this.hasAcl) this.hasAcl = isAclXattr(this.image, fact.nameIndex, fact.nameStart, fact.nameLength);
    checkFact(this.image, fact, this.report);
  }

  completed(inodeCount: number): void {
    for (const problem of totalsProblems(this.imageHeader!, inodeCount, this.hasAcl)) this.report(problem);
  }
}

/** The dirent file type of a mode, or -1 when the mode has no valid type. */
function fileTypeOf(mode: number): number {
  const fileType = direntFileType(mode);
  return fileType === FT_UNKNOWN ? -1 : fileType;
}

function checkFact(image: Buffer, fact: DecodedFact, report: (problem: ImageProblem) => void): void {
  switch (fact.kind) {
    case 'damage':
      report({ path: fact.path, code: fact.code, message: fact.message });
      return;
    case 'inline-tail':
      if (Math.floor(fact.offset / BLOCK_SIZE) !== Math.floor((fact.offset + fact.length - 1) / BLOCK_SIZE)) {
        report(imageProblem('tail-crosses-block', `inode ${fact.nid}: inline data crosses a block boundary (the kernel refuses to read it)`));
      }
      return;
    case 'inode':
      checkInode(image, fact, (code, message) => report({ path: entryPath(image, fact.at), code, message }));
      return;
    case 'xattr': {
      if (fact.filter !== 0) {
        const bit = xxh32(image, (XATTR_FILTER_SEED + fact.nameIndex) >>> 0, fact.nameStart, fact.nameStart + fact.nameLength) & (XATTR_FILTER_BITS - 1);
        if ((fact.filter >>> bit) & 1) {
          const fullName = Buffer.concat([XATTR_NAME_PREFIXES[fact.nameIndex]!, image.subarray(fact.nameStart, fact.nameStart + fact.nameLength)]);
          report(imageProblem('xattr-filter', `inode ${fact.nid}: the xattr name filter hides '${printablePath(fullName)}' (the kernel would not find it)`));
        }
      }
      if (fact.overlayFlags & HAS_METACOPY) {
        const length = fact.valueEnd - fact.valueStart;
        const value = fact.valueStart;
        const algorithm = METACOPY_SIZES[length];
        if (length !== 0 && algorithm === undefined) {
          report({ path: entryPath(image, fact.at), code: 'metacopy', message: `trusted.overlay.metacopy of ${length} bytes (expected 0, 36 or 68)` });
        } else if (length !== 0 && (image[value] !== 0 || image[value + 1] !== length || image[value + 2] !== 0 || image[value + 3] !== algorithm)) {
          report({ path: entryPath(image, fact.at), code: 'metacopy', message: 'trusted.overlay.metacopy has a bad header (version, length, flags or hash algorithm)' });
        }
      }
      return;
    }
    case 'overlay':
      if ((fact.mode & S_IFMT) !== S_IFREG) return;
      if (fact.flags & HAS_REDIRECT && !(fact.flags & HAS_METACOPY)) {
        report({ path: entryPath(image, fact.at), code: 'metacopy', message: 'trusted.overlay.redirect without trusted.overlay.metacopy' });
      }
      if (fact.layout === LAYOUT_CHUNK_BASED && fact.size > 0 && !(fact.flags & HAS_METACOPY)) {
        report({ path: entryPath(image, fact.at), code: 'metacopy', message: 'file data is not in the image and there is no trusted.overlay.metacopy' });
      }
      return;
    case 'directory': {
      // Paths are built only for a message: building one per directory would cost depth x directories.
      const { dot, dotdot } = fact;
      if (dot !== fact.nid) report({ path: placePath(fact.at), code: 'dot', message: dot < 0 ? "missing '.' entry" : `'.' points at inode ${dot}, not at the directory itself` });
      if (dotdot !== fact.parentNid) report({ path: placePath(fact.at), code: 'dotdot', message: dotdot < 0 ? "missing '..' entry" : `'..' points at inode ${dotdot}, not at the parent` });
      if (!fact.sorted) report({ path: placePath(fact.at), code: 'order', message: 'directory entries are not sorted by name (the kernel lookup relies on it)' });
      return;
    }
    case 'directory-done': {
      const expected = 2 + fact.subdirectories;
      const nlink = fact.at.inode.nlink;
      if (nlink !== expected) {
        report({ path: placePath(fact.at), code: 'nlink', message: `directory link count ${nlink}, expected ${expected} (2 + ${fact.subdirectories} subdirectories)` });
      }
      return;
    }
    case 'entry-type': {
      const fileType = fileTypeOf(fact.mode);
      if (fact.direntType === fileType) return;
      if (!fact.linked) {
        report({ path: entryPath(image, fact.at), code: 'dirent-type', message: `directory entry type ${fact.direntType} does not match the inode's file type ${fileType}` });
      } else if (!((fact.mode & S_IFMT) === S_IFCHR && fact.rdev === 0 && fact.direntType === FT_REG_FILE)) {
        // A further name of an escaped whiteout: stored as the regular file it is, read as the device it stands for.
        report({ path: entryPath(image, fact.at), code: 'dirent-type', message: `directory entry type ${fact.direntType} does not match the inode's file type` });
      }
      return;
    }
  }
}

function checkInode(image: Buffer, inode: Extract<DecodedFact, { kind: 'inode' }>, problem: (code: string, message: string) => void): void {
  const type = inode.mode & S_IFMT;
  if (type === S_IFLNK) {
    if (inode.symlinkLength === 0) problem('symlink', 'empty symlink target');
    else if (inode.symlinkLength >= PATH_MAX) problem('symlink', `symlink target of ${inode.symlinkLength} bytes (at most ${PATH_MAX - 1})`);
  } else if (type === S_IFREG) {
    if (inode.layout === LAYOUT_CHUNK_BASED) checkChunks(image, inode, problem);
  } else if (type !== S_IFDIR && inode.size !== 0) {
    problem('size', `special file with size ${inode.size}`);
  }
  if (!inode.compact && inode.mtimeNsec >= 1e9) problem('mtime', `mtime nanoseconds ${inode.mtimeNsec} out of range`);
  if ((inode.format & ~0xf) !== 0) problem('format', `unknown inode format bits 0x${inode.format.toString(16)}`);
}

/** Chunk-based files: the format bits, and the chunk index (which the kernel reads right after the xattrs) in bounds. */
function checkChunks(image: Buffer, inode: Extract<DecodedFact, { kind: 'inode' }>, problem: (code: string, message: string) => void): void {
  const chunkFormat = inode.union & 0xffff;
  if (chunkFormat & ~(CHUNK_FORMAT_BLKBITS_MASK | CHUNK_FORMAT_INDEXES)) {
    problem('chunks', `unknown chunk format bits 0x${chunkFormat.toString(16)}`);
    return;
  }
  if (inode.size === 0) return;
  const chunkBits = BLOCK_BITS + (chunkFormat & CHUNK_FORMAT_BLKBITS_MASK);
  const count = Math.ceil(inode.size / 2 ** chunkBits);
  const indexSize = chunkFormat & CHUNK_FORMAT_INDEXES ? 8 : 4;
  const indexOffset = Math.ceil(inode.tailOffset / indexSize) * indexSize;
  if (indexOffset + count * indexSize > image.length) problem('chunks', `chunk index of ${count} entries lies outside the image`);
}
