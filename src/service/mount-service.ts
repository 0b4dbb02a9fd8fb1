/**
 * The mount service (`cfs serve`, issue 20): the io.composefs.Mount
 * interface over varlink (src/service/varlink.ts), each Mount done by
 * mountForCaller with the caller as the kernel reports it (SO_PEERCRED,
 * SO_PEERGROUPS, SO_PEERPIDFD), never as the caller says.
 *
 * The service remembers the mounts it made, by their unique mount id
 * (STATX_MNT_ID_UNIQUE: never reused while the system runs) and the id of
 * the mount namespace each went into: ids only, so a record pins no mount
 * and no namespace. Whether a recorded mount still exists is asked of the
 * kernel each time it matters (statmount(2) in that namespace): a mount
 * the caller unmounted itself, or whose namespace ended, stops counting.
 * These records bound what each uid holds (`maxMountsPerUser`, with the
 * requests under way counted too, so parallel requests cannot overshoot),
 * say which mounts Unmount may detach for a uid, and answer List.
 */
import { closeSync, fstatSync, openSync, readFileSync, readlinkSync, readSync, renameSync, unlinkSync, writeFileSync, constants as fsc } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { ComposefsError, reasonOf } from '../errors.js';
import { printable } from '../printable.js';
import { closeFds } from '../sys/socket.js';
import { mountIdOf, statMount } from '../sys/mountid.js';
import { SysError } from '../sys/libc.js';
import { CallerGone, CallerRefusal, mountForCaller, unmountInNamespace, type Caller, type CallerMountOptions } from './mount-for-caller.js';
import { DEFAULT_MOUNT_SOCKET, MOUNT_INTERFACE, MountError, mountInterfaceDescription } from './mount-interface.js';
import { invalidParameter, Parameters, serveVarlink, VarlinkError, type CallContext, type ServeOptions, type VarlinkServer } from './varlink.js';
import type { JsonObject } from '../oci/strict-json.js';

export const DEFAULT_MAX_MOUNTS_PER_USER = 64;
/** Records kept before those of every uid are checked for mounts gone (each uid's own are checked whenever it asks). */
const PRUNE_AT = 1024;
/** Basedirs one Mount may name (the interface's 1..16). */
const MAX_BASEDIRS = 16;
/** Descriptors one message may carry: a Mount's image, its basedirs and its mountpoint. */
const MAX_FDS_PER_MESSAGE = MAX_BASEDIRS + 2;

export interface MountServiceOptions {
  /** A path to create the socket at (default /run/composefs/mount.sock), or a listening socket's descriptor (systemd's). */
  listen?: string | number;
  /** Service mounts one uid may hold at once (default 64). */
  maxMountsPerUser?: number;
  /**
   * Mounts prepared at once (default 4); more wait their turn. Each holds its
   * image and the tree read from it in memory (up to 256 MiB and more), so
   * this, not the number of callers, bounds the service's memory.
   */
  maxConcurrentMounts?: number;
  /** One line per request (printable already); default: none. */
  log?: (line: string) => void;
  /**
   * Where the records of the mounts made are kept across restarts (written
   * 0600 after each change, read at start if root owns it and only root may
   * write it); default: nowhere, a restarted service knows no earlier mount
   * (and its users could not unmount them through it).
   */
  stateFile?: string;
  /** Options of the transport (limits, timeouts), for tests. */
  serve?: Omit<ServeOptions, 'log'>;
  /** Options passed to every mountForCaller (private dirs, kernel knowledge), for tests. */
  mount?: Pick<CallerMountOptions, 'privateDirs' | 'maxImageBytes' | 'knowledge' | 'source'>;
}

export interface MountService {
  /** The socket's path, when the service created it. */
  readonly path: string | undefined;
  /** Stop accepting, finish the requests under way, remove the socket it created. */
  close(): Promise<void>;
}

/** One mount the service made. */
interface MountRecord {
  uid: number;
  mountId: bigint;
  /** The mount namespace it went into (0: unknown, then it counts until unmounted through the service). */
  mountNsId: bigint;
  /** Where it was attached, as the service saw the mountpoint descriptor; empty when handed over detached. */
  mountpoint: string;
  /** fs-verity digest (hex) of the image written and mounted. */
  image: string;
  detached: boolean;
  /** The process that asked, by pid and start time: a detached mount it still holds counts while it lives. */
  pid: number;
  pidStart: string | null;
}

const STATE_VERSION = 1;
const MAX_STATE_BYTES = 16 << 20;

/**
 * The records kept in `path`, or none (a missing file) — and none, with a
 * log line, from a file any user could have written: a record says whose a
 * mount is, so a forged one would let a user unmount another's.
 */
function loadState(path: string, log: (line: string) => void): MountRecord[] {
  let fd: number;
  try {
    fd = openSync(path, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') log(printable(`state ${path}: not read: ${reasonOf(err)}`));
    return [];
  }
  let text: string;
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.uid !== 0 || (st.mode & 0o022) !== 0 || st.nlink !== 1 || st.size > MAX_STATE_BYTES) {
      log(printable(`state ${path}: ignored: not a regular file of root's that only root may write`));
      return [];
    }
    const buf = Buffer.alloc(st.size);
    let got = 0;
    while (got < buf.length) {
      const n = readSync(fd, buf, got, buf.length - got, got);
      if (n === 0) break;
      got += n;
    }
    text = buf.subarray(0, got).toString('utf8');
  } finally {
    closeSync(fd);
  }
  const out: MountRecord[] = [];
  try {
    const doc = JSON.parse(text) as { version?: unknown; records?: unknown };
    if (doc.version !== STATE_VERSION || !Array.isArray(doc.records)) throw new Error(`not version ${STATE_VERSION} records`);
    const id = (v: unknown) => (typeof v === 'string' && /^[0-9]{1,20}$/.test(v) ? BigInt(v) : null);
    const count = (v: unknown) => (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : null);
    for (const r of doc.records as Array<Record<string, unknown>>) {
      const uid = count(r?.uid);
      const pid = count(r?.pid);
      const mountId = id(r?.mountId);
      const mountNsId = id(r?.mountNsId);
      if (uid === null || pid === null || mountId === null || mountNsId === null) continue;
      if (typeof r.mountpoint !== 'string' || typeof r.image !== 'string' || typeof r.detached !== 'boolean') continue;
      if (r.pidStart !== null && typeof r.pidStart !== 'string') continue;
      out.push({ uid, pid, mountId, mountNsId, mountpoint: r.mountpoint, image: r.image, detached: r.detached, pidStart: r.pidStart as string | null });
    }
  } catch (err) {
    log(printable(`state ${path}: ignored: ${reasonOf(err)}`));
    return [];
  }
  return out;
}

/** Write the records to `path` (0600, through a new file renamed into place); false when that failed. */
function saveState(path: string, records: Iterable<MountRecord>): boolean {
  const doc = {
    version: STATE_VERSION,
    records: [...records].map((r) => ({ ...r, mountId: r.mountId.toString(), mountNsId: r.mountNsId.toString() })),
  };
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, `${JSON.stringify(doc)}\n`, { mode: 0o600, flag: 'wx' });
    renameSync(tmp, path);
    return true;
  } catch {
    try {
      unlinkSync(tmp);
    } catch {
      // never made
    }
    return false;
  }
}

/** A process's start time (field 22 of /proc/PID/stat): with the pid, names one process for the life of the system. */
function processStart(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

/** Where a descriptor points, as this process sees it (for the log and List only: never opened again). */
function shownPath(fd: number): string {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return `fd ${fd}`;
  }
}

/** A refusal or failure as the interface's error, and the one-line reason the log gives. */
function asInterfaceError(err: unknown): { error: VarlinkError; reason: string } {
  if (err instanceof VarlinkError) {
    const p = err.parameters;
    const reason = typeof p.reason === 'string' ? p.reason : typeof p.parameter === 'string' ? `invalid parameter ${p.parameter}` : err.message;
    return { error: err, reason };
  }
  if (err instanceof CallerRefusal) {
    const reason = err.message;
    switch (err.subject) {
      case 'mountpoint':
        return { error: new VarlinkError(MountError.NotOwner, { reason }), reason };
      case 'image':
        return { error: new VarlinkError(MountError.ImageRefused, { reason }), reason };
      case 'descriptor':
        return { error: new VarlinkError(MountError.BadDescriptor, { parameter: err.parameter ?? '', reason }), reason };
      default:
        return { error: new VarlinkError(MountError.MountFailed, { reason }), reason };
    }
  }
  if (err instanceof ComposefsError) return { error: new VarlinkError(MountError.MountFailed, { reason: err.message }), reason: err.message };
  const reason = reasonOf(err);
  return { error: new VarlinkError(MountError.InternalError, { reason }), reason: `internal error: ${reason}` };
}

/**
 * Start the mount service on `options.listen`. Resolves once it listens;
 * rejects (one line) when the socket cannot be made.
 */
export async function startMountService(options: MountServiceOptions = {}): Promise<MountService> {
  const limit = options.maxMountsPerUser ?? DEFAULT_MAX_MOUNTS_PER_USER;
  if (!Number.isSafeInteger(limit) || limit < 0) throw new RangeError(`maxMountsPerUser: ${limit} is not a count`);
  const log = options.log ?? (() => {});
  const maxConcurrent = Math.max(1, options.maxConcurrentMounts ?? 4);
  let preparing = 0;
  const waiting: Array<() => void> = [];
  /** A turn to prepare a mount; call what it returns when done (the next waiting request goes on). */
  async function turn(): Promise<() => void> {
    if (preparing < maxConcurrent) preparing++;
    else await new Promise<void>((resolve) => waiting.push(resolve)); // handed over: `preparing` stays
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = waiting.shift();
      if (next) next();
      else preparing--;
    };
  }
  const records = new Map<bigint, MountRecord>();
  const stateFile = options.stateFile;
  let stateFailing = false;
  /** Keep the records where a restarted service finds them (a failure is logged once until it works again). */
  function persist(): void {
    if (stateFile === undefined) return;
    const ok = saveState(stateFile, records.values());
    if (!ok && !stateFailing) log(printable(`state ${stateFile}: cannot be written: the records live in memory only`));
    stateFailing = !ok;
  }
  function forget(r: MountRecord): void {
    if (records.delete(r.mountId)) persist();
  }
  const inFlight = new Map<number, number>();
  /** statmount(2) is missing (a kernel before 6.8): records then count until unmounted through the service. */
  let noStatmount = false;

  function alive(r: MountRecord): boolean {
    if (noStatmount || r.mountNsId === 0n) return true;
    try {
      if (statMount(r.mountId, r.mountNsId) !== null) return true;
    } catch (err) {
      if (err instanceof SysError && err.code === 'ENOSYS') noStatmount = true;
      return true; // cannot tell: it counts
    }
    // Handed over detached and not attached (yet) where the caller was: it counts while the process that took it lives.
    return r.detached && r.pidStart !== null && processStart(r.pid) === r.pidStart;
  }

  /** The uid's records that still exist; the others are forgotten. */
  function liveRecords(uid: number): MountRecord[] {
    const out: MountRecord[] = [];
    for (const r of [...records.values()]) {
      if (r.uid !== uid) continue;
      if (alive(r)) out.push(r);
      else forget(r);
    }
    return out;
  }

  function who(call: CallContext): string {
    return `uid ${call.peer.uid} pid ${call.peer.pid}`;
  }

  /** Run a method's body: one log line with the result and the time, refusals as the interface's errors. */
  async function logged<T>(call: CallContext, method: string, body: (note: { where: string; image: string }) => Promise<{ result: T; line: string }>): Promise<T> {
    const t0 = performance.now();
    const note = { where: '', image: '' };
    const ms = () => `${Math.round(performance.now() - t0)} ms`;
    const head = () => `${who(call)} ${method}${note.image ? ` image sha256:${note.image}` : ''}${note.where ? ` on ${note.where}` : ''}`;
    try {
      const { result, line } = await body(note);
      log(printable(`${head()}: ${line} in ${ms()}`));
      return result;
    } catch (err) {
      const { error, reason } = asInterfaceError(err);
      // A caller that hung up is answered by nobody: the line says what became of its request.
      const what = err instanceof CallerGone ? '' : error.error === MountError.InternalError ? 'failed: ' : 'refused: ';
      log(printable(`${head()}: ${what}${reason} (${ms()})`));
      throw error;
    }
  }

  async function mount(params: JsonObject, call: CallContext) {
    return logged(call, 'Mount', async (note) => {
      const p = new Parameters(params);
      const imageIndex = p.int('image');
      const basedirIndexes = p.intArray('basedirs', MAX_BASEDIRS);
      if (basedirIndexes.length === 0) throw invalidParameter('basedirs');
      const mountpointIndex = p.optionalInt('mountpoint');
      const o = p.object('options');
      const digest = o.optionalString('digest', 128);
      if (digest !== undefined && !/^(?:[0-9a-fA-F]{64}){1,2}$/.test(digest)) throw invalidParameter('options.digest');
      const mountOptions: CallerMountOptions = {
        ...options.mount,
        digest,
        verity: o.optionalEnum('verity', ['off', 'try', 'require'] as const),
        noexec: o.optionalBool('noexec'),
        atime: o.optionalEnum('atime', ['relatime', 'noatime', 'strictatime'] as const),
        detached: o.optionalBool('detached'),
      };
      o.done();
      p.done();

      const taken: number[] = [];
      const take = (index: number, parameter: string) => {
        const fd = call.fds.take(index, parameter);
        taken.push(fd);
        return fd;
      };
      let pidfd = -1;
      const uid = call.peer.uid;
      let counted = false;
      try {
        const imageFd = take(imageIndex, 'image');
        const basedirFds = basedirIndexes.map((i) => take(i, 'basedirs'));
        const mountpointFd = mountpointIndex === undefined ? undefined : take(mountpointIndex, 'mountpoint');
        if (mountpointFd !== undefined && !mountOptions.detached) note.where = shownPath(mountpointFd);

        // Records of uids that never come back are forgotten once they are gone, whoever asks next.
        if (records.size >= PRUNE_AT) for (const r of [...records.values()]) if (!alive(r)) forget(r);
        // Counted and reserved in one synchronous stretch: parallel requests of a uid cannot overshoot.
        const held = liveRecords(uid).length + (inFlight.get(uid) ?? 0);
        if (held >= limit) {
          const reason = `limit reached: uid ${uid} holds ${held} service mounts or requests (limit ${limit})`;
          throw new VarlinkError(MountError.LimitReached, { limit }, reason);
        }
        inFlight.set(uid, (inFlight.get(uid) ?? 0) + 1);
        counted = true;

        const peerPidfd = call.openPeerPidfd();
        pidfd = peerPidfd.pidfd;
        if (!peerPidfd.exact) {
          throw new CallerRefusal('this kernel cannot name the calling process exactly (no SO_PEERPIDFD, Linux 6.5): the service does not join a namespace by a pid that may be reused', 'mount');
        }
        const caller: Caller = { uid, gid: call.peer.gid, groups: call.peer.groups ?? [], pid: call.peer.pid, pidfd };
        const release = await turn();
        let made;
        try {
          // The caller's hang-up (call.signal) undoes the mount: mountForCaller looks at it after its last wait, and from
          // there to the reply nothing waits, so a caller seen gone later finds its answer written.
          made = await mountForCaller({ imageFd, basedirFds, mountpointFd, options: mountOptions, signal: call.signal }, caller);
        } finally {
          release();
        }
        note.image = made.imageDigest;
        const record: MountRecord = {
          uid,
          mountId: made.mountId,
          mountNsId: made.mountNsId,
          mountpoint: made.mountFd === null ? note.where : '',
          image: made.imageDigest,
          detached: made.mountFd !== null,
          pid: call.peer.pid,
          pidStart: processStart(call.peer.pid),
        };
        records.set(made.mountId, record);
        persist();
        const reply: Record<string, unknown> = { mountId: Number(made.mountId), image: made.imageDigest, explain: made.explain };
        const fds: number[] = [];
        if (made.mountFd !== null) {
          reply.mount = 0;
          fds.push(made.mountFd);
        }
        const line = made.mountFd === null ? `mounted (id ${made.mountId})` : `mounted detached (id ${made.mountId}), handed over`;
        return { result: { parameters: reply, fds }, line };
      } finally {
        if (counted) {
          const n = (inFlight.get(uid) ?? 1) - 1;
          if (n > 0) inFlight.set(uid, n);
          else inFlight.delete(uid);
        }
        closeFds(taken);
        if (pidfd >= 0) closeFds([pidfd]);
      }
    });
  }

  async function unmount(params: JsonObject, call: CallContext) {
    return logged(call, 'Unmount', async (note) => {
      const p = new Parameters(params);
      const index = p.int('mountpoint');
      p.done();
      const fd = call.fds.take(index, 'mountpoint');
      let pidfd = -1;
      try {
        note.where = shownPath(fd);
        let id;
        try {
          id = mountIdOf(fd);
        } catch (err) {
          throw new VarlinkError(MountError.BadDescriptor, { parameter: 'mountpoint', reason: `mountpoint: ${reasonOf(err)}` });
        }
        if (!id.mountRoot) throw new VarlinkError(MountError.NoSuchMount, { reason: `mountpoint: not the root of a mount (mount id ${id.mountId})` });
        const record = records.get(id.mountId);
        if (!record || !alive(record)) {
          if (record) forget(record);
          throw new VarlinkError(MountError.NoSuchMount, { reason: `mountpoint: mount ${id.mountId} was not made by the service` });
        }
        if (record.uid !== call.peer.uid) {
          throw new VarlinkError(MountError.NotOwner, { reason: `mountpoint: mount ${id.mountId} was made for another uid, not for uid ${call.peer.uid}` });
        }
        note.image = record.image;
        const peerPidfd = call.openPeerPidfd();
        pidfd = peerPidfd.pidfd;
        if (!peerPidfd.exact) throw new CallerRefusal('this kernel cannot name the calling process exactly (no SO_PEERPIDFD, Linux 6.5)', 'mount');
        await unmountInNamespace(fd, pidfd);
        forget(record);
        return { result: { parameters: { mountId: Number(record.mountId) } }, line: `unmounted (id ${record.mountId})` };
      } finally {
        closeFds([fd]);
        if (pidfd >= 0) closeFds([pidfd]);
      }
    });
  }

  async function list(params: JsonObject, call: CallContext) {
    return logged(call, 'List', async () => {
      new Parameters(params).done();
      const mine = liveRecords(call.peer.uid);
      const mounts = mine.map((r) => ({ mountId: Number(r.mountId), mountpoint: r.mountpoint, image: r.image, detached: r.detached }));
      return { result: { parameters: { mounts, limit } }, line: `${mounts.length} mounts` };
    });
  }

  if (stateFile !== undefined) {
    // The mounts of an earlier run that still exist are this run's to count, list and unmount.
    for (const r of loadState(stateFile, log)) if (alive(r)) records.set(r.mountId, r);
    persist();
  }

  const server: VarlinkServer = serveVarlink(
    options.listen ?? DEFAULT_MOUNT_SOCKET,
    {
      vendor: 'composefs-ts',
      product: 'cfs serve',
      version: '0.1.0',
      url: 'https://github.com/composefs/composefs',
      interfaces: [{ name: MOUNT_INTERFACE, description: mountInterfaceDescription, methods: { Mount: mount, Unmount: unmount, List: list } }],
    },
    { maxFdsPerMessage: MAX_FDS_PER_MESSAGE, ...options.serve, log },
  );
  return {
    path: server.path,
    close: () => server.close(),
  };
}
