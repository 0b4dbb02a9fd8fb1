/**
 * Where container images come from, as the importer sees them: one interface
 * for every transport (a registry, an OCI layout directory, an OCI or Docker
 * archive). A source resolves a reference to one image (a platform chosen
 * from an index) and hands out its blobs as streams whose size and sha256
 * are checked while they flow; the importer never learns which transport it
 * reads from.
 */
import type { Readable } from 'node:stream';

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

/** An OCI content descriptor (Docker schema 2 descriptors have the same shape). */
export interface Descriptor {
  mediaType: string;
  /** `sha256:<64 hex>` */
  digest: string;
  size: number;
  urls?: string[];
  annotations?: Record<string, string>;
  /** An artifact manifest's type, as an index lists it (a composefs seal's is application/vnd.composefs.metadata.v1). */
  artifactType?: string;
  platform?: Platform;
}

/** One image, resolved: its manifest, its config and its layers, base layer first. */
export interface ResolvedImage {
  /** The reference as the user gave it, transport included (`docker://host/repo:tag`). */
  reference: string;
  /** The name a pull gives the image by default: repository and tag (`host/repo:tag`, or the digest when pulled by digest). */
  defaultName: string;
  /** Digest of the manifest bytes below (`sha256:…`). */
  manifestDigest: string;
  manifestMediaType: string;
  /** The manifest exactly as the source served it. */
  manifest: Buffer;
  /** The config blob's descriptor and its bytes (already checked against the descriptor). */
  configDescriptor: Descriptor;
  config: Buffer;
  /** Layer descriptors in manifest order (base first). */
  layers: Descriptor[];
  /** The platform chosen from an index, when there was one. */
  platform?: Platform;
  /** The digest of the index the image was chosen from, when the reference named an index. */
  index?: string;
  /** That index, exactly as the source served it (signatures name it by its digest). */
  indexManifest?: Buffer;
}

export interface BlobOptions {
  signal?: AbortSignal;
  /** Called as compressed bytes arrive (for progress). */
  onBytes?: (bytes: number) => void;
}

/** The manifests that name an image as their subject, as a source lists them. */
export interface Referrers {
  /** How they were found: the registry's referrers API, its referrers tag (OCI 1.1 tag schema), or a layout's index.json. */
  via: 'referrers-api' | 'tag-schema' | 'layout';
  /** Their descriptors, as listed (not yet filtered by artifact type: a registry may ignore the filter). */
  manifests: Descriptor[];
}

export interface ImageSource {
  resolve(): Promise<ResolvedImage>;
  /**
   * The referrers of the manifest `subjectDigest` of type `artifactType`;
   * null when this transport has none to offer (an archive). Optional: a
   * source without it has no referrers.
   */
  referrers?(subjectDigest: string, artifactType: string, options?: { signal?: AbortSignal }): Promise<Referrers | null>;
  /**
   * A referrer's manifest by its descriptor, whole: at most maxDocumentSize
   * bytes, its size and sha256 checked against the descriptor.
   */
  fetchReferrer?(descriptor: Descriptor, options?: { signal?: AbortSignal }): Promise<Buffer>;
  /**
   * The blob's bytes, as served (still compressed). The stream errors, naming
   * the blob, if its size or sha256 differ from the descriptor's, before its
   * end is signalled: a consumer that saw 'end' saw verified bytes.
   */
  openBlob(descriptor: Descriptor, options?: BlobOptions): Promise<Readable>;
  close(): Promise<void>;
  /**
   * An oci: or oci-archive: source's path, absolute with symbolic links
   * resolved when it was opened: the path it reads, and so the one a policy
   * scopes (resolving the link again later could name another place than
   * the one read).
   */
  readonly resolvedPath?: string;
}

/** How `openSource` reaches an image; every field is optional. */
export interface SourceOptions {
  /** The index entry to take: `os/arch[/variant]` or a Platform (default: the running platform). */
  platform?: string | Platform;
  /** `USER:PASS` for the registry (skopeo's --creds); wins over auth files. */
  creds?: string;
  /** An auth file to read instead of the defaults (skopeo's --authfile). */
  authFile?: string;
  /** A directory of `*.crt` CAs (and `*.cert`/`*.key` client pairs) for the registry (skopeo's --cert-dir). */
  certDir?: string;
  /** false: accept any certificate, and plain HTTP when HTTPS fails (skopeo's --tls-verify=false). */
  tlsVerify?: boolean;
  /** How many times a failed request (429, 5xx, dropped connection) is tried again (default 5). */
  retries?: number;
  /** Base delay of the exponential backoff between tries, in ms (default 250). */
  retryDelayMs?: number;
  /** A registry transfer bringing fewer than this many bytes per second over `speedTime` seconds fails (default 1024; 0: no floor). */
  speedLimit?: number;
  /** The period of `speedLimit`, in seconds (default 30). */
  speedTime?: number;
  /** Environment to read credentials locations from (default process.env). */
  env?: NodeJS.ProcessEnv;
}
