/**
 * The signed payload of containers signatures, the "simple signing" JSON
 * (containers/image docs/containers-signature.5.md; cosign's
 * SIGNATURE_SPEC.md "Payload"): what is claimed, the image's manifest digest
 * and the docker reference it was signed for, plus untrusted optional
 * fields. Both formats carry the same document and differ only in
 * `critical.type`. Read as strictly as containers/image reads it: exactly
 * the critical fields, each of its type, no duplicated key anywhere, a
 * digest go-digest accepts; unknown optional fields are ignored. Pure.
 */
import { createHash } from 'node:crypto';
import { printable, printableJson } from '../printable.js';
import { maxDocumentSize } from './manifest.js';
import { SignatureError } from '../errors.js';
import { parseStrictJson, type Json, type JsonObject } from './strict-json.js';

export type SignaturePayloadKind = 'simple-signing' | 'sigstore';

/** What a signature says: the manifest digest and the docker reference it was made for. */
export interface SignatureClaim {
  dockerReference: string;
  manifestDigest: string;
}

/** Fields outside the critical section: informative only, never to be trusted for a decision. */
export interface SignatureOptionalFields {
  creator?: string;
  /** Seconds since the epoch. */
  timestamp?: number;
}

export interface ParsedSignaturePayload extends SignatureClaim {
  /** Absent where the payload says `"optional": null` (cosign writes that when it has no annotations). */
  optional?: SignatureOptionalFields;
}

export const SIGNATURE_TYPES: Readonly<Record<SignaturePayloadKind, string>> = {
  'simple-signing': 'atomic container signature',
  sigstore: 'cosign container image signature',
};

/** containers/image reads a signature (iolimits.MaxSignatureBodySize) up to 4 MiB; its payload cannot be larger. */
export const maxSignaturePayloadBytes = 4 * 1024 * 1024;
/** A docker reference is at most 255 characters of name plus a tag or digest; anything near this bound is not one. */
const maxReferenceLength = 4096;

const kindName: Record<SignaturePayloadKind, string> = { 'simple-signing': 'simple signing payload', sigstore: 'sigstore payload' };

// ---- digests, as go-digest parses them ---------------------------------------------------------

/** The algorithms go-digest registers, with the length of their lower-case hex. */
const digestHexLength: Readonly<Record<string, number>> = { sha256: 64, sha384: 96, sha512: 128 };

/** The reason `digest` is not one go-digest's Parse accepts, or undefined when it is. */
export function digestSyntaxProblem(digest: string): string | undefined {
  const colon = digest.indexOf(':');
  if (colon <= 0 || colon === digest.length - 1) return 'not ALGORITHM:HEX';
  const algorithm = digest.slice(0, colon);
  const encoded = digest.slice(colon + 1);
  if (!/^[a-z0-9]+(?:[.+_-][a-z0-9]+)*$/.test(algorithm) || !/^[a-zA-Z0-9=_-]+$/.test(encoded)) return 'not ALGORITHM:HEX';
  const length = Object.hasOwn(digestHexLength, algorithm) ? digestHexLength[algorithm] : undefined;
  if (length === undefined) return `unsupported digest algorithm ${algorithm}`;
  if (!/^[0-9a-f]*$/.test(encoded) || encoded.length !== length) return `not ${length} lower-case hex digits after ${algorithm}:`;
  return undefined;
}

/**
 * Whether `manifest` is the manifest `digest` names (containers/image's
 * manifest.MatchesDigest, for the sha256, sha384 and sha512 digests it
 * accepts). Docker schema 1 signed manifests, whose digest is that of the
 * manifest without its JWS signatures, are refused rather than digested
 * the wrong way.
 */
export function manifestMatchesDigest(manifest: Uint8Array, digest: string): boolean {
  const problem = digestSyntaxProblem(digest);
  if (problem !== undefined) throw new SignatureError(`manifest digest ${printableJson(digest)}: ${problem}`);
  if (isSignedSchema1(manifest)) {
    throw new SignatureError('manifest: a docker schema 1 signed manifest (its digest excludes its JWS signatures): not supported for signature checks');
  }
  const colon = digest.indexOf(':');
  const algorithm = digest.slice(0, colon);
  return createHash(algorithm).update(manifest).digest('hex') === digest.slice(colon + 1);
}

/** containers/image's GuessMIMEType: a JSON object with `schemaVersion: 1` and `signatures` is a signed schema 1 manifest. */
function isSignedSchema1(manifest: Uint8Array): boolean {
  if (manifest.length > maxDocumentSize) return false;
  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(manifest.buffer, manifest.byteOffset, manifest.byteLength).toString('utf8'));
  } catch {
    return false;
  }
  return typeof doc === 'object' && doc !== null && !Array.isArray(doc) && (doc as Record<string, unknown>).schemaVersion === 1 && 'signatures' in doc;
}

// ---- building ----------------------------------------------------------------------------------

/**
 * The payload a signer signs, byte for byte as containers/image writes it
 * (Go's encoding/json of maps: keys sorted, `<`, `>`, `&`, U+2028 and U+2029
 * escaped, no spaces). Optional fields appear only when given: the caller
 * supplies the creator and the timestamp (this module reads no clock).
 */
export function buildSignaturePayload(claim: SignatureClaim, kind: SignaturePayloadKind, opts: SignatureOptionalFields = {}): Buffer {
  const what = kindName[kind];
  const digestProblem = digestSyntaxProblem(claim.manifestDigest);
  if (digestProblem !== undefined) throw new SignatureError(`${what}: manifest digest ${printableJson(claim.manifestDigest)}: ${digestProblem}`);
  if (claim.dockerReference === '' || claim.dockerReference.length > maxReferenceLength) {
    throw new SignatureError(`${what}: docker reference ${printableJson(claim.dockerReference.slice(0, 80))}: empty or too long`);
  }
  if (opts.timestamp !== undefined && !Number.isSafeInteger(opts.timestamp)) {
    throw new SignatureError(`${what}: timestamp ${opts.timestamp}: not an integer number of seconds`);
  }
  const optional: Record<string, string | number> = {};
  if (opts.creator !== undefined) optional.creator = opts.creator;
  if (opts.timestamp !== undefined) optional.timestamp = opts.timestamp;
  const document = {
    critical: {
      identity: { 'docker-reference': claim.dockerReference },
      image: { 'docker-manifest-digest': claim.manifestDigest },
      type: SIGNATURE_TYPES[kind],
    },
    optional,
  };
  return Buffer.from(goJson(document), 'utf8');
}

/** JSON.stringify with Go's HTML-safe escapes; key order is the literal's (written sorted above). */
function goJson(value: unknown): string {
  return JSON.stringify(value).replace(/[<>&\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

// ---- parsing -----------------------------------------------------------------------------------

/**
 * The claim of a payload, refused unless it is exactly the document
 * containers/image accepts for `kind`: `critical` and `optional` only;
 * `critical` exactly `type` (the kind's), `image` (exactly
 * `docker-manifest-digest`, a digest) and `identity` (exactly
 * `docker-reference`, a string); `optional` an object whose `creator` is a
 * string and `timestamp` an integer, other members ignored, or — for
 * sigstore only, as cosign writes it — null. This checks the document, not
 * the claim: the digest against the manifest and the reference against the
 * policy are the caller's.
 */
export function parseSignaturePayload(bytes: Uint8Array, kind: SignaturePayloadKind, what: string = kindName[kind]): ParsedSignaturePayload {
  const fail = (reason: string) => new SignatureError(`${printable(what)}: ${reason}`);
  if (bytes.length > maxSignaturePayloadBytes) throw fail(`larger than ${maxSignaturePayloadBytes} bytes`);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    throw fail('not UTF-8 text');
  }
  const doc = parseStrictJson(text, (path, reason) => fail(path === '' ? reason : `${path}: ${reason}`));

  const top = exactObject(doc, '', ['critical', 'optional'], fail);
  const critical = exactObject(top.get('critical')!, 'critical', ['type', 'image', 'identity'], fail);
  const type = stringAt(critical.get('type')!, 'critical.type', fail);
  if (type !== SIGNATURE_TYPES[kind]) throw fail(`critical.type ${printableJson(type)} is not ${printableJson(SIGNATURE_TYPES[kind])}`);
  const image = exactObject(critical.get('image')!, 'critical.image', ['docker-manifest-digest'], fail);
  const manifestDigest = stringAt(image.get('docker-manifest-digest')!, 'critical.image.docker-manifest-digest', fail);
  const digestProblem = digestSyntaxProblem(manifestDigest);
  if (digestProblem !== undefined) throw fail(`critical.image.docker-manifest-digest ${printableJson(manifestDigest)}: ${digestProblem}`);
  const identity = exactObject(critical.get('identity')!, 'critical.identity', ['docker-reference'], fail);
  const dockerReference = stringAt(identity.get('docker-reference')!, 'critical.identity.docker-reference', fail);

  const optionalValue = top.get('optional')!;
  if (optionalValue === null && kind === 'sigstore') return { dockerReference, manifestDigest };
  if (!(optionalValue instanceof Map)) throw fail('optional: not a JSON object');
  const optional: SignatureOptionalFields = {};
  const creator = optionalValue.get('creator');
  if (creator !== undefined) optional.creator = stringAt(creator, 'optional.creator', fail);
  const timestamp = optionalValue.get('timestamp');
  if (timestamp !== undefined) {
    if (typeof timestamp !== 'number') throw fail('optional.timestamp: not a number');
    if (!Number.isSafeInteger(timestamp)) throw fail('optional.timestamp: not an integer');
    optional.timestamp = timestamp;
  }
  return { dockerReference, manifestDigest, optional };
}

function exactObject(value: Json, path: string, fields: readonly string[], fail: (reason: string) => SignatureError): JsonObject {
  const where = path === '' ? 'the payload' : path;
  if (!(value instanceof Map)) throw fail(`${where}: not a JSON object`);
  for (const key of value.keys()) {
    if (!fields.includes(key)) throw fail(`${where}: unknown field ${printableJson(key)}`);
  }
  for (const key of fields) {
    if (!value.has(key)) throw fail(`${where}: field ${printableJson(key)} missing`);
  }
  return value;
}

function stringAt(value: Json, path: string, fail: (reason: string) => SignatureError): string {
  if (typeof value !== 'string') throw fail(`${path}: not a string`);
  return value;
}
