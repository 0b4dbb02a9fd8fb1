/**
 * The mount planner: a pure function from what was asked (forced paths,
 * idmap) and what is known of the kernel to the ordered attempts a mount
 * makes. No system calls, no state: its tests run without root.
 *
 * A kernel mount is two stages, each an ordered list of rungs tried until
 * one works (a rung refused "not supported" moves to the next; any other
 * failure ends the mount):
 *   backing  how EROFS reads the image: fd, file, loop
 *   layers   how overlayfs gets the EROFS mount: fd (detached mount), path
 *            (a temporary mount; the overlay set up through fsconfig, else
 *            through legacy mount(2) options)
 * A fact the kernel has already denied (answer ok: false) drops its rung;
 * an unknown one is tried. A forced option keeps only its rung.
 */
import type { Api, Backing, Layers } from './options.js';

/** One thing learnt about the kernel, with the reason for --explain. */
export interface Answer {
  ok: boolean;
  why: string;
}

/** What is known of the running kernel when a mount is planned; an absent answer is not known yet. */
export interface KernelFacts {
  /** fsopen() works (the new mount API). Probed before planning when not known. */
  newApi: boolean;
  /** EROFS takes its source as a file descriptor. */
  erofsFdSource?: Answer;
  /** File-backed EROFS works for an image on this image's file system. */
  fileBacked?: Answer;
  /** overlayfs takes detached mounts as layer file descriptors. */
  overlayFdLayers?: Answer;
  /** /dev/loop-control exists. */
  loopDevices: boolean;
}

/** What the caller asked for that shapes the plan. */
export interface PlanRequest {
  api: Api | 'auto';
  backing: Backing | 'auto';
  layers: Layers | 'auto';
  /** An idmapped EROFS mount was asked for (new API only). */
  idmap: boolean;
}

/** How an overlay over a temporary EROFS mount is made: fsconfig (new API), or mount(2) option strings. */
export type OverlayBy = 'fsconfig' | 'mount2';

export interface BackingRung {
  backing: Backing;
  forced: boolean;
}

export type LayersRung = { layers: 'fd'; forced: boolean } | { layers: 'path'; forced: boolean; overlayBy: OverlayBy[] };

export interface MountPlan {
  ok: true;
  api: Api;
  apiForced: boolean;
  backing: BackingRung[];
  layers: LayersRung[];
  /** Rungs left out because the kernel already said no: their reasons, for --explain. */
  skipped: string[];
}

export interface PlanRefusal {
  ok: false;
  /** One line for the user. */
  reason: string;
}

/** Turn the request and the kernel facts into the ordered attempts of a kernel mount, or say why none can work. */
export function planMount(req: PlanRequest, facts: KernelFacts): MountPlan | PlanRefusal {
  let api: Api;
  if (req.api === 'legacy') api = 'legacy';
  else if (facts.newApi) api = 'new';
  else if (req.api === 'new') return { ok: false, reason: 'api=new: this kernel has no new mount API (fsopen: Function not implemented)' };
  else api = 'legacy';

  if (api === 'legacy') {
    const needsNew = req.backing === 'fd' ? 'backing=fd' : req.layers === 'fd' ? 'layers=fd' : req.idmap ? 'idmap' : null;
    if (needsNew) {
      return { ok: false, reason: req.api === 'legacy' ? `${needsNew} needs the new mount API (api=legacy given)` : `${needsNew} needs the new mount API, which this kernel lacks` };
    }
  }

  const skipped: string[] = [];
  const backing: BackingRung[] = [];
  const want = (b: Backing, fact: Answer | undefined): boolean => {
    if (req.backing === b) return true;
    if (req.backing !== 'auto') return false;
    if (fact?.ok === false) {
      skipped.push(fact.why);
      return false;
    }
    return true;
  };
  if (api === 'new' && want('fd', facts.erofsFdSource)) backing.push({ backing: 'fd', forced: req.backing === 'fd' });
  if (want('file', facts.fileBacked)) backing.push({ backing: 'file', forced: req.backing === 'file' });
  if (req.backing === 'loop' || req.backing === 'auto') {
    if (facts.loopDevices) backing.push({ backing: 'loop', forced: req.backing === 'loop' });
    else if (backing.length === 0) return { ok: false, reason: `no way to back EROFS: ${[...skipped, 'no loop devices (/dev/loop-control is missing)'].join('; ')}` };
  }

  const layers: LayersRung[] = [];
  if (api === 'legacy') layers.push({ layers: 'path', forced: req.layers === 'path', overlayBy: ['mount2'] });
  else {
    if (req.layers === 'fd' || (req.layers === 'auto' && facts.overlayFdLayers?.ok !== false)) layers.push({ layers: 'fd', forced: req.layers === 'fd' });
    if (req.layers !== 'fd') layers.push({ layers: 'path', forced: req.layers === 'path', overlayBy: ['fsconfig', 'mount2'] });
  }
  return { ok: true, api, apiForced: req.api !== 'auto', backing, layers, skipped };
}
