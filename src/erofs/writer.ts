/**
 * The composefs image writer: tree in, EROFS image bytes out, byte for byte
 * what the reference mkcomposefs writes for the same tree.
 *
 * The work happens in four passes over a private copy of the tree:
 *  1. rewrite: add the overlayfs xattrs (metacopy, redirect, escaped
 *     `trusted.overlay.*`, whiteout escapes), `.`/`..` entries, the opaque
 *     root and the 256 `00`..`ff` whiteouts overlayfs needs in the root;
 *  2. order: breadth-first inode order, directory link counts, minimum mtime;
 *  3. layout: shared xattrs, then each inode's slot, inline tail and blocks;
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
  SLOT_SIZE,
  SUPER_MAGIC_V1,
  SUPER_OFFSET,
  SUPER_SIZE,
} from './format.js';
import { S_IFDIR, S_IFMT, type Inode } from '../tree/model.js';
import { ImageWriteError, ValueKind, K, Y, setXattr, copyTree, isWhiteout } from './write/nodes.js';
import { chooseVersion, rewriteTree, addRootWhiteouts } from './write/rewrite.js';
import { computeSharedXattrs } from './write/xattrs.js';
import { computeOrder, computeLayout } from './write/layout.js';
import { Emitter, writeXattrEntry, writeInode, writeDataBlocks } from './write/emit.js';

export { ImageWriteError } from './write/nodes.js';

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
  if (!Number.isInteger(min) || min < 0 || min > FORMAT_VERSION_MAX) {
    throw new ImageWriteError(`unsupported format version ${min} (supported: 0..${FORMAT_VERSION_MAX})`);
  }
  if (!Number.isInteger(max) || max < 0 || max > FORMAT_VERSION_MAX) {
    throw new ImageWriteError(`unsupported format version ${max} (supported: 0..${FORMAT_VERSION_MAX})`);
  }
  if (max < min) max = min;
  return [min, max];
}

/** Write the composefs image of a tree. The tree itself is not modified. */
export function writeImageWithInfo(tree: Inode, opts: WriteOptions = {}): WriteResult {
  const [min, max] = validateVersions(opts);
  if ((tree.mode & S_IFMT) !== S_IFDIR) throw new ImageWriteError('the root of an image must be a directory');
  const { root, hasWhiteout } = copyTree(tree);
  const version = chooseVersion(hasWhiteout || isWhiteout(root), min, max);

  rewriteTree(root, version);
  setXattr(root, K.opaque, ValueKind.Bytes, Y);
  addRootWhiteouts(root);

  const order = computeOrder(root);
  const shared = computeSharedXattrs(order.nodes);
  const layout = computeLayout(order, shared);
  const rootNid = order.nodes[0].nid;
  if (rootNid > 0xffff) throw new ImageWriteError('root inode does not fit in the superblock');

  const totalSize = layout.dataStart + layout.nDataBlocks * BLOCK_SIZE;
  const image = Buffer.alloc(totalSize);
  image.writeUInt32LE(COMPOSEFS_MAGIC, HDR.magic);
  image.writeUInt32LE(COMPOSEFS_HEADER_VERSION, HDR.version);
  image.writeUInt32LE(order.hasAcl ? COMPOSEFS_FLAG_HAS_ACL : 0, HDR.flags);
  image.writeUInt32LE(version, HDR.composefsVersion);

  const sb = SUPER_OFFSET;
  image.writeUInt32LE(SUPER_MAGIC_V1, sb + SB.magic);
  image.writeUInt32LE(FEATURE_COMPAT_MTIME | FEATURE_COMPAT_XATTR_FILTER, sb + SB.featureCompat);
  image[sb + SB.blkszbits] = BLOCK_BITS;
  image.writeUInt16LE(rootNid, sb + SB.rootNid);
  image.writeBigUInt64LE(BigInt(order.nodes.length), sb + SB.inos);
  image.writeBigInt64LE(BigInt(order.minSec), sb + SB.buildTime);
  image.writeUInt32LE(order.minNsec >>> 0, sb + SB.buildTimeNsec);
  image.writeUInt32LE(layout.dataStart / BLOCK_SIZE + layout.nDataBlocks, sb + SB.blocks);
  image.writeUInt32LE(Math.floor((SUPER_OFFSET + SUPER_SIZE) / BLOCK_SIZE), sb + SB.metaBlkaddr);
  image.writeUInt32LE(Math.floor(layout.inodesEnd / BLOCK_SIZE), sb + SB.xattrBlkaddr);

  const out = new Emitter(image);
  out.pos = SUPER_OFFSET + SUPER_SIZE;
  const state = { blockCursor: layout.dataStart };
  for (const node of order.nodes) writeInode(out, node, layout, state);
  out.align(SLOT_SIZE);
  if (out.pos !== layout.inodesEnd) throw new ImageWriteError(`internal layout mismatch at inode table end (${out.pos} != ${layout.inodesEnd})`);
  for (const x of shared.list) writeXattrEntry(out, x);
  out.align(BLOCK_SIZE);
  if (out.pos !== layout.dataStart) throw new ImageWriteError('internal layout mismatch at data start');
  for (const node of order.nodes) writeDataBlocks(out, node);
  if (out.pos !== totalSize) throw new ImageWriteError(`internal layout mismatch at image end (${out.pos} != ${totalSize})`);
  return { image, version };
}

export function writeImage(tree: Inode, opts: WriteOptions = {}): Buffer {
  return writeImageWithInfo(tree, opts).image;
}
