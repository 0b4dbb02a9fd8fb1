/**
 * Signing an image as skopeo does (`skopeo copy --sign-by`,
 * `--sign-by-sigstore-private-key`), without copying it: a "simple signing"
 * OpenPGP signature written where containers-registries.d(5) says
 * (`lookaside-staging`, else a `file://` `lookaside`), or a sigstore
 * signature pushed as a cosign attachment (`sha256-HEX.sig`) when
 * registries.d enables `use-sigstore-attachments`. The signature claims the
 * image's docker reference (or `identity`) and its manifest digest; for a
 * reference that names an index, the index and the chosen image are both
 * signed, as a policy check wants both.
 */
import { ComposefsError } from '../errors.js';
import { printable } from '../printable.js';
import { formatDockerName, parseDockerName, parseReference, type DockerName } from './reference.js';
import type { ClientOptions } from './registry/client.js';
import type { RegistriesD } from './registries-d.js';
import type { SourceOptions } from './source.js';

export class SignError extends ComposefsError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, 'sign', options);
  }
}

export interface SignOptions extends Omit<SourceOptions, 'env'> {
  /** An armored OpenPGP secret key: a simple signing signature. */
  openPgpKey?: { what: string; bytes: Buffer };
  /** A cosign encrypted private key: a sigstore signature. */
  sigstoreKey?: { what: string; bytes: Buffer };
  /** The passphrase of either key. */
  passphrase?: string;
  /** The docker reference the signature claims (default: the image's own). */
  identity?: string;
  registriesD: RegistriesD;
  env?: NodeJS.ProcessEnv;
  signal?: AbortSignal;
  /** Called with what was done, for --explain. */
  explain?: (line: string) => void;
}

export interface SignedManifest {
  digest: string;
  identity: string;
  /** Where the signature went: a file path, or `docker://HOST/REPO:sha256-HEX.sig`. */
  written: string;
}

export interface SignResult {
  kind: 'simple-signing' | 'sigstore';
  signed: SignedManifest[];
}

/** Sign the image `reference` (docker:// only: the other transports carry no signatures). */
export async function signImage(reference: string, opts: SignOptions): Promise<SignResult> {
  if ((opts.openPgpKey === undefined) === (opts.sigstoreKey === undefined)) throw new SignError('give exactly one key: an OpenPGP key (--sign-by-key) or a sigstore private key (--sign-by-sigstore-private-key)');
  const ref = parseReference(reference);
  if (ref.transport !== 'docker') throw new SignError(`${printable(reference)}: the ${ref.transport} transport carries no signatures (sign a docker:// reference)`);
  const explain = opts.explain ?? (() => {});
  let identity: DockerName = ref.name;
  if (opts.identity !== undefined) {
    try {
      identity = parseDockerName(opts.identity);
    } catch (err) {
      throw new SignError(`--sign-identity ${printable(opts.identity)}: ${(err as Error).message}`, { cause: err });
    }
    if (formatDockerName(identity) !== opts.identity) throw new SignError(`--sign-identity ${printable(opts.identity)}: not in the fully expanded form (${formatDockerName(identity)})`);
  }
  const [{ signatureStorageFor }, { buildSignaturePayload }, { openSource }] = await Promise.all([import('./registries-d.js'), import('./signature-payload.js'), import('./transports.js')]);
  const storage = signatureStorageFor(opts.registriesD, ref.name);
  const kind = opts.openPgpKey !== undefined ? 'simple-signing' : 'sigstore';

  // Everything the signing needs is checked before the key is used or anything written.
  let lookasideBase: string | undefined;
  if (kind === 'simple-signing') {
    lookasideBase = storage.lookasideStaging ?? storage.lookaside;
    if (lookasideBase === undefined) throw new SignError(`${printable(reference)}: registries.d gives no lookaside-staging or lookaside for ${formatDockerName(ref.name)} (${storage.section}): nowhere to write the signature`);
    if (!lookasideBase.startsWith('file://')) {
      const { redactedUrl } = await import('./lookaside.js');
      throw new SignError(`${printable(reference)}: lookaside-staging ${redactedUrl(lookasideBase)} (${storage.stagingSection}) is not a file:// URL; signatures are written to files only (set lookaside-staging)`);
    }
  } else if (!storage.useSigstoreAttachments) {
    throw new SignError(`${printable(reference)}: registries.d does not enable use-sigstore-attachments for ${formatDockerName(ref.name)} (${storage.section}): nowhere to push the signature`);
  }

  const clientOptions: ClientOptions = { creds: opts.creds, authFile: opts.authFile, certDir: opts.certDir, tlsVerify: opts.tlsVerify, retries: opts.retries, retryDelayMs: opts.retryDelayMs, speedLimit: opts.speedLimit, speedTime: opts.speedTime, env: opts.env ?? process.env };
  const source = await openSource(reference, { ...clientOptions, platform: opts.platform });
  let manifests: { digest: string }[];
  try {
    const img = await source.resolve();
    manifests = [...(img.index !== undefined ? [{ digest: img.index }] : []), { digest: img.manifestDigest }];
  } finally {
    await source.close();
  }

  const claimed = formatDockerName(identity);
  const timestamp = Math.floor(Date.now() / 1000);
  const signed: SignedManifest[] = [];
  if (kind === 'simple-signing') {
    const [{ signSimpleSigning }, { writeLookasideSignature }] = await Promise.all([import('./openpgp-signature.js'), import('./lookaside.js')]);
    // Every signature is made before the first is written: a key that cannot sign leaves none behind.
    const made: { digest: string; signature: Buffer }[] = [];
    for (const { digest } of manifests) {
      const payload = buildSignaturePayload({ dockerReference: claimed, manifestDigest: digest }, 'simple-signing', { creator: 'composefs-ts', timestamp });
      made.push({ digest, signature: await signSimpleSigning(payload, opts.openPgpKey!, opts.passphrase) });
    }
    for (const { digest, signature } of made) {
      const written = await writeLookasideSignature(lookasideBase!, ref.name, digest, signature);
      explain(`signed ${digest} as ${claimed}: ${written}`);
      signed.push({ digest, identity: claimed, written });
    }
  } else {
    const [{ readSigstorePrivateKey, signSigstore, SIGSTORE_SIGNATURE_ANNOTATION, SIGSTORE_PAYLOAD_MEDIA_TYPE }, { pushSigstoreAttachment }, { RegistryTarget }] = await Promise.all([
      import('./cosign-signature.js'),
      import('./sigstore-attachments.js'),
      import('./registry/push.js'),
    ]);
    const key = await readSigstorePrivateKey(opts.sigstoreKey!, opts.passphrase ?? '');
    const target = new RegistryTarget(ref.name, ref.text, clientOptions);
    const made = manifests.map(({ digest }) => {
      const payload = buildSignaturePayload({ dockerReference: claimed, manifestDigest: digest }, 'sigstore', { creator: 'composefs-ts', timestamp });
      return { digest, payload, signature: signSigstore(payload, key) };
    });
    for (const { digest, payload, signature } of made) {
      await pushSigstoreAttachment(target, digest, { payload, mediaType: SIGSTORE_PAYLOAD_MEDIA_TYPE, annotations: { [SIGSTORE_SIGNATURE_ANNOTATION]: signature } });
      const written = `docker://${ref.name.domain}/${ref.name.path}:${digest.replace(':', '-')}.sig`;
      explain(`signed ${digest} as ${claimed}: ${written}`);
      signed.push({ digest, identity: claimed, written });
    }
  }
  return { kind, signed };
}
