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
 *
 * What a store trusts: an object that exists under a name is taken to hold
 * the content that name spells (as the reference and git do); it is never
 * re-read. So nothing is given a name here before its own bytes have been
 * hashed: the copy is hashed after it is written, while it is still an
 * unnamed file only this process holds, and linked only if that digest is
 * the one it is to be named after. A source rewritten while it was copied
 * thus never leaves an object whose content is not its name, whichever way
 * the data moved (a reflink or copy_file_range copies whatever the source
 * holds at that moment, not what was hashed). `cfs fsck --basedir --repair`
 * finds and removes objects that got wrong some other way.
 */
import { closeSync, constants, fchmodSync, lstatSync, mkdirSync, openSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { ComposefsError, IoError, reasonOf, type ComposefsErrorOptions } from '../errors.js';
import { copyFileRange, enableVerity, ficlone, syncfs } from '../sys/fs.js';
import { linkAt, linkFdAt, openAt, openTmpfileAt, renameAt, S_IFMT, S_IFREG, statAt, unlinkAt, type AtStat } from '../sys/dirfd.js';
import { closeObjectDirs, makeObjectDirs, objectDir, type ObjectDirs } from './object-dirs.js';
import { digestToHex, fsverityDigestOfFileSync } from '../fsverity/index.js';


/** Per-thread memory of what the file systems refused, so we stop asking. */
const support = { reflink: true, copyRange: true, tmpfile: true, verity: true };

let copyBuf: Buffer | null = null;

/** An object being written: unnamed (O_TMPFILE) or, where unsupported, under a dot name (`name` in `dir`). */
interface TempFile {
  fd: number;
  dir: number;
  name: string | null;
}

/** An object's place: its XX/ directory's fd, its name there, and its path (for messages). */
interface Place {
  dir: number;
  name: string;
  path: string;
}
let tmpCounter = 0;

/** The store itself failed (cannot create, write, sync): `errno` the symbolic code when a system call failed. */
export class StoreError extends ComposefsError {
  readonly errno: string | undefined;
  constructor(message: string, errno?: string, options?: ComposefsErrorOptions) {
    super(message, 'store', options);
    this.errno = errno;
  }
}

/** "what: reason" as a StoreError, the system error kept as the cause. */
function storeError(err: unknown, what: string): StoreError {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  return new StoreError(`${what}: ${reasonOf(err)}`, typeof code === 'string' ? code : undefined, { cause: err });
}

/** Object path relative to the store: `ab/cdef…`. */
export function objectRelPath(digest: Uint8Array): string {
  const hex = digestToHex(digest);
  return `${hex.slice(0, 2)}/${hex.slice(2)}`;
}

/** Whether something is at `path` (not following a symlink); other errors than ENOENT are thrown as they are. */
export function objectExists(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

export class ObjectStore {
  private dirsOwned: ObjectDirs | null = null;

  /**
   * `dirs`: the store's directory fds, shared with the thread that made them
   * (see `shared()`); without, the store opens its own on first use.
   */
  constructor(
    readonly root: string,
    private dirsGiven: ObjectDirs | null = null,
  ) {}

  /** The store's directory and its XX/ directories as fds, opened once and never through a link below the root. */
  private get dirs(): ObjectDirs {
    if (this.dirsGiven) return this.dirsGiven;
    if (!this.dirsOwned) {
      let fd: number;
      try {
        fd = openSync(this.root, constants.O_RDONLY | constants.O_DIRECTORY);
      } catch (err) {
        throw storeError(err, `cannot open object store ${this.root}`);
      }
      this.dirsOwned = makeObjectDirs(fd, this.root);
    }
    return this.dirsOwned;
  }

  /** What other threads pass to `new ObjectStore(root, dirs)` to share this store's directory fds. */
  shared(): ObjectDirs {
    return this.dirs;
  }

  /** Close the directory fds this store opened (once no thread uses them). */
  close(): void {
    if (!this.dirsOwned) return;
    closeObjectDirs(this.dirsOwned);
    closeSync(this.dirsOwned.root);
    this.dirsOwned = null;
  }

  /**
   * Create the store directory if needed and check that we can write into
   * it, so a read-only or missing store fails before any work is done.
   */
  prepare(): void {
    try {
      mkdirSync(this.root, { recursive: true, mode: 0o755 });
    } catch (err) {
      throw storeError(err, `cannot create object store ${this.root}`);
    }
    try {
      const tmp = this.openTemp(this.dirs.root);
      this.discard(tmp);
    } catch (err) {
      throw storeError(err, `cannot write to object store ${this.root}`);
    }
  }

  /** Where the object `digest` goes: its XX/ directory (created when missing) and its name there. */
  private place(digest: Uint8Array): Place {
    const hex = digestToHex(digest);
    const path = join(this.root, hex.slice(0, 2), hex.slice(2));
    try {
      return { dir: objectDir(this.dirs, hex), name: hex.slice(2), path };
    } catch (err) {
      // Its own message (a link where XX/ should be, a directory that cannot be made).
      if (err instanceof IoError) throw new StoreError(err.message, err.errno, { cause: err });
      throw storeError(err, `cannot write object ${path}`);
    }
  }

  /**
   * Make sure the object for `digest` exists, copying it from `srcFd`
   * (`size` bytes) if not. Returns the bytes written (0 when the object was
   * already there, or another writer linked it first), or null when the
   * copy's own digest is not `digest`: the source changed since it was
   * hashed, and nothing was linked.
   */
  ensure(digest: Uint8Array, srcFd: number, size: number): number | null {
    const dest = this.place(digest);
    const replace = this.needs(dest, size);
    if (replace === null) return 0;
    const tmp = this.tempFor(dest);
    try {
      copyData(srcFd, tmp.fd, size);
      // The bytes about to be named, hashed from the copy itself.
      const copied = fsverityDigestOfFileSync(tmp.fd, { position: 0 });
      if (copied.size !== size || !copied.digest.equals(digest)) return null;
      return this.install(tmp, dest, replace) ? size : 0;
    } catch (err) {
      throw storeError(err, `cannot write object ${dest.path}`);
    } finally {
      this.discard(tmp);
    }
  }

  /**
   * Copy `srcFd` (`size` bytes) into the store first and name the copy after
   * its own digest: one digest, of the copy, instead of one of the source and
   * one of the copy. Wasted work when the object was there already (the copy
   * is dropped), so the worker takes this path only while objects keep
   * turning out new. Returns the digest and the bytes written (0 when the
   * object was there), or null when the copy is not `size` bytes (the source
   * changed). `source` names the file in messages; `onChunk` sees the bytes
   * hashed.
   */
  addCopy(srcFd: number, size: number, source: string, onChunk?: (chunk: Buffer) => void): { digest: Buffer; written: number } | null {
    const tmp = this.tempFor(null, source);
    let dest: Place | null = null;
    try {
      copyData(srcFd, tmp.fd, size);
      const copied = fsverityDigestOfFileSync(tmp.fd, { position: 0, onChunk });
      if (copied.size !== size) return null;
      dest = this.place(copied.digest);
      const replace = this.needs(dest, size);
      if (replace === null) return { digest: copied.digest, written: 0 };
      return { digest: copied.digest, written: this.install(tmp, dest, replace) ? size : 0 };
    } catch (err) {
      if (err instanceof StoreError) throw err;
      throw storeError(err, dest ? `cannot write object ${dest.path}` : `cannot copy ${source} into object store ${this.root}`);
    } finally {
      this.discard(tmp);
    }
  }

  /** Null when `dest` holds an object of `size` bytes already, else whether one is there to replace. */
  private needs(dest: Place, size: number): boolean | null {
    let st: AtStat | null;
    try {
      st = statAt(dest.dir, dest.name, dest.path);
    } catch (err) {
      throw storeError(err, `cannot access object ${dest.path}`);
    }
    if (st === null) return false;
    if ((st.mode & S_IFMT) === S_IFREG && st.size === size) return null;
    // Wrong size (the debris of a crash before the store was synced), or not a file at all: replace it.
    return true;
  }

  /** A temporary file for `dest` (in its directory), or, before the name is known, in the store's root. */
  private tempFor(dest: Place | null, source?: string): TempFile {
    try {
      return this.openTemp(dest ? dest.dir : this.dirs.root);
    } catch (err) {
      throw storeError(err, dest ? `cannot write object ${dest.path}` : `cannot copy ${source} into object store ${this.root}`);
    }
  }

  /**
   * Give the full, checked temporary file its name `dest`: readable by all,
   * fs-verity enabled where the file system can, then linked (never
   * replacing: false if another builder linked the same object first) or,
   * over crash debris, renamed.
   */
  private install(tmp: TempFile, dest: Place, replace: boolean): boolean {
    fchmodSync(tmp.fd, 0o644);
    if (support.verity) {
      // fs-verity needs the file closed for writing: reopen read-only, then enable.
      const ro = tmp.name !== null ? openAt(tmp.dir, tmp.name, constants.O_RDONLY) : openSync(`/proc/self/fd/${tmp.fd}`, constants.O_RDONLY);
      closeSync(tmp.fd);
      tmp.fd = ro;
      const e = enableVerity(tmp.fd);
      if (e === 95 /* EOPNOTSUPP */ || e === 25 /* ENOTTY */ || e === 22 /* EINVAL */ || e === 1 /* EPERM */) support.verity = false;
    }
    try {
      if (tmp.name !== null) {
        if (replace) {
          renameAt(tmp.dir, tmp.name, dest.dir, dest.name, false, dest.path);
          tmp.name = null;
        } else linkAt(tmp.dir, tmp.name, dest.dir, dest.name, dest.path);
      } else if (replace) {
        const side = `${dest.name}.tmp.${process.pid}.${tmpCounter++}`;
        linkFdAt(tmp.fd, dest.dir, side, dest.path);
        renameAt(dest.dir, side, dest.dir, dest.name, false, dest.path);
      } else {
        linkFdAt(tmp.fd, dest.dir, dest.name, dest.path);
      }
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw err;
    }
  }

  /** Close the temporary file and remove its name, if it has one: what was linked lives on under its object name. */
  private discard(tmp: TempFile): void {
    closeSync(tmp.fd);
    if (tmp.name !== null) {
      try {
        unlinkAt(tmp.dir, tmp.name);
      } catch {
        /* already gone */
      }
    }
  }

  /** An unnamed file in the directory `dir`, or a dot-named one when O_TMPFILE is unsupported. */
  private openTemp(dir: number): TempFile {
    if (support.tmpfile) {
      try {
        return { fd: openTmpfileAt(dir, 0o644), dir, name: null };
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'EOPNOTSUPP' && code !== 'EISDIR' && code !== 'EINVAL') throw err;
        support.tmpfile = false;
      }
    }
    const name = `.tmp.${process.pid}.${process.hrtime.bigint()}.${tmpCounter++}`;
    return { fd: openAt(dir, name, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL, 0o644), dir, name };
  }
}

/**
 * Copy `size` bytes of `src` into the empty file `dst`: reflink, copy_file_range,
 * or read/write. A source that changed size meanwhile gives a copy of
 * another size, which the caller's digest of the copy catches.
 */
function copyData(src: number, dst: number, size: number): void {
  if (size === 0) return;
  if (support.reflink) {
    try {
      ficlone(dst, src);
      return;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
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
}

/** Make every object written so far durable: one syncfs on the store's file system. */
export function syncStore(root: string): void {
  let fd = -1;
  try {
    fd = openSync(root, constants.O_RDONLY | constants.O_DIRECTORY);
    syncfs(fd, root);
  } catch (err) {
    throw storeError(err, `cannot sync object store ${root}`);
  } finally {
    if (fd >= 0) closeSync(fd);
  }
}
