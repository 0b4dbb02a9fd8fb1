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
import { readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';

export interface Answer {
  ok: boolean;
  why: string;
}

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
}

export const kernel: KernelKnowledge = { fileBacked: new Map() };

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
  try {
    const config = gunzipSync(readFileSync('/proc/config.gz'));
    if (config.length > 0) return config.includes('\nCONFIG_FS_VERITY=y');
  } catch {
    /* no IKCONFIG_PROC */
  }
  try {
    const syms = readFileSync('/proc/kallsyms');
    if (syms.length === 0) return null;
    return syms.includes(' fsverity_ioctl_measure\n') || syms.includes(' fsverity_get_digest\n');
  } catch {
    return null;
  }
}

/** Names for the f_type values we are likely to meet, for messages. */
export function fsTypeName(magic: number): string {
  const names: Record<number, string> = {
    0xef53: 'ext4',
    0x58465342: 'xfs',
    0x9123683e: 'btrfs',
    0xf2f52010: 'f2fs',
    0x01021994: 'tmpfs',
    0x858458f6: 'ramfs',
    0x794c7630: 'overlayfs',
    0xe0f5e1e2: 'erofs',
    0x6969: 'nfs',
    0x65735546: 'fuse',
    0x2fc12fc1: 'zfs',
  };
  return names[magic] ?? `file system 0x${magic.toString(16)}`;
}
