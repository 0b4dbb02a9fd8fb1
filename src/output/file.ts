/**
 * Writing an output file the way the reference tools' `fopen(PATH, "w")`
 * does, without its one weakness: a regular file is never seen half-written.
 *
 * What PATH is decides how it is written:
 *  - a symlink is followed (as open(2) does) and its final target written; the
 *    link stays a link;
 *  - a device, FIFO or socket is opened and written in place, as the
 *    reference does (`/dev/full` fails with ENOSPC and stays a device; a FIFO's
 *    reader gets the bytes);
 *  - a regular file, or a name that does not exist yet, is written to an
 *    anonymous O_TMPFILE file in the target's directory, which is then given a
 *    name and renamed over the target: readers see the old file or the new
 *    one, and a process killed during the write leaves no file at all (the
 *    unnamed file is freed by the kernel). A replaced file keeps its mode and
 *    owner, as the reference's in-place write keeps them; a new one gets 0666
 *    less the umask, as fopen gives.
 *
 * Where an atomic replacement cannot keep what the reference keeps, the file
 * is written in place as the reference writes it: when the directory is not
 * writable but the file is, or when the caller may not give the new file the
 * old owner (not root). An existing file the caller may not write is refused
 * (EACCES), as open(2) refuses it, rather than replaced through the directory.
 */
import { closeSync, fchmodSync, fchownSync, fstatSync, fsyncSync, lstatSync, openSync, readlinkSync, renameSync, unlinkSync, writeSync, accessSync, constants, type Stats } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';
import { IoError, reasonOf } from '../errors.js';
import { linkFd, openTmpfile } from '../sys/fs.js';

export interface OutputFileOptions {
  /** fsync the new file before it replaces the old one (default: no, as the reference). */
  durable?: boolean;
  /** Prefix of the message when PATH cannot be opened or created (default: the reference mkcomposefs's "failed to open output file"). */
  openFailure?: string;
  /** Prefix of the message when writing fails (default: the reference's "cannot write file"). */
  writeFailure?: string;
}

/** Writing an output file failed: `stage` says whether it could not be opened or not be written. */
export class OutputFileError extends IoError {
  constructor(
    message: string,
    errno: string | undefined,
    readonly path: string,
    readonly stage: 'open' | 'write',
    cause: unknown,
  ) {
    super(message, errno, { cause });
  }
}

/** How an output file was written (for callers that report it). */
export type OutputFileWrite = 'created' | 'replaced' | 'in-place';

const MAX_SYMLINKS = 40; // the kernel's limit on links followed in one lookup

/** Write `data` (one buffer or several, in order) to `path`; see the module comment. */
export function writeOutputFile(path: string, data: Buffer | readonly Buffer[], opts: OutputFileOptions = {}): OutputFileWrite {
  const parts = Buffer.isBuffer(data) ? [data] : data;
  const openFailure = opts.openFailure ?? 'failed to open output file';
  const writeFailure = opts.writeFailure ?? 'cannot write file';
  const fail = (stage: 'open' | 'write', err: unknown): OutputFileError => {
    const code = (err as NodeJS.ErrnoException | null)?.code;
    return new OutputFileError(`${stage === 'open' ? openFailure : writeFailure}: ${reasonOf(err)}`, code, path, stage, err);
  };

  let target: { path: string; stat: Stats | null };
  try {
    target = followSymlinks(path);
  } catch (err) {
    throw fail('open', err);
  }
  const { stat } = target;
  if (stat !== null && !stat.isFile()) return writeInPlace(target.path, parts, fail);
  if (stat !== null) {
    try {
      // open(2) would refuse a file we may not write: so do we, rather than replace it through the directory.
      accessSync(target.path, constants.W_OK);
    } catch (err) {
      throw fail('open', err);
    }
  }

  const dir = dirname(target.path);
  let fd: number;
  let named: string | null = null;
  try {
    fd = openTmpfile(dir, 0o666, constants.O_WRONLY);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if ((code === 'EACCES' || code === 'EPERM') && stat !== null) return writeInPlace(target.path, parts, fail);
    // File systems without O_TMPFILE: a named temporary file beside the target.
    if (code !== 'EOPNOTSUPP' && code !== 'EISDIR' && code !== 'EINVAL') throw fail('open', err);
    named = join(dir, `.${basename(target.path)}.${randomBytes(6).toString('hex')}.tmp`);
    try {
      fd = openSync(named, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o666);
    } catch (err2) {
      throw fail('open', err2);
    }
  }

  let linked: string | null = named;
  try {
    if (stat !== null) {
      const mine = fstatSync(fd);
      if (mine.uid !== stat.uid || mine.gid !== stat.gid) {
        try {
          fchownSync(fd, stat.uid, stat.gid);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EPERM') throw err;
          // Only root may give the file its old owner: keep it by writing in place, as the reference does.
          closeSync(fd);
          fd = -1;
          if (named !== null) unlinkSync(named);
          linked = null;
          return writeInPlace(target.path, parts, fail);
        }
      }
      // After the chown, which clears set-user-ID and set-group-ID bits.
      fchmodSync(fd, stat.mode & 0o7777);
    }
    for (const part of parts) writeAll(fd, part);
    if (opts.durable) fsyncSync(fd);
    if (linked === null) {
      linked = join(dir, `.${basename(target.path)}.${randomBytes(6).toString('hex')}.tmp`);
      linkFd(fd, linked);
    }
    closeSync(fd);
    fd = -1;
    renameSync(linked, target.path);
    linked = null;
  } catch (err) {
    throw fail('write', err);
  } finally {
    if (fd >= 0) closeSync(fd);
    if (linked !== null) {
      try {
        unlinkSync(linked);
      } catch {
        // never made, or already renamed
      }
    }
  }
  return stat === null ? 'created' : 'replaced';
}

/** The file open(2) would reach from `path`: each symlink followed, as the kernel does, up to its limit. */
function followSymlinks(path: string): { path: string; stat: Stats | null } {
  let current = path;
  for (let hops = 0; hops <= MAX_SYMLINKS; hops++) {
    let st: Stats;
    try {
      st = lstatSync(current);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { path: current, stat: null };
      throw err;
    }
    if (!st.isSymbolicLink()) return { path: current, stat: st };
    const link = readlinkSync(current);
    // Joined as a string, not normalised: `..` after a symlinked directory must be resolved by the kernel.
    current = link.startsWith('/') ? link : `${dirname(current)}/${link}`;
  }
  throw Object.assign(new Error('too many symbolic links'), { code: 'ELOOP' });
}

/** Open and write as the reference does: O_WRONLY|O_CREAT|O_TRUNC, mode 0666 less the umask. */
function writeInPlace(path: string, parts: readonly Buffer[], fail: (stage: 'open' | 'write', err: unknown) => OutputFileError): OutputFileWrite {
  let fd: number;
  try {
    fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC, 0o666);
  } catch (err) {
    throw fail('open', err);
  }
  try {
    for (const part of parts) writeAll(fd, part);
    closeSync(fd);
    fd = -1;
  } catch (err) {
    throw fail('write', err);
  } finally {
    if (fd >= 0) closeSync(fd);
  }
  return 'in-place';
}

function writeAll(fd: number, data: Buffer): void {
  let off = 0;
  while (off < data.length) {
    try {
      off += writeSync(fd, data, off, data.length - off);
    } catch (err) {
      // A FIFO or terminal opened non-blocking by someone else: wait by retrying.
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
    }
  }
}
