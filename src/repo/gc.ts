/**
 * Garbage collection and checks of a repository.
 *
 * gc keeps what a name reaches: the name's image, its manifest and config,
 * its layers' records, and every object those layers' entries refer to
 * (an image's objects all come from its layers). Everything else goes:
 * other images, layer records, blobs, objects, and whatever a killed pull
 * left in tmp/ or as a temporary file in the store. It holds the
 * repository lock exclusively, so no pull is in flight meanwhile.
 *
 * fsck checks every object's fs-verity digest against its name, every image
 * (its digest, its structure, the presence and digest of its objects),
 * every layer record and every name.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fsverityDigest, fsverityDigestOfFileSync } from '../fsverity/index.js';
import { fsckImage } from '../check/fsck.js';
import { decodeName } from './layout.js';
import { hexOf, readdirSafe, removePath, sizeOf, type NameRecord, type Repository } from './repository.js';

export interface GcResult {
  dryRun: boolean;
  removed: { images: number; layers: number; blobs: number; objects: number; temporary: number };
  bytesFreed: number;
  kept: { names: number; images: number; layers: number; objects: number };
}

function objectNames(repo: Repository): { rel: string; path: string }[] {
  const out: { rel: string; path: string }[] = [];
  for (const d of readdirSafe(repo.objects)) {
    if (!/^[0-9a-f]{2}$/.test(d)) continue;
    for (const f of readdirSafe(join(repo.objects, d))) out.push({ rel: `${d}${f}`, path: join(repo.objects, d, f) });
  }
  return out;
}

export async function gcRepository(repo: Repository, opts: { dryRun?: boolean; onWait?: () => void } = {}): Promise<GcResult> {
  const dryRun = opts.dryRun === true;
  const lock = await repo.lock(true, opts.onWait);
  try {
    // Every name must be readable: one that is not would leave its image unprotected.
    const names = readdirSafe(repo.namesDir).filter((f) => !f.startsWith('.')).map((f) => repo.getName(decodeName(f)));
    const images = new Set(names.map((n) => n.image));
    const layers = new Set(names.flatMap((n) => n.layers.map(hexOf)));
    const blobs = new Set(names.flatMap((n) => [hexOf(n.manifest), hexOf(n.config)]));
    const objects = new Set<string>();
    for (const hex of layers) {
      for (const e of repo.readLayer(`sha256:${hex}`)) if (e.d && e.z !== undefined && e.z > 64) objects.add(e.d);
    }
    const result: GcResult = { dryRun, removed: { images: 0, layers: 0, blobs: 0, objects: 0, temporary: 0 }, bytesFreed: 0, kept: { names: names.length, images: 0, layers: 0, objects: 0 } };
    const drop = (path: string, kind: keyof GcResult['removed']) => {
      result.bytesFreed += sizeOf(path);
      result.removed[kind]++;
      if (!dryRun) removePath(path);
    };
    for (const f of readdirSafe(repo.imagesDir)) {
      if (images.has(f)) result.kept.images++;
      else drop(join(repo.imagesDir, f), f.startsWith('.') ? 'temporary' : 'images');
    }
    for (const f of readdirSafe(repo.layersDir)) {
      if (layers.has(f)) result.kept.layers++;
      else drop(join(repo.layersDir, f), f.startsWith('.') ? 'temporary' : 'layers');
    }
    for (const f of readdirSafe(repo.blobsDir)) if (!blobs.has(f)) drop(join(repo.blobsDir, f), f.startsWith('.') ? 'temporary' : 'blobs');
    for (const f of readdirSafe(repo.namesDir)) if (f.startsWith('.')) drop(join(repo.namesDir, f), 'temporary');
    for (const f of readdirSafe(repo.tmpDir)) drop(join(repo.tmpDir, f), 'temporary');
    for (const f of readdirSafe(repo.objects)) if (f.startsWith('.tmp.')) drop(join(repo.objects, f), 'temporary');
    for (const o of objectNames(repo)) {
      if (objects.has(o.rel)) result.kept.objects++;
      else drop(o.path, o.rel.length === 64 ? 'objects' : 'temporary');
    }
    return result;
  } finally {
    lock.release();
  }
}

export interface RepoProblem {
  what: string;
  message: string;
}

export interface RepoFsckResult {
  ok: boolean;
  problems: RepoProblem[];
  checked: { objects: number; images: number; layers: number; names: number };
}

export async function fsckRepository(repo: Repository, opts: { onWait?: () => void } = {}): Promise<RepoFsckResult> {
  const lock = await repo.lock(false, opts.onWait);
  const problems: RepoProblem[] = [];
  const checked = { objects: 0, images: 0, layers: 0, names: 0 };
  const problem = (what: string, message: string) => problems.push({ what, message });
  try {
    for (const o of objectNames(repo)) {
      if (o.rel.length !== 64) continue; // a temporary file; gc's business
      checked.objects++;
      try {
        const { digest } = fsverityDigestOfFileSync(o.path);
        if (digest.toString('hex') !== o.rel) problem(`object ${o.rel.slice(0, 2)}/${o.rel.slice(2)}`, `content has fs-verity digest ${digest.toString('hex')}`);
      } catch (err) {
        problem(`object ${o.rel}`, (err as Error).message);
      }
    }
    const objectsDir = repo.objects;
    for (const f of readdirSafe(repo.imagesDir)) {
      if (f.startsWith('.')) continue;
      checked.images++;
      let image: Buffer;
      try {
        image = readFileSync(join(repo.imagesDir, f));
      } catch (err) {
        problem(`image ${f}`, (err as Error).message);
        continue;
      }
      const hex = fsverityDigest(image).toString('hex');
      if (hex !== f) problem(`image ${f}`, `content has fs-verity digest ${hex}`);
      const report = fsckImage(image, { basedirs: [objectsDir] });
      for (const p of report.problems) problem(`image ${f}`, `${p.path ? `${p.path}: ` : ''}${p.message}`);
    }
    for (const diff of repo.listLayers()) {
      checked.layers++;
      try {
        for (const e of repo.readLayer(diff)) {
          if (e.d && e.z !== undefined && e.z > 64 && sizeOf(join(objectsDir, e.d.slice(0, 2), e.d.slice(2))) !== e.z) {
            problem(`layer ${diff}`, `entry ${e.p}: object ${e.d} missing or of the wrong size`);
          }
        }
      } catch (err) {
        problem(`layer ${diff}`, (err as Error).message);
      }
    }
    for (const f of readdirSafe(repo.namesDir)) {
      if (f.startsWith('.')) continue;
      checked.names++;
      const name = decodeName(f);
      let rec: NameRecord;
      try {
        rec = repo.getName(name);
      } catch (err) {
        problem(`name ${name}`, (err as Error).message);
        continue;
      }
      if (sizeOf(repo.imagePath(rec.image)) === 0) problem(`name ${name}`, `image ${rec.image} is missing`);
      for (const blob of [rec.manifest, rec.config]) {
        try {
          const data = repo.readBlob(blob);
          const got = `sha256:${createHash('sha256').update(data).digest('hex')}`;
          if (got !== blob) problem(`name ${name}`, `blob ${blob} has digest ${got}`);
        } catch (err) {
          problem(`name ${name}`, (err as Error).message);
        }
      }
      for (const l of rec.layers) if (!repo.hasLayer(l)) problem(`name ${name}`, `layer record ${l} is missing`);
    }
  } finally {
    lock.release();
  }
  return { ok: problems.length === 0, problems, checked };
}
