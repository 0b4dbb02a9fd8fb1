/**
 * The composefs OCI sealing format (composefs-rs `sealing_spec.rs`): the
 * annotation keys that carry fs-verity digests, the two places they travel
 * (inline in an image manifest, or in a referrer artifact), and the checks a
 * reader makes on them. Pure: bytes and JSON in, seals or one-line errors out.
 *
 * Keys have two shapes:
 * - `composefs.{role}.erofs.v1.fsverity-{alg}-{bits}` for EROFS the reader
 *   generates (roles `layer`, `merged`, `merged.bootable`);
 * - `composefs.{role}.fsverity-{alg}-{bits}` for JSON stored as published
 *   (roles `config`, `manifest`);
 * and a signature's key is the digest key with `.sig` appended.
 */
import { createHash } from 'node:crypto';
import { ComposefsError, type ComposefsErrorOptions } from '../errors.js';
import { verityDigestSize, type VerityAlgorithm } from '../fsverity/index.js';
import { mediaTypes, isObject } from './manifest.js';

export class SealError extends ComposefsError {
  constructor(message: string, options?: ComposefsErrorOptions) {
    super(message, 'seal', options);
  }
}

export const SEAL_ARTIFACT_TYPE = 'application/vnd.composefs.metadata.v1';
export const SEAL_SIGNATURE_MEDIA_TYPE = 'application/vnd.composefs.signature.v1+pkcs7';

/** The OCI empty descriptor (image-spec "Guidance for an Empty Descriptor"): `{}`. */
export const EMPTY_BLOB = Buffer.from('{}');
export const EMPTY_DESCRIPTOR = {
  mediaType: 'application/vnd.oci.empty.v1+json',
  digest: 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a',
  size: 2,
} as const;

export type SealRole = 'manifest' | 'config' | 'merged' | 'merged.bootable' | 'layer';
const EROFS_ROLES: ReadonlySet<SealRole> = new Set(['merged', 'merged.bootable', 'layer']);
/** Artifact layers, in the order the spec requires. */
const ARTIFACT_ORDER: readonly SealRole[] = ['manifest', 'config', 'merged', 'merged.bootable'];

/** Block size bits this implementation computes (4096-byte blocks). */
export const SEAL_BLOCK_BITS = 12;

export function sealKey(role: SealRole, algorithm: VerityAlgorithm): string {
  return `composefs.${role}${EROFS_ROLES.has(role) ? '.erofs.v1' : ''}.fsverity-${algorithm}-${SEAL_BLOCK_BITS}`;
}

export interface ParsedSealKey {
  role: SealRole;
  /** The algorithm as the key spells it (`sha256`, `sha512`, or something unknown). */
  algorithm: string;
  blockBits: number;
  /** `.sig`: the value is a base64 PKCS#7 signature, not a digest. */
  signature: boolean;
}

const KEY_RE = /^composefs\.(manifest|config|merged\.bootable|merged|layer)(\.erofs\.v(\d+))?\.fsverity-([a-z0-9]+)-(\d+)(\.sig)?$/;

/**
 * Read an annotation key; null for keys outside `composefs.` (other tools'
 * annotations are none of ours). A `composefs.` key this code cannot read is
 * an error: a seal half understood must not pass as no seal.
 */
export function parseSealKey(key: string): ParsedSealKey | null {
  if (!key.startsWith('composefs.')) return null;
  const m = KEY_RE.exec(key);
  if (!m) throw new SealError(`annotation ${JSON.stringify(key.slice(0, 200))}: not a composefs seal key this version reads`);
  const role = m[1] as SealRole;
  const erofs = EROFS_ROLES.has(role);
  if (erofs && m[3] !== '1') {
    throw new SealError(`annotation ${key}: ${m[2] ? `EROFS format v${m[3]}` : 'no EROFS format version'} (this version reads erofs.v1)`);
  }
  if (!erofs && m[2]) throw new SealError(`annotation ${key}: the ${role} role has no EROFS format version`);
  return { role, algorithm: m[4], blockBits: Number(m[5]), signature: m[6] !== undefined };
}

function checkAlgorithm(key: string, parsed: ParsedSealKey): VerityAlgorithm {
  if (parsed.algorithm !== 'sha256' && parsed.algorithm !== 'sha512') {
    throw new SealError(`annotation ${key}: unknown fs-verity algorithm ${JSON.stringify(parsed.algorithm)} (sha256 and sha512 are known)`);
  }
  if (parsed.blockBits !== SEAL_BLOCK_BITS) {
    throw new SealError(`annotation ${key}: block size 2^${parsed.blockBits} is not supported (only 2^${SEAL_BLOCK_BITS})`);
  }
  return parsed.algorithm;
}

function checkDigestValue(key: string, value: string, algorithm: VerityAlgorithm): string {
  const want = verityDigestSize(algorithm) * 2;
  if (value.length !== want) throw new SealError(`annotation ${key}: digest has ${value.length} characters, not ${want}`);
  if (!/^[0-9a-f]+$/.test(value)) throw new SealError(`annotation ${key}: digest is not lowercase hexadecimal`);
  return value;
}

/** What a seal says: the digests, per role, under one algorithm. */
export interface Seal {
  algorithm: VerityAlgorithm;
  /** fs-verity digest (hex) of the canonical merged EROFS: always present. */
  merged: string;
  /** fs-verity digest (hex) of the image config's exact bytes. */
  config?: string;
  /** fs-verity digest (hex) of the image manifest's exact bytes (artifact mode only). */
  manifest?: string;
  /** fs-verity digest (hex) of the boot variant (read and kept, not checked here). */
  bootable?: string;
  /** Signatures (base64 DER PKCS#7 inline; artifact layers hold them raw), by role, when present. */
  signatures?: Partial<Record<SealRole, string>>;
}

export interface FoundSeal extends Seal {
  /** Where it was found. */
  mode: 'inline' | 'artifact';
  /** For an artifact: the artifact manifest's `sha256:` digest. */
  artifact?: string;
  /**
   * For an artifact: its signature layers by role (the PKCS#7 blobs to fetch;
   * once fetched, `signatures` holds them in base64).
   */
  signatureLayers?: Partial<Record<SealRole, { mediaType: string; digest: string; size: number }>>;
}

/** A signature blob larger than this is refused unread (the kernel's limit for a builtin signature). */
export const MAX_SIGNATURE_BLOB = 16128;

type Annotations = Record<string, string> | undefined;


function stringAnnotations(raw: unknown, what: string): Annotations {
  if (raw === undefined) return undefined;
  if (!isObject(raw)) throw new SealError(`${what}: annotations are not an object`);
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(raw)) {
    if (typeof v !== 'string') {
      if (k.startsWith('composefs.')) throw new SealError(`${what}: annotation ${k} is not a string`);
      continue;
    }
    out[k] = v;
  }
  return out;
}

/**
 * Collect the digests of the given roles from annotations, per algorithm.
 * Roles outside `allowed` are an error (a merged digest on a config
 * descriptor says something no reader would check).
 */
function collect(
  into: Map<VerityAlgorithm, Partial<Record<SealRole, string>>>,
  sigs: Map<VerityAlgorithm, Partial<Record<SealRole, string>>>,
  annotations: Annotations,
  allowed: ReadonlySet<SealRole>,
  what: string,
): void {
  if (!annotations) return;
  for (const [key, value] of Object.entries(annotations)) {
    const parsed = parseSealKey(key);
    if (!parsed) continue;
    if (!allowed.has(parsed.role)) throw new SealError(`${what}: annotation ${key} does not belong there`);
    const alg = checkAlgorithm(key, parsed);
    const target = parsed.signature ? sigs : into;
    const roles = target.get(alg) ?? {};
    if (parsed.signature) {
      if (value.length > Math.ceil(MAX_SIGNATURE_BLOB / 3) * 4) throw new SealError(`${what}: annotation ${key} holds ${value.length} base64 characters (a signature has at most ${MAX_SIGNATURE_BLOB} bytes)`);
      if (!/^[A-Za-z0-9+/]+={0,2}$/.test(value) || value.length % 4 !== 0) throw new SealError(`${what}: annotation ${key} is not base64`);
      roles[parsed.role] = value;
    } else {
      roles[parsed.role] = checkDigestValue(key, value, alg);
    }
    target.set(alg, roles);
  }
}

function toSeal(alg: VerityAlgorithm, roles: Partial<Record<SealRole, string>>, sigs: Partial<Record<SealRole, string>> | undefined, what: string): Seal {
  if (!roles.merged) throw new SealError(`${what}: ${sealKey('merged', alg)} is missing (a seal needs the merged EROFS digest)`);
  const seal: Seal = { algorithm: alg, merged: roles.merged };
  if (roles.config) seal.config = roles.config;
  if (roles.manifest) seal.manifest = roles.manifest;
  if (roles['merged.bootable']) seal.bootable = roles['merged.bootable'];
  if (sigs && Object.keys(sigs).length > 0) seal.signatures = sigs;
  return seal;
}

/**
 * The inline seals of an image manifest (its JSON): the merged digest in the
 * manifest's annotations, the config's on the config descriptor, per-layer
 * digests on layer descriptors (read, checked for shape, not kept). One seal
 * per algorithm present; none when the manifest carries no composefs keys.
 */
export function inlineSeals(manifestJson: unknown, what = 'manifest'): FoundSeal[] {
  if (!isObject(manifestJson)) throw new SealError(`${what}: not a JSON object`);
  const digests = new Map<VerityAlgorithm, Partial<Record<SealRole, string>>>();
  const sigs = new Map<VerityAlgorithm, Partial<Record<SealRole, string>>>();
  collect(digests, sigs, stringAnnotations(manifestJson.annotations, what), new Set(['merged', 'merged.bootable']), what);
  const config = manifestJson.config;
  if (isObject(config)) collect(digests, sigs, stringAnnotations(config.annotations, `${what} config descriptor`), new Set(['config']), `${what} config descriptor`);
  const layers = manifestJson.layers;
  if (Array.isArray(layers)) {
    const layerDigests = new Map<VerityAlgorithm, Partial<Record<SealRole, string>>>();
    layers.forEach((l, i) => {
      if (isObject(l)) collect(layerDigests, new Map(), stringAnnotations(l.annotations, `${what} layer ${i}`), new Set(['layer']), `${what} layer ${i}`);
    });
  }
  const out: FoundSeal[] = [];
  for (const alg of new Set([...digests.keys(), ...sigs.keys()])) {
    out.push({ ...toSeal(alg, digests.get(alg) ?? {}, sigs.get(alg), what), mode: 'inline' });
  }
  return out;
}

/**
 * Read a composefs artifact manifest (its JSON; `digest` its `sha256:`
 * digest) that claims to seal the image manifest `subjectDigest`: its
 * artifactType, its subject, its layers in the spec's order, each with one
 * role annotation, all under one algorithm.
 */
export function artifactSeal(artifactJson: unknown, digest: string, subjectDigest: string): FoundSeal {
  const what = `composefs artifact ${digest}`;
  if (!isObject(artifactJson)) throw new SealError(`${what}: not a JSON object`);
  if (artifactJson.mediaType !== undefined && artifactJson.mediaType !== mediaTypes.ociManifest) {
    throw new SealError(`${what}: media type ${JSON.stringify(artifactJson.mediaType)} is not an OCI image manifest`);
  }
  if (artifactJson.artifactType !== SEAL_ARTIFACT_TYPE) {
    throw new SealError(`${what}: artifactType ${JSON.stringify(artifactJson.artifactType)} is not ${SEAL_ARTIFACT_TYPE}`);
  }
  const subject = artifactJson.subject;
  if (!isObject(subject) || typeof subject.digest !== 'string') throw new SealError(`${what}: no subject`);
  if (subject.digest !== subjectDigest) throw new SealError(`${what}: its subject is ${subject.digest.slice(0, 80)}, not the image ${subjectDigest}`);
  const layers = artifactJson.layers;
  if (!Array.isArray(layers) || layers.length === 0) throw new SealError(`${what}: no layers`);
  if (layers.length > ARTIFACT_ORDER.length) throw new SealError(`${what}: ${layers.length} layers (at most ${ARTIFACT_ORDER.length})`);
  let algorithm: VerityAlgorithm | null = null;
  const roles: Partial<Record<SealRole, string>> = {};
  const signatureLayers: NonNullable<FoundSeal['signatureLayers']> = {};
  let last = -1;
  layers.forEach((layer, i) => {
    const lw = `${what} layer ${i}`;
    if (!isObject(layer)) throw new SealError(`${lw}: not a descriptor`);
    const ann = stringAnnotations(layer.annotations, lw) ?? {};
    const keys = Object.keys(ann).filter((k) => parseSealKey(k) !== null);
    if (keys.length !== 1) throw new SealError(`${lw}: ${keys.length} composefs annotations (one role per layer)`);
    const key = keys[0];
    const parsed = parseSealKey(key)!;
    if (parsed.signature) throw new SealError(`${lw}: annotation ${key}: signatures travel as the layer's blob in an artifact`);
    const alg = checkAlgorithm(key, parsed);
    if (algorithm !== null && alg !== algorithm) throw new SealError(`${what}: mixes ${algorithm} and ${alg} (one algorithm per artifact)`);
    algorithm = alg;
    const order = ARTIFACT_ORDER.indexOf(parsed.role);
    if (order < 0) throw new SealError(`${lw}: role ${parsed.role} does not belong in an artifact`);
    if (order <= last) throw new SealError(`${lw}: ${parsed.role} is out of order or repeated (manifest, config, merged, merged.bootable)`);
    last = order;
    roles[parsed.role] = checkDigestValue(key, ann[key], alg);
    if (layer.mediaType === SEAL_SIGNATURE_MEDIA_TYPE) {
      if (typeof layer.digest !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(layer.digest)) throw new SealError(`${lw}: signature layer without a sha256 digest`);
      if (typeof layer.size !== 'number' || !Number.isSafeInteger(layer.size) || layer.size <= 0 || layer.size > MAX_SIGNATURE_BLOB) {
        throw new SealError(`${lw}: signature layer of ${String(layer.size).slice(0, 40)} bytes (1 to ${MAX_SIGNATURE_BLOB})`);
      }
      signatureLayers[parsed.role] = { mediaType: SEAL_SIGNATURE_MEDIA_TYPE, digest: layer.digest, size: layer.size };
    }
  });
  const found: FoundSeal = { ...toSeal(algorithm!, roles, undefined, what), mode: 'artifact', artifact: digest };
  if (Object.keys(signatureLayers).length > 0) found.signatureLayers = signatureLayers;
  return found;
}

export interface SubjectDescriptor {
  mediaType: string;
  digest: string;
  size: number;
}

/** The PKCS#7 blobs an artifact's signature layers hold, with their descriptors (to push beside it). */
export function signatureBlobs(seal: Seal): { role: SealRole; descriptor: { mediaType: string; digest: string; size: number }; bytes: Buffer }[] {
  return ARTIFACT_ORDER.flatMap((role) => {
    const sig = seal.signatures?.[role];
    if (sig === undefined) return [];
    const bytes = Buffer.from(sig, 'base64');
    return [{ role, descriptor: { mediaType: SEAL_SIGNATURE_MEDIA_TYPE, digest: `sha256:${createHash('sha256').update(bytes).digest('hex')}`, size: bytes.length }, bytes }];
  });
}

/**
 * The artifact manifest (canonical JSON bytes) sealing `subject`: the empty
 * config, and one layer per role present in the spec's order. A signed role's
 * layer is its PKCS#7 blob (see signatureBlobs); an unsigned one's the empty blob.
 */
export function buildArtifact(seal: Seal, subject: SubjectDescriptor, created?: string): Buffer {
  const signed = new Map(signatureBlobs(seal).map((b) => [b.role, b.descriptor]));
  const layers = ARTIFACT_ORDER.flatMap((role) => {
    const value = role === 'merged' ? seal.merged : role === 'config' ? seal.config : role === 'manifest' ? seal.manifest : seal.bootable;
    if (!value) return [];
    return [{ ...(signed.get(role) ?? EMPTY_DESCRIPTOR), annotations: { [sealKey(role, seal.algorithm)]: value } }];
  });
  const manifest = {
    schemaVersion: 2,
    mediaType: mediaTypes.ociManifest,
    artifactType: SEAL_ARTIFACT_TYPE,
    config: EMPTY_DESCRIPTOR,
    layers,
    subject: { mediaType: subject.mediaType, digest: subject.digest, size: subject.size },
    ...(created ? { annotations: { 'org.opencontainers.image.created': created } } : {}),
  };
  return Buffer.from(JSON.stringify(manifest));
}

/**
 * The inline-sealed manifest: `manifestBytes` with the merged digest in its
 * annotations and the config digest on its config descriptor; every other
 * field kept as it was. Earlier composefs keys of the same algorithm are replaced.
 */
export function buildInlineManifest(manifestBytes: Buffer, seal: Seal): Buffer {
  let m: unknown;
  try {
    m = JSON.parse(manifestBytes.toString('utf8'));
  } catch (err) {
    throw new SealError('manifest is not valid JSON', { cause: err });
  }
  if (!isObject(m) || !isObject(m.config)) throw new SealError('manifest has no config descriptor');
  const annotations = { ...(stringAnnotations(m.annotations, 'manifest') ?? {}) };
  annotations[sealKey('merged', seal.algorithm)] = seal.merged;
  delete annotations[`${sealKey('merged', seal.algorithm)}.sig`];
  if (seal.signatures?.merged) annotations[`${sealKey('merged', seal.algorithm)}.sig`] = seal.signatures.merged;
  if (seal.bootable) annotations[sealKey('merged.bootable', seal.algorithm)] = seal.bootable;
  const config: Record<string, unknown> = { ...m.config };
  if (seal.config) {
    const configAnnotations: Record<string, string> = { ...(stringAnnotations(m.config.annotations, 'config descriptor') ?? {}), [sealKey('config', seal.algorithm)]: seal.config };
    delete configAnnotations[`${sealKey('config', seal.algorithm)}.sig`];
    if (seal.signatures?.config) configAnnotations[`${sealKey('config', seal.algorithm)}.sig`] = seal.signatures.config;
    config.annotations = configAnnotations;
  }
  const out = { ...m, config, annotations };
  return Buffer.from(JSON.stringify(out));
}
