/**
 * OCI layouts for the tests: made with the tests' own tar writer (layers
 * written as blobs by hand) or by umoci, and read back by a minimal
 * ImageSource (`layoutSource`) so the importer can be tested on its own,
 * before and beside the real transports of src/oci/.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync, createReadStream } from 'node:fs';
import { join } from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import type { Descriptor, ImageSource, ResolvedImage } from '../../src/oci/source.js';
import { gzip, makeTar, type TarEntry } from './tar-writer.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

export interface LayerSpec {
  /** The blob as stored (compressed or not). */
  blob: Buffer;
  /** The uncompressed tar (for the diff_id). */
  tar: Buffer;
  mediaType: string;
  /** The diff_id, when the tar is too large to hold (then `tar` is not read). */
  diffId?: string;
}

function writeBlob(dir: string, data: Buffer): string {
  const hex = sha(data);
  mkdirSync(join(dir, 'blobs/sha256'), { recursive: true });
  writeFileSync(join(dir, 'blobs/sha256', hex), data);
  return `sha256:${hex}`;
}

/** Write an OCI layout holding one image of `layers` under `ref`. */
export function writeLayout(dir: string, ref: string, layers: LayerSpec[], config: Record<string, unknown> = {}): { manifestDigest: string } {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const layerDescs = layers.map((l) => ({ mediaType: l.mediaType, digest: writeBlob(dir, l.blob), size: l.blob.length }));
  const cfg = Buffer.from(
    JSON.stringify({
      created: '2024-01-02T03:04:05Z',
      architecture: 'amd64',
      os: 'linux',
      config: { Env: ['PATH=/usr/bin'], Cmd: ['/bin/sh'] },
      ...config,
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId ?? `sha256:${sha(l.tar)}`) },
    }),
  );
  const cfgDigest = writeBlob(dir, cfg);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: cfgDigest, size: cfg.length },
      layers: layerDescs,
    }),
  );
  const manifestDigest = writeBlob(dir, manifest);
  let index: { schemaVersion: number; manifests: unknown[] } = { schemaVersion: 2, manifests: [] };
  try {
    index = JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8'));
  } catch {
    /* new layout */
  }
  index.manifests = index.manifests.filter((m) => (m as Descriptor).annotations?.['org.opencontainers.image.ref.name'] !== ref);
  index.manifests.push({ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: manifestDigest, size: manifest.length, annotations: { 'org.opencontainers.image.ref.name': ref } });
  writeFileSync(join(dir, 'index.json'), JSON.stringify(index));
  return { manifestDigest };
}

export function gzLayer(tar: Buffer, blob: Buffer): LayerSpec {
  return { tar, blob, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip' };
}

/** One gzip layer per set of tar entries. */
export function gzLayers(...sets: TarEntry[][]): LayerSpec[] {
  return sets.map((s) => {
    const tar = makeTar(s);
    return gzLayer(tar, gzip(tar));
  });
}

/** A layer spec from a blob umoci wrote (gzip), for the diff_id. */
export function layerOfGzipBlob(blob: Buffer): LayerSpec {
  return gzLayer(gunzipSync(blob), blob);
}

/** A minimal `oci:DIR:REF` ImageSource: checks sizes and sha256 of what it serves. */
export function layoutSource(dir: string, ref: string): ImageSource {
  const blobPath = (d: string) => join(dir, 'blobs/sha256', d.replace(/^sha256:/, ''));
  return {
    async resolve(): Promise<ResolvedImage> {
      const index = JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8')) as { manifests: Descriptor[] };
      const desc = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === ref);
      if (!desc) throw new Error(`no ${ref} in ${dir}`);
      const manifest = readFileSync(blobPath(desc.digest));
      const m = JSON.parse(manifest.toString()) as { config: Descriptor; layers: Descriptor[] };
      return {
        reference: `oci:${dir}:${ref}`,
        defaultName: ref,
        manifestDigest: desc.digest,
        manifestMediaType: desc.mediaType,
        manifest,
        configDescriptor: m.config,
        config: readFileSync(blobPath(m.config.digest)),
        layers: m.layers,
      };
    },
    async openBlob(d: Descriptor, options = {}): Promise<Readable> {
      const hash = createHash('sha256');
      let n = 0;
      const check = new Transform({
        transform(chunk: Buffer, _enc, cb) {
          hash.update(chunk);
          n += chunk.length;
          options.onBytes?.(chunk.length);
          cb(null, chunk);
        },
        flush(cb) {
          const got = `sha256:${hash.digest('hex')}`;
          if (n !== d.size || got !== d.digest) cb(new Error(`blob ${d.digest}: got ${n} bytes with digest ${got}`));
          else cb();
        },
      });
      const src = createReadStream(blobPath(d.digest));
      src.on('error', (e) => check.destroy(e));
      return src.pipe(check);
    },
    async close() {},
  };
}
