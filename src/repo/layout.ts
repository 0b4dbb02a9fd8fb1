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
 *   leases/ID             one per mount by name: what it holds against gc
 *                         (see leases.ts)
 *   tmp/                  work in progress; whatever is left there by a
 *                         killed pull is removed by the next gc
 *   lock                  flock: pulls share it, gc takes it alone
 *
 * Everything inside is reached from the repository's directory fd, one name
 * at a time, never following a symbolic link (src/sys/dirfd.ts): in a
 * repository others can write, a link planted anywhere is met as a link.
 */
import { closeSync, constants, fsyncSync, writeSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { ioError } from '../errors.js';
import { openAt, renameAt, unlinkAt } from '../sys/dirfd.js';

/**
 * Created in this order, `names` last: its presence (with `objects`) is what
 * marks a repository, so a command killed while creating one never leaves
 * something taken for a repository with a folder missing (a test once killed
 * a pull between `names` and `tmp`). The next command that creates completes it.
 * `leases` comes later than the rest (made by the first mount by name).
 */
export const SUBDIRS = ['objects', 'images', 'layers', 'blobs', 'blobs/sha256', 'tmp', 'names'] as const;
export type Subdir = (typeof SUBDIRS)[number] | 'leases';

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

/** A fresh dot-named temporary file name, unique to this process. */
export function tmpName(tag: string): string {
  return `.${tag}.${process.pid}.${Date.now().toString(36)}.${tmpCounter++}`;
}

/** Write all of `buf` to `fd`. */
export function writeAllSync(fd: number, buf: Buffer): void {
  let off = 0;
  while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
}

/**
 * Write `data` as `name` in the directory `dirFd` (shown as `dirPath`)
 * atomically; with `durable`, fsync the file before and the directory after
 * the rename. The temporary file is created exclusively, never through a link.
 */
export function writeFileAt(dirFd: number, dirPath: string, name: string, data: Buffer | string, durable: boolean): void {
  const tmp = tmpName('tmp');
  let fd = -1;
  try {
    fd = openAt(dirFd, tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
    writeAllSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
    if (durable) fsyncSync(fd);
    closeSync(fd);
    fd = -1;
    renameAt(dirFd, tmp, dirFd, name);
  } catch (err) {
    if (fd >= 0) closeSync(fd);
    try {
      unlinkAt(dirFd, tmp);
    } catch {
      /* not created */
    }
    throw ioError(err, `cannot write ${join(dirPath, name)}`);
  }
  if (durable) syncDirFd(dirFd, dirPath);
}

export function syncDirFd(fd: number, what: string): void {
  try {
    fsyncSync(fd);
  } catch (err) {
    throw ioError(err, `cannot sync ${what}`);
  }
}
