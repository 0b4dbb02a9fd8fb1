/**
 * The image-wide checks of fsck (check mode of the reader): passes over what
 * was decoded, the header before the walk and the totals after it, rather
 * than branches through the walk. None of them stops the reference from
 * reading an image, so a plain read skips them.
 */
import { BLOCK_SIZE, COMPOSEFS_FLAG_HAS_ACL, FORMAT_VERSION_MAX } from './format.js';
import type { ImageHeader } from './header.js';

/** Something wrong found while checking (see `ReadImageOptions.onProblem`). */
export interface ImageProblem {
  /** Path in the image (bytes, starting with `/`), or null for the image as a whole. */
  path: Buffer | null;
  /** Short machine-readable kind, e.g. `dirent-type`, `loop`, `bounds`. */
  code: string;
  message: string;
}

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
