/**
 * What the running kernel can do, learned by asking it (never by version
 * number) and remembered for the life of the process. Each answer carries
 * the reason, so `--explain` can say why a path was or was not taken.
 *
 * Most answers are learned as a side effect of mounting: the first mount
 * tries the best path and, when the kernel refuses it in the specific way
 * that means "not supported", records that and falls back. Later mounts go
 * straight to the path that works.
 */
import { existsSync, openSync, readFileSync, constants as fsc } from 'node:fs';
import { createRequire } from 'node:module';
import * as sys from '../sys/mount.js';
import { SysError } from '../sys/libc.js';
import { EXT4_SUPER_MAGIC, OVERLAYFS_SUPER_MAGIC, RAMFS_MAGIC, TMPFS_MAGIC } from '../sys/fsinfo.js';
import { SUPER_MAGIC_V1 as EROFS_SUPER_MAGIC } from '../erofs/format.js';

import type { Answer } from './plan.js';
export type { Answer } from './plan.js';

export interface KernelKnowledge {
  /** fsopen() exists (the new mount API). */
  newApi?: Answer;
  /** EROFS accepts its source as a file descriptor (fsconfig FSCONFIG_SET_FD "source"). */
  erofsFdSource?: Answer;
  /** File-backed EROFS works for images on this file system type (f_type), e.g. ext4 yes, tmpfs no. */
  fileBacked: Map<number, Answer>;
  /** overlayfs takes layers as file descriptors of detached mounts (FSCONFIG_SET_FD "lowerdir+"/"datadir+"). */
  overlayFdLayers?: Answer;
  /** overlayfs knows data-only lower layers ("::" in legacy lowerdir=). */
  overlayDataOnly?: Answer;
  /** The kernel has fs-verity. */
  fsverity?: Answer;
  /** /dev/loop-control exists. */
  loopDevices?: boolean;
}

/**
 * The process's knowledge, the default a mount is handed (a caller may hand
 * its own). Mount code never writes it directly: attempts return findings
 * and `learn` records them, here and nowhere else.
 */
export const kernel: KernelKnowledge = { fileBacked: new Map() };

/** Something an attempt found out; `ifUnknown` keeps an earlier answer. */
export type Finding =
  | { fact: 'newApi' | 'erofsFdSource' | 'overlayFdLayers' | 'overlayDataOnly' | 'fsverity'; answer: Answer; ifUnknown?: boolean }
  | { fact: 'fileBacked'; fsType: number; answer: Answer; ifUnknown?: boolean };

/** Record a finding in `knowledge`. */
export function learn(knowledge: KernelKnowledge, f: Finding): void {
  if (f.fact === 'fileBacked') {
    if (!f.ifUnknown || !knowledge.fileBacked.has(f.fsType)) knowledge.fileBacked.set(f.fsType, f.answer);
  } else if (!f.ifUnknown || knowledge[f.fact] === undefined) knowledge[f.fact] = f.answer;
}

/** Forget everything learned (tests). */
export function resetKernelKnowledge(): void {
  for (const k of Object.keys(kernel) as Array<keyof KernelKnowledge>) if (k !== 'fileBacked') delete kernel[k];
  kernel.fileBacked.clear();
}

/**
 * Whether this kernel was built with fs-verity, from its own configuration
 * (/proc/config.gz) when it publishes one, else from its symbol table
 * (/proc/kallsyms, slower). Null when neither can tell.
 */
export function kernelHasFsverity(): boolean | null {
  const config = kernelConfig();
  if (config !== null) return config.includes('\nCONFIG_FS_VERITY=y');
  try {
    const syms = readFileSync('/proc/kallsyms');
    if (syms.length === 0) return null;
    return syms.includes(' fsverity_ioctl_measure\n') || syms.includes(' fsverity_get_digest\n');
  } catch {
    return null;
  }
}

let configText: string | null | undefined;
/** The running kernel's own configuration (/proc/config.gz), or null when it does not publish it. */
export function kernelConfig(): string | null {
  if (configText !== undefined) return configText;
  try {
    // node:zlib only when asked: it is not needed to mount.
    const { gunzipSync } = createRequire(import.meta.url)('node:zlib') as typeof import('node:zlib');
    configText = `\n${gunzipSync(readFileSync('/proc/config.gz')).toString('latin1')}`;
  } catch {
    configText = null;
  }
  return configText;
}

export interface Probe {
  what: string;
  /** null: cannot tell without an image (decided per mount). */
  ok: boolean | null;
  why: string;
}

function attempt(fn: () => void): { ok: boolean; why: string } {
  try {
    fn();
    return { ok: true, why: 'yes' };
  } catch (err) {
    if (err instanceof sys.FsConfigError && err.kernelLog.length) return { ok: false, why: err.kernelLog.map((l) => l.replace(/^[ewi] /, '')).join('; ') };
    return { ok: false, why: err instanceof Error ? err.message : String(err) };
  }
}

/** A detached tmpfs mount, for probing overlayfs without touching any real directory. */
function detachedTmpfs(close: number[]): number {
  const fs = sys.fsopen('tmpfs');
  close.push(fs);
  sys.fsconfigCreate(fs);
  const m = sys.fsmount(fs, 0);
  close.push(m);
  return m;
}

/**
 * Ask the kernel what it can do, without an image and without leaving
 * anything (detached tmpfs mounts only): for `cfs status`. Mounting learns
 * the same answers by trying, see `kernel`.
 */
export function probeKernel(): Probe[] {
  const out: Probe[] = [];
  const fds: number[] = [];
  const closeAll = () => fds.splice(0).forEach((fd) => sys.closeQuiet(fd));
  try {
    let newApi = true;
    try {
      fds.push(sys.fsopen('erofs'));
      out.push({ what: 'new mount API (fsopen/fsconfig/fsmount)', ok: true, why: 'yes' });
    } catch (err) {
      newApi = false;
      const code = err instanceof SysError ? err.code : '';
      if (code === 'EPERM') {
        out.push({ what: 'new mount API (fsopen/fsconfig/fsmount)', ok: null, why: 'cannot tell: probing needs root' });
        return out;
      }
      const why = code === 'ENOSYS' ? 'fsopen() not implemented' : err instanceof Error ? err.message : String(err);
      out.push({ what: 'new mount API (fsopen/fsconfig/fsmount)', ok: false, why });
    }
    if (newApi) {
      const devnull = openSync('/dev/null', 'r');
      fds.push(devnull);
      const r = attempt(() => sys.fsconfigFd(fds[0], 'source', devnull));
      out.push({ what: 'EROFS source as a file descriptor', ok: r.ok, why: r.ok ? 'fsconfig accepts an fd source' : r.why });
    }
    const config = kernelConfig();
    const fileBacked = config === null ? null : config.includes('\nCONFIG_EROFS_FS_BACKED_BY_FILE=y');
    out.push({
      what: 'file-backed EROFS (/proc/self/fd/N)',
      ok: fileBacked,
      why: fileBacked === null ? 'decided per mount and per file system (ENOTBLK when not)' : fileBacked ? 'CONFIG_EROFS_FS_BACKED_BY_FILE=y; not on tmpfs' : 'kernel built without it',
    });
    out.push({ what: 'loop devices (LOOP_CONFIGURE)', ok: existsSync('/dev/loop-control'), why: existsSync('/dev/loop-control') ? '/dev/loop-control' : 'no /dev/loop-control' });
    if (newApi) {
      closeAll();
      const r = attempt(() => {
        const ovl = sys.fsopen('overlay');
        fds.push(ovl);
        const dir = openSync('/', sys.O_PATH | fsc.O_DIRECTORY);
        fds.push(dir);
        sys.fsconfigFd(ovl, 'lowerdir+', dir);
      });
      out.push({ what: 'overlayfs layers as file descriptors', ok: r.ok, why: r.ok ? 'fsconfig lowerdir+ takes an fd' : r.why });
      closeAll();
      if (r.ok) {
        const d = attempt(() => {
          const lower = detachedTmpfs(fds);
          const data = detachedTmpfs(fds);
          const ovl = sys.fsopen('overlay');
          fds.push(ovl);
          sys.fsconfigFd(ovl, 'lowerdir+', lower);
          sys.fsconfigFd(ovl, 'datadir+', data);
          sys.fsconfigCreate(ovl);
        });
        out.push({ what: 'overlayfs layers from detached mounts', ok: d.ok, why: d.ok ? 'an overlay over detached tmpfs mounts was created' : d.why });
      }
    }
    const v = kernelHasFsverity();
    out.push({ what: 'fs-verity', ok: v, why: v === null ? 'cannot tell (no /proc/config.gz, no kallsyms)' : v ? 'CONFIG_FS_VERITY' : 'kernel built without CONFIG_FS_VERITY' });
  } finally {
    closeAll();
  }
  return out;
}

/** Names for the f_type values we are likely to meet, for messages. */
export function fsTypeName(magic: number): string {
  const names: Record<number, string> = {
    [EXT4_SUPER_MAGIC]: 'ext4',
    0x58465342: 'xfs',
    0x9123683e: 'btrfs',
    0xf2f52010: 'f2fs',
    [TMPFS_MAGIC]: 'tmpfs',
    [RAMFS_MAGIC]: 'ramfs',
    [OVERLAYFS_SUPER_MAGIC]: 'overlayfs',
    // An EROFS file system's f_type is its super block magic.
    [EROFS_SUPER_MAGIC]: 'erofs',
    0x6969: 'nfs',
    0x65735546: 'fuse',
    0x2fc12fc1: 'zfs',
  };
  return names[magic] ?? `file system 0x${magic.toString(16)}`;
}
