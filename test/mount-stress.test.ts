/**
 * Many mounts: 1,000 mount/unmount cycles (and fewer on each fallback) leave
 * nothing behind; 100 different images mounted at once all work and all
 * unmount cleanly.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { isRoot } from './helpers/paths.js';
import { cleanupDir, eventually, leftovers, makeImage, scratch, snapshot, standardFiles, type Fixture } from './mount-fixtures.js';
import { mountComposefs, unmountComposefs, type MountOptions } from '../src/mount/index.js';

const SKIP = isRoot ? false : 'mounting needs root';

async function cycles(n: number, opts: Partial<MountOptions>, tag: string): Promise<number[]> {
  const dir = scratch(tag);
  const times: number[] = [];
  try {
    const fx = makeImage(dir, standardFiles());
    const before = snapshot();
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      await mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir], ...opts });
      if (i % 100 === 0) assert.deepEqual(readFileSync(join(fx.mnt, 'small.txt')), fx.files['small.txt']);
      unmountComposefs(fx.mnt);
      times.push(performance.now() - t0);
    }
    assert.ok(await eventually(() => leftovers(before).length === 0), `after ${n} cycles: ${leftovers(before).join('; ')}`);
  } finally {
    cleanupDir(dir);
  }
  return times;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

test('1,000 mount/unmount cycles on the default path leave nothing behind', { skip: SKIP }, async () => {
  const t = await cycles(1000, {}, 'cycles');
  process.stdout.write(`# 1000 cycles: median ${median(t).toFixed(3)} ms per mount+unmount\n`);
});

for (const [name, opts] of [
  ['loop backing', { backing: 'loop' }],
  ['path layers', { layers: 'path' }],
  ['legacy mount(2)', { api: 'legacy' }],
  ['private copies', { private: true }],
] as Array<[string, Partial<MountOptions>]>) {
  test(`100 cycles with ${name} leave nothing behind`, { skip: SKIP }, async () => {
    const t = await cycles(100, opts, 'cycles-fallback');
    process.stdout.write(`# 100 cycles, ${name}: median ${median(t).toFixed(3)} ms\n`);
  });
}

test('100 different images mounted at once, all readable, all unmounted cleanly', { skip: SKIP }, async () => {
  const dir = scratch('hundred');
  const mounted: Fixture[] = [];
  try {
    const before = snapshot();
    const fixtures: Fixture[] = [];
    for (let i = 0; i < 100; i++) {
      const sub = join(dir, `i${i}`);
      mkdirSync(sub);
      fixtures.push(makeImage(sub, standardFiles(i)));
    }
    for (const fx of fixtures) {
      const r = await mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir] });
      assert.equal(r.layers, 'fd');
      mounted.push(fx);
    }
    for (const fx of fixtures) {
      for (const [p, content] of Object.entries(fx.files)) assert.deepEqual(readFileSync(join(fx.mnt, p)), content, `${fx.mnt}/${p}`);
    }
    const during = snapshot();
    const newLines = during.mountinfo.length - before.mountinfo.length;
    assert.equal(newLines, 100, 'one mountinfo line per image');
    assert.equal(during.loops.length, before.loops.length, 'no loop devices');
    while (mounted.length) unmountComposefs(mounted.pop()!.mnt);
    assert.ok(await eventually(() => leftovers(before).length === 0), leftovers(before).join('; '));
  } finally {
    for (const fx of mounted) {
      try {
        unmountComposefs(fx.mnt);
      } catch {
        /* cleanupDir below */
      }
    }
    cleanupDir(dir);
  }
});
