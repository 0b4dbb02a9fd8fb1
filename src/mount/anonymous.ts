/**
 * Anonymous private files: an O_TMPFILE file (linked nowhere, so nobody else
 * can open it) filled once, then kept only through a read-only descriptor,
 * so nobody can change it either. What is mounted from it is what was
 * written. A file system without O_TMPFILE is skipped for the next.
 */
import { openSync, constants as fsc } from 'node:fs';
import { ioError } from '../errors.js';
import { fsTypeOf } from '../sys/fsinfo.js';
import * as sys from '../sys/mount.js';
import type { Cleanup } from './context.js';
import { fsTypeName } from './kernel.js';

export interface AnonymousFile {
  /** Read-only descriptor of the file (registered with the cleanup). */
  fd: number;
  /** The directory whose file system holds it. */
  dir: string;
  fsType: string;
}

/**
 * Make an anonymous file in the first of `dirs` that takes one, `fill` it
 * through a writable descriptor (closed afterwards), and return a read-only
 * descriptor of it, closed by `c`; or, when no directory took it (no
 * O_TMPFILE there, or `fill` failed there), each directory's refusal.
 */
export function anonymousFile(dirs: string[], fill: (rwFd: number) => void, c: Cleanup): AnonymousFile | { refused: string[] } {
  const O_TMPFILE = sys.O__TMPFILE | fsc.O_DIRECTORY;
  const refused: string[] = [];
  for (const dir of dirs) {
    let rw: number;
    try {
      rw = openSync(dir, O_TMPFILE | fsc.O_RDWR | fsc.O_EXCL, 0o400);
    } catch (err) {
      refused.push(ioError(err, dir).message);
      continue;
    }
    try {
      fill(rw);
      // Keep only a read-only descriptor: once the writable one is closed nobody can change the file.
      const ro = c.fd(openSync(`/proc/self/fd/${rw}`, fsc.O_RDONLY));
      return { fd: ro, dir, fsType: fsTypeName(fsTypeOf(ro)) };
    } catch (err) {
      refused.push(ioError(err, dir).message);
    } finally {
      sys.closeQuiet(rw);
    }
  }
  return { refused };
}
