/**
 * The mount service (`cfs serve`) as a rung of the mount ladder
 * (src/mount/ladder.ts): the kernel's own mount of the image, made by the
 * service for a user who may not mount, so taken when asked for (`service`,
 * `--service`), and when the kernel path is refused for lack of privilege,
 * before FUSE (order 10; FUSE has the default, 100), unless `service=no`.
 *
 * What the service cannot do is left alone: an upper layer, an idmap (the
 * kernel's error stands, or FUSE's), objects checked where the kernel cannot
 * check them (no fs-verity: FUSE checks them itself). A service that does
 * not answer at its socket, or refuses what FUSE could still serve (its
 * limit of mounts reached, an image it will not mount), hands over to FUSE
 * when the service was not asked for, and --explain says why; asked for, it
 * fails in one line.
 *
 * Loading this loads nothing else: the client (varlink, the socket calls)
 * is imported only when the rung mounts.
 */
import { resolve } from 'node:path';
import { UsageError } from '../errors.js';
import { MountError } from '../mount/errors.js';
import type { MountRung, RungMount, RungReason, RungResult } from '../mount/ladder.js';
import type { MountOptions } from '../mount/options.js';
import { MountError as ServiceErrors } from './mount-interface.js';

/** What the service rung's result adds: the mount's unique id, the image the service wrote, the socket. */
export interface ServiceRungResult extends RungResult {
  rung: 'service';
  /** The overlay's unique mount id (statx STATX_MNT_ID_UNIQUE), as the service gave it. */
  mountId: number;
  /** The fs-verity digest of the image the service wrote and mounted (hex). */
  imageDigest: string;
  socket: string;
  /** Whether this process attached the service's detached mount itself (a user namespace of its own). */
  detached: boolean;
}

/** What only the kernel rung can do: a request asking for it keeps the kernel's own error. */
function kernelOnly(o: MountOptions): boolean {
  return !!(o.upperdir || o.workdir || o.idmap !== undefined);
}

/** Refusals of the service after which an unasked rung hands over to FUSE, which may still serve the image. */
const HANDED_OVER: ReadonlySet<string> = new Set([ServiceErrors.LimitReached, ServiceErrors.ImageRefused, ServiceErrors.MountFailed]);

function why(reason: RungReason, options: MountOptions): string {
  const at = options.serviceSocket ? ` at ${options.serviceSocket}` : '';
  if (reason.asked) return `service: asked for (--service); the mount service${at} mounts it for this user`;
  if (reason.handover === 'privilege') return `service: the kernel path lacks privilege (${reason.failure}); the mount service${at} mounts it for this user`;
  return `service: ${reason.failure}`;
}

export const serviceRung: MountRung<ServiceRungResult> = {
  name: 'service',
  order: 10,
  passesOn: true,
  asked: (o) => o.service === true,
  afterPrivilegeFailure: (o) => o.service !== false && !kernelOnly(o),
  why,
  async mount(image, mountpoint, options): Promise<RungMount<ServiceRungResult>> {
    const t0 = performance.now();
    const asked = options.service === true;
    if (kernelOnly(options)) throw new UsageError('upperdir=/workdir=/idmap= are not supported by the mount service (its mounts are read-only, without idmap)');
    const { mountThroughService, checkServiceRequest, serviceSocketPath, MountServiceError, ImageNotForService } = await import('./client.js');
    const socket = serviceSocketPath(options.serviceSocket);
    const verity = options.verity ?? (options.digest !== undefined ? 'require' : 'off');
    const explain: string[] = [];
    if (options.readonly === false) explain.push('rw: ignored, the mount service mounts read-only');
    if (options.nosuid === false || options.nodev === false) explain.push('suid/dev: ignored, the mount service always mounts nosuid,nodev');
    if (options.backing || options.layers || options.api) explain.push('backing=/layers=/api=: ignored, the mount service chooses the path');
    if (options.dryRun) {
      // Everything this process would open is opened; the service is asked nothing.
      checkServiceRequest(image, mountpoint, options.basedir);
      explain.push('dry run: everything checked, nothing asked of the mount service');
      return { result: { rung: 'service', image: typeof image === 'number' ? `fd ${image}` : image, mountpoint: resolve(mountpoint), readonly: true, verity: verity !== 'off', explain, ms: performance.now() - t0, dryRun: true, mountId: 0, imageDigest: '', socket, detached: false } };
    }
    try {
      const m = await mountThroughService(image, mountpoint, {
        basedir: options.basedir,
        digest: options.digest,
        verity,
        noexec: options.noexec,
        atime: options.atime,
        socket,
      });
      explain.push(
        `service: mounted by the mount service at ${socket}, mount id ${m.mountId}: the image read and written again by the service (fs-verity ${m.imageDigest || '?'}), ro,nosuid,nodev${m.detached ? '; attached here with move_mount (a user namespace of its own)' : ''}`,
        ...m.explain,
      );
      const result: ServiceRungResult = {
        rung: 'service',
        image: typeof image === 'number' ? `fd ${image}` : image,
        mountpoint: m.mountpoint,
        readonly: true,
        verity: verity === 'require' || m.explain.some((l) => /verity=require/.test(l)),
        explain,
        ms: performance.now() - t0,
        mountId: m.mountId,
        imageDigest: m.imageDigest,
        socket,
        detached: m.detached,
      };
      return { result };
    } catch (err) {
      if (!asked && err instanceof ImageNotForService) throw new MountError(`service: ${err.message}`, { privilege: true, cause: err });
      if (asked || !(err instanceof MountServiceError)) throw err;
      if (!err.reachable) throw new MountError(`service: no mount service at ${socket} (${err.reason})`, { privilege: true, secondary: true, cause: err });
      if (err.error !== null && HANDED_OVER.has(err.error)) throw new MountError(`service: the mount service at ${socket} refused (${err.reason})`, { privilege: true, cause: err });
      throw err;
    }
  },
};
