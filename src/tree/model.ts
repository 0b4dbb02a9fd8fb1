/**
 * The tree model every part of the project speaks: plain data, no methods.
 *
 * It mirrors what a composefs image can express. An `Inode` is one file
 * object; a directory lists its entries in `children`, sorted by name bytes
 * (the order the image stores them in). A hard link is a second `Dirent`
 * pointing at the same `Inode` object, marked `hardlink: true`; the entry that
 * is not so marked is the inode's primary name, which decides where the inode
 * sits in the image's breadth-first inode order.
 */

/**
 * st_mode file types, defined once; a const enum so that hot loops get
 * literals (see Erofs in src/erofs/format.ts), the S_IF* names for everyone else.
 */
export const enum Mode {
  TYPE = 0o170000,
  SOCK = 0o140000,
  LNK = 0o120000,
  REG = 0o100000,
  BLK = 0o060000,
  DIR = 0o040000,
  CHR = 0o020000,
  FIFO = 0o010000,
}

/** Linux's limits on names and paths, which every image, dump file and layer is held to. */
export const enum Limits {
  /** Bytes in one name. */
  NAME_MAX = 255,
  /** Bytes in a path or symlink target, with its NUL: at most 4095 without. */
  PATH_MAX = 4096,
}
export const NAME_MAX = Limits.NAME_MAX;
export const PATH_MAX = Limits.PATH_MAX;

export const S_IFMT = Mode.TYPE;
export const S_IFSOCK = Mode.SOCK;
export const S_IFLNK = Mode.LNK;
export const S_IFREG = Mode.REG;
export const S_IFBLK = Mode.BLK;
export const S_IFDIR = Mode.DIR;
export const S_IFCHR = Mode.CHR;
export const S_IFIFO = Mode.FIFO;

export interface Xattr {
  /** Full name, e.g. `user.foo`, as bytes (no NUL). */
  key: Buffer;
  value: Buffer;
}

export interface Inode {
  /** st_mode: file type and permission bits. */
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  /** Device number for character and block devices (Linux dev_t encoding). */
  rdev: number;
  /** st_size in bytes. For symlinks the target length. */
  size: number;
  mtimeSec: number;
  mtimeNsec: number;
  /** Symlink target, or for a regular file the path of its backing object (relative to the store). */
  payload: Buffer | null;
  /** Inline content of a small regular file, stored in the image itself. */
  content: Buffer | null;
  /** fs-verity digest of a regular file's content: 32 bytes (SHA-256) or 64 (SHA-512), one size in a tree. */
  digest: Buffer | null;
  xattrs: Xattr[];
  /** Directory entries sorted by name bytes; null for non-directories. */
  children: Dirent[] | null;
}

export interface Dirent {
  name: Buffer;
  inode: Inode;
  /** True for every name of a hard-linked inode but its primary one. */
  hardlink: boolean;
}

export function fileType(mode: number): number {
  return mode & S_IFMT;
}

export function isDir(inode: Inode): boolean {
  return (inode.mode & S_IFMT) === S_IFDIR;
}

export function newInode(mode: number, init: Partial<Inode> = {}): Inode {
  return {
    mode,
    nlink: 1,
    uid: 0,
    gid: 0,
    rdev: 0,
    size: 0,
    mtimeSec: 0,
    mtimeNsec: 0,
    payload: null,
    content: null,
    digest: null,
    xattrs: [],
    children: (mode & S_IFMT) === S_IFDIR ? [] : null,
    ...init,
  };
}

/** Byte-wise name order, the same as C strcmp on names without NUL. */
export function compareNames(a: Buffer, b: Buffer): number {
  return Buffer.compare(a, b);
}

/**
 * Depth-first walk in name order, calling `visit` with each entry's path
 * (bytes, starting with `/`). The root is visited first with path `/`.
 */
export function walk(root: Inode, visit: (path: Buffer, inode: Inode, dirent: Dirent | null) => void): void {
  const slash = Buffer.from('/');
  visit(slash, root, null);
  const recurse = (dir: Inode, prefix: Buffer) => {
    for (const d of dir.children ?? []) {
      const path = prefix.length === 1 ? Buffer.concat([slash, d.name]) : Buffer.concat([prefix, slash, d.name]);
      visit(path, d.inode, d);
      if (!d.hardlink && d.inode.children) recurse(d.inode, path);
    }
  };
  recurse(root, slash);
}
