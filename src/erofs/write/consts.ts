/**
 * The numbers the writer's loops use, as const enums so that tsc writes them
 * as literals: code V8 has not optimised (most of a build) reads an imported
 * or module-level constant with a lookup and a hole check every time. The
 * values are those of src/tree/model.ts and src/erofs/format.ts, which
 * test/writer.test.ts checks.
 */

/** st_mode file types. */
export const enum Mode {
  TYPE = 0o170000,
  DIR = 0o040000,
  REG = 0o100000,
  LNK = 0o120000,
  CHR = 0o020000,
  BLK = 0o060000,
}

/** EROFS layout. */
export const enum Erofs {
  BLOCK_BITS = 12,
  BLOCK_SIZE = 4096,
  SLOT_SIZE = 32,
  /** The first byte after the superblock: where inodes may start. */
  META_START = 1024 + 128,
  COMPACT_SIZE = 32,
  EXTENDED_SIZE = 64,
  XATTR_HEADER_SIZE = 12,
  XATTR_ENTRY_SIZE = 4,
  /** Shared xattr ids an inode may have (the name index's long-prefix bit). */
  MAX_SHARED = 0x80,
  DIRENT_SIZE = 12,
  LAYOUT_FLAT_PLAIN = 0,
  LAYOUT_FLAT_INLINE = 2,
  LAYOUT_CHUNK_BASED = 4,
  DATALAYOUT_BIT = 1,
  /** Chunk size bits above the block size, at most. */
  CHUNK_BITS_MAX = 0x1f,
  /** The hash algorithm number in a metacopy xattr: SHA-256. */
  FS_VERITY_SHA256 = 1,
}
