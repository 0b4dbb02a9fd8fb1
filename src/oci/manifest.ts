/**
 * Manifests and indexes, as every transport serves them: what kind a
 * document is, the checks on its shape, the choice of one platform's image
 * from an index, and the walk from a top-level document to one resolved
 * image. Transports supply only the bytes.
 */
import type { Descriptor, Platform, ResolvedImage } from './source.js';
import { SourceError } from './source-errors.js';
import { checkBytes, checkDigestSyntax, sha256Of } from './verify.js';

export const mediaTypes = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerSchema1: 'application/vnd.docker.distribution.manifest.v1+json',
  dockerSchema1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
} as const;

/** What a registry is asked for (the Accept header): every kind this code reads, schema 1 last so a registry converts when it can. */
export const acceptedManifestTypes = [
  mediaTypes.ociIndex,
  mediaTypes.ociManifest,
  mediaTypes.dockerList,
  mediaTypes.dockerManifest,
];

/** Manifests, indexes and configs are read whole; this bounds what a hostile source can make us hold (containers/image uses the same 4 MiB). */
export const maxDocumentSize = 4 * 1024 * 1024;

export type DocumentKind = 'manifest' | 'index';

interface RawDescriptor {
  mediaType?: unknown;
  digest?: unknown;
  size?: unknown;
  urls?: unknown;
  annotations?: unknown;
  artifactType?: unknown;
  platform?: unknown;
}

export interface ParsedManifest {
  kind: 'manifest';
  mediaType: string;
  config: Descriptor;
  layers: Descriptor[];
}

export interface ParsedIndex {
  kind: 'index';
  mediaType: string;
  manifests: Descriptor[];
}

/** A JSON object (not an array, not null). */
export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function descriptorOf(raw: unknown, what: string): Descriptor {
  if (!isObject(raw)) throw new SourceError(`${what}: not a descriptor object`, 'invalid-manifest');
  const r = raw as RawDescriptor;
  if (typeof r.mediaType !== 'string' || r.mediaType === '') throw new SourceError(`${what}: descriptor without a media type`, 'invalid-manifest');
  if (typeof r.digest !== 'string') throw new SourceError(`${what}: descriptor without a digest`, 'invalid-manifest');
  checkDigestSyntax(r.digest, what);
  if (typeof r.size !== 'number' || !Number.isSafeInteger(r.size) || r.size < 0) {
    throw new SourceError(`${what}: descriptor ${r.digest} has no valid size`, 'invalid-manifest');
  }
  const d: Descriptor = { mediaType: r.mediaType, digest: r.digest, size: r.size };
  if (r.urls !== undefined) {
    if (!Array.isArray(r.urls) || !r.urls.every((u) => typeof u === 'string')) throw new SourceError(`${what}: descriptor ${r.digest} has malformed urls`, 'invalid-manifest');
    d.urls = r.urls as string[];
  }
  if (typeof r.artifactType === 'string') d.artifactType = r.artifactType;
  if (isObject(r.annotations)) d.annotations = Object.fromEntries(Object.entries(r.annotations).filter(([, v]) => typeof v === 'string')) as Record<string, string>;
  if (isObject(r.platform)) {
    const p = r.platform;
    if (typeof p.os === 'string' && typeof p.architecture === 'string') {
      d.platform = { os: p.os, architecture: p.architecture, ...(typeof p.variant === 'string' && p.variant ? { variant: p.variant } : {}) };
    }
  }
  return d;
}

/**
 * Parse a manifest or an index. `mediaType` is what the source said it is
 * (Content-Type, or the referring descriptor); the document's own field and
 * its shape decide when that is absent or generic.
 */
export function parseDocument(bytes: Buffer, declaredType: string | undefined, what: string): ParsedManifest | ParsedIndex {
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new SourceError(`${what}: manifest is not valid JSON (${(err as Error).message})`, 'invalid-manifest', { cause: err });
  }
  if (!isObject(doc)) throw new SourceError(`${what}: manifest is not a JSON object`, 'invalid-manifest');
  const declared = declaredType?.split(';')[0].trim();
  const own = typeof doc.mediaType === 'string' ? doc.mediaType : undefined;
  if (
    doc.schemaVersion === 1 ||
    declared === mediaTypes.dockerSchema1 ||
    declared === mediaTypes.dockerSchema1Signed ||
    own === mediaTypes.dockerSchema1 ||
    own === mediaTypes.dockerSchema1Signed
  ) {
    throw new SourceError(`${what}: Docker schema 1 manifests are not supported (deprecated format; push the image again with a current tool)`, 'unsupported');
  }
  if (doc.schemaVersion !== 2) throw new SourceError(`${what}: unsupported manifest schemaVersion ${JSON.stringify(doc.schemaVersion)}`, 'unsupported');
  const known = new Set<string>([mediaTypes.ociIndex, mediaTypes.ociManifest, mediaTypes.dockerList, mediaTypes.dockerManifest]);
  let mediaType = own ?? (declared && known.has(declared) ? declared : undefined);
  if (!mediaType) mediaType = Array.isArray(doc.manifests) ? mediaTypes.ociIndex : mediaTypes.ociManifest;
  if (mediaType === mediaTypes.ociIndex || mediaType === mediaTypes.dockerList) {
    if (!Array.isArray(doc.manifests)) throw new SourceError(`${what}: index without a manifests list`, 'invalid-manifest');
    return { kind: 'index', mediaType, manifests: doc.manifests.map((m, i) => descriptorOf(m, `${what}: manifests[${i}]`)) };
  }
  if (mediaType === mediaTypes.ociManifest || mediaType === mediaTypes.dockerManifest) {
    if (!Array.isArray(doc.layers)) throw new SourceError(`${what}: manifest without a layers list`, 'invalid-manifest');
    const config = descriptorOf(doc.config, `${what}: config`);
    const layers = doc.layers.map((l, i) => descriptorOf(l, `${what}: layers[${i}]`));
    return { kind: 'manifest', mediaType, config, layers };
  }
  throw new SourceError(`${what}: unsupported manifest media type ${mediaType}`, 'unsupported');
}

// Node's process.arch, in the GOARCH names images use.
const goArch: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64', loong64: 'loong64', mips: 'mips', mipsel: 'mipsle' };

/** The platform this process runs on, as images name it. */
export function runningPlatform(): Platform {
  const architecture = goArch[process.arch] ?? process.arch;
  const platform: Platform = { os: process.platform === 'win32' ? 'windows' : process.platform, architecture };
  if (architecture === 'arm') platform.variant = `v${(process.config.variables as Record<string, unknown>).arm_version ?? '7'}`;
  return platform;
}

/** `os/arch[/variant]`, as `--platform` takes it. */
export function parsePlatform(text: string): Platform {
  const parts = text.split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => !/^[a-z0-9_.-]+$/i.test(p))) {
    throw new SourceError(`invalid platform '${text}' (expected os/arch[/variant], e.g. linux/arm64)`, 'invalid-reference');
  }
  return { os: parts[0].toLowerCase(), architecture: parts[1].toLowerCase(), ...(parts[2] ? { variant: parts[2].toLowerCase() } : {}) };
}

export function formatPlatform(p: Platform): string {
  return p.variant ? `${p.os}/${p.architecture}/${p.variant}` : `${p.os}/${p.architecture}`;
}

// arm64 images say "v8" or nothing, and mean the same.
function sameVariant(arch: string, a: string | undefined, b: string | undefined): boolean {
  const norm = (v: string | undefined) => (arch === 'arm64' && v === 'v8' ? undefined : v || undefined);
  return norm(a) === norm(b);
}

/**
 * The entry of an index for the wanted platform. An explicit variant must
 * match; without one, an entry without a variant (or the running one's) wins
 * over the first of the others, as containers/image ranks them.
 */
export function choosePlatform(manifests: Descriptor[], wanted: Platform, explicitVariant: boolean, what: string): Descriptor {
  const images = manifests.filter((m) => m.platform?.os !== 'unknown');
  const candidates = images.filter((m) => m.platform && m.platform.os === wanted.os && m.platform.architecture === wanted.architecture);
  const exact = candidates.find((m) => sameVariant(wanted.architecture, m.platform!.variant, wanted.variant));
  const found = exact ?? (explicitVariant ? undefined : candidates[0]);
  if (found) return found;
  if (images.length === 1 && !images[0].platform) return images[0];
  const offered = images.map((m) => (m.platform ? formatPlatform(m.platform) : 'unspecified platform'));
  throw new SourceError(`${what}: no image for ${formatPlatform(wanted)} in the index (it has ${offered.join(', ') || 'nothing'})`, 'not-found');
}

/** What a transport provides for `resolveImage`. */
export interface DocumentFetcher {
  /** Fetch a manifest or index by descriptor; returns its bytes (checked here) and the type the source declared. */
  fetchDocument(descriptor: Descriptor): Promise<{ bytes: Buffer; mediaType?: string }>;
  /** Fetch a small blob (the config) whole. */
  fetchBlobBytes(descriptor: Descriptor): Promise<Buffer>;
}

export interface PlatformChoice {
  platform?: Platform;
}

/**
 * From a top-level document (already fetched) down to one image: indexes
 * lead to the chosen platform's entry (nested indexes followed a few levels),
 * the manifest's config is fetched and checked.
 */
export async function resolveImage(
  top: { bytes: Buffer; mediaType?: string; digest?: string },
  fetcher: DocumentFetcher,
  choice: PlatformChoice,
  base: { reference: string; defaultName: string },
): Promise<ResolvedImage> {
  const what = base.reference;
  let bytes = top.bytes;
  let declared = top.mediaType;
  let digest = top.digest ?? sha256Of(bytes);
  let platform: Platform | undefined;
  const topDigest = digest;
  for (let depth = 0; depth < 4; depth++) {
    const doc = parseDocument(bytes, declared, what);
    if (doc.kind === 'manifest') {
      const config = await fetcher.fetchBlobBytes(doc.config);
      checkBytes(config, doc.config, `config ${doc.config.digest} of ${what}`);
      return {
        reference: base.reference,
        defaultName: base.defaultName,
        manifestDigest: digest,
        manifestMediaType: doc.mediaType,
        manifest: bytes,
        configDescriptor: doc.config,
        config,
        layers: doc.layers,
        ...(platform ? { platform } : {}),
        ...(depth > 0 ? { index: topDigest, indexManifest: top.bytes } : {}),
      };
    }
    const wanted = choice.platform ?? runningPlatform();
    const entry = choosePlatform(doc.manifests, wanted, Boolean(choice.platform?.variant), what);
    platform = entry.platform;
    if (entry.size > maxDocumentSize) throw new SourceError(`${what}: manifest ${entry.digest} is too large (${entry.size} bytes)`, 'invalid-manifest');
    const next = await fetcher.fetchDocument(entry);
    checkBytes(next.bytes, entry, `manifest ${entry.digest} of ${what}`);
    bytes = next.bytes;
    declared = entry.mediaType;
    digest = entry.digest;
  }
  throw new SourceError(`${what}: indexes nested too deeply`, 'invalid-manifest');
}
