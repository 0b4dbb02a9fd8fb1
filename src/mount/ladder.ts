/**
 * The mount ladder: the ways to mount an image, tried in order, and what
 * they share.
 *
 * The top of the ladder is a list of mount rungs. The kernel rung (EROFS +
 * overlayfs, src/mount/mount.ts) is always there; another way to mount (the
 * FUSE server: src/fuse/rung.ts) plugs in with `registerMountRung` and needs
 * no change to anything else:
 *
 *   registerMountRung({
 *     name: 'fuse',
 *     asked: (o) => o.fuse === true,                    // -o fuse / --fuse: this rung only
 *     afterPrivilegeFailure: (o) => o.fuse !== false,   // else tried when the kernel rung got EPERM
 *     afterVerityFailure: (o) => o.fuse !== false,      // or when it cannot check objects the request requires checked
 *     why: (reason) => ...,                             // the --explain line saying why it was tried
 *     mount: async (image, mountpoint, options) => ({ result }), or throw a ComposefsError
 *   });
 *
 * A verified mount is the default wherever it can be had: when the kernel
 * cannot check the objects (no fs-verity, the case on most file systems) and
 * the request requires them checked (`digest=`, a mount by name, `verity`),
 * the kernel rung hands over to a rung that checks them itself instead of
 * failing; only `tryverity` asks for the unchecked kernel mount.
 *
 * Rungs stand on the ladder by their `order` (lower first), not by when
 * they were registered: the mount service (order 10, src/service/rung.ts)
 * comes before FUSE (the default, 100) whichever was registered first.
 *
 * `planRungs` (pure) orders them for a request and `climbRungs` tries them
 * in that order, recording each attempt (stage 'rung'). Inside the kernel
 * rung, the planner of src/mount/plan.ts orders the EROFS backings and
 * overlay layers the same way. --explain is made from the record.
 */
import { MountError, type Handover } from './errors.js';
import type { MountOptions } from './options.js';

/** One attempt, as it goes into the record --explain is made from. */
export interface Attempt {
  /** 'rung' for the ladder's own steps (kernel, fuse); 'check' for what was verified before mounting; else the stage inside the kernel rung (api, backing, layers, overlay). */
  stage: 'check' | 'api' | 'backing' | 'layers' | 'overlay' | 'rung';
  /** The rung tried (kernel, fuse; fd, file, loop, path, …) or the check made. */
  rung: string;
  /** used: it worked; refused: it failed in a way the next rung may not, which is tried; note: a remark. */
  outcome: 'used' | 'refused' | 'note';
  /** The --explain line (used, note) or the reason (refused). */
  text: string;
}

/** The --explain lines of a record: what was used and the remarks; refusals appear inside the line of the rung that followed. */
export function explainRecord(record: Attempt[]): string[] {
  return record.filter((a) => a.outcome !== 'refused').map((a) => a.text);
}

/** What every rung's result says, whichever rung mounted the image. */
export interface RungResult {
  /** The rung that mounted it: 'kernel', 'fuse'. */
  rung: string;
  image: string;
  mountpoint: string;
  readonly: boolean;
  /** Whether every object read is checked against its fs-verity digest. */
  verity: boolean;
  /** Why each choice was made, one line each. */
  explain: string[];
  /** Wall time of the call in milliseconds. */
  ms: number;
  /** Set when nothing was mounted (`dryRun`). */
  dryRun?: boolean;
}

/** A rung's mount: its result and, for a server kept in this process, when it ends. */
export interface RungMount<Result extends RungResult = RungResult> {
  result: Result;
  /** Settles when the mount is gone (a server serving in this process: FUSE with `foreground`). */
  closed?: Promise<void>;
}

/** Why a rung other than the kernel was tried: asked for by name, or the rung before failed in a way it may not (`failure`: that failure's --explain words: the EPERM message, or what requires verified objects and why the kernel cannot check them). */
export type RungReason = { asked: true } | { asked: false; handover: Handover; failure: string };

/** A way to mount other than the kernel rung. */
export interface MountRung<Result extends RungResult = RungResult> {
  readonly name: string;
  /** Its place on the ladder after the kernel rung: lower is tried first (default 100, FUSE's; rungs of equal order keep their registration order). */
  readonly order?: number;
  /**
   * A rung that is an extra chance rather than a step (the mount service,
   * when it does not answer): when it fails the way the failure that made it
   * tried did, that first failure stays the reason the next rung is tried,
   * and its own refusal becomes an --explain line of its own.
   */
  readonly passesOn?: boolean;
  /** Whether this request asks for this rung by name (then it is the only rung tried). */
  asked(options: MountOptions): boolean;
  /** Try this rung when the kernel rung failed for lack of privilege (EPERM): always, never, or as the request says. */
  readonly afterPrivilegeFailure: boolean | ((options: MountOptions) => boolean);
  /**
   * Try this rung when the kernel rung cannot check the objects the request
   * requires checked (no fs-verity): only a rung that checks every object
   * itself may say yes. Default never.
   */
  readonly afterVerityFailure?: boolean | ((options: MountOptions) => boolean);
  /** The --explain line saying why this rung was tried (default: "NAME: asked for" / "NAME: the kernel path lacks privilege (…)" / "NAME: digest= requires verified objects and the kernel cannot check them: …"). */
  why?(reason: RungReason, options: MountOptions): string;
  /** Mount, or throw a one-line ComposefsError having left nothing behind. */
  mount(image: string | number, mountpoint: string, options: MountOptions): Promise<RungMount<Result>>;
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

type PlannedRung = Pick<MountRung, 'name' | 'order' | 'asked' | 'afterPrivilegeFailure' | 'afterVerityFailure'>;

const DEFAULT_ORDER = 100;

/** The rungs in ladder order (stable: equal orders keep their given order). */
function inOrder<R extends PlannedRung>(rungs: readonly R[]): R[] {
  return [...rungs].sort((a, b) => (a.order ?? DEFAULT_ORDER) - (b.order ?? DEFAULT_ORDER));
}

/** Whether a rung takes over after a failure of this kind. */
function takesOver(r: PlannedRung, handover: Handover, options: MountOptions): boolean {
  const rule = handover === 'privilege' ? r.afterPrivilegeFailure : (r.afterVerityFailure ?? false);
  return typeof rule === 'function' ? rule(options) : rule;
}

/**
 * Pure: the rungs to try, in order. A rung the request asks for by name is
 * the only one; otherwise the kernel, then every rung that takes over after
 * a privilege or verity failure (each tried only if the rung before failed
 * in a way it takes over from).
 */
export function planRungs(options: MountOptions, unordered: readonly PlannedRung[]): string[] {
  const rungs = inOrder(unordered);
  const asked = rungs.filter((r) => r.asked(options));
  if (asked.length) return asked.map((r) => r.name);
  return [KERNEL_RUNG, ...rungs.filter((r) => takesOver(r, 'privilege', options) || takesOver(r, 'verity', options)).map((r) => r.name)];
}

/** Whether a rung's failure leaves the next rung a chance: the kernel refused for lack of privilege. */
export function lacksPrivilege(err: unknown): err is MountError {
  return err instanceof MountError && err.privilege;
}

/** How a rung's failure may hand over to a later rung, or null when it ends the mount. */
export function handoverOf(err: unknown): Handover | null {
  return err instanceof MountError ? err.handover : null;
}

function defaultWhy(name: string, reason: RungReason): string {
  if (reason.asked) return `${name}: asked for`;
  return reason.handover === 'privilege' ? `${name}: the kernel path lacks privilege (${reason.failure})` : `${name}: ${reason.failure}`;
}

/** The result of climbing the ladder: the rung's result (its explain led by the ladder's lines), the record, and a foreground server's end. */
export interface LadderMount<Result extends RungResult = RungResult> {
  result: Result;
  /** Every rung tried, in order. */
  record: Attempt[];
  /** Settles when the mount is gone, for a server serving in this process; else null. */
  closed: Promise<void> | null;
}

/**
 * Try the planned rungs in order: the first that mounts wins; a rung that
 * failed for lack of privilege, or could not verify the objects, hands over
 * to the next rung that takes over from that kind of failure (the rungs in
 * between are passed by); any other failure, or one no later rung takes
 * over from, is thrown as it is. A rung that `passesOn`, taken after a
 * failure and failing the same way (the mount service, not running), passes
 * that first failure on to the next rung as the reason it is tried, its own
 * refusal an --explain line; with no next rung, the first failure is thrown
 * when the passing rung's is `secondary` (nothing there to ask). `kernel` is
 * the kernel rung.
 */
export async function climbRungs(
  image: string | number,
  mountpoint: string,
  options: MountOptions,
  rungs: readonly MountRung[],
  kernel: (image: string | number, mountpoint: string, options: MountOptions) => Promise<RungResult>,
): Promise<LadderMount> {
  const names = planRungs(options, rungs);
  const rungOf = (name: string) => rungs.find((r) => r.name === name)!;
  // A rung asked for by name is tried whatever failed before it; another only after a failure it takes over from.
  const eligible = (name: string, handover: Handover) => rungOf(name).asked(options) || takesOver(rungOf(name), handover, options);
  const record: Attempt[] = [];
  let reason: RungReason = { asked: true };
  // The failure `reason` stands for, thrown in place of a secondary one after it.
  let firstFailure: unknown = null;
  for (const [i, name] of names.entries()) {
    if (!reason.asked && !eligible(name, reason.handover)) continue;
    try {
      let mounted: RungMount;
      let text: string;
      if (name === KERNEL_RUNG) {
        mounted = { result: await kernel(image, mountpoint, options) };
        text = 'kernel: EROFS and overlayfs, the first rung of the ladder';
      } else {
        const rung = rungOf(name);
        text = rung.why?.(reason, options) ?? defaultWhy(name, reason);
        mounted = await rung.mount(image, mountpoint, options);
      }
      record.push({ stage: 'rung', rung: name, outcome: 'used', text });
      const result = { ...mounted.result, explain: [...explainRecord(record), ...mounted.result.explain] };
      return { result, record, closed: mounted.closed ?? null };
    } catch (err) {
      const handover = handoverOf(err);
      const passingOn = name !== KERNEL_RUNG && rungOf(name).passesOn && !reason.asked && reason.handover === handover;
      if (handover === null || !names.slice(i + 1).some((n) => eligible(n, handover))) {
        // An extra chance that was not there (`secondary`: no service at the socket) leaves the failure before it the answer.
        throw passingOn && (err as MountError).secondary && firstFailure !== null ? firstFailure : err;
      }
      if (passingOn) {
        record.push({ stage: 'rung', rung: name, outcome: 'note', text: (err as Error).message });
        continue;
      }
      firstFailure = err;
      reason = { asked: false, handover, failure: (err as MountError).handoverReason };
      record.push({ stage: 'rung', rung: name, outcome: 'refused', text: (err as Error).message });
    }
  }
  throw new MountError(`mounting ${String(image)}: no mount rung to try`);
}
