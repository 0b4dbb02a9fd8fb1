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
import { MountError as ServiceErrors } from './mount-interface.js';
import { serviceRung } from './rung.js';

registerMountRung(serviceRung);
registerUnmountHelper(async (path, opts, refusal) => {
  const { unmountThroughService, MountServiceError } = await import('./client.js');
  try {
    await unmountThroughService(path, opts.serviceSocket);
  } catch (err) {
    // Not the service's mount (or no service to ask): the kernel's refusal is the answer, and says why no one else unmounted it.
    if (err instanceof MountServiceError && !err.reachable) throw new MountError(`${refusal.message} (no mount service answers at ${err.socket}: ${err.reason})`, { cause: err });
    if (err instanceof MountServiceError && err.error === ServiceErrors.NoSuchMount) throw new MountError(`${refusal.message} (the mount service did not make it: ${err.reason})`, { cause: err });
    throw err;
  }
});
