/**
 * The mount library: mount a composefs image (hidden, the best way the
 * running kernel allows), unmount it, list what is mounted.
 *
 *   import { mountImage, unmountComposefs } from './mount/index.js';
 *   const { result } = await mountImage('/images/app.cfs', '/mnt/app', { basedir: ['/objects'] });
 *   // result.rung says which rung mounted it (kernel, fuse); for the kernel,
 *   // result.backing, .layers, .api say which path was taken; result.explain says why.
 *   unmountComposefs('/mnt/app');
 *
 * This library has the kernel's rung (mountComposefs alone). Other ways to
 * mount plug in by registration, and the library imports none of them: the
 * entry points (the `cfs` commands, the library's src/index.ts) import
 * src/fuse/register.ts, which registers the FUSE rung (src/mount/ladder.ts)
 * and the FUSE kind of mount that umount and status handle (src/mount/kinds.ts).
 */

export { mountImage, isKernelMount, mountComposefs, mountComposefsSync, type MountResult } from './mount.js';
export { unmountComposefs, unmountComposefsAsUser, registerUnmountHelper, isComposefsMount, type UnmountOptions, type UnmountHelper } from './umount.js';
export { systemStatus, cleanLeftovers, cleanDisconnectedMounts, type SystemStatus, type ComposefsMountStatus } from './status.js';
export { registerMountKind, registeredMountKinds, mountKindOf, type MountKind, type ServedMountStatus } from './kinds.js';
export { parseOptionString, type MountOptions, type Backing, type Layers, type Api, type VerityMode } from './options.js';
export { kernel, resetKernelKnowledge, probeKernel, learn, type KernelKnowledge, type Finding, type Probe } from './kernel.js';
export { planMount, type KernelFacts, type PlanRequest, type MountPlan, type PlanRefusal, type Answer } from './plan.js';
export {
  registerMountRung,
  registeredMountRungs,
  planRungs,
  climbRungs,
  lacksPrivilege,
  handoverOf,
  explainRecord,
  KERNEL_RUNG,
  type MountRung,
  type RungMount,
  type RungReason,
  type RungResult,
  type LadderMount,
  type Attempt,
} from './ladder.js';
export { MountError, type Handover, type MountErrorOptions } from './errors.js';
export { markSystem, footprintSince, describeFootprint, type Footprint, type SystemMarks } from './footprint.js';
