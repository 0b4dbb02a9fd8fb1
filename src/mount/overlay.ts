/**
 * The layers stage: overlayfs over the EROFS mount and the object store.
 * fd layers hand the detached EROFS mount to overlayfs as a file descriptor;
 * path layers put it on a private temporary directory and name that, the
 * overlay made through fsconfig or, where overlayfs lacks that, mount(2).
 */
import { mkdtempSync, rmdirSync } from 'node:fs';
import * as sys from '../sys/mount.js';
import { ComposefsError } from '../errors.js';
import { MountError } from './errors.js';
import { errnoOf, EINVAL, kernelSays, note, remember, silentEinval, type MountContext, type RungResult } from './context.js';
import type { ErofsMount } from './backing.js';
import type { LayersRung, OverlayBy } from './plan.js';
import { TEMP_PREFIX, temporaryBase } from './temp.js';

export function overlayError(err: unknown): Error {
  if (err instanceof ComposefsError) return err;
  return new MountError(`overlayfs: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
}

/** The lower layers as overlayfs gets them through fsconfig: file descriptors, or paths. */
type Lowers = { fds: { erofs: number; bases: number[] } } | { paths: { erofs: string; bases: string[] } };

/** The words for a refusal, which differ with how the layers were given. */
const refusals = {
  fds: { config: 'overlayfs refuses layers as file descriptors', create: 'overlayfs refused the detached EROFS mount as a layer' },
  paths: { config: 'this overlayfs refuses layers through fsconfig', create: 'this overlayfs refused the appended layers' },
};

/**
 * An overlay through fsconfig, moved onto the mountpoint (or, with
 * `keepDetached`, its detached mount fd returned; else -1). Refused (not
 * thrown) when overlayfs cannot take the layers this way: EINVAL while
 * appending them, or a silent EINVAL at create (fds before 6.15, an overlayfs
 * without its own fs_context).
 */
function overlayByFsconfig(ctx: MountContext, lowers: Lowers): RungResult<number> {
  const words = 'fds' in lowers ? refusals.fds : refusals.paths;
  const fsfd = sys.fsopen('overlay');
  try {
    try {
      sys.fsconfigString(fsfd, 'source', ctx.source);
      sys.fsconfigString(fsfd, 'metacopy', 'on');
      sys.fsconfigString(fsfd, 'redirect_dir', 'on');
      if (ctx.verity) sys.fsconfigString(fsfd, 'verity', 'require');
      if ('fds' in lowers) {
        sys.fsconfigFd(fsfd, 'lowerdir+', lowers.fds.erofs);
        for (const fd of lowers.fds.bases) sys.fsconfigFd(fsfd, 'datadir+', fd);
      } else {
        sys.fsconfigString(fsfd, 'lowerdir+', lowers.paths.erofs);
        for (const d of lowers.paths.bases) sys.fsconfigString(fsfd, 'datadir+', d);
      }
    } catch (err) {
      if (errnoOf(err) === EINVAL) return { ok: false, why: `${words.config} (${kernelSays(err)})` };
      throw overlayError(err);
    }
    if (ctx.upper && ctx.work) {
      sys.fsconfigString(fsfd, 'upperdir', ctx.upper);
      sys.fsconfigString(fsfd, 'workdir', ctx.work);
    }
    ctx.step('overlay-create');
    try {
      if (ctx.asOverlayCreator) ctx.asOverlayCreator(() => sys.fsconfigCreate(fsfd));
      else sys.fsconfigCreate(fsfd);
    } catch (err) {
      if (silentEinval(err)) return { ok: false, why: `${words.create} (${kernelSays(err)})` };
      throw overlayError(err);
    }
    ctx.step('overlay-fsmount');
    const om = sys.fsmount(fsfd, ctx.attr);
    if (ctx.keepDetached) return { ok: true, value: om };
    try {
      ctx.step('move-mount');
      sys.moveMountTo(om, ctx.mnt, ctx.mntFd);
    } finally {
      sys.closeQuiet(om);
    }
    return { ok: true, value: -1 };
  } finally {
    sys.closeQuiet(fsfd);
  }
}

/** Escape a path for a legacy overlay option string: backslash before `\`, `,` and `:`. */
function escapeLegacy(s: string): string {
  return s.replace(/[\\,:]/g, (c) => `\\${c}`);
}

/** An overlay by legacy mount(2) over the EROFS mount on `lower`; the basedirs data-only ("::") where overlayfs knows that. */
function overlayByMount2(ctx: MountContext, lower: string): void {
  const options = (sep: string) =>
    [
      'metacopy=on',
      'redirect_dir=on',
      `lowerdir=${[escapeLegacy(lower), ...ctx.basedirs.map(escapeLegacy)].join(sep)}`,
      ...(ctx.upper && ctx.work ? [`upperdir=${escapeLegacy(ctx.upper)}`, `workdir=${escapeLegacy(ctx.work)}`] : []),
      ...(ctx.verity ? ['verity=require'] : []),
    ].join(',');
  ctx.step('move-mount');
  if (ctx.knowledge.overlayDataOnly?.ok !== false) {
    try {
      sys.mount(ctx.source, ctx.mnt, 'overlay', ctx.msFlags | sys.MS_SILENT, options('::'));
      remember(ctx, { fact: 'overlayDataOnly', answer: { ok: true, why: 'overlayfs knows data-only lower layers' }, ifUnknown: true });
      return;
    } catch (err) {
      if (errnoOf(err) !== EINVAL) throw overlayError(err);
      remember(ctx, { fact: 'overlayDataOnly', answer: { ok: false, why: 'overlayfs refused "::" data-only layers' } });
    }
  }
  // Older overlayfs: the basedirs become ordinary lower layers (the image's whiteouts hide them).
  note(ctx, 'overlay', 'mount2-plain', `overlay: ${ctx.knowledge.overlayDataOnly!.why}; basedirs mounted as ordinary lower layers`);
  try {
    sys.mount(ctx.source, ctx.mnt, 'overlay', ctx.msFlags, options(':'));
  } catch (err) {
    throw overlayError(err);
  }
}

/** The overlay over the EROFS mount sitting on `dir`, by the first of `ways` that this overlayfs takes; its detached mount fd with `keepDetached`, else -1. */
function overlayOverPath(ctx: MountContext, dir: string, ways: OverlayBy[]): number {
  for (const way of ways) {
    if (way === 'mount2') {
      // mount(2) makes no detached mount, and its overlay is created without asOverlayCreator.
      if (ctx.keepDetached || ctx.asOverlayCreator) throw new MountError('overlayfs: this kernel takes the layers by mount(2) only, which cannot make a detached overlay');
      overlayByMount2(ctx, dir);
      return -1;
    }
    const r = overlayByFsconfig(ctx, { paths: { erofs: dir, bases: ctx.basedirs } });
    if (r.ok) return r.value;
    // An overlayfs without lowerdir+/datadir+ (before 6.7) or without its own fs_context: legacy options.
    ctx.record.push({ stage: 'overlay', rung: way, outcome: 'refused', text: r.why });
    note(ctx, 'overlay', 'mount2', `overlay: legacy mount(2), ${r.why}`);
  }
  throw new MountError('no way to give overlayfs its layers');
}

/**
 * Run `attach` on a fresh private temporary directory (mode 0700), then
 * `use`, then always detach and remove the directory.
 */
export function withTemporaryMount(ctx: MountContext, attach: (dir: string) => void, use: (dir: string) => void): string {
  ctx.step('tempdir');
  const dir = mkdtempSync(`${temporaryBase()}/${TEMP_PREFIX}${process.pid}-`);
  let mounted = false;
  const undo = () => {
    if (mounted) {
      try {
        sys.umount2(dir, sys.MNT_DETACH);
      } catch {
        /* already gone */
      }
      mounted = false;
    }
    try {
      rmdirSync(dir);
    } catch {
      /* already gone */
    }
  };
  ctx.cleanup.push(undo);
  ctx.step('temp-attach');
  attach(dir);
  mounted = true;
  use(dir);
  ctx.step('temp-detach');
  undo();
  return dir;
}

const PATH_LINE =
  "layers: path, the EROFS mount sat on a private temporary directory while overlayfs was set up, then was detached and the directory removed; the overlay's options name that removed directory";
const LEGACY_PATH_LINE =
  "layers: path, legacy mount(2) takes layers by path only: the EROFS mount sat on a temporary directory, detached and removed before returning; the overlay's options name that removed directory";

/**
 * Run the layers rungs in order over a detached EROFS mount (new API).
 * Returns the layers used, the temporary directory, if any, and with
 * `keepDetached` the overlay's detached mount fd (else -1; the caller owns it).
 */
export function mountLayers(ctx: MountContext, rungs: LayersRung[], erofs: ErofsMount): { layers: 'fd' | 'path'; temporaryMount: string | null; overlayFd: number } {
  let refusedFd: string | null = null;
  for (const rung of rungs) {
    if (rung.layers === 'fd') {
      ctx.step('overlay-fd');
      const r = overlayByFsconfig(ctx, { fds: { erofs: erofs.mntFd, bases: ctx.baseFds } });
      if (r.ok) {
        remember(ctx, { fact: 'overlayFdLayers', answer: { ok: true, why: 'overlayfs took the detached EROFS mount as a file descriptor' }, ifUnknown: true });
        note(ctx, 'layers', 'fd', `layers: fd, the EROFS mount stays detached and overlayfs got it as a file descriptor (lowerdir+ via FSCONFIG_SET_FD)${rung.forced ? ', forced' : ''}`);
        return { layers: 'fd', temporaryMount: null, overlayFd: r.value };
      }
      ctx.record.push({ stage: 'layers', rung: 'fd', outcome: 'refused', text: r.why });
      if (rung.forced) throw new MountError(`layers=fd: ${r.why}`);
      refusedFd = r.why;
      continue;
    }
    const why = rung.forced ? 'forced' : refusedFd ?? ctx.knowledge.overlayFdLayers?.why ?? 'fd layers not available';
    let overlayFd = -1;
    const temporaryMount = withTemporaryMount(
      ctx,
      (dir) => sys.moveMountTo(erofs.mntFd, dir),
      (dir) => {
        overlayFd = overlayOverPath(ctx, dir, rung.overlayBy);
      },
    );
    // Remember the refusal only now that the other way worked: it was about fds, not this mount.
    if (refusedFd) remember(ctx, { fact: 'overlayFdLayers', answer: { ok: false, why: refusedFd } });
    note(ctx, 'layers', 'path', `${PATH_LINE} (${why})`);
    return { layers: 'path', temporaryMount, overlayFd };
  }
  throw new MountError('no way to give overlayfs its layers');
}

/** Legacy mount(2): EROFS on a temporary directory (by `mountErofsOn`), the overlay by mount(2) over it. */
export function mountLegacy(ctx: MountContext, mountErofsOn: (dir: string) => void): string {
  const temporaryMount = withTemporaryMount(ctx, mountErofsOn, (dir) => overlayOverPath(ctx, dir, ['mount2']));
  note(ctx, 'layers', 'path', LEGACY_PATH_LINE);
  return temporaryMount;
}
