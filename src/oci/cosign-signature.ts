/**
 * Sigstore signatures in cosign's format (sigstore/cosign
 * specs/SIGNATURE_SPEC.md): the payload of ./signature-payload.ts as a
 * layer of media type SIGSTORE_PAYLOAD_MEDIA_TYPE, and the base64 signature
 * of that payload in the layer's SIGSTORE_SIGNATURE_ANNOTATION. Keys as
 * containers/image reads them for `sigstoreSigned` (sigstore's
 * cryptoutils.UnmarshalPEMToPublicKey and signature.LoadVerifier with
 * SHA-256): ECDSA over SHA-256 with an ASN.1 DER signature, whatever the
 * curve; RSA PKCS #1 v1.5 over SHA-256; Ed25519 over the payload itself.
 * The private key is the encrypted format cosign and skopeo read
 * (go-securesystemslib `encrypted`: scrypt, then NaCl secretbox, around a
 * PKCS #8 key).
 */
import { createPrivateKey, createPublicKey, scrypt, sign, verify, type KeyObject } from 'node:crypto';
import { printable, printableJson } from '../printable.js';
import { SignatureError } from '../errors.js';
import type { NamedBytes } from './signature-error.js';

import { maxSignaturePayloadBytes } from './signature-payload.js';
import { pemBlocks } from './pem-blocks.js';

export const SIGSTORE_SIGNATURE_ANNOTATION = 'dev.cosignproject.cosign/signature';
export const SIGSTORE_PAYLOAD_MEDIA_TYPE = 'application/vnd.dev.cosign.simplesigning.v1+json';

/** A PEM key file is a few kilobytes; this is far beyond any. */
const maxKeyFileBytes = 1024 * 1024;
/** The largest signature of the largest key accepted (RSA 16384 bits: 2048 bytes), base64, with room. */
const maxSignatureBase64Length = 8192;
const minRsaBits = 2048;
/** RSA verification time grows with the modulus; cosign makes 2048 to 4096-bit keys. */
const maxRsaBits = 16384;
const acceptedCurves: ReadonlySet<string> = new Set(['prime256v1', 'secp384r1', 'secp521r1']);

interface PemBlock {
  type: string;
  der: Buffer;
}

/** The first PEM block of `text`, as Go's pem.Decode finds it (what sigstore reads); headers are refused. */
function firstPemBlock(bytes: Uint8Array, what: string): PemBlock {
  const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1');
  const first = pemBlocks(text, /-----BEGIN ([A-Z0-9 ]+)-----\r?\n/).next();
  if (first.done) throw new SignatureError(`${printable(what)}: no PEM block in it`);
  const block = first.value;
  const body = text.slice(block.bodyStart, block.bodyEnd).replace(/[\r\n\t ]/g, '');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(body) || body.length % 4 !== 0) throw new SignatureError(`${printable(what)}: PEM ${block.type}: malformed base64`);
  return { type: block.type, der: Buffer.from(body, 'base64') };
}

/** Why `key` cannot be used for sigstore signatures, or undefined. */
function keyProblem(key: KeyObject): string | undefined {
  const details = key.asymmetricKeyDetails ?? {};
  switch (key.asymmetricKeyType) {
    case 'ec':
      return acceptedCurves.has(details.namedCurve ?? '') ? undefined : `ECDSA curve ${details.namedCurve ?? 'unknown'} is not P-256, P-384 or P-521`;
    case 'rsa': {
      const bits = details.modulusLength ?? 0;
      return bits >= minRsaBits && bits <= maxRsaBits ? undefined : `RSA key of ${bits} bits (accepted: ${minRsaBits} to ${maxRsaBits})`;
    }
    case 'ed25519':
      return undefined;
    default:
      return `${key.asymmetricKeyType ?? 'unknown'} keys are not supported (ECDSA P-256/P-384/P-521, RSA, Ed25519 are)`;
  }
}

/**
 * The public keys of `files`, each file a PEM "PUBLIC KEY" (SubjectPublicKeyInfo)
 * or "RSA PUBLIC KEY" (PKCS #1), its first block read as sigstore reads it.
 */
export function readSigstorePublicKeys(files: readonly NamedBytes[]): KeyObject[] {
  return files.map(({ what, bytes }) => {
    const name = printable(what);
    if (bytes.length > maxKeyFileBytes) throw new SignatureError(`${name}: larger than ${maxKeyFileBytes} bytes, not a public key`);
    const block = firstPemBlock(bytes, what);
    let key: KeyObject;
    try {
      if (block.type === 'PUBLIC KEY') key = createPublicKey({ key: block.der, format: 'der', type: 'spki' });
      else if (block.type === 'RSA PUBLIC KEY') key = createPublicKey({ key: block.der, format: 'der', type: 'pkcs1' });
      else throw new SignatureError(`${name}: PEM ${block.type} is not a PUBLIC KEY`);
    } catch (err) {
      if (err instanceof SignatureError) throw err;
      throw new SignatureError(`${name}: not a public key: ${printable((err as Error).message)}`, { cause: err });
    }
    const problem = keyProblem(key);
    if (problem !== undefined) throw new SignatureError(`${name}: ${problem}`);
    return key;
  });
}

/** Standard base64 with padding, as Go's base64.StdEncoding decodes it (line breaks aside). */
function decodeSignature(signatureBase64: string): Buffer {
  if (signatureBase64.length > maxSignatureBase64Length) throw new SignatureError(`sigstore signature: longer than ${maxSignatureBase64Length} characters`);
  if (signatureBase64 === '' || !/^[A-Za-z0-9+/]*={0,2}$/.test(signatureBase64) || signatureBase64.length % 4 !== 0) {
    throw new SignatureError(`sigstore signature ${printableJson(signatureBase64.slice(0, 40))}: not base64`);
  }
  return Buffer.from(signatureBase64, 'base64');
}

function hashFor(key: KeyObject): string | null {
  return key.asymmetricKeyType === 'ed25519' ? null : 'sha256';
}

/**
 * Accepts when `signatureBase64` is a signature of `payload` by one of
 * `keys`; else one line. This checks the signature only: the payload's
 * claim is ./signature-payload.ts's and the caller's.
 */
export function verifySigstoreSignature(payload: Uint8Array, signatureBase64: string, keys: readonly KeyObject[]): void {
  if (keys.length === 0) throw new SignatureError('sigstore signature: no public key to check it with');
  if (payload.length > maxSignaturePayloadBytes) throw new SignatureError(`sigstore payload: larger than ${maxSignaturePayloadBytes} bytes`);
  const signature = decodeSignature(signatureBase64);
  for (const key of keys) {
    const problem = keyProblem(key);
    if (problem !== undefined) throw new SignatureError(`sigstore public key: ${problem}`);
    let good = false;
    try {
      good = verify(hashFor(key), payload, key.asymmetricKeyType === 'ec' ? { key, dsaEncoding: 'der' } : key, signature);
    } catch {
      good = false; // a signature OpenSSL cannot even parse is simply not this key's
    }
    if (good) return;
  }
  throw new SignatureError(`sigstore signature: not a valid signature of the payload by ${keys.length === 1 ? 'the public key' : `any of the ${keys.length} public keys`}`);
}

/** The base64 signature of `payload` by `key`, as cosign writes it in SIGSTORE_SIGNATURE_ANNOTATION. */
export function signSigstore(payload: Uint8Array, key: KeyObject): string {
  if (key.type !== 'private') throw new SignatureError('sigstore signing: the key is not a private key');
  const problem = keyProblem(key);
  if (problem !== undefined) throw new SignatureError(`sigstore signing key: ${problem}`);
  if (payload.length > maxSignaturePayloadBytes) throw new SignatureError(`sigstore payload: larger than ${maxSignaturePayloadBytes} bytes`);
  const signature = sign(hashFor(key), payload, key.asymmetricKeyType === 'ec' ? { key, dsaEncoding: 'der' } : key);
  return signature.toString('base64');
}

// ---- the encrypted private key ---------------------------------------------------------------

const PRIVATE_KEY_PEM_TYPES: ReadonlySet<string> = new Set(['ENCRYPTED SIGSTORE PRIVATE KEY', 'ENCRYPTED COSIGN PRIVATE KEY']);
/** The only scrypt parameters go-securesystemslib accepts (legacy, standard, OWASP): also what bounds the work a hostile file asks for. */
const SCRYPT_PARAMETERS: ReadonlyArray<{ N: number; r: number; p: number }> = [
  { N: 32768, r: 8, p: 1 },
  { N: 65536, r: 8, p: 1 },
  { N: 131072, r: 8, p: 1 },
];
const SALT_SIZE_MIN = 1;
const SECRETBOX_KEY_SIZE = 32;
const SECRETBOX_NONCE_SIZE = 24;
const SECRETBOX_TAG_SIZE = 16;

interface EncryptedEnvelope {
  N: number;
  r: number;
  p: number;
  salt: Buffer;
  nonce: Buffer;
  ciphertext: Buffer;
}

function exactKeys(value: unknown, path: string, keys: readonly string[], fail: (reason: string) => SignatureError): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw fail(`${path}: not a JSON object`);
  for (const k of keys) if (!Object.hasOwn(value, k)) throw fail(`${path}: field ${printableJson(k)} missing`);
  return value as Record<string, unknown>;
}

function base64Field(value: unknown, path: string, fail: (reason: string) => SignatureError): Buffer {
  if (typeof value !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(value) || value.length % 4 !== 0) throw fail(`${path}: not a base64 string`);
  return Buffer.from(value, 'base64');
}

/** The envelope go-securesystemslib's encrypted.Encrypt writes, checked before any scrypt work is done. */
function parseEnvelope(json: Buffer, fail: (reason: string) => SignatureError): EncryptedEnvelope {
  let doc: unknown;
  try {
    doc = JSON.parse(json.toString('utf8'));
  } catch {
    throw fail('the encrypted key is not JSON');
  }
  const top = exactKeys(doc, 'encrypted key', ['kdf', 'cipher', 'ciphertext'], fail);
  const kdf = exactKeys(top.kdf, 'kdf', ['name', 'params', 'salt'], fail);
  if (kdf.name !== 'scrypt') throw fail(`kdf ${printableJson(kdf.name)} is not "scrypt"`);
  const params = exactKeys(kdf.params, 'kdf.params', ['N', 'r', 'p'], fail);
  const chosen = SCRYPT_PARAMETERS.find((s) => s.N === params.N && s.r === params.r && s.p === params.p);
  if (!chosen) throw fail(`scrypt parameters ${printableJson(params)} are not ones cosign uses`);
  const cipher = exactKeys(top.cipher, 'cipher', ['name', 'nonce'], fail);
  if (cipher.name !== 'nacl/secretbox') throw fail(`cipher ${printableJson(cipher.name)} is not "nacl/secretbox"`);
  const salt = base64Field(kdf.salt, 'kdf.salt', fail);
  const nonce = base64Field(cipher.nonce, 'cipher.nonce', fail);
  const ciphertext = base64Field(top.ciphertext, 'ciphertext', fail);
  if (salt.length < SALT_SIZE_MIN) throw fail('kdf.salt: empty');
  if (nonce.length !== SECRETBOX_NONCE_SIZE) throw fail(`cipher.nonce: ${nonce.length} bytes, not ${SECRETBOX_NONCE_SIZE}`);
  if (ciphertext.length <= SECRETBOX_TAG_SIZE) throw fail('ciphertext: too short');
  return { ...chosen, salt, nonce, ciphertext };
}

function scryptKey(passphrase: Buffer, e: EncryptedEnvelope): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    // scrypt needs 128·N·r bytes; Node's default cap (32 MiB) is below the OWASP parameters' 128 MiB.
    scrypt(passphrase, e.salt, SECRETBOX_KEY_SIZE, { N: e.N, r: e.r, p: e.p, maxmem: 256 * e.N * e.r + 1024 * 1024 }, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

/**
 * The plaintext of go-securesystemslib's `encrypted` envelope (JSON: scrypt
 * parameters and salt, the secretbox nonce, the ciphertext) under
 * `passphrase`; a wrong passphrase or a changed byte is one line.
 */
export async function decryptSigstoreEnvelope(envelope: Uint8Array, passphrase: string | Uint8Array, what = 'encrypted key'): Promise<Buffer> {
  const fail = (reason: string) => new SignatureError(`${printable(what)}: ${reason}`);
  const e = parseEnvelope(Buffer.from(envelope.buffer, envelope.byteOffset, envelope.byteLength), fail);
  const key = await scryptKey(typeof passphrase === 'string' ? Buffer.from(passphrase, 'utf8') : Buffer.from(passphrase), e);
  let xsalsa20poly1305: typeof import('@noble/ciphers/salsa.js').xsalsa20poly1305;
  try {
    ({ xsalsa20poly1305 } = await import('@noble/ciphers/salsa.js'));
  } catch (err) {
    throw new SignatureError(`@noble/ciphers (NaCl secretbox) cannot be loaded: ${printable((err as Error).message)}`, { cause: err });
  }
  try {
    return Buffer.from(xsalsa20poly1305(key, e.nonce).decrypt(e.ciphertext));
  } catch {
    throw fail('cannot decrypt it: wrong passphrase, or the file was changed');
  } finally {
    key.fill(0);
  }
}

/**
 * The private key of cosign's encrypted key file (PEM "ENCRYPTED SIGSTORE
 * PRIVATE KEY", or the older "ENCRYPTED COSIGN PRIVATE KEY"; inside, a
 * PKCS #8 ECDSA, RSA or Ed25519 key), unlocked with `passphrase`.
 */
export async function readSigstorePrivateKey(file: NamedBytes, passphrase: string | Uint8Array): Promise<KeyObject> {
  const name = printable(file.what);
  if (file.bytes.length > maxKeyFileBytes) throw new SignatureError(`${name}: larger than ${maxKeyFileBytes} bytes, not a private key`);
  const block = firstPemBlock(file.bytes, file.what);
  if (!PRIVATE_KEY_PEM_TYPES.has(block.type)) throw new SignatureError(`${name}: PEM ${block.type} is not an ENCRYPTED SIGSTORE PRIVATE KEY`);
  const der = await decryptSigstoreEnvelope(block.der, passphrase, file.what);
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
  } catch (err) {
    throw new SignatureError(`${name}: the decrypted key is not a PKCS #8 private key`, { cause: err });
  } finally {
    der.fill(0);
  }
  const problem = keyProblem(key);
  if (problem !== undefined) throw new SignatureError(`${name}: ${problem}`);
  return key;
}
