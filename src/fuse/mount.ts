/**
 * Mounting a composefs image through the FUSE server: no EROFS, no
 * overlayfs, no root.
 *
 * How /dev/fuse gets mounted, in order (`via: 'auto'`):
 *  - directly: open /dev/fuse and mount(2) "fuse.composefs" with `fd=N`:
 *    root, or a user namespace that owns its mount namespace (`unshare -Urm`);
 *  - fusermount3 (setuid root, Debian's fuse3): it opens /dev/fuse, mounts,
 *    and passes the descriptor back over a unix socket (SCM_RIGHTS, the
 *    `_FUSE_COMMFD` protocol libfuse uses).
 *
 * The server detaches by default: a child process (daemon.ts, in its own
 * session, cwd /) does the mounting and serving and reports back over a pipe
 * once the kernel's INIT is answered; the caller returns then. With
 * `foreground` this process serves until the mount goes away.
 */
import { closeSync, constants as fsc, existsSync, fchmodSync, fstatSync, lstatSync, mkdirSync, openSync, readFileSync, realpathSync, statSync, writeSync } from 'node:fs';
import { spawn, spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { ComposefsError, ioError, reasonOf, UsageError } from '../errors.js';
import * as sys from '../sys/mount.js';
import { receiveFd, socketPair } from '../sys/socket.js';
import { fsverityDigest } from '../fsverity/index.js';
import { ImageView } from './image.js';
import { FuseServer, type ServerState } from './server.js';
import { FUSE_FSTYPE, fusermountPath, unmountFuse } from './unmount.js';
import type { RungResult } from '../mount/ladder.js';
import { openImageFile } from '../mount/image.js';
import { printable } from '../printable.js';

export { FUSE_FSTYPE, unmountFuse };


export class FuseMountError extends ComposefsError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, 'fuse-mount', options);
  }
}

export type FuseVia = 'direct' | 'fusermount';

export interface FuseMountOptions {
  /** Object store directories, searched in order. */
  basedir: string[];
  /** Expected fs-verity digest of the image (64 hex digits), checked on the bytes the server serves from. */
  digest?: string;
  /** Check every object's digest before serving it and every block read against its Merkle tree. */
  verity?: boolean;
  /** FUSE passthrough for object data when the kernel grants it ('auto', default) or never. */
  passthrough?: 'auto' | 'off';
  /** Serve in this process until unmounted (default: a detached server process). */
  foreground?: boolean;
  /** How to mount /dev/fuse (default 'auto': directly when allowed, else fusermount3). */
  via?: FuseVia | 'auto';
  /** Let other users see the files (default: when root; fusermount3 allows it to others only with user_allow_other in /etc/fuse.conf). */
  allowOther?: boolean;
  /** Outstanding reads of /dev/fuse (default 2). */
  readers?: number;
  /**
   * Where the server writes what it has to say (verity failures, missing objects): opened at mount,
   * never through a symlink nor into another user's file. Default: a file under $XDG_RUNTIME_DIR/composefs,
   * for root without one /run/composefs, else $TMPDIR/composefs-UID (see defaultLog).
   */
  log?: string;
  /** Check everything, mount nothing. */
  dryRun?: boolean;
}

export interface FuseMountResult extends RungResult {
  rung: 'fuse';
  /** Always: the server serves nothing that writes. */
  readonly: true;
  via: FuseVia;
  /** The serving process. */
  pid: number;
  passthrough: boolean | null;
  log: string;
  dryRun: boolean;
}

/** What daemon.ts is given (JSON on its command line). */
export interface DaemonConfig {
  image: string;
  mountpoint: string;
  options: FuseMountOptions;
}

/**
 * Where the server's log goes when no log= is given: the user's runtime
 * directory ($XDG_RUNTIME_DIR/composefs); without one, root's /run/composefs
 * (no shared temp dir for root), and anyone else's $TMPDIR/composefs-UID. The directory is checked by
 * checkLogDirectory before anything is mounted.
 */
function defaultLog(mountpoint: string): string {
  const uid = process.getuid?.() ?? 0;
  const xdg = process.env.XDG_RUNTIME_DIR;
  const dir = xdg && existsSync(xdg) ? join(xdg, 'composefs') : uid === 0 && ownedByUs('/run', uid) ? '/run/composefs' : join(tmpdir(), `composefs-${outsideUid(uid)}`);
  return join(dir, `fuse${mountpoint.replace(/[^A-Za-z0-9._-]/g, '_')}.log`);
}

/**
 * `uid` as the parent user namespace knows it (/proc/self/uid_map): the
 * "root" of every user's namespace is uid 0, and a temp dir named after 0
 * would be the same name for all of them.
 */
function outsideUid(uid: number): number {
  try {
    for (const line of readFileSync('/proc/self/uid_map', 'utf8').trim().split('\n')) {
      const [inside, outside, count] = line.trim().split(/\s+/).map(Number);
      if (uid >= inside && uid < inside + count) return outside + (uid - inside);
    }
  } catch {
    /* no /proc: the uid as seen here */
  }
  return uid;
}

/** Whether `path` is a directory of `uid`'s (root's /run is not, seen from a user namespace's root). */
function ownedByUs(path: string, uid: number): boolean {
  try {
    const st = lstatSync(path);
    return st.isDirectory() && st.uid === uid;
  } catch {
    return false;
  }
}

const LOG_WHY_NOT = 'remove it, or name a log with -o log=PATH';

/**
 * The default log's directory: refused unless it is a directory (not a
 * link) of this user's with no access for anyone else — in a shared temp
 * dir anyone may have made it first, and planted links in it. Made 0700
 * with `create` (when there is a first line to write), so a mount with
 * nothing to say leaves nothing behind.
 */
function checkLogDirectory(dir: string, create: boolean): void {
  const uid = process.getuid?.() ?? 0;
  try {
    if (create) mkdirSync(dir, { mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw ioError(err, `log directory ${dir}`);
  }
  let st;
  try {
    st = lstatSync(dir);
  } catch (err) {
    if (!create && (err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw ioError(err, `log directory ${dir}`);
  }
  if (!st.isDirectory()) throw new FuseMountError(`log directory ${dir}: not a directory (${st.isSymbolicLink() ? 'a symlink' : 'another kind of file'}): ${LOG_WHY_NOT}`);
  if (st.uid !== uid) throw new FuseMountError(`log directory ${dir}: owned by uid ${st.uid}, not by uid ${uid}: ${LOG_WHY_NOT}`);
  if ((st.mode & 0o077) !== 0) {
    // Ours (earlier versions made it 0755): closing it to others is safe, and the log in it is still
    // opened without following links and refused unless it is our own regular file. Through a
    // descriptor of the very directory checked, never by name.
    let fd = -1;
    try {
      fd = openSync(dir, fsc.O_RDONLY | fsc.O_DIRECTORY | fsc.O_NOFOLLOW);
      const now = fstatSync(fd);
      if (now.ino !== st.ino || now.dev !== st.dev) throw new Error('it changed while it was checked');
      fchmodSync(fd, 0o700);
    } catch (err) {
      throw new FuseMountError(`log directory ${dir}: mode 0${(st.mode & 0o7777).toString(8)} lets others in and could not be made 0700 (${reasonOf(err)}): ${LOG_WHY_NOT}`);
    } finally {
      if (fd >= 0) closeSync(fd);
    }
  }
}

const LOG_FLAGS = fsc.O_WRONLY | fsc.O_APPEND | fsc.O_NOFOLLOW | fsc.O_NONBLOCK | fsc.O_NOCTTY;

/**
 * Open a log for appending: created anew (exclusively, 0600), or an
 * existing regular file of this user's; never through a symlink, never a
 * FIFO or device, never someone else's file.
 */
function openLog(path: string): number {
  const uid = process.getuid?.() ?? 0;
  let fd: number;
  try {
    fd = openSync(path, LOG_FLAGS | fsc.O_CREAT | fsc.O_EXCL, 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw ioError(err, `log ${path}`);
    try {
      fd = openSync(path, LOG_FLAGS);
    } catch (err2) {
      if ((err2 as NodeJS.ErrnoException).code === 'ELOOP') throw new FuseMountError(`log ${path}: a symlink (logs are not written through links): ${LOG_WHY_NOT}`);
      throw ioError(err2, `log ${path}`);
    }
  }
  const st = fstatSync(fd);
  if (!st.isFile() || st.uid !== uid) {
    closeSync(fd);
    throw new FuseMountError(`log ${path}: ${st.isFile() ? `owned by uid ${st.uid}, not by uid ${uid}` : 'not a regular file'}: ${LOG_WHY_NOT}`);
  }
  return fd;
}

/**
 * A log record as one line: control characters (newlines too) escaped,
 * whatever reached it. (The server already prints names from an image with
 * the dump format's escapes.)
 */
export const logRecord = printable;

/** Everything checked before any mount: paths, the image, its digest. */
function prepare(image: string, mountpoint: string, o: FuseMountOptions): { image: string; mountpoint: string; view: ImageView; explain: string[] } {
  if (!o.basedir || o.basedir.length === 0) throw new UsageError('no basedir= given: composefs needs the object store directory (-o basedir=PATH)');
  const explain: string[] = [];
  let mp: string;
  try {
    mp = realpathSync(resolve(mountpoint));
    if (!statSync(mp).isDirectory()) throw new FuseMountError(`${mountpoint}: not a directory`);
  } catch (err) {
    if (err instanceof ComposefsError) throw err;
    throw ioError(err, mountpoint);
  }
  const imagePath = resolve(image);
  let buf: Buffer;
  // Without blocking, and only a regular file or block device: a FIFO named as the image must not hang the mount.
  const fd = openImageFile(imagePath);
  try {
    buf = readFileSync(fd);
  } catch (err) {
    throw ioError(err, image);
  } finally {
    closeSync(fd);
  }
  for (const dir of o.basedir) {
    try {
      if (!statSync(dir).isDirectory()) throw new FuseMountError(`basedir ${dir}: not a directory`);
    } catch (err) {
      if (err instanceof ComposefsError) throw err;
      throw ioError(err, `basedir ${dir}`);
    }
  }
  let view: ImageView;
  try {
    view = new ImageView(buf);
  } catch (err) {
    throw new FuseMountError(`${image}: ${reasonOf(err)}`, { cause: err });
  }
  if (o.digest !== undefined) {
    if (!/^(?:[0-9a-fA-F]{64}){1,2}$/.test(o.digest)) throw new UsageError(`invalid digest '${printable(o.digest.slice(0, 140))}': expected 64 hex digits (SHA-256) or 128 (SHA-512)`);
    const got = fsverityDigest(buf, o.digest.length === 128 ? 'sha512' : 'sha256').toString('hex');
    if (got !== o.digest.toLowerCase()) throw new FuseMountError(`${image}: fs-verity digest ${got} is not the expected ${o.digest.toLowerCase()}`);
    explain.push('digest: the image was read into memory and its fs-verity digest checked there: the server serves exactly those bytes');
  }
  return { image: imagePath, mountpoint: mp, view, explain };
}

function inUserNamespace(): boolean {
  try {
    return readFileSync('/proc/self/uid_map', 'utf8').trim().split(/\s+/).join(' ') !== '0 0 4294967295';
  } catch {
    return false;
  }
}

/** Open /dev/fuse and mount it, directly or through fusermount3. */
function mountDevice(mountpoint: string, o: FuseMountOptions, explain: string[]): { fd: number; via: FuseVia } {
  const via = o.via ?? 'auto';
  const uid = process.getuid?.() ?? 0;
  const gid = process.getgid?.() ?? 0;
  const allowOther = o.allowOther ?? uid === 0;
  let directWhy = '';
  if (via !== 'fusermount') {
    let fd = -1;
    try {
      fd = openSync('/dev/fuse', 'r+');
      const data = `fd=${fd},rootmode=40000,user_id=${uid},group_id=${gid},default_permissions${allowOther ? ',allow_other' : ''}`;
      sys.mount('composefs', mountpoint, FUSE_FSTYPE, sys.MS_RDONLY | sys.MS_NOSUID | sys.MS_NODEV, data);
      explain.push(`mounted with mount(2) on an open /dev/fuse (fd=${fd})${inUserNamespace() ? ', in a user namespace that owns this mount namespace' : ''}`);
      return { fd, via: 'direct' };
    } catch (err) {
      sys.closeQuiet(fd);
      const code = (err as NodeJS.ErrnoException).code;
      directWhy = `mount(2) of /dev/fuse: ${reasonOf(err)}`;
      if (via === 'direct' || !(code === 'EPERM' || code === 'EACCES' || code === 'ENOENT' || code === 'ENODEV')) {
        throw new FuseMountError(`mounting on ${mountpoint}: ${directWhy}`, { cause: err });
      }
    }
  }
  const helper = fusermountPath();
  if (!helper) throw new FuseMountError(`mounting on ${mountpoint}: ${directWhy ? `${directWhy}, and ` : ''}fusermount3 is not installed (Debian: fuse3)`);
  const [ours, helperEnd] = socketPair(true);
  let theirs = helperEnd;
  try {
    const opts = ['ro', 'nosuid', 'nodev', 'default_permissions', 'fsname=composefs', 'subtype=composefs'];
    if (allowOther) opts.push('allow_other');
    const r = spawnSync(helper, ['-o', opts.join(','), '--', mountpoint], {
      stdio: ['ignore', 'ignore', 'pipe', theirs],
      env: { ...process.env, _FUSE_COMMFD: '3' },
      encoding: 'utf8',
    });
    sys.closeQuiet(theirs);
    theirs = -1;
    if (r.status !== 0) {
      const msg = (r.stderr || '').trim().split('\n').pop()?.replace(/^fusermount3: /, '') || `exit ${r.status ?? r.signal}`;
      throw new FuseMountError(`mounting on ${mountpoint} with fusermount3: ${msg}`);
    }
    const fd = receiveFd(ours);
    if (fd === null) throw new FuseMountError(`mounting on ${mountpoint}: fusermount3 passed back no /dev/fuse descriptor`);
    explain.push(`mounted by fusermount3 (setuid helper), which passed /dev/fuse back over a unix socket${directWhy ? ` (${directWhy})` : ''}`);
    return { fd, via: 'fusermount' };
  } finally {
    sys.closeQuiet(ours);
    sys.closeQuiet(theirs);
  }
}

function passthroughLine(s: ServerState): string {
  return `passthrough: ${s.passthroughWhy}`;
}

/**
 * Mount and serve in this process. Resolves with the result once the kernel
 * is served (INIT answered); `closed` resolves when the mount is gone.
 */
export async function serveFuse(
  image: string,
  mountpoint: string,
  o: FuseMountOptions,
  onLog?: (line: string) => void,
): Promise<{ result: FuseMountResult; closed: Promise<void>; server: FuseServer | null }> {
  const t0 = performance.now();
  const p = prepare(image, mountpoint, o);
  const logPath = o.log ?? defaultLog(p.mountpoint);
  const explain = [...p.explain];
  explain.push(o.verity ? 'verity: every object is checked against the digest the image records before it is served, and every block read against its Merkle tree' : 'verity: off');
  if (o.dryRun) {
    return {
      result: { rung: 'fuse', readonly: true, image: p.image, mountpoint: p.mountpoint, via: o.via === 'fusermount' ? 'fusermount' : 'direct', pid: process.pid, passthrough: null, verity: !!o.verity, log: logPath, explain, ms: performance.now() - t0, dryRun: true },
      closed: Promise.resolve(),
      server: null,
    };
  }
  // A log named with log= is opened now (refused now, in one line); the default one when there is something to say.
  if (!o.log) checkLogDirectory(join(logPath, '..'), false);
  let logFd = o.log ? openLog(logPath) : -1;
  const log = (line: string) => {
    const record = logRecord(`${p.mountpoint}: ${line}`);
    onLog?.(logRecord(line));
    try {
      if (logFd < 0) {
        checkLogDirectory(join(logPath, '..'), true);
        logFd = openLog(logPath);
      }
      writeSync(logFd, `${new Date().toISOString()} ${record}\n`);
    } catch {
      /* nowhere to log */
    }
  };
  let fd = -1;
  let via: FuseVia;
  let server: FuseServer;
  try {
    ({ fd, via } = mountDevice(p.mountpoint, o, explain));
    server = new FuseServer(fd, p.view, { basedirs: o.basedir.map((d) => resolve(d)), verity: o.verity, passthrough: o.passthrough, readers: o.readers, log });
  } catch (err) {
    if (fd >= 0) {
      try {
        unmountFuse(p.mountpoint, true);
      } catch {
        /* not mounted */
      }
    }
    sys.closeQuiet(fd);
    sys.closeQuiet(logFd);
    throw err;
  }
  const unmount = () => {
    try {
      unmountFuse(p.mountpoint, true);
    } catch {
      /* gone already */
    }
  };
  const onSignal = () => unmount();
  for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(s, onSignal);
  const closed = server.serve().finally(() => {
    for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.off(s, onSignal);
    sys.closeQuiet(fd);
    sys.closeQuiet(logFd);
    logFd = -1;
  });
  closed.catch(() => {});
  // The kernel sends INIT as soon as the mount exists; the first access waits for our answer.
  await Promise.race([server.initialised(), closed]);
  explain.push(`server: process ${process.pid}, ${o.verity ? 1 : o.readers ?? 2} serving thread(s) with one outstanding read of /dev/fuse each, kernel protocol 7.${server.state.kernelMinor}`);
  explain.push(passthroughLine(server.state));
  explain.push(`log: ${logPath} (written only when there is something to report)`);
  return {
    result: { rung: 'fuse', readonly: true, image: p.image, mountpoint: p.mountpoint, via, pid: process.pid, passthrough: server.state.passthrough, verity: !!o.verity, log: logPath, explain, ms: performance.now() - t0, dryRun: false },
    closed,
    server,
  };
}

/**
 * Mount an image through FUSE. By default the server runs detached and this
 * returns once it serves; with `foreground` it serves here (the promise
 * resolves once serving; await `closed` of serveFuse for the end).
 */
export async function mountFuse(image: string, mountpoint: string, o: FuseMountOptions): Promise<FuseMountResult> {
  if (o.foreground || o.dryRun) return (await serveFuse(image, mountpoint, o)).result;
  const t0 = performance.now();
  const config: DaemonConfig = {
    image: resolve(image),
    mountpoint: resolve(mountpoint),
    options: { ...o, basedir: o.basedir.map((d) => resolve(d)), log: o.log ? resolve(o.log) : undefined, foreground: true },
  };
  const entry = new URL('../fuse/daemon.js', import.meta.url);
  const readers = o.readers ?? 2;
  const child = spawn(process.execPath, [entry.pathname, JSON.stringify(config)], {
    detached: true,
    cwd: '/',
    stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
    env: { ...process.env, UV_THREADPOOL_SIZE: String(readers + 6) },
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const pipe = child.stdio[3] as NodeJS.ReadableStream;
  const message = await new Promise<string>((resolveMsg) => {
    let text = '';
    pipe.setEncoding('utf8');
    pipe.on('data', (d: string) => {
      text += d;
      if (text.includes('\n')) resolveMsg(text.slice(0, text.indexOf('\n')));
    });
    pipe.on('end', () => resolveMsg(text));
    child.on('exit', () => resolveMsg(text));
  });
  (pipe as unknown as { destroy(): void }).destroy();
  child.unref();
  let parsed: { ok: boolean; result?: FuseMountResult; error?: { message: string; code: string } };
  try {
    parsed = JSON.parse(message);
  } catch {
    throw new FuseMountError(`mounting ${image} on ${mountpoint}: the FUSE server exited before serving`);
  }
  if (!parsed.ok) {
    // A server that failed is gone before we say so (it exits right after its report).
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([exited, new Promise((r) => (timer = setTimeout(r, 2000)))]);
    clearTimeout(timer);
    const e = parsed.error!;
    if (e.code === 'usage') throw new UsageError(e.message);
    throw new FuseMountError(e.message);
  }
  return { ...parsed.result!, ms: performance.now() - t0 };
}
