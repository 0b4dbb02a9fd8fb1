/**
 * The composefs image writer: tree in, EROFS image bytes out, byte for byte
 * what the reference mkcomposefs writes for the same tree.
 *
 * The work happens in passes over a FlatTree (src/tree/flat.ts) and typed
 * arrays indexed by inode number (src/erofs/write/), never changing the
 * caller's tree:
 *  1. plan: breadth-first inode order, directory entries with `.` and `..`,
 *     the root's `00`..`ff` whiteouts, and every xattr the reference adds or
 *     escapes for overlayfs;
 *  2. shared: the xattrs used by more than one inode, stored once;
 *  3. layout: each inode's slot, inline tail and data blocks;
 *  4. emit: one buffer of the final size, filled in place.
 * An `Inode` tree is first put in columns (write/flatten.ts).
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
import type { FlatTree } from '../tree/flat.js';
import { ImageWriteError, badNameMessage, planTree } from './write/plan.js';
import { flatten } from './write/flatten.js';
import { computeShared } from './write/shared.js';
import { computeLayout } from './write/layout.js';
import { emitImage } from './write/emit.js';
import { put64 } from './write/bytes.js';

export { ImageWriteError } from './write/errors.js';

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

/**
 * Write the composefs image of a tree in columns. The tree is not modified;
 * what it holds is checked as it is read (names, indices and ranges, a
 * directory reached twice, hard links to nothing, to links or to directories).
 */
export function writeFlatImage(tree: FlatTree, opts: WriteOptions = {}): WriteResult {
  const [min, max] = validateVersions(opts);
  // The pool as a plain Uint8Array (it may be a Buffer): every byte array the
  // writer reads is then of one kind, which keeps V8's access sites monomorphic.
  const pool = tree.pool;
  const flat: FlatTree = { ...tree, pool: new Uint8Array(pool.buffer, pool.byteOffset, pool.length) };
  const plan = planTree(flat, min, max);
  const shared = computeShared(plan);
  const layout = computeLayout(plan, shared);
  const rootNid = layout.nid[0];
  if (rootNid > 0xffff) throw new ImageWriteError(badNameMessage(flat) ?? 'root inode does not fit in the superblock');

  // An ArrayBuffer of its own: the emitter stores 16- and 32-bit words at aligned offsets.
  const image = Buffer.from(new ArrayBuffer(layout.dataStart + layout.dataBlocks * BLOCK_SIZE));
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

/** Write the composefs image of a tree. The tree itself is not modified. */
export function writeImageWithInfo(tree: Inode, opts: WriteOptions = {}): WriteResult {
  // Versions first, so a bad option is reported before anything about the tree.
  validateVersions(opts);
  return writeFlatImage(flatten(tree), opts);
}

export function writeImage(tree: Inode, opts: WriteOptions = {}): Buffer {
  return writeImageWithInfo(tree, opts).image;
}
