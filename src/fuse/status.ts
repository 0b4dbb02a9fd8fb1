/**
 * Our FUSE mounts in this mount namespace and whether their server still
 * answers: a server that died leaves a mount every access to which fails
 * with ENOTCONN ("Transport endpoint is not connected") until it is
 * unmounted.
 */
import { statSync } from 'node:fs';
import { readMountinfo, type MountInfo } from '../mount/mountinfo.js';
import { FUSE_FSTYPE, unmountFuse } from './unmount.js';

export interface FuseMountStatus {
  mountpoint: string;
  /** serving: the server answers; disconnected: it is gone (ENOTCONN) and the mount only waits to be removed. */
  state: 'serving' | 'disconnected' | 'unknown';
  why: string;
  options: string;
}

export function fuseMounts(all: MountInfo[] = readMountinfo()): FuseMountStatus[] {
  return all
    .filter((m) => m.fstype === FUSE_FSTYPE)
    .map((m) => {
      try {
        statSync(m.mountPoint);
        return { mountpoint: m.mountPoint, state: 'serving' as const, why: 'the server answers', options: m.superOptions };
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOTCONN') return { mountpoint: m.mountPoint, state: 'disconnected' as const, why: 'ENOTCONN: the server is gone; `cfs status --clean` unmounts it', options: m.superOptions };
        return { mountpoint: m.mountPoint, state: 'unknown' as const, why: `stat: ${code ?? String(err)}`, options: m.superOptions };
      }
    });
}

/** Unmount the FUSE mounts whose server is gone; returns what was done. */
export function cleanDisconnectedFuseMounts(): string[] {
  const done: string[] = [];
  for (const m of fuseMounts()) {
    if (m.state !== 'disconnected') continue;
    try {
      unmountFuse(m.mountpoint, true);
      done.push(`unmounted ${m.mountpoint} (FUSE server gone)`);
    } catch (err) {
      done.push(`could not unmount ${m.mountpoint}: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  return done;
}
