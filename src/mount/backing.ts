/**
 * The EROFS stage: try the planned backings in order (fd, file, loop), the
 * same choice for the new mount API (a detached mount) and for legacy
 * mount(2) (a mount on a temporary directory); only the final call differs.
 */
import { fsTypeName } from './kernel.js';
import { attachLoop, type LoopDevice } from '../sys/loop.js';
import * as sys from '../sys/mount.js';
import { MountError } from './errors.js';
import { EINVAL, ENOTBLK, errnoOf, imageMountError, kernelSays, note, remember, type MountContext, type RungResult } from './context.js';
import type { BackingRung, MountPlan } from './plan.js';
import type { Backing } from './options.js';

/** Where the EROFS mount goes: kept detached (new API) or mounted on a directory (legacy mount(2)). */
export type ErofsTarget = { api: 'new' } | { api: 'legacy'; dir: string };

export interface ErofsMount {
  backing: Backing;
  /** The detached mount (new API), else -1. */
  mntFd: number;
  loop: LoopDevice | null;
}

/** What EROFS is told to read: the image fd itself, or a path (/proc/self/fd/N of the image or of its loop device). */
type ErofsSource = { fd: number } | { path: string };

/** Create the EROFS mount from `src`: a detached mount fd (new API), or -1 once mounted on the target directory. */
function createErofs(ctx: MountContext, src: ErofsSource, target: ErofsTarget): number {
  ctx.step('erofs-create');
  if (target.api === 'legacy') {
    if (!('path' in src)) throw new Error('legacy mount(2) takes a path source only');
    sys.mount(src.path, target.dir, 'erofs', sys.MS_RDONLY | sys.MS_SILENT, ctx.info.hasAcl ? null : 'noacl');
    return -1;
  }
  const fsfd = sys.fsopen('erofs');
  try {
    if ('fd' in src) sys.fsconfigFd(fsfd, 'source', src.fd);
    else sys.fsconfigString(fsfd, 'source', src.path);
    sys.fsconfigFlag(fsfd, 'ro');
    if (!ctx.info.hasAcl) sys.fsconfigFlag(fsfd, 'noacl');
    sys.fsconfigCreate(fsfd);
    return fsfd;
  } catch (err) {
    sys.closeQuiet(fsfd);
    throw err;
  }
}

/** One backing rung: the mount, or the kernel's "not supported" for it; any other failure throws. */
function tryBacking(ctx: MountContext, rung: BackingRung, target: ErofsTarget): RungResult<{ fsfd: number; loop: LoopDevice | null }> {
  if (rung.backing === 'loop') {
    ctx.step('loop-attach');
    let loop: LoopDevice;
    try {
      loop = attachLoop(ctx.imgFd, { name: ctx.imagePath ?? '' });
    } catch (err) {
      throw new MountError(`loop device for ${ctx.image}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    }
    ctx.cleanup.fd(loop.fd);
    ctx.step('erofs-loop-source');
    try {
      return { ok: true, value: { fsfd: createErofs(ctx, { path: `/proc/self/fd/${loop.fd}` }, target), loop } };
    } catch (err) {
      throw imageMountError(err, ctx.image);
    }
  }
  const byFd = rung.backing === 'fd';
  ctx.step(byFd ? 'erofs-fd-source' : 'erofs-file-source');
  try {
    const fsfd = createErofs(ctx, byFd ? { fd: ctx.imgFd } : { path: `/proc/self/fd/${ctx.imgFd}` }, target);
    remember(
      ctx,
      byFd
        ? { fact: 'erofsFdSource', answer: { ok: true, why: 'EROFS took the image file descriptor as its source' } }
        : { fact: 'fileBacked', fsType: ctx.imgFsType, answer: { ok: true, why: `file-backed EROFS works on ${fsTypeName(ctx.imgFsType)}` }, ifUnknown: true },
    );
    return { ok: true, value: { fsfd, loop: null } };
  } catch (err) {
    if (byFd && err instanceof sys.FsConfigError && err.key.startsWith('source') && errnoOf(err) === EINVAL) {
      const why = `this kernel's EROFS refuses a file-descriptor source (${kernelSays(err)})`;
      return { ok: false, why, finding: { fact: 'erofsFdSource', answer: { ok: false, why } } };
    }
    if (!byFd && errnoOf(err) === ENOTBLK) {
      const why = `file-backed EROFS is not available for an image on ${fsTypeName(ctx.imgFsType)} (the kernel wants a block device: ENOTBLK)`;
      return { ok: false, why, finding: { fact: 'fileBacked', fsType: ctx.imgFsType, answer: { ok: false, why } } };
    }
    throw imageMountError(err, ctx.image);
  }
}

function backingLine(ctx: MountContext, backing: Backing, loop: LoopDevice | null, forced: boolean, tried: string[]): string {
  const tail = `${forced ? ', forced' : ''}${tried.length ? `; ${tried.join('; ')}` : ''}`;
  if (backing === 'fd') return `backing: fd, EROFS reads the open image file itself, no path and no device${tail}`;
  if (backing === 'file') return `backing: file, file-backed EROFS opens the image through /proc/self/fd/${ctx.imgFd}, no loop device${tail}`;
  return `backing: loop, ${loop!.path} bound read-only with autoclear${loop!.directIo ? ' and direct I/O' : ' (buffered: the backing file cannot do direct I/O)'}${loop!.created ? ', a new device node' : ''}; it unbinds when the mount goes${tail}`;
}

/** Run the backing rungs of `plan` in order onto `target`. */
export function mountErofs(ctx: MountContext, plan: MountPlan, target: ErofsTarget): ErofsMount {
  const tried = [...plan.skipped];
  const forced = plan.backing.some((r) => r.forced);
  for (const rung of plan.backing) {
    const r = tryBacking(ctx, rung, target);
    if (!r.ok) {
      remember(ctx, r.finding);
      ctx.record.push({ stage: 'backing', rung: rung.backing, outcome: 'refused', text: r.why });
      if (rung.forced) throw new MountError(`backing=${rung.backing}: ${r.why}`);
      tried.push(r.why);
      continue;
    }
    let mntFd = -1;
    if (target.api === 'new') {
      ctx.cleanup.fd(r.value.fsfd);
      ctx.step('erofs-fsmount');
      mntFd = ctx.cleanup.fd(sys.fsmount(r.value.fsfd, sys.MOUNT_ATTR_RDONLY));
      if (ctx.usernsFd >= 0) {
        ctx.step('idmap');
        try {
          sys.mountSetattrFd(mntFd, { set: sys.MOUNT_ATTR_IDMAP, usernsFd: ctx.usernsFd });
        } catch (err) {
          throw new MountError(`idmap: cannot idmap the image mount: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
        }
        note(ctx, 'backing', 'idmap', 'idmap: the EROFS mount is idmapped with the given user namespace');
      }
    }
    note(ctx, 'backing', rung.backing, backingLine(ctx, rung.backing, r.value.loop, forced, tried));
    return { backing: rung.backing, mntFd, loop: r.value.loop };
  }
  throw new MountError(`${ctx.image}: no way to back EROFS: ${tried.join('; ')}`);
}
