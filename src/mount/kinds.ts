/**
 * Kinds of composefs mount other than the kernel's overlay: mounts served
 * by a process of their own (the FUSE server: src/fuse/kind.ts). The mount
 * library knows them only through this registration, made by the entry
 * points (the `cfs` commands, the library's src/index.ts), so that it loads
 * no code of theirs: unmounting one, saying whether its server still
 * answers, and removing one whose server is gone are theirs.
 */
import type { MountInfo } from './mountinfo.js';

/** A served mount as `cfs status` shows it. */
export interface ServedMountStatus {
  mountpoint: string;
  /**
   * serving: the server answered; disconnected: it is gone and the mount
   * only waits to be removed; unresponsive: no answer by the deadline
   * (stopped or stuck); unknown: this user may not ask, or another error.
   */
  state: 'serving' | 'disconnected' | 'unresponsive' | 'unknown';
  why: string;
  options: string;
}

export interface MountKind {
  /** Its key in the system status (`fuse`). */
  readonly name: string;
  /** What its section in `cfs status` is called ("FUSE mounts"). */
  readonly title: string;
  /** Its file system type in /proc/self/mountinfo. */
  readonly fstype: string;
  /** Unmount one (MNT_DETACH when lazy), or throw a one-line ComposefsError. */
  unmount(mountpoint: string, lazy: boolean): void;
  /** Those of `all`, each with whether its server answers; never waits on a server. */
  status(all: MountInfo[]): ServedMountStatus[];
  /** Unmount those whose server is gone; what was done, one line each. */
  cleanDisconnected(): string[];
}

const registered: MountKind[] = [];

/** Add a mount kind (once per name; a second registration replaces the first). */
export function registerMountKind(kind: MountKind): void {
  const i = registered.findIndex((k) => k.name === kind.name);
  if (i >= 0) registered[i] = kind;
  else registered.push(kind);
}

export function registeredMountKinds(): readonly MountKind[] {
  return registered;
}

/** The registered kind a mount is of, by its file system type. */
export function mountKindOf(m: MountInfo): MountKind | undefined {
  return registered.find((k) => k.fstype === m.fstype);
}
