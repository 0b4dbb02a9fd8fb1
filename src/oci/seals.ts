/**
 * Finding and checking the seals of an image (composefs-rs
 * `sealing_spec.rs`, "Discovery and Verification"): the inline seal in the
 * manifest's own annotations, and composefs artifacts among the manifest's
 * referrers (the registry's referrers API, else its referrers tag; a
 * layout's index.json), each fetched by digest, bounded and checked. Then
 * the digests a build computed are held against every seal in the
 * repository's algorithm: any difference is a one-line refusal.
 */
import type { VerityAlgorithm } from '../fsverity/index.js';
import type { Descriptor, ImageSource, Referrers, ResolvedImage } from './source.js';
import type { CertificateInfo } from '../fsverity/pkcs7.js';
import { checkSealSignatures, requireSigned, type RoleSignature } from './seal-signatures.js';
import { artifactSeal, inlineSeals, MAX_SIGNATURE_BLOB, SEAL_ARTIFACT_TYPE, SealError, sealKey, type FoundSeal, type SealRole } from './seal-format.js';

/** More composefs artifacts than this for one image is refused rather than read (each is one request). */
export const MAX_SEAL_ARTIFACTS = 16;

export interface SealDiscovery {
  /** Every seal found: the inline ones first, then one per artifact. */
  seals: FoundSeal[];
  /** The artifact manifests read, by digest, exactly as served. */
  artifacts: Map<string, Buffer>;
  /** Where referrers were looked for; null when the source offers none (an archive). */
  via: Referrers['via'] | null;
}

function parseJson(bytes: Buffer, what: string): unknown {
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new SealError(`${what}: not valid JSON`, { cause: err });
  }
}

/**
 * The seals of a resolved image: inline ones from its manifest, and those of
 * the composefs artifacts that refer to it. An artifact that is malformed,
 * names another subject, or mixes algorithms fails the whole discovery: a
 * seal half understood must not pass as no seal.
 */
export async function findSeals(
  source: ImageSource,
  image: Pick<ResolvedImage, 'reference' | 'manifest' | 'manifestDigest'>,
  options: { signal?: AbortSignal } = {},
): Promise<SealDiscovery> {
  const seals = inlineSeals(parseJson(image.manifest, `${image.reference}: manifest`), `${image.reference}: manifest`);
  const artifacts = new Map<string, Buffer>();
  const listed = source.referrers && source.fetchReferrer ? await source.referrers(image.manifestDigest, SEAL_ARTIFACT_TYPE, options) : null;
  if (listed === null) return { seals, artifacts, via: null };
  // A registry may ignore the artifactType filter: the type is checked here.
  const ours = new Map<string, Descriptor>();
  for (const d of listed.manifests) if (d.artifactType === SEAL_ARTIFACT_TYPE) ours.set(d.digest, d);
  if (ours.size > MAX_SEAL_ARTIFACTS) {
    throw new SealError(`${image.reference}: ${ours.size} composefs artifacts refer to ${image.manifestDigest} (at most ${MAX_SEAL_ARTIFACTS} are read)`);
  }
  const fetched = await Promise.all([...ours.values()].map(async (d) => ({ d, bytes: await source.fetchReferrer!(d, options) })));
  for (const { d, bytes } of fetched) {
    const seal = artifactSeal(parseJson(bytes, `${image.reference}: composefs artifact ${d.digest}`), d.digest, image.manifestDigest);
    artifacts.set(d.digest, bytes);
    seals.push(seal);
  }
  // The signature blobs (a few KiB each, their size bounded by artifactSeal, their digest checked by openBlob).
  await Promise.all(
    seals.map(async (seal) => {
      if (!seal.signatureLayers) return;
      const signatures: Partial<Record<SealRole, string>> = {};
      for (const [role, layer] of Object.entries(seal.signatureLayers) as [SealRole, Descriptor][]) {
        signatures[role] = (await readSignatureBlob(source, layer, `${image.reference}: composefs artifact ${seal.artifact} ${role} signature`, options)).toString('base64');
      }
      seal.signatures = signatures;
    }),
  );
  return { seals, artifacts, via: listed.via };
}

async function readSignatureBlob(source: ImageSource, layer: Descriptor, what: string, options: { signal?: AbortSignal }): Promise<Buffer> {
  if (layer.size > MAX_SIGNATURE_BLOB) throw new SealError(`${what}: ${layer.size} bytes (at most ${MAX_SIGNATURE_BLOB})`);
  const chunks: Buffer[] = [];
  let n = 0;
  try {
    const stream = await source.openBlob(layer, { signal: options.signal });
    try {
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        n += chunk.length;
        if (n > MAX_SIGNATURE_BLOB) throw new SealError(`${what}: more than ${MAX_SIGNATURE_BLOB} bytes`);
        chunks.push(chunk);
      }
    } finally {
      stream.destroy();
    }
  } catch (err) {
    if (err instanceof SealError) throw err;
    throw new SealError(`${what} ${layer.digest}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
  }
  return Buffer.concat(chunks);
}

/** What a name's record keeps of the seal its image was checked against. */
export interface NameSeal {
  algorithm: VerityAlgorithm;
  /** fs-verity digest (hex) of the merged image: the image's own digest. */
  merged: string;
  /** fs-verity digest (hex) of the config's exact bytes, when the seal gives it. */
  config?: string;
  /** Where the seal came from: the manifest's annotations, or an artifact (preferred when both were found). */
  mode: 'inline' | 'artifact';
  /** The artifact manifest's digest (kept in the repository's blobs). */
  artifact?: string;
  /** fs-verity digest (hex) of the manifest's exact bytes, when the seal gives it (artifact mode). */
  manifest?: string;
  /** The seal's PKCS#7 signatures (base64 DER), by role, when it carries them: `cfs verify --trust-cert` checks them offline. */
  signatures?: Partial<Record<SealRole, string>>;
  /** Which trusted certificate verified each signature at the pull (absent: none were given). */
  signedBy?: RoleSignature[];
}

export interface SealCheck {
  /** The seal recorded, or null when the image is not sealed. */
  seal: NameSeal | null;
  /** Seals in another algorithm than the repository's, found beside one in its own: not checked. */
  unchecked: FoundSeal[];
}

/** Refuse an image without seals (`--require-seal`). */
export function requireSealed(reference: string, seals: FoundSeal[]): void {
  if (seals.length === 0) throw new SealError(`${reference}: not sealed (no composefs seal in its manifest nor among its referrers), and a seal is required`);
}

function where(seal: FoundSeal): string {
  return seal.mode === 'inline' ? 'inline' : `artifact ${seal.artifact}`;
}

/**
 * Hold what a build computed (`merged`: the image's fs-verity digest;
 * `config`: the config's, both in `algorithm`) against every seal found.
 * `form` is the form the image was built in: a seal speaks of the canonical
 * form only. Throws one line (role, expected, computed) on a mismatch.
 */
export function checkSeals(
  reference: string,
  seals: FoundSeal[],
  computed: { algorithm: VerityAlgorithm; merged: string; config: string; manifest?: string; form?: 'canonical' | 'unpacked'; formReason?: string },
  options: { requireSeal?: boolean; allowOtherAlgorithms?: boolean; verified?: ReadonlyMap<FoundSeal, RoleSignature[]> } = {},
): SealCheck {
  if (seals.length === 0) {
    if (options.requireSeal) requireSealed(reference, seals);
    return { seal: null, unchecked: [] };
  }
  const mine = seals.filter((s) => s.algorithm === computed.algorithm);
  const others = seals.filter((s) => s.algorithm !== computed.algorithm);
  if (mine.length === 0 && options.allowOtherAlgorithms && !options.requireSeal) return { seal: null, unchecked: others };
  if (mine.length === 0) {
    const algs = [...new Set(others.map((s) => s.algorithm))].join(' and ');
    throw new SealError(`${reference}: sealed with ${algs} only (${others.map(where).join(', ')}), and the repository's algorithm is ${computed.algorithm}: the seal cannot be checked`);
  }
  if (computed.form === 'unpacked') {
    throw new SealError(`${reference}: sealed, but its image was built in the unpacked form (${computed.formReason !== undefined ? `it has no canonical form: ${computed.formReason}` : '--form=unpacked'}), and a seal speaks of the canonical form`);
  }
  for (const seal of mine) {
    const roles: [SealRole, string | undefined, string][] = [
      ['merged', seal.merged, computed.merged],
      ['config', seal.config, computed.config],
    ];
    if (computed.manifest !== undefined) roles.push(['manifest', seal.manifest, computed.manifest]);
    for (const [role, expected, got] of roles) {
      if (expected !== undefined && expected !== got) {
        throw new SealError(`${reference}: seal mismatch: ${sealKey(role, computed.algorithm)} (${where(seal)}) expects ${expected}, computed ${got}`);
      }
    }
  }
  // The seal whose signatures were verified first, then a signed one, then an artifact.
  const signed = (s: FoundSeal) => s.signatures?.merged !== undefined;
  const recorded =
    mine.find((s) => signed(s) && options.verified?.has(s) && s.mode === 'artifact') ??
    mine.find((s) => signed(s) && options.verified?.has(s)) ??
    mine.find((s) => signed(s) && s.mode === 'artifact') ??
    mine.find(signed) ??
    mine.find((s) => s.mode === 'artifact') ??
    mine[0];
  const config = recorded.config ?? mine.find((s) => s.config !== undefined)?.config;
  const signedBy = options.verified?.get(recorded);
  const seal: NameSeal = {
    algorithm: computed.algorithm,
    merged: recorded.merged,
    ...(config !== undefined ? { config } : {}),
    mode: recorded.mode,
    ...(recorded.artifact ? { artifact: recorded.artifact } : {}),
    ...(recorded.manifest ? { manifest: recorded.manifest } : {}),
    ...(recorded.signatures ? { signatures: recorded.signatures } : {}),
    ...(signedBy ? { signedBy } : {}),
  };
  return { seal, unchecked: others };
}

/**
 * With trusted certificates: the image must be signed (a seal in the
 * repository's algorithm whose merged EROFS is signed), and every signature
 * of every seal found must verify. Returns what each seal's signatures were
 * verified by; throws one line otherwise. Run as soon as the seals are
 * found: nothing about the image's layers is needed.
 */
export function verifySealSignatures(reference: string, seals: readonly FoundSeal[], trusted: readonly CertificateInfo[], algorithm: VerityAlgorithm, now: Date = new Date()): Map<FoundSeal, RoleSignature[]> {
  const mine = seals.filter((s) => s.algorithm === algorithm);
  // Seals in another algorithm only: checkSeals refuses them, naming the algorithms.
  if (mine.length > 0 || seals.length === 0) requireSigned(reference, mine);
  const out = new Map<FoundSeal, RoleSignature[]>();
  for (const seal of seals) if (seal.signatures) out.set(seal, checkSealSignatures(reference, seal, trusted, now));
  return out;
}
