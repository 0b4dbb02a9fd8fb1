/**
 * The FUSE server side by side with its anchors, on one tree (default
 * /usr/share; CFS_BENCH_FUSE_TREE picks another), cold caches before every
 * run (`echo 3 > /proc/sys/vm/drop_caches`):
 *  - squashfuse (C over libfuse) serving `mksquashfs -noI -noD -noF -noX` of the tree;
 *  - the kernel composefs mount (EROFS + overlayfs) of our image;
 *  - our FUSE server without passthrough, with passthrough, and with -o verity.
 * Metadata walk: `find MNT -printf '%s %m %u\n'`; content: every regular
 * file read once (`find -type f -print0 | xargs -0 cat`). Server RSS is
 * taken right after the walk. Needs root (drop_caches, kernel mounts).
 *
 * Run alone: `node dist/bench/fuse.js`.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { mountComposefs, unmountComposefs } from '../src/mount/index.js';
import { mountFuse } from '../src/fuse/mount.js';
import { unmountFuse } from '../src/fuse/unmount.js';
import { scanDirectory } from '../src/scan/index.js';
import { writeImage } from '../src/erofs/writer.js';

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

export async function benchFuse(): Promise<Row[]> {
  if (process.getuid?.() !== 0) return [{ what: 'skipped: needs root (drop_caches, kernel mounts)' }];
  for (const tool of ['squashfuse', 'mksquashfs']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) return [{ what: `skipped: no ${tool}` }];
  }
  const tree = process.env.CFS_BENCH_FUSE_TREE ?? '/usr/share';
  const dir = mkdtempSync('/var/tmp/cfs-bench-fuse-');
  const rows: Row[] = [];
  try {
    const store = join(dir, 'objects');
    const { root } = await scanDirectory(tree, { digestStore: store });
    const image = join(dir, 'tree.cfs');
    writeFileSync(image, writeImage(root));
    const sqfs = join(dir, 'tree.sqfs');
    const mk = spawnSync('mksquashfs', [tree, sqfs, '-noI', '-noD', '-noF', '-noX', '-no-progress', '-quiet'], { stdio: 'ignore' });
    if (mk.status !== 0) throw new Error('mksquashfs failed');
    const entries = Number(spawnSync('sh', ['-c', `find ${tree} | wc -l`], { encoding: 'utf8' }).stdout.trim());
    const bytes = Number(spawnSync('sh', ['-c', `find ${tree} -type f -printf '%s\\n' | awk '{s+=$1} END {print s}'`], { encoding: 'utf8' }).stdout.trim());
    const fuse = (name: string, opts: { passthrough?: 'auto' | 'off'; verity?: boolean }): Target => ({
      name,
      async mount(mnt) {
        const r = await mountFuse(image, mnt, { basedir: [store], via: 'direct', ...opts });
        return { pid: r.pid, unmount: () => unmountFuse(mnt) };
      },
    });
    const targets: Target[] = [
      {
        name: 'squashfuse (C, libfuse)',
        async mount(mnt) {
          const child = spawn('squashfuse', ['-f', sqfs, mnt], { stdio: 'ignore' });
          for (let i = 0; i < 200 && !readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${mnt} `); i++) await new Promise((r) => setTimeout(r, 10));
          return { pid: child.pid ?? null, unmount: () => spawnSync('umount', [mnt]) && undefined };
        },
      },
      {
        name: 'kernel composefs mount',
        async mount(mnt) {
          await mountComposefs(image, mnt, { basedir: [store] });
          return { pid: null, unmount: () => unmountComposefs(mnt) };
        },
      },
      fuse('cfs FUSE, no passthrough', { passthrough: 'off' }),
      fuse('cfs FUSE, passthrough', { passthrough: 'auto' }),
      fuse('cfs FUSE, -o verity', { verity: true }),
    ];
    const only = process.env.CFS_BENCH_FUSE_ONLY;
    const mnt = join(dir, 'mnt');
    mkdirSync(mnt);
    const results: Array<{ name: string; walk: number; read: number; rss: number | null }> = [];
    for (const t of targets) {
      if (only && !t.name.includes(only)) continue;
      const m = await t.mount(mnt);
      try {
        dropCaches();
        const walk = timed(`find ${mnt} -printf '%s %m %u\\n' > /dev/null`);
        const rss = m.pid ? rssMiB(m.pid) : null;
        dropCaches();
        const read = timed(`find ${mnt} -type f -print0 | xargs -0 cat > /dev/null`);
        results.push({ name: t.name, walk, read, rss });
      } finally {
        m.unmount();
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    const sq = results.find((r) => r.name.startsWith('squashfuse')) ?? results[0];
    const kernel = results.find((r) => r.name.startsWith('kernel')) ?? results[0];
    for (const r of results) {
      rows.push({
        what: r.name,
        'walk s': r.walk.toFixed(2),
        'walk vs squashfuse': `${(r.walk / sq.walk).toFixed(2)}x`,
        'read s': r.read.toFixed(2),
        'read MB/s': (bytes / 1e6 / r.read).toFixed(0),
        'vs squashfuse': `${(sq.read / r.read).toFixed(2)}x`,
        'vs kernel': `${(kernel.read / r.read).toFixed(2)}x`,
        'server RSS after walk': r.rss === null ? '' : `${r.rss.toFixed(0)} MiB`,
      });
    }
    rows.push({ what: `tree: ${tree}, ${entries} entries, ${(bytes / 1e6).toFixed(0)} MB in regular files; cold caches before each walk and read` });
  } finally {
    spawnSync('umount', ['-l', join(dir, 'mnt')]);
    rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  benchFuse().then((rows) => {
    for (const r of rows) process.stdout.write(`${JSON.stringify(r)}\n`);
  });
}
