/**
 * `cfs pull` against what users run today, side by side: an image of about
 * 1 GB in three gzip layers made from this machine's /usr, served over HTTPS
 * by a local docker-registry (the test fixture's), pulled
 *  - by `cfs pull docker://…` into an empty repository, and the same with
 *    `--algorithm sha512` into another (the two in alternating order);
 *  - by `skopeo copy docker://… oci:DIR` alone (transfer and checks);
 *  - by skopeo copy + `umoci raw unpack` + `mkcomposefs --digest-store` (the
 *    reference C mkcomposefs when built, see referenceMkcomposefs; ours beside it);
 * then a second image sharing the first two layers, pulled into the same
 * repository; the same image sealed (a composefs artifact found through the
 * registry's referrers tag and checked), beside the unsealed pull; `cfs seal`
 * of the first image once it is in the repository (its artifact pushed to the
 * registry); and the decompressors' throughput on one layer.
 * Needs root, docker-registry, skopeo, umoci (npm run bench installs them).
 * The layers are built once and kept in $CFS_BENCH_PULL_DIR (default
 * /var/tmp/cfs-bench-pull). $CFS_BENCH_PULL_ROUNDS rounds (default 3) after $CFS_BENCH_PULL_WARMUP (default 1) not counted, each
 * task once a round, side by side; medians.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { median, runOnce, type Row, type Sample } from './measure.js';
import { writeLayout, type LayerSpec } from '../test/helpers/oci-layout.js';
import { makeCertificates, push, startRegistry, haveRegistry } from '../test/helpers/registry.js';
import { decompress } from '../src/oci/layer.js';
import { fsverityDigest } from '../src/fsverity/index.js';
import { blobFile, indexEntry } from '../test/helpers/oci-images.js';
import { artifactBytes, configKey, mergedKey, pushArtifact, pushReferrersTag } from '../test/helpers/seal-publish.js';

const LAYERS: [string, string[]][] = [
  ['share', ['usr/share']],
  ['bin', ['usr/bin', 'usr/sbin', 'usr/libexec']],
  ['include', ['usr/include']],
];
const OTHER: [string, string[]] = ['perl', ['usr/lib/x86_64-linux-gnu/perl-base', 'usr/lib/x86_64-linux-gnu/gconv']];

/**
 * The reference C mkcomposefs (composefs/composefs), which is what a user
 * runs today (Debian bookworm has no package of it): $CFS_REFERENCE_MKCOMPOSEFS,
 * or the one bench/build-reference.sh built into the cache folder; null if neither.
 */
function referenceMkcomposefs(cache: string): string | null {
  const candidates = [process.env.CFS_REFERENCE_MKCOMPOSEFS, join(cache, 'composefs-ref', 'build', 'tools', 'mkcomposefs')];
  for (const c of candidates) if (c && existsSync(c)) return c;
  return null;
}

function sh(cmd: string): void {
  const r = spawnSync('sh', ['-c', cmd], { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd}: ${r.stderr}`);
}

function layer(dir: string, name: string, paths: string[], compress: 'gz' | 'zst' = 'gz'): LayerSpec {
  // `.2`: these tars list their parent directories (`usr/`, …) as image builders' layers do, so the
  // image has a canonical form (composefs-rs refuses an entry whose parent is missing); the tars
  // of before did not.
  const tar = join(dir, `${name}.2.tar`);
  const blob = `${tar}.${compress}`;
  const have = paths.filter((p) => existsSync(`/${p}`));
  const parents = [...new Set(have.flatMap((p) => p.split('/').slice(0, -1).map((_, i, parts) => parts.slice(0, i + 1).join('/'))))].sort();
  if (!existsSync(blob)) {
    // The tar is made once, from /usr, or taken back from the gzip blob: a tar made again (for
    // the zstd blob) would hold what /usr holds now, no longer the gzip layer's contents, and the
    // next run would read it as that layer (its diff_id no longer the layer's).
    const gz = `${tar}.gz`;
    if (!existsSync(tar) && compress !== 'gz' && existsSync(gz)) sh(`gzip -dc ${gz} > ${tar}.tmp && mv ${tar}.tmp ${tar}`);
    if (!existsSync(tar)) sh(`tar --sort=name --xattrs -C / -cf ${tar} --no-recursion ${parents.join(' ')} --recursion ${have.join(' ')} 2>/dev/null || true`);
    sh(compress === 'gz' ? `gzip -6 -c ${tar} > ${blob}.tmp && mv ${blob}.tmp ${blob}` : `zstd -q -3 -c ${tar} > ${blob}.tmp && mv ${blob}.tmp ${blob}`);
  }
  const data = readFileSync(blob);
  // Without the tar (removed to save room), the gzip blob gives it back, whichever blob was asked for.
  const t = existsSync(tar) ? readFileSync(tar) : gunzipSync(compress === 'gz' ? data : readFileSync(`${tar}.gz`));
  return { tar: t, blob: data, mediaType: compress === 'gz' ? 'application/vnd.oci.image.layer.v1.tar+gzip' : 'application/vnd.oci.image.layer.v1.tar+zstd' };
}

async function throughput(blob: Buffer): Promise<number> {
  const start = process.hrtime.bigint();
  let n = 0;
  async function* one() {
    for (let i = 0; i < blob.length; i += 1 << 20) yield blob.subarray(i, i + (1 << 20));
  }
  for await (const c of decompress(one(), 'bench')) n += c.length;
  return n / (Number(process.hrtime.bigint() - start) / 1e9) / 1e6;
}

function benchCache(): string {
  const cache = process.env.CFS_BENCH_PULL_DIR ?? '/var/tmp/cfs-bench-pull';
  mkdirSync(cache, { recursive: true });
  return cache;
}

/** The bench's OCI layout in `cache` (layers built once, kept): `usr` (3 layers) and `usr2` (sharing the first two). */
function writeBenchLayout(cache: string): { layout: string; specs: LayerSpec[] } {
  const specs = LAYERS.map(([name, paths]) => layer(cache, name, paths));
  const other = layer(cache, OTHER[0], OTHER[1]);
  const layout = join(cache, 'layout');
  rmSync(layout, { recursive: true, force: true });
  writeLayout(layout, 'usr', specs);
  writeLayout(layout, 'usr2', [specs[0], specs[1], other]);
  return { layout, specs };
}

/** The path of the bench's OCI layout, tags `usr` and `usr2` (for bench/versus.ts). */
export function benchLayout(): string {
  return writeBenchLayout(benchCache()).layout;
}

export async function benchPull(ctx: { repoRoot: string }): Promise<Row[]> {
  if (process.getuid?.() !== 0 || !haveRegistry) return [{ task: 'skipped: needs root, docker-registry, skopeo and umoci', wall: '-' }];
  const cache = benchCache();
  const { layout, specs } = writeBenchLayout(cache);
  const compressed = specs.reduce((a, l) => a + l.blob.length, 0);
  const uncompressed = specs.reduce((a, l) => a + l.tar.length, 0);

  const work = mkdtempSync(join(tmpdir(), 'cfs-bench-pull-'));
  const certs = await makeCertificates(join(work, 'certs'));
  const registry = await startRegistry({ auth: { htpasswd: { bench: 'bench' } } }, certs);
  const rows: Row[] = [];
  try {
    await push(registry, `oci:${layout}:usr`, 'bench/usr:1', 'bench:bench');
    await push(registry, `oci:${layout}:usr2`, 'bench/usr:2', 'bench:bench');
    // The same image in another repository, sealed there once its digest is known (after the first cold pull).
    await push(registry, `oci:${layout}:usr`, 'bench/sealed:1', 'bench:bench');
    await push(registry, `oci:${layout}:usr`, 'bench/sealrun:1', 'bench:bench');
    const sealedRef = `docker://${registry.host}/bench/sealed:1`;
    let sealed = false;
    const seal = (repo: string) => {
      const images = readdirSync(join(repo, 'images')).filter((f) => !f.startsWith('.'));
      if (images.length !== 1) throw new Error(`expected one image after the cold pull, found ${images.length}`);
      const subject = indexEntry(layout, 'usr');
      const configDigest = JSON.parse(readFileSync(blobFile(layout, subject.digest), 'utf8')).config.digest as string;
      const config = fsverityDigest(readFileSync(blobFile(layout, configDigest))).toString('hex');
      return pushArtifact(registry, 'bench:bench', 'bench/sealed', artifactBytes(subject, [{ [configKey('sha256')]: config }, { [mergedKey('sha256')]: images[0] }])).then((artifact) =>
        pushReferrersTag(registry, 'bench:bench', 'bench/sealed', subject.digest, [artifact]),
      );
    };
    const ref = `docker://${registry.host}/bench/usr:1`;
    const cfs = join(ctx.repoRoot, 'bin', 'cfs.js');
    const auth = ['--creds', 'bench:bench', '--cert-dir', certs.certDir];
    const skopeoAuth = ['--src-creds', 'bench:bench', '--src-cert-dir', certs.certDir];
    const mib = (k: number | null) => (k === null ? '-' : `${Math.round(k / 1024)} MiB`);
    const reference = referenceMkcomposefs(cache);
    const ours = join(ctx.repoRoot, 'bin', 'mkcomposefs.js');

    // Side by side, several rounds (the machine is shared and noisy): medians. Nothing written is
    // removed before the last round ends: ext4 skips inodes freed in the last 30 s when it allocates
    // new ones (recently_deleted()), which made whatever ran right after a removal of 55,000 files
    // up to 3x slower (umoci's unpack took 10 s in one round and 30-40 s in the next). Before each
    // timed task: sync and cold caches, so every task starts from the same state.
    const settle = () => sh('sync; echo 3 > /proc/sys/vm/drop_caches');
    const rounds = Math.max(1, Number(process.env.CFS_BENCH_PULL_ROUNDS ?? 3));
    // A first round, run and not counted: the first pull after the registry starts was 10-30 %
    // slower than the next ones in every run (the pipeline's first round 5 %).
    const warmup = Math.max(0, Number(process.env.CFS_BENCH_PULL_WARMUP ?? 1));
    const runs: { cold: Sample; sealedPull: Sample; sealRun: Sample; cold512: Sample; second: Sample; skopeoOnly: Sample; s1: Sample; u: Sample; m: Sample; mOurs: Sample }[] = [];
    for (let round = -warmup; round < rounds; round++) {
      const dir = join(work, `round-${round + warmup}`);
      mkdirSync(dir);
      const repo = join(dir, 'repo');
      // The sealed pull goes into an empty repository as the cold pull does, before it in every
      // other round (what runs first after the registry's idle time was slower); --require-seal:
      // a pull that did not find the seal fails the bench.
      const pullSealed = () => runOnce(cfs, ['pull', '--quiet', '--require-seal', '--repo', join(dir, 'repo-sealed'), ...auth, sealedRef]);
      const sealedFirst = sealed && round % 2 !== 0;
      // sha256 and sha512 pulls of the same image, first one then the other by turns.
      const pullSha512 = () => {
        settle();
        return runOnce(cfs, ['pull', '--quiet', '--repo', join(dir, 'repo-sha512'), '--algorithm', 'sha512', ...auth, ref]);
      };
      const early512 = round % 2 === 0 ? pullSha512() : null;
      settle();
      let sealedPull = sealedFirst ? pullSealed() : undefined;
      if (sealedFirst) settle();
      const cold = runOnce(cfs, ['pull', '--quiet', '--repo', repo, ...auth, ref]);
      if (!sealed) {
        await seal(repo);
        sealed = true;
      }
      if (!sealedPull) {
        settle();
        sealedPull = pullSealed();
      }
      settle();
      // The image is in the repository now: sealing it takes the merged digest from its name.
      // (In a registry repository of its own: a seal beside bench/usr would make the next rounds' cold pulls sealed ones.)
      const sealRun = runOnce(cfs, ['seal', '--repo', repo, ...auth, `docker://${registry.host}/bench/sealrun:1`]);
      const cold512 = early512 ?? pullSha512();
      settle();
      const second = runOnce(cfs, ['pull', '--quiet', '--repo', repo, ...auth, `docker://${registry.host}/bench/usr:2`]);
      settle();
      const skopeoOnly = runOnce('skopeo', ['copy', '--quiet', ...skopeoAuth, ref, `oci:${join(dir, 'skopeo')}:usr`]);
      settle();
      const s1 = runOnce('skopeo', ['copy', '--quiet', ...skopeoAuth, ref, `oci:${join(dir, 'pipe-layout')}:usr`]);
      // The pipeline's steps run back to back, as a user's script runs them.
      const u = runOnce('umoci', ['raw', 'unpack', '--image', `${join(dir, 'pipe-layout')}:usr`, join(dir, 'rootfs')]);
      const m = runOnce(reference ?? ours, ['--digest-store', join(dir, 'store'), join(dir, 'rootfs'), join(dir, 'rootfs.cfs')]);
      // Ours over the same rootfs, still in the page cache as it was for the reference (only synced).
      sh('sync');
      const mOurs = reference ? runOnce(ours, ['--digest-store', join(dir, 'store-ours'), join(dir, 'rootfs'), join(dir, 'rootfs-ours.cfs')]) : m;
      if (round >= 0) runs.push({ cold, sealedPull, sealRun, cold512, second, skopeoOnly, s1, u, m, mOurs });
    }
    type Run = (typeof runs)[number];
    const med = (f: (r: Run) => number) => median(runs.map(f));
    const peak = (f: (r: Run) => number | null) => Math.max(...runs.map((r) => f(r) ?? 0)) || null;
    const s = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
    const each = (f: (r: Run) => number) => runs.map((r) => (f(r) / 1000).toFixed(1)).join(', ');
    const pipelineOf = (r: Run) => r.s1.wallMs + r.u.wallMs + r.m.wallMs;
    const pipelineOursOf = (r: Run) => r.s1.wallMs + r.u.wallMs + r.mOurs.wallMs;
    const ratioRow = (of: (r: Run) => number, goal: string) => {
      const ratios = runs.map((r) => r.cold.wallMs / of(r)).sort((x, y) => x - y);
      const best = Math.min(...runs.map(of));
      return `cfs ${median(ratios).toFixed(2)}x (per round ${ratios.map((x) => x.toFixed(2)).join(', ')}; against its fastest round ${(med((r) => r.cold.wallMs) / best).toFixed(2)}x${goal})`;
    };
    const cold = med((r) => r.cold.wallMs);
    const which = reference ? `the reference C mkcomposefs (${reference})` : 'our mkcomposefs (no reference C mkcomposefs: see bench/build-reference.sh)';
    rows.push({ task: `cfs pull, empty repository (${(compressed / 1e9).toFixed(2)} GB gzip, ${(uncompressed / 1e9).toFixed(2)} GB tar, 3 layers; median of ${rounds}, after ${warmup} round not counted)`, wall: `${s(cold)} (${each((r) => r.cold.wallMs)})`, 'peak memory': mib(peak((r) => r.cold.peakKiB)), ratio: '1' });
    rows.push({ task: `skopeo copy + umoci raw unpack + mkcomposefs --digest-store, with ${which}`, wall: `${s(med(pipelineOf))} (${each(pipelineOf)})`, 'peak memory': mib(peak((r) => Math.max(r.s1.peakKiB ?? 0, r.u.peakKiB ?? 0, r.m.peakKiB ?? 0))), ratio: ratioRow(pipelineOf, '; goal ≤ 0.3x') });
    rows.push({ task: '  of which skopeo copy / umoci unpack / mkcomposefs', wall: `${s(med((r) => r.s1.wallMs))} / ${s(med((r) => r.u.wallMs))} / ${s(med((r) => r.m.wallMs))}`, 'peak memory': '', ratio: '' });
    if (reference) {
      rows.push({ task: '  the same pipeline with our mkcomposefs', wall: `${s(med(pipelineOursOf))} (${each(pipelineOursOf)}; mkcomposefs ${s(med((r) => r.mOurs.wallMs))})`, 'peak memory': mib(peak((r) => r.mOurs.peakKiB)), ratio: ratioRow(pipelineOursOf, '') });
    }
    const sealedRatios = runs.map((r) => r.sealedPull.wallMs / r.cold.wallMs).sort((x, y) => x - y);
    rows.push({
      task: 'cfs pull of the same image sealed (artifact found through the referrers tag, checked), empty repository',
      wall: `${s(med((r) => r.sealedPull.wallMs))} (${each((r) => r.sealedPull.wallMs)})`,
      'peak memory': mib(peak((r) => r.sealedPull.peakKiB)),
      ratio: `${median(sealedRatios).toFixed(2)}x the unsealed pull (per round ${sealedRatios.map((x) => x.toFixed(2)).join(', ')}; goal ≤ 1.05x)`,
    });
    const ratios512 = runs.map((r) => r.cold512.wallMs / r.cold.wallMs).sort((x, y) => x - y);
    rows.push({
      task: 'cfs pull --algorithm sha512, empty repository (the same image)',
      wall: `${s(med((r) => r.cold512.wallMs))} (${each((r) => r.cold512.wallMs)})`,
      'peak memory': mib(peak((r) => r.cold512.peakKiB)),
      ratio: `${median(ratios512).toFixed(2)}x the sha256 pull (per round ${ratios512.map((x) => x.toFixed(2)).join(', ')}; goal ≤ 1.15x)`,
    });
    const skopeoOnly = med((r) => r.skopeoOnly.wallMs);
    rows.push({ task: 'skopeo copy alone (transfer + checks)', wall: s(skopeoOnly), 'peak memory': mib(peak((r) => r.skopeoOnly.peakKiB)), ratio: `cfs ${(cold / skopeoOnly).toFixed(2)}x` });
    const second = med((r) => r.second.wallMs);
    rows.push({ task: 'cfs pull of a second image sharing two layers', wall: s(second), 'peak memory': mib(peak((r) => r.second.peakKiB)), ratio: `${(second / cold).toFixed(2)}x a cold pull (goal ≤ 0.2x)` });
    const sealMs = med((r) => r.sealRun.wallMs);
    rows.push({ task: 'cfs seal of the image once in the repository (cold caches; artifact pushed to the registry, referrers tag kept)', wall: `${s(sealMs)} (${each((r) => r.sealRun.wallMs)})`, 'peak memory': mib(peak((r) => r.sealRun.peakKiB)), ratio: `goal ≤ 1 s: ${sealMs <= 1000 ? 'met' : 'missed'}` });
    const gz = await throughput(specs[0].blob);
    rows.push({ task: `gzip decompression (node:zlib), ${LAYERS[0][0]} layer`, wall: `${gz.toFixed(0)} MB/s`, 'peak memory': '', ratio: '' });
    if (spawnSync('zstd', ['--version']).status === 0) {
      const z = layer(cache, LAYERS[0][0], LAYERS[0][1], 'zst');
      const zt = await throughput(z.blob);
      rows.push({ task: `zstd decompression (fzstd), ${LAYERS[0][0]} layer`, wall: `${zt.toFixed(0)} MB/s`, 'peak memory': '', ratio: '' });
    }
  } finally {
    await registry.stop();
    rmSync(work, { recursive: true, force: true });
  }
  writeFileSync(join(cache, 'last.json'), JSON.stringify(rows, null, 2));
  return rows;
}

if (process.argv[1]?.endsWith('/bench/pull.js')) {
  const { printTable } = await import('./measure.js');
  const { dirname, resolve } = await import('node:path');
  const { fileURLToPath } = await import('node:url');
  printTable('Pulling container images', await benchPull({ repoRoot: resolve(dirname(fileURLToPath(import.meta.url)), '..', '..') }));
}
