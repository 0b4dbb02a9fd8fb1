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
import { closeSync, ftruncateSync, openSync, readSync, writeSync, constants as fsc } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, resolve } from 'node:path';
import { ComposefsError, UsageError, ioError } from '../errors.js';
import { printable } from '../printable.js';
import { SysError } from '../sys/libc.js';
import { dataExtents } from '../sys/extents.js';
import { loopControlExists } from '../sys/loop.js';
import { fsTypeOf, measureVerity, type VerityMeasurement } from '../sys/fsinfo.js';
import * as sys from '../sys/mount.js';
import { mountErofs, type ErofsMount } from './backing.js';
import { anonymousFile } from './anonymous.js';
import { Cleanup, type MountContext } from './context.js';
import { MountError } from './errors.js';
import { checkImage, openImageFile, type ImageInfo } from './image.js';
import { kernel, learn, type KernelKnowledge } from './kernel.js';
import { climbRungs, explainRecord, registeredMountRungs, type Attempt, type LadderMount, type RungResult } from './ladder.js';
import type { Api, Backing, Layers, MountOptions } from './options.js';
import { mountLayers, mountLegacy } from './overlay.js';
import { planMount, type PlanRequest } from './plan.js';
import { verityAvailable } from './verity.js';

/** What the kernel rung mounted, and how. */
export interface MountResult extends RungResult {
  rung: 'kernel';
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
  /** Set when nothing was mounted (`dryRun`); the path fields are then only the defaults. */
  dryRun?: boolean;
}

const DEFAULT_SOURCE = 'composefs';
const O_PATH_DIR = sys.O_PATH | fsc.O_DIRECTORY;
const ENOSYS = 38;
const ENODEV = 19;

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

/** The userspace fs-verity digest, loaded only when `digest=` is used (it pulls in node:crypto). */
/** The fs-verity digest of an open file, `sha512` when `long` (a 64-byte digest), else SHA-256's. */
type DigestOfFd = (fd: number, long: boolean) => Buffer;

/**
 * Mount `image` on `mountpoint` by the ladder (src/mount/ladder.ts): the
 * kernel rung first, then each registered rung that takes over when the
 * kernel path lacks privilege or cannot check objects the request requires
 * checked (FUSE, once registered: the entry points, `cfs mount` and the
 * package's src/index.ts, import src/fuse/register.ts); a rung asked for by
 * name (`fuse: true`) is the only one tried. Rejects with a one-line
 * ComposefsError on any failure, having left nothing behind. The result's
 * `rung` says which rung mounted it (`isKernelMount` narrows to the kernel's
 * MountResult); its explain starts with why that rung was taken.
 */
export async function mountImage(image: string | number, mountpoint: string, options: MountOptions): Promise<LadderMount<MountResult | RungResult>> {
  const rungs = registeredMountRungs();
  if (options.fuse === true && !rungs.some((r) => r.asked(options))) throw new MountError('fuse: no FUSE mount path is registered (import src/fuse/register.js, as the cfs command and the package entry do)');
  if (options.service === true && !rungs.some((r) => r.asked(options))) throw new MountError('service: no mount service rung is registered (import src/service/register.js, as the cfs command and the package entry do)');
  return climbRungs(image, mountpoint, options, rungs, mountComposefs);
}

/** Whether a rung's result is the kernel rung's. */
export function isKernelMount(result: RungResult): result is MountResult {
  return result.rung === 'kernel';
}

/**
 * The kernel rung: mount `image` on `mountpoint` with EROFS and overlayfs.
 * Rejects with a one-line ComposefsError on any failure, having left nothing
 * behind (a `MountError` with `privilege` when the kernel said EPERM, with
 * `unverifiable` when the request requires checked objects and the kernel
 * or a basedir lacks fs-verity: the ladder then takes the FUSE server).
 */
export async function mountComposefs(image: string | number, mountpoint: string, options: MountOptions): Promise<MountResult> {
  let digestOf: DigestOfFd | null = null;
  if (options.digest !== undefined) {
    const fv = await import('../fsverity/index.js');
    digestOf = (fd, long) => fv.fsverityDigestOfFileSync(fd, { algorithm: long ? 'sha512' : 'sha256' }).digest;
  }
  return mountComposefsSync(image, mountpoint, options, digestOf);
}

/**
 * The kernel rung, synchronously; `digestOf` computes an fs-verity digest in
 * userspace (needed only with `digest`). `image` is a path, or an open file
 * descriptor (left open: the caller owns it), e.g. an anonymous file the image
 * was just written into. `knowledge` is what is known of the kernel: read to
 * plan, and added to by what this mount finds out.
 */
export function mountComposefsSync(
  imageArg: string | number,
  mountpoint: string,
  options: MountOptions,
  digestOf: DigestOfFd | null = null,
  knowledge: KernelKnowledge = kernel,
): MountResult {
  const image = typeof imageArg === 'number' ? `fd ${imageArg}` : imageArg;
  const imagePath = typeof imageArg === 'number' ? null : resolve(imageArg);
  const t0 = performance.now();
  const o = options;
  const step = o.onStep ?? (() => {});
  const record: Attempt[] = [];
  const say = (text: string) => record.push({ stage: 'check', rung: 'check', outcome: 'note', text });
  const request: PlanRequest = { api: o.api ?? 'auto', backing: o.backing ?? 'auto', layers: o.layers ?? 'auto', idmap: o.idmap !== undefined };

  // ---- options --------------------------------------------------------------------------
  // resolve('') is the current directory: an empty mountpoint must not mean "here" (the reference gets ENOENT).
  if (mountpoint === '') throw new MountError("mountpoint '': No such file or directory");
  if (!o.basedir || o.basedir.length === 0) throw new UsageError('no basedir given: composefs needs the object store directory (basedir=PATH)');
  if (!!o.upperdir !== !!o.workdir) throw new UsageError('upperdir and workdir must be given together');
  let expected: Buffer | null = null;
  if (o.digest !== undefined) {
    if (!/^(?:[0-9a-fA-F]{64}){1,2}$/.test(o.digest)) {
      throw new UsageError(`invalid digest '${printable(o.digest.slice(0, 140))}': expected 64 hex digits (an fs-verity SHA-256 digest) or 128 (SHA-512)`);
    }
    expected = Buffer.from(o.digest, 'hex');
  }
  if (request.api === 'legacy') {
    // What legacy mount(2) cannot do is a usage mistake when legacy was asked for: refused before anything is opened.
    const legacy = planMount(request, { newApi: false, loopDevices: true });
    if (!legacy.ok) throw new UsageError(legacy.reason);
  }
  // Without an upper layer overlayfs cannot write anyway: the mount is read-only whatever was asked
  // (mount(8) passes "rw" to helpers by default), so mountinfo does not claim otherwise.
  const readonly = o.upperdir ? (o.readonly ?? false) : true;
  // As the reference, digest= means the objects are checked too; only an explicit tryverity/noverity accepts unchecked ones.
  const verityMode = o.verity ?? (expected ? 'require' : 'off');
  const { attr, ms } = mountAttrs(o, readonly);

  if (o.readonly === false && !o.upperdir) say('rw: ignored, without upperdir the overlay has nothing to write to; mounted read-only');
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
      const copy = privateCopyOf(imgFd, image, info.spanBytes, dirs, c, say, o.private ? 'private' : 'digest');
      imgFd = copy.fd;
      privateCopy = { dir: copy.dir, fsType: copy.fsType };
    }

    let digest: MountResult['digest'] = null;
    if (expected) {
      step('digest');
      digest = { expected: o.digest!.toLowerCase(), measuredBy: checkDigest(imgFd, image, expected, say, measured, digestOf) };
    }

    // ---- verity -------------------------------------------------------------------------
    let verity = false;
    if (verityMode !== 'off') {
      step('verity-probe');
      const v = verityAvailable(
        basedirs.map((d) => ({
          name: `basedir ${d}`,
          open: () => {
            try {
              return openSync(d, fsc.O_RDONLY | fsc.O_DIRECTORY);
            } catch (err) {
              throw ioError(err, `basedir ${d}`);
            }
          },
        })),
        knowledge,
      );
      if (v.ok) {
        verity = true;
        say(`verity: overlay verity=require (${v.why})`);
      } else if (verityMode === 'require') {
        // Not the end of the mount: the ladder hands this over to a rung that checks the objects
        // itself (the FUSE server), unless the request rules that out (fuse=no, or the kernel rung alone).
        const asked = o.verity === undefined ? 'digest=' : 'verity';
        throw new MountError(
          `${asked}: the kernel cannot verify the objects, ${v.why}; the FUSE server verifies them itself (--fuse), or add tryverity to mount them unchecked`,
          { unverifiable: `${asked} requires verified objects and the kernel cannot check them: ${v.why}` },
        );
      } else {
        say(`verity: off, ${v.why} (${o.verity === 'try' ? 'tryverity' : 'noverity'}: going on without)`);
      }
    } else say('verity: off (not requested)');

    const result = (fields: Pick<MountResult, 'backing' | 'layers' | 'api' | 'loop' | 'temporaryMount'>): MountResult => ({
      rung: 'kernel',
      image,
      mountpoint: mnt,
      ...fields,
      readonly,
      verity,
      digest,
      privateCopy,
      explain: explainRecord(record),
      ms: performance.now() - t0,
    });
    if (o.dryRun) {
      say('dry run: everything checked, nothing mounted');
      return { ...result({ backing: 'file', layers: 'fd', api: 'new', loop: null, temporaryMount: null }), dryRun: true };
    }

    // ---- the plan -----------------------------------------------------------------------
    const newApi = request.api === 'legacy' ? false : knownNewApi(knowledge, step);
    const loopDevices = (knowledge.loopDevices ??= loopControlExists());
    const imgFsType = fsTypeOf(imgFd);
    const plan = planMount(request, {
      newApi,
      erofsFdSource: knowledge.erofsFdSource,
      fileBacked: knowledge.fileBacked.get(imgFsType),
      overlayFdLayers: knowledge.overlayFdLayers,
      loopDevices,
    });
    if (!plan.ok) throw new MountError(plan.reason);
    const apiWhy = request.api === 'legacy' ? 'forced' : plan.api === 'new' && request.api === 'new' ? 'forced' : knowledge.newApi!.why;
    record.push({
      stage: 'api',
      rung: plan.api,
      outcome: 'used',
      text: plan.api === 'new' ? `api: new mount API, fsopen/fsconfig/fsmount/move_mount (${apiWhy})` : `api: legacy mount(2) (${apiWhy})`,
    });

    // ---- the ladder ---------------------------------------------------------------------
    const ctx: MountContext = {
      image,
      imagePath,
      imgFd,
      imgFsType,
      info,
      mnt,
      mntFd,
      basedirs,
      baseFds,
      upper,
      work,
      usernsFd,
      source: o.source ?? DEFAULT_SOURCE,
      verity,
      attr,
      msFlags: ms,
      knowledge,
      cleanup: c,
      step,
      record,
    };
    let erofs: ErofsMount;
    let layers: Layers;
    let temporaryMount: string | null;
    if (plan.api === 'new') {
      erofs = mountErofs(ctx, plan, { api: 'new' });
      ({ layers, temporaryMount } = mountLayers(ctx, plan.layers, erofs));
    } else {
      let onDir: ErofsMount | null = null;
      temporaryMount = mountLegacy(ctx, (dir) => {
        onDir = mountErofs(ctx, plan, { api: 'legacy', dir });
      });
      erofs = onDir!;
      layers = 'path';
    }

    step('done');
    const loop = erofs.loop;
    return result({
      backing: erofs.backing,
      layers,
      api: plan.api,
      loop: loop ? { device: loop.path, directIo: loop.directIo, created: loop.created } : null,
      temporaryMount,
    });
  } catch (err) {
    if (err instanceof ComposefsError) throw err;
    const privilege = err instanceof SysError && err.code === 'EPERM';
    const hint = privilege ? ' (mounting needs root: CAP_SYS_ADMIN)' : '';
    throw new MountError(`mounting ${image} on ${mountpoint}: ${err instanceof Error ? err.message : String(err)}${hint}`, { cause: err, privilege });
  } finally {
    c.run();
  }
}

/** Whether the new mount API works, probing (fsopen erofs) the first time. */
function knownNewApi(knowledge: KernelKnowledge, step: (s: string) => void): boolean {
  if (knowledge.newApi) return knowledge.newApi.ok;
  step('probe-api');
  try {
    sys.closeQuiet(sys.fsopen('erofs'));
    learn(knowledge, { fact: 'newApi', answer: { ok: true, why: 'fsopen() works' } });
    return true;
  } catch (err) {
    const e = err instanceof SysError ? err.errno : -1;
    if (e === ENOSYS) {
      learn(knowledge, { fact: 'newApi', answer: { ok: false, why: 'fsopen() is not implemented by this kernel' } });
      return false;
    }
    if (e === ENODEV) throw new MountError('this kernel has no erofs file system (fsopen erofs: No such device)');
    throw err;
  }
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
  say: (line: string) => void,
  label: 'private' | 'digest',
): { fd: number; dir: string; fsType: string } {
  const made = anonymousFile(dirs, (rw) => copySparse(srcFd, rw, span), c);
  if ('fd' in made) {
    const why = label === 'private' ? 'private: the image was copied' : 'digest: the kernel cannot measure the image, so it was copied';
    say(
      `${why} into an anonymous O_TMPFILE file in ${made.dir} (${made.fsType}), ${span} bytes as the superblock says, holes kept, now open read-only and linked nowhere; it lives exactly as long as the mount`,
    );
    return made;
  }
  const refused = made.refused;
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
  say: (line: string) => void,
  original: VerityMeasurement | null,
  digestOf: DigestOfFd | null,
): 'kernel' | 'userspace' {
  const measuredAny = original?.ok ? original : measureVerity(fd);
  // The kernel measures with the algorithm verity was enabled with: of use only when it is the digest's.
  const algorithmId = expected.length === 64 ? 2 : 1;
  const m: VerityMeasurement = measuredAny.ok && measuredAny.algorithm !== algorithmId ? { ok: false, reason: 'other-algorithm', errno: 0 } : measuredAny;
  let actual: Buffer;
  if (m.ok) actual = m.digest;
  else {
    if (!digestOf) throw new Error('digest given but no userspace fs-verity digest function (use mountComposefs)');
    // A fresh open file description reads from offset 0, whatever the caller's fd did.
    const own = openSync(`/proc/self/fd/${fd}`, 'r');
    try {
      actual = digestOf(own, expected.length === 64);
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
    : `computed in userspace on the private copy that is mounted, the kernel cannot measure the image (${!cannot.ok && cannot.reason === 'no-verity' ? 'fs-verity not enabled on it' : !cannot.ok && cannot.reason === 'other-algorithm' ? 'fs-verity enabled with another hash algorithm' : 'no fs-verity support'})`;
  say(`digest: matches, ${reason}`);
  return m.ok ? 'kernel' : 'userspace';
}
