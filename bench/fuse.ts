/**
 * The FUSE server side by side with its anchors, on one tree (default
 * /usr/share; CFS_BENCH_FUSE_TREE picks another), cold caches before every
 * run (`echo 3 > /proc/sys/vm/drop_caches`):
 *  - squashfuse (C over libfuse) serving `mksquashfs -noI -noD -noF -noX` of the tree;
 *  - the kernel composefs mount (EROFS + overlayfs) of our image;
 *  - our FUSE server without passthrough, with passthrough (each also without
 *    its read-ahead in image order, CFS_FUSE_PREFETCH=0), and with -o verity.
 * Metadata walk: `find MNT -printf '%s %m %u\n'`; content: every regular
 * file read once (`find -type f -print0 | xargs -0 cat`). Server RSS is
 * taken right after the walk. Needs root (drop_caches, kernel mounts).
 *
 * The machine is shared and noisy, so every target runs once per round, the
 * rounds one after another (CFS_BENCH_FUSE_ROUNDS, default 3), and medians
 * are reported; the ratios are the medians of each round's ratio (a target
 * against the anchor measured minutes before it), which noise moves less.
 * CFS_BENCH_FUSE_ONLY=a,b keeps the targets whose names contain a or b;
 * CFS_BENCH_FUSE_FIXTURE=DIR keeps the image, objects and squashfs in DIR
 * and reuses them on the next run (otherwise a temporary directory).
 *
 * Run alone: `node dist/bench/fuse.js`.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { mountComposefs, unmountComposefs } from '../src/mount/index.js';
import { mountFuse } from '../src/fuse/mount.js';
import { unmountFuse } from '../src/fuse/unmount.js';
import { scanDirectory } from '../src/scan/index.js';
import { writeImage } from '../src/erofs/writer.js';
import { median } from './measure.js';

type Row = Record<string, string | number>;

function dropCaches(): void {
  spawnSync('sync');
  writeFileSync('/proc/sys/vm/drop_caches', '3');
}

function timed(cmd: string): number {
  const t0 = process.hrtime.bigint();
  const r = spawnSync('sh', ['-c', cmd], { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd}: ${r.stderr.trim()}`);
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

function rssMiB(pid: number): number | null {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
}

interface Target {
  name: string;
  mount(mnt: string): Promise<{ pid: number | null; unmount(): void }>;
}

/** The image, its objects and the squashfs of `tree`, made once into `dir` (kept when it is a fixture directory). */
async function fixture(tree: string, dir: string): Promise<{ image: string; store: string; sqfs: string; entries: number; bytes: number }> {
  const store = join(dir, 'objects');
  const image = join(dir, 'tree.cfs');
  const sqfs = join(dir, 'tree.sqfs');
  const facts = join(dir, 'facts.json');
  if (existsSync(facts)) return { image, store, sqfs, ...(JSON.parse(readFileSync(facts, 'utf8')) as { entries: number; bytes: number }) };
  const { root } = await scanDirectory(tree, { digestStore: store });
  writeFileSync(image, writeImage(root));
  rmSync(sqfs, { force: true });
  const mk = spawnSync('mksquashfs', [tree, sqfs, '-noI', '-noD', '-noF', '-noX', '-no-progress', '-quiet'], { stdio: 'ignore' });
  if (mk.status !== 0) throw new Error('mksquashfs failed');
  const entries = Number(spawnSync('sh', ['-c', `find ${tree} | wc -l`], { encoding: 'utf8' }).stdout.trim());
  const bytes = Number(spawnSync('sh', ['-c', `find ${tree} -type f -printf '%s\\n' | awk '{s+=$1} END {print s}'`], { encoding: 'utf8' }).stdout.trim());
  writeFileSync(facts, JSON.stringify({ entries, bytes }));
  return { image, store, sqfs, entries, bytes };
}

export async function benchFuse(): Promise<Row[]> {
  if (process.getuid?.() !== 0) return [{ what: 'skipped: needs root (drop_caches, kernel mounts)' }];
  for (const tool of ['squashfuse', 'mksquashfs']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) return [{ what: `skipped: no ${tool}` }];
  }
  const tree = process.env.CFS_BENCH_FUSE_TREE ?? '/usr/share';
  const rounds = Math.max(1, Number(process.env.CFS_BENCH_FUSE_ROUNDS ?? 3));
  const keep = process.env.CFS_BENCH_FUSE_FIXTURE;
  const dir = keep ?? mkdtempSync('/var/tmp/cfs-bench-fuse-');
  if (keep) mkdirSync(keep, { recursive: true });
  const rows: Row[] = [];
  const mnt = join(dir, 'mnt');
  try {
    const { image, store, sqfs, entries, bytes } = await fixture(tree, dir);
    const fuse = (name: string, opts: { passthrough?: 'auto' | 'off'; verity?: boolean }, env: Record<string, string> = {}): Target => ({
      name,
      async mount(m) {
        // The server is a child process: what it reads from its environment is set for its start only.
        const saved = Object.keys(env).map((k) => [k, process.env[k]] as const);
        Object.assign(process.env, env);
        try {
          const r = await mountFuse(image, m, { basedir: [store], via: 'direct', ...opts });
          return { pid: r.pid, unmount: () => unmountFuse(m) };
        } finally {
          for (const [k, v] of saved) {
            if (v === undefined) delete process.env[k];
            else process.env[k] = v;
          }
        }
      },
    });
    const targets: Target[] = [
      {
        name: 'squashfuse (C, libfuse)',
        async mount(m) {
          const child = spawn('squashfuse', ['-f', sqfs, m], { stdio: 'ignore' });
          for (let i = 0; i < 200 && !readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${m} `); i++) await new Promise((r) => setTimeout(r, 10));
          return { pid: child.pid ?? null, unmount: () => void spawnSync('umount', [m]) };
        },
      },
      {
        name: 'kernel composefs mount',
        async mount(m) {
          await mountComposefs(image, m, { basedir: [store] });
          return { pid: null, unmount: () => unmountComposefs(m) };
        },
      },
      fuse('cfs FUSE, no passthrough', { passthrough: 'off' }),
      fuse('cfs FUSE, no passthrough, no read-ahead in image order', { passthrough: 'off' }, { CFS_FUSE_PREFETCH: '0' }),
      fuse('cfs FUSE, passthrough', { passthrough: 'auto' }),
      fuse('cfs FUSE, passthrough, no read-ahead in image order', { passthrough: 'auto' }, { CFS_FUSE_PREFETCH: '0' }),
      fuse('cfs FUSE, -o verity', { verity: true }),
    ];
    const only = process.env.CFS_BENCH_FUSE_ONLY?.split(',').filter(Boolean);
    const chosen = targets.filter((t) => !only || only.some((o) => t.name.includes(o)));
    mkdirSync(mnt, { recursive: true });
    const samples = new Map<string, { walk: number[]; read: number[]; rss: number[] }>(chosen.map((t) => [t.name, { walk: [], read: [], rss: [] }]));
    for (let round = 0; round < rounds; round++) {
      for (const t of chosen) {
        const m = await t.mount(mnt);
        try {
          dropCaches();
          const walk = timed(`find ${mnt} -printf '%s %m %u\\n' > /dev/null`);
          const rss = m.pid ? rssMiB(m.pid) : null;
          dropCaches();
          const read = timed(`find ${mnt} -type f -print0 | xargs -0 cat > /dev/null`);
          const s = samples.get(t.name)!;
          s.walk.push(walk);
          s.read.push(read);
          if (rss !== null) s.rss.push(rss);
          if (process.env.CFS_BENCH_FUSE_VERBOSE) process.stderr.write(`round ${round + 1} ${t.name}: walk ${walk.toFixed(2)} s, read ${read.toFixed(2)} s${rss === null ? '' : `, RSS ${rss.toFixed(0)} MiB`}\n`);
        } finally {
          m.unmount();
          await new Promise((r) => setTimeout(r, 200));
        }
      }
    }
    const results = chosen.map((t) => {
      const s = samples.get(t.name)!;
      return { name: t.name, walk: median(s.walk), read: median(s.read), rss: s.rss.length ? median(s.rss) : null, walks: s.walk, reads: s.read };
    });
    const sq = results.find((r) => r.name.startsWith('squashfuse')) ?? results[0];
    const kernel = results.find((r) => r.name.startsWith('kernel')) ?? results[0];
    /** Median over rounds of a[i] / b[i]. */
    const ratio = (a: number[], b: number[]) => `${median(a.map((x, i) => x / b[i])).toFixed(2)}x`;
    for (const r of results) {
      rows.push({
        what: r.name,
        'walk s': r.walk.toFixed(2),
        'walk vs squashfuse': ratio(r.walks, sq.walks),
        'read s': r.read.toFixed(2),
        'read MB/s': (bytes / 1e6 / r.read).toFixed(0),
        'vs squashfuse': ratio(sq.reads, r.reads),
        'vs kernel': ratio(kernel.reads, r.reads),
        'server RSS after walk': r.rss === null ? '' : `${r.rss.toFixed(0)} MiB`,
        'walks s': r.walks.map((x) => x.toFixed(2)).join(' '),
        'reads s': r.reads.map((x) => x.toFixed(2)).join(' '),
      });
    }
    const note = `tree: ${tree}, ${entries} entries, ${(bytes / 1e6).toFixed(0)} MB in regular files; medians of ${rounds} rounds; cold caches before each walk and read`;
    rows.push(Object.fromEntries(Object.keys(rows[0]).map((k) => [k, k === 'what' ? note : ''])));
  } finally {
    spawnSync('umount', ['-l', mnt]);
    if (!keep) rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  benchFuse().then((rows) => {
    for (const r of rows) process.stdout.write(`${JSON.stringify(r)}\n`);
  });
}
