/**
 * Images from a real directory tree: /usr, whole process. Digest only, then
 * into an empty object store on the same file system (removed afterwards).
 * The page cache is warmed by the first, untimed, run.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { median, runOnce, type Row } from './measure.js';

export async function benchScan({ repoRoot }: { repoRoot: string }): Promise<Row[]> {
  const source = process.env.CFS_BENCH_TREE ?? '/usr';
  if (!existsSync(source)) return [{ task: `${source} is missing: skipped`, 'wall median (s)': '', 'peak memory (MiB)': '', target: '' }];
  const cli = join(repoRoot, 'bin', 'mkcomposefs.js');
  const runs = Number(process.env.CFS_BENCH_RUNS ?? 3);
  runOnce(cli, ['--print-digest-only', source]);
  const digest = Array.from({ length: runs }, () => runOnce(cli, ['--print-digest-only', source]));
  const store = Array.from({ length: runs }, () => {
    const dir = mkdtempSync(join(tmpdir(), 'cfs-bench-store-'));
    try {
      return runOnce(cli, [`--digest-store=${join(dir, 'objects')}`, source, join(dir, 'image.cfs')]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
  const row = (task: string, samples: typeof digest, target: string): Row => ({
    task,
    'wall median (s)': (median(samples.map((s) => s.wallMs)) / 1000).toFixed(2),
    'peak memory (MiB)': samples[0].peakKiB === null ? 'n/a' : (Math.max(...samples.map((s) => s.peakKiB ?? 0)) / 1024).toFixed(0),
    target,
  });
  return [
    row(`mkcomposefs --print-digest-only ${source}`, digest, '≤ 6.5 s, ≤ 1024 MiB'),
    row(`mkcomposefs --digest-store=EMPTY ${source} IMAGE`, store, '≤ 25 s, ≤ 1024 MiB'),
  ];
}
