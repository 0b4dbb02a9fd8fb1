/**
 * Sealing (the composefs OCI sealing spec): the digests a seal carries and
 * where they go. The merged EROFS digest comes from the repository: a name
 * whose record holds this very manifest, in the canonical form, gives it
 * without a byte of the image or its objects being read; otherwise the image
 * is pulled first, as `cfs pull` would. The config's digest is the fs-verity
 * digest of its exact bytes. Then `sealImage` publishes the seal: an
 * artifact next to the image (the default), or an inline-sealed manifest.
 */
import { CanonicalFormError } from './form.js';
import { fsverityDigest, type VerityAlgorithm } from '../fsverity/index.js';
import { buildArtifact, buildInlineManifest, type Seal } from '../oci/seal-format.js';
import type { ImageSource, ResolvedImage, SourceOptions } from '../oci/source.js';
import type { PublishedArtifact, PublishedInline } from '../oci/seal-publish.js';
import type { SigningIdentity } from '../fsverity/pkcs7.js';
import { RepoError, type NameRecord, type Repository } from './repository.js';
import type { PullEvent } from './pull.js';
import type { PolicyContext } from '../oci/policy-check.js';

export interface SealOptions {
  /** The containers-policy.json(5) the image must satisfy (as pullImage's). */
  policy?: PolicyContext;
  /** The algorithm the seal's digests use; it must be the repository's (default: the repository's). */
  algorithm?: VerityAlgorithm;
  /** The name an image pulled for sealing gets (default: the source's default name, as `cfs pull`). */
  name?: string;
  /**
   * The canonical form that keeps `user.*` xattrs (cfsctl's --keep-user-xattrs).
   * A seal does not say which was used: readers must pull with the same choice.
   */
  keepUserXattrs?: boolean;
  /** One line per decision and step (for --explain). */
  explain?: (line: string) => void;
  /** Events of the pull, when one is needed. */
  onPullEvent?: (e: PullEvent) => void;
  signal?: AbortSignal;
  /** Called once the image is resolved, before anything is pulled (a throw stops the seal there). */
  onResolved?: (image: ResolvedImage) => void;
}

export interface SealDigests {
  seal: Seal & { config: string };
  /** The image sealed (for an index: the platform's image, as pull chooses it). */
  image: ResolvedImage;
  /** The name whose record gave the merged digest (after the pull, when there was one). */
  record: NameRecord;
  /** Whether the image had to be pulled. */
  pulled: boolean;
}

/**
 * Whether a record holds the image in the canonical form (with the same
 * xattr choice), the one form a seal's merged digest is defined over.
 */
function holdsCanonicalForm(record: NameRecord, keepUserXattrs: boolean): boolean {
  return record.form === 'canonical' && (record.keepUserXattrs ?? false) === keepUserXattrs;
}

/** A name in the repository holding this manifest in canonical form, whose image file is there; null if none. */
export function findSealable(repo: Repository, manifestDigest: string, keepUserXattrs = false): NameRecord | null {
  for (const record of repo.images()) {
    if (record.manifest !== manifestDigest || !holdsCanonicalForm(record, keepUserXattrs)) continue;
    if (typeof record.image !== 'string' || !/^[0-9a-f]+$/.test(record.image)) continue;
    if (repo.hasFile('images', record.image) === null) continue;
    return record;
  }
  return null;
}

/**
 * The seal of the image `source` resolves to, under the repository's
 * algorithm: the merged digest from a name already holding the manifest in
 * canonical form, else from pulling it into the repository now.
 */
export async function sealOf(repo: Repository, source: ImageSource, opts: SealOptions = {}): Promise<SealDigests> {
  const explain = opts.explain ?? (() => {});
  const algorithm = repo.algorithm;
  if (opts.algorithm !== undefined && opts.algorithm !== algorithm) {
    throw new RepoError(`cannot seal with ${opts.algorithm}: the repository ${repo.root} holds ${algorithm} images (a seal's merged digest is the repository's image digest; use a ${opts.algorithm} repository)`);
  }
  const image = await source.resolve();
  opts.onResolved?.(image);
  const config = fsverityDigest(image.config, algorithm).toString('hex');
  explain(`${image.reference}: manifest ${image.manifestDigest}${image.index ? ` (the ${image.platform ? `${image.platform.os}/${image.platform.architecture}` : 'chosen'} image of index ${image.index})` : ''}; config fs-verity ${algorithm} digest ${config}`);
  const keepUserXattrs = opts.keepUserXattrs ?? false;
  let record = findSealable(repo, image.manifestDigest, keepUserXattrs);
  let pulled = false;
  if (record) {
    // The image sealed is one the policy accepts; a pull below checks it itself, before reading a layer.
    if (opts.policy !== undefined) {
      const { checkPolicy, describeVerdict } = await import('../oci/policy-check.js');
      explain(`policy: ${describeVerdict(await checkPolicy(opts.policy, source, image, { signal: opts.signal }))}`);
    }
    explain(`merged digest from the name '${record.name}', which holds this manifest in canonical form (nothing read again)`);
  } else {
    explain(`no name holds manifest ${image.manifestDigest} in canonical form: pulling it`);
    const { pullImage } = await import('./pull.js');
    const result = await pullImage(repo, source, { name: opts.name, onEvent: opts.onPullEvent, signal: opts.signal, form: 'canonical', keepUserXattrs, sealsInOtherAlgorithms: 'allow', policy: opts.policy }).catch((err: unknown) => {
      if (err instanceof CanonicalFormError) throw new RepoError(`cannot be sealed: ${err.message}`, { cause: err });
      throw err;
    });
    record = result.record;
    pulled = true;
    if (record.manifest !== image.manifestDigest) {
      throw new RepoError(`${image.reference}: the source changed while it was being sealed (manifest ${image.manifestDigest}, then ${record.manifest}); seal it by digest`);
    }
    if (record.policy !== undefined) {
      const { describeVerdict } = await import('../oci/policy-check.js');
      explain(`policy: ${describeVerdict(record.policy)}`);
    }
    explain(`pulled as '${record.name}': merged digest ${record.image}`);
  }
  if (!holdsCanonicalForm(record, keepUserXattrs)) {
    throw new RepoError(`${image.reference}: cannot be sealed: the name '${record.name}' holds it in the ${record.form ?? 'unpacked'} form, and a seal's merged digest is defined over the canonical form only`);
  }
  return { seal: { algorithm, merged: record.image, config }, image, record, pulled };
}

export interface SealImageOptions extends SealOptions, Omit<SourceOptions, 'env'> {
  /** Inline mode: a new manifest carrying the seal, pushed to `dest` (default: SOURCE's tag). */
  inline?: boolean;
  dest?: string;
  env?: NodeJS.ProcessEnv;
  /** `org.opencontainers.image.created` of the artifact (default: none, so the same seal gives the same artifact). */
  created?: string;
  /**
   * Sign the seal (PKCS#7 over each digest's fsverity_formatted_digest, as
   * `fsverity sign`): the manifest's (artifact mode), the config's and the
   * merged EROFS's.
   */
  sign?: SigningIdentity;
}

export interface SealResult {
  algorithm: VerityAlgorithm;
  /** The sealed image's manifest (for an index: the platform's manifest). */
  subject: { mediaType: string; digest: string; size: number };
  merged: string;
  config: string;
  /** The name whose record gave the merged digest, and whether it was pulled now. */
  name: string;
  pulled: boolean;
  artifact?: PublishedArtifact;
  inline?: PublishedInline;
  /** fs-verity digest of the manifest (artifact mode, when signed). */
  manifest?: string;
  /** The roles signed, and the signer's certificate subject. */
  signed?: { roles: string[]; subject: string };
}

/**
 * Seal the image at `reference` (docker:// or oci:): its digests from the
 * repository (sealOf), then an artifact pushed next to it, or with `inline`
 * a new sealed manifest pushed to `dest`.
 */
export async function sealImage(repo: Repository, reference: string, opts: SealImageOptions = {}): Promise<SealResult> {
  const [{ openSource }, { parseReference }, { checkWritable }] = await Promise.all([import('../oci/transports.js'), import('../oci/reference.js'), import('../oci/seal-publish.js')]);
  const from = parseReference(reference);
  const destText = opts.dest ?? (opts.inline ? defaultDest(from) : undefined);
  const dest = destText !== undefined ? parseReference(destText) : undefined;
  if (opts.inline) checkWritable(dest!, 'DEST');
  else checkWritable(from, 'SOURCE');
  const clientOptions = { creds: opts.creds, authFile: opts.authFile, certDir: opts.certDir, tlsVerify: opts.tlsVerify, retries: opts.retries, retryDelayMs: opts.retryDelayMs, speedLimit: opts.speedLimit, speedTime: opts.speedTime, env: opts.env };
  const source = await openSource(reference, { ...clientOptions, platform: opts.platform });
  try {
    const digests = await sealOf(repo, source, {
      ...opts,
      onResolved: (image) => {
        if (opts.inline && image.index !== undefined) {
          throw new RepoError(`${reference}: is an image index; an inline seal rewrites one image manifest: seal its platform image by digest (${image.manifestDigest}) or use artifact mode`);
        }
        opts.onResolved?.(image);
      },
    });
    const { image } = digests;
    let seal: Seal = digests.seal;
    const subject = { mediaType: image.manifestMediaType, digest: image.manifestDigest, size: image.manifest.length };
    const result: SealResult = { algorithm: seal.algorithm, subject, merged: seal.merged, config: digests.seal.config, name: digests.record.name, pulled: digests.pulled };
    if (opts.sign) {
      const { signSeal } = await import('../oci/seal-signatures.js');
      // Inline mode cannot sign the manifest: the signature would change the bytes it signs.
      if (!opts.inline) seal = { ...seal, manifest: fsverityDigest(image.manifest, seal.algorithm).toString('hex') };
      seal = signSeal(seal, opts.sign);
      if (seal.manifest !== undefined) result.manifest = seal.manifest;
      const { parseCertificates } = await import('../fsverity/pkcs7.js');
      const cert = opts.sign.cert;
      const subjectName = typeof cert === 'object' && !Buffer.isBuffer(cert) ? cert.subject : parseCertificates(Buffer.isBuffer(cert) ? cert : Buffer.from(cert), 'the signing certificate')[0].subject;
      result.signed = { roles: Object.keys(seal.signatures ?? {}), subject: subjectName };
      opts.explain?.(`signed ${result.signed.roles.join(', ')} with the key of certificate "${subjectName}" (PKCS#7 over each fsverity_formatted_digest)`);
    }
    const publish = await import('../oci/seal-publish.js');
    const publishOptions = { ...clientOptions, explain: opts.explain };
    if (opts.inline) {
      result.inline = await publish.publishInline(source, image, from, dest!, buildInlineManifest(image.manifest, seal), publishOptions);
    } else {
      const { signatureBlobs } = await import('../oci/seal-format.js');
      result.artifact = await publish.publishArtifact(from, buildArtifact(seal, subject, opts.created), image.manifestDigest, publishOptions, signatureBlobs(seal));
    }
    return result;
  } finally {
    await source.close();
  }
}

/** Where an inline seal goes by default: SOURCE's own tag (a source named by digest has none). */
function defaultDest(from: ReturnType<typeof import('../oci/reference.js').parseReference>): string {
  if (from.transport === 'docker' && from.name.tag !== undefined) return from.text;
  if (from.transport === 'oci' && from.ref !== undefined) return from.text;
  throw new RepoError(`${from.text}: names no tag to put the sealed manifest under: give DEST`);
}
