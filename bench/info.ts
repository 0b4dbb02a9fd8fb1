/**
 * Reading images: `cfs info dump` of the cs9 image (the figure with a target),
 * plus `info ls`, `fsck` and the `composefs-dump` copy of the same image.
 * Whole process, the executable run as a user runs it (Node start-up
 * included), output sent to /dev/null; peak memory from GNU time when it is
 * installed.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { median, type Row } from './measure.js';
import { parseDump } from '../src/dumpfile/parse.js';
import { writeImage } from '../src/erofs/writer.js';

const GNU_TIME = '/usr/bin/time';

function once(args: string[]): { wallMs: number; peakKiB: number | null } {
  const useTime = existsSync(GNU_TIME);
  const devnull = openSync('/dev/null', 'w');
  try {
    const start = process.hrtime.bigint();
    const r = useTime
      ? spawnSync(GNU_TIME, ['-f', '%M', ...args], { stdio: ['ignore', devnull, 'pipe'], encoding: 'utf8' })
      : spawnSync(args[0], args.slice(1), { stdio: ['ignore', devnull, 'pipe'], encoding: 'utf8' });
    const wallMs = Number(process.hrtime.bigint() - start) / 1e6;
    if (r.status !== 0 && !(args.includes('fsck') && r.status === 1)) throw new Error(`${args.join(' ')} failed: ${r.stderr}`);
    const lines = (r.stderr ?? '').trim().split('\n');
    return { wallMs, peakKiB: useTime ? Number(lines[lines.length - 1]) : null };
  } finally {
    closeSync(devnull);
  }
}

function measure(args: string[], runs: number): { wallMs: number; minMs: number; peakMiB: number | null } {
  once(args); // warm the page cache
  const samples = Array.from({ length: runs }, () => once(args));
  const peaks = samples.map((s) => s.peakKiB).filter((p): p is number => p !== null);
  return {
    wallMs: median(samples.map((s) => s.wallMs)),
    minMs: Math.min(...samples.map((s) => s.wallMs)),
    peakMiB: peaks.length ? Math.max(...peaks) / 1024 : null,
  };
}

/** Called by bench/run.ts: rows for the "Reading images" table. */
export async function benchInfo(opts: { repoRoot: string; conformance: string | null; runs?: number }): Promise<Row[]> {
  if (!opts.conformance) return [];
  const runs = opts.runs ?? 11;
  const dir = mkdtempSync(join(tmpdir(), 'cfs-bench-info-'));
  try {
    const dump = gunzipSync(readFileSync(join(opts.conformance, 'upstream', 'cs9-x86_64-minimal.dump.gz')));
    const image = join(dir, 'cs9.img');
    writeFileSync(image, writeImage(parseDump(dump)));
    const cfs = join(opts.repoRoot, 'bin', 'cfs.js');
    const row = (task: string, args: string[], target: string): Row => {
      const m = measure(args, runs);
      return {
        task,
        'wall median (s)': (m.wallMs / 1000).toFixed(3),
        'wall best (s)': (m.minMs / 1000).toFixed(3),
        'peak memory (MiB)': m.peakMiB?.toFixed(0) ?? 'n/a',
        target,
      };
    };
    return [
      row('cfs info dump cs9 (22,010 entries)', [cfs, 'info', 'dump', image], '≤ 0.150 s'),
      row('cfs info ls cs9', [cfs, 'info', 'ls', image], ''),
      row('cfs fsck cs9 (structure only)', [cfs, 'fsck', image], ''),
      row('composefs-dump cs9 (image copy)', [join(opts.repoRoot, 'bin', 'composefs-dump.js'), image, join(dir, 'copy.img')], ''),
    ];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
