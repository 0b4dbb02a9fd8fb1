/**
 * FUSE as a rung of the mount ladder (src/mount/ladder.ts): taken when asked
 * for (`fuse`, `--fuse`), when the kernel path is refused for lack of
 * privilege, or when the kernel cannot check objects the request requires
 * checked (the server checks every object and every block itself), unless
 * `fuse=no`. Registered by the entry points through src/fuse/register.ts.
 * Loading this loads nothing else: the server code is imported only when
 * the rung mounts, so a mount on the kernel path never loads it.
 */
import { UsageError } from '../errors.js';
import type { MountRung, RungMount, RungReason } from '../mount/ladder.js';
import type { MountOptions } from '../mount/options.js';
import type { FuseMountOptions, FuseMountResult } from './mount.js';

/** The FUSE server's options from the ladder's request; usage mistakes the FUSE mount cannot honour are refused here. */
export function fuseOptionsOf(o: MountOptions): FuseMountOptions {
  if (o.upperdir || o.workdir) throw new UsageError('upperdir=/workdir= are not supported with FUSE (the FUSE mount is read-only)');
  if (o.idmap !== undefined) throw new UsageError('idmap= is not supported with FUSE');
  // The server checks objects itself, so what the kernel rung can only try, FUSE always can:
  // digest= implies verity as on the kernel path, tryverity turns it on, noverity keeps it off.
  const verity = (o.verity ?? (o.digest !== undefined ? 'require' : 'off')) !== 'off';
  return {
    basedir: o.basedir,
    digest: o.digest,
    verity,
    passthrough: o.passthrough,
    allowOther: o.allowOther,
    readers: o.fuseReaders,
    log: o.log,
    foreground: o.foreground,
    dryRun: o.dryRun,
  };
}

/** What only the kernel rung can do: a request asking for it keeps the kernel's own error rather than FUSE's refusal. */
function kernelOnly(o: MountOptions): boolean {
  return !!(o.upperdir || o.workdir || o.idmap !== undefined);
}

function why(reason: RungReason): string {
  if (reason.asked) return 'fuse: asked for (--fuse)';
  if (reason.handover === 'privilege') return `fuse: the kernel path lacks privilege (${reason.failure}); FUSE needs none`;
  return `fuse: ${reason.failure}; the FUSE server checks every object against its digest and every block it reads (verity)`;
}

export const fuseRung: MountRung<FuseMountResult> = {
  name: 'fuse',
  asked: (o) => o.fuse === true,
  afterPrivilegeFailure: (o) => o.fuse !== false,
  afterVerityFailure: (o) => o.fuse !== false && !kernelOnly(o),
  why,
  async mount(image, mountpoint, options): Promise<RungMount<FuseMountResult>> {
    // An open image (the caller's descriptor) by a path this process and a detached server can both open.
    const path = typeof image === 'number' ? `/proc/${process.pid}/fd/${image}` : image;
    const fuseOptions = fuseOptionsOf(options);
    const { mountFuse, serveFuse } = await import('./mount.js');
    if (!fuseOptions.foreground) return { result: await mountFuse(path, mountpoint, fuseOptions) };
    const served = await serveFuse(path, mountpoint, fuseOptions, options.onServerLog);
    return { result: served.result, closed: served.closed };
  },
};
