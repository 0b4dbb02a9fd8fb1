/**
 * The composefs image writer: tree in, EROFS image bytes out, byte for byte
 * what the reference mkcomposefs writes for the same tree.
 *
 * The work happens in passes over flat arrays indexed by inode number
 * (src/erofs/write/), never changing the caller's tree:
 *  1. plan: breadth-first inode order, directory entries with `.` and `..`,
 *     the root's `00`..`ff` whiteouts, and every xattr the reference adds or
 *     escapes for overlayfs;
 *  2. shared: the xattrs used by more than one inode, stored once;
 *  3. layout: each inode's slot, inline tail and data blocks;
 *  4. emit: one buffer of the final size, filled in place.
 */
import {
  BLOCK_BITS,
  BLOCK_SIZE,
  COMPOSEFS_FLAG_HAS_ACL,
  COMPOSEFS_HEADER_VERSION,
  COMPOSEFS_MAGIC,
  DEFAULT_MAX_VERSION,
  DEFAULT_MIN_VERSION,
  FEATURE_COMPAT_MTIME,
  FEATURE_COMPAT_XATTR_FILTER,
  FORMAT_VERSION_MAX,
  HDR,
  SB,
  SUPER_MAGIC_V1,
  SUPER_OFFSET,
  SUPER_SIZE,
} from './format.js';
import type { Inode } from '../tree/model.js';
import { ImageWriteError, planTree } from './write/plan.js';
import { computeShared } from './write/shared.js';
import { computeLayout } from './write/layout.js';
import { emitImage } from './write/emit.js';
import { put64 } from './write/bytes.js';

export { ImageWriteError } from './write/plan.js';

export interface WriteOptions {
  /** Lowest composefs format version to write (default 0). */
  minVersion?: number;
  /** Highest version the writer may upgrade to when the tree needs it (default 1). */
  maxVersion?: number;
}

export interface WriteResult {
  image: Buffer;
  /** The composefs format version written into the header. */
  version: number;
}

function validateVersions(opts: WriteOptions): [number, number] {
  const min = opts.minVersion ?? DEFAULT_MIN_VERSION;
  let max = opts.maxVersion ?? DEFAULT_MAX_VERSION;
  for (const v of [min, max]) {
    if (!Number.isInteger(v) || v < 0 || v > FORMAT_VERSION_MAX) {
      throw new ImageWriteError(`unsupported format version ${v} (supported: 0..${FORMAT_VERSION_MAX})`);
    }
  }
  if (max < min) max = min;
  return [min, max];
}

/** Write the composefs image of a tree. The tree itself is not modified. */
export function writeImageWithInfo(tree: Inode, opts: WriteOptions = {}): WriteResult {
  const [min, max] = validateVersions(opts);
  const plan = planTree(tree, min, max);
  const shared = computeShared(plan);
  const layout = computeLayout(plan, shared);
  const rootNid = layout.nid[0];
  if (rootNid > 0xffff) throw new ImageWriteError('root inode does not fit in the superblock');

  const image = Buffer.alloc(layout.dataStart + layout.dataBlocks * BLOCK_SIZE);
  image.writeUInt32LE(COMPOSEFS_MAGIC, HDR.magic);
  image.writeUInt32LE(COMPOSEFS_HEADER_VERSION, HDR.version);
  image.writeUInt32LE(plan.hasAcl ? COMPOSEFS_FLAG_HAS_ACL : 0, HDR.flags);
  image.writeUInt32LE(plan.version, HDR.composefsVersion);

  const sb = SUPER_OFFSET;
  image.writeUInt32LE(SUPER_MAGIC_V1, sb + SB.magic);
  image.writeUInt32LE(FEATURE_COMPAT_MTIME | FEATURE_COMPAT_XATTR_FILTER, sb + SB.featureCompat);
  image[sb + SB.blkszbits] = BLOCK_BITS;
  image.writeUInt16LE(rootNid, sb + SB.rootNid);
  put64(image, sb + SB.inos, plan.count);
  put64(image, sb + SB.buildTime, plan.minSec);
  image.writeUInt32LE(plan.minNsec >>> 0, sb + SB.buildTimeNsec);
  image.writeUInt32LE(layout.dataStart / BLOCK_SIZE + layout.dataBlocks, sb + SB.blocks);
  image.writeUInt32LE(Math.floor((SUPER_OFFSET + SUPER_SIZE) / BLOCK_SIZE), sb + SB.metaBlkaddr);
  image.writeUInt32LE(Math.floor(layout.inodesEnd / BLOCK_SIZE), sb + SB.xattrBlkaddr);

  emitImage(image, plan, shared, layout);
  return { image, version: plan.version };
}

export function writeImage(tree: Inode, opts: WriteOptions = {}): Buffer {
  return writeImageWithInfo(tree, opts).image;
}
