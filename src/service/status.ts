/**
 * What the mount service holds for this user, for `cfs status`: its List,
 * each mount matched to where it is in this mount namespace by its unique
 * mount id (statx STATX_MNT_ID_UNIQUE of each composefs overlay's
 * mountpoint): the path the service saw when it attached a mount may have
 * been renamed since, and a detached mount was attached by its caller. A
 * service that does not answer is a state, not an error.
 */
import { closeSync, openSync, constants as fsc } from 'node:fs';
import { readMountinfo, type MountInfo } from '../mount/mountinfo.js';
import { isComposefsMount } from '../mount/umount.js';
import { underFuse } from '../mount/status.js';
import { mountIdOf } from '../sys/mountid.js';
import { printable } from '../printable.js';
import * as sys from '../sys/mount.js';
import { listServiceMounts, MountServiceError, serviceSocketPath, type ServiceMountEntry } from './client.js';

export interface ServiceMountHere extends ServiceMountEntry {
  /** Where it is mounted in this mount namespace, or null when not here (another namespace's, or a path this process cannot reach). */
  here: string | null;
}

export interface ServiceStatus {
  socket: string;
  /** Whether the service answered. */
  running: boolean;
  /** Why it did not, one line ("not running (connect: No such file or directory)"). */
  reason?: string;
  /** The uid the service answered for (this process's). */
  uid: number;
  /** How many mounts the service lets this user hold (0 when it did not answer). */
  limit: number;
  mounts: ServiceMountHere[];
}

/** Unique mount id -> mountpoint of the composefs overlays in this mount namespace (those on FUSE mounts are not looked at: their server may be stopped). */
export function composefsMountIds(all: MountInfo[] = readMountinfo()): Map<number, string> {
  const ids = new Map<number, string>();
  for (const m of all.filter(isComposefsMount)) {
    if (underFuse(m.mountPoint, all)) continue;
    let fd = -1;
    try {
      fd = openSync(m.mountPoint, sys.O_PATH | fsc.O_DIRECTORY | fsc.O_NOFOLLOW);
      const id = mountIdOf(fd);
      if (id.mountRoot) ids.set(Number(id.mountId), m.mountPoint);
    } catch {
      /* gone meanwhile, or out of this user's reach */
    } finally {
      if (fd >= 0) closeSync(fd);
    }
  }
  return ids;
}

/** The service's mounts for this user and where each is here; a service that does not answer says why. */
export async function serviceStatus(socket?: string): Promise<ServiceStatus> {
  const path = serviceSocketPath(socket);
  const uid = process.getuid?.() ?? -1;
  try {
    const listed = await listServiceMounts(path);
    const ids = composefsMountIds();
    return { socket: path, running: true, uid, limit: listed.limit, mounts: listed.mounts.map((m) => ({ ...m, here: ids.get(m.mountId) ?? null })) };
  } catch (err) {
    if (!(err instanceof MountServiceError)) throw err;
    const prefix = err.reachable ? 'mount service: ' : `mount service ${printable(err.socket)}: `;
    const reason = err.message.startsWith(prefix) ? err.message.slice(prefix.length) : err.message;
    return { socket: path, running: false, reason, uid, limit: 0, mounts: [] };
  }
}
