/**
 * On-disk constants and structure offsets of EROFS as composefs uses it
 * (from the kernel's fs/erofs/erofs_fs.h) plus the composefs header that
 * precedes the superblock. Everything is little-endian.
 */
import { Mode } from '../tree/model.js';

/**
 * The numbers hot loops use, defined here once as a const enum so that tsc
 * writes them as literals: code V8 has not optimised (most of a build or a
 * dump) reads an imported or module-level constant with a lookup and a hole
 * check every time. The plain constants below are the same values by name.
 */
export const enum Erofs {
  /** composefs images always use 4 KiB blocks (see checkImageHeader in src/erofs/header.ts). */
  BLOCK_BITS = 12,
  BLOCK_SIZE = 4096,
  SLOT_BITS = 5,
  SLOT_SIZE = 32,
  SUPER_OFFSET = 1024,
  SUPER_SIZE = 128,
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
  LAYOUT_COMPRESSED_FULL = 1,
  LAYOUT_FLAT_INLINE = 2,
  LAYOUT_COMPRESSED_COMPACT = 3,
  LAYOUT_CHUNK_BASED = 4,
  DATALAYOUT_BIT = 1,
  DATALAYOUT_MASK = 0x7,
  /** Chunk size bits above the block size, at most (the chunk format's block-bits mask). */
  CHUNK_BITS_MAX = 0x1f,
  CHUNK_FORMAT_INDEXES = 0x20,
  /** The hash algorithm numbers in a metacopy xattr: SHA-256, SHA-512. */
  FS_VERITY_SHA256 = 1,
  FS_VERITY_SHA512 = 2,
}

export const BLOCK_BITS = Erofs.BLOCK_BITS;
export const BLOCK_SIZE = Erofs.BLOCK_SIZE;
/** Inodes are addressed in 32-byte slots: nid = offset / 32 from the metadata start. */
export const SLOT_BITS = Erofs.SLOT_BITS;
export const SLOT_SIZE = Erofs.SLOT_SIZE;

/** The superblock starts 1024 bytes into the image; composefs puts its header before it. */
export const SUPER_OFFSET = Erofs.SUPER_OFFSET;
export const SUPER_SIZE = Erofs.SUPER_SIZE;
export const SUPER_MAGIC_V1 = 0xe0f5e1e2;

export const FEATURE_COMPAT_SB_CHKSUM = 0x1;
export const FEATURE_COMPAT_MTIME = 0x2;
export const FEATURE_COMPAT_XATTR_FILTER = 0x4;

/** Superblock field offsets (relative to SUPER_OFFSET). */
export const SB = {
  magic: 0, // u32
  checksum: 4, // u32
  featureCompat: 8, // u32
  blkszbits: 12, // u8
  extslots: 13, // u8
  rootNid: 14, // u16
  inos: 16, // u64
  buildTime: 24, // u64
  buildTimeNsec: 32, // u32
  blocks: 36, // u32
  metaBlkaddr: 40, // u32
  xattrBlkaddr: 44, // u32
  uuid: 48, // 16 bytes
  volumeName: 64, // 16 bytes
  featureIncompat: 80, // u32
} as const;

/** The composefs header: first 32 bytes of the image. */
export const COMPOSEFS_MAGIC = 0xd078629a;
/** The header's `version` field: the EROFS-based composefs layout, always 1. */
export const COMPOSEFS_HEADER_VERSION = 1;
export const COMPOSEFS_HEADER_SIZE = 32;
export const COMPOSEFS_FLAG_HAS_ACL = 1 << 0;
export const HDR = { magic: 0, version: 4, flags: 8, composefsVersion: 12 } as const;

/** Highest composefs format version we (and the reference) write. */
export const FORMAT_VERSION_MAX = 1;
export const DEFAULT_MIN_VERSION = 0;
export const DEFAULT_MAX_VERSION = 1;

/** i_format: bit 0 = extended inode, bits 1..3 = data layout. */
export const I_VERSION_BIT = 0;
export const I_DATALAYOUT_BIT = Erofs.DATALAYOUT_BIT;
export const I_DATALAYOUT_MASK = Erofs.DATALAYOUT_MASK;

export const LAYOUT_FLAT_PLAIN = Erofs.LAYOUT_FLAT_PLAIN;
export const LAYOUT_COMPRESSED_FULL = Erofs.LAYOUT_COMPRESSED_FULL;
export const LAYOUT_FLAT_INLINE = Erofs.LAYOUT_FLAT_INLINE;
export const LAYOUT_COMPRESSED_COMPACT = Erofs.LAYOUT_COMPRESSED_COMPACT;
export const LAYOUT_CHUNK_BASED = Erofs.LAYOUT_CHUNK_BASED;

export const CHUNK_FORMAT_BLKBITS_MASK = Erofs.CHUNK_BITS_MAX;
export const CHUNK_FORMAT_INDEXES = Erofs.CHUNK_FORMAT_INDEXES;
/** A chunk index entry that points nowhere: composefs files hold no data blocks. */
export const NULL_CHUNK = 0xffffffff;

export const INODE_COMPACT_SIZE = Erofs.COMPACT_SIZE;
export const INODE_EXTENDED_SIZE = Erofs.EXTENDED_SIZE;

/** Compact inode (32 bytes) field offsets. */
export const IC = {
  format: 0, // u16
  xattrIcount: 2, // u16
  mode: 4, // u16
  nlink: 6, // u16
  size: 8, // u32
  reserved: 12, // u32
  u: 16, // u32: raw_blkaddr | rdev | chunk format (u16)
  ino: 20, // u32
  uid: 24, // u16
  gid: 26, // u16
  reserved2: 28, // u32
} as const;

/** Extended inode (64 bytes) field offsets. */
export const IE = {
  format: 0, // u16
  xattrIcount: 2, // u16
  mode: 4, // u16
  reserved: 6, // u16
  size: 8, // u64
  u: 16, // u32
  ino: 20, // u32
  uid: 24, // u32
  gid: 28, // u32
  mtime: 32, // u64
  mtimeNsec: 40, // u32
  nlink: 44, // u32
  reserved2: 48, // 16 bytes
} as const;

/** Inline xattr area header (12 bytes), then shared ids (u32 each), then entries. */
export const XATTR_IBODY_HEADER_SIZE = Erofs.XATTR_HEADER_SIZE;
export const XH = { nameFilter: 0, sharedCount: 4 } as const;
/** Xattr entry header: name_len u8, name_index u8, value_size u16; then name, value, pad to 4. */
export const XATTR_ENTRY_SIZE = Erofs.XATTR_ENTRY_SIZE;

export const XATTR_INDEX_USER = 1;
export const XATTR_INDEX_POSIX_ACL_ACCESS = 2;
export const XATTR_INDEX_POSIX_ACL_DEFAULT = 3;
export const XATTR_INDEX_TRUSTED = 4;
export const XATTR_INDEX_LUSTRE = 5;
export const XATTR_INDEX_SECURITY = 6;
/** Name indexes with this bit refer to long prefixes, which composefs never writes. */
export const XATTR_LONG_PREFIX = Erofs.MAX_SHARED;

/** Prefix table used when writing, in the reference's matching order. */
export const XATTR_PREFIXES: ReadonlyArray<readonly [string, number]> = [
  ['user.', XATTR_INDEX_USER],
  ['system.posix_acl_access', XATTR_INDEX_POSIX_ACL_ACCESS],
  ['system.posix_acl_default', XATTR_INDEX_POSIX_ACL_DEFAULT],
  ['trusted.', XATTR_INDEX_TRUSTED],
  ['security.', XATTR_INDEX_SECURITY],
];

/** Prefix for each name index when reading (index 0 = the full name is stored). */
export const XATTR_INDEX_PREFIX: ReadonlyArray<string | null> = [
  '',
  'user.',
  'system.posix_acl_access',
  'system.posix_acl_default',
  'trusted.',
  'lustre.',
  'security.',
];

export const XATTR_FILTER_BITS = 32;
export const XATTR_FILTER_DEFAULT = 0xffffffff;
export const XATTR_FILTER_SEED = 0x25bbe08f;

/** Directory entry (12 bytes): nid u64, nameoff u16, file_type u8, reserved u8. */
export const DIRENT_SIZE = Erofs.DIRENT_SIZE;
export const DE = { nid: 0, nameoff: 8, fileType: 10 } as const;

export const FT_UNKNOWN = 0;
export const FT_REG_FILE = 1;
export const FT_DIR = 2;
export const FT_CHRDEV = 3;
export const FT_BLKDEV = 4;
export const FT_FIFO = 5;
export const FT_SOCK = 6;
export const FT_SYMLINK = 7;

/** The directory-entry file type for a mode; FT_UNKNOWN when the mode has no valid type. */
export function direntFileType(mode: number): number {
  switch (mode & Mode.TYPE) {
    case Mode.REG:
      return FT_REG_FILE;
    case Mode.DIR:
      return FT_DIR;
    case Mode.LNK:
      return FT_SYMLINK;
    case Mode.CHR:
      return FT_CHRDEV;
    case Mode.BLK:
      return FT_BLKDEV;
    case Mode.FIFO:
      return FT_FIFO;
    case Mode.SOCK:
      return FT_SOCK;
    default:
      return FT_UNKNOWN;
  }
}

/** Overlayfs xattrs composefs adds or escapes. */
export const OVERLAY_XATTR_PREFIX = 'trusted.overlay.';
export const OVERLAY_XATTR_ESCAPE_PREFIX = 'trusted.overlay.overlay.';
export const OVERLAY_XATTR_METACOPY = 'trusted.overlay.metacopy';
export const OVERLAY_XATTR_REDIRECT = 'trusted.overlay.redirect';
export const OVERLAY_XATTR_OPAQUE = 'trusted.overlay.opaque';
export const OVERLAY_XATTR_ESCAPED_WHITEOUT = 'trusted.overlay.overlay.whiteout';
export const OVERLAY_XATTR_ESCAPED_WHITEOUTS = 'trusted.overlay.overlay.whiteouts';
export const OVERLAY_XATTR_ESCAPED_OPAQUE = 'trusted.overlay.overlay.opaque';
export const OVERLAY_XATTR_USERXATTR_WHITEOUT = 'user.overlay.whiteout';
export const OVERLAY_XATTR_USERXATTR_WHITEOUTS = 'user.overlay.whiteouts';
export const OVERLAY_XATTR_USERXATTR_OPAQUE = 'user.overlay.opaque';

/** fs-verity hash algorithm number for SHA-256 (in the metacopy xattr). */
export const FS_VERITY_HASH_ALG_SHA256 = Erofs.FS_VERITY_SHA256;
/** fs-verity hash algorithm number for SHA-512 (in the metacopy xattr). */
export const FS_VERITY_HASH_ALG_SHA512 = Erofs.FS_VERITY_SHA512;
