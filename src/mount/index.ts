/**
 * The mount library: mount a composefs image (hidden, the best way the
 * running kernel allows), unmount it, list what is mounted.
 *
 *   import { mountComposefs, unmountComposefs } from './mount/index.js';
 *   const r = mountComposefs('/images/app.cfs', '/mnt/app', { basedir: ['/objects'] });
 *   // r.backing, r.layers, r.api say which path was taken; r.explain says why.
 *   unmountComposefs('/mnt/app');
 */
export { mountComposefs, mountComposefsSync, type MountResult } from './mount.js';
export { unmountComposefs, isComposefsMount, type UnmountOptions } from './umount.js';
export { systemStatus, cleanLeftovers, type SystemStatus, type ComposefsMountStatus } from './status.js';
export { parseOptionString, type MountOptions, type Backing, type Layers, type Api, type VerityMode } from './options.js';
export { kernel, resetKernelKnowledge, probeKernel, learn, type KernelKnowledge, type Finding, type Probe } from './kernel.js';
export { planMount, type KernelFacts, type PlanRequest, type MountPlan, type PlanRefusal, type Answer } from './plan.js';
export { registerMountRung, registeredMountRungs, planRungs, explainRecord, KERNEL_RUNG, type MountRung, type Attempt } from './ladder.js';
export { MountError } from './errors.js';
export { markSystem, footprintSince, describeFootprint, type Footprint, type SystemMarks } from './footprint.js';
