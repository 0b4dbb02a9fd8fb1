/** Image build from the largest conformance dump, whole process (Node start-up included). */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { measure, type Row } from './measure.js';

export function benchMkcomposefs(conformance: string | null, repoRoot: string, runs = 11): Row[] {
  if (!conformance) return [];
  const dir = mkdtempSync(join(tmpdir(), 'cfs-bench-'));
  try {
    const dump = join(dir, 'cs9.dump');
    writeFileSync(dump, gunzipSync(readFileSync(join(conformance, 'upstream', 'cs9-x86_64-minimal.dump.gz'))));
    const out = join(dir, 'cs9.img');
    const cli = join(repoRoot, 'bin', 'mkcomposefs.js');
    const m = measure(cli, ['--from-file', dump, out], runs);
    const d = measure(cli, ['--from-file', '--print-digest-only', dump], runs);
    return [
      { task: 'mkcomposefs --from-file cs9 (22,010 entries)', 'wall median (s)': (m.wallMs / 1000).toFixed(3), 'peak memory (MiB)': m.peakMiB?.toFixed(0) ?? 'n/a', target: '≤ 0.150 s, ≤ 120 MiB' },
      { task: 'mkcomposefs --print-digest-only cs9', 'wall median (s)': (d.wallMs / 1000).toFixed(3), 'peak memory (MiB)': d.peakMiB?.toFixed(0) ?? 'n/a', target: '' },
    ];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
