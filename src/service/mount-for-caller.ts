/**
 * The privileged operation of the mount service, for one caller: mount a
 * composefs image the caller handed over as descriptors, with the caller's
 * rights, where the caller could have put a FUSE mount. No socket here: the
 * transport (src/service/varlink.ts) hands over the descriptors and the
 * caller's credentials as the kernel reported them (SO_PEERCRED, pidfd).
 *
 *  - The kernel never parses the caller's bytes: the image is read with the
 *    hardened reader, every redirect must be an object name (`ab/cdef…`),
 *    and the tree is written again by our writer into an anonymous private
 *    file, which is what EROFS mounts (the kernel mount's own EROFS stage).
 *    The tree carries no privilege: no setuid/setgid bit, no file
 *    capability, no device node (see rewriteImage).
 *  - overlayfs keeps the credentials of whoever created it and checks every
 *    access to the layers with them (ovl_fill_super takes prepare_creds()
 *    as creator_cred; ovl_override_creds puts it in force for lookups and
 *    opens of the lower files). So the overlay is created with the caller's
 *    fsuid, fsgid and groups, without the capabilities that override file
 *    permissions: an object the caller cannot read stays unreadable.
 *  - The mount is ro,nosuid,nodev, no upper layer, no idmap, whatever is
 *    asked; the mountpoint is a directory (not a symlink) the caller owns and
 *    may write, attached in the caller's mount namespace, joined through the
 *    caller's pidfd by a thread of its own (src/service/attach-worker.ts).
 */
import { fstatSync, openSync, readSync, writeSync, constants as fsc } from 'node:fs';
import { tmpdir } from 'node:os';
import { Worker } from 'node:worker_threads';
import { ComposefsError } from '../errors.js';
import { threadExecArgv } from '../threads.js';
import { anonymousFile } from '../mount/anonymous.js';
import { mountErofs } from '../mount/backing.js';
import { Cleanup, type MountContext } from '../mount/context.js';
import { MountError } from '../mount/errors.js';
import { fsverityDigest } from '../fsverity/index.js';
import { checkImage } from '../mount/image.js';
import { kernel, type KernelKnowledge } from '../mount/kernel.js';
import { explainRecord, type Attempt } from '../mount/ladder.js';
import type { Backing, Layers } from '../mount/options.js';
import { mountLayers } from '../mount/overlay.js';
import { planMount } from '../mount/plan.js';
import { verityAvailable, type BasedirToAsk } from '../mount/verity.js';
import { becomeCaller, restoreCredentials, type Identity } from '../sys/creds.js';
import { fsTypeOf } from '../sys/fsinfo.js';
import { strerror, SysError } from '../sys/libc.js';
import { loopControlExists } from '../sys/loop.js';
import * as sys from '../sys/mount.js';
import { mountIdOf, mountNsIdOfPidfd, statMount } from '../sys/mountid.js';
import { accessFd, pidfdOpen, W_OK } from '../sys/namespace.js';
import type { AttachAnswer, AttachRequest } from './attach-worker.js';
import { ImageRefusal, rewriteInWorker, type Stripped } from './rewrite.js';

export { rewriteImage, type Stripped } from './rewrite.js';

/** Who asked, as the kernel says (SO_PEERCRED, SO_PEERPIDFD): never as the caller says. */
export interface Caller extends Identity {
  uid: number;
  gid: number;
  /** Supplementary groups (from /proc/PID/status or SO_PEERGROUPS). */
  groups: readonly number[];
  pid: number;
  /** A pidfd of the caller; opened from `pid` when absent (racy: a pid may be reused). */
  pidfd?: number;
}

export interface CallerMountOptions {
  /** The fs-verity digest the image as sent must have (hex, 64 or 128 digits); checked in userspace before the rewrite. */
  digest?: string;
  /** Overlay verity: 'require' refuses when the kernel or a basedir cannot check objects; 'try' uses it when it can; default 'off'. */
  verity?: 'off' | 'try' | 'require';
  noexec?: boolean;
  atime?: 'relatime' | 'noatime' | 'strictatime';
  /** Hand back the detached mount instead of attaching it (a caller in a user namespace it owns attaches it itself). */
  detached?: boolean;
  /** The overlay's source field in mountinfo (default "composefs"). */
  source?: string;
  /** Directories for the anonymous image copy, first that takes one (default /var/tmp, the temp dir: on-disk file systems, where EROFS reads a file without a loop device). */
  privateDirs?: string[];
  /** Largest image taken, in bytes (default 256 MiB: the tree read from it lives in memory while it is written again). */
  maxImageBytes?: number;
  /** What is known of the kernel (default: the process's). */
  knowledge?: KernelKnowledge;
}

/** What a caller hands over: descriptors the caller opened itself. The caller keeps them (none is closed here). */
export interface CallerMountRequest {
  /** The image, open for reading. */
  imageFd: number;
  /** Each object store directory (O_PATH or O_RDONLY). */
  basedirFds: readonly number[];
  /** The mountpoint, opened O_PATH|O_NOFOLLOW; not needed with `detached`. */
  mountpointFd?: number;
  options?: CallerMountOptions;
  /**
   * Aborted when the caller hangs up: the rewrite is abandoned, nothing is
   * attached, and a mount attached before the caller was seen to go is
   * detached again (CallerGone).
   */
  signal?: AbortSignal;
}

export interface CallerMount {
  /** With `detached`: the overlay's detached mount (close-on-exec; the receiver owns it). Else null: it is attached. */
  mountFd: number | null;
  /** The overlay's unique mount id (STATX_MNT_ID_UNIQUE), taken from its descriptor before it was attached. */
  mountId: bigint;
  /** The mount namespace the overlay went into (attached), or the caller's when it asked (detached: it attaches it itself). */
  mountNsId: bigint;
  /** The fs-verity digest (SHA-256, hex) of the image the service wrote and mounted. */
  imageDigest: string;
  /** Overlay verity (verity=require) is on: the kernel checks each object's digest. */
  verity: boolean;
  backing: Backing;
  layers: Layers;
  /** Bytes of the image as the caller sent it, and as written again. */
  imageBytes: { received: number; written: number };
  /** What the rewrite took out (setuid/setgid bits, file capabilities). */
  stripped: Stripped;
  explain: string[];
}

const DEFAULT_MAX_IMAGE = 256 << 20;

/**
 * The file systems a mountpoint may be on: disk, network and memory file
 * systems, as fusermount3 allows an unprivileged user (an allow-list: procfs,
 * sysfs and their kin have places a user "may write" that no mount belongs
 * on, and more such file systems come with new kernels). Not FUSE: its
 * daemon, the caller's, could stall the service (see refuseStalling).
 */
const MOUNTPOINT_FS_TYPES = new Set([
  0x61756673, // aufs
  0x00000187, // autofs
  0xca451a4e, // bcachefs
  0x9123683e, // btrfs
  0x00c36400, // ceph
  0xff534d42, // cifs
  0x0000f15f, // ecryptfs
  0x2011bab0, // exfat
  0x0000ef53, // ext2, ext3, ext4
  0xf2f52010, // f2fs
  0x01161970, // gfs2
  0x47504653, // gpfs
  0x0000482b, // hfsplus
  0x000072b6, // jffs2
  0x3153464a, // jfs
  0x0bd00bd0, // lustre
  0x00004d44, // msdos, vfat
  0x00006969, // nfs
  0x00003434, // nilfs
  0x5346544e, // ntfs
  0x7366746e, // ntfs3
  0x5346414f, // openafs
  0x794c7630, // overlayfs
  0xaad7aaea, // panfs
  0x52654973, // reiserfs
  0xfe534d42, // smb2
  0x73717368, // squashfs
  0x01021994, // tmpfs
  0x24051905, // ubifs
  0x18031977, // wekafs
  0x58465342, // xfs
  0x2fc12fc1, // zfs
  0x858458f6, // ramfs
]);
const FUSE_SUPER_MAGIC = 0x65735546;
const ATTACH_TIMEOUT_MS = 10_000;

/**
 * What a refusal is about, for the service to answer with the interface's
 * error without reading messages: the mountpoint is not the caller's to
 * mount on (NotOwner), the image is refused (ImageRefused), a descriptor is
 * not what it must be (BadDescriptor, naming `parameter`), the kernel or the
 * system cannot make the mount (MountFailed).
 */
export type RefusalSubject = 'mountpoint' | 'image' | 'descriptor' | 'mount';

/** A refusal of the caller's request: one line, naming the thing and the reason, and its subject. */
export class CallerRefusal extends MountError {
  constructor(
    message: string,
    readonly subject: RefusalSubject,
    /** For 'descriptor': the request's parameter the descriptor came as (image, basedirs, mountpoint). */
    readonly parameter?: string,
    cause?: unknown,
  ) {
    super(message, cause === undefined ? undefined : { cause });
  }
}

/**
 * The caller hung up before its answer: whatever was made for it is undone
 * (a caller that never learns of a mount could not unmount it through the
 * service, and the mount would count against its limit).
 */
export class CallerGone extends CallerRefusal {
  constructor(message: string, cause?: unknown) {
    super(message, 'mount', undefined, cause);
  }
}

/** A refusal: one line, naming the thing and the reason. */
function refused(what: string, why: string, subject: RefusalSubject, cause?: unknown, parameter?: string): CallerRefusal {
  return new CallerRefusal(`${what}: ${why}`, subject, parameter, cause);
}

/** A descriptor that is not what it must be: named by its parameter. */
function badDescriptor(what: string, parameter: string, why: string, cause?: unknown): CallerRefusal {
  return refused(what, why, 'descriptor', cause, parameter);
}

/**
 * The mountpoint as fusermount3 would take it, and stricter: a directory
 * (not a symlink: the caller opens it O_NOFOLLOW, and a symlink's
 * descriptor is a symlink) on a file system of the allow-list, owned by the
 * caller, writable by the caller by the kernel's own check.
 */
export function checkMountpoint(fd: number, caller: Caller): void {
  let st;
  try {
    st = fstatSync(fd);
  } catch (err) {
    throw badDescriptor('mountpoint', 'mountpoint', `not an open descriptor (${err instanceof Error ? err.message : String(err)})`, err);
  }
  if (st.isSymbolicLink()) throw badDescriptor('mountpoint', 'mountpoint', 'is a symbolic link');
  if (!st.isDirectory()) throw badDescriptor('mountpoint', 'mountpoint', 'not a directory');
  const fsType = fsTypeOf(fd) >>> 0;
  if (!MOUNTPOINT_FS_TYPES.has(fsType)) throw refused('mountpoint', `on a file system of type 0x${fsType.toString(16)}, where the service mounts nothing`, 'mountpoint');
  if (caller.uid !== 0 && st.uid !== caller.uid) throw refused('mountpoint', `not owned by uid ${caller.uid} (owner: uid ${st.uid})`, 'mountpoint');
  const errno = asCaller(caller, () => accessFd(fd, W_OK));
  if (errno !== 0) throw refused('mountpoint', `not writable by uid ${caller.uid} (${strerror(errno)})`, 'mountpoint');
}

/** Run `fn` on this thread with the caller's file-system credentials, put back whatever happens. */
function asCaller<T>(caller: Caller, fn: () => T): T {
  const saved = becomeCaller(caller);
  try {
    return fn();
  } finally {
    restoreCredentials(saved);
  }
}

/** Read the whole image from `fd` (a regular file, not on FUSE: a read there could wait forever), at most `max` bytes. */
function receiveImage(fd: number, max: number): Buffer {
  let st;
  try {
    st = fstatSync(fd);
  } catch (err) {
    throw badDescriptor('image', 'image', `not an open descriptor (${err instanceof Error ? err.message : String(err)})`, err);
  }
  if (!st.isFile()) throw badDescriptor('image', 'image', 'not a regular file');
  if (fsTypeOf(fd) === FUSE_SUPER_MAGIC) throw refused('image', 'on a FUSE file system (its reads could stall the service)', 'image');
  if (st.size > max) throw refused('image', `${st.size} bytes, over the limit of ${max}`, 'image');
  const buf = Buffer.alloc(Math.max(st.size, 1));
  let got = 0;
  for (;;) {
    if (got === buf.length) {
      // The file grew since fstat: one more byte says whether it is still within the limit.
      const probe = Buffer.alloc(1);
      if (readSync(fd, probe, 0, 1, got) === 0) break;
      throw refused('image', 'changed while it was read', 'image');
    }
    let n: number;
    try {
      n = readSync(fd, buf, got, buf.length - got, got);
    } catch (err) {
      // EBADF (opened write-only), EIO…: the descriptor, not the image, is at fault.
      throw badDescriptor('image', 'image', `unreadable (${err instanceof Error ? err.message : String(err)})`, err);
    }
    if (n === 0) break;
    got += n;
  }
  return buf.subarray(0, got);
}

/** Write `image` into an anonymous private file; a read-only descriptor of it, closed by `c`. */
function privateImageFile(image: Buffer, dirs: string[], c: Cleanup): number {
  const made = anonymousFile(
    dirs,
    (rw) => {
      let w = 0;
      while (w < image.length) w += writeSync(rw, image, w, image.length - w, w);
    },
    c,
  );
  if ('fd' in made) return made.fd;
  throw new CallerRefusal(`image: no anonymous file for the copy: ${made.refused.join('; ')}`, 'mount');
}

/** Run one operation of attach-worker.ts on a thread of its own; its answer, or an error when the thread fails or does not answer. */
async function inCallerNamespace(data: AttachRequest, what: string): Promise<AttachAnswer> {
  const worker = new Worker(new URL('../service/attach-worker.js', import.meta.url), { workerData: data, execArgv: threadExecArgv() });
  let timer: NodeJS.Timeout | undefined;
  try {
    return await new Promise<AttachAnswer>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
      worker.once('exit', (code) => reject(new Error(`the ${what} thread ended (exit ${code}) without an answer`)));
      timer = setTimeout(() => reject(new Error(`the ${what} thread did not answer in ${ATTACH_TIMEOUT_MS} ms`)), ATTACH_TIMEOUT_MS);
    });
  } catch (err) {
    throw new CallerRefusal(`${what}: ${err instanceof Error ? err.message : String(err)}`, 'mount', undefined, err);
  } finally {
    clearTimeout(timer);
    await worker.terminate();
  }
}

/**
 * Attach `mountFd` on `mountpointFd` in the mount namespace of the process
 * `pidfd` refers to, from a thread of its own (see attach-worker.ts). With
 * `mountId`, returns the id of the mount namespace the mount landed in (null
 * when the kernel cannot say).
 */
export async function attachInNamespace(mountFd: number, mountpointFd: number, pidfd: number, mountId?: bigint): Promise<bigint | null> {
  const answer = await inCallerNamespace({ op: 'attach', pidfd, mountFd, mountpointFd, mountId }, 'attaching the mount');
  if (!answer.ok) {
    const why =
      answer.step === 'move_mount' && answer.code === 'EINVAL'
        ? "not in the caller's mount namespace"
        : answer.step === 'setns'
          ? `cannot join the caller's mount namespace (${answer.message})`
          : answer.message;
    // Only the move itself says the mountpoint is not the caller's to use; a namespace the service cannot join is its own failure.
    throw refused('mountpoint', why, answer.step === 'move_mount' ? 'mountpoint' : 'mount');
  }
  return answer.mountNsId ? BigInt(answer.mountNsId) : null;
}

/**
 * Detach (MNT_DETACH) the mount whose root `mountpointFd` names, in the mount
 * namespace of the process `pidfd` refers to, from a thread of its own that
 * names the descriptor through this process's /proc (see attach-worker.ts).
 * The caller of this function has checked what the descriptor names.
 */
export async function unmountInNamespace(mountpointFd: number, pidfd: number): Promise<void> {
  const answer = await inCallerNamespace({ op: 'unmount', pidfd, mountpointFd }, 'unmounting');
  if (!answer.ok) {
    const why =
      answer.step === 'umount' && answer.code === 'EINVAL'
        ? "not a mount in the caller's mount namespace"
        : answer.step === 'setns'
          ? `cannot join the caller's mount namespace (${answer.message})`
          : answer.message;
    throw new CallerRefusal(`unmounting: ${why}`, answer.step === 'umount' && answer.code === 'EINVAL' ? 'mountpoint' : 'mount');
  }
}

/**
 * The layers overlayfs is given for the caller's basedirs: each descriptor
 * on a mount of the service's own namespace as it is; one on a mount of
 * another namespace (a caller in a mount namespace of its own) cloned
 * there, from a thread that joined the caller's namespace (the kernel
 * clones a mount only in its own namespace, and overlayfs takes a layer
 * only from the creator's namespace or the root of an anonymous one, which
 * the clone is). The clone is of the caller's own descriptor, made where
 * the caller sees it, and the overlay is still created with the caller's
 * credentials: it shows nothing the descriptor did not.
 *
 * Not recursive: overlayfs looks up names in a lower layer without crossing
 * into mounts beneath it, so submounts of a basedir are unseen either way,
 * and a recursive copy would have the kernel copy every mount beneath a
 * basedir (a caller can pile up thousands in a namespace of its own) for
 * nothing. The kernel refuses the plain copy (EINVAL) of a directory with
 * locked mounts beneath it (mounts a user namespace inherited): refused as
 * that basedir. The clones are closed by `c`.
 */
async function layerDescriptors(basedirFds: readonly number[], pidfd: number, c: Cleanup): Promise<{ fds: number[]; cloned: number }> {
  const foreign: number[] = [];
  for (const [i, fd] of basedirFds.entries()) {
    try {
      if (statMount(mountIdOf(fd).mountId, 0n) === null) foreign.push(i);
    } catch {
      return { fds: [...basedirFds], cloned: 0 }; // no statmount (before Linux 6.8): layers as they are
    }
  }
  if (foreign.length === 0) return { fds: [...basedirFds], cloned: 0 };
  const answer = await inCallerNamespace({ op: 'clone', pidfd, fds: foreign.map((i) => basedirFds[i]!) }, "cloning the basedirs in the caller's mount namespace");
  if (!answer.ok) {
    if (answer.step === 'open_tree' && answer.index !== undefined) {
      const n = foreign[answer.index]! + 1;
      throw badDescriptor(`basedir ${n}`, 'basedirs', `cannot be cloned in the caller's mount namespace (${answer.message})`);
    }
    throw new CallerRefusal(`cloning the basedirs: cannot join the caller's mount namespace (${answer.message})`, 'mount');
  }
  const clones = answer.clones ?? [];
  for (const fd of clones) c.fd(fd);
  if (clones.length !== foreign.length) throw new CallerRefusal(`cloning the basedirs: ${clones.length} clones for ${foreign.length} basedirs`, 'mount');
  const fds = [...basedirFds];
  for (const [k, i] of foreign.entries()) fds[i] = clones[k]!;
  return { fds, cloned: clones.length };
}

/**
 * Mount the image of `request` for `caller`: the image rewritten by us into
 * an anonymous file, EROFS over it, overlayfs over that and the basedirs
 * created with the caller's credentials, ro,nosuid,nodev; then attached on
 * the caller's mountpoint in the caller's mount namespace, or (`detached`)
 * handed back as a mount descriptor. Rejects with a one-line MountError,
 * having left nothing mounted; the request's descriptors stay open.
 */
export async function mountForCaller(request: CallerMountRequest, caller: Caller): Promise<CallerMount> {
  let ownPidfd = -1;
  try {
    if (caller.pidfd === undefined) ownPidfd = pidfdOpen(caller.pid);
    return await mountChecked(request, caller, caller.pidfd ?? ownPidfd);
  } catch (err) {
    if (err instanceof ComposefsError) throw err;
    throw new MountError(`mounting for uid ${caller.uid}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  } finally {
    sys.closeQuiet(ownPidfd);
  }
}

/**
 * Refuse a descriptor on a FUSE file system before anything asks that file
 * system a question: its daemon is the caller's to write, and a request it
 * never answers (a getattr behind fstat, an open, an access check) would
 * stall this thread, the whole service with it. Told apart by the VFS alone:
 * the mount's unique id (statx without sync) and its superblock's magic
 * (statmount, in the caller's mount namespace, else the service's). A
 * descriptor on a mount in neither is refused too.
 */
function refuseStalling(fd: number, what: string, parameter: string, callerNs: bigint, onFuse: () => CallerRefusal): void {
  let id: bigint;
  try {
    id = mountIdOf(fd).mountId;
  } catch (err) {
    if (err instanceof SysError && err.code === 'EOPNOTSUPP') throw new CallerRefusal(`${what}: ${err.message} (the service needs Linux 6.8)`, 'mount', undefined, err);
    // As Node words an fstat failure: "EBADF: bad file descriptor, statx".
    const why = err instanceof SysError ? `${err.code}: ${strerror(err.errno).toLowerCase()}, statx` : String(err);
    throw badDescriptor(what, parameter, `not an open descriptor (${why})`, err);
  }
  let status;
  try {
    status = (callerNs !== 0n ? statMount(id, callerNs) : null) ?? statMount(id, 0n);
  } catch {
    return; // no statmount (before Linux 6.8): nothing to tell by
  }
  if (status === null) throw badDescriptor(what, parameter, "not on a mount of the caller's mount namespace");
  if (status.fsMagic === FUSE_SUPER_MAGIC) throw onFuse();
}

/** The mount attributes asked for, over the ones forced (ro, nosuid, nodev). */
function mountAttributes(o: CallerMountOptions): { attr: number; ms: number } {
  let attr = sys.MOUNT_ATTR_RDONLY | sys.MOUNT_ATTR_NOSUID | sys.MOUNT_ATTR_NODEV;
  let ms = sys.MS_RDONLY | sys.MS_NOSUID | sys.MS_NODEV;
  if (o.noexec) {
    attr |= sys.MOUNT_ATTR_NOEXEC;
    ms |= sys.MS_NOEXEC;
  }
  if (o.atime === 'noatime') {
    attr |= sys.MOUNT_ATTR_NOATIME;
    ms |= sys.MS_NOATIME;
  } else if (o.atime === 'strictatime') {
    attr |= sys.MOUNT_ATTR_STRICTATIME;
    ms |= sys.MS_STRICTATIME;
  }
  return { attr, ms };
}

/**
 * The caller's basedirs as verityAvailable (src/mount/mount.ts) asks them:
 * each opened again for reading, as the caller, through this process's /proc
 * (the caller may have sent O_PATH descriptors, on which the measuring ioctl
 * does not work).
 */
function callerBasedirs(basedirFds: readonly number[], caller: Caller): BasedirToAsk[] {
  return basedirFds.map((dirFd, i) => ({
    name: `basedir ${i + 1}`,
    open: () => {
      try {
        return asCaller(caller, () => openSync(`/proc/self/fd/${dirFd}`, fsc.O_RDONLY | fsc.O_DIRECTORY));
      } catch (err) {
        return { cannot: `basedir ${i + 1} cannot be opened for reading by uid ${caller.uid} to ask (${(err as NodeJS.ErrnoException).code ?? String(err)})` };
      }
    },
  }));
}

async function mountChecked(request: CallerMountRequest, caller: Caller, pidfd: number): Promise<CallerMount> {
  const o = request.options ?? {};
  const knowledge = o.knowledge ?? kernel;
  const signal = request.signal;
  if (signal?.aborted) throw new CallerGone('caller hung up: nothing mounted');
  const callerNs = namespaceOf(pidfd);
  // Before any other look at them: descriptors on FUSE would let the caller's daemon stall the service.
  refuseStalling(request.imageFd, 'image', 'image', callerNs, () => refused('image', 'on a FUSE file system (its reads could stall the service)', 'image'));
  for (const [i, fd] of request.basedirFds.entries()) {
    refuseStalling(fd, `basedir ${i + 1}`, 'basedirs', callerNs, () => badDescriptor(`basedir ${i + 1}`, 'basedirs', 'on a FUSE file system (its answers could stall the service)'));
  }
  if (!o.detached && request.mountpointFd !== undefined) {
    refuseStalling(request.mountpointFd, 'mountpoint', 'mountpoint', callerNs, () => refused('mountpoint', 'on a FUSE file system (its answers could stall the service)', 'mountpoint'));
  }
  let expected: Buffer | null = null;
  if (o.digest !== undefined) {
    if (!/^(?:[0-9a-fA-F]{64}){1,2}$/.test(o.digest)) throw refused('digest', 'expected 64 hex digits (an fs-verity SHA-256 digest) or 128 (SHA-512)', 'image');
    expected = Buffer.from(o.digest, 'hex');
  }
  if (!o.detached) {
    if (request.mountpointFd === undefined) throw badDescriptor('mountpoint', 'mountpoint', 'none given (and no detached mount asked for)');
    checkMountpoint(request.mountpointFd, caller);
  }
  if (request.basedirFds.length === 0) throw badDescriptor('basedir', 'basedirs', 'none given');
  for (const [i, fd] of request.basedirFds.entries()) {
    let isDir = false;
    try {
      isDir = fstatSync(fd).isDirectory();
    } catch {
      /* not open */
    }
    if (!isDir) throw badDescriptor(`basedir ${i + 1}`, 'basedirs', 'not an open directory');
  }
  const record: Attempt[] = [];
  const say = (text: string) => record.push({ stage: 'check', rung: 'check', outcome: 'note', text });

  // Overlay verity, decided before any work: a request the kernel cannot honour is refused at once.
  let verity = false;
  const verityMode = o.verity ?? 'off';
  if (verityMode !== 'off') {
    const v = verityAvailable(callerBasedirs(request.basedirFds, caller), knowledge);
    if (v.ok) {
      verity = true;
      say(`verity: overlay verity=require (${v.why})`);
    } else if (verityMode === 'require') {
      throw refused('verity', `required, and the kernel cannot check the objects: ${v.why}`, 'mount');
    } else {
      say(`verity: off, ${v.why} (try: going on without)`);
    }
  } else say('verity: off (not requested)');

  const received = receiveImage(request.imageFd, o.maxImageBytes ?? DEFAULT_MAX_IMAGE);
  if (expected) {
    // The bytes as received, in userspace: the caller's file may be on any file system, with or without fs-verity.
    const actual = fsverityDigest(received, expected.length === 64 ? 'sha512' : 'sha256');
    if (!actual.equals(expected)) throw refused('image', `wrong fs-verity digest: expected ${expected.toString('hex')}, the image has ${actual.toString('hex')}`, 'image');
    say('digest: matches (computed in userspace on the bytes received)');
  }
  // The received bytes move to the rewriting thread, not copied on the event loop: `received` is empty after.
  const receivedBytes = received.length;
  const rewriteStart = performance.now();
  const rewritten = await rewriteInWorker(received, { transfer: true, signal }).catch((err: unknown) => {
    if (signal?.aborted) throw new CallerGone('caller hung up during the rewrite: nothing mounted', err);
    throw err instanceof ImageRefusal ? refused('image refused', err.reason, 'image', err) : err;
  });
  say(`image: read and written again on a thread in ${Math.round(performance.now() - rewriteStart)} ms (${receivedBytes} bytes received, ${rewritten.image.length} written)`);
  const imageDigest = rewritten.digest;
  const { attr, ms } = mountAttributes(o);

  const c = new Cleanup();
  let overlayFd = -1;
  try {
    const layers = await layerDescriptors(request.basedirFds, pidfd, c);
    if (layers.cloned > 0) say(`basedirs: ${layers.cloned} on mounts of the caller's mount namespace, cloned there (open_tree) for overlayfs`);
    const imgFd = privateImageFile(rewritten.image, o.privateDirs ?? ['/var/tmp', tmpdir()], c);
    const info = checkImage(imgFd, 'image');
    const imgFsType = fsTypeOf(imgFd);
    const plan = planMount(
      { api: 'new', backing: 'auto', layers: 'auto', idmap: false },
      {
        newApi: true,
        erofsFdSource: knowledge.erofsFdSource,
        fileBacked: knowledge.fileBacked.get(imgFsType),
        overlayFdLayers: knowledge.overlayFdLayers,
        loopDevices: (knowledge.loopDevices ??= loopControlExists()),
      },
    );
    if (!plan.ok) throw new CallerRefusal(plan.reason, 'mount');
    // Layers by path go through fsconfig only: mount(2) makes no detached overlay.
    const layersRungs = plan.layers.map((r) => (r.layers === 'path' ? { ...r, overlayBy: r.overlayBy.filter((w) => w === 'fsconfig') } : r));
    const ctx: MountContext = {
      image: 'image',
      imagePath: null,
      imgFd,
      imgFsType,
      info,
      mnt: '',
      mntFd: -1,
      basedirs: layers.fds.map((fd) => `/proc/self/fd/${fd}`),
      baseFds: layers.fds,
      usernsFd: -1,
      source: o.source ?? 'composefs',
      verity,
      attr,
      msFlags: ms,
      knowledge,
      keepDetached: true,
      asOverlayCreator: (create) => asCaller(caller, create),
      cleanup: c,
      step: () => {},
      record,
    };
    let made;
    let erofs;
    try {
      erofs = mountErofs(ctx, plan, { api: 'new' });
      made = mountLayers(ctx, layersRungs, erofs);
    } catch (err) {
      if (err instanceof CallerRefusal) throw err;
      throw new CallerRefusal(err instanceof Error ? err.message : String(err), 'mount', undefined, err);
    }
    overlayFd = made.overlayFd;
    if (overlayFd < 0) throw new CallerRefusal('overlayfs: no detached overlay was made', 'mount');
    say(`overlay created as uid ${caller.uid} gid ${caller.gid}, without the capabilities that override file permissions`);
    const { setId, fileCapabilities } = rewritten.stripped;
    if (setId || fileCapabilities) say(`image: ${setId} setuid/setgid bits cleared, ${fileCapabilities} file capabilities dropped`);
    let mountId: bigint;
    try {
      mountId = mountIdOf(overlayFd).mountId;
    } catch (err) {
      throw new CallerRefusal(`the overlay's mount id: ${err instanceof Error ? err.message : String(err)}`, 'mount', undefined, err);
    }

    let mountFd: number | null = overlayFd;
    let mountNsId: bigint | null;
    // Gone already: the detached overlay is closed below (finally), and with it the mount.
    if (signal?.aborted) throw new CallerGone('caller hung up: nothing mounted');
    if (!o.detached) {
      mountNsId = await attachInNamespace(overlayFd, request.mountpointFd!, pidfd, mountId).catch((err: unknown) => {
        throw signal?.aborted ? new CallerGone('caller hung up: nothing mounted', err) : err;
      });
      // No await from here to the answer: a hang-up seen later finds the reply on its way.
      if (signal?.aborted) {
        // Gone while the mount was attached: detach it again where it went. The overlay's descriptor names the attached mount's root.
        const undone = await undoAttach(overlayFd, mountId, pidfd);
        if (undone === null) throw new CallerGone('caller hung up: undone');
        say(`caller hung up, and the mount could not be undone (${undone}): it stays, recorded`);
      }
      sys.closeQuiet(overlayFd);
      mountFd = null;
    } else {
      mountNsId = callerNs;
    }
    overlayFd = -1;
    return {
      mountFd,
      mountId,
      mountNsId: mountNsId ?? 0n,
      imageDigest,
      verity,
      backing: erofs.backing,
      layers: made.layers,
      imageBytes: { received: receivedBytes, written: rewritten.image.length },
      stripped: rewritten.stripped,
      explain: explainRecord(record),
    };
  } finally {
    sys.closeQuiet(overlayFd);
    c.run();
  }
}

/**
 * Detach the mount just attached from `overlayFd` (still naming its root), in
 * the caller's mount namespace; when the caller is gone (no namespace to
 * join through its pidfd) and the mount went into the service's own
 * namespace, from here (the magic link of this process's descriptor). Null
 * when done, else why not.
 */
async function undoAttach(overlayFd: number, mountId: bigint, pidfd: number): Promise<string | null> {
  try {
    await unmountInNamespace(overlayFd, pidfd);
    return null;
  } catch (err) {
    let inOwnNamespace = false;
    try {
      inOwnNamespace = statMount(mountId, 0n) !== null;
    } catch {
      // no statmount: cannot tell where it is
    }
    if (!inOwnNamespace) return err instanceof Error ? err.message : String(err);
    try {
      sys.umount2(`/proc/self/fd/${overlayFd}`, sys.MNT_DETACH);
      return null;
    } catch (err2) {
      return err2 instanceof Error ? err2.message : String(err2);
    }
  }
}

/** The id of the mount namespace of the process `pidfd` refers to, or 0 when the kernel cannot say. */
function namespaceOf(pidfd: number): bigint {
  try {
    return mountNsIdOfPidfd(pidfd);
  } catch {
    return 0n;
  }
}
