/**
 * What composefs has on this system: the composefs overlays in this mount
 * namespace, how each got its EROFS layer, and what they expose — loop
 * devices, visible temporary mounts, stale paths in mount options, and
 * leftovers of processes killed in the middle of a fallback mount.
 */
import { closeSync, existsSync, openSync, readSync, readdirSync, rmdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { COMPOSEFS_MAGIC } from '../erofs/format.js';
import { listLoops, type LoopInfo } from '../sys/loop.js';
import * as sys from '../sys/mount.js';
import { readMountinfo, splitSuperOptions, type MountInfo } from './mountinfo.js';
import { TEMP_PREFIX, temporaryBase } from './temp.js';
import { isComposefsMount } from './umount.js';
import { registeredMountKinds, type ServedMountStatus } from './kinds.js';

export interface ComposefsMountStatus {
  mountpoint: string;
  id: number;
  readonly: boolean;
  /** fd: the EROFS layer is a detached mount (nothing visible); path: it was given by a path. */
  layers: 'fd' | 'path';
  lower: string[];
  data: string[];
  upper: string | null;
  verity: boolean;
  /** Paths in the overlay's options that no longer exist (a removed temporary directory). */
  stalePaths: string[];
  /** Option paths where an EROFS mount is still attached (a temporary mount never detached). */
  attachedTemporaryMounts: string[];
  options: string;
}

export interface LeftoverDir {
  path: string;
  pid: number;
  /** Whether the process that made it still runs (then it may be mid-mount). */
  alive: boolean;
  mounted: boolean;
}

export interface SystemStatus {
  mounts: ComposefsMountStatus[];
  /** EROFS superblocks the kernel has (/sys/fs/erofs): block-backed ones are named after their device. */
  erofs: Array<{ name: string; backing: 'file' | 'block' }>;
  /** Bound loop devices holding a composefs image. */
  loops: Array<LoopInfo & { device: string }>;
  /** EROFS mounts attached on one of our temporary directories. */
  temporaryMounts: Array<{ mountpoint: string; source: string }>;
  leftovers: LeftoverDir[];
  /**
   * Mounts served by a process of their own, by kind (`fuse`: our FUSE
   * server's, fuse.composefs), each with whether its server still answers:
   * the kinds the entry point registered (src/mount/kinds.ts).
   */
  served: Record<string, ServedMountStatus[]>;
}

function parseLowerdir(v: string): { lower: string[]; data: string[] } {
  // Legacy form: "a:b::c::d" (after "::" data-only layers); backslash escapes ':'.
  const lower: string[] = [];
  const data: string[] = [];
  let cur = '';
  let inData = false;
  const push = () => {
    if (cur) (inData ? data : lower).push(cur);
    cur = '';
  };
  for (let i = 0; i < v.length; i++) {
    const c = v[i];
    if (c === '\\' && i + 1 < v.length) cur += v[++i];
    else if (c === ':') {
      push();
      if (v[i + 1] === ':') {
        inData = true;
        i++;
      }
    } else cur += c;
  }
  push();
  return { lower, data };
}

export function describeMount(m: MountInfo, all: MountInfo[]): ComposefsMountStatus {
  const lower: string[] = [];
  const data: string[] = [];
  let upper: string | null = null;
  let verity = false;
  for (const [k, v] of splitSuperOptions(m.superOptions)) {
    if (k === 'lowerdir+' && v !== null) lower.push(v);
    else if (k === 'datadir+' && v !== null) data.push(v);
    else if (k === 'lowerdir' && v !== null) {
      const p = parseLowerdir(v);
      lower.push(...p.lower);
      data.push(...p.data);
    } else if (k === 'upperdir') upper = v;
    else if (k === 'verity' && (v === 'require' || v === 'on')) verity = true;
  }
  const layers: 'fd' | 'path' = lower.length > 0 && lower[0] === '/' ? 'fd' : 'path';
  const named = [...lower.filter((p) => p !== '/'), ...data, ...(upper ? [upper] : [])];
  const stalePaths = named.filter((p) => !underFuse(p, all) && !existsSync(p));
  const attachedTemporaryMounts = lower.filter((p) => p !== '/' && all.some((x) => x.mountPoint === p && x.fstype === 'erofs'));
  return {
    mountpoint: m.mountPoint,
    id: m.id,
    readonly: m.mountOptions.split(',').includes('ro'),
    layers,
    lower,
    data,
    upper,
    verity,
    stalePaths,
    attachedTemporaryMounts,
    options: m.superOptions,
  };
}

/**
 * Whether `path` lies on a FUSE mount (the innermost mount whose mountpoint
 * is a prefix of it): looking at it would wait on that mount's server, which
 * may be stopped, and status never blocks on a mount. Such paths are not
 * checked.
 */
export function underFuse(path: string, all: MountInfo[]): boolean {
  let best: MountInfo | null = null;
  for (const m of all) {
    const mp = m.mountPoint;
    const within = path === mp || mp === '/' || path.startsWith(`${mp}/`);
    if (within && (!best || mp.length >= best.mountPoint.length)) best = m;
  }
  return best !== null && (best.fstype === 'fuse' || best.fstype.startsWith('fuse.'));
}

function startsWithComposefsMagic(path: string): boolean {
  let fd = -1;
  try {
    fd = openSync(path, 'r');
    const b = Buffer.alloc(4);
    return readSync(fd, b, 0, 4, 0) === 4 && b.readUInt32LE(0) === COMPOSEFS_MAGIC;
  } catch {
    return false;
  } finally {
    if (fd >= 0) closeSync(fd);
  }
}

function temporaryBases(): string[] {
  return [...new Set([temporaryBase(), tmpdir(), '/tmp', '/run'])].filter((d) => existsSync(d));
}

export function findLeftovers(mounts: MountInfo[] = readMountinfo()): LeftoverDir[] {
  const out: LeftoverDir[] = [];
  for (const base of temporaryBases()) {
    let names: string[];
    try {
      names = readdirSync(base);
    } catch {
      continue;
    }
    for (const name of names) {
      if (!name.startsWith(TEMP_PREFIX)) continue;
      const pid = Number(/^(\d+)-/.exec(name.slice(TEMP_PREFIX.length))?.[1] ?? NaN);
      const path = `${base}/${name}`;
      out.push({
        path,
        pid,
        alive: Number.isInteger(pid) && existsSync(`/proc/${pid}`),
        mounted: mounts.some((m) => m.mountPoint === path),
      });
    }
  }
  return out;
}

export function systemStatus(): SystemStatus {
  const all = readMountinfo();
  const mounts = all.filter(isComposefsMount).map((m) => describeMount(m, all));
  let erofs: SystemStatus['erofs'] = [];
  try {
    erofs = readdirSync('/sys/fs/erofs')
      .filter((n) => n !== 'features')
      .map((name) => ({ name, backing: existsSync(`/sys/class/block/${name}`) ? ('block' as const) : ('file' as const) }));
  } catch {
    /* no EROFS in this kernel, or sysfs missing */
  }
  const loops = listLoops()
    .map((l) => ({ ...l, device: `/dev/${l.name}` }))
    // A loop over a file on a FUSE mount is not read (through the device either): its server may be stopped.
    .filter((l) => !underFuse(l.backingFile, all) && (startsWithComposefsMagic(l.backingFile) || startsWithComposefsMagic(l.device)));
  const temporaryMounts = all
    .filter((m) => m.fstype === 'erofs' && m.mountPoint.split('/').pop()!.startsWith(TEMP_PREFIX))
    .map((m) => ({ mountpoint: m.mountPoint, source: m.source }));
  const served = Object.fromEntries(registeredMountKinds().map((k) => [k.name, k.status(all)]));
  return { mounts, erofs, loops, temporaryMounts, leftovers: findLeftovers(all), served };
}

/** Unmount the served mounts (of the registered kinds) whose server is gone; what was done, one line each. */
export function cleanDisconnectedMounts(): string[] {
  return registeredMountKinds().flatMap((k) => k.cleanDisconnected());
}

/** Remove what dead processes left: detach their temporary mounts and remove the directories (only those of `pids`, if given). */
export function cleanLeftovers(opts: { pids?: number[] } = {}): string[] {
  const done: string[] = [];
  for (const l of findLeftovers()) {
    if (l.alive) continue;
    if (opts.pids && !opts.pids.includes(l.pid)) continue;
    if (l.mounted) {
      try {
        sys.umount2(l.path, sys.MNT_DETACH);
        done.push(`detached ${l.path}`);
      } catch {
        /* gone meanwhile */
      }
    }
    try {
      if (statSync(l.path).isDirectory()) {
        rmdirSync(l.path);
        done.push(`removed ${l.path}`);
      }
    } catch {
      /* gone meanwhile */
    }
  }
  return done;
}
