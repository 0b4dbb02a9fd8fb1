/**
 * Blobs are checked while they stream: a running sha256 and a byte count,
 * compared with the descriptor before the stream is allowed to end. A
 * consumer that saw 'end' saw exactly the bytes the descriptor names.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import type { Descriptor } from './source.js';
import { SourceError } from './source-errors.js';

const sha256Digest = /^sha256:[0-9a-f]{64}$/;

/** Throws unless the digest is one this code can check (sha256, lower-case hex). */
export function checkDigestSyntax(digest: string, what: string): void {
  if (sha256Digest.test(digest)) return;
  if (/^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/.test(digest)) {
    throw new SourceError(`${what}: unsupported digest ${digest} (only sha256 is supported)`, 'unsupported');
  }
  throw new SourceError(`${what}: malformed digest '${digest}'`, 'invalid-manifest');
}

export function sha256Of(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/** Check bytes already in memory (manifests, configs) against their descriptor. */
export function checkBytes(bytes: Buffer, descriptor: Pick<Descriptor, 'digest' | 'size'>, what: string): void {
  if (bytes.length !== descriptor.size) {
    throw new SourceError(`${what}: size mismatch (expected ${descriptor.size} bytes, got ${bytes.length})`, 'size-mismatch');
  }
  const got = sha256Of(bytes);
  if (got !== descriptor.digest) throw new SourceError(`${what}: digest mismatch (got ${got})`, 'digest-mismatch');
}

/** Yields the chunks of `source`, failing as soon as more than `size` bytes arrive, and at the end unless size and sha256 match. */
export async function* checkedChunks(
  source: AsyncIterable<Buffer>,
  descriptor: Pick<Descriptor, 'digest' | 'size'>,
  what: string,
  onBytes?: (bytes: number) => void,
): AsyncGenerator<Buffer> {
  const hash = createHash('sha256');
  let seen = 0;
  for await (const chunk of source) {
    seen += chunk.length;
    if (seen > descriptor.size) {
      throw new SourceError(`${what}: size mismatch (more than the expected ${descriptor.size} bytes)`, 'size-mismatch');
    }
    hash.update(chunk);
    onBytes?.(chunk.length);
    yield chunk;
  }
  if (seen !== descriptor.size) {
    throw new SourceError(`${what}: size mismatch (expected ${descriptor.size} bytes, got ${seen}: truncated)`, 'size-mismatch');
  }
  const got = `sha256:${hash.digest('hex')}`;
  if (got !== descriptor.digest) throw new SourceError(`${what}: digest mismatch (got ${got})`, 'digest-mismatch');
}

/** A byte stream of the checked chunks; destroying it stops the source. */
export function checkedStream(
  source: AsyncIterable<Buffer>,
  descriptor: Pick<Descriptor, 'digest' | 'size'>,
  what: string,
  onBytes?: (bytes: number) => void,
): Readable {
  return Readable.from(checkedChunks(source, descriptor, what, onBytes), { objectMode: false, highWaterMark: 1 << 20 });
}

/** How a blob is named in messages: its digest, shortened, and where it comes from. */
export function blobLabel(descriptor: Pick<Descriptor, 'digest'>, image: string): string {
  return `blob ${descriptor.digest} of ${image}`;
}
