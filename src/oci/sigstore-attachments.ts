/**
 * Sigstore attachments, as cosign stores them and containers/image reads and
 * writes them (docker/docker_image_src.go, docker_image_dest.go): the image's
 * repository has a tag `sha256-HEX.sig` (the manifest digest, ':' made '-')
 * holding an OCI image manifest whose layers are the attachments: each a
 * payload blob (for a signature, media type
 * application/vnd.dev.cosign.simplesigning.v1+json) with its annotations
 * (`dev.cosignproject.cosign/signature`, and certificate, chain or bundle
 * ones). The config is an OCI image config whose rootfs.diff_ids list the
 * layers' digests.
 *
 * Reading: no tag (404) means no attachments; anything else the registry
 * answers under the tag must be an OCI manifest, within bounds (document
 * size, number of layers, size of each payload), every payload checked
 * against its digest. Writing adds a layer to the manifest there (the other
 * layers, the config's other fields and the manifest's other fields kept),
 * unless an identical one (media type, digest, size, annotations) is there
 * already, and pushes the manifest under the tag again.
 */
import { isObject, maxDocumentSize, mediaTypes, acceptedManifestTypes } from './manifest.js';
import { SourceError } from './source-errors.js';
import { checkDigestSyntax, sha256Of } from './verify.js';
import { printable } from '../printable.js';
import type { RegistryTarget } from './registry/push.js';

export const cosignSimpleSigningMediaType = 'application/vnd.dev.cosign.simplesigning.v1+json';
export const cosignSignatureAnnotation = 'dev.cosignproject.cosign/signature';

/** containers/image's iolimits.MaxSignatureBodySize, for each payload. */
export const maxAttachmentPayloadSize = 4 * 1024 * 1024;
/** Attachments read from or kept in one manifest at most (each payload is held in memory). */
export const maxAttachments = 128;
/** The payloads of one manifest's attachments together, as read (128 of 4 MiB would be half a gigabyte held at once). */
export const maxAttachmentsTotalSize = 16 * 1024 * 1024;

export interface SigstoreAttachment {
  payload: Buffer;
  mediaType: string;
  annotations: Record<string, string>;
}

/** Where attachments are read from: a RegistrySource or a RegistryTarget. */
export interface AttachmentReader {
  getManifest(reference: string, accept: string[], max?: number, signal?: AbortSignal): Promise<{ bytes: Buffer; mediaType?: string } | null>;
  getBlobBytes(descriptor: { digest: string; size: number }, max: number, signal?: AbortSignal): Promise<Buffer>;
}

interface AttachmentLayer {
  mediaType: string;
  digest: string;
  size: number;
  annotations: Record<string, string>;
}

interface AttachmentManifest {
  /** The document as it was, to be written back with its other fields. */
  raw: Record<string, unknown>;
  /** The digest of the bytes served. */
  digest: string;
  config: { mediaType: string; digest: string; size: number };
  layers: AttachmentLayer[];
}

/** The tag holding the attachments of `manifestDigest`: sha256-HEX.sig. */
export function sigstoreAttachmentTag(manifestDigest: string): string {
  checkDigestSyntax(manifestDigest, `sigstore attachments of ${printable(manifestDigest.slice(0, 100))}`);
  return `${manifestDigest.replace(':', '-')}.sig`;
}

function descriptor(raw: unknown, what: string, maxSize: number): AttachmentLayer {
  if (!isObject(raw)) throw new SourceError(`${what}: not a descriptor object`, 'invalid-manifest');
  const { mediaType, digest, size, annotations } = raw;
  if (typeof mediaType !== 'string' || mediaType === '') throw new SourceError(`${what}: no media type`, 'invalid-manifest');
  if (typeof digest !== 'string') throw new SourceError(`${what}: no digest`, 'invalid-manifest');
  checkDigestSyntax(digest, what);
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw new SourceError(`${what}: no valid size`, 'invalid-manifest');
  if (size > maxSize) throw new SourceError(`${what}: too large (${size} bytes, at most ${maxSize})`, 'invalid-manifest');
  const out: Record<string, string> = {};
  if (annotations !== undefined && annotations !== null) {
    if (!isObject(annotations)) throw new SourceError(`${what}: annotations are not an object`, 'invalid-manifest');
    for (const [k, v] of Object.entries(annotations)) {
      // containers/image decodes annotations into map[string]string: any other value fails the manifest.
      if (typeof v !== 'string') throw new SourceError(`${what}: annotation ${printable(JSON.stringify(k))} is not a string`, 'invalid-manifest');
      out[k] = v;
    }
  }
  return { mediaType, digest, size, annotations: out };
}

/** The manifest under the tag, parsed and bounded; null when there is none. */
async function fetchAttachmentManifest(reader: AttachmentReader, tag: string, what: string, signal?: AbortSignal): Promise<AttachmentManifest | null> {
  const got = await reader.getManifest(tag, acceptedManifestTypes, maxDocumentSize, signal);
  if (!got) return null;
  const type = got.mediaType?.split(';')[0].trim();
  if (type !== mediaTypes.ociManifest) throw new SourceError(`${what}: not an OCI image manifest (${printable(String(type ?? 'no media type'))})`, 'invalid-manifest');
  let doc: unknown;
  try {
    doc = JSON.parse(got.bytes.toString('utf8'));
  } catch (err) {
    throw new SourceError(`${what}: not valid JSON (${printable((err as Error).message)})`, 'invalid-manifest', { cause: err });
  }
  if (!isObject(doc)) throw new SourceError(`${what}: not a JSON object`, 'invalid-manifest');
  if (doc.schemaVersion !== 2) throw new SourceError(`${what}: unsupported schemaVersion ${printable(JSON.stringify(doc.schemaVersion) ?? 'none')}`, 'invalid-manifest');
  if (doc.mediaType !== undefined && doc.mediaType !== mediaTypes.ociManifest) throw new SourceError(`${what}: mediaType ${printable(JSON.stringify(doc.mediaType))} is not an OCI image manifest`, 'invalid-manifest');
  if (!Array.isArray(doc.layers)) throw new SourceError(`${what}: no layers list`, 'invalid-manifest');
  if (doc.layers.length > maxAttachments) throw new SourceError(`${what}: ${doc.layers.length} attachments (at most ${maxAttachments})`, 'invalid-manifest');
  const config = descriptor(doc.config, `${what}: config`, maxDocumentSize);
  const layers = doc.layers.map((l, i) => descriptor(l, `${what}: layers[${i}]`, maxAttachmentPayloadSize));
  return { raw: doc, digest: sha256Of(got.bytes), config: { mediaType: config.mediaType, digest: config.digest, size: config.size }, layers };
}

/**
 * The sigstore attachments of the image with manifest `manifestDigest`
 * (every layer of its `.sig` manifest: signatures, and whatever else is
 * attached; the caller decides by media type). None when the tag does not exist.
 */
export async function readSigstoreAttachments(source: AttachmentReader, manifestDigest: string, options: { signal?: AbortSignal; label?: string } = {}): Promise<SigstoreAttachment[]> {
  const tag = sigstoreAttachmentTag(manifestDigest);
  const what = `sigstore attachments ${tag}${options.label ? ` of ${options.label}` : ''}`;
  const manifest = await fetchAttachmentManifest(source, tag, what, options.signal);
  if (!manifest) return [];
  const total = manifest.layers.reduce((sum, l) => sum + l.size, 0);
  if (total > maxAttachmentsTotalSize) throw new SourceError(`${what}: ${manifest.layers.length} attachments of ${total} bytes together (at most ${maxAttachmentsTotalSize})`, 'invalid-manifest');
  const out: SigstoreAttachment[] = [];
  for (const layer of manifest.layers) {
    const payload = await source.getBlobBytes(layer, maxAttachmentPayloadSize, options.signal);
    out.push({ payload, mediaType: layer.mediaType, annotations: layer.annotations });
  }
  return out;
}

function sameAnnotations(a: Record<string, string>, b: Record<string, string>): boolean {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => Object.hasOwn(b, k) && b[k] === a[k]);
}

export interface PushedAttachment {
  tag: string;
  /** The digest of the `.sig` manifest now under the tag. */
  manifestDigest: string;
  /** Attachments listed after the push. */
  attachments: number;
  /** false when an identical attachment was there already (nothing was pushed). */
  added: boolean;
}

/** Add `attachment` to the `.sig` manifest of `manifestDigest` in `target`'s repository (made when there is none). */
export async function pushSigstoreAttachment(target: RegistryTarget, manifestDigest: string, attachment: SigstoreAttachment, options: { signal?: AbortSignal } = {}): Promise<PushedAttachment> {
  const tag = sigstoreAttachmentTag(manifestDigest);
  const what = `sigstore attachments ${tag} in ${target.where}`;
  if (attachment.payload.length > maxAttachmentPayloadSize) throw new SourceError(`${what}: payload too large (${attachment.payload.length} bytes, at most ${maxAttachmentPayloadSize})`, 'invalid-manifest');
  const existing = await fetchAttachmentManifest(target, tag, what, options.signal);
  const payloadDigest = sha256Of(attachment.payload);
  const layers = existing?.layers ?? [];
  const same = layers.find(
    (l) => l.mediaType === attachment.mediaType && l.size === attachment.payload.length && l.digest === payloadDigest && sameAnnotations(l.annotations, attachment.annotations),
  );
  if (same) return { tag, manifestDigest: existing!.digest, attachments: layers.length, added: false };
  if (layers.length >= maxAttachments) throw new SourceError(`${what}: already ${layers.length} attachments (at most ${maxAttachments})`, 'invalid-manifest');

  // The config: the one there (its other fields kept), else an empty image config as containers/image makes it.
  let config: Record<string, unknown>;
  if (existing) {
    const bytes = await target.getBlobBytes(existing.config, maxDocumentSize, options.signal);
    let parsed: unknown;
    try {
      parsed = JSON.parse(bytes.toString('utf8'));
    } catch (err) {
      throw new SourceError(`${what}: config ${existing.config.digest} is not valid JSON`, 'invalid-manifest', { cause: err });
    }
    if (!isObject(parsed)) throw new SourceError(`${what}: config ${existing.config.digest} is not a JSON object`, 'invalid-manifest');
    config = parsed;
  } else {
    config = { architecture: '', os: '', config: {}, rootfs: { type: 'layers', diff_ids: [] } };
  }
  const rootfs = isObject(config.rootfs) ? config.rootfs : { type: 'layers' };
  const diffIds = Array.isArray(rootfs.diff_ids) ? rootfs.diff_ids : [];
  config.rootfs = { ...rootfs, type: typeof rootfs.type === 'string' ? rootfs.type : 'layers', diff_ids: [...diffIds, payloadDigest] };

  await target.ensureBlob({ digest: payloadDigest, size: attachment.payload.length }, attachment.payload);
  const configBytes = Buffer.from(JSON.stringify(config));
  const configDescriptor = { mediaType: mediaTypes.ociConfig, digest: sha256Of(configBytes), size: configBytes.length };
  await target.ensureBlob(configDescriptor, configBytes);

  const layer: Record<string, unknown> = { mediaType: attachment.mediaType, digest: payloadDigest, size: attachment.payload.length };
  if (Object.keys(attachment.annotations).length > 0) layer.annotations = attachment.annotations;
  const rawLayers = existing ? (existing.raw.layers as unknown[]) : [];
  const manifest = existing
    ? { ...existing.raw, config: configDescriptor, layers: [...rawLayers, layer] }
    : { schemaVersion: 2, mediaType: mediaTypes.ociManifest, config: configDescriptor, layers: [layer] };
  const bytes = Buffer.from(JSON.stringify(manifest));
  if (bytes.length > maxDocumentSize) throw new SourceError(`${what}: the manifest would be too large (${bytes.length} bytes, at most ${maxDocumentSize})`, 'invalid-manifest');
  const pushed = await target.putManifest(tag, bytes, mediaTypes.ociManifest);
  return { tag, manifestDigest: pushed.digest, attachments: rawLayers.length + 1, added: true };
}
