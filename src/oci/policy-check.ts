/**
 * Whether an image may be used, as skopeo and podman decide it: the
 * containers-policy.json(5) requirements of the image's most specific scope
 * (policy.ts), every one of which must accept it; `signedBy` and
 * `sigstoreSigned` accept it when at least one of its signatures, found
 * where containers-registries.d(5) says (registries-d.ts: lookaside,
 * sigstore attachments), is by a trusted key, for this very manifest, and
 * claims an identity `signedIdentity` allows.
 *
 * The check is made on the resolved image before any layer is read. When
 * the reference named an index, the index and the chosen manifest are both
 * checked, as containers/image's copy checks both.
 */
import { realpath } from 'node:fs/promises';
import { homedir } from 'node:os';
import { resolve } from 'node:path';
import { ComposefsError } from '../errors.js';
import { printable } from '../printable.js';
import { readUserFile } from './user-files.js';
import { describeChoice, dockerIdentityOf, identityMatches, parsePolicy, policyScopesOf, PolicyError, requirementsFor, type KeySource, type Policy, type PolicyRequirement, type SignedIdentity } from './policy.js';
import { formatDockerName, parseReference, type DockerName, type SourceReference } from './reference.js';
import type { ImageSource, ResolvedImage } from './source.js';
import type { RegistriesD, SignatureStorage } from './registries-d.js';
import type { AttachmentReader } from './sigstore-attachments.js';

/** A key file is a few kilobytes; a keyring of many keys stays well below this. */
const maxKeyFileBytes = 8 * 1024 * 1024;

/** Where the policy comes from: a file read, none found, or none wanted (`--insecure-policy`). */
export interface PolicyContext {
  /** The parsed policy; null when no policy file exists or `insecure`. */
  policy: Policy | null;
  /** The file it was read from. */
  file?: string;
  /** skopeo's --insecure-policy: accept anything, without looking for a policy. */
  insecure?: boolean;
  /** The environment (HOME for the default lookaside, proxies and CAs for HTTP). */
  env?: NodeJS.ProcessEnv;
  /** Where signatures are (containers-registries.d); loaded on first need when absent. */
  registriesD?: RegistriesD | (() => Promise<RegistriesD>);
}

/** What the check found, kept with the name (cfs inspect) and shown by --explain. */
export interface PolicyVerdict {
  /** The policy file, or 'none' (no policy file exists) or 'insecure' (--insecure-policy). */
  policy: string;
  /** The section whose requirements were applied (`transports.docker["example.com/app"]`, `default`). */
  scope?: string;
  /** Each requirement, in order, with what made it accept. */
  accepted: { requirement: string; by?: string }[];
}

export class PolicyRefusedError extends ComposefsError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, 'policy-refused', options);
  }
}

/**
 * The policy file skopeo would use: `file` when given, else
 * `$HOME/.config/containers/policy.json`, else `/etc/containers/policy.json`;
 * none existing is no policy (images accepted, and the verdict says so).
 */
export async function loadPolicy(options: { file?: string; insecure?: boolean; env: NodeJS.ProcessEnv }): Promise<PolicyContext> {
  if (options.insecure) return { policy: null, insecure: true, env: options.env };
  const home = options.env.HOME || homedir();
  const candidates = options.file !== undefined ? [options.file] : [`${home}/.config/containers/policy.json`, '/etc/containers/policy.json'];
  for (const file of candidates) {
    const bytes = await readUserFile(file, 1024 * 1024, 'policy', options.file === undefined);
    if (bytes === null) continue;
    return { policy: parsePolicy(bytes, file), file, env: options.env };
  }
  return { policy: null, env: options.env };
}

function requirementTypes(policy: Policy): Set<PolicyRequirement['type']> {
  const types = new Set<PolicyRequirement['type']>();
  for (const r of policy.default) types.add(r.type);
  for (const scopes of policy.transports.values()) for (const reqs of scopes.values()) for (const r of reqs) types.add(r.type);
  return types;
}

/**
 * Start what a check of this policy will need and that depends on no image:
 * the signature modules (OpenPGP.js takes tens of milliseconds to load) and
 * registries.d. A pull calls it before it asks the registry for the
 * manifest, so this work overlaps the round trips; failures surface in
 * checkPolicy, where they are reported.
 */
export function warmPolicyCheck(ctx: PolicyContext): void {
  if (ctx.insecure || ctx.policy === null) return;
  const types = requirementTypes(ctx.policy);
  const quiet = (p: Promise<unknown>) => void p.catch(() => {});
  if (types.has('signedBy')) quiet(import('./openpgp-signature.js').then((m) => m.preloadOpenPgp()));
  if (types.has('sigstoreSigned')) quiet(import('./cosign-signature.js'));
  if (types.has('signedBy') || types.has('sigstoreSigned')) {
    quiet(import('./signature-payload.js'));
    quiet(import('./lookaside.js'));
    if (typeof ctx.registriesD === 'function') quiet(ctx.registriesD());
  }
}

/** The signatures of one manifest, as found where registries.d points, fetched once per manifest. */
interface SignatureSources {
  simple(digest: string): Promise<{ where: string; signatures: Buffer[] }>;
  sigstore(digest: string): Promise<{ where: string; attachments: { payload: Buffer; mediaType: string; annotations: Record<string, string> }[] }>;
}

function describeRequirement(req: PolicyRequirement): string {
  return req.type;
}

async function keyFiles(keys: KeySource, what: string): Promise<{ what: string; bytes: Buffer }[]> {
  if ('keyData' in keys) return [{ what: `${what} keyData`, bytes: keys.keyData }];
  if ('keyDatas' in keys) return keys.keyDatas.map((bytes, i) => ({ what: `${what} keyDatas[${i}]`, bytes }));
  const paths = 'keyPath' in keys ? [keys.keyPath] : keys.keyPaths;
  const out: { what: string; bytes: Buffer }[] = [];
  for (const path of paths) {
    const bytes = await readUserFile(path, maxKeyFileBytes, 'key file', false);
    out.push({ what: path, bytes: bytes! });
  }
  return out;
}

/** The manifests a signature may name: the chosen one, and the index it came from. */
function manifestsOf(img: ResolvedImage): { digest: string; bytes: Buffer }[] {
  const out = [];
  if (img.index !== undefined && img.indexManifest !== undefined) out.push({ digest: img.index, bytes: img.indexManifest });
  out.push({ digest: img.manifestDigest, bytes: img.manifest });
  return out;
}

/** A registry source: sigstore attachments are manifests and blobs of its repository. */
function isAttachmentReader(source: ImageSource): source is ImageSource & AttachmentReader {
  const s = source as Partial<AttachmentReader>;
  return typeof s.getManifest === 'function' && typeof s.getBlobBytes === 'function';
}

function signatureSources(source: ImageSource, ref: SourceReference, ctx: PolicyContext, signal?: AbortSignal): SignatureSources {
  let storage: Promise<SignatureStorage | null> | undefined;
  const storageOf = (): Promise<SignatureStorage | null> => {
    storage ??= (async () => {
      if (ref.transport !== 'docker') return null;
      const { signatureStorageFor } = await import('./registries-d.js');
      const config = typeof ctx.registriesD === 'function' ? await ctx.registriesD() : ctx.registriesD;
      if (config === undefined) return null;
      return signatureStorageFor(config, ref.name);
    })();
    return storage;
  };
  const simple = new Map<string, Promise<{ where: string; signatures: Buffer[] }>>();
  const sigstore = new Map<string, Promise<{ where: string; attachments: { payload: Buffer; mediaType: string; annotations: Record<string, string> }[] }>>();
  return {
    simple(digest) {
      let p = simple.get(digest);
      if (p === undefined) {
        p = (async () => {
          const s = await storageOf();
          if (ref.transport !== 'docker') return { where: `the ${ref.transport} transport (which carries no signatures)`, signatures: [] };
          if (s === null || s.lookaside === undefined) return { where: `no lookaside in registries.d for ${formatDockerName(ref.name)}`, signatures: [] };
          const { readLookasideSignatures, redactedUrl } = await import('./lookaside.js');
          const signatures = await readLookasideSignatures(s.lookaside, ref.name, digest, { signal, env: ctx.env ?? process.env });
          // Its password hidden: this reaches the terminal, and the verdict is kept in the name record.
          return { where: `lookaside ${redactedUrl(s.lookaside)}`, signatures };
        })();
        simple.set(digest, p);
      }
      return p;
    },
    sigstore(digest) {
      let p = sigstore.get(digest);
      if (p === undefined) {
        p = (async () => {
          const s = await storageOf();
          if (ref.transport !== 'docker') return { where: `the ${ref.transport} transport (which carries no signatures)`, attachments: [] };
          if (s === null || !s.useSigstoreAttachments) return { where: `registries.d does not enable use-sigstore-attachments for ${formatDockerName(ref.name)}`, attachments: [] };
          const { readSigstoreAttachments } = await import('./sigstore-attachments.js');
          if (!isAttachmentReader(source)) return { where: 'a source without sigstore attachments', attachments: [] };
          const attachments = await readSigstoreAttachments(source, digest, { signal });
          return { where: 'sigstore attachments', attachments };
        })();
        sigstore.set(digest, p);
      }
      return p;
    },
  };
}

/** A signature found for a manifest, and how to check it: its verified payload and who made it, or a ComposefsError. */
interface Candidate {
  verify(): Promise<{ payload: Buffer; by: string }>;
}

/**
 * The signatures of one manifest a requirement could accept, verified one by
 * one: the first whose payload vouches for this manifest under the
 * requirement's signedIdentity accepts it; otherwise why none did.
 */
async function firstAccepted(
  found: { where: string; candidates: Candidate[]; none: string },
  kind: 'simple-signing' | 'sigstore',
  manifest: { digest: string; bytes: Buffer },
  signedIdentity: SignedIdentity,
  identity: DockerName | undefined,
): Promise<{ by: string } | { reason: string }> {
  if (found.candidates.length === 0) return { reason: found.none };
  const reasons: string[] = [];
  for (const [i, candidate] of found.candidates.entries()) {
    try {
      const { payload, by } = await candidate.verify();
      const reason = await claimProblem(payload, kind, manifest, signedIdentity, identity);
      if (reason === undefined) return { by: `${by} (${found.where}, signature ${i + 1})` };
      reasons.push(`signature ${i + 1}: ${reason}`);
    } catch (err) {
      if (!(err instanceof ComposefsError)) throw err;
      reasons.push(`signature ${i + 1}: ${err.message}`);
    }
  }
  return { reason: `no signature was accepted (${found.where}): ${reasons.join('; ')}` };
}

/** A memo: the keys of a requirement are read once, for the index and the image alike, and only when a signature is there to check. */
function once<T>(make: () => Promise<T>): () => Promise<T> {
  let p: Promise<T> | undefined;
  return () => (p ??= make());
}

/** How one requirement finds and checks the signatures of a manifest. */
function signatureCheck(req: Extract<PolicyRequirement, { type: 'signedBy' | 'sigstoreSigned' }>, sources: SignatureSources): (manifest: { digest: string }) => Promise<{ where: string; candidates: Candidate[]; none: string }> {
  if (req.type === 'signedBy') {
    const keyring = once(async () => {
      const { readOpenPgpKeyring } = await import('./openpgp-signature.js');
      return readOpenPgpKeyring(await keyFiles(req.keys, 'signedBy'));
    });
    return async ({ digest }) => {
      const { where, signatures } = await sources.simple(digest);
      const candidates = signatures.map((signature) => ({
        async verify() {
          const { verifySimpleSigningSignature } = await import('./openpgp-signature.js');
          const { payload, fingerprint } = await verifySimpleSigningSignature(signature, await keyring());
          return { payload, by: `key ${fingerprint}` };
        },
      }));
      // A key file that cannot be read is the policy's fault, not the signature's: it is thrown, not collected.
      if (candidates.length > 0) await keyring();
      return { where, candidates, none: `no signature of ${digest} exists (${where})` };
    };
  }
  const keys = once(async () => (await import('./cosign-signature.js')).readSigstorePublicKeys(await keyFiles(req.keys, 'sigstoreSigned')));
  return async ({ digest }) => {
    const { where, attachments: all } = await sources.sigstore(digest);
    const { verifySigstoreSignature, SIGSTORE_SIGNATURE_ANNOTATION, SIGSTORE_PAYLOAD_MEDIA_TYPE } = await import('./cosign-signature.js');
    // Only signature attachments are signatures (others are attestations, SBOMs…), as containers/image skips them.
    const attachments = all.filter((a) => a.mediaType === SIGSTORE_PAYLOAD_MEDIA_TYPE);
    const others = all.length === attachments.length ? '' : `; ${all.length - attachments.length} attachment${all.length - attachments.length === 1 ? '' : 's'} of other media types`;
    const candidates = attachments.map((attachment) => ({
      async verify() {
        const signature = attachment.annotations[SIGSTORE_SIGNATURE_ANNOTATION];
        if (signature === undefined) throw new PolicyError(`has no ${SIGSTORE_SIGNATURE_ANNOTATION} annotation`);
        verifySigstoreSignature(attachment.payload, signature, await keys());
        return { payload: attachment.payload, by: 'a trusted public key' };
      },
    }));
    if (candidates.length > 0) await keys();
    return { where, candidates, none: `no sigstore signature of ${digest} exists (${where}${others})` };
  };
}

/** Why a verified payload does not vouch for this manifest under this identity rule; undefined when it does. */
async function claimProblem(
  payload: Buffer,
  kind: 'simple-signing' | 'sigstore',
  manifest: { digest: string; bytes: Buffer },
  signedIdentity: SignedIdentity,
  identity: DockerName | undefined,
): Promise<string | undefined> {
  const { parseSignaturePayload, manifestMatchesDigest } = await import('./signature-payload.js');
  const claim = parseSignaturePayload(payload, kind);
  if (!manifestMatchesDigest(manifest.bytes, claim.manifestDigest)) return `it signs manifest ${printable(claim.manifestDigest)}, not ${manifest.digest}`;
  if (!identityMatches(signedIdentity, identity, claim.dockerReference)) {
    return `it signs the identity ${printable(claim.dockerReference)}, which ${signedIdentity.type} does not accept for ${identity !== undefined ? formatDockerName(identity) : 'this image'}`;
  }
  return undefined;
}

/**
 * Apply the policy to a resolved image; throws PolicyRefusedError naming
 * the scope and the requirement that refused it. The image's scopes come
 * from its reference (an oci:/oci-archive: path with symlinks resolved, as
 * containers/image resolves it).
 */
export async function checkPolicy(ctx: PolicyContext, source: ImageSource, img: ResolvedImage, options: { signal?: AbortSignal } = {}): Promise<PolicyVerdict> {
  if (ctx.insecure) return { policy: 'insecure', accepted: [] };
  if (ctx.policy === null) return { policy: 'none', accepted: [] };
  const ref = parseReference(img.reference);
  // The path the source reads (resolved when it was opened), not the link resolved again now.
  const resolvedPath = ref.transport === 'oci' || ref.transport === 'oci-archive' ? (source.resolvedPath ?? (await realpathOrSelf(ref.path))) : undefined;
  const choice = requirementsFor(ctx.policy, policyScopesOf(ref, resolvedPath));
  const scope = describeChoice(choice);
  const identity = dockerIdentityOf(ref);
  const sources = signatureSources(source, ref, ctx, options.signal);
  const refuse = (req: PolicyRequirement, reason: string): never => {
    throw new PolicyRefusedError(`${printable(img.reference)}: refused by ${ctx.file ?? 'the policy'} ${scope} (${describeRequirement(req)}): ${reason}`);
  };
  if (choice.requirements.length === 0) {
    // containers/image: "Policy requirement list is empty" refuses rather than accepting by default.
    throw new PolicyRefusedError(`${printable(img.reference)}: refused by ${ctx.file ?? 'the policy'} ${scope}: the requirement list is empty`);
  }
  const accepted: PolicyVerdict['accepted'] = [];
  for (const req of choice.requirements) {
    switch (req.type) {
      case 'insecureAcceptAnything':
        accepted.push({ requirement: req.type });
        break;
      case 'reject':
        refuse(req, 'images here are rejected');
        break;
      case 'signedBy':
      case 'sigstoreSigned': {
        const by: string[] = [];
        const find = signatureCheck(req, sources);
        const kind = req.type === 'signedBy' ? 'simple-signing' : 'sigstore';
        for (const manifest of manifestsOf(img)) {
          const result = await firstAccepted(await find(manifest), kind, manifest, req.signedIdentity, identity);
          if ('reason' in result) refuse(req, result.reason);
          else by.push(result.by);
        }
        accepted.push({ requirement: req.type, by: by.join('; ') });
        break;
      }
    }
  }
  return { policy: ctx.file ?? 'policy', scope, accepted };
}

/** The path with symlinks resolved; as given (made absolute) when it cannot be resolved. */
async function realpathOrSelf(path: string): Promise<string> {
  try {
    return await realpath(path);
  } catch {
    return resolve(path);
  }
}

/** How a verdict reads in --explain and cfs inspect. */
export function describeVerdict(verdict: PolicyVerdict): string {
  if (verdict.policy === 'none') return 'no policy applied (no policy.json exists)';
  if (verdict.policy === 'insecure') return 'no policy applied (--insecure-policy)';
  const reqs = verdict.accepted.map((a) => (a.by !== undefined ? `${a.requirement} by ${a.by}` : a.requirement)).join(', ');
  return `accepted by ${verdict.policy} ${verdict.scope ?? ''}: ${reqs}`;
}
