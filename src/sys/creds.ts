/**
 * A thread's own file-system credentials, through the raw system calls:
 * setfsuid, setfsgid, setgroups, capget/capset. Linux keeps credentials per
 * thread; glibc makes setgroups (and setuid & co.) process-wide by signalling
 * every thread, the raw call does not. Node runs JavaScript on one thread,
 * so a synchronous stretch of calls made between `becomeCaller` and
 * `restoreCredentials` runs with the caller's rights while the other threads
 * (libuv's pool, workers) keep theirs.
 */
import { lastErrno, libc, SysError } from './libc.js';

const NR: Record<string, Record<'getgroups' | 'setgroups' | 'setfsuid' | 'setfsgid' | 'capget' | 'capset', number>> = {
  x64: { getgroups: 115, setgroups: 116, setfsuid: 122, setfsgid: 123, capget: 125, capset: 126 },
  arm64: { getgroups: 158, setgroups: 159, setfsuid: 151, setfsgid: 152, capget: 90, capset: 91 },
};

/** _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set. */
const CAP_VERSION_3 = 0x20080522;

/** The capabilities a file-system uid change drops (the kernel's CAP_FS_MASK): what lets root past file permissions. */
export const CAP_CHOWN = 0;
export const CAP_DAC_OVERRIDE = 1;
export const CAP_DAC_READ_SEARCH = 2;
export const CAP_FOWNER = 3;
export const CAP_FSETID = 4;
export const CAP_LINUX_IMMUTABLE = 9;
export const CAP_MKNOD = 27;
export const CAP_MAC_OVERRIDE = 32;
const FS_CAPS = [CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID, CAP_LINUX_IMMUTABLE, CAP_MKNOD, CAP_MAC_OVERRIDE];

type Syscall = (nr: number, ...args: unknown[]) => number | bigint;
let syscallFn: Syscall | null = null;

function nr(name: keyof (typeof NR)['x64']): number {
  const table = NR[process.arch];
  if (!table) throw new Error(`per-thread credentials: no system call numbers for ${process.arch}`);
  return table[name];
}

function call(name: keyof (typeof NR)['x64'], ...typed: unknown[]): number {
  syscallFn ??= libc().func('long syscall(long number, ...)') as Syscall;
  return Number(syscallFn(nr(name), ...typed));
}

/** The effective, permitted and inheritable sets of this thread, as capget gives them (two words each). */
export interface CapSets {
  data: Buffer;
}

export function capget(): CapSets {
  const header = Buffer.alloc(8);
  header.writeUInt32LE(CAP_VERSION_3, 0);
  const data = Buffer.alloc(24);
  if (call('capget', 'void *', header, 'void *', data) < 0) throw new SysError('capget', lastErrno());
  return { data };
}

export function capset(sets: CapSets): void {
  const header = Buffer.alloc(8);
  header.writeUInt32LE(CAP_VERSION_3, 0);
  if (call('capset', 'void *', header, 'void *', sets.data) < 0) throw new SysError('capset', lastErrno());
}

/** Whether capability `cap` is in the effective set of `sets`. */
export function hasEffective(sets: CapSets, cap: number): boolean {
  return (sets.data.readUInt32LE(cap < 32 ? 0 : 12) & (1 << cap % 32)) !== 0;
}

/** `sets` with the file-system capabilities (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER...) taken out of the effective set. */
function withoutFsCaps(sets: CapSets): CapSets {
  const data = Buffer.from(sets.data);
  for (const cap of FS_CAPS) {
    const at = cap < 32 ? 0 : 12;
    data.writeUInt32LE((data.readUInt32LE(at) & ~(1 << cap % 32)) >>> 0, at);
  }
  return { data };
}

export function getgroups(): number[] {
  const n = call('getgroups', 'int', 0, 'void *', null);
  if (n < 0) throw new SysError('getgroups', lastErrno());
  const list = new Uint32Array(Math.max(n, 1));
  const got = call('getgroups', 'int', n, 'void *', list);
  if (got < 0) throw new SysError('getgroups', lastErrno());
  return [...list.subarray(0, got)];
}

export function setgroups(groups: readonly number[]): void {
  const list = Uint32Array.from(groups);
  if (call('setgroups', 'size_t', list.length, 'void *', list.length ? list : null) < 0) throw new SysError('setgroups', lastErrno());
}

/**
 * setfsuid/setfsgid report no error; they return the previous id. Asking
 * again with -1 (never valid) returns the id in force: compare it.
 */
function setFsId(name: 'setfsuid' | 'setfsgid', id: number): void {
  call(name, 'uint32', id);
  const now = call(name, 'uint32', 0xffffffff) >>> 0;
  if (now !== id >>> 0) throw new SysError(name, 1 /* EPERM */);
}

/** What a thread's credentials were, to put back. */
export interface SavedCredentials {
  fsuid: number;
  fsgid: number;
  groups: number[];
  caps: CapSets;
}

export interface Identity {
  uid: number;
  gid: number;
  groups: readonly number[];
}

/**
 * Make this thread's file-system credentials those of `who`: fsuid, fsgid,
 * supplementary groups, and no capability that overrides file permissions
 * (the other capabilities stay: creating a mount needs CAP_SYS_ADMIN).
 * Returns what to give `restoreCredentials`; on failure nothing is changed.
 */
export function becomeCaller(who: Identity): SavedCredentials {
  const saved: SavedCredentials = {
    fsuid: call('setfsuid', 'uint32', 0xffffffff) >>> 0,
    fsgid: call('setfsgid', 'uint32', 0xffffffff) >>> 0,
    groups: getgroups(),
    caps: capget(),
  };
  try {
    setgroups(who.groups);
    setFsId('setfsgid', who.gid);
    setFsId('setfsuid', who.uid);
    capset(withoutFsCaps(saved.caps));
  } catch (err) {
    restoreCredentials(saved);
    throw err;
  }
  return saved;
}

/** Put back what `becomeCaller` changed (the fsuid first: going back to 0 lets the kernel raise the capabilities again). */
export function restoreCredentials(saved: SavedCredentials): void {
  setFsId('setfsuid', saved.fsuid);
  setFsId('setfsgid', saved.fsgid);
  setgroups(saved.groups);
  capset(saved.caps);
}
