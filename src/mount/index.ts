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
 * The rungs this library has: the kernel's (mountComposefs alone) and FUSE,
 * registered here (src/fuse/rung.ts loads the server only when it mounts).
 */
import '../fuse/rung.js';

export { mountImage, isKernelMount, mountComposefs, mountComposefsSync, type MountResult } from './mount.js';
export { fuseRung } from '../fuse/rung.js';
export { unmountComposefs, isComposefsMount, type UnmountOptions } from './umount.js';
export { systemStatus, cleanLeftovers, type SystemStatus, type ComposefsMountStatus } from './status.js';
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
