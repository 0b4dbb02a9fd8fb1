/**
 * The FUSE kernel protocol (include/uapi/linux/fuse.h, version 7) as data:
 * opcodes, flags, and the byte layout of the structures a read-only server
 * reads and writes. Everything is little-endian on the machines we run on
 * (the protocol is host-endian; x86-64 and arm64 are both little-endian).
 *
 * Nothing here does I/O: the serving threads (dispatch.ts) read requests
 * from /dev/fuse and answer them with these encoders, each of which writes
 * one reply body over its structure's named offsets and returns its length.
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
/** Where a reply's body starts in a reply buffer (right after fuse_out_header). */
export const BODY = OUT_HEADER_SIZE;
/** fuse_in_header field offsets. */
export const IH = { len: 0, opcode: 4, unique: 8, nodeid: 16, uid: 24, gid: 28, pid: 32, totalExtlen: 36 } as const;

export const ATTR_SIZE = 88;
/** fuse_attr field offsets. */
export const A = {
  ino: 0, size: 8, blocks: 16, atime: 24, mtime: 32, ctime: 40, atimensec: 48, mtimensec: 52, ctimensec: 56,
  mode: 60, nlink: 64, uid: 68, gid: 72, rdev: 76, blksize: 80, flags: 84,
} as const;

/** fuse_entry_out field offsets. */
export const EntryOut = { nodeid: 0, generation: 8, entryValid: 16, attrValid: 24, entryValidNsec: 32, attrValidNsec: 36, attr: 40 } as const;
export const ENTRY_OUT_SIZE = EntryOut.attr + ATTR_SIZE;
/** fuse_attr_out field offsets. */
export const AttrOut = { attrValid: 0, attrValidNsec: 8, dummy: 12, attr: 16 } as const;
export const ATTR_OUT_SIZE = AttrOut.attr + ATTR_SIZE;
/** fuse_open_out field offsets. */
export const OpenOut = { fh: 0, openFlags: 8, backingId: 12 } as const;
export const OPEN_OUT_SIZE = 16;
/** fuse_init_out field offsets (the rest of its 64 bytes is unused). */
export const InitOut = {
  major: 0, minor: 4, maxReadahead: 8, flags: 12, maxBackground: 16, congestionThreshold: 18, maxWrite: 20,
  timeGran: 24, maxPages: 28, mapAlignment: 30, flags2: 32, maxStackDepth: 36,
} as const;
export const INIT_OUT_SIZE = 64;
/** The INIT answer to a kernel of another major version: our major and minor alone. */
export const INIT_VERSION_ONLY_SIZE = 8;
/** fuse_statfs_out (a fuse_kstatfs) field offsets. */
export const StatfsOut = { blocks: 0, bfree: 8, bavail: 16, files: 24, ffree: 32, bsize: 40, namelen: 44, frsize: 48 } as const;
export const STATFS_OUT_SIZE = 80;
/** fuse_getxattr_out field offsets: the size of a value or list, when asked with size 0. */
export const GetxattrOut = { size: 0, padding: 4 } as const;
export const GETXATTR_OUT_SIZE = 8;
/** fuse_dirent field offsets. */
export const Dirent = { ino: 0, off: 8, namelen: 16, type: 20, name: 24 } as const;
/** fuse_dirent header (ino, off, namelen, type) before the name. */
export const DIRENT_HEADER = Dirent.name;
/** fuse_direntplus: an entry_out, then a dirent. */
export const DIRENTPLUS_HEADER = ENTRY_OUT_SIZE + DIRENT_HEADER;

/** Request bodies (after the in header). */
export const InitIn = { major: 0, minor: 4, maxReadahead: 8, flags: 12, flags2: 16 } as const;
export const ReadIn = { fh: 0, offset: 8, size: 16 } as const;
/** fuse_getxattr_in (GETXATTR, then the name; LISTXATTR without one). */
export const GetxattrIn = { size: 0, padding: 4, name: 8 } as const;
export const ReleaseIn = { fh: 0 } as const;
export const BatchForgetIn = { count: 0 } as const;

/** fuse_backing_map, the FUSE_DEV_IOC_BACKING_OPEN argument: fd, flags, padding. */
export const BACKING_MAP_SIZE = 16;

/** Thrown by a request's handler: answer this errno to the request at hand to the request at hand (what went wrong is logged already, if it needs saying). */
export class ReplyError extends Error {
  constructor(readonly errno: number) {
    super(`errno ${errno}`);
  }
}

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
export function encodeEntry(b: Buffer, off: number, nodeid: number, valid: number, a: Attr): number {
  putU64(b, off + EntryOut.nodeid, nodeid);
  putU64(b, off + EntryOut.generation, 0); // node ids are never reused while mounted
  putU64(b, off + EntryOut.entryValid, valid);
  putU64(b, off + EntryOut.attrValid, valid);
  b.writeUInt32LE(0, off + EntryOut.entryValidNsec);
  b.writeUInt32LE(0, off + EntryOut.attrValidNsec);
  writeAttr(b, off + EntryOut.attr, a);
  return ENTRY_OUT_SIZE;
}

/** A negative fuse_entry_out (node id 0): "no such name", cached for `valid` seconds (0: not cached, as in a READDIRPLUS record that lists only the name). */
export function encodeNoEntry(b: Buffer, off: number, valid: number): number {
  b.fill(0, off, off + ENTRY_OUT_SIZE);
  putU64(b, off + EntryOut.entryValid, valid);
  return ENTRY_OUT_SIZE;
}

/** fuse_attr_out at `off`, valid for `valid` seconds. */
export function encodeAttrOut(b: Buffer, off: number, valid: number, a: Attr): number {
  putU64(b, off + AttrOut.attrValid, valid);
  b.writeUInt32LE(0, off + AttrOut.attrValidNsec);
  b.writeUInt32LE(0, off + AttrOut.dummy);
  writeAttr(b, off + AttrOut.attr, a);
  return ATTR_OUT_SIZE;
}

/** fuse_open_out at `off`: the file handle, FOPEN_* flags and the passthrough backing id (0 for none). */
export function encodeOpenOut(b: Buffer, off: number, fh: number, flags: number, backingId: number): number {
  putU64(b, off + OpenOut.fh, fh);
  b.writeUInt32LE(flags >>> 0, off + OpenOut.openFlags);
  b.writeInt32LE(backingId, off + OpenOut.backingId);
  return OPEN_OUT_SIZE;
}

/** What an INIT answer settles: every field of fuse_init_out but the major (ours) and map_alignment (0); timeGran in nanoseconds. */
export type InitSettings = Record<Exclude<keyof typeof InitOut, 'major' | 'mapAlignment'>, number>;

/** fuse_init_out at `off`. */
export function encodeInitOut(b: Buffer, off: number, s: InitSettings): number {
  b.fill(0, off, off + INIT_OUT_SIZE);
  b.writeUInt32LE(FUSE_KERNEL_VERSION, off + InitOut.major);
  b.writeUInt32LE(s.minor, off + InitOut.minor);
  b.writeUInt32LE(s.maxReadahead, off + InitOut.maxReadahead);
  b.writeUInt32LE(s.flags >>> 0, off + InitOut.flags);
  b.writeUInt16LE(s.maxBackground, off + InitOut.maxBackground);
  b.writeUInt16LE(s.congestionThreshold, off + InitOut.congestionThreshold);
  b.writeUInt32LE(s.maxWrite, off + InitOut.maxWrite);
  b.writeUInt32LE(s.timeGran, off + InitOut.timeGran);
  b.writeUInt16LE(s.maxPages, off + InitOut.maxPages);
  b.writeUInt32LE(s.flags2 >>> 0, off + InitOut.flags2);
  b.writeUInt32LE(s.maxStackDepth, off + InitOut.maxStackDepth);
  return INIT_OUT_SIZE;
}

/** The INIT answer to another major version: ours, so the kernel retries with it or gives up. */
export function encodeInitVersionOnly(b: Buffer, off: number): number {
  b.writeUInt32LE(FUSE_KERNEL_VERSION, off + InitOut.major);
  b.writeUInt32LE(FUSE_OUR_MINOR, off + InitOut.minor);
  return INIT_VERSION_ONLY_SIZE;
}

/** What a STATFS answer reports: everything else (free blocks and inodes) is 0, as for any read-only image. */
export type Statfs = Record<'blocks' | 'files' | 'bsize' | 'namelen' | 'frsize', number>;

/** fuse_statfs_out at `off`. */
export function encodeStatfsOut(b: Buffer, off: number, s: Statfs): number {
  b.fill(0, off, off + STATFS_OUT_SIZE);
  putU64(b, off + StatfsOut.blocks, s.blocks);
  putU64(b, off + StatfsOut.files, s.files);
  b.writeUInt32LE(s.bsize, off + StatfsOut.bsize);
  b.writeUInt32LE(s.namelen, off + StatfsOut.namelen);
  b.writeUInt32LE(s.frsize, off + StatfsOut.frsize);
  return STATFS_OUT_SIZE;
}

/** fuse_getxattr_out at `off`: the size an xattr value or list would take (the answer to a request with size 0). */
export function encodeXattrSize(b: Buffer, off: number, size: number): number {
  b.writeUInt32LE(size, off + GetxattrOut.size);
  b.writeUInt32LE(0, off + GetxattrOut.padding);
  return GETXATTR_OUT_SIZE;
}

/** The bytes a READDIR (or, with `plus`, READDIRPLUS) record of a name of `nameLength` bytes takes. */
export function direntSize(nameLength: number, plus: boolean): number {
  return align8((plus ? DIRENTPLUS_HEADER : DIRENT_HEADER) + nameLength);
}

/** fuse_dirent (header and name, padded) at `off`; returns the bytes written. */
export function encodeDirent(b: Buffer, off: number, ino: number, next: number, type: number, name: Uint8Array): number {
  putU64(b, off + Dirent.ino, ino);
  putU64(b, off + Dirent.off, next);
  b.writeUInt32LE(name.length, off + Dirent.namelen);
  b.writeUInt32LE(type, off + Dirent.type);
  b.set(name, off + Dirent.name);
  const size = direntSize(name.length, false);
  b.fill(0, off + Dirent.name + name.length, off + size);
  return size;
}

/**
 * fuse_direntplus at `off`: the entry (when `entry` is given; else node id
 * 0, with which the kernel only lists the name), then the dirent. Returns
 * the bytes written.
 */
export function encodeDirentPlus(
  b: Buffer, off: number, entry: { nodeid: number; valid: number; attr: Attr } | null, ino: number, next: number, type: number, name: Uint8Array,
): number {
  if (entry) encodeEntry(b, off, entry.nodeid, entry.valid, entry.attr);
  else b.fill(0, off, off + ENTRY_OUT_SIZE);
  return ENTRY_OUT_SIZE + encodeDirent(b, off + ENTRY_OUT_SIZE, ino, next, type, name);
}

/** The d_type of an EROFS dirent file type (EROFS numbers them 1..7, DT_* are the mode's type >> 12). */
export const DT_OF_FT: ReadonlyArray<number> = [0, 8, 4, 2, 6, 1, 12, 10];
