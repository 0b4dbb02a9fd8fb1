/**
 * Whole-process measurements: wall time and peak memory of a command, run
 * several times. Peak memory comes from GNU time (Debian package `time`).
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

export interface Sample {
  wallMs: number;
  peakKiB: number | null;
  /** What the command wrote on stderr (GNU time's line removed). */
  stderr: string;
}

const GNU_TIME = '/usr/bin/time';

export function runOnce(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Sample {
  const useTime = existsSync(GNU_TIME);
  const start = process.hrtime.bigint();
  const r = useTime
    ? spawnSync(GNU_TIME, ['-f', '%M', cmd, ...args], { encoding: 'utf8', env: env ?? process.env, maxBuffer: 1 << 26 })
    : spawnSync(cmd, args, { encoding: 'utf8', env: env ?? process.env, maxBuffer: 1 << 26 });
  const wallMs = Number(process.hrtime.bigint() - start) / 1e6;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  const lines = (r.stderr ?? '').trim().split('\n');
  const peakKiB = useTime ? Number(lines[lines.length - 1]) : null;
  return { wallMs, peakKiB, stderr: (useTime ? lines.slice(0, -1) : lines).join('\n') };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function measure(cmd: string, args: string[], runs: number, warmup = 1): { wallMs: number; peakMiB: number | null } {
  for (let i = 0; i < warmup; i++) runOnce(cmd, args);
  const samples = Array.from({ length: runs }, () => runOnce(cmd, args));
  const peaks = samples.map((s) => s.peakKiB).filter((p): p is number => p !== null);
  return {
    wallMs: median(samples.map((s) => s.wallMs)),
    peakMiB: peaks.length ? Math.max(...peaks) / 1024 : null,
  };
}

export type Row = Record<string, string | number>;

export function printTable(title: string, rows: Row[]): void {
  process.stdout.write(`\n${title}\n`);
  if (rows.length === 0) {
    process.stdout.write('  (nothing measured)\n');
    return;
  }
  const cols = Object.keys(rows[0]);
  const width = cols.map((c) => Math.max(c.length, ...rows.map((r) => String(r[c]).length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(width[i])).join(' | ')} |\n`;
  process.stdout.write(line(cols));
  process.stdout.write(`|${width.map((w) => '-'.repeat(w + 2)).join('|')}|\n`);
  for (const r of rows) process.stdout.write(line(cols.map((c) => String(r[c]))));
}
