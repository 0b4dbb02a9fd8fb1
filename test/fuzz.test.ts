/**
 * Hostile images, a bounded run inside `npm test` (`npm run fuzz` runs longer):
 * images of generated trees and of the conformance vectors, damaged by bit
 * flips, extreme length and count fields, directory loops, splices and
 * truncation. Every case must end in a tree or a clean ImageFormatError, in a
 * fsck report, and in clean output from the consumers of the tree, quickly.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { conformanceBases, fuzz, generatedBases, type Base } from './fuzz-long.js';

const CASES = Number(process.env.CFS_FUZZ_CASES ?? 2400);
const SEED = Number(process.env.CFS_FUZZ_SEED ?? 0x5eed);

test(`fuzz: ${CASES} damaged images end in a tree or a clean error`, { timeout: 600_000 }, async (t) => {
  const small = (await conformanceBases()).filter((b: Base) => b.image.length <= 160 * 1024);
  const bases = [...generatedBases(SEED, 16), ...small];
  const failures: string[] = [];
  const stats = await fuzz(bases, {
    seed: SEED,
    cases: CASES,
    maxMs: 3000,
    onFailure: (_image, what, err, i) => failures.push(`case ${i} (${what}): ${err instanceof Error ? err.stack ?? err.message : String(err)}`),
  });
  t.diagnostic(
    `fuzz: ${stats.cases} cases over ${bases.length} base images in ${stats.seconds.toFixed(1)} s: ${stats.trees} trees, ${stats.errors} clean errors; slowest ${stats.slowestMs.toFixed(1)} ms, peak RSS ${stats.peakRssMiB.toFixed(0)} MiB`,
  );
  assert.deepEqual(failures.slice(0, 5), []);
  assert.equal(stats.cases, CASES);
  assert.ok(stats.trees > CASES / 20 && stats.errors > CASES / 20, 'the mutations should produce both readable and refused images');
  assert.ok(stats.peakRssMiB < 1024, `peak RSS ${stats.peakRssMiB} MiB`);
});
