/**
 * Writing to a registry (OCI distribution spec, "push"): whether a blob is
 * there (HEAD), a blob mounted from another repository of the same registry
 * (POST ?mount=&from=), a monolithic upload (POST, then PUT ?digest=), a
 * manifest PUT under a tag or its digest, and a manifest read back (the
 * referrers tag schema's index). Every answer is checked: a digest the
 * registry reports must be the one sent.
 */
import type { IncomingMessage } from 'node:http';
import { SourceError } from '../source-errors.js';
import { maxDocumentSize } from '../manifest.js';
import { checkDigestSyntax, sha256Of } from '../verify.js';
import type { DockerName } from '../reference.js';
import { RegistryClient, type ClientOptions, type RequestBody } from './client.js';

export interface PushedManifest {
  digest: string;
  /** The registry's `OCI-Subject` header: it has the referrers API and indexed the subject itself. */
  subject?: string;
}

export class RegistryTarget {
  readonly client: RegistryClient;
  readonly repository: string;

  constructor(
    readonly name: DockerName,
    /** What messages name (the reference as given). */
    readonly label: string,
    options: ClientOptions,
    /** Repositories of the same registry blobs may be mounted from. */
    mountFrom: string[] = [],
  ) {
    this.repository = name.path;
    this.client = new RegistryClient(name.domain, name.path, label, options, { push: true, mountFrom });
  }

  /** `docker://HOST/REPO`, for messages. */
  get where(): string {
    return `docker://${this.name.domain}/${this.repository}`;
  }

  async hasBlob(digest: string): Promise<boolean> {
    checkDigestSyntax(digest, `blob ${digest}`);
    const res = await this.client.request(`/v2/${this.repository}/blobs/${digest}`, `blob ${digest} in ${this.where}`, { method: 'HEAD', expect: [404] });
    res.resume();
    return res.statusCode !== 404;
  }

  /** Mount a blob from another repository of this registry; false when the registry started an upload instead (it does not have it there, or does not mount). */
  async mountBlob(digest: string, from: string): Promise<boolean> {
    checkDigestSyntax(digest, `blob ${digest}`);
    const what = `mounting blob ${digest} from ${from} into ${this.where}`;
    const res = await this.client.request(`/v2/${this.repository}/blobs/uploads/?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(from)}`, what, { method: 'POST', body: Buffer.alloc(0) });
    res.resume();
    if (res.statusCode === 201) return true;
    // 202: an upload session was opened instead; it is left to expire, as the spec allows.
    return false;
  }

  /** Upload a blob whole (POST for a session, PUT with the bytes and ?digest=). */
  async uploadBlob(descriptor: { digest: string; size: number }, body: RequestBody): Promise<void> {
    checkDigestSyntax(descriptor.digest, `blob ${descriptor.digest}`);
    const what = `uploading blob ${descriptor.digest} to ${this.where}`;
    const started = await this.client.request(`/v2/${this.repository}/blobs/uploads/`, what, { method: 'POST', body: Buffer.alloc(0) });
    started.resume();
    if (started.statusCode !== 202) throw new SourceError(`${what}: the registry answered HTTP ${started.statusCode} to the upload's start (202 expected)`, 'registry');
    const location = uploadLocation(started, this.client, what);
    location.searchParams.set('digest', descriptor.digest);
    const done = await this.client.request(location, what, { method: 'PUT', body, contentType: 'application/octet-stream' });
    done.resume();
    if (done.statusCode !== 201) throw new SourceError(`${what}: the registry answered HTTP ${done.statusCode} to the upload (201 expected)`, 'registry');
    const said = done.headers['docker-content-digest'];
    if (typeof said === 'string' && said !== descriptor.digest) throw new SourceError(`${what}: the registry stored digest ${said.slice(0, 80)}`, 'digest-mismatch');
  }

  /** The blob there, or uploaded from `body`. Returns whether bytes were sent. */
  async ensureBlob(descriptor: { digest: string; size: number }, body: RequestBody): Promise<boolean> {
    if (await this.hasBlob(descriptor.digest)) return false;
    await this.uploadBlob(descriptor, body);
    return true;
  }

  /** PUT a manifest (or index) under `reference` (a tag, or its own digest). */
  async putManifest(reference: string, bytes: Buffer, mediaType: string): Promise<PushedManifest> {
    const digest = sha256Of(bytes);
    if (reference.includes(':') && reference !== digest) throw new SourceError(`manifest ${digest}: cannot be stored under the digest ${reference}`, 'invalid-reference');
    const what = `pushing manifest ${digest} to ${this.where}${reference === digest ? '' : `:${reference}`}`;
    const res = await this.client.request(`/v2/${this.repository}/manifests/${reference}`, what, { method: 'PUT', body: bytes, contentType: mediaType });
    res.resume();
    if (res.statusCode !== 201) throw new SourceError(`${what}: the registry answered HTTP ${res.statusCode} (201 expected)`, 'registry');
    const said = res.headers['docker-content-digest'];
    if (typeof said === 'string' && said.startsWith('sha256:') && said !== digest) throw new SourceError(`${what}: the registry stored it as ${said.slice(0, 80)}`, 'digest-mismatch');
    const subject = res.headers['oci-subject'];
    return { digest, ...(typeof subject === 'string' ? { subject } : {}) };
  }

  /** A manifest's bytes and media type, or null when the registry has none under `reference`; at most `max` bytes. */
  getManifest(reference: string, accept: string[], max = maxDocumentSize, signal?: AbortSignal): Promise<{ bytes: Buffer; mediaType?: string } | null> {
    return this.client.getManifest(reference, accept, `manifest ${reference} in ${this.where}`, max, signal);
  }

  /** A small blob whole (a config), at most `max` bytes, checked against its descriptor. */
  getBlobBytes(descriptor: { digest: string; size: number }, max: number, signal?: AbortSignal): Promise<Buffer> {
    return this.client.getBlobBytes(descriptor, max, `blob ${descriptor.digest} in ${this.where}`, signal);
  }

  close(): void {
    this.client.close();
  }
}

/** An upload session's Location: relative to the registry, or an http(s) URL. */
function uploadLocation(res: IncomingMessage, client: RegistryClient, what: string): URL {
  const location = res.headers.location;
  if (!location) throw new SourceError(`${what}: the registry opened an upload without a Location`, 'registry');
  let url: URL;
  try {
    url = new URL(location, client.url('/'));
  } catch {
    throw new SourceError(`${what}: the registry gave a malformed upload Location`, 'registry');
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new SourceError(`${what}: the upload Location is not an http(s) URL`, 'registry');
  return url;
}
