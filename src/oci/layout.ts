/**
 * The `oci:DIR[:REF]` and `oci-archive:FILE[:REF]` transports: an OCI image
 * layout (oci-layout, index.json, blobs/ALG/HEX), in a directory or in a tar
 * read in place. REF picks the index.json entry whose
 * `org.opencontainers.image.ref.name` annotation equals it; without REF the
 * layout must hold exactly one entry (as containers/image has it).
 */
import type { Readable } from 'node:stream';
import type { BlobOptions, Descriptor, ImageSource, Referrers, ResolvedImage } from './source.js';
import type { FileSet } from './files.js';
import { SourceError } from './source-errors.js';
import { MAX_SEAL_ARTIFACTS } from './seals.js';
import { maxDocumentSize, mediaTypes, parseDocument, resolveImage, type PlatformChoice } from './manifest.js';
import { blobLabel, checkBytes, checkDigestSyntax, checkedStream } from './verify.js';

export const refNameAnnotation = 'org.opencontainers.image.ref.name';

export function blobPath(digest: string): string {
  const colon = digest.indexOf(':');
  return `blobs/${digest.slice(0, colon)}/${digest.slice(colon + 1)}`;
}

/** Artifacts in index.json read to find those naming the image as their subject: beyond this, the layout is refused. */
const maxLayoutArtifacts = 1024;

export class OciLayoutSource implements ImageSource {
  /** Referrer manifests read while listing them, by digest. */
  private readonly referrerBytes = new Map<string, Buffer>();

  constructor(
    private readonly files: FileSet,
    private readonly reference: string,
    private readonly ref: string | undefined,
    private readonly defaultName: string,
    private readonly choice: PlatformChoice,
    /** Whether index.json's artifacts are offered as referrers (a layout directory: yes; an archive: no, its seals are inline only). */
    private readonly withReferrers = false,
    /** The path read, symbolic links resolved (ImageSource.resolvedPath). */
    readonly resolvedPath?: string,
  ) {}

  /**
   * The artifacts of type `artifactType` in index.json whose manifest names
   * `subjectDigest` as its subject (a layout holds the artifacts of all its
   * images side by side: those of other images are not this one's).
   */
  async referrers(subjectDigest: string, artifactType: string): Promise<Referrers | null> {
    if (!this.withReferrers) return null;
    const what = `${this.reference}: index.json`;
    const index = parseDocument(await this.files.read('index.json', maxDocumentSize, what), mediaTypes.ociIndex, what);
    if (index.kind !== 'index') throw new SourceError(`${what}: not an image index`, 'invalid-manifest');
    const candidates = index.manifests.filter((m) => m.artifactType === artifactType);
    if (candidates.length > maxLayoutArtifacts) throw new SourceError(`${what}: ${candidates.length} artifacts of type ${artifactType} (at most ${maxLayoutArtifacts} are read)`, 'invalid-manifest');
    const manifests: Descriptor[] = [];
    for (const d of candidates) {
      const label = `artifact ${d.digest} of ${this.reference}`;
      if (d.size > maxDocumentSize) throw new SourceError(`${label}: too large (${d.size} bytes)`, 'invalid-manifest');
      const bytes = await this.readBlob(d, label);
      checkBytes(bytes, d, label);
      let subject: unknown;
      try {
        subject = (JSON.parse(bytes.toString('utf8')) as { subject?: { digest?: unknown } })?.subject?.digest;
      } catch (err) {
        throw new SourceError(`${label}: not valid JSON`, 'invalid-manifest', { cause: err });
      }
      if (subject !== subjectDigest) continue;
      this.referrerBytes.set(d.digest, bytes);
      manifests.push(d);
      // findSeals refuses more than this many: one over is enough to say so, and reading on would only hold more bytes.
      if (manifests.length > MAX_SEAL_ARTIFACTS) break;
    }
    return { via: 'layout', manifests };
  }

  async fetchReferrer(descriptor: Descriptor): Promise<Buffer> {
    const label = `artifact ${descriptor.digest} of ${this.reference}`;
    const bytes = this.referrerBytes.get(descriptor.digest) ?? (await this.readBlob(descriptor, label));
    checkBytes(bytes, descriptor, label);
    return bytes;
  }

  async resolve(): Promise<ResolvedImage> {
    const what = this.reference;
    if ((await this.files.size('oci-layout')) === undefined) {
      throw new SourceError(`${what}: not an OCI image layout (no oci-layout file)`, 'not-found');
    }
    const layoutFile = await this.files.read('oci-layout', 64 * 1024, `${what}: oci-layout`);
    let version: unknown;
    try {
      version = (JSON.parse(layoutFile.toString('utf8')) as { imageLayoutVersion?: unknown }).imageLayoutVersion;
    } catch {
      version = undefined;
    }
    if (typeof version !== 'string' || !version.startsWith('1.')) {
      throw new SourceError(`${what}: unsupported OCI layout version ${JSON.stringify(version)}`, 'unsupported');
    }
    const indexBytes = await this.files.read('index.json', maxDocumentSize, `${what}: index.json`);
    const index = parseDocument(indexBytes, mediaTypes.ociIndex, `${what}: index.json`);
    if (index.kind !== 'index') throw new SourceError(`${what}: index.json is not an image index`, 'invalid-manifest');
    const names = index.manifests.map((m) => m.annotations?.[refNameAnnotation]).filter((n): n is string => Boolean(n));
    let entry: Descriptor;
    if (this.ref !== undefined) {
      const matches = index.manifests.filter((m) => m.annotations?.[refNameAnnotation] === this.ref);
      if (matches.length === 0) {
        throw new SourceError(`${what}: no image named '${this.ref}' in the layout (it has ${names.map((n) => `'${n}'`).join(', ') || 'no named images'})`, 'not-found');
      }
      if (matches.length > 1) throw new SourceError(`${what}: more than one image is named '${this.ref}' in the layout`, 'invalid-manifest');
      entry = matches[0];
    } else {
      // Artifacts beside the image (a composefs seal, say) are not images to choose from.
      const images = index.manifests.filter((m) => m.artifactType === undefined);
      if (images.length !== 1) {
        throw new SourceError(
          `${what}: the layout holds ${images.length} images; name one as ${what}:REF${names.length ? ` (${names.join(', ')})` : ''}`,
          images.length === 0 ? 'not-found' : 'invalid-reference',
        );
      }
      entry = images[0];
    }
    if (entry.size > maxDocumentSize) throw new SourceError(`${what}: manifest ${entry.digest} is too large (${entry.size} bytes)`, 'invalid-manifest');
    const top = await this.fetchDocument(entry);
    checkBytes(top.bytes, entry, `manifest ${entry.digest} of ${what}`);
    return resolveImage(
      { bytes: top.bytes, mediaType: entry.mediaType, digest: entry.digest },
      { fetchDocument: (d) => this.fetchDocument(d), fetchBlobBytes: (d) => this.readBlob(d, `config ${d.digest} of ${what}`) },
      this.choice,
      { reference: this.reference, defaultName: this.defaultName },
    );
  }

  private async fetchDocument(descriptor: Descriptor): Promise<{ bytes: Buffer; mediaType?: string }> {
    return { bytes: await this.readBlob(descriptor, `manifest ${descriptor.digest} of ${this.reference}`), mediaType: descriptor.mediaType };
  }

  private async readBlob(descriptor: Descriptor, what: string): Promise<Buffer> {
    checkDigestSyntax(descriptor.digest, what);
    return this.files.read(blobPath(descriptor.digest), maxDocumentSize, what);
  }

  async openBlob(descriptor: Descriptor, options: BlobOptions = {}): Promise<Readable> {
    const what = blobLabel(descriptor, this.reference);
    checkDigestSyntax(descriptor.digest, what);
    const path = blobPath(descriptor.digest);
    const size = await this.files.size(path);
    if (size === undefined) {
      const hint = descriptor.urls?.length ? ' (a non-distributable layer: its urls are not fetched for local sources)' : '';
      throw new SourceError(`${what}: not found in the layout${hint}`, 'not-found');
    }
    return checkedStream(this.files.stream(path, options.signal), descriptor, what, options.onBytes);
  }

  async close(): Promise<void> {
    await this.files.close();
  }
}
