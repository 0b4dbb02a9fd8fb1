/**
 * The tests acting as a publisher of composefs seals, with no code of the
 * project's: inline annotations written into a copy of a layout's manifest,
 * artifact manifests written by hand (sealing_spec.rs's shape), pushed to
 * the real registry with plain HTTP requests (blob uploads, manifest PUTs,
 * the registry's basic auth), and a front that answers the referrers API
 * the registry lacks from an index the test gives it, passing everything
 * else to the registry. Expected digests come from the `fsverity` tool.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { join } from 'node:path';
import { addBlob, blobFile, indexEntry } from './oci-images.js';
import { startProxy, type Proxy, type ProxyAction, type Registry } from './registry.js';

export const ARTIFACT_TYPE = 'application/vnd.composefs.metadata.v1';
export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
export const EMPTY = { mediaType: 'application/vnd.oci.empty.v1+json', digest: 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a', size: 2 };

export const sha256 = (b: Buffer | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** The fs-verity digest (hex) of a file, as fsverity-utils computes it. */
export function fsverityOf(file: string, algorithm: 'sha256' | 'sha512' = 'sha256'): string {
  const out = execFileSync('fsverity', ['digest', `--hash-alg=${algorithm}`, file], { encoding: 'utf8' });
  const m = new RegExp(`^${algorithm}:([0-9a-f]+) `).exec(out);
  if (!m) throw new Error(`fsverity digest: ${out}`);
  return m[1];
}

export const mergedKey = (alg: string) => `composefs.merged.erofs.v1.fsverity-${alg}-12`;
export const configKey = (alg: string) => `composefs.config.fsverity-${alg}-12`;

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
}

/**
 * Tag `to` in the layout: the manifest of `from` with `manifestAnnotations`
 * added to its annotations and `configAnnotations` to its config descriptor
 * (the spec's inline mode); returns the new manifest's descriptor.
 */
export function inlineSealLayout(layout: string, from: string, to: string, manifestAnnotations: Record<string, string>, configAnnotations: Record<string, string>): Descriptor {
  const entry = indexEntry(layout, from);
  const manifest = JSON.parse(readFileSync(blobFile(layout, entry.digest), 'utf8'));
  manifest.annotations = { ...(manifest.annotations ?? {}), ...manifestAnnotations };
  manifest.config = { ...manifest.config, annotations: { ...(manifest.config.annotations ?? {}), ...configAnnotations } };
  const desc = addBlob(layout, Buffer.from(JSON.stringify(manifest)), entry.mediaType);
  const index = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8'));
  index.manifests.push({ ...desc, annotations: { 'org.opencontainers.image.ref.name': to } });
  writeFileSync(join(layout, 'index.json'), JSON.stringify(index));
  return desc;
}

/** A composefs artifact manifest sealing `subject`: one empty layer per `{key: value}`, in the order given. */
export function artifactBytes(subject: Descriptor, layers: Record<string, string>[], extra: Record<string, unknown> = {}): Buffer {
  return Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      artifactType: ARTIFACT_TYPE,
      config: EMPTY,
      layers: layers.map((annotations) => ({ ...EMPTY, annotations })),
      subject: { mediaType: subject.mediaType, digest: subject.digest, size: subject.size },
      ...extra,
    }),
  );
}

/** An image index listing `manifests` (as the referrers API and the referrers tag hold them). */
export function referrersIndex(manifests: (Descriptor & { artifactType?: string })[]): Buffer {
  return Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests }));
}

/** Put the artifact into the layout beside its subject (the blob, and an index.json entry carrying its artifactType). */
export function addLayoutArtifact(layout: string, artifact: Buffer): Descriptor {
  const desc = addBlob(layout, artifact, OCI_MANIFEST);
  const index = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8'));
  index.manifests.push({ ...desc, artifactType: ARTIFACT_TYPE });
  writeFileSync(join(layout, 'index.json'), JSON.stringify(index));
  return desc;
}

/** One request to the registry as `creds` (basic auth); resolves with the status, headers and body. */
function request(registry: Registry, creds: string, method: string, path: string, body?: Buffer, contentType?: string): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { authorization: `Basic ${Buffer.from(creds).toString('base64')}` };
    if (body) headers['content-length'] = String(body.length);
    if (contentType) headers['content-type'] = contentType;
    const url = path.startsWith('https://') ? path : `https://${registry.host}${path}`;
    const req = https.request(url, { method, headers, ca: readFileSync(registry.certs.caCert) }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** Upload a blob (POST then PUT with its digest). */
export async function pushBlob(registry: Registry, creds: string, repository: string, bytes: Buffer): Promise<void> {
  const start = await request(registry, creds, 'POST', `/v2/${repository}/blobs/uploads/`);
  if (start.status !== 202) throw new Error(`blob upload start: HTTP ${start.status} ${start.body}`);
  const location = new URL(String(start.headers.location), `https://${registry.host}`);
  location.searchParams.set('digest', sha256(bytes));
  const done = await request(registry, creds, 'PUT', location.href, bytes, 'application/octet-stream');
  if (done.status !== 201) throw new Error(`blob upload: HTTP ${done.status} ${done.body}`);
}

/** PUT a manifest or index under `reference` (a tag or its digest). */
export async function pushManifest(registry: Registry, creds: string, repository: string, reference: string, bytes: Buffer, mediaType: string): Promise<void> {
  const r = await request(registry, creds, 'PUT', `/v2/${repository}/manifests/${reference}`, bytes, mediaType);
  if (r.status !== 201) throw new Error(`manifest PUT ${reference}: HTTP ${r.status} ${r.body}`);
}

/** Push an artifact manifest (and the empty blob it uses) by its digest; returns its descriptor with its artifactType. */
export async function pushArtifact(registry: Registry, creds: string, repository: string, artifact: Buffer): Promise<Descriptor & { artifactType: string }> {
  await pushBlob(registry, creds, repository, Buffer.from('{}'));
  const digest = sha256(artifact);
  await pushManifest(registry, creds, repository, digest, artifact, OCI_MANIFEST);
  return { mediaType: OCI_MANIFEST, digest, size: artifact.length, artifactType: ARTIFACT_TYPE };
}

/** The referrers tag schema: the index of `subject`'s referrers under the tag `sha256-HEX`. */
export async function pushReferrersTag(registry: Registry, creds: string, repository: string, subjectDigest: string, manifests: (Descriptor & { artifactType?: string })[]): Promise<void> {
  await pushManifest(registry, creds, repository, subjectDigest.replace(':', '-'), referrersIndex(manifests), OCI_INDEX);
}

/**
 * A front to the registry that answers `GET /v2/…/referrers/…` itself with
 * what `answer` gives for the path (the registry has no referrers API),
 * and passes everything else on. `close()` it in a finally.
 */
export async function startReferrersFront(registry: Registry, answer: (path: string) => { status: number; contentType?: string; body: Buffer }): Promise<Proxy> {
  return startProxy(registry, (path): ProxyAction => {
    if (!/^\/v2\/.+\/referrers\/[^/]+$/.test(path.split('?')[0])) return { kind: 'forward' };
    const a = answer(path);
    const headers: Record<string, string> = a.contentType ? { 'content-type': a.contentType } : {};
    return { kind: 'respond', status: a.status, headers, body: a.body };
  });
}
