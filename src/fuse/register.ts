/**
 * Importing this makes FUSE known to the mount library: the rung of the
 * mount ladder (src/fuse/rung.ts) and the kind of mount `cfs umount` and
 * `cfs status` handle (src/fuse/kind.ts). The mount library never imports
 * src/fuse/; its entry points do, through this: the `cfs` commands and the
 * library's src/index.ts. Neither registration loads the server.
 */
import { registerMountKind } from '../mount/kinds.js';
import { registerMountRung } from '../mount/ladder.js';
import { fuseMountKind } from './kind.js';
import { fuseRung } from './rung.js';

registerMountRung(fuseRung);
registerMountKind(fuseMountKind);
