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
import { closeSync, constants, existsSync, lstatSync, openSync, readFileSync, readdirSync, renameSync, rmSync, statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { ComposefsError, IoError, ioError, type ComposefsErrorOptions } from '../errors.js';
import { tryFlock } from '../sys/flock.js';
import { syncStore } from '../store/objects.js';
import { decodeName, defaultRepoPath, encodeName, makeLayout, syncDir, tmpName, writeFileAtomic } from './layout.js';
import type { LayerEntry } from '../oci/layer.js';

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
}

export interface OpenOptions {
  /** Create the directories if missing (default true). */
  create?: boolean;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._\-/:@+]*$/;

export function checkName(name: string): void {
  if (name.length === 0 || name.length > 512 || !NAME_RE.test(name) || name.split('/').some((p) => p === '..' || p === '.')) {
    throw new RepoError(`invalid image name '${name}' (letters, digits and . _ - / : @ +)`);
  }
}

export class Repository {
  readonly objects: string;
  readonly imagesDir: string;
  readonly layersDir: string;
  readonly blobsDir: string;
  readonly namesDir: string;
  readonly tmpDir: string;

  private constructor(readonly root: string) {
    this.objects = join(root, 'objects');
    this.imagesDir = join(root, 'images');
    this.layersDir = join(root, 'layers');
    this.blobsDir = join(root, 'blobs/sha256');
    this.namesDir = join(root, 'names');
    this.tmpDir = join(root, 'tmp');
  }

  /** Open (by default create) the repository at `path` (default: defaultRepoPath()). */
  static open(path: string = defaultRepoPath(), opts: OpenOptions = {}): Repository {
    const repo = new Repository(path);
    if (opts.create === false) {
      if (!existsSync(join(path, 'names')) || !existsSync(join(path, 'objects'))) throw new RepoError(`${path}: not a composefs repository`);
    } else makeLayout(path);
    return repo;
  }

  /**
   * Hold the repository lock (shared for pulls, exclusive for gc) until
   * `release` is called or the process dies. Waits, polling, while another
   * holder conflicts; `onWait` is called once when it has to.
   */
  async lock(exclusive: boolean, onWait?: () => void): Promise<{ release(): void }> {
    const path = join(this.root, 'lock');
    let fd: number;
    try {
      fd = openSync(path, constants.O_RDWR | constants.O_CREAT, 0o644);
    } catch (err) {
      throw ioError(err, `cannot open ${path}`);
    }
    let waited = false;
    try {
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

  // --- layers -------------------------------------------------------------

  private layerPath(diffId: string): string {
    return join(this.layersDir, hexOf(diffId));
  }

  hasLayer(diffId: string): boolean {
    return existsSync(this.layerPath(diffId));
  }

  /** Record a layer's entries; its objects must be durable already (syncStore). */
  writeLayer(diffId: string, entries: LayerEntry[]): void {
    const lines = entries.map((e) => JSON.stringify(e)).join('\n');
    writeFileAtomic(this.layerPath(diffId), `${lines}\n`, this.layersDir, false);
  }

  readLayer(diffId: string): LayerEntry[] {
    const path = this.layerPath(diffId);
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw ioError(err, `cannot read layer record ${path}`);
    }
    const out: LayerEntry[] = [];
    let start = 0;
    while (start < text.length) {
      let end = text.indexOf('\n', start);
      if (end < 0) end = text.length;
      if (end > start) {
        try {
          out.push(JSON.parse(text.slice(start, end)) as LayerEntry);
        } catch {
          throw new RepoError(`layer record ${path} is corrupt (line ${out.length + 1})`);
        }
      }
      start = end + 1;
    }
    return out;
  }

  listLayers(): string[] {
    return readdirSafe(this.layersDir).filter((f) => /^[0-9a-f]{64}$/.test(f)).map((h) => `sha256:${h}`);
  }

  // --- blobs (manifests, configs) ------------------------------------------

  blobPath(digest: string): string {
    return join(this.blobsDir, hexOf(digest));
  }

  writeBlob(digest: string, data: Buffer): void {
    const got = `sha256:${createHash('sha256').update(data).digest('hex')}`;
    if (got !== digest) throw new RepoError(`blob ${digest}: its bytes have digest ${got}`);
    if (existsSync(this.blobPath(digest))) return;
    writeFileAtomic(this.blobPath(digest), data, this.blobsDir, false);
  }

  readBlob(digest: string): Buffer {
    try {
      return readFileSync(this.blobPath(digest));
    } catch (err) {
      throw ioError(err, `cannot read blob ${digest}`);
    }
  }

  // --- images ---------------------------------------------------------------

  imagePath(hex: string): string {
    return join(this.imagesDir, hex);
  }

  /**
   * Put an image into images/ under its digest: written to tmp/, everything
   * in the repository's file system synced (objects included), then renamed.
   */
  storeImage(hex: string, image: Buffer): void {
    const dest = this.imagePath(hex);
    syncStore(this.objects);
    if (existsSync(dest) && statSync(dest).size === image.length) return;
    const tmp = tmpName(this.tmpDir, 'image');
    writeFileAtomic(tmp, image, this.tmpDir, false);
    syncStore(this.objects);
    try {
      renameSync(tmp, dest);
    } catch (err) {
      throw ioError(err, `cannot write image ${dest}`);
    }
    syncDir(this.imagesDir);
  }

  // --- names ----------------------------------------------------------------

  private namePath(name: string): string {
    return join(this.namesDir, encodeName(name));
  }

  /** Point `record.name` at its image, atomically and durably. */
  writeName(record: NameRecord): void {
    checkName(record.name);
    writeFileAtomic(this.namePath(record.name), `${JSON.stringify(record, null, 2)}\n`, this.namesDir, true);
  }

  getName(name: string): NameRecord {
    const path = this.namePath(name);
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new RepoError(`no image named '${name}' in ${this.root}`);
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
    for (const f of readdirSafe(this.namesDir).sort()) {
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

  /** Remove a name (the image and its objects go at the next gc, if nothing else names them). */
  remove(name: string): NameRecord {
    const rec = this.getName(name);
    try {
      unlinkSync(this.namePath(name));
    } catch (err) {
      throw ioError(err, `cannot remove name ${name}`);
    }
    syncDir(this.namesDir);
    return rec;
  }

  /** Remove what no name reaches (see gc.ts). */
  async gc(opts: { dryRun?: boolean; onWait?: () => void } = {}): Promise<import('./gc.js').GcResult> {
    return (await import('./gc.js')).gcRepository(this, opts);
  }

  /** Check every object, image, layer record and name (see gc.ts). */
  async fsck(): Promise<import('./gc.js').RepoFsckResult> {
    return (await import('./gc.js')).fsckRepository(this);
  }

  /** The image file, digest and object store of a name: what a mount needs. */
  resolveMount(name: string): { image: string; digest: string; basedir: string } {
    const rec = this.getName(name);
    return { image: this.imagePath(rec.image), digest: rec.image, basedir: this.objects };
  }
}

export function hexOf(digest: string): string {
  const m = /^sha256:([0-9a-f]{64})$/.exec(digest);
  if (!m) throw new RepoError(`malformed digest '${digest}'`);
  return m[1];
}

export function readdirSafe(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw ioError(err, `cannot read ${dir}`);
  }
}

export function sizeOf(path: string): number {
  try {
    return lstatSync(path).size;
  } catch {
    return 0;
  }
}

export function removePath(path: string): void {
  try {
    rmSync(path, { recursive: true, force: true });
  } catch (err) {
    throw ioError(err, `cannot remove ${path}`);
  }
}

export { IoError };
