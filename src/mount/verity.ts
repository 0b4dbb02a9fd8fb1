/**
 * Whether overlay verity can check the objects of these basedirs: asked of
 * each basedir's file system, and of the kernel for the reason when it
 * cannot. Shared by the kernel rung (basedirs by path) and the mount service
 * (the caller's descriptors, opened as the caller).
 */
import { closeSync } from 'node:fs';
import { measureVerity } from '../sys/fsinfo.js';
import { strerror } from '../sys/libc.js';
import { kernelHasFsverity, learn, type KernelKnowledge } from './kernel.js';

/** A basedir as `verityAvailable` asks it: its name in messages, and how to open it for reading (a descriptor, or why it cannot be opened to ask). */
export interface BasedirToAsk {
  name: string;
  open(): number | { cannot: string };
}

/** Can overlay verity work here? The first basedir that cannot says why. */
export function verityAvailable(basedirs: readonly BasedirToAsk[], knowledge: KernelKnowledge): { ok: boolean; why: string } {
  for (const d of basedirs) {
    const fd = d.open();
    if (typeof fd !== 'number') return { ok: false, why: fd.cannot };
    let m;
    try {
      m = measureVerity(fd);
    } finally {
      closeSync(fd);
    }
    if (m.ok || m.reason === 'no-verity') continue;
    if (knowledge.fsverity === undefined) {
      const has = kernelHasFsverity();
      learn(knowledge, {
        fact: 'fsverity',
        answer:
          has === false
            ? { ok: false, why: 'this kernel lacks fs-verity (built without CONFIG_FS_VERITY)' }
            : { ok: true, why: has === true ? 'this kernel has fs-verity' : 'unknown' },
      });
    }
    if (!knowledge.fsverity!.ok) return { ok: false, why: knowledge.fsverity!.why };
    return { ok: false, why: `the file system of ${d.name} does not support fs-verity (${strerror(m.errno)})` };
  }
  return { ok: true, why: 'fs-verity is available on every basedir' };
}
