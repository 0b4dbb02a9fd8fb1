/**
 * The OCI 1.1 referrers tag schema (distribution-spec, "Referrers Tag
 * Schema"), for registries without the referrers API: the referrers of
 * manifest `sha256:HEX` are listed in an image index tagged `sha256-HEX`.
 * Adding one keeps every other entry as it was and never lists a digest twice.
 */
import { SourceError } from './source-errors.js';
import { acceptedManifestTypes, mediaTypes, isObject } from './manifest.js';
import type { RegistryTarget } from './registry/push.js';

/** A descriptor as a referrers index lists it. */
export interface ReferrerDescriptor {
  mediaType: string;
  digest: string;
  size: number;
  artifactType?: string;
  annotations?: Record<string, string>;
}

export function referrersTag(subjectDigest: string): string {
  const m = /^(sha256):([0-9a-f]{64})$/.exec(subjectDigest);
  if (!m) throw new SourceError(`malformed subject digest '${subjectDigest.slice(0, 80)}'`, 'invalid-reference');
  return `${m[1]}-${m[2]}`;
}


/**
 * The entries of a referrers index (its bytes, as the registry served them),
 * refused in one line unless it is an image index of descriptors.
 */
export function parseReferrersIndex(bytes: Buffer, what: string): Record<string, unknown>[] {
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw new SourceError(`${what}: not valid JSON`, 'invalid-manifest');
  }
  if (!isObject(doc)) throw new SourceError(`${what}: not a JSON object`, 'invalid-manifest');
  if (doc.mediaType !== mediaTypes.ociIndex) throw new SourceError(`${what}: media type ${JSON.stringify(doc.mediaType)?.slice(0, 80)} is not an OCI image index`, 'invalid-manifest');
  if (!Array.isArray(doc.manifests)) throw new SourceError(`${what}: no manifests list`, 'invalid-manifest');
  doc.manifests.forEach((m, i) => {
    if (!isObject(m) || typeof m.digest !== 'string' || typeof m.mediaType !== 'string' || typeof m.size !== 'number') {
      throw new SourceError(`${what}: entry ${i} is not a descriptor`, 'invalid-manifest');
    }
  });
  return doc.manifests as Record<string, unknown>[];
}

export interface ReferrersUpdate {
  tag: string;
  /** Referrers listed after the update. */
  referrers: number;
  /** false when the descriptor was listed already (nothing was pushed). */
  added: boolean;
}

/** List `descriptor` among the referrers of `subjectDigest` in the tag schema's index. */
export async function addToReferrersTag(target: RegistryTarget, subjectDigest: string, descriptor: ReferrerDescriptor): Promise<ReferrersUpdate> {
  const tag = referrersTag(subjectDigest);
  const what = `referrers index ${tag} in ${target.where}`;
  // Asked for with every manifest type: a registry answers 404 for a manifest of a type not accepted,
  // and something else under the tag (another tool's image) must be refused, not overwritten.
  const existing = await target.getManifest(tag, acceptedManifestTypes);
  const manifests = existing ? parseReferrersIndex(existing.bytes, what) : [];
  if (manifests.some((m) => m.digest === descriptor.digest)) return { tag, referrers: manifests.length, added: false };
  const entry: ReferrerDescriptor = { mediaType: descriptor.mediaType, digest: descriptor.digest, size: descriptor.size };
  if (descriptor.artifactType) entry.artifactType = descriptor.artifactType;
  if (descriptor.annotations && Object.keys(descriptor.annotations).length > 0) entry.annotations = descriptor.annotations;
  const index = { schemaVersion: 2, mediaType: mediaTypes.ociIndex, manifests: [...manifests, entry] };
  await target.putManifest(tag, Buffer.from(JSON.stringify(index)), mediaTypes.ociIndex);
  return { tag, referrers: index.manifests.length, added: true };
}
