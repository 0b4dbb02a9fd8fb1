/**
 * Mount benchmarks (root only): in-process mount+unmount on every path, and
 * whole-process latency of `cfs mount` / `cfs umount`.
 *
 *   import { benchMount } from './mount.js';
 *   const { rows } = await benchMount();   // Array<Record<string, string | number>>
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeImage } from '../src/erofs/writer.js';
import { fsverityDigest } from '../src/fsverity/index.js';
import { digestToObjectPath } from '../src/store/layout.js';
import { newInode, S_IFDIR, S_IFREG } from '../src/tree/model.js';
import { mountComposefs, unmountComposefs, type MountOptions } from '../src/mount/index.js';

type Row = Record<string, string | number>;

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
}

function buildFixture(dir: string): { image: string; basedir: string; mnt: string } {
  const basedir = join(dir, 'objects');
  const root = newInode(S_IFDIR | 0o755);
  for (let i = 0; i < 50; i++) {
    const content = Buffer.alloc(10000 + i, `bench object ${i}\n`);
    const digest = fsverityDigest(content);
    const rel = digestToObjectPath(digest);
    mkdirSync(join(basedir, rel.slice(0, 2)), { recursive: true });
    writeFileSync(join(basedir, rel), content);
    root.children!.push({
      name: Buffer.from(`f${String(i).padStart(3, '0')}`),
      inode: newInode(S_IFREG | 0o644, { size: content.length, payload: Buffer.from(rel), digest }),
      hardlink: false,
    });
  }
  const image = join(dir, 'bench.cfs');
  writeFileSync(image, writeImage(root));
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  return { image, basedir, mnt };
}

export async function benchMount(ctx: { repoRoot?: string } = {}): Promise<{ rows: Row[] }> {
  const rows: Row[] = [];
  if (process.getuid?.() !== 0) {
    rows.push({ what: 'mount benchmarks', 'median ms': '-', 'p90 ms': '-', runs: 0, note: 'skipped: mounting needs root' });
    return { rows };
  }
  const repoRoot = ctx.repoRoot ?? resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
  const dir = mkdtempSync(join(process.env.CFS_BENCH_DIR ?? tmpdir(), 'cfs-bench-mount-'));
  try {
    const fx = buildFixture(dir);
    const inProcess: Array<[string, Partial<MountOptions>, number]> = [
      ['in-process mount+umount, default (hidden) path', {}, 1000],
      ['in-process, loop backing', { backing: 'loop' }, 200],
      ['in-process, path layers (temporary mount)', { layers: 'path' }, 200],
      ['in-process, legacy mount(2)', { api: 'legacy' }, 200],
      ['in-process, -o private (anonymous copy)', { private: true }, 200],
    ];
    for (const [what, opts, runs] of inProcess) {
      let path = '';
      for (let i = 0; i < 20; i++) {
        const r = await mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir], ...opts });
        path = `${r.api}/${r.backing}/${r.layers}`;
        unmountComposefs(fx.mnt);
      }
      const t: number[] = [];
      for (let i = 0; i < runs; i++) {
        const t0 = performance.now();
        await mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir], ...opts });
        unmountComposefs(fx.mnt);
        t.push(performance.now() - t0);
      }
      rows.push({ what, 'median ms': quantile(t, 0.5).toFixed(3), 'p90 ms': quantile(t, 0.9).toFixed(3), runs, note: `api/backing/layers = ${path}` });
    }

    // Whole-process latency.
    const cfs = join(repoRoot, 'bin', 'cfs.js');
    const time = (args: string[]): number => {
      const t0 = process.hrtime.bigint();
      const r = spawnSync(args[0], args.slice(1), { encoding: 'utf8' });
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (r.status !== 0) throw new Error(`${args.join(' ')}: ${r.stderr}`);
      return ms;
    };
    const runs = 15;
    const base: number[] = [];
    const mount: number[] = [];
    const umount: number[] = [];
    for (let i = 0; i < runs + 2; i++) {
      base.push(time(['/usr/bin/env', '-u', 'NODE_EXTRA_CA_CERTS', process.execPath, '-e', '0']));
      mount.push(time([cfs, 'mount', '-o', `basedir=${fx.basedir}`, fx.image, fx.mnt]));
      umount.push(time([cfs, 'umount', fx.mnt]));
    }
    // Many mounts: one `cfs mount` call with N pairs pays Node's start-up once; N calls pay it N times.
    const n = 50;
    const mnts = Array.from({ length: n }, (_, i) => join(dir, `many${i}`));
    for (const m of mnts) mkdirSync(m);
    const t0 = performance.now();
    time([cfs, 'mount', '-o', `basedir=${fx.basedir}`, ...mnts.flatMap((m) => [fx.image, m])]);
    const oneCall = performance.now() - t0;
    time([cfs, 'umount', ...mnts]);
    const t1 = performance.now();
    for (const m of mnts) time([cfs, 'mount', '-o', `basedir=${fx.basedir}`, fx.image, m]);
    const perCall = performance.now() - t1;
    time([cfs, 'umount', ...mnts]);
    rows.push({ what: `CLI: ${n} mounts in one cfs mount call, per mount`, 'median ms': (oneCall / n).toFixed(2), 'p90 ms': '-', runs: 1, note: `${oneCall.toFixed(0)} ms in all` });
    rows.push({ what: `CLI: ${n} mounts, one cfs mount call each, per mount`, 'median ms': (perCall / n).toFixed(2), 'p90 ms': '-', runs: 1, note: `${perCall.toFixed(0)} ms in all` });

    const row = (what: string, xs: number[], note: string) =>
      rows.push({ what, 'median ms': quantile(xs.slice(2), 0.5).toFixed(1), 'p90 ms': quantile(xs.slice(2), 0.9).toFixed(1), runs, note });
    row('CLI: cfs mount (whole process)', mount, 'node start-up included');
    row('CLI: cfs umount (whole process)', umount, 'node start-up included');
    row('CLI: node -e 0 (start-up floor)', base, 'for comparison, started as the executables start it');
  } finally {
    spawnSync('umount', [join(dir, 'mnt')], { stdio: 'ignore' });
    for (let i = 0; i < 50; i++) spawnSync('umount', [join(dir, `many${i}`)], { stdio: 'ignore' });
    rmSync(dir, { recursive: true, force: true });
  }
  return { rows };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { printTable } = await import('./measure.js');
  printTable('Mounting', (await benchMount()).rows);
}
