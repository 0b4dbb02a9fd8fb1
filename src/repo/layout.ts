/**
 * Where a repository keeps things, and the two ways anything gets written
 * there: atomically (temporary file, then rename) and durably (fsync of the
 * file and of its directory) for the small records that name things.
 *
 *   objects/XX/YYYY…      the object store (as `mkcomposefs --digest-store`
 *                         writes it: usable as `basedir=` as it is)
 *   images/HEX            composefs images, by their fs-verity digest
 *   layers/HEX            each imported layer's entries (JSON lines), by its
 *                         diff_id: a layer there is never fetched again
 *   blobs/sha256/HEX      OCI manifests and configs, as the source served them
 *   names/ENCODED         one JSON record per name (see NameRecord)
 *   tmp/                  work in progress; whatever is left there by a
 *                         killed pull is removed by the next gc
 *   lock                  flock: pulls share it, gc takes it alone
 */
import { closeSync, constants, fsyncSync, mkdirSync, openSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { ioError } from '../errors.js';

/**
 * Created in this order, `names` last: its presence (with `objects`) is what
 * marks a repository, so a command killed while creating one never leaves
 * something taken for a repository with a folder missing (a test once killed
 * a pull between `names` and `tmp`). The next command that creates completes it.
 */
export const SUBDIRS = ['objects', 'images', 'layers', 'blobs/sha256', 'tmp', 'names'] as const;

/** The default repository: $CFS_REPO, else /var/lib/composefs as root, else $XDG_DATA_HOME/composefs. */
export function defaultRepoPath(): string {
  if (process.env.CFS_REPO) return process.env.CFS_REPO;
  if (process.getuid?.() === 0) return '/var/lib/composefs';
  const data = process.env.XDG_DATA_HOME || join(homedir(), '.local/share');
  return join(data, 'composefs');
}

/** File name of a name record: names hold '/' and ':', so they are percent-encoded (reversibly). */
export function encodeName(name: string): string {
  return encodeURIComponent(name).replace(/\./g, '%2E');
}

export function decodeName(file: string): string {
  return decodeURIComponent(file);
}

let tmpCounter = 0;

/** A fresh temporary path under `dir`, unique to this process. */
export function tmpName(dir: string, tag: string): string {
  return join(dir, `.${tag}.${process.pid}.${Date.now().toString(36)}.${tmpCounter++}`);
}

/** Write `data` to `path` atomically; with `durable`, fsync the file before and the directory after the rename. */
export function writeFileAtomic(path: string, data: Buffer | string, dir: string, durable: boolean): void {
  const tmp = tmpName(dir, 'tmp');
  let fd = -1;
  try {
    fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
    const buf = typeof data === 'string' ? Buffer.from(data) : data;
    let off = 0;
    while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
    if (durable) fsyncSync(fd);
    closeSync(fd);
    fd = -1;
    renameSync(tmp, path);
  } catch (err) {
    if (fd >= 0) closeSync(fd);
    try {
      unlinkSync(tmp);
    } catch {
      /* not created */
    }
    throw ioError(err, `cannot write ${path}`);
  }
  if (durable) syncDir(dir);
}

export function syncDir(dir: string): void {
  let fd = -1;
  try {
    fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
    fsyncSync(fd);
  } catch (err) {
    throw ioError(err, `cannot sync ${dir}`);
  } finally {
    if (fd >= 0) closeSync(fd);
  }
}

export function makeLayout(root: string): void {
  for (const sub of SUBDIRS) {
    try {
      mkdirSync(join(root, sub), { recursive: true, mode: 0o755 });
    } catch (err) {
      throw ioError(err, `cannot create repository ${root}`);
    }
  }
}
