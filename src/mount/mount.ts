/**
 * Mounting a composefs image: an EROFS mount of the image, combined by
 * overlayfs with the object store directories (data-only lower layers),
 * done the most hidden way the running kernel allows.
 *
 * EROFS backing, best first:
 *   fd    EROFS takes the open image file itself (fsconfig FSCONFIG_SET_FD "source")
 *   file  EROFS opens the image through /proc/self/fd/N (file-backed EROFS)
 *   loop  a loop device bound with LOOP_CONFIGURE: read-only, direct I/O, autoclear
 * Layers, best first:
 *   fd    the EROFS mount stays detached (fsmount) and overlayfs gets it as a
 *         file descriptor (FSCONFIG_SET_FD "lowerdir+"); the basedirs too
 *   path  the EROFS mount is attached on a private temporary directory, given
 *         to overlayfs by path, then detached and the directory removed
 * API: the new mount API, else legacy mount(2) (which implies layers=path).
 *
 * Kill-safety: on the default path every object is a file descriptor
 * (image, fs contexts, detached mounts), so a process killed at any point
 * leaves nothing: the overlay appears only with the final, atomic
 * move_mount(). See `killLeftovers` for what each fallback can leave.
 */
import { closeSync, ftruncateSync, mkdtempSync, openSync, readSync, rmdirSync, writeSync, constants as fsc } from 'node:fs';
import { tmpdir } from 'node:os';
import { TEMP_PREFIX, temporaryBase } from './temp.js';
import { dirname, resolve } from 'node:path';
import { ComposefsError, UsageError, ioError } from '../errors.js';
import { MountError } from './errors.js';
import { SysError, strerror } from '../sys/libc.js';
import { dataExtents } from '../sys/extents.js';
import { fsTypeOf, measureVerity, type VerityMeasurement } from '../sys/fsinfo.js';
import { attachLoop, type LoopDevice } from '../sys/loop.js';
import * as sys from '../sys/mount.js';
import { checkImage, openImageFile, type ImageInfo } from './image.js';
import { fsTypeName, kernel, kernelHasFsverity } from './kernel.js';
import type { Api, Backing, Layers, MountOptions } from './options.js';

export interface MountResult {
  image: string;
  mountpoint: string;
  backing: Backing;
  layers: Layers;
  api: Api;
  readonly: boolean;
  /** Whether overlay verity (verity=require) is on. */
  verity: boolean;
  /** How `digest=` was checked, when given. */
  digest: null | { expected: string; measuredBy: 'kernel' | 'userspace' };
  /** The anonymous private copy, with `private`. */
  privateCopy: null | { dir: string; fsType: string };
  /** The loop device, on the loop path (autoclear: it unbinds when the mount goes). */
  loop: null | { device: string; directIo: boolean; created: boolean };
  /** The temporary directory the EROFS mount sat on during the call, on the path layers (detached and removed before returning). */
  temporaryMount: null | string;
  /** Why each choice was made, one line each. */
  explain: string[];
  /** Wall time of the call in milliseconds. */
  ms: number;
  /** Set when nothing was mounted (`dryRun`); the path fields are then only the defaults. */
  dryRun?: boolean;
}

const DEFAULT_SOURCE = 'composefs';
const O_PATH_DIR = sys.O_PATH | fsc.O_DIRECTORY;
const ENOSYS = 38;
const EINVAL = 22;
const ENOTBLK = 15;
const ENODEV = 19;

/** A stack of undo actions run in reverse, whatever happens. */
class Cleanup {
  private readonly stack: Array<() => void> = [];
  push(fn: () => void): void {
    this.stack.push(fn);
  }
  fd(fd: number): number {
    this.stack.push(() => sys.closeQuiet(fd));
    return fd;
  }
  run(): void {
    while (this.stack.length) {
      try {
        this.stack.pop()!();
      } catch {
        /* keep unwinding */
      }
    }
  }
}

function errnoOf(err: unknown): number {
  return err instanceof SysError ? err.errno : -1;
}

function openDir(path: string, what: string, flags = O_PATH_DIR): number {
  try {
    return openSync(path, flags);
  } catch (err) {
    throw ioError(err, `${what} ${path}`);
  }
}

function mountAttrs(o: MountOptions, readonly: boolean): { attr: number; ms: number } {
  const pairs: Array<[boolean | undefined, number, number]> = [
    [readonly, sys.MOUNT_ATTR_RDONLY, sys.MS_RDONLY],
    [o.nosuid, sys.MOUNT_ATTR_NOSUID, sys.MS_NOSUID],
    [o.nodev, sys.MOUNT_ATTR_NODEV, sys.MS_NODEV],
    [o.noexec, sys.MOUNT_ATTR_NOEXEC, sys.MS_NOEXEC],
    [o.nodiratime, sys.MOUNT_ATTR_NODIRATIME, sys.MS_NODIRATIME],
    [o.atime === 'noatime', sys.MOUNT_ATTR_NOATIME, sys.MS_NOATIME],
    [o.atime === 'strictatime', sys.MOUNT_ATTR_STRICTATIME, sys.MS_STRICTATIME],
  ];
  let attr = 0;
  let ms = 0;
  for (const [on, a, m] of pairs) {
    if (on) {
      attr |= a;
      ms |= m;
    }
  }
  return { attr, ms };
}

/** Escape a path for a legacy overlay option string: backslash before `\`, `,` and `:`. */
function escapeLegacy(s: string): string {
  return s.replace(/[\\,:]/g, (c) => `\\${c}`);
}

interface Plan {
  api: Api | 'auto';
  backing: Backing | 'auto';
  layers: Layers | 'auto';
}

/** The userspace fs-verity digest, loaded only when `digest=` is used (it pulls in node:crypto). */
type DigestOfFd = (fd: number) => Buffer;

/**
 * Mount `image` on `mountpoint`. Rejects with a one-line error on any
 * failure, having left nothing behind.
 */
export async function mountComposefs(image: string | number, mountpoint: string, options: MountOptions): Promise<MountResult> {
  let digestOf: DigestOfFd | null = null;
  if (options.digest !== undefined) {
    const fv = await import('../fsverity/index.js');
    digestOf = (fd) => fv.fsverityDigestOfFileSync(fd).digest;
  }
  return mountComposefsSync(image, mountpoint, options, digestOf);
}

/**
 * The same, synchronously; `digestOf` computes an fs-verity digest in
 * userspace (needed only with `digest`). `image` is a path, or an open file
 * descriptor (left open: the caller owns it), e.g. an anonymous file the image
 * was just written into.
 */
export function mountComposefsSync(imageArg: string | number, mountpoint: string, options: MountOptions, digestOf: DigestOfFd | null = null): MountResult {
  const image = typeof imageArg === 'number' ? `fd ${imageArg}` : imageArg;
  const imagePath = typeof imageArg === 'number' ? null : resolve(imageArg);
  const t0 = performance.now();
  const o = options;
  const step = o.onStep ?? (() => {});
  const explain: string[] = [];
  const plan: Plan = { api: o.api ?? 'auto', backing: o.backing ?? 'auto', layers: o.layers ?? 'auto' };

  // ---- options --------------------------------------------------------------------------
  // resolve('') is the current directory: an empty mountpoint must not mean "here" (the reference gets ENOENT).
  if (mountpoint === '') throw new MountError("mountpoint '': No such file or directory");
  if (!o.basedir || o.basedir.length === 0) throw new UsageError('no basedir given: composefs needs the object store directory (basedir=PATH)');
  if (!!o.upperdir !== !!o.workdir) throw new UsageError('upperdir and workdir must be given together');
  let expected: Buffer | null = null;
  if (o.digest !== undefined) {
    if (!/^[0-9a-fA-F]{64}$/.test(o.digest)) throw new UsageError(`invalid digest '${o.digest}': expected 64 hex digits (an fs-verity SHA-256 digest)`);
    expected = Buffer.from(o.digest, 'hex');
  }
  if (plan.api === 'legacy') {
    if (plan.backing === 'fd') throw new UsageError('backing=fd needs the new mount API (api=legacy given)');
    if (plan.layers === 'fd') throw new UsageError('layers=fd needs the new mount API (api=legacy given)');
    if (o.idmap !== undefined) throw new UsageError('idmap needs the new mount API (api=legacy given)');
  }
  // Without an upper layer overlayfs cannot write anyway: the mount is read-only whatever was asked
  // (mount(8) passes "rw" to helpers by default), so mountinfo does not claim otherwise.
  const readonly = o.upperdir ? (o.readonly ?? false) : true;
  // As the reference, digest= means the objects are checked too; only an explicit tryverity/noverity accepts unchecked ones.
  const verityMode = o.verity ?? (expected ? 'require' : 'off');
  const source = o.source ?? DEFAULT_SOURCE;
  const { attr, ms } = mountAttrs(o, readonly);

  if (o.readonly === false && !o.upperdir) explain.push('rw: ignored, without upperdir the overlay has nothing to write to; mounted read-only');
  const c = new Cleanup();
  try {
    // ---- the places involved ------------------------------------------------------------
    step('open-mountpoint');
    const mnt = resolve(mountpoint);
    const mntFd = c.fd(openDir(mnt, 'mountpoint'));
    const basedirs = o.basedir.map((d) => resolve(d));
    step('open-basedirs');
    const baseFds = basedirs.map((d) => c.fd(openDir(d, 'basedir')));
    let upper: string | undefined;
    let work: string | undefined;
    if (o.upperdir && o.workdir) {
      upper = resolve(o.upperdir);
      work = resolve(o.workdir);
      c.fd(openDir(upper, 'upperdir'));
      c.fd(openDir(work, 'workdir'));
    }
    let usernsFd = -1;
    if (o.idmap !== undefined) {
      if (typeof o.idmap === 'number') usernsFd = o.idmap;
      else {
        try {
          usernsFd = c.fd(openSync(o.idmap, 'r'));
        } catch (err) {
          throw ioError(err, `idmap ${o.idmap}`);
        }
      }
    }

    // ---- the image ----------------------------------------------------------------------
    step('open-image');
    let imgFd = imagePath === null ? (imageArg as number) : c.fd(openImageFile(image));
    const info: ImageInfo = checkImage(imgFd, image);
    let privateCopy: MountResult['privateCopy'] = null;
    // A digest the kernel cannot measure is computed here, from bytes anyone could change before
    // EROFS reads them: check and mount a private copy instead, so what is mounted is what was checked.
    const measured: VerityMeasurement | null = expected && !o.private ? measureVerity(imgFd) : null;
    if (o.private || (measured && !measured.ok)) {
      step('private-copy');
      const dirs = o.privateDirs ?? [...(imagePath ? [dirname(imagePath)] : []), tmpdir(), '/var/tmp', '/dev/shm'];
      const copy = privateCopyOf(imgFd, image, info.spanBytes, dirs, c, explain, o.private ? 'private' : 'digest');
      imgFd = copy.fd;
      privateCopy = { dir: copy.dir, fsType: copy.fsType };
    }

    let digest: MountResult['digest'] = null;
    if (expected) {
      step('digest');
      digest = { expected: o.digest!.toLowerCase(), measuredBy: checkDigest(imgFd, image, expected, explain, measured, digestOf) };
    }

    // ---- verity -------------------------------------------------------------------------
    let verity = false;
    if (verityMode !== 'off') {
      step('verity-probe');
      const v = verityAvailable(basedirs);
      if (v.ok) {
        verity = true;
        explain.push(`verity: overlay verity=require (${v.why})`);
      } else if (verityMode === 'require' && o.verity === undefined) {
        throw new MountError(
          `digest=: the objects cannot be verified, ${v.why}; add tryverity to mount with unchecked objects, or use a kernel and basedir with fs-verity`,
        );
      } else if (verityMode === 'require') {
        throw new MountError(`verity: ${v.why}; overlay verity cannot be enforced (use tryverity to mount without it)`);
      } else {
        explain.push(`verity: off, ${v.why} (${o.verity === 'try' ? 'tryverity' : 'noverity'}: going on without)`);
      }
    } else explain.push('verity: off (not requested)');

    if (o.dryRun) {
      explain.push('dry run: everything checked, nothing mounted');
      return {
        image,
        mountpoint: mnt,
        backing: 'file',
        layers: 'fd',
        api: 'new',
        readonly,
        verity,
        digest,
        privateCopy,
        loop: null,
        temporaryMount: null,
        explain,
        ms: performance.now() - t0,
        dryRun: true,
      };
    }

    // ---- API ----------------------------------------------------------------------------
    let api: Api;
    if (plan.api === 'legacy') {
      api = 'legacy';
      explain.push('api: legacy mount(2) (forced)');
    } else if (kernel.newApi?.ok) {
      api = 'new';
      explain.push(`api: new mount API, fsopen/fsconfig/fsmount/move_mount (${plan.api === 'new' ? 'forced' : kernel.newApi.why})`);
    } else {
      step('probe-api');
      const fsfd = tryFsopen('erofs');
      if (fsfd === null) {
        if (plan.api === 'new') throw new MountError('api=new: this kernel has no new mount API (fsopen: Function not implemented)');
        api = 'legacy';
        explain.push(`api: legacy mount(2) (${kernel.newApi!.why})`);
      } else {
        sys.closeQuiet(fsfd);
        api = 'new';
        explain.push(`api: new mount API, fsopen/fsconfig/fsmount/move_mount (${plan.api === 'new' ? 'forced' : kernel.newApi!.why})`);
      }
    }
    if (api === 'legacy' && (plan.backing === 'fd' || plan.layers === 'fd' || usernsFd >= 0)) {
      throw new MountError(`${plan.backing === 'fd' ? 'backing=fd' : plan.layers === 'fd' ? 'layers=fd' : 'idmap'} needs the new mount API, which this kernel lacks`);
    }

    // ---- EROFS and overlay ----------------------------------------------------------------
    let backing: Backing;
    let layers: Layers;
    let temporaryMount: string | null = null;
    let loop: LoopDevice | null = null;
    if (api === 'new') {
      const er = erofsNewApi(imgFd, image, imagePath, info, plan, usernsFd, c, explain, step);
      backing = er.backing;
      loop = er.loop;
      const spec = { source, verity, upper, work, attr };
      let done = false;
      let refusedFd: string | null = null;
      if (plan.layers !== 'path' && (plan.layers === 'fd' || kernel.overlayFdLayers?.ok !== false)) {
        step('overlay-fd');
        try {
          overlayFdLayers(er.mntFd, baseFds, spec, mntFd, mnt, step);
          done = true;
          kernel.overlayFdLayers ??= { ok: true, why: 'overlayfs took the detached EROFS mount as a file descriptor' };
          explain.push(
            `layers: fd, the EROFS mount stays detached and overlayfs got it as a file descriptor (lowerdir+ via FSCONFIG_SET_FD)${plan.layers === 'fd' ? ', forced' : ''}`,
          );
        } catch (err) {
          if (!(err instanceof LayerFdUnsupported)) throw err;
          if (plan.layers === 'fd') throw new MountError(`layers=fd: ${err.message}`);
          refusedFd = err.message;
        }
      }
      if (done) layers = 'fd';
      else {
        layers = 'path';
        const why = plan.layers === 'path' ? 'forced' : refusedFd ?? kernel.overlayFdLayers?.why ?? 'fd layers not available';
        step('tempdir');
        temporaryMount = withTemporaryMount(
          c,
          (dir) => sys.moveMountTo(er.mntFd, dir),
          (dir) => {
            try {
              overlayPathNewApi(dir, basedirs, spec, mntFd, mnt, step);
            } catch (err) {
              if (!(err instanceof AppendUnsupported)) throw err;
              // An overlayfs without lowerdir+/datadir+ (before 6.7) or without its own fs_context: legacy options.
              explain.push(`overlay: legacy mount(2), ${err.message}`);
              overlayLegacy(dir, basedirs, { source, verity, upper, work, ms }, mnt, explain, step);
            }
          },
          step,
        );
        // Remember the refusal only now that the other way worked: it was about fds, not this mount.
        if (refusedFd) kernel.overlayFdLayers = { ok: false, why: refusedFd };
        explain.push(
          `layers: path, the EROFS mount sat on a private temporary directory while overlayfs was set up, then was detached and the directory removed; the overlay's options name that removed directory (${why})`,
        );
      }
    } else {
      layers = 'path';
      let chosen: { backing: Backing; loop: LoopDevice | null } | null = null;
      step('tempdir');
      temporaryMount = withTemporaryMount(
        c,
        (dir) => {
          chosen = legacyErofs(dir, imgFd, image, imagePath, info, plan, c, explain, step);
        },
        (dir) => overlayLegacy(dir, basedirs, { source, verity, upper, work, ms }, mnt, explain, step),
        step,
      );
      backing = chosen!.backing;
      loop = chosen!.loop;
      explain.push(
        "layers: path, legacy mount(2) takes layers by path only: the EROFS mount sat on a temporary directory, detached and removed before returning; the overlay's options name that removed directory",
      );
    }

    step('done');
    return {
      image,
      mountpoint: mnt,
      backing,
      layers,
      api,
      readonly,
      verity,
      digest,
      privateCopy,
      loop: loop ? { device: loop.path, directIo: loop.directIo, created: loop.created } : null,
      temporaryMount,
      explain,
      ms: performance.now() - t0,
    };
  } catch (err) {
    if (err instanceof ComposefsError) throw err;
    const hint = err instanceof SysError && err.code === 'EPERM' ? ' (mounting needs root: CAP_SYS_ADMIN)' : '';
    throw new MountError(`mounting ${image} on ${mountpoint}: ${err instanceof Error ? err.message : String(err)}${hint}`);
  } finally {
    c.run();
  }
}

function tryFsopen(fsName: string): number | null {
  if (kernel.newApi?.ok === false) return null;
  try {
    const fd = sys.fsopen(fsName);
    kernel.newApi ??= { ok: true, why: 'fsopen() works' };
    return fd;
  } catch (err) {
    const e = errnoOf(err);
    if (e === ENOSYS) {
      kernel.newApi = { ok: false, why: 'fsopen() is not implemented by this kernel' };
      return null;
    }
    if (e === ENODEV) throw new MountError(`this kernel has no ${fsName} file system (fsopen ${fsName}: No such device)`);
    throw err;
  }
}

// ---------------------------------------------------------------------------------------
// EROFS with the new mount API

interface ErofsMount {
  mntFd: number;
  backing: Backing;
  loop: LoopDevice | null;
}

function erofsContext(source: { fd?: number; path?: string }, info: ImageInfo): number {
  const fsfd = sys.fsopen('erofs');
  try {
    if (source.fd !== undefined) sys.fsconfigFd(fsfd, 'source', source.fd);
    else sys.fsconfigString(fsfd, 'source', source.path!);
    sys.fsconfigFlag(fsfd, 'ro');
    if (!info.hasAcl) sys.fsconfigFlag(fsfd, 'noacl');
    return fsfd;
  } catch (err) {
    sys.closeQuiet(fsfd);
    throw err;
  }
}

function erofsNewApi(
  imgFd: number,
  image: string,
  imagePath: string | null,
  info: ImageInfo,
  plan: Plan,
  usernsFd: number,
  c: Cleanup,
  explain: string[],
  step: (s: string) => void,
): ErofsMount {
  let backing: Backing | null = null;
  let fsfd = -1;
  let loop: LoopDevice | null = null;
  const tried: string[] = [];

  // 1. The image fd itself.
  if (plan.backing === 'fd' || (plan.backing === 'auto' && kernel.erofsFdSource?.ok !== false)) {
    step('erofs-fd-source');
    const ctx = sys.fsopen('erofs');
    try {
      sys.fsconfigFd(ctx, 'source', imgFd);
      sys.fsconfigFlag(ctx, 'ro');
      if (!info.hasAcl) sys.fsconfigFlag(ctx, 'noacl');
      step('erofs-create');
      sys.fsconfigCreate(ctx);
      fsfd = ctx;
      backing = 'fd';
      kernel.erofsFdSource = { ok: true, why: 'EROFS took the image file descriptor as its source' };
    } catch (err) {
      sys.closeQuiet(ctx);
      const setFdRefused = err instanceof sys.FsConfigError && err.key.startsWith('source') && errnoOf(err) === EINVAL;
      if (!setFdRefused) throw imageMountError(err, image);
      const why = `this kernel's EROFS refuses a file-descriptor source (${kernelSays(err)})`;
      kernel.erofsFdSource = { ok: false, why };
      if (plan.backing === 'fd') throw new MountError(`backing=fd: ${why}`);
    }
  }
  if (backing === null && kernel.erofsFdSource && !kernel.erofsFdSource.ok) tried.push(kernel.erofsFdSource.why);

  // 2. File-backed EROFS through /proc/self/fd/N.
  if (backing === null && (plan.backing === 'file' || plan.backing === 'auto')) {
    const fsType = fsTypeOf(imgFd);
    const known = kernel.fileBacked.get(fsType);
    if (plan.backing === 'file' || known?.ok !== false) {
      step('erofs-file-source');
      const ctx = erofsContext({ path: `/proc/self/fd/${imgFd}` }, info);
      try {
        step('erofs-create');
        sys.fsconfigCreate(ctx);
        fsfd = ctx;
        backing = 'file';
        if (!known) kernel.fileBacked.set(fsType, { ok: true, why: `file-backed EROFS works on ${fsTypeName(fsType)}` });
      } catch (err) {
        sys.closeQuiet(ctx);
        if (errnoOf(err) !== ENOTBLK) throw imageMountError(err, image);
        const why = `file-backed EROFS is not available for an image on ${fsTypeName(fsType)} (the kernel wants a block device: ENOTBLK)`;
        kernel.fileBacked.set(fsType, { ok: false, why });
        if (plan.backing === 'file') throw new MountError(`backing=file: ${why}`);
      }
    }
    if (backing === null) tried.push(kernel.fileBacked.get(fsType)!.why);
  }

  // 3. A loop device.
  if (backing === null) {
    step('loop-attach');
    loop = attachLoopOrFail(imgFd, image, imagePath);
    c.fd(loop.fd);
    step('erofs-loop-source');
    const ctx = erofsContext({ path: `/proc/self/fd/${loop.fd}` }, info);
    try {
      step('erofs-create');
      sys.fsconfigCreate(ctx);
    } catch (err) {
      sys.closeQuiet(ctx);
      throw imageMountError(err, image);
    }
    fsfd = ctx;
    backing = 'loop';
  }
  c.fd(fsfd);

  step('erofs-fsmount');
  const mntFd = c.fd(sys.fsmount(fsfd, sys.MOUNT_ATTR_RDONLY));
  if (usernsFd >= 0) {
    step('idmap');
    try {
      sys.mountSetattrFd(mntFd, { set: sys.MOUNT_ATTR_IDMAP, usernsFd });
    } catch (err) {
      throw new MountError(`idmap: cannot idmap the image mount: ${err instanceof Error ? err.message : String(err)}`);
    }
    explain.push('idmap: the EROFS mount is idmapped with the given user namespace');
  }

  const forced = plan.backing !== 'auto' ? ', forced' : '';
  if (backing === 'fd') explain.push(`backing: fd, EROFS reads the open image file itself, no path and no device${forced}`);
  else if (backing === 'file')
    explain.push(`backing: file, file-backed EROFS opens the image through /proc/self/fd/${imgFd}, no loop device${forced}${tried.length ? `; ${tried.join('; ')}` : ''}`);
  else
    explain.push(
      `backing: loop, ${loop!.path} bound read-only with autoclear${loop!.directIo ? ' and direct I/O' : ' (buffered: the backing file cannot do direct I/O)'}${loop!.created ? ', a new device node' : ''}; it unbinds when the mount goes${forced}${tried.length ? `; ${tried.join('; ')}` : ''}`,
    );
  return { mntFd, backing, loop };
}

function attachLoopOrFail(imgFd: number, image: string, imagePath: string | null): LoopDevice {
  try {
    return attachLoop(imgFd, { name: imagePath ?? '' });
  } catch (err) {
    throw new MountError(`loop device for ${image}: ${err instanceof Error ? err.message : String(err)}`);
  }
}

function kernelSays(err: unknown): string {
  if (err instanceof sys.FsConfigError && err.kernelLog.length) return `kernel: "${err.kernelLog.map((l) => l.replace(/^[ewi] /, '')).join('; ')}"`;
  return err instanceof SysError ? strerror(err.errno) : String(err);
}

/** The kernel refused the image itself: say so in one line. */
function imageMountError(err: unknown, image: string): Error {
  const e = errnoOf(err);
  if (e === EINVAL || e === 117 /* EUCLEAN */ || e === 74 /* EBADMSG */ || e === 5 /* EIO */ || e === 95 /* EOPNOTSUPP */) {
    return new MountError(`${image}: the kernel refused the image (corrupt or unsupported composefs image: ${strerror(e)})`);
  }
  return err instanceof Error ? err : new Error(String(err));
}

// ---------------------------------------------------------------------------------------
// overlayfs

interface OverlaySpec {
  source: string;
  verity: boolean;
  upper?: string;
  work?: string;
}

/** The kernel cannot take layers as detached-mount file descriptors. */
class LayerFdUnsupported extends Error {}

function overlayCommon(fsfd: number, s: OverlaySpec): void {
  sys.fsconfigString(fsfd, 'source', s.source);
  sys.fsconfigString(fsfd, 'metacopy', 'on');
  sys.fsconfigString(fsfd, 'redirect_dir', 'on');
  if (s.verity) sys.fsconfigString(fsfd, 'verity', 'require');
}

function overlayUpper(fsfd: number, s: OverlaySpec): void {
  if (s.upper && s.work) {
    sys.fsconfigString(fsfd, 'upperdir', s.upper);
    sys.fsconfigString(fsfd, 'workdir', s.work);
  }
}

function overlayFdLayers(
  erofsMnt: number,
  baseFds: number[],
  s: OverlaySpec & { attr: number },
  mntFd: number,
  mnt: string,
  step: (s: string) => void,
): void {
  const fsfd = sys.fsopen('overlay');
  try {
    overlayCommon(fsfd, s);
    try {
      sys.fsconfigFd(fsfd, 'lowerdir+', erofsMnt);
      for (const fd of baseFds) sys.fsconfigFd(fsfd, 'datadir+', fd);
    } catch (err) {
      if (errnoOf(err) === EINVAL) throw new LayerFdUnsupported(`overlayfs refuses layers as file descriptors (${kernelSays(err)})`);
      throw err;
    }
    overlayUpper(fsfd, s);
    step('overlay-create');
    try {
      sys.fsconfigCreate(fsfd);
    } catch (err) {
      // A kernel that takes fds but not detached mounts (before 6.15) fails here with EINVAL.
      if (errnoOf(err) === EINVAL && !(err instanceof sys.FsConfigError && err.kernelLog.length)) {
        throw new LayerFdUnsupported(`overlayfs refused the detached EROFS mount as a layer (${kernelSays(err)})`);
      }
      throw overlayError(err);
    }
    attachOverlay(fsfd, s.attr, mnt, mntFd, step);
  } finally {
    sys.closeQuiet(fsfd);
  }
}

/** Turn a configured overlay context into a mount and move it onto the mountpoint. */
function attachOverlay(fsfd: number, attr: number, mnt: string, mntFd: number, step: (s: string) => void): void {
  step('overlay-fsmount');
  const om = sys.fsmount(fsfd, attr);
  try {
    step('move-mount');
    sys.moveMountTo(om, mnt, mntFd);
  } finally {
    sys.closeQuiet(om);
  }
}

/** overlayfs refuses appending layers (lowerdir+/datadir+) through fsconfig. */
class AppendUnsupported extends Error {}

function overlayPathNewApi(
  lower: string,
  basedirs: string[],
  s: OverlaySpec & { attr: number },
  mntFd: number,
  mnt: string,
  step: (s: string) => void,
): void {
  const fsfd = sys.fsopen('overlay');
  try {
    try {
      overlayCommon(fsfd, s);
      sys.fsconfigString(fsfd, 'lowerdir+', lower);
      for (const d of basedirs) sys.fsconfigString(fsfd, 'datadir+', d);
    } catch (err) {
      if (errnoOf(err) === EINVAL) throw new AppendUnsupported(`this overlayfs refuses layers through fsconfig (${kernelSays(err)})`);
      throw overlayError(err);
    }
    overlayUpper(fsfd, s);
    step('overlay-create');
    try {
      sys.fsconfigCreate(fsfd);
    } catch (err) {
      // Without its own fs_context, overlayfs only sees the options at create time.
      if (errnoOf(err) === EINVAL && !(err instanceof sys.FsConfigError && err.kernelLog.length)) {
        throw new AppendUnsupported(`this overlayfs refused the appended layers (${kernelSays(err)})`);
      }
      throw overlayError(err);
    }
    attachOverlay(fsfd, s.attr, mnt, mntFd, step);
  } finally {
    sys.closeQuiet(fsfd);
  }
}

function overlayLegacy(
  lower: string,
  basedirs: string[],
  s: OverlaySpec & { ms: number },
  mnt: string,
  explain: string[],
  step: (s: string) => void,
): void {
  const build = (sep: string) =>
    [
      'metacopy=on',
      'redirect_dir=on',
      `lowerdir=${[escapeLegacy(lower), ...basedirs.map(escapeLegacy)].join(sep)}`,
      ...(s.upper && s.work ? [`upperdir=${escapeLegacy(s.upper)}`, `workdir=${escapeLegacy(s.work)}`] : []),
      ...(s.verity ? ['verity=require'] : []),
    ].join(',');
  step('move-mount');
  if (kernel.overlayDataOnly?.ok !== false) {
    try {
      sys.mount(s.source, mnt, 'overlay', s.ms | sys.MS_SILENT, build('::'));
      kernel.overlayDataOnly ??= { ok: true, why: 'overlayfs knows data-only lower layers' };
      return;
    } catch (err) {
      if (errnoOf(err) !== EINVAL) throw overlayError(err);
      kernel.overlayDataOnly = { ok: false, why: 'overlayfs refused "::" data-only layers' };
    }
  }
  // Older overlayfs: the basedirs become ordinary lower layers (the image's whiteouts hide them).
  explain.push(`overlay: ${kernel.overlayDataOnly!.why}; basedirs mounted as ordinary lower layers`);
  try {
    sys.mount(s.source, mnt, 'overlay', s.ms, build(':'));
  } catch (err) {
    throw overlayError(err);
  }
}

function overlayError(err: unknown): Error {
  if (err instanceof ComposefsError) return err;
  return new MountError(`overlayfs: ${err instanceof Error ? err.message : String(err)}`);
}

/**
 * Run `setup` on a fresh private temporary directory (mode 0700), attach the
 * EROFS mount there, run `use`, then always detach and remove the directory.
 */
function withTemporaryMount(c: Cleanup, attach: (dir: string) => void, use: (dir: string) => void, step: (s: string) => void): string {
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
  c.push(undo);
  step('temp-attach');
  attach(dir);
  mounted = true;
  use(dir);
  step('temp-detach');
  undo();
  return dir;
}

// ---------------------------------------------------------------------------------------
// legacy mount(2)

/** Mount EROFS on `dir` with mount(2): file-backed when the kernel can, else through a loop device. */
function legacyErofs(
  dir: string,
  imgFd: number,
  image: string,
  imagePath: string | null,
  info: ImageInfo,
  plan: Plan,
  c: Cleanup,
  explain: string[],
  step: (s: string) => void,
): { backing: Backing; loop: LoopDevice | null } {
  const data = info.hasAcl ? null : 'noacl';
  const flags = sys.MS_RDONLY | sys.MS_SILENT;
  const fsType = fsTypeOf(imgFd);
  const forced = plan.backing !== 'auto' ? ', forced' : '';
  if (plan.backing === 'file' || (plan.backing === 'auto' && kernel.fileBacked.get(fsType)?.ok !== false)) {
    step('erofs-file-source');
    try {
      sys.mount(`/proc/self/fd/${imgFd}`, dir, 'erofs', flags, data);
      kernel.fileBacked.set(fsType, { ok: true, why: `file-backed EROFS works on ${fsTypeName(fsType)}` });
      explain.push(`backing: file, file-backed EROFS opens the image through /proc/self/fd/${imgFd}, no loop device${forced}`);
      return { backing: 'file', loop: null };
    } catch (err) {
      if (errnoOf(err) !== ENOTBLK) throw imageMountError(err, image);
      const why = `file-backed EROFS is not available for an image on ${fsTypeName(fsType)} (the kernel wants a block device: ENOTBLK)`;
      kernel.fileBacked.set(fsType, { ok: false, why });
      if (plan.backing === 'file') throw new MountError(`backing=file: ${why}`);
    }
  }
  step('loop-attach');
  const loop = attachLoopOrFail(imgFd, image, imagePath);
  c.fd(loop.fd);
  step('erofs-loop-source');
  try {
    sys.mount(`/proc/self/fd/${loop.fd}`, dir, 'erofs', flags, data);
  } catch (err) {
    throw imageMountError(err, image);
  }
  const tried = kernel.fileBacked.get(fsType);
  explain.push(
    `backing: loop, ${loop.path} bound read-only with autoclear${loop.directIo ? ' and direct I/O' : ''}${loop.created ? ', a new device node' : ''}; it unbinds when the mount goes${forced}${tried && !tried.ok ? `; ${tried.why}` : ''}`,
  );
  return { backing: 'loop', loop };
}

// ---------------------------------------------------------------------------------------
// private copy, digest, verity

/**
 * Copy the image into an anonymous O_TMPFILE file in the first of `dirs`
 * that takes one; return a read-only descriptor of the copy. `label` is the
 * option that asked for it, for --explain.
 */
function privateCopyOf(
  srcFd: number,
  image: string,
  span: number,
  dirs: string[],
  c: Cleanup,
  explain: string[],
  label: 'private' | 'digest',
): { fd: number; dir: string; fsType: string } {
  const O_TMPFILE = sys.O__TMPFILE | fsc.O_DIRECTORY;
  const refused: string[] = [];
  for (const dir of dirs) {
    let rw: number;
    try {
      rw = openSync(dir, O_TMPFILE | fsc.O_RDWR | fsc.O_EXCL, 0o400);
    } catch (err) {
      refused.push(ioError(err, dir).message);
      continue;
    }
    try {
      copySparse(srcFd, rw, span);
      // Keep only a read-only descriptor: once the writable one is closed nobody can change the copy.
      const ro = c.fd(openSync(`/proc/self/fd/${rw}`, fsc.O_RDONLY));
      const fsType = fsTypeName(fsTypeOf(ro));
      const why = label === 'private' ? 'private: the image was copied' : 'digest: the kernel cannot measure the image, so it was copied';
      explain.push(
        `${why} into an anonymous O_TMPFILE file in ${dir} (${fsType}), ${span} bytes as the superblock says, holes kept, now open read-only and linked nowhere; it lives exactly as long as the mount`,
      );
      return { fd: ro, dir, fsType };
    } catch (err) {
      refused.push(ioError(err, dir).message);
    } finally {
      sys.closeQuiet(rw);
    }
  }
  throw new MountError(`${label}: cannot make an anonymous copy of ${image}: ${refused.join('; ')}`);
}

/**
 * Copy the first `span` bytes of `src` (the image as its superblock sizes
 * it, not whatever the file holds after it) into `dst`, writing only the
 * data extents: a hole stays a hole, so an 8 GiB sparse file holding a small
 * image costs the image's blocks, not 8 GiB.
 */
function copySparse(src: number, dst: number, span: number): void {
  const buf = Buffer.allocUnsafe(Math.min(span, 1 << 20) || 1);
  for (const [start, end] of dataExtents(src, span)) {
    let pos = start;
    while (pos < end) {
      const n = readSync(src, buf, 0, Math.min(buf.length, end - pos), pos);
      if (n === 0) throw new Error('image shrank while being copied');
      let w = 0;
      while (w < n) w += writeSync(dst, buf, w, n - w, pos + w);
      pos += n;
    }
  }
  ftruncateSync(dst, span);
}

function checkDigest(
  fd: number,
  image: string,
  expected: Buffer,
  explain: string[],
  original: VerityMeasurement | null,
  digestOf: DigestOfFd | null,
): 'kernel' | 'userspace' {
  const m = original?.ok ? original : measureVerity(fd);
  let actual: Buffer;
  if (m.ok) actual = m.digest;
  else {
    if (!digestOf) throw new Error('digest given but no userspace fs-verity digest function (use mountComposefs)');
    // A fresh open file description reads from offset 0, whatever the caller's fd did.
    const own = openSync(`/proc/self/fd/${fd}`, 'r');
    try {
      actual = digestOf(own);
    } finally {
      closeSync(own);
    }
  }
  if (!actual.equals(expected)) {
    throw new MountError(`${image}: wrong fs-verity digest: expected ${expected.toString('hex')}, the image has ${actual.toString('hex')}`);
  }
  const cannot = original && !original.ok ? original : m;
  const reason = m.ok
    ? 'measured by the kernel (FS_IOC_MEASURE_VERITY)'
    : `computed in userspace on the private copy that is mounted, the kernel cannot measure the image (${!cannot.ok && cannot.reason === 'no-verity' ? 'fs-verity not enabled on it' : 'no fs-verity support'})`;
  explain.push(`digest: matches, ${reason}`);
  return m.ok ? 'kernel' : 'userspace';
}

/** Can overlay verity work here? Asks the basedirs' file systems, and the kernel for the reason. */
function verityAvailable(basedirs: string[]): { ok: boolean; why: string } {
  for (const d of basedirs) {
    let fd: number;
    try {
      fd = openSync(d, fsc.O_RDONLY | fsc.O_DIRECTORY);
    } catch (err) {
      throw ioError(err, `basedir ${d}`);
    }
    let m;
    try {
      m = measureVerity(fd);
    } finally {
      closeSync(fd);
    }
    if (m.ok || m.reason === 'no-verity') continue;
    if (kernel.fsverity === undefined) {
      const has = kernelHasFsverity();
      kernel.fsverity =
        has === false
          ? { ok: false, why: 'this kernel lacks fs-verity (built without CONFIG_FS_VERITY)' }
          : { ok: true, why: has === true ? 'this kernel has fs-verity' : 'unknown' };
    }
    if (!kernel.fsverity.ok) return { ok: false, why: kernel.fsverity.why };
    return { ok: false, why: `the file system of basedir ${d} does not support fs-verity (${strerror(m.errno)})` };
  }
  return { ok: true, why: 'fs-verity is available on every basedir' };
}
