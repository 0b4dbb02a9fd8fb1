/**
 * A composefs repository: an object store, images by fs-verity digest, the
 * entries of every imported layer, OCI manifests and configs, and names
 * (see layout.ts for the directories).
 *
 * Order of writes, so that a process killed at any moment leaves no name
 * to anything partial: objects → one syncfs → layer records; image file →
 * syncfs → rename into images/ → name record (fsync'ed, renamed, directory
 * fsync'ed). Whatever a killed pull left (temporary files, objects no name
 * reaches) is removed by the next gc.
 *
 * Locks: every pull holds the repository's lock shared for its whole run; gc
 * holds it exclusively. So pulls run side by side (all their writes are
 * atomic and idempotent) and a gc never sees a pull's unnamed work.
 */
import { closeSync, constants, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, readSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { ComposefsError, IoError, ioError, type ComposefsErrorOptions } from '../errors.js';
import { tryFlock } from '../sys/flock.js';
import { enableVerity, syncfs } from '../sys/fs.js';
import { listFd, mkdirAt, O_NONBLOCK, openAt, openDirAt, renameAt, S_IFDIR, S_IFMT, S_IFREG, statAt, statFd, typeName, unlinkAt, type AtStat } from '../sys/dirfd.js';
import { decodeName, defaultRepoPath, encodeName, SUBDIRS, syncDirFd, tmpName, writeAllSync, writeFileAt, type Subdir } from './layout.js';
import type { LayerEntry } from '../oci/layer.js';
import type { NameSeal } from '../oci/seals.js';
import type { ImageForm } from './form.js';
import { decodeLayerRecord, encodeLayerRecord } from './layer-record.js';
import { printable } from '../printable.js';
import { algorithmName, decodeMeta, encodeMeta, META_FILE, META_MAX_BYTES, newMeta, type RepoMeta } from './meta.js';
import { digestHexPattern, VERITY_ALGORITHM_IDS, type VerityAlgorithm } from '../fsverity/index.js';
import type { PolicyVerdict } from '../oci/policy-check.js';

/**
 * fs-verity on a stored image: enabled (with the builtin signature asked
 * for), failed with an errno (EOPNOTSUPP/ENOTTY: the file system has none;
 * ENOKEY/EKEYREJECTED: the kernel's .fs-verity keyring does not take the
 * signature), not asked, or the image was already there.
 */
export type ImageVerity = { state: 'enabled' | 'not-asked' | 'existing' } | { state: 'failed'; errno: number };

export class RepoError extends ComposefsError {
  constructor(message: string, options?: ComposefsErrorOptions) {
    super(message, 'repo', options);
  }
}

/** What a name points at. */
export interface NameRecord {
  name: string;
  /** fs-verity digest (hex) of the composefs image. */
  image: string;
  /** `sha256:…` of the OCI manifest and config (in blobs/). */
  manifest: string;
  config: string;
  /** The layers' diff_ids, base first (records in layers/). */
  layers: string[];
  /** Where it came from (`docker://…`, `oci:…`). */
  source: string;
  /** The image config's `created`, if any. */
  created: string | null;
  /** When it was pulled. */
  pulled: string;
  /** Bytes of regular file contents in the image (each inode once). */
  size: number;
  platform?: string;
  /** The seal the image was checked against at the pull (absent: not sealed). */
  seal?: NameSeal;
  /**
   * Which image the name holds (src/repo/build.ts): 'canonical', the
   * composefs-rs canonical form a seal digests, or 'unpacked', the rootfs
   * `umoci raw unpack` writes. Records written before forms existed hold
   * unpacked images and have no field: read them with recordForm().
   */
  form?: ImageForm;
  /** Canonical form: whether `user.*` xattrs were kept. */
  keepUserXattrs?: boolean;
  /** Unpacked form chosen by 'auto': why the image has no canonical form. */
  formReason?: string;
  /** The policy the image was accepted by, when one was applied (src/oci/policy-check.ts). */
  policy?: PolicyVerdict;
}

/** The form a record's image is in: records without one predate forms, and hold unpacked images. */
export function recordForm(record: NameRecord): ImageForm {
  return record.form === 'canonical' ? 'canonical' : 'unpacked';
}

export interface OpenOptions {
  /** Create the directories if missing (default true). */
  create?: boolean;
  /**
   * The fs-verity algorithm the caller asks for: the one a new (empty)
   * repository gets at its first write; refused with one line naming both
   * when the repository holds another.
   */
  algorithm?: VerityAlgorithm;
  /**
   * Use the repository even when someone else owns it or others may write it
   * (see trust below). Also given by $CFS_SHARED_REPOS.
   */
  shared?: boolean;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._\-/:@+]*$/;

export function checkName(name: string): void {
  if (name.length === 0 || name.length > 512 || !NAME_RE.test(name) || name.split('/').some((p) => p === '..' || p === '.')) {
    throw new RepoError(`invalid image name '${name}' (letters, digits and . _ - / : @ +)`);
  }
}

/**
 * Whose repository may be used, as git's safe.directory: one owned by the
 * caller or root and writable by nobody else, unless the user says it is
 * shared (`--shared`, or $CFS_SHARED_REPOS: a colon-separated list of
 * repository paths, `*` for any). Whatever the trust, nothing inside is
 * ever reached through a symbolic link.
 */
export function isSharedByEnv(path: string): boolean {
  const list = process.env.CFS_SHARED_REPOS;
  if (!list) return false;
  let real = path;
  try {
    real = realpathSync(path);
  } catch {
    /* compared as given */
  }
  return list.split(':').some((e) => e === '*' || (e !== '' && (e === path || e === real || safeRealpath(e) === real)));
}

function safeRealpath(p: string): string | null {
  try {
    return realpathSync(p);
  } catch {
    return null;
  }
}

function userName(uid: number): string {
  try {
    for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const f = line.split(':');
      if (f.length > 2 && Number(f[2]) === uid && /^[A-Za-z0-9._-]{1,32}$/.test(f[0])) return `uid ${uid} (${f[0]})`;
    }
  } catch {
    /* no names */
  }
  return `uid ${uid}`;
}

/** Refuse (one line: who or what mode, and the way out) a directory of the repository others control. */
function checkTrusted(root: string, what: string, st: AtStat): void {
  const me = process.geteuid?.() ?? 0;
  const way = `if you trust everyone who can write it, pass --shared or set CFS_SHARED_REPOS=${root}`;
  if (st.uid !== me && st.uid !== 0) throw new RepoError(`refusing repository ${root}: ${what} is owned by ${userName(st.uid)}, not by you or root (${way})`);
  if (st.mode & 0o022) {
    const who = (st.mode & 0o022) === 0o022 ? 'group and others' : st.mode & 0o020 ? 'its group' : 'others';
    throw new RepoError(`refusing repository ${root}: ${what} is writable by ${who} (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')}) (${way})`);
  }
}

export class Repository {
  readonly objects: string;
  readonly imagesDir: string;
  readonly layersDir: string;
  readonly blobsDir: string;
  readonly namesDir: string;
  readonly tmpDir: string;
  readonly leasesDir: string;
  /** Owner of the repository's directory: files of anyone else (but root) are foreign to it. */
  readonly owner: number;
  private readonly fds = new Map<string, number>();
  /** The fs-verity algorithm its objects and images are named by (meta.json; SHA-256 without one). */
  get algorithm(): VerityAlgorithm {
    return this.#algorithm;
  }
  #algorithm: VerityAlgorithm = 'sha256';
  /** Its metadata as read, or null when it has no meta.json (yet: the first write adds it). */
  get meta(): RepoMeta | null {
    return this.#meta;
  }
  #meta: RepoMeta | null = null;
  /** The read-only-compatible features this cfs does not know, when there are any: it may read, not write. */
  get readOnlyFeatures(): readonly string[] | null {
    return this.#readOnlyFeatures;
  }
  #readOnlyFeatures: string[] | null = null;
  /** The algorithm the caller asked for (OpenOptions.algorithm), if any. */
  private asked: VerityAlgorithm | undefined;

  private constructor(
    readonly root: string,
    private rootFd: number,
    /** Others may own or write it (the user said so): fsck does not report their files. */
    readonly shared: boolean,
  ) {
    this.objects = join(root, 'objects');
    this.imagesDir = join(root, 'images');
    this.layersDir = join(root, 'layers');
    this.blobsDir = join(root, 'blobs/sha256');
    this.namesDir = join(root, 'names');
    this.tmpDir = join(root, 'tmp');
    this.leasesDir = join(root, 'leases');
    this.owner = statFd(rootFd, root).uid;
  }

  /** Open (by default create) the repository at `path` (default: defaultRepoPath()). */
  static open(path: string = defaultRepoPath(), opts: OpenOptions = {}): Repository {
    const create = opts.create !== false;
    const shared = opts.shared === true || isSharedByEnv(path);
    if (create && !existsSync(path)) {
      try {
        // 0755 less the umask: never writable by group or others (which we would refuse).
        mkdirSync(path, { recursive: true, mode: 0o755 });
      } catch (err) {
        throw ioError(err, `cannot create repository ${path}`);
      }
    }
    let rootFd: number;
    try {
      // The path the user named may go through links; nothing below it will.
      rootFd = openSync(path, constants.O_RDONLY | constants.O_DIRECTORY);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (!create && (code === 'ENOENT' || code === 'ENOTDIR')) throw new RepoError(`${path}: not a composefs repository`);
      throw ioError(err, `cannot open repository ${path}`);
    }
    let repo: Repository;
    try {
      if (!shared) checkTrusted(path, 'its directory', statFd(rootFd, path));
      repo = new Repository(path, rootFd, shared);
    } catch (err) {
      closeSync(rootFd);
      throw err;
    }
    try {
      repo.loadMeta(opts.algorithm);
      if (create && repo.readOnlyFeatures === null) repo.makeLayout();
      else {
        for (const sub of ['names', 'objects']) {
          const st = statAt(rootFd, sub, join(path, sub));
          if (st === null || (st.mode & S_IFMT) !== S_IFDIR) throw new RepoError(`${path}: not a composefs repository`);
        }
      }
      if (!shared) {
        // A directory inside that others can write is as open as the repository itself.
        for (const sub of [...SUBDIRS, 'leases']) {
          // A link where blobs/ should be is for dir() to refuse, or fsck to report: not followed here.
          const blobs = sub === 'blobs/sha256' ? statAt(rootFd, 'blobs', join(path, 'blobs')) : null;
          const parent = sub !== 'blobs/sha256' ? rootFd : blobs && (blobs.mode & S_IFMT) === S_IFDIR ? repo.dir('blobs') : null;
          if (parent === null) continue;
          const st = statAt(parent, sub.split('/').pop()!, join(path, sub));
          if (st !== null && (st.mode & S_IFMT) === S_IFDIR) checkTrusted(path, `${sub}/`, st);
        }
      }
    } catch (err) {
      repo.close();
      throw err;
    }
    return repo;
  }

  /**
   * Read meta.json (see meta.ts) beneath the repository's fd: never through
   * a link, nor from anything but a regular file, at most META_MAX_BYTES.
   * Without one, the repository is SHA-256 once it holds anything; an empty
   * one takes the algorithm asked for at its first write.
   */
  private loadMeta(asked: VerityAlgorithm | undefined): void {
    this.asked = asked;
    const path = join(this.root, META_FILE);
    const bytes = this.readMetaFile();
    if (bytes === null) {
      this.#algorithm = asked ?? 'sha256';
      if (asked !== undefined && asked !== 'sha256' && this.holdsAnything()) {
        throw new RepoError(`repository ${this.root} holds sha256 objects (it has no ${META_FILE}: made before cfs knew sha512), not ${asked} (--algorithm ${asked})`);
      }
      return;
    }
    let decoded: ReturnType<typeof decodeMeta>;
    try {
      decoded = decodeMeta(bytes, path);
    } catch (err) {
      throw new RepoError(`refusing repository ${this.root}: ${(err as Error).message}`);
    }
    this.#meta = decoded.meta;
    this.#algorithm = decoded.meta.algorithm;
    if (decoded.use.access === 'read-only') this.#readOnlyFeatures = decoded.use.unknown;
    if (asked !== undefined && asked !== this.algorithm) {
      throw new RepoError(`repository ${this.root} holds ${this.algorithm} objects (${algorithmName(this.algorithm)} in its ${META_FILE}), not ${asked} (--algorithm ${asked})`);
    }
  }

  /** meta.json's bytes, or null when there is none; anything else there is refused with one line. */
  private readMetaFile(): Buffer | null {
    const path = join(this.root, META_FILE);
    let fd: number;
    try {
      fd = openAt(this.rootFd, META_FILE, constants.O_RDONLY | O_NONBLOCK, 0, path);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return null;
      if (code === 'ELOOP') throw new RepoError(`refusing repository ${this.root}: ${path} is a symbolic link (never followed)`, { cause: err });
      throw ioError(err, `cannot read ${path}`);
    }
    try {
      const st = statFd(fd, path);
      if ((st.mode & S_IFMT) !== S_IFREG) throw new RepoError(`refusing repository ${this.root}: ${path} is ${typeName(st.mode)}, not a regular file`);
      if (st.size > META_MAX_BYTES) throw new RepoError(`refusing repository ${this.root}: ${path} has ${st.size} bytes, more than metadata ever needs (${META_MAX_BYTES})`);
      const buf = Buffer.alloc(META_MAX_BYTES + 1);
      let n = 0;
      for (;;) {
        const k = readSync(fd, buf, n, buf.length - n, n);
        if (k === 0) break;
        n += k;
        if (n > META_MAX_BYTES) throw new RepoError(`refusing repository ${this.root}: ${path} grew past ${META_MAX_BYTES} bytes while read`);
      }
      return buf.subarray(0, n);
    } catch (err) {
      throw err instanceof ComposefsError ? err : ioError(err, `cannot read ${path}`);
    } finally {
      closeSync(fd);
    }
  }

  /** Whether anything was ever stored: a name, image, layer record or object directory. */
  private holdsAnything(): boolean {
    for (const sub of ['names', 'images', 'layers', 'objects'] as const) {
      const st = statAt(this.rootFd, sub, join(this.root, sub));
      if (st === null || (st.mode & S_IFMT) !== S_IFDIR) continue;
      if (this.list(sub).some((f) => !f.startsWith('.'))) return true;
    }
    return false;
  }

  /** Refuse, with one line, to write a repository with read-only-compatible features this cfs does not know. */
  checkWritable(): void {
    if (this.readOnlyFeatures !== null) {
      throw new RepoError(`repository ${this.root} is read-only for this cfs: its ${META_FILE} lists features it does not know (${this.readOnlyFeatures.join(', ')}; read-only-compatible)`);
    }
  }

  /**
   * Before a command's first write: refuse a read-only repository, and give
   * one without meta.json its metadata (the algorithm it now holds). Two
   * creators racing: one file wins (renamed without replacing), the other
   * reads it and is refused if it asked for another algorithm.
   */
  prepareWrite(): void {
    this.checkWritable();
    if (this.meta !== null) return;
    const meta = newMeta(this.algorithm);
    const path = join(this.root, META_FILE);
    const tmp = tmpName('meta');
    let fd = -1;
    try {
      fd = openAt(this.rootFd, tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
      writeAllSync(fd, Buffer.from(encodeMeta(meta)));
      fsyncSync(fd);
      closeSync(fd);
      fd = -1;
      renameAt(this.rootFd, tmp, this.rootFd, META_FILE, true);
    } catch (err) {
      if (fd >= 0) closeSync(fd);
      try {
        unlinkAt(this.rootFd, tmp);
      } catch {
        /* renamed, or never created */
      }
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
        // Another command created it meanwhile: its algorithm holds, unless this caller asked for another.
        this.loadMeta(this.asked);
        this.checkWritable();
        return;
      }
      throw ioError(err, `cannot write ${path}`);
    }
    syncDirFd(this.rootFd, this.root);
    this.#meta = meta;
  }

  /** Create what is missing, one level at a time beneath the repository's fd. */
  private makeLayout(): void {
    for (const sub of SUBDIRS) {
      const parts = sub.split('/');
      const name = parts.pop()!;
      const parent = parts.length === 0 ? this.rootFd : this.dir(parts.join('/') as Subdir);
      try {
        mkdirAt(parent, name, 0o755, join(this.root, sub));
      } catch (err) {
        throw ioError(err, `cannot create repository ${this.root}`);
      }
    }
  }

  /** Close the directory fds (the object is unusable after). */
  close(): void {
    for (const fd of this.fds.values()) closeSync(fd);
    this.fds.clear();
    if (this.rootFd >= 0) closeSync(this.rootFd);
    this.rootFd = -1;
  }

  /** The fd of the repository's own directory. */
  get fd(): number {
    return this.rootFd;
  }

  /**
   * A directory of the repository, opened once, never through a link: a
   * link (or anything else) where it should be is refused with one line.
   * `leases` is created on first use when `create` is given.
   */
  dir(sub: Subdir, create = false): number {
    const have = this.fds.get(sub);
    if (have !== undefined) return have;
    const parts = sub.split('/');
    const name = parts.pop()!;
    const parent = parts.length === 0 ? this.rootFd : this.dir(parts.join('/') as Subdir);
    const path = join(this.root, sub);
    let fd: number;
    try {
      if (create) mkdirAt(parent, name, 0o755, path);
      fd = openDirAt(parent, name, path);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ELOOP' || code === 'ENOTDIR') {
        const st = statAt(parent, name, path);
        throw new RepoError(`${path} is ${st ? typeName(st.mode) : 'gone'}, not a directory: refusing to follow it (cfs fsck --repo lists what is wrong)`, { cause: err });
      }
      if (code === 'ENOENT') throw new RepoError(`${path} is missing: ${this.root} is not a complete composefs repository`, { cause: err });
      throw ioError(err, `cannot open ${path}`);
    }
    this.fds.set(sub, fd);
    return fd;
  }

  /** dir(), or null when it does not exist. */
  dirIfPresent(sub: Subdir): number | null {
    const parts = sub.split('/');
    const name = parts.pop()!;
    const parent = parts.length === 0 ? this.rootFd : this.dirIfPresent(parts.join('/') as Subdir);
    if (parent === null) return null;
    if (!this.fds.has(sub) && statAt(parent, name, join(this.root, sub)) === null) return null;
    return this.dir(sub);
  }

  /**
   * Hold the repository lock (shared for pulls, exclusive for gc) until
   * `release` is called or the process dies. Waits, polling, while another
   * holder conflicts; `onWait` is called once when it has to. A caller who
   * cannot write the repository locks it read-only (flock does not care).
   */
  async lock(exclusive: boolean, onWait?: () => void): Promise<{ release(): void }> {
    const path = join(this.root, 'lock');
    let fd: number;
    try {
      try {
        fd = openAt(this.rootFd, 'lock', constants.O_RDWR | constants.O_CREAT | O_NONBLOCK, 0o644, path);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'EACCES' && code !== 'EROFS') throw err;
        fd = openAt(this.rootFd, 'lock', constants.O_RDONLY | O_NONBLOCK, 0, path);
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ELOOP') throw new RepoError(`${path} is a symbolic link: refusing to follow it (cfs fsck --repo lists what is wrong)`, { cause: err });
      throw ioError(err, `cannot open ${path}`);
    }
    let waited = false;
    try {
      if ((statFd(fd, path).mode & S_IFMT) !== S_IFREG) throw new RepoError(`${path} is ${typeName(statFd(fd, path).mode)}, not a regular file`);
      while (!tryFlock(fd, exclusive, path)) {
        if (!waited) onWait?.();
        waited = true;
        await new Promise((r) => setTimeout(r, 50));
      }
    } catch (err) {
      closeSync(fd);
      throw err instanceof ComposefsError ? err : ioError(err, `cannot lock ${path}`);
    }
    let held = true;
    return {
      release: () => {
        if (held) closeSync(fd);
        held = false;
      },
    };
  }

  /**
   * The bytes of the regular file `name` in `dir`, never through a link nor
   * from a FIFO or device (refused with one line). ENOENT is thrown as it is.
   */
  readFile(dir: Subdir, name: string): Buffer {
    const path = join(this.root, dir, name);
    let fd: number;
    try {
      fd = openAt(this.dir(dir), name, constants.O_RDONLY | O_NONBLOCK, 0, path);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw err;
      if (code === 'ELOOP') throw new RepoError(`${path} is a symbolic link, not a regular file`, { cause: err });
      throw ioError(err, `cannot read ${path}`);
    }
    try {
      const st = statFd(fd, path);
      if ((st.mode & S_IFMT) !== S_IFREG) throw new RepoError(`${path} is ${typeName(st.mode)}, not a regular file`);
      return readFileSync(fd);
    } catch (err) {
      throw err instanceof ComposefsError ? err : ioError(err, `cannot read ${path}`);
    } finally {
      closeSync(fd);
    }
  }

  /** Whether a regular file `name` is in `dir` (a link or anything else there is not one). */
  hasFile(dir: Subdir, name: string): AtStat | null {
    const st = statAt(this.dir(dir), name, join(this.root, dir, name));
    return st !== null && (st.mode & S_IFMT) === S_IFREG ? st : null;
  }

  /** The names in `dir` (none when it does not exist; a link there is refused as dir() refuses it). */
  list(dir: Subdir): string[] {
    const fd = this.dirIfPresent(dir);
    if (fd === null) return [];
    try {
      return listFd(fd);
    } catch (err) {
      throw ioError(err, `cannot read ${join(this.root, dir)}`);
    }
  }

  // --- layers -------------------------------------------------------------

  hasLayer(diffId: string): boolean {
    return this.hasFile('layers', hexOf(diffId)) !== null;
  }

  /** Record a layer's entries; its objects must be durable already (syncStore). */
  writeLayer(diffId: string, entries: LayerEntry[]): void {
    this.checkWritable();
    writeFileAt(this.dir('layers'), this.layersDir, hexOf(diffId), encodeLayerRecord(entries), false);
  }

  /** A layer's entries, from its record in either form (layer-record.ts). */
  readLayer(diffId: string): LayerEntry[] {
    const path = join(this.layersDir, hexOf(diffId));
    let text: string;
    try {
      text = this.readFile('layers', hexOf(diffId)).toString('utf8');
    } catch (err) {
      if (err instanceof ComposefsError) throw err;
      throw ioError(err, `cannot read layer record ${path}`);
    }
    return decodeLayerRecord(text, path, this.algorithm);
  }

  listLayers(): string[] {
    return this.list('layers').filter((f) => /^[0-9a-f]{64}$/.test(f)).map((h) => `sha256:${h}`);
  }

  // --- blobs (manifests, configs) ------------------------------------------

  blobPath(digest: string): string {
    return join(this.blobsDir, hexOf(digest));
  }

  writeBlob(digest: string, data: Buffer): void {
    this.checkWritable();
    const got = `sha256:${createHash('sha256').update(data).digest('hex')}`;
    if (got !== digest) throw new RepoError(`blob ${digest}: its bytes have digest ${got}`);
    if (this.hasFile('blobs/sha256', hexOf(digest))) return;
    writeFileAt(this.dir('blobs/sha256'), this.blobsDir, hexOf(digest), data, false);
  }

  readBlob(digest: string): Buffer {
    try {
      return this.readFile('blobs/sha256', hexOf(digest));
    } catch (err) {
      if (err instanceof ComposefsError) throw err;
      throw ioError(err, `cannot read blob ${digest}`);
    }
  }

  // --- images ---------------------------------------------------------------

  imagePath(hex: string): string {
    return join(this.imagesDir, hex);
  }

  /** Make every object written so far durable: one syncfs on the repository's file system. */
  syncObjects(): void {
    try {
      syncfs(this.dir('objects'), this.objects);
    } catch (err) {
      throw ioError(err, `cannot sync object store ${this.objects}`);
    }
  }

  /**
   * Put an image into images/ under its digest: written to tmp/, everything
   * in the repository's file system synced (objects included), then renamed.
   */
  storeImage(hex: string, image: Buffer, options: { signature?: Buffer } = {}): ImageVerity {
    if (!digestHexPattern(this.algorithm).test(hex)) throw new RepoError(`malformed image digest '${hex}' (a ${this.algorithm} repository)`);
    this.checkWritable();
    this.syncObjects();
    const have = this.hasFile('images', hex);
    if (have && have.size === image.length) return { state: 'existing' };
    let verity: ImageVerity = { state: 'not-asked' };
    const tmpDir = this.dir('tmp');
    const images = this.dir('images');
    const tmp = tmpName('image');
    let fd = -1;
    try {
      fd = openAt(tmpDir, tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
      writeAllSync(fd, image);
      closeSync(fd);
      fd = -1;
      if (options.signature !== undefined) {
        // The merged image's builtin signature, for the kernel to check (fs-verity needs the file closed for writing).
        fd = openAt(tmpDir, tmp, constants.O_RDONLY);
        const e = enableVerity(fd, { hashAlgorithm: VERITY_ALGORITHM_IDS[this.algorithm], signature: options.signature });
        closeSync(fd);
        fd = -1;
        verity = e === 0 ? { state: 'enabled' } : { state: 'failed', errno: e };
      }
      this.syncObjects();
      renameAt(tmpDir, tmp, images, hex);
    } catch (err) {
      if (fd >= 0) closeSync(fd);
      try {
        unlinkAt(tmpDir, tmp);
      } catch {
        /* renamed, or never created */
      }
      throw err instanceof ComposefsError ? err : ioError(err, `cannot write image ${this.imagePath(hex)}`);
    }
    syncDirFd(images, this.imagesDir);
    return verity;
  }

  // --- names ----------------------------------------------------------------

  /** Point `record.name` at its image, atomically and durably. */
  writeName(record: NameRecord): void {
    checkName(record.name);
    this.checkWritable();
    writeFileAt(this.dir('names'), this.namesDir, encodeName(record.name), `${JSON.stringify(record, null, 2)}\n`, true);
  }

  getName(name: string): NameRecord {
    const path = join(this.namesDir, encodeName(name));
    let text: string;
    try {
      text = this.readFile('names', encodeName(name)).toString('utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new RepoError(`no image named '${name}' in ${this.root}`);
      if (err instanceof ComposefsError) throw err;
      throw ioError(err, `cannot read name ${name}`);
    }
    try {
      return JSON.parse(text) as NameRecord;
    } catch {
      throw new RepoError(`name record ${path} is corrupt`);
    }
  }

  /** Every name, sorted; records that cannot be read are skipped here (fsck reports them). */
  images(): NameRecord[] {
    const out: NameRecord[] = [];
    for (const f of this.list('names').sort()) {
      if (f.startsWith('.')) continue;
      try {
        out.push(this.getName(decodeName(f)));
      } catch {
        /* fsck's business */
      }
    }
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /** Give the image named `from` the name `to` as well. */
  tag(from: string, to: string): NameRecord {
    const rec = this.getName(from);
    checkName(to);
    const copy = { ...rec, name: to };
    this.writeName(copy);
    return copy;
  }

  /** Remove a name (the image and its objects go at the next gc, if nothing else names or mounts them). */
  remove(name: string): NameRecord {
    const rec = this.getName(name);
    this.checkWritable();
    const names = this.dir('names');
    try {
      unlinkAt(names, encodeName(name), false, join(this.namesDir, encodeName(name)));
    } catch (err) {
      throw ioError(err, `cannot remove name ${name}`);
    }
    syncDirFd(names, this.namesDir);
    return rec;
  }

  /** The image file, digest and object store of a name: what a mount needs (see also leases.ts, which holds it). */
  resolveMount(name: string): { image: string; digest: string; basedir: string; record: NameRecord } {
    const rec = this.getName(name);
    if (typeof rec.image !== 'string' || !digestHexPattern(this.algorithm).test(rec.image)) throw new RepoError(`name record of '${name}' is corrupt (image '${printable(String(rec.image).slice(0, 140))}' is not a ${this.algorithm} digest)`);
    if (!this.hasFile('images', rec.image)) throw new RepoError(`${this.imagePath(rec.image)} (the image of '${name}') is missing or not a regular file`);
    this.dir('objects');
    // A sealed name mounts only the image its seal names: digest= is the seal's, not whatever the record's image field says.
    const digest = rec.seal ? rec.seal.merged : rec.image;
    if (typeof digest !== 'string' || !digestHexPattern(this.algorithm).test(digest)) throw new RepoError(`name record of '${name}' is corrupt (seal digest '${printable(String(digest).slice(0, 140))}' is not a ${this.algorithm} digest)`);
    return { image: this.imagePath(rec.image), digest, basedir: this.objects, record: rec };
  }
}

export function hexOf(digest: string): string {
  const m = /^sha256:([0-9a-f]{64})$/.exec(digest);
  if (!m) throw new RepoError(`malformed digest '${digest}'`);
  return m[1];
}

export { IoError };
