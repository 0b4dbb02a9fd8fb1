/** Unmounting a composefs mount. */
import { realpathSync } from 'node:fs';
import { resolve } from 'node:path';
import { ioError } from '../errors.js';
import { MountError } from './errors.js';
import { SysError } from '../sys/libc.js';
import * as sys from '../sys/mount.js';
import { mountAt, readMountinfo, type MountInfo } from './mountinfo.js';
import { mountKindOf } from './kinds.js';

export interface UnmountOptions {
  /** MNT_DETACH: detach now, finish when the last user lets go. */
  lazy?: boolean;
  /** Unmount whatever is mounted there, composefs or not. */
  any?: boolean;
}

/** Whether a mountinfo entry is a composefs overlay (ours, the reference's, or any with source "composefs"). */
export function isComposefsMount(m: MountInfo): boolean {
  return m.fstype === 'overlay' && m.source === 'composefs';
}

export function unmountComposefs(mountpoint: string, opts: UnmountOptions = {}): void {
  let path: string;
  try {
    path = realpathSync(resolve(mountpoint));
  } catch (err) {
    // A served (FUSE) mount whose server died cannot be resolved (ENOTCONN), but can be unmounted by its path.
    if ((err as NodeJS.ErrnoException).code !== 'ENOTCONN') throw ioError(err, mountpoint);
    path = resolve(mountpoint);
  }
  const m = mountAt(path);
  if (!m) throw new MountError(`${mountpoint}: not a mount point`);
  // A served mount (FUSE) is unmounted its own way: by its kind, registered by the entry point.
  const kind = mountKindOf(m);
  if (kind) return kind.unmount(path, opts.lazy === true);
  if (!opts.any && !isComposefsMount(m)) {
    throw new MountError(`${mountpoint}: not a composefs mount (${m.fstype} from ${m.source}); --any unmounts it anyway`);
  }
  unmountPath(path, mountpoint, opts.lazy);
}

/** umount2 with a one-line error. */
export function unmountPath(path: string, shown = path, lazy = false): void {
  try {
    sys.umount2(path, (lazy ? sys.MNT_DETACH : 0) | sys.UMOUNT_NOFOLLOW);
  } catch (err) {
    if (err instanceof SysError && err.code === 'EBUSY') throw new MountError(`${shown}: busy (files or directories in use); --lazy detaches it now and finishes later`);
    throw new MountError(`${shown}: ${err instanceof Error ? err.message : String(err)}`);
  }
}

export { readMountinfo };
