/**
 * The `docker://` transport: an image in a registry. Manifests are asked
 * for with every media type this code reads; a tag's manifest digest is the
 * sha256 of the bytes served (checked against Docker-Content-Digest when the
 * registry sends one), a digest reference's bytes are checked against it.
 * Blobs stream with their size and sha256 checked; a dropped connection
 * resumes with `Range` from the last byte received (or skips what was
 * already passed on, when the server ignores Range); a blob coming slower
 * than the speed floor (speed.ts) fails.
 */
import { referrersTag } from '../referrers.js';
import type { IncomingMessage } from 'node:http';
import type { Readable } from 'node:stream';
import type { BlobOptions, Descriptor, ImageSource, Referrers, ResolvedImage, SourceOptions } from '../source.js';
import type { SourceReference } from '../reference.js';
import { acceptedManifestTypes, maxDocumentSize, mediaTypes, parseDocument, resolveImage, type PlatformChoice } from '../manifest.js';
import { SourceError } from '../source-errors.js';
import { blobLabel, checkBytes, checkDigestSyntax, checkedStream, sha256Of } from '../verify.js';
import { RegistryClient, isRetryableError, sleep } from './client.js';
import { TooSlowError, withSpeedFloor } from './speed.js';

export class RegistrySource implements ImageSource {
  private readonly client: RegistryClient;
  private readonly repository: string;

  constructor(
    private readonly ref: Extract<SourceReference, { transport: 'docker' }>,
    private readonly defaultName: string,
    private readonly choice: PlatformChoice,
    options: SourceOptions,
  ) {
    this.repository = ref.name.path;
    this.client = new RegistryClient(ref.name.domain, ref.name.path, ref.text, options);
  }

  private async fetchManifest(reference: string, what: string): Promise<{ bytes: Buffer; mediaType?: string; headerDigest?: string }> {
    const res = await this.client.get(`/v2/${this.repository}/manifests/${reference}`, what, { accept: acceptedManifestTypes });
    const length = Number(res.headers['content-length'] ?? NaN);
    if (length > maxDocumentSize) {
      res.destroy();
      throw new SourceError(`${what}: manifest too large (${length} bytes)`, 'invalid-manifest');
    }
    const bytes = await this.client.readAll(res, maxDocumentSize, what);
    return { bytes, mediaType: res.headers['content-type'], headerDigest: res.headers['docker-content-digest'] as string | undefined };
  }

  async resolve(): Promise<ResolvedImage> {
    const what = this.ref.text;
    const name = this.ref.name;
    const top = await this.fetchManifest(name.digest ?? name.tag!, what);
    // Parsed first: schema 1 is refused as such, not as a digest mismatch (its digest covers the unsigned payload only).
    parseDocument(top.bytes, top.mediaType, what);
    const digest = sha256Of(top.bytes);
    if (name.digest !== undefined && digest !== name.digest) {
      throw new SourceError(`${what}: manifest digest mismatch (got ${digest})`, 'digest-mismatch');
    }
    if (top.headerDigest && /^sha256:/.test(top.headerDigest) && top.headerDigest !== digest) {
      throw new SourceError(`${what}: manifest digest mismatch (the registry says ${top.headerDigest}, the bytes are ${digest})`, 'digest-mismatch');
    }
    return resolveImage(
      { bytes: top.bytes, mediaType: top.mediaType, digest },
      {
        fetchDocument: async (d) => {
          const m = await this.fetchManifest(d.digest, `manifest ${d.digest} of ${what}`);
          return { bytes: m.bytes, mediaType: m.mediaType ?? d.mediaType };
        },
        fetchBlobBytes: async (d) => {
          const label = `config ${d.digest} of ${what}`;
          checkDigestSyntax(d.digest, label);
          if (d.size > maxDocumentSize) throw new SourceError(`${label}: too large (${d.size} bytes)`, 'invalid-manifest');
          const res = await this.client.get(`/v2/${this.repository}/blobs/${d.digest}`, label);
          const bytes = await this.client.readAll(res, maxDocumentSize, label);
          checkBytes(bytes, d, label);
          return bytes;
        },
      },
      this.choice,
      { reference: what, defaultName: this.defaultName },
    );
  }

  /**
   * The referrers API (`GET /v2/NAME/referrers/DIGEST`, OCI distribution
   * 1.1) when the registry has it; else the referrers tag schema (the
   * `sha256-HEX` tag holding an index; no such tag: no referrers). A
   * registry lacks the API when it answers 404 (or 400, 405, 501) or with
   * something that is not an image index (CNCF distribution 2.8 answers 404).
   * An answer that says it is an index must be one, within maxDocumentSize.
   */
  async referrers(subjectDigest: string, artifactType: string, options: { signal?: AbortSignal } = {}): Promise<Referrers> {
    const what = `${this.ref.text}: referrers of ${subjectDigest}`;
    checkDigestSyntax(subjectDigest, what);
    const api = await this.client.get(`/v2/${this.repository}/referrers/${subjectDigest}?artifactType=${encodeURIComponent(artifactType)}`, what, {
      accept: [mediaTypes.ociIndex],
      expect: [400, 404, 405, 501],
      signal: options.signal,
    });
    const type = String(api.headers['content-type'] ?? '').split(';')[0].trim();
    if (api.statusCode === 200 && type === mediaTypes.ociIndex) {
      return { via: 'referrers-api', manifests: await this.readIndex(api, what) };
    }
    api.resume();
    const tag = referrersTag(subjectDigest);
    const tagWhat = `${this.ref.text}: referrers tag ${tag}`;
    const res = await this.client.get(`/v2/${this.repository}/manifests/${tag}`, tagWhat, { accept: [mediaTypes.ociIndex], expect: [404], signal: options.signal });
    if (res.statusCode === 404) {
      res.resume();
      return { via: 'tag-schema', manifests: [] };
    }
    return { via: 'tag-schema', manifests: await this.readIndex(res, tagWhat) };
  }

  private async readIndex(res: IncomingMessage, what: string): Promise<Descriptor[]> {
    const length = Number(res.headers['content-length'] ?? NaN);
    if (length > maxDocumentSize) {
      res.destroy();
      throw new SourceError(`${what}: index too large (${length} bytes, at most ${maxDocumentSize})`, 'invalid-manifest');
    }
    const bytes = await this.client.readAll(res, maxDocumentSize, what);
    const doc = parseDocument(bytes, mediaTypes.ociIndex, what);
    if (doc.kind !== 'index') throw new SourceError(`${what}: not an image index`, 'invalid-manifest');
    return doc.manifests;
  }

  async fetchReferrer(descriptor: Descriptor, options: { signal?: AbortSignal } = {}): Promise<Buffer> {
    const what = `${this.ref.text}: referrer ${descriptor.digest}`;
    checkDigestSyntax(descriptor.digest, what);
    if (descriptor.size > maxDocumentSize) throw new SourceError(`${what}: too large (${descriptor.size} bytes, at most ${maxDocumentSize})`, 'invalid-manifest');
    const res = await this.client.get(`/v2/${this.repository}/manifests/${descriptor.digest}`, what, { accept: [mediaTypes.ociManifest], signal: options.signal });
    const length = Number(res.headers['content-length'] ?? NaN);
    if (length > maxDocumentSize) {
      res.destroy();
      throw new SourceError(`${what}: too large (${length} bytes)`, 'invalid-manifest');
    }
    const bytes = await this.client.readAll(res, maxDocumentSize, what);
    checkBytes(bytes, descriptor, what);
    return bytes;
  }

  /**
   * A manifest under `reference` (a tag such as a sigstore attachment's, or
   * a digest) as served, or null when the registry has none (404); at most
   * `max` bytes. The caller checks what it is.
   */
  getManifest(reference: string, accept: string[], max = maxDocumentSize, signal?: AbortSignal): Promise<{ bytes: Buffer; mediaType?: string } | null> {
    return this.client.getManifest(reference, accept, `${this.ref.text}: manifest ${reference}`, max, signal);
  }

  /** A small blob of the repository whole (a config, a signature payload), at most `max` bytes, checked against its descriptor. */
  getBlobBytes(descriptor: { digest: string; size: number }, max: number, signal?: AbortSignal): Promise<Buffer> {
    return this.client.getBlobBytes(descriptor, max, `${this.ref.text}: blob ${descriptor.digest}`, signal);
  }

  async openBlob(descriptor: Descriptor, options: BlobOptions = {}): Promise<Readable> {
    const what = blobLabel(descriptor, this.ref.text);
    checkDigestSyntax(descriptor.digest, what);
    const sources = [
      ...(descriptor.urls ?? []).filter((u) => /^https?:\/\//.test(u)).map((u) => ({ external: new URL(u) })),
      { external: undefined as URL | undefined },
    ];
    // Open the first response here so that "not found" or "unauthorized" reject openBlob itself.
    let first: { res: IncomingMessage; source: (typeof sources)[number] } | undefined;
    let lastError: unknown;
    for (const source of sources) {
      try {
        first = { res: await this.request(source.external, descriptor.digest, what, 0, options.signal), source };
        break;
      } catch (err) {
        lastError = err;
      }
    }
    if (!first) {
      if (sources.length === 1) throw lastError;
      // A non-distributable layer: neither its urls nor the registry had it.
      throw new SourceError(`${what}: non-distributable layer not available from its urls nor from the registry (${(lastError as Error).message.replace(`${what}: `, '')})`, (lastError as SourceError).code ?? 'not-found', { cause: lastError });
    }
    return checkedStream(this.resumingChunks(first.res, first.source.external, descriptor, what, options.signal), descriptor, what, options.onBytes);
  }

  private request(external: URL | undefined, digest: string, what: string, from: number, signal?: AbortSignal): Promise<IncomingMessage> {
    return external
      ? this.client.getExternal(external, what, { from, signal })
      : this.client.get(`/v2/${this.repository}/blobs/${digest}`, what, { from, signal });
  }

  private async *resumingChunks(firstResponse: IncomingMessage, external: URL | undefined, descriptor: Descriptor, what: string, signal?: AbortSignal): AsyncGenerator<Buffer> {
    let received = 0;
    let res: IncomingMessage | undefined = firstResponse;
    for (let failures = 0; ; ) {
      try {
        if (!res) res = await this.request(external, descriptor.digest, what, received, signal);
        // Bytes of this response already passed on (a server that ignored Range starts again from 0).
        let skip = 0;
        if (received > 0) {
          const range = /^bytes (\d+)-/.exec(String(res.headers['content-range'] ?? ''));
          if (res.statusCode === 206 && range) skip = received - Number(range[1]);
          else if (res.statusCode === 200) skip = received;
          if (skip < 0) throw new SourceError(`${what}: the server resumed at the wrong offset`, 'registry');
        }
        for await (const chunk of withSpeedFloor(res as AsyncIterable<Buffer>, this.client.speedFloor)) {
          let data = chunk;
          if (skip > 0) {
            const drop = Math.min(skip, data.length);
            skip -= drop;
            data = data.subarray(drop);
            if (data.length === 0) continue;
          }
          received += data.length;
          failures = 0;
          yield data;
        }
        if (!res.complete) throw Object.assign(new Error('connection closed before the end of the blob'), { code: 'ECONNRESET' });
        return;
      } catch (err) {
        res?.destroy();
        res = undefined;
        // A trickle is not retried: the next try would trickle as long.
        if (err instanceof TooSlowError) {
          const { bytesPerSecond, seconds } = err.floor;
          throw new SourceError(`${what}: transfer slower than ${bytesPerSecond} bytes/s for ${seconds} s (${received} of ${descriptor.size} bytes received); giving up (see --speed-limit and --speed-time)`, 'network', { cause: err });
        }
        if (signal?.aborted || !isRetryableError(err)) throw err;
        failures++;
        if (failures > this.client.retryLimit) {
          throw new SourceError(`${what}: connection lost after ${received} of ${descriptor.size} bytes (${failures} tries)`, 'network', { cause: err });
        }
        await sleep(this.client.backoff(failures), signal);
      }
    }
  }

  async close(): Promise<void> {
    this.client.close();
  }
}
