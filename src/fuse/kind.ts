/**
 * FUSE mounts as a kind of mount the mount library knows (src/mount/kinds.ts):
 * how `cfs umount` unmounts one and how `cfs status` asks its server.
 * Registered by the entry points through src/fuse/register.ts; loads
 * nothing of the server.
 */
import type { MountKind } from '../mount/kinds.js';
import { cleanDisconnectedFuseMounts, fuseMounts } from './status.js';
import { FUSE_FSTYPE, unmountFuse } from './unmount.js';

export const fuseMountKind: MountKind = {
  name: 'fuse',
  title: 'FUSE mounts',
  fstype: FUSE_FSTYPE,
  unmount: unmountFuse,
  status: fuseMounts,
  cleanDisconnected: cleanDisconnectedFuseMounts,
};
