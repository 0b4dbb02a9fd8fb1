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
  /** The mount service's socket, for `unmountComposefsAsUser` (default: the helper's own). */
  serviceSocket?: string;
}

/**
 * Who unmounts a composefs overlay this user may not unmount (umount2 says
 * EPERM): the mount service, which made it for this user
 * (src/service/register.ts registers it). Given the canonical mountpoint,
 * the options and the kernel's refusal; rejects with a one-line
 * ComposefsError. The mount library
 * never imports the service: the entry points register it.
 */
export type UnmountHelper = (path: string, opts: UnmountOptions, refusal: MountError) => Promise<void>;

let unmountHelper: UnmountHelper | null = null;

/** Register (or, with null, remove) the helper of `unmountComposefsAsUser`. */
export function registerUnmountHelper(helper: UnmountHelper | null): void {
  unmountHelper = helper;
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
  try {
    unmountPath(path, mountpoint, opts.lazy);
  } catch (err) {
    if (err instanceof MountError && err.privilege && isComposefsMount(m)) throw new UnmountRefused(err.message, path, { cause: err.cause });
    throw err;
  }
}

/**
 * `unmountComposefs`, and when the kernel refuses this user a composefs
 * overlay (EPERM: a mount the mount service made for it), the registered
 * helper's way. Without a helper, the kernel's refusal stands.
 */
export async function unmountComposefsAsUser(mountpoint: string, opts: UnmountOptions = {}): Promise<void> {
  try {
    unmountComposefs(mountpoint, opts);
  } catch (err) {
    if (!(err instanceof UnmountRefused) || !unmountHelper) throw err;
    await unmountHelper(err.path, opts, err);
  }
}

/** The kernel refused this user the unmount of a composefs overlay (EPERM). */
class UnmountRefused extends MountError {
  constructor(
    message: string,
    readonly path: string,
    options: { cause: unknown },
  ) {
    super(message, { ...options, privilege: true });
  }
}

/** umount2 with a one-line error. */
export function unmountPath(path: string, shown = path, lazy = false): void {
  try {
    sys.umount2(path, (lazy ? sys.MNT_DETACH : 0) | sys.UMOUNT_NOFOLLOW);
  } catch (err) {
    if (err instanceof SysError && err.code === 'EBUSY') throw new MountError(`${shown}: busy (files or directories in use); --lazy detaches it now and finishes later`);
    throw new MountError(`${shown}: ${err instanceof Error ? err.message : String(err)}`, { cause: err, privilege: err instanceof SysError && err.code === 'EPERM' });
  }
}

export { readMountinfo };
