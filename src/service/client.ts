/**
 * The client side of the mount service (`cfs serve`, interface
 * service/io.composefs.Mount.varlink): this process opens everything itself
 * (the image read-only, each basedir O_PATH, the mountpoint O_PATH without
 * following a symlink) and passes the descriptors, so the service never
 * opens a path on the caller's behalf; its descriptors are closed on every
 * path out. A caller in a user namespace it owns, whose mount namespace is
 * its own too (`unshare -Urm`), asks for the detached mount and attaches it
 * itself (move_mount): the service could not reach that namespace's
 * mountpoint on its behalf, and the caller may attach there.
 *
 * Every failure is one line naming the service and the reason it gave:
 *   mount service /run/composefs/mount.sock: not running (connect: No such file or directory)
 *   mount service: mountpoint: not owned by uid 65534 (owner: uid 0)
 */
import { closeSync, fstatSync, openSync, realpathSync, constants as fsc } from 'node:fs';
import { resolve } from 'node:path';
import { ComposefsError, IoError, ioError, reasonOf } from '../errors.js';
import { printable } from '../printable.js';
import { MountError } from '../mount/errors.js';
import { capget, hasEffective } from '../sys/creds.js';
import { SysError } from '../sys/libc.js';
import * as sys from '../sys/mount.js';
import { inInitialUserNamespace, ownsMountNamespace } from '../sys/userns.js';
import { DEFAULT_MOUNT_SOCKET, MountError as MountServiceErrors, MountMethod } from './mount-interface.js';
import { callVarlink, VarlinkError, VarlinkServiceError, type CallResult } from './varlink.js';

/** The socket to call: `explicit`, else $CFS_SERVICE_SOCKET, else /run/composefs/mount.sock. */
export function serviceSocketPath(explicit?: string): string {
  return explicit || process.env.CFS_SERVICE_SOCKET || DEFAULT_MOUNT_SOCKET;
}

/**
 * A call to the mount service that failed: `reachable` false when nothing
 * answers at the socket (not running, or this user may not connect);
 * `error` the varlink error the service replied, if it replied one.
 */
export class MountServiceError extends ComposefsError {
  /** The reason alone, without the words naming the service ("connect: No such file or directory", "limit of 64 mounts reached"). */
  readonly reason: string;
  constructor(
    message: string,
    readonly socket: string,
    readonly reachable: boolean,
    readonly error: string | null = null,
    options?: { cause?: unknown; reason?: string },
  ) {
    super(printable(message), 'mount-service', options);
    this.reason = printable(options?.reason ?? message);
  }
}

/** The one-line message of a service's error reply. */
function describeReply(err: VarlinkError): string {
  const p = err.parameters;
  const text = (key: string) => (typeof p[key] === 'string' ? printable(p[key] as string) : '');
  switch (err.error) {
    case MountServiceErrors.LimitReached:
      return `limit of ${typeof p.limit === 'number' ? p.limit : '?'} mount${p.limit === 1 ? '' : 's'} reached`;
    case MountServiceErrors.ImageRefused:
      return `image refused: ${text('reason').replace(/^image refused: /, '')}`;
    case MountServiceErrors.BadDescriptor:
      return `${text('parameter')}: ${text('reason')}`;
    case VarlinkServiceError.InvalidParameter:
      return `invalid parameter ${text('parameter')}`;
    case VarlinkServiceError.MethodNotFound:
    case VarlinkServiceError.InterfaceNotFound:
    case VarlinkServiceError.MethodNotImplemented:
      return `not a composefs mount service (${err.error})`;
    default:
      return text('reason') || printable(err.error);
  }
}

/**
 * How long a Mount may take: the service reads and writes the whole image
 * again (up to its size limit) before mounting, and a client that gave up
 * early would leave a mount made after it left. Other calls take the
 * varlink client's default (30 s).
 */
const MOUNT_TIMEOUT_MS = 300_000;

/** Call `method` on the service at `socket`, failing with a MountServiceError. */
async function call(socket: string, method: string, parameters: Record<string, unknown>, fds: number[] = [], timeoutMs?: number): Promise<CallResult> {
  try {
    return await callVarlink(socket, method, parameters, fds, timeoutMs === undefined ? {} : { timeoutMs });
  } catch (err) {
    if (err instanceof VarlinkError) {
      const reason = describeReply(err);
      throw new MountServiceError(`mount service: ${reason}`, socket, true, err.error, { cause: err, reason });
    }
    const cause = err instanceof IoError ? err.cause : undefined;
    if (cause instanceof SysError && cause.syscall === 'connect') {
      const how = cause.code === 'ENOENT' || cause.code === 'ECONNREFUSED' ? 'not running' : 'cannot be reached';
      const reason = `connect: ${reasonOf(cause)}`;
      throw new MountServiceError(`mount service ${socket}: ${how} (${reason})`, socket, false, null, { cause: err, reason });
    }
    throw new MountServiceError(err instanceof Error ? err.message : String(err), socket, true, null, { cause: err });
  }
}

export interface ServiceMountOptions {
  /** Object store directories, 1..16. */
  basedir: string[];
  /** The fs-verity digest the image must have (64 or 128 hex digits). */
  digest?: string;
  verity?: 'off' | 'try' | 'require';
  noexec?: boolean;
  atime?: 'relatime' | 'noatime' | 'strictatime';
  /** The service's socket (default: serviceSocketPath()). */
  socket?: string;
  /** Ask for the detached mount and attach it here (default: when in a user namespace owning its mount namespace, with CAP_SYS_ADMIN). */
  detached?: boolean;
}

export interface ServiceMount {
  /** The overlay's unique mount id (statx STATX_MNT_ID_UNIQUE). */
  mountId: number;
  /** The fs-verity digest (hex) of the image the service wrote and mounted. */
  imageDigest: string;
  /** The service's --explain lines, printable. */
  explain: string[];
  /** Whether this process attached the mount itself (move_mount of the detached mount). */
  detached: boolean;
  socket: string;
  /** The mountpoint, absolute. */
  mountpoint: string;
}

/** CAP_SYS_ADMIN (capability 21), which lets this process attach mounts in a mount namespace its user namespace owns. */
const CAP_SYS_ADMIN = 21;

/**
 * Whether this process should ask for the detached mount and attach it
 * itself: it is not in the initial user namespace, its mount namespace is
 * its user namespace's, and it has CAP_SYS_ADMIN there. The service joins a
 * caller's mount namespace to attach a mount only in the initial user
 * namespace's terms; a caller in a namespace of its own attaches there.
 */
export function attachesItself(): boolean {
  if (inInitialUserNamespace()) return false;
  try {
    return hasEffective(capget(), CAP_SYS_ADMIN) && ownsMountNamespace();
  } catch {
    return false;
  }
}

function openOrFail(path: string, flags: number, what: string): number {
  try {
    return openSync(path, flags);
  } catch (err) {
    throw ioError(err, `${what} ${path === '' ? "''" : path}`);
  }
}

/** Open the image read-only (non-blocking: a FIFO does not hang the open) and refuse what is not a regular file. */
function openImage(image: string): number {
  const fd = openOrFail(image, fsc.O_RDONLY | fsc.O_NONBLOCK | fsc.O_NOCTTY, 'image');
  try {
    checkRegular(fd, image);
  } catch (err) {
    closeSync(fd);
    throw err;
  }
  return fd;
}

/** The image is not a regular file (a block device, say): the mount service takes image files only, FUSE or the kernel may still mount it. */
export class ImageNotForService extends MountError {}

function checkRegular(fd: number, shown: string): void {
  const st = fstatSync(fd);
  if (!st.isFile()) throw new ImageNotForService(`image ${shown}: ${st.isDirectory() ? 'Is a directory' : 'not a regular file'} (the mount service takes image files only)`);
}

/**
 * Open what a Mount call passes: the image (unless already a descriptor),
 * each basedir, the mountpoint; every descriptor opened is added to
 * `opened` as it is, for the caller to close whatever happens.
 */
function openRequest(image: string | number, mnt: string, basedir: readonly string[], opened: number[]): { imageFd: number; basedirFds: number[]; mountpointFd: number } {
  if (basedir.length === 0) throw new MountError('no basedir given: composefs needs the object store directory (basedir=PATH)');
  let imageFd: number;
  if (typeof image === 'number') {
    checkRegular(image, `fd ${image}`);
    imageFd = image;
  } else opened.push((imageFd = openImage(image)));
  const basedirFds = basedir.map((d) => {
    const fd = openOrFail(resolve(d), sys.O_PATH | fsc.O_DIRECTORY, 'basedir');
    opened.push(fd);
    return fd;
  });
  const mountpointFd = openOrFail(mnt, sys.O_PATH | fsc.O_NOFOLLOW | fsc.O_DIRECTORY, 'mountpoint');
  opened.push(mountpointFd);
  return { imageFd, basedirFds, mountpointFd };
}

/** Open and check what a Mount call would pass (a dry run), closing it all again. */
export function checkServiceRequest(image: string | number, mountpoint: string, basedir: readonly string[]): void {
  const opened: number[] = [];
  try {
    openRequest(image, resolve(mountpoint), basedir, opened);
  } finally {
    for (const fd of opened) sys.closeQuiet(fd);
  }
}

/**
 * Mount `image` (a path, or a descriptor of it open for reading, left open)
 * on `mountpoint` through the mount service. Rejects with a one-line error
 * (MountServiceError for the service's refusals and an unreachable service,
 * MountError/IoError for what this process could not open), every
 * descriptor it opened closed, nothing mounted.
 */
export async function mountThroughService(image: string | number, mountpoint: string, options: ServiceMountOptions): Promise<ServiceMount> {
  const socket = serviceSocketPath(options.socket);
  if (mountpoint === '') throw new MountError("mountpoint '': No such file or directory");
  const mnt = resolve(mountpoint);
  const opened: number[] = [];
  let mountFd = -1;
  try {
    const detached = options.detached ?? attachesItself();
    const { imageFd, basedirFds, mountpointFd } = openRequest(image, mnt, options.basedir, opened);

    // Descriptor indexes as the service numbers them: the image, the basedirs, the mountpoint.
    const fds = [imageFd, ...basedirFds];
    if (!detached) fds.push(mountpointFd);
    const mountOptions: Record<string, unknown> = {};
    if (options.digest !== undefined) mountOptions.digest = options.digest;
    if (options.verity !== undefined && options.verity !== 'off') mountOptions.verity = options.verity;
    if (options.noexec) mountOptions.noexec = true;
    if (options.atime !== undefined) mountOptions.atime = options.atime;
    if (detached) mountOptions.detached = true;
    const parameters: Record<string, unknown> = { image: 0, basedirs: basedirFds.map((_, i) => i + 1), options: mountOptions };
    if (!detached) parameters.mountpoint = basedirFds.length + 1;

    const reply = await call(socket, MountMethod.Mount, parameters, fds, MOUNT_TIMEOUT_MS);
    const p = reply.parameters;
    const mountIndex = typeof p.mount === 'number' && Number.isInteger(p.mount) ? p.mount : -1;
    if (detached && mountIndex >= 0 && mountIndex < reply.fds.length) mountFd = reply.fds[mountIndex];
    for (const fd of reply.fds) if (fd !== mountFd) sys.closeQuiet(fd);
    if (detached && mountFd < 0) throw new MountServiceError('mount service: no detached mount came with the reply', socket, true);
    if (detached) {
      try {
        sys.moveMountTo(mountFd, mnt, mountpointFd);
      } catch (err) {
        throw new MountError(`attaching the service's mount on ${mnt}: ${reasonOf(err)}`, { cause: err });
      }
    }
    return {
      mountId: typeof p.mountId === 'number' ? p.mountId : 0,
      imageDigest: typeof p.image === 'string' ? printable(p.image) : '',
      explain: Array.isArray(p.explain) ? p.explain.filter((l): l is string => typeof l === 'string').map(printable) : [],
      detached,
      socket,
      mountpoint: mnt,
    };
  } finally {
    // A detached mount never attached goes with its last descriptor.
    sys.closeQuiet(mountFd);
    for (const fd of opened) sys.closeQuiet(fd);
  }
}

/**
 * Ask the service to unmount the mount at `mountpoint`, which it made for
 * this user: the descriptor passed is the mount's root, so what is unmounted
 * is the mount this process sees there. The service's unique id of it.
 */
export async function unmountThroughService(mountpoint: string, socket?: string): Promise<{ mountId: number }> {
  const path = serviceSocketPath(socket);
  let root: string;
  try {
    root = realpathSync(resolve(mountpoint));
  } catch (err) {
    throw ioError(err, mountpoint);
  }
  const fd = openOrFail(root, sys.O_PATH | fsc.O_DIRECTORY, 'mountpoint');
  try {
    const reply = await call(path, MountMethod.Unmount, { mountpoint: 0 }, [fd]);
    for (const f of reply.fds) sys.closeQuiet(f);
    return { mountId: typeof reply.parameters.mountId === 'number' ? reply.parameters.mountId : 0 };
  } finally {
    sys.closeQuiet(fd);
  }
}

/** A mount the service made for this user, as List gives it. */
export interface ServiceMountEntry {
  mountId: number;
  /** Where the service attached it (as it saw the path); '' when detached. */
  mountpoint: string;
  image: string;
  detached: boolean;
}

/** The service's mounts for this user, and how many it may hold. */
export async function listServiceMounts(socket?: string): Promise<{ socket: string; mounts: ServiceMountEntry[]; limit: number }> {
  const path = serviceSocketPath(socket);
  const reply = await call(path, MountMethod.List, {});
  for (const f of reply.fds) sys.closeQuiet(f);
  const raw = Array.isArray(reply.parameters.mounts) ? reply.parameters.mounts : [];
  const mounts: ServiceMountEntry[] = [];
  for (const m of raw) {
    if (m === null || typeof m !== 'object') continue;
    const e = m as Record<string, unknown>;
    mounts.push({
      mountId: typeof e.mountId === 'number' ? e.mountId : 0,
      mountpoint: typeof e.mountpoint === 'string' ? printable(e.mountpoint) : '',
      image: typeof e.image === 'string' ? printable(e.image) : '',
      detached: e.detached === true,
    });
  }
  return { socket: path, mounts, limit: typeof reply.parameters.limit === 'number' ? reply.parameters.limit : 0 };
}
