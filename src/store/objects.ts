/**
 * The content-addressed object store: `XX/YYYY…` named by fs-verity digest,
 * the layout the reference's `mkcomposefs --digest-store` writes and
 * `mount -t composefs -o basedir=` reads.
 *
 * An object appears complete or not at all: its data goes into an unnamed
 * O_TMPFILE (or, where unsupported, a dot-named temporary in the same
 * directory) that is linked into place only when full. Linking never
 * replaces, so two builders racing on the same object both succeed and one
 * copy wins. There is no fsync per object: the caller runs one `syncfs` on
 * the store once every object is in (see `syncStore`), before the image that
 * refers to them is written.
 *
 * Data moves by reflink (FICLONE) when the file systems allow, else
 * copy_file_range, else read/write.
 */
import { closeSync, constants, fchmodSync, fstatSync, linkSync, lstatSync, mkdirSync, openSync, readSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { copyFileRange, enableVerity, ficlone, linkFd, openTmpfile, syncfs, SysError } from '../sys/fs.js';
import { digestToHex } from '../fsverity/index.js';

const ENOENT = 'ENOENT';

/** Per-thread memory of what the file systems refused, so we stop asking. */
const support = { reflink: true, copyRange: true, tmpfile: true, verity: true };

let copyBuf: Buffer | null = null;
let tmpCounter = 0;

export class StoreError extends Error {
  constructor(message: string, readonly code?: string) {
    super(message);
    this.name = 'StoreError';
  }
}

function reason(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (e instanceof SysError) return e.message.replace(/^[^:]*: /, '');
  const map: Record<string, string> = {
    ENOSPC: 'No space left on device',
    EROFS: 'Read-only file system',
    EACCES: 'Permission denied',
    EPERM: 'Operation not permitted',
    EDQUOT: 'Disk quota exceeded',
    EIO: 'Input/output error',
    ENOENT: 'No such file or directory',
    ENOTDIR: 'Not a directory',
  };
  return (e?.code && map[e.code]) || e?.message || String(err);
}

/** Object path relative to the store: `ab/cdef…`. */
export function objectRelPath(digest: Uint8Array): string {
  const hex = digestToHex(digest);
  return `${hex.slice(0, 2)}/${hex.slice(2)}`;
}

export class ObjectStore {
  private readonly dirs = new Set<string>();

  constructor(readonly root: string) {}

  /**
   * Create the store directory if needed and check that we can write into
   * it, so a read-only or missing store fails before any work is done.
   */
  prepare(): void {
    try {
      mkdirSync(this.root, { recursive: true, mode: 0o755 });
    } catch (err) {
      throw new StoreError(`cannot create object store ${this.root}: ${reason(err)}`, (err as NodeJS.ErrnoException).code);
    }
    try {
      const fd = this.openTemp(this.root);
      closeSync(fd.fd);
      if (fd.path) unlinkSync(fd.path);
    } catch (err) {
      throw new StoreError(`cannot write to object store ${this.root}: ${reason(err)}`, (err as NodeJS.ErrnoException).code);
    }
  }

  /**
   * Make sure the object for `digest` exists, copying it from `srcFd`
   * (`size` bytes) if not. Returns the bytes written (0 when the object was
   * already there, or another writer linked it first).
   */
  ensure(digest: Uint8Array, srcFd: number, size: number): number {
    const rel = objectRelPath(digest);
    const dir = join(this.root, rel.slice(0, 2));
    const dest = join(this.root, rel);
    let replace = false;
    try {
      const st = lstatSync(dest);
      if (st.isFile() && st.size === size) return 0;
      // Wrong size: the debris of a crash before the store was synced. Replace it.
      replace = true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== ENOENT) throw new StoreError(`cannot access object ${dest}: ${reason(err)}`, (err as NodeJS.ErrnoException).code);
    }
    this.ensureDir(dir);
    let tmp: { fd: number; path: string | null };
    try {
      tmp = this.openTemp(dir);
    } catch (err) {
      throw new StoreError(`cannot write object ${dest}: ${reason(err)}`, (err as NodeJS.ErrnoException).code);
    }
    let fd = tmp.fd;
    let linked = false;
    try {
      copyData(srcFd, fd, size, dest);
      fchmodSync(fd, 0o644);
      if (support.verity) {
        // fs-verity needs the file closed for writing: reopen read-only, then enable.
        const ro = openSync(tmp.path ?? `/proc/self/fd/${fd}`, constants.O_RDONLY);
        closeSync(fd);
        fd = ro;
        const e = enableVerity(fd);
        if (e === 95 /* EOPNOTSUPP */ || e === 25 /* ENOTTY */ || e === 22 /* EINVAL */ || e === 1 /* EPERM */) support.verity = false;
      }
      if (tmp.path) {
        if (replace) renameSync(tmp.path, dest);
        else {
          try {
            linkSync(tmp.path, dest); // never replaces: EEXIST if another builder won
          } finally {
            unlinkSync(tmp.path);
          }
        }
      } else if (replace) {
        const side = `${dest}.tmp.${process.pid}.${tmpCounter++}`;
        linkFd(fd, side);
        renameSync(side, dest);
      } else {
        linkFd(fd, dest);
      }
      linked = true;
      return size;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') return 0; // another builder linked the same object first
      if (err instanceof StoreError) throw err;
      throw new StoreError(`cannot write object ${dest}: ${reason(err)}`, code);
    } finally {
      closeSync(fd);
      if (!linked && tmp.path) {
        try {
          unlinkSync(tmp.path);
        } catch {
          /* already gone */
        }
      }
    }
  }

  private ensureDir(dir: string): void {
    if (this.dirs.has(dir)) return;
    try {
      mkdirSync(dir, { mode: 0o755 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new StoreError(`cannot create ${dir}: ${reason(err)}`, (err as NodeJS.ErrnoException).code);
    }
    this.dirs.add(dir);
  }

  /** An unnamed file in `dir`, or a dot-named one when O_TMPFILE is unsupported. */
  private openTemp(dir: string): { fd: number; path: string | null } {
    if (support.tmpfile) {
      try {
        return { fd: openTmpfile(dir, 0o644), path: null };
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'EOPNOTSUPP' && code !== 'EISDIR' && code !== 'EINVAL') throw err;
        support.tmpfile = false;
      }
    }
    const path = join(dir, `.tmp.${process.pid}.${process.hrtime.bigint()}.${tmpCounter++}`);
    return { fd: openSync(path, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL, 0o644), path };
  }
}

/** Copy `size` bytes of `src` into the empty file `dst`: reflink, copy_file_range, or read/write. */
function copyData(src: number, dst: number, size: number, dest: string): void {
  if (size === 0) return;
  if (support.reflink) {
    try {
      ficlone(dst, src);
      checkCopied(dst, size, dest);
      return;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (err instanceof StoreError) throw err;
      if (code === 'EOPNOTSUPP' || code === 'EXDEV' || code === 'EINVAL' || code === 'ENOTTY' || code === 'ENOSYS') support.reflink = false;
      else if (code !== 'EPERM' && code !== 'ETXTBSY') throw err;
    }
  }
  let off = 0;
  if (support.copyRange) {
    try {
      while (off < size) {
        const n = copyFileRange(src, dst, off, Math.min(size - off, 1 << 30));
        if (n === 0) break;
        off += n;
      }
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (off > 0 || !(code === 'EXDEV' || code === 'ENOSYS' || code === 'EOPNOTSUPP' || code === 'EINVAL' || code === 'EPERM' || code === 'EBADF')) throw err;
      if (code === 'EXDEV' || code === 'ENOSYS') support.copyRange = false;
    }
  }
  if (off < size) {
    const buf = (copyBuf ??= Buffer.allocUnsafeSlow(1 << 20));
    while (off < size) {
      const n = readSync(src, buf, 0, Math.min(buf.length, size - off), off);
      if (n === 0) break;
      let w = 0;
      while (w < n) w += writeSync(dst, buf, w, n - w, off + w);
      off += n;
    }
  }
  if (off !== size) throw new StoreError(`cannot write object ${dest}: source is ${off} bytes, expected ${size} (file changed during the build)`);
}

function checkCopied(dst: number, size: number, dest: string): void {
  const got = fstatSync(dst).size;
  if (got !== size) throw new StoreError(`cannot write object ${dest}: source is ${got} bytes, expected ${size} (file changed during the build)`);
}

/** Make every object written so far durable: one syncfs on the store's file system. */
export function syncStore(root: string): void {
  let fd = -1;
  try {
    fd = openSync(root, constants.O_RDONLY | constants.O_DIRECTORY);
    syncfs(fd, root);
  } catch (err) {
    throw new StoreError(`cannot sync object store ${root}: ${reason(err)}`, (err as NodeJS.ErrnoException).code);
  } finally {
    if (fd >= 0) closeSync(fd);
  }
}
