/**
 * Importing this makes the mount service known to the mount library: the
 * rung of the mount ladder (src/service/rung.ts) and the helper that
 * unmounts, for a user the kernel refuses, a composefs overlay the service
 * made for it (`unmountComposefsAsUser`, src/mount/umount.ts). The mount
 * library never imports src/service/; its entry points do, through this:
 * the `cfs` commands and the library's src/index.ts. Neither registration
 * loads the client: it is imported when the service is called.
 */
import { MountError } from '../mount/errors.js';
import { registerMountRung } from '../mount/ladder.js';
import { registerUnmountHelper } from '../mount/umount.js';
import { serviceRung } from './rung.js';

registerMountRung(serviceRung);
registerUnmountHelper(async (path, opts) => {
  const { unmountThroughService, MountServiceError } = await import('./client.js');
  try {
    await unmountThroughService(path, opts.serviceSocket);
  } catch (err) {
    // Not the service's mount to begin with, as far as anyone can tell: the kernel's refusal, and why no one else was asked.
    if (err instanceof MountServiceError && !err.reachable) throw new MountError(`${path}: umount: Operation not permitted (and no mount service answers at ${err.socket}: ${err.reason})`, { cause: err });
    throw err;
  }
});
