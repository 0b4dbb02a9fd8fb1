/**
 * `npm run bench`: every benchmark of the project, printed as tables. Timings
 * are whole-process unless a row says otherwise; nothing here asserts.
 */
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cpus } from 'node:os';
import { printTable } from './measure.js';
import { benchMkcomposefs } from './mkcomposefs.js';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const conformanceDir = process.env.CFS_CONFORMANCE ?? join(repoRoot, '..', 'shared', 'conformance');
const conformance = existsSync(conformanceDir) ? conformanceDir : null;

async function optional(path: string, name: string): Promise<((...args: unknown[]) => unknown) | null> {
  try {
    const mod = (await import(path)) as Record<string, unknown>;
    return typeof mod[name] === 'function' ? (mod[name] as (...args: unknown[]) => unknown) : null;
  } catch {
    return null;
  }
}

async function main(): Promise<void> {
  process.stdout.write(`composefs-ts benchmarks — Node ${process.version}, ${cpus().length} cores (${cpus()[0]?.model ?? 'unknown CPU'})\n`);
  if (!conformance) process.stdout.write('(no ../shared/conformance: the rows that need its vectors are skipped)\n');

  // `npm run bench -- --vs REV`: only this build against commit REV, side by side (bench/versus.ts).
  const vs = process.argv.indexOf('--vs');
  if (vs >= 0) {
    const rev = process.argv[vs + 1];
    if (!rev) throw new Error('--vs needs a commit (npm run bench -- --vs REV)');
    const { benchVersus } = await import('./versus.js');
    printTable(`This build against ${rev}, side by side (npm run bench -- --vs ${rev})`, await benchVersus({ repoRoot, conformance, rev }));
    return;
  }

  printTable('Image build (npm run bench)', benchMkcomposefs(conformance, repoRoot));

  const sections: Array<[string, string, string]> = [
    ['./info.js', 'benchInfo', 'Reading images'],
    ['./scan.js', 'benchScan', 'Images from directory trees'],
    ['./mount.js', 'benchMount', 'Mounting'],
    ['./registry.js', 'benchRegistry', 'Registry transfer (skopeo copy against our client)'],
    ['./pull.js', 'benchPull', 'Pulling container images'],
    ['./signature.js', 'benchSignature', 'Signature policy on pull (issue #19)'],
    ['./fuse.js', 'benchFuse', 'FUSE server (cold caches)'],
    ['./service.js', 'benchServiceRead', 'Mount service: reading beside the kernel and FUSE mounts (cold caches)'],
    ['./service.js', 'benchServiceMount', 'Mount service: time from the request to the mount'],
  ];
  for (const [path, fn, title] of sections) {
    const bench = await optional(path, fn);
    if (!bench) continue;
    const result = (await bench({ repoRoot, conformance })) as { rows: Array<Record<string, string | number>> } | Array<Record<string, string | number>>;
    printTable(title, Array.isArray(result) ? result : result.rows);
  }
}

main().catch((err) => {
  process.stderr.write(`bench: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
