/**
 * The mount ladder: the ways to mount an image, tried in order, and what
 * they share.
 *
 * The top of the ladder is a list of mount rungs. The kernel rung (EROFS +
 * overlayfs, src/mount/mount.ts) is always there; another way to mount (the
 * FUSE server of src/fuse/) plugs in with `registerMountRung` and needs no
 * change to anything else:
 *
 *   registerMountRung({
 *     name: 'fuse',
 *     asked: (o) => o.fuse === true,        // -o fuse / --fuse: this rung only
 *     afterPrivilegeFailure: true,          // else tried when the kernel rung got EPERM
 *     mount: (image, mountpoint, options) => ... a MountResult, or throw a ComposefsError
 *   });
 *
 * `planRungs` (pure) orders them for a request. Inside the kernel rung, the
 * planner of src/mount/plan.ts orders the EROFS backings and overlay
 * layers; executors report each attempt into the `record`, and --explain is
 * made from that record.
 */
import type { MountOptions } from './options.js';

/** One attempt, as it goes into the record --explain is made from. */
export interface Attempt {
  /** 'check' for what was verified before mounting, else the stage of the kernel rung (api, backing, layers, overlay). */
  stage: 'check' | 'api' | 'backing' | 'layers' | 'overlay' | 'rung';
  /** The rung tried (fd, file, loop, path, …) or the check made. */
  rung: string;
  /** used: it worked; refused: the kernel said "not supported", the next rung is tried; note: a remark. */
  outcome: 'used' | 'refused' | 'note';
  /** The --explain line (used, note) or the reason (refused). */
  text: string;
}

/** The --explain lines of a record: what was used and the remarks; refusals appear inside the line of the rung that followed. */
export function explainRecord(record: Attempt[]): string[] {
  return record.filter((a) => a.outcome !== 'refused').map((a) => a.text);
}

/** A way to mount other than the kernel rung. */
export interface MountRung<Result = unknown> {
  readonly name: string;
  /** Whether this request asks for this rung by name (then it is the only rung tried). */
  asked(options: MountOptions): boolean;
  /** Try this rung when the kernel rung failed for lack of privilege (EPERM). */
  readonly afterPrivilegeFailure: boolean;
  /** Mount, or throw a one-line ComposefsError having left nothing behind. */
  mount(image: string | number, mountpoint: string, options: MountOptions): Result | Promise<Result>;
}

const registered: MountRung[] = [];

/** Add a mount rung (once per name; a second registration replaces the first). */
export function registerMountRung(rung: MountRung): void {
  const i = registered.findIndex((r) => r.name === rung.name);
  if (i >= 0) registered[i] = rung;
  else registered.push(rung);
}

export function registeredMountRungs(): readonly MountRung[] {
  return registered;
}

/** The kernel rung's name in a plan. */
export const KERNEL_RUNG = 'kernel';

/**
 * Pure: the rungs to try, in order. A rung the request asks for by name is
 * the only one; otherwise the kernel, then every rung that takes over after
 * a privilege failure (tried only if the one before failed with EPERM).
 */
export function planRungs(options: MountOptions, rungs: readonly Pick<MountRung, 'name' | 'asked' | 'afterPrivilegeFailure'>[]): string[] {
  const asked = rungs.filter((r) => r.asked(options));
  if (asked.length) return asked.map((r) => r.name);
  return [KERNEL_RUNG, ...rungs.filter((r) => r.afterPrivilegeFailure).map((r) => r.name)];
}
