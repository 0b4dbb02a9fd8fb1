/**
 * A process killed (SIGKILL) in the middle of a mount: on the default path
 * it leaves nothing at all; on each fallback exactly what the README says.
 *
 * Each mount path is first run once in-process to learn its steps; then, for
 * every step, a child process mounts and kills itself right before that
 * step. A second test kills a child looping mount/unmount at random moments.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { isRoot, repoRoot } from './helpers/paths.js';
import { adoptChild, cleanupDir, eventually, leftovers, makeImage, scratch, snapshot, standardFiles, type Snapshot } from './mount-fixtures.js';
import { cleanLeftovers, mountComposefs, systemStatus, unmountComposefs, type MountOptions } from '../src/mount/index.js';
import { readMountinfo } from '../src/mount/mountinfo.js';

const SKIP = isRoot ? false : 'mounting needs root';

const childScript = `
import { mountComposefs, unmountComposefs } from ${JSON.stringify(join(repoRoot, 'dist', 'src', 'mount', 'index.js'))};
const [image, mnt, basedir, optsJson, target] = process.argv.slice(2);
const opts = JSON.parse(optsJson);
if (target === 'loop') {
  process.stdout.write('ready\\n');
  for (;;) {
    await mountComposefs(image, mnt, { ...opts, basedir: [basedir] });
    unmountComposefs(mnt);
  }
}
await mountComposefs(image, mnt, { ...opts, basedir: [basedir], onStep: (s) => { if (s === target) process.kill(process.pid, 'SIGKILL'); } });
`;

interface PathCase {
  name: string;
  opts: Partial<MountOptions>;
  /** What a kill right before `step` may leave (besides nothing): 'tempdir', 'tempmount', 'overlay'. */
  leaves(step: string, steps: string[]): string[];
}

/**
 * Path layers: the temporary directory exists from mkdtemp (right after step
 * "tempdir") until the undo in step "temp-detach" completes; the EROFS mount
 * sits on it from the attach (done before the first overlay step) until then;
 * the overlay exists once its move_mount/mount(2) ran (before "temp-detach").
 */
function pathLeaves(step: string, steps: string[]): string[] {
  const i = steps.indexOf(step);
  const at = (s: string) => steps.indexOf(s);
  const attachI = at('temp-attach');
  const useI = steps.findIndex((s, k) => k > attachI && (s === 'overlay-create' || s === 'move-mount'));
  const out: string[] = [];
  if (i >= attachI && i <= at('temp-detach')) out.push('tempdir');
  if (i >= useI && i <= at('temp-detach')) out.push('tempmount');
  if (i >= at('temp-detach')) out.push('overlay');
  return out;
}

/** With loop backing, the loop device stays bound as long as an EROFS mount (temporary or under the overlay) holds it. */
const withLoop = (leaves: string[]) => (leaves.includes('overlay') || leaves.includes('tempmount') ? [...leaves, 'loop'] : leaves);
const fdLeaves = (s: string) => (s === 'done' ? ['overlay'] : []);

const cases: PathCase[] = [
  { name: 'default (file-backed, fd layers)', opts: {}, leaves: fdLeaves },
  { name: 'loop backing, fd layers', opts: { backing: 'loop' }, leaves: (s) => withLoop(fdLeaves(s)) },
  { name: 'private copy', opts: { private: true }, leaves: fdLeaves },
  { name: 'file backing, path layers', opts: { layers: 'path' }, leaves: pathLeaves },
  { name: 'loop backing, path layers', opts: { backing: 'loop', layers: 'path' }, leaves: (s, steps) => withLoop(pathLeaves(s, steps)) },
  { name: 'legacy mount(2)', opts: { api: 'legacy' }, leaves: pathLeaves },
  { name: 'legacy mount(2), loop', opts: { api: 'legacy', backing: 'loop' }, leaves: (s, steps) => withLoop(pathLeaves(s, steps)) },
];

/** Classify what a killed child left, relative to `before`. */
function classify(before: Snapshot, mnt: string): string[] {
  const got = new Set<string>();
  for (const l of leftovers(before)) {
    if (l.startsWith('temp dir: ')) got.add('tempdir');
    else if (l.startsWith('loop: ')) got.add('loop');
    else if (l.startsWith('mount: ')) {
      const f = l.slice('mount: '.length).split(' ');
      const sep = f.indexOf('-');
      if (f[4] === mnt && f[sep + 1] === 'overlay') got.add('overlay');
      else if (f[sep + 1] === 'erofs') got.add('tempmount');
      else got.add(`other mount: ${l}`);
    }
  }
  return [...got].sort();
}

for (const pc of cases) {
  test(`killed at every step: ${pc.name}`, { skip: SKIP }, async () => {
    const dir = scratch('kill');
    try {
      const fx = makeImage(dir, standardFiles());
      const script = join(dir, 'child.mjs');
      writeFileSync(script, childScript);
      const steps: string[] = [];
      await mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir], ...pc.opts, onStep: (s) => steps.push(s) });
      unmountComposefs(fx.mnt);
      assert.ok(steps.length >= 8, `steps: ${steps.join(' ')}`);
      const before = snapshot();
      const report: string[] = [];
      for (const step of steps) {
        const r = spawnSync(process.execPath, [script, fx.image, fx.mnt, fx.basedir, JSON.stringify(pc.opts), step], { encoding: 'utf8' });
        adoptChild(r.pid);
        assert.equal(r.signal, 'SIGKILL', `killed before ${step}: ${r.stderr}`);
        const expected = [...new Set(pc.leaves(step, steps))].sort();
        // Loop devices unbind (autoclear) and detached mounts dissolve as the dead process's files are closed.
        await eventually(() => JSON.stringify(classify(before, fx.mnt)) === JSON.stringify(expected), 1500);
        const got = classify(before, fx.mnt);
        report.push(`${step}: ${got.join(', ') || 'nothing'}`);
        assert.deepEqual(got, expected, `killed before step ${step}: left ${got.join(', ') || 'nothing'}, expected ${expected.join(', ') || 'nothing'}`);
        if (got.length) {
          const st = systemStatus();
          if (got.includes('tempdir')) assert.ok(st.leftovers.some((l) => !l.alive), 'status reports the dead process leftovers');
          if (got.includes('tempmount')) assert.ok(st.temporaryMounts.length > 0, 'status reports the temporary mount');
          if (got.includes('overlay')) unmountComposefs(fx.mnt);
          cleanLeftovers({ pids: [r.pid] });
          assert.ok(await eventually(() => leftovers(before).length === 0), `after cleaning: ${leftovers(before).join('; ')}`);
        }
      }
      process.stdout.write(`# ${pc.name}: ${report.join(' | ')}\n`);
    } finally {
      cleanupDir(dir);
    }
  });
}

test('killed at random moments while looping mount/unmount (default path): nothing but a whole mount is ever left', { skip: SKIP }, async () => {
  const dir = scratch('killrand');
  try {
    const fx = makeImage(dir, standardFiles());
    const script = join(dir, 'child.mjs');
    writeFileSync(script, childScript);
    const before = snapshot();
    let mountedAtKill = 0;
    for (let i = 0; i < 25; i++) {
      const child = spawn(process.execPath, [script, fx.image, fx.mnt, fx.basedir, '{}', 'loop'], { stdio: ['ignore', 'pipe', 'inherit'] });
      adoptChild(child.pid);
      await new Promise<void>((res) => child.stdout!.once('data', () => res()));
      await new Promise((r) => setTimeout(r, 5 + Math.random() * 40));
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
      const left = leftovers(before);
      if (left.length === 1 && readMountinfo().some((m) => m.mountPoint === fx.mnt && m.fstype === 'overlay')) {
        mountedAtKill++;
        unmountComposefs(fx.mnt);
      }
      assert.deepEqual(leftovers(before), [], `iteration ${i}`);
    }
    process.stdout.write(`# random kills: ${mountedAtKill} of 25 landed between a mount and its unmount\n`);
  } finally {
    cleanupDir(dir);
  }
});
