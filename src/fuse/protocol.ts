/**
 * The FUSE kernel protocol (include/uapi/linux/fuse.h, version 7) as data:
 * opcodes, flags, and the byte layout of the structures a read-only server
 * reads and writes. Everything is little-endian on the machines we run on
 * (the protocol is host-endian; x86-64 and arm64 are both little-endian).
 *
 * Nothing here does I/O: the server (server.ts) reads requests from
 * /dev/fuse and uses these offsets and writers to answer them.
 */

export const FUSE_KERNEL_VERSION = 7;
/** The newest minor version whose structures we know (7.40 added passthrough). */
export const FUSE_OUR_MINOR = 41;
export const FUSE_ROOT_ID = 1;

export const Op = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  READLINK: 5,
  SYMLINK: 6,
  MKNOD: 8,
  MKDIR: 9,
  UNLINK: 10,
  RMDIR: 11,
  RENAME: 12,
  LINK: 13,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  SETXATTR: 21,
  GETXATTR: 22,
  LISTXATTR: 23,
  REMOVEXATTR: 24,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  FSYNCDIR: 30,
  ACCESS: 34,
  CREATE: 35,
  INTERRUPT: 36,
  DESTROY: 38,
  BATCH_FORGET: 42,
  FALLOCATE: 43,
  READDIRPLUS: 44,
  RENAME2: 45,
  LSEEK: 46,
  COPY_FILE_RANGE: 47,
  TMPFILE: 51,
  STATX: 52,
  COPY_FILE_RANGE_64: 53,
} as const;

/** Requests that would change the tree: answered EROFS (the rest we do not serve get ENOSYS). */
export const WRITE_OPS: ReadonlySet<number> = new Set([
  Op.SETATTR, Op.SYMLINK, Op.MKNOD, Op.MKDIR, Op.UNLINK, Op.RMDIR, Op.RENAME, Op.LINK, Op.WRITE,
  Op.SETXATTR, Op.REMOVEXATTR, Op.CREATE, Op.FALLOCATE, Op.RENAME2, Op.COPY_FILE_RANGE, Op.TMPFILE,
  Op.COPY_FILE_RANGE_64,
]);

/** Requests the kernel sends without waiting for an answer. */
export const NO_REPLY_OPS: ReadonlySet<number> = new Set([Op.FORGET, Op.BATCH_FORGET, Op.INTERRUPT]);

/** INIT flags (fuse_init_in.flags / flags2 << 32). */
export const Init = {
  ASYNC_READ: 1 << 0,
  ATOMIC_O_TRUNC: 1 << 3,
  BIG_WRITES: 1 << 5,
  AUTO_INVAL_DATA: 1 << 12,
  DO_READDIRPLUS: 1 << 13,
  READDIRPLUS_AUTO: 1 << 14,
  NO_OPEN_SUPPORT: 1 << 17,
  PARALLEL_DIROPS: 1 << 18,
  POSIX_ACL: 1 << 20,
  MAX_PAGES: 1 << 22,
  CACHE_SYMLINKS: 1 << 23,
  NO_OPENDIR_SUPPORT: 1 << 24,
  EXPLICIT_INVAL_DATA: 1 << 25,
  INIT_EXT: 1 << 30,
  /** In flags2 (bit 37 - 32). */
  PASSTHROUGH_HI: 1 << 5,
} as const;

export const FOPEN_DIRECT_IO = 1 << 0;
export const FOPEN_KEEP_CACHE = 1 << 1;
export const FOPEN_CACHE_DIR = 1 << 3;
export const FOPEN_PASSTHROUGH = 1 << 7;

/** FILESYSTEM_MAX_STACK_DEPTH: a FUSE mount over files of a plain file system is one level up. */
export const MAX_STACK_DEPTH = 1;

export const IN_HEADER_SIZE = 40;
export const OUT_HEADER_SIZE = 16;
/** fuse_in_header field offsets. */
export const IH = { len: 0, opcode: 4, unique: 8, nodeid: 16, uid: 24, gid: 28, pid: 32, totalExtlen: 36 } as const;

export const ATTR_SIZE = 88;
/** fuse_attr field offsets. */
export const A = {
  ino: 0, size: 8, blocks: 16, atime: 24, mtime: 32, ctime: 40, atimensec: 48, mtimensec: 52, ctimensec: 56,
  mode: 60, nlink: 64, uid: 68, gid: 72, rdev: 76, blksize: 80, flags: 84,
} as const;

/** fuse_entry_out: nodeid, generation, entry_valid, attr_valid, their nsecs, then fuse_attr. */
export const ENTRY_OUT_SIZE = 40 + ATTR_SIZE;
/** fuse_attr_out: attr_valid, attr_valid_nsec, dummy, then fuse_attr. */
export const ATTR_OUT_SIZE = 16 + ATTR_SIZE;
export const OPEN_OUT_SIZE = 16;
export const INIT_OUT_SIZE = 64;
export const STATFS_OUT_SIZE = 80;
export const GETXATTR_OUT_SIZE = 8;
/** fuse_dirent header (ino, off, namelen, type) before the name. */
export const DIRENT_HEADER = 24;
/** fuse_direntplus: an entry_out, then a dirent. */
export const DIRENTPLUS_HEADER = ENTRY_OUT_SIZE + DIRENT_HEADER;

/** Request bodies (after the in header). */
export const InitIn = { major: 0, minor: 4, maxReadahead: 8, flags: 12, flags2: 16 } as const;
export const ReadIn = { fh: 0, offset: 8, size: 16 } as const;
export const GetxattrIn = { size: 0 } as const;
export const ReleaseIn = { fh: 0 } as const;
export const BatchForgetIn = { count: 0 } as const;

/** fuse_backing_map, the FUSE_DEV_IOC_BACKING_OPEN argument: fd, flags, padding. */
export const BACKING_MAP_SIZE = 16;

/** Records in a READDIR(PLUS) answer are padded to 8 bytes. */
export function align8(n: number): number {
  return (n + 7) & ~7;
}

export function putU64(b: Buffer, off: number, v: number): void {
  b.writeUInt32LE(v % 0x100000000, off);
  b.writeUInt32LE(Math.floor(v / 0x100000000), off + 4);
}

export function putI64(b: Buffer, off: number, v: number): void {
  const hi = Math.floor(v / 0x100000000);
  b.writeUInt32LE(v - hi * 0x100000000, off);
  b.writeInt32LE(hi, off + 4);
}

export function getU64(b: Buffer, off: number): number {
  return b.readUInt32LE(off) + b.readUInt32LE(off + 4) * 0x100000000;
}

export function writeOutHeader(b: Buffer, off: number, len: number, error: number, unique: number): void {
  b.writeUInt32LE(len, off);
  b.writeInt32LE(error, off + 4);
  putU64(b, off + 8, unique);
}

/** What a server knows of an inode, as fuse_attr carries it. */
export interface Attr {
  ino: number;
  size: number;
  blocks: number;
  mtimeSec: number;
  mtimeNsec: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  /** Device number in the kernel's new_encode_dev form (what EROFS stores). */
  rdev: number;
}

/** fuse_attr at `off`: atime and ctime are the mtime, as the kernel's EROFS shows them. */
export function writeAttr(b: Buffer, off: number, a: Attr): void {
  putU64(b, off + A.ino, a.ino);
  putU64(b, off + A.size, a.size);
  putU64(b, off + A.blocks, a.blocks);
  putI64(b, off + A.atime, a.mtimeSec);
  putI64(b, off + A.mtime, a.mtimeSec);
  putI64(b, off + A.ctime, a.mtimeSec);
  b.writeUInt32LE(a.mtimeNsec, off + A.atimensec);
  b.writeUInt32LE(a.mtimeNsec, off + A.mtimensec);
  b.writeUInt32LE(a.mtimeNsec, off + A.ctimensec);
  b.writeUInt32LE(a.mode, off + A.mode);
  b.writeUInt32LE(a.nlink, off + A.nlink);
  b.writeUInt32LE(a.uid, off + A.uid);
  b.writeUInt32LE(a.gid, off + A.gid);
  b.writeUInt32LE(a.rdev, off + A.rdev);
  b.writeUInt32LE(4096, off + A.blksize);
  b.writeUInt32LE(0, off + A.flags);
}

/** fuse_entry_out at `off`; `valid` seconds for both the name and the attributes. */
export function writeEntry(b: Buffer, off: number, nodeid: number, valid: number, a: Attr): void {
  putU64(b, off, nodeid);
  putU64(b, off + 8, 0); // generation: nodeids are never reused while mounted
  putU64(b, off + 16, valid);
  putU64(b, off + 24, valid);
  b.writeUInt32LE(0, off + 32);
  b.writeUInt32LE(0, off + 36);
  writeAttr(b, off + 40, a);
}

/** fuse_dirent (header and name, padded) at `off`; returns the bytes written. */
export function writeDirent(b: Buffer, off: number, ino: number, next: number, type: number, name: Uint8Array): number {
  putU64(b, off, ino);
  putU64(b, off + 8, next);
  b.writeUInt32LE(name.length, off + 16);
  b.writeUInt32LE(type, off + 20);
  b.set(name, off + DIRENT_HEADER);
  const size = align8(DIRENT_HEADER + name.length);
  b.fill(0, off + DIRENT_HEADER + name.length, off + size);
  return size;
}

/** The d_type of an EROFS dirent file type (EROFS numbers them 1..7, DT_* are the mode's type >> 12). */
export const DT_OF_FT: ReadonlyArray<number> = [0, 8, 4, 2, 6, 1, 12, 10];
