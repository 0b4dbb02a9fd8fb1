/**
 * Unmounting a FUSE mount: umount2 where allowed (root, or the user
 * namespace that mounted it), else the setuid fusermount3 -u, which lets the
 * user who mounted it unmount. Kept apart from the server so `cfs umount`
 * and `cfs status --clean` load only this.
 */
import { existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { ComposefsError, reasonOf } from '../errors.js';
import { SysError } from '../sys/libc.js';
import * as sys from '../sys/mount.js';

/** The file system type our FUSE mounts have in /proc/self/mountinfo. */
export const FUSE_FSTYPE = 'fuse.composefs';

export class FuseUnmountError extends ComposefsError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, 'fuse-unmount', options);
  }
}

export function fusermountPath(): string | null {
  for (const p of ['/usr/bin/fusermount3', '/bin/fusermount3', '/usr/local/bin/fusermount3']) if (existsSync(p)) return p;
  return null;
}

/** Unmount a FUSE mount: umount2 when allowed, else fusermount3 -u (-z when lazy). */
export function unmountFuse(mountpoint: string, lazy = false): void {
  try {
    sys.umount2(mountpoint, (lazy ? sys.MNT_DETACH : 0) | sys.UMOUNT_NOFOLLOW);
    return;
  } catch (err) {
    const code = err instanceof SysError ? err.code : '';
    if (code === 'EBUSY') throw new FuseUnmountError(`${mountpoint}: busy (files or directories in use); --lazy detaches it now and finishes later`, { cause: err });
    if (code !== 'EPERM') throw new FuseUnmountError(`${mountpoint}: ${reasonOf(err)}`, { cause: err });
  }
  const helper = fusermountPath();
  if (!helper) throw new FuseUnmountError(`${mountpoint}: umount: Operation not permitted, and fusermount3 is not installed`);
  const r = spawnSync(helper, ['-u', ...(lazy ? ['-z'] : []), '--', mountpoint], { encoding: 'utf8', stdio: ['ignore', 'ignore', 'pipe'] });
  if (r.status !== 0) throw new FuseUnmountError(`${mountpoint}: ${(r.stderr || '').trim().replace(/^fusermount3: /, '') || 'fusermount3 -u failed'}`);
}
