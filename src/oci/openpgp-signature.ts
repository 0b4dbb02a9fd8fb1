/**
 * "Simple signing" signatures (containers/image docs/containers-signature.5.md,
 * what `skopeo copy --sign-by` writes): an OpenPGP signed message, not
 * detached, whose literal data is the payload of ./signature-payload.ts;
 * gpg writes it compressed by default. Read and made with OpenPGP.js, which
 * is loaded only when a function here runs (a CLI command that checks no
 * signature never pays for it).
 *
 * Verification accepts what containers/image's gpgme mechanism accepts:
 * exactly one signature, by a key of the keyring (the primary key or one of
 * its signing subkeys), valid when it was made and not expired or revoked
 * now. The identity returned is the primary key's fingerprint, upper-case
 * hex, as containers/image names keys.
 */
import type { Config, Key, PrivateKey } from 'openpgp';
import { printable } from '../printable.js';
import { SignatureError } from '../errors.js';
import type { NamedBytes } from './signature-error.js';
import { maxSignaturePayloadBytes } from './signature-payload.js';
import { pemBlocks } from './pem-blocks.js';

/** containers/image reads a signature (iolimits.MaxSignatureBodySize) up to 4 MiB. */
export const maxSignatureBytes = 4 * 1024 * 1024;
/** A policy names a few exported keys; a file beyond this is not a keyring meant for it. */
export const maxKeyFileBytes = 16 * 1024 * 1024;

type OpenPgp = typeof import('openpgp');
let loaded: Promise<OpenPgp> | undefined;
function openpgp(): Promise<OpenPgp> {
  loaded ??= import('openpgp').catch((err: unknown) => {
    loaded = undefined;
    throw new SignatureError(`OpenPGP.js (the npm package openpgp) cannot be loaded: ${reasonOf(err)}`, { cause: err });
  });
  return loaded;
}

/**
 * Start loading OpenPGP.js now (a policy check will need it): its module
 * takes tens of milliseconds to evaluate, time a pull can spend while it
 * waits on the registry. A failure is reported when the library is used.
 */
export function preloadOpenPgp(): void {
  openpgp().catch(() => {});
}

/**
 * OpenPGP.js's defaults, bounding what a hostile message can make it
 * inflate. A whole Config: the lower-level calls (getSigningKey) take it as
 * it is, without merging in the defaults.
 */
function readConfig(pgp: OpenPgp): Config {
  return { ...pgp.config, maxDecompressedMessageSize: maxSignaturePayloadBytes };
}

/** The public keys a signature may be made by. */
export class OpenPgpKeyring {
  /** Primary key fingerprints, upper-case hex, in file order. */
  readonly fingerprints: readonly string[];
  private constructor(readonly keys: readonly Key[]) {
    this.fingerprints = keys.map((k) => k.getFingerprint().toUpperCase());
  }
  /** @internal */
  static of(keys: Key[]): OpenPgpKeyring {
    return new OpenPgpKeyring(keys);
  }
}

/** OpenPGP.js's reason, one printable line, without its "Error …ing …:" prefixes. */
function reasonOf(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  const line = message.split('\n')[0]!.replace(/^(?:Error [a-z]+ing [a-z ]+: )+/, '');
  return printable(line.length > 300 ? `${line.slice(0, 300)}…` : line);
}

const ARMOR_BEGIN = /-----BEGIN (PGP (?:PUBLIC|PRIVATE) KEY BLOCK)-----/;

function isArmored(bytes: Uint8Array): boolean {
  return /^\s*-----BEGIN PGP /.test(Buffer.from(bytes.buffer, bytes.byteOffset, Math.min(bytes.byteLength, 64)).toString('latin1'));
}

/**
 * The keys of `files`: binary keyrings (`gpg --export`) or ASCII-armored
 * ones (`gpg --export --armor`, one or more blocks), each with any number of
 * keys. Secret keys are read as their public half. A file that holds no key,
 * or is not a keyring, is refused in one line naming it.
 */
export async function readOpenPgpKeyring(files: readonly NamedBytes[]): Promise<OpenPgpKeyring> {
  const pgp = await openpgp();
  const keys: Key[] = [];
  for (const { what, bytes } of files) {
    if (bytes.length > maxKeyFileBytes) throw new SignatureError(`${printable(what)}: larger than ${maxKeyFileBytes} bytes, not an OpenPGP keyring`);
    let found: Key[] = [];
    try {
      if (isArmored(bytes)) {
        const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1');
        for (const block of pemBlocks(text, ARMOR_BEGIN)) found.push(...(await pgp.readKeys({ armoredKeys: text.slice(block.start, block.end), config: readConfig(pgp) })));
      } else if (bytes.length > 0) {
        found = await pgp.readKeys({ binaryKeys: bytes, config: readConfig(pgp) });
      }
    } catch (err) {
      throw new SignatureError(`${printable(what)}: not an OpenPGP keyring: ${reasonOf(err)}`, { cause: err });
    }
    if (found.length === 0) throw new SignatureError(`${printable(what)}: no OpenPGP public key in it`);
    keys.push(...found.map((k) => (k.isPrivate() ? k.toPublic() : k)));
  }
  return OpenPgpKeyring.of(keys);
}

export interface VerifiedSimpleSigning {
  /** The signed literal data: the payload, still to be parsed (./signature-payload.ts) and matched. */
  payload: Buffer;
  /** The primary key's fingerprint, upper-case hex. */
  fingerprint: string;
  /** The fingerprint of the key that made the signature (a subkey's, or the primary's), upper-case hex. */
  signingKeyFingerprint: string;
}

/**
 * The payload of a simple signing signature made by a key of `keyring`.
 * Refused in one line naming `what`: a message that is not a binary OpenPGP
 * signed message (garbage, truncated, unsigned, encrypted, armored), more
 * than one signature, a signature by a key not in the keyring, a bad or
 * expired signature, a signing key or subkey expired or revoked at signing
 * or now, a payload larger than 4 MiB once inflated.
 */
export async function verifySimpleSigningSignature(signature: Uint8Array, keyring: OpenPgpKeyring, what = 'signature'): Promise<VerifiedSimpleSigning> {
  const name = printable(what);
  if (signature.length === 0) throw new SignatureError(`${name}: empty`);
  if (signature.length > maxSignatureBytes) throw new SignatureError(`${name}: larger than ${maxSignatureBytes} bytes`);
  if (keyring.keys.length === 0) throw new SignatureError(`${name}: no public key to check it with`);
  const pgp = await openpgp();
  const config = readConfig(pgp);
  let data: Uint8Array;
  let signatures: Awaited<ReturnType<typeof pgp.verify>>['signatures'];
  try {
    const message = await pgp.readMessage({ binaryMessage: signature, config });
    ({ data, signatures } = await pgp.verify({ message, verificationKeys: [...keyring.keys], format: 'binary', config }));
  } catch (err) {
    throw new SignatureError(`${name}: not an OpenPGP signed message: ${reasonOf(err)}`, { cause: err });
  }
  // gpgme (containers/image) accepts exactly one signature.
  if (signatures.length === 0) throw new SignatureError(`${name}: no signature in the message that can be read (not signed, or signed in the version 3 format of gpg before 2.1)`);
  if (signatures.length !== 1) throw new SignatureError(`${name}: ${signatures.length} signatures in the message, expected exactly 1`);
  const [only] = signatures;
  const keyId = only!.keyID.toHex().toUpperCase();
  const primary = keyring.keys.find((k) => k.getKeys(only!.keyID).length > 0);
  if (!primary) throw new SignatureError(`${name}: signed by key ID ${keyId}, which is not one of the ${keyring.keys.length} trusted keys`);
  try {
    await only!.verified;
  } catch (err) {
    throw new SignatureError(`${name}: signature by key ID ${keyId} is not valid: ${reasonOf(err)}`, { cause: err });
  }
  // OpenPGP.js checks the key as it was when the signature was made; gpgme also refuses a key expired or revoked since.
  let signingKey;
  try {
    signingKey = await primary.getSigningKey(only!.keyID, new Date(), undefined, config);
  } catch (err) {
    throw new SignatureError(`${name}: signing key ${keyId} of ${primary.getFingerprint().toUpperCase()} is not valid now: ${reasonOf(err)}`, { cause: err });
  }
  return {
    payload: Buffer.from(data.buffer, data.byteOffset, data.byteLength),
    fingerprint: primary.getFingerprint().toUpperCase(),
    signingKeyFingerprint: signingKey.getFingerprint().toUpperCase(),
  };
}

/** An armored or binary OpenPGP secret key file holds at most a few keys; more is not one. */
const maxSecretKeyFileBytes = 1024 * 1024;

/**
 * A simple signing signature of `payload`: a binary OpenPGP signed message
 * (one-pass signature, literal data, signature; not compressed), the form
 * `gpg --sign` writes and gpg, gpgme and containers/image read. The secret
 * key file (armored or binary) must hold exactly one key, able to sign; a
 * protected key needs its passphrase.
 */
export async function signSimpleSigning(payload: Uint8Array, secretKey: NamedBytes, passphrase?: string): Promise<Buffer> {
  const name = printable(secretKey.what);
  if (payload.length > maxSignaturePayloadBytes) throw new SignatureError(`payload to sign: larger than ${maxSignaturePayloadBytes} bytes`);
  if (secretKey.bytes.length > maxSecretKeyFileBytes) throw new SignatureError(`${name}: larger than ${maxSecretKeyFileBytes} bytes, not an OpenPGP secret key`);
  const pgp = await openpgp();
  let keys: PrivateKey[];
  try {
    keys = isArmored(secretKey.bytes)
      ? await pgp.readPrivateKeys({ armoredKeys: Buffer.from(secretKey.bytes).toString('latin1') })
      : await pgp.readPrivateKeys({ binaryKeys: secretKey.bytes });
  } catch (err) {
    throw new SignatureError(`${name}: not an OpenPGP secret key: ${reasonOf(err)}`, { cause: err });
  }
  if (keys.length !== 1) throw new SignatureError(`${name}: ${keys.length} secret keys in the file, expected exactly 1`);
  let key = keys[0]!;
  if (!key.isDecrypted()) {
    if (passphrase === undefined) throw new SignatureError(`${name}: the key is protected by a passphrase and none was given`);
    try {
      key = await pgp.decryptKey({ privateKey: key, passphrase });
    } catch (err) {
      throw new SignatureError(`${name}: cannot unlock the key: ${reasonOf(err)}`, { cause: err });
    }
  }
  try {
    const message = await pgp.createMessage({ binary: payload });
    const signed = await pgp.sign({ message, signingKeys: key, format: 'binary' });
    return Buffer.from(signed.buffer, signed.byteOffset, signed.byteLength);
  } catch (err) {
    throw new SignatureError(`${name}: cannot sign with key ${key.getFingerprint().toUpperCase()}: ${reasonOf(err)}`, { cause: err });
  }
}
