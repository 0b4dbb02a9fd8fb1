/**
 * Registry transfer: an image of this machine's /usr/share in two gzip
 * layers ([a-l]* and the rest; CFS_BENCH_USR overrides the directory),
 * served by a local docker-registry over HTTPS, fetched and checked by
 * `skopeo copy docker://… oci:DIR` and by our client (bench/registry-read.ts,
 * layers in parallel). The image is also what the pull benchmark builds on:
 * `prepareBenchRegistry` returns the running registry and the reference.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createGzip } from 'node:zlib';
import { measure, type Row } from './measure.js';
import { haveRegistry, push, startRegistry, type Registry } from '../test/helpers/registry.js';

interface LayerFile {
  digest: string;
  diffId: string;
  size: number;
}

/** tar of `paths` (relative to `root`) gzipped into `dir`, named by its digest. */
async function gzipLayer(root: string, paths: string[], dir: string): Promise<LayerFile> {
  const tmp = join(dir, 'layer.tmp');
  const compressed = createHash('sha256');
  const uncompressed = createHash('sha256');
  const tar = spawn('tar', ['-C', root, '--numeric-owner', '-cf', '-', ...paths], { stdio: ['ignore', 'pipe', 'ignore'] });
  const gzip = createGzip({ level: 6 });
  const out = createWriteStream(tmp);
  let size = 0;
  tar.stdout.on('data', (c: Buffer) => uncompressed.update(c));
  gzip.on('data', (c: Buffer) => {
    compressed.update(c);
    size += c.length;
  });
  tar.stdout.pipe(gzip).pipe(out);
  await new Promise<void>((resolve, reject) => {
    out.on('finish', resolve);
    out.on('error', reject);
  });
  const digest = `sha256:${compressed.digest('hex')}`;
  renameSync(tmp, join(dir, digest.slice(7)));
  return { digest, diffId: `sha256:${uncompressed.digest('hex')}`, size };
}

function writeBlob(dir: string, bytes: Buffer): { digest: string; size: number } {
  const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  writeFileSync(join(dir, digest.slice(7)), bytes);
  return { digest, size: bytes.length };
}

/** An OCI layout with the image `bench`, its layers made from `root/rel` split in two. */
async function makeLayout(layout: string, root: string, rel: string): Promise<number> {
  const blobs = join(layout, 'blobs/sha256');
  mkdirSync(blobs, { recursive: true });
  const names = readdirSync(join(root, rel)).sort();
  const first = names.filter((n) => n < 'm').map((n) => join(rel, n));
  const rest = names.filter((n) => n >= 'm').map((n) => join(rel, n));
  const layers = [await gzipLayer(root, first, blobs), await gzipLayer(root, rest, blobs)];
  const config = writeBlob(blobs, Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) } })));
  const manifest = writeBlob(blobs, Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
    layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: l.digest, size: l.size })),
  })));
  writeFileSync(join(layout, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  writeFileSync(join(layout, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, annotations: { 'org.opencontainers.image.ref.name': 'bench' } }] }));
  return layers.reduce((n, l) => n + l.size, 0);
}

export interface BenchRegistry {
  registry: Registry;
  reference: string;
  creds: string;
  compressedBytes: number;
  workDir: string;
  stop(): Promise<void>;
}

export async function prepareBenchRegistry(): Promise<BenchRegistry> {
  const workDir = mkdtempSync(join(tmpdir(), 'cfs-bench-registry-'));
  const source = process.env.CFS_BENCH_USR ?? '/usr/share';
  const registry = await startRegistry({ auth: { htpasswd: { bench: 'bench' } } });
  try {
    const compressedBytes = await makeLayout(join(workDir, 'layout'), dirname(source), source.split('/').pop()!);
    await push(registry, `oci:${join(workDir, 'layout')}:bench`, 'bench/usr:v1', 'bench:bench');
    rmSync(join(workDir, 'layout'), { recursive: true, force: true });
    return {
      registry,
      reference: `docker://${registry.host}/bench/usr:v1`,
      creds: 'bench:bench',
      compressedBytes,
      workDir,
      stop: async () => {
        await registry.stop();
        rmSync(workDir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await registry.stop();
    rmSync(workDir, { recursive: true, force: true });
    throw err;
  }
}

export async function benchRegistry(): Promise<Row[]> {
  if (!haveRegistry) return [{ benchmark: 'registry transfer', note: 'docker-registry, skopeo or umoci missing: skipped' }];
  const bench = await prepareBenchRegistry();
  try {
    const mb = bench.compressedBytes / 1e6;
    const target = join(bench.workDir, 'copy');
    const reader = join(dirname(fileURLToPath(import.meta.url)), 'registry-read.js');
    const skopeoRun = measure('sh', ['-c', `rm -rf ${target} && skopeo copy --quiet --src-creds ${bench.creds} --src-cert-dir ${bench.registry.certs.certDir} ${bench.reference} oci:${target}:bench`], 3);
    const ours = measure(process.execPath, [reader, bench.reference, bench.creds, bench.registry.certs.certDir], 3);
    const row = (name: string, m: { wallMs: number; peakMiB: number | null }): Row => ({
      benchmark: name,
      'compressed MB': mb.toFixed(0),
      'wall s': (m.wallMs / 1000).toFixed(2),
      'MB/s': (mb / (m.wallMs / 1000)).toFixed(0),
      'peak MiB': m.peakMiB === null ? '-' : m.peakMiB.toFixed(0),
    });
    return [
      row('skopeo copy docker:// → oci: (fetch, check, write)', skopeoRun),
      row('openSource: fetch and check every layer (parallel, discarded)', ours),
      { benchmark: 'ratio ours / skopeo (wall time)', 'compressed MB': '', 'wall s': (ours.wallMs / skopeoRun.wallMs).toFixed(2), 'MB/s': '', 'peak MiB': '' },
    ];
  } finally {
    await bench.stop();
  }
}
