/**
 * The content-addressed object store: `XX/YYYY…` named by fs-verity digest,
 * the layout the reference's `mkcomposefs --digest-store` writes and
 * `mount -t composefs -o basedir=` reads. The one module that knows that
 * layout and the one way an object is published, for the scan
 * (`mkcomposefs --digest-store`) and the pull (`cfs pull`) alike.
 *
 * An object appears complete or not at all: its data goes into an unnamed
 * O_TMPFILE (or, where unsupported, a dot-named temporary in the same
 * directory) that is linked into place only when full. Linking never
 * replaces, so two builders racing on the same object both succeed and one
 * copy wins. There is no fsync per object: the caller runs one `syncfs` on
 * the store once every object is in (see `syncStore`), before the image that
 * refers to them is written. Why O_TMPFILE + link rather than a dot-named
 * file renamed into place, or the final name written directly: all three
 * cost the same here (see the README, "Creating an object file"), and an
 * unnamed file leaves no debris when the process dies.
 *
 * Every directory is reached beneath the store's directory fd, never through
 * a link (object-dirs.ts): an `XX` planted as a link fails the write.
 *
 * Data moves by reflink (FICLONE) when the file systems allow, else
 * copy_file_range, else read/write.
 *
 * What a store trusts: an object that exists under a name, of the right
 * size, is taken to hold the content that name spells (as the reference and
 * git do); it is not re-read unless asked (`existing: 'content'`). So
 * nothing is given a name here before its own bytes have been hashed: a copy
 * is hashed after it is written, while it is still an unnamed file only this
 * process holds, and linked only if that digest is the one it is to be named
 * after; contents from a stream are hashed from the very bytes written. A
 * source rewritten while it was copied thus never leaves an object whose
 * content is not its name, whichever way the data moved (a reflink or
 * copy_file_range copies whatever the source holds at that moment, not what
 * was hashed). `cfs fsck --basedir --repair` finds and removes objects that
 * got wrong some other way.
 */
import { closeSync, constants, fchmodSync, mkdirSync, openSync, readSync, writeSync } from 'node:fs';
import { threadId } from 'node:worker_threads';
import { join } from 'node:path';
import { ComposefsError, IoError, reasonOf, type ComposefsErrorOptions } from '../errors.js';
import { copyFileRange, enableVerity, ficlone, syncfs } from '../sys/fs.js';
import { linkAt, linkFdAt, O_NONBLOCK, openAt, openTmpfileAt, renameAt, S_IFMT, S_IFREG, statAt, unlinkAt, type AtStat } from '../sys/dirfd.js';
import { closeObjectDirs, makeObjectDirs, objectDir, type ObjectDirs } from './object-dirs.js';
import { objectPlaceOf } from './layout.js';
import { digestToHex, FsVerityHasher, fsverityDigestOfFileSync, VERITY_ALGORITHM_IDS, type VerityAlgorithm } from '../fsverity/index.js';

/**
 * Regular files of at most this many bytes are not stored: their contents go
 * inline into the image (the reference's LCFS_BUILD_INLINE_FILE_SIZE_LIMIT).
 */
export const INLINE_LIMIT = 64;

/** Per-thread memory of what the file systems refused, so we stop asking. */
const support = { reflink: true, copyRange: true, tmpfile: true };

let copyBuf: Buffer | null = null;

/** An object being written: unnamed (O_TMPFILE) or, where unsupported, under a dot name (`name` in `dir`). */
export interface TempFile {
  fd: number;
  dir: number;
  name: string | null;
}

/** An object's place: its XX/ directory's fd, its name there, and its path (for messages). */
interface Place {
  dir: number;
  name: string;
  path: string;
  /** The digest it is named after, hex. */
  hex: string;
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

export { digestToObjectPath } from './layout.js';

/** What publishing an object did. */
export interface Published {
  /** The object's fs-verity digest (its name). */
  digest: Buffer;
  /** Bytes written: 0 when the object was there already (or another writer linked it first). */
  written: number;
  /**
   * Whether fs-verity is on for the object this call wrote; false when nothing
   * was written, or the file system cannot (reported, never an error: the
   * digest in the image is what a verified mount checks).
   */
  verity: boolean;
}

export interface ObjectStoreOptions {
  /**
   * The rule for a name that exists already: `size` (default) trusts an
   * object of the right size, as the reference and git do; `content` also
   * hashes it and replaces it when its bytes are not what its name spells
   * (what a repair wants, at the cost of reading every object met).
   */
  existing?: 'size' | 'content';
  /** The fs-verity algorithm objects are named by (default sha256). */
  algorithm?: VerityAlgorithm;
}

/**
 * An object being written before it has a name: an unnamed O_TMPFILE in the
 * store (or, where unsupported, a dot-named file), its bytes hashed as they
 * are written; `commit()` names it after that digest. For contents that
 * arrive in pieces (a large file in a tar stream).
 */
export class ObjectDraft {
  private readonly hasher: FsVerityHasher;
  private received = 0;
  private tmp: TempFile | null;

  /** @internal */
  constructor(
    private readonly store: ObjectStore,
    tmp: TempFile,
    private readonly what: string,
  ) {
    this.tmp = tmp;
    this.hasher = new FsVerityHasher({ algorithm: store.algorithm });
  }

  write(chunk: Uint8Array): void {
    const tmp = this.tmp;
    if (!tmp) throw new StoreError(`cannot write object ${this.what}: already committed or aborted`);
    this.hasher.update(chunk);
    try {
      writeAll(tmp.fd, chunk, this.received);
    } catch (err) {
      this.abort();
      throw storeError(err, `cannot write object ${this.what}`);
    }
    this.received += chunk.length;
  }

  /** Name the object after the digest of the bytes written. */
  commit(): Published {
    const tmp = this.tmp;
    if (!tmp) throw new StoreError(`cannot write object ${this.what}: already committed or aborted`);
    this.tmp = null;
    const digest = this.hasher.digest();
    try {
      return this.store.installDraft(tmp, digest, this.received);
    } finally {
      this.store.discard(tmp);
    }
  }

  /** Drop what was written (nothing is named). */
  abort(): void {
    if (this.tmp) this.store.discard(this.tmp);
    this.tmp = null;
  }
}

/**
 * The one place that knows the `XX/YYYY…` layout and publishes objects into
 * it, for the scan (`mkcomposefs --digest-store`: copies of files) and the
 * pull (contents out of tar streams) alike. One way to publish: a temporary
 * file of ours (see `openTemp`) holding the bytes, hashed from the bytes
 * written, fs-verity enabled where the file system has it, then linked under
 * its digest, never replacing what another writer linked first. One rule
 * for a name that exists: of the right size it is trusted (or, with
 * `existing: 'content'`, hashed), else it is crash debris or worse and is
 * replaced.
 */
export class ObjectStore {
  private dirsOwned: ObjectDirs | null = null;
  private readonly hasher: FsVerityHasher;
  private readonly verifyExisting: boolean;
  /** The fs-verity algorithm objects are named by. */
  readonly algorithm: VerityAlgorithm;
  /** Per store: whether to try fs-verity (false once its file system refused it). */
  private verityAvailable = true;
  /**
   * Whether to look for a name before writing: only while the objects met
   * were there already. In an empty store the lookups only cost: linking
   * never replaces, and a name found taken at that point is checked then.
   */
  private look = true;

  /**
   * `dirs`: the store's directory fds, shared with the thread that made them
   * (see `shared()`); without, the store opens its own on first use.
   */
  constructor(
    readonly root: string,
    private dirsGiven: ObjectDirs | null = null,
    options: ObjectStoreOptions = {},
  ) {
    this.verifyExisting = options.existing === 'content';
    this.algorithm = options.algorithm ?? 'sha256';
    this.hasher = new FsVerityHasher({ algorithm: this.algorithm });
  }

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
    if (digest.length !== this.hasher.digestSize) throw new StoreError(`cannot write object: a digest of ${digest.length} bytes in a store of ${this.algorithm} objects`);
    const hex = digestToHex(digest);
    const { dir, name } = objectPlaceOf(hex);
    const path = join(this.root, dir, name);
    try {
      return { dir: objectDir(this.dirs, hex), name, path, hex };
    } catch (err) {
      // Its own message (a link where XX/ should be, a directory that cannot be made).
      if (err instanceof IoError) throw new StoreError(err.message, err.errno, { cause: err });
      throw storeError(err, `cannot write object ${path}`);
    }
  }

  /**
   * Publish `content` (already in memory): hashed here, written and linked
   * under its digest unless an object of that name may stay.
   */
  putBytes(content: Uint8Array): Published {
    const digest = this.hasher.reset().update(content).digest();
    const dest = this.place(digest);
    let replace = false;
    if (this.look) {
      const need = this.needs(dest, content.length);
      if (need === null) return { digest, written: 0, verity: false };
      replace = need;
    }
    const tmp = this.tempFor(dest);
    try {
      writeAll(tmp.fd, content, 0);
      return this.publish(tmp, digest, dest, content.length, replace);
    } catch (err) {
      if (err instanceof StoreError) throw err;
      throw storeError(err, `cannot write object ${dest.path}`);
    } finally {
      this.discard(tmp);
    }
  }

  /** A draft for contents that arrive in pieces; `what` names it in messages until it has a name. */
  draft(what: string): ObjectDraft {
    const named = `${what} into ${this.root}`;
    let tmp: TempFile;
    try {
      tmp = this.openTemp(this.dirs.root);
    } catch (err) {
      throw storeError(err, `cannot write object ${named}`);
    }
    return new ObjectDraft(this, tmp, named);
  }

  /** @internal A draft's end: its bytes, `size` of them hashed to `digest`, named. */
  installDraft(tmp: TempFile, digest: Buffer, size: number): Published {
    const dest = this.place(digest);
    try {
      const need = this.needs(dest, size);
      if (need === null) return { digest, written: 0, verity: false };
      return this.publish(tmp, digest, dest, size, need);
    } catch (err) {
      if (err instanceof StoreError) throw err;
      throw storeError(err, `cannot write object ${dest.path}`);
    }
  }

  /**
   * Make sure the object for `digest` exists, copying it from `srcFd`
   * (`size` bytes) if not. Null when the copy's own digest is not `digest`:
   * the source changed since it was hashed, and nothing was linked.
   */
  ensure(digest: Buffer, srcFd: number, size: number): Published | null {
    const dest = this.place(digest);
    const replace = this.needs(dest, size);
    if (replace === null) return { digest, written: 0, verity: false };
    const tmp = this.tempFor(dest);
    try {
      copyData(srcFd, tmp.fd, size);
      // The bytes about to be named, hashed from the copy itself.
      const copied = fsverityDigestOfFileSync(tmp.fd, { position: 0, algorithm: this.algorithm });
      if (copied.size !== size || !copied.digest.equals(digest)) return null;
      return this.publish(tmp, digest, dest, size, replace);
    } catch (err) {
      if (err instanceof StoreError) throw err;
      throw storeError(err, `cannot write object ${dest.path}`);
    } finally {
      this.discard(tmp);
    }
  }

  /**
   * Copy `srcFd` (`size` bytes) into the store first and name the copy after
   * its own digest: one digest, of the copy, instead of one of the source and
   * one of the copy. Wasted work when the object was there already (the copy
   * is dropped), so the scan takes this path only while objects keep
   * turning out new. Null when the copy is not `size` bytes (the source
   * changed). `source` names the file in messages; `onChunk` sees the bytes
   * hashed.
   */
  addCopy(srcFd: number, size: number, source: string, onChunk?: (chunk: Buffer) => void): Published | null {
    let tmp: TempFile;
    try {
      tmp = this.openTemp(this.dirs.root);
    } catch (err) {
      throw storeError(err, `cannot copy ${source} into object store ${this.root}`);
    }
    let dest: Place | null = null;
    try {
      copyData(srcFd, tmp.fd, size);
      const copied = fsverityDigestOfFileSync(tmp.fd, { position: 0, onChunk, algorithm: this.algorithm });
      if (copied.size !== size) return null;
      dest = this.place(copied.digest);
      const replace = this.needs(dest, size);
      if (replace === null) return { digest: copied.digest, written: 0, verity: false };
      return this.publish(tmp, copied.digest, dest, size, replace);
    } catch (err) {
      if (err instanceof StoreError) throw err;
      throw storeError(err, dest ? `cannot write object ${dest.path}` : `cannot copy ${source} into object store ${this.root}`);
    } finally {
      this.discard(tmp);
    }
  }

  /**
   * The rule for a name that may exist: null when `dest` holds an object
   * that may stay (of `size` bytes; with `existing: 'content'`, also of the
   * content its name spells), else whether something is there to replace.
   */
  private needs(dest: Place, size: number): boolean | null {
    let st: AtStat | null;
    try {
      st = statAt(dest.dir, dest.name, dest.path);
    } catch (err) {
      throw storeError(err, `cannot access object ${dest.path}`);
    }
    if (st === null) return false;
    // Wrong size (the debris of a crash before the store was synced), or not a file at all: replace it.
    if ((st.mode & S_IFMT) !== S_IFREG || st.size !== size) return true;
    if (!this.verifyExisting) return null;
    let fd: number;
    try {
      fd = openAt(dest.dir, dest.name, constants.O_RDONLY | O_NONBLOCK, 0, dest.path);
    } catch (err) {
      throw storeError(err, `cannot read object ${dest.path}`);
    }
    try {
      const found = fsverityDigestOfFileSync(fd, { position: 0, algorithm: this.algorithm });
      return found.size === size && digestToHex(found.digest) === dest.hex ? null : true;
    } catch (err) {
      throw storeError(err, `cannot read object ${dest.path}`);
    } finally {
      closeSync(fd);
    }
  }

  /** A temporary file in `dest`'s directory. */
  private tempFor(dest: Place): TempFile {
    try {
      return this.openTemp(dest.dir);
    } catch (err) {
      throw storeError(err, `cannot write object ${dest.path}`);
    }
  }

  /**
   * Give the full, hashed temporary file its name `dest`: readable by all,
   * fs-verity enabled where the file system can, then linked, never
   * replacing: a name another writer took meanwhile is put to the same rule
   * as one found before (kept when it may stay, else replaced).
   */
  private publish(tmp: TempFile, digest: Buffer, dest: Place, size: number, replace: boolean): Published {
    fchmodSync(tmp.fd, 0o644);
    const verity = this.enableVerity(tmp);
    if (!replace && this.link(tmp, dest)) {
      this.look = false;
      return { digest, written: size, verity };
    }
    this.look = true;
    if (!replace) {
      const need = this.needs(dest, size);
      if (need === null) return { digest, written: 0, verity: false };
    }
    this.replaceWith(tmp, dest);
    return { digest, written: size, verity };
  }

  /** fs-verity on the temporary file; false when the file system cannot (remembered) or refused this file. */
  private enableVerity(tmp: TempFile): boolean {
    if (!this.verityAvailable) return false;
    // fs-verity needs the file closed for writing: reopen read-only, then enable.
    const ro = tmp.name !== null ? openAt(tmp.dir, tmp.name, constants.O_RDONLY) : openSync(`/proc/self/fd/${tmp.fd}`, constants.O_RDONLY);
    closeSync(tmp.fd);
    tmp.fd = ro;
    const e = enableVerity(tmp.fd, { hashAlgorithm: VERITY_ALGORITHM_IDS[this.algorithm] });
    if (e === 0) return true;
    if (e === 95 /* EOPNOTSUPP */ || e === 25 /* ENOTTY */ || e === 22 /* EINVAL */ || e === 1 /* EPERM */) this.verityAvailable = false;
    return false;
  }

  /** Link the temporary file as `dest`; false when that name is taken. */
  private link(tmp: TempFile, dest: Place): boolean {
    try {
      if (tmp.name !== null) linkAt(tmp.dir, tmp.name, dest.dir, dest.name, dest.path);
      else linkFdAt(tmp.fd, dest.dir, dest.name, dest.path);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw err;
    }
  }

  /** Put the temporary file in place of whatever is at `dest` (one rename: never a moment without an object). */
  private replaceWith(tmp: TempFile, dest: Place): void {
    if (tmp.name !== null) {
      renameAt(tmp.dir, tmp.name, dest.dir, dest.name, false, dest.path);
      tmp.name = null;
      return;
    }
    const side = `.tmp.${process.pid}.${threadId}.${tmpCounter++}`;
    linkFdAt(tmp.fd, dest.dir, side, dest.path);
    try {
      renameAt(dest.dir, side, dest.dir, dest.name, false, dest.path);
    } catch (err) {
      try {
        unlinkAt(dest.dir, side);
      } catch {
        /* gone already */
      }
      throw err;
    }
  }

  /** @internal Close the temporary file and remove its name, if it has one: what was linked lives on under its object name. */
  discard(tmp: TempFile): void {
    if (tmp.fd >= 0) closeSync(tmp.fd);
    tmp.fd = -1;
    if (tmp.name !== null) {
      try {
        unlinkAt(tmp.dir, tmp.name);
      } catch {
        /* already gone */
      }
      tmp.name = null;
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
    const name = `.tmp.${process.pid}.${threadId}.${tmpCounter++}`;
    return { fd: openAt(dir, name, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL, 0o644), dir, name };
  }
}

/** Write all of `data` at `position` (a short write is how a full disk first shows: writing on gets the reason). */
function writeAll(fd: number, data: Uint8Array, position: number): void {
  for (let off = 0; off < data.length; ) off += writeSync(fd, data, off, data.length - off, position + off);
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

/** Make every object written so far durable: one syncfs on the file system of the store open as `fd` (`root` names it). */
export function syncStoreFd(fd: number, root: string): void {
  try {
    syncfs(fd, root);
  } catch (err) {
    throw storeError(err, `cannot sync object store ${root}`);
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
