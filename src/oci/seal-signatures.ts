/**
 * composefs signatures on seals (composefs-rs `sealing_spec.rs`, "Signature
 * Format"): each is a PKCS#7 over the fsverity_formatted_digest of one role's
 * digest (src/fsverity/pkcs7.ts). Here: the trusted certificates read from a
 * file or directory, a seal signed, and every signature of a seal checked
 * against trusted certificates, with the spec's rule that a signed merged
 * EROFS comes with signed config (and, in an artifact, manifest).
 */
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { closeSync, constants, fstatSync, openSync, readdirSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { checkCertificate, formattedDigest, parseCertificates, signFsverityDigest, SignatureError, verifyFsverityDigestSignature, type CertificateInfo, type SigningIdentity } from '../fsverity/pkcs7.js';
import { SealError, sealKey, type FoundSeal, type Seal, type SealRole } from './seal-format.js';

/** A certificate file larger than this is refused (a PEM bundle of hundreds of certificates fits). */
export const MAX_CERTIFICATE_FILE = 1 << 20;
/** Files read from a certificate directory, at most. */
export const MAX_CERTIFICATE_FILES = 256;

function readBounded(path: string, what: string): Buffer {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (err) {
    throw new SignatureError(`${what}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`, { cause: err });
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new SignatureError(`${what}: not a regular file`);
    if (st.size > MAX_CERTIFICATE_FILE) throw new SignatureError(`${what}: ${st.size} bytes (at most ${MAX_CERTIFICATE_FILE})`);
    const buf = Buffer.alloc(st.size + 1);
    let n = 0;
    for (let got; n < buf.length && (got = readSync(fd, buf, n, buf.length - n, null)) > 0; ) n += got;
    if (n > st.size) throw new SignatureError(`${what}: grew while read`);
    return buf.subarray(0, n);
  } finally {
    closeSync(fd);
  }
}

/**
 * The trusted certificates of `fileOrDir`: a PEM file (any number of
 * CERTIFICATE blocks) or a DER certificate; a directory: its `*.pem`,
 * `*.crt` and `*.der` files (regular files only, others ignored).
 */
export function loadTrustedCertificates(fileOrDir: string): CertificateInfo[] {
  let names: string[] | null = null;
  try {
    names = readdirSync(fileOrDir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new SignatureError(`${fileOrDir}: no such file or directory (trusted certificates)`, { cause: err });
    if (code !== 'ENOTDIR') throw new SignatureError(`${fileOrDir}: ${(err as Error).message}`, { cause: err });
  }
  if (names === null) return parseCertificates(readBounded(fileOrDir, fileOrDir), fileOrDir);
  const files = names.filter((n) => /\.(pem|crt|der)$/.test(n)).sort();
  if (files.length > MAX_CERTIFICATE_FILES) throw new SignatureError(`${fileOrDir}: ${files.length} certificate files (at most ${MAX_CERTIFICATE_FILES})`);
  const out: CertificateInfo[] = [];
  for (const name of files) {
    const path = join(fileOrDir, name);
    out.push(...parseCertificates(readBounded(path, path), path));
  }
  if (out.length === 0) throw new SignatureError(`${fileOrDir}: no *.pem, *.crt or *.der certificate in the directory`);
  return out;
}

/**
 * The signing key and certificate of `cfs seal --sign-key --sign-cert`,
 * read and checked before anything else is done: the key (PEM or DER;
 * encrypted with the first line of `passphraseFile`) must be the
 * certificate's, and the certificate valid now and fit for signing (a
 * signature its own checks would refuse is not made).
 */
export function loadSigningIdentity(keyFile: string, certFile: string, passphraseFile?: string): SigningIdentity & { cert: CertificateInfo } {
  const certs = parseCertificates(readBounded(certFile, certFile), certFile);
  if (certs.length !== 1) throw new SignatureError(`${certFile}: ${certs.length} certificates (the signer's one expected)`);
  const cert = certs[0];
  let passphrase: string | undefined;
  if (passphraseFile !== undefined) passphrase = readBounded(passphraseFile, passphraseFile).toString('utf8').split('\n')[0].replace(/\r$/, '');
  const keyBytes = readBounded(keyFile, keyFile);
  let key;
  try {
    key = createPrivateKey({ key: keyBytes, format: keyBytes[0] === 0x30 ? 'der' : 'pem', ...(keyBytes[0] === 0x30 ? { type: 'pkcs8' as const } : {}), ...(passphrase !== undefined ? { passphrase } : {}) });
  } catch (err) {
    const msg = (err as Error).message;
    const encrypted = /-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED/.test(keyBytes.toString('latin1'));
    throw new SignatureError(`${keyFile}: ${encrypted ? (passphrase === undefined ? 'the key is encrypted: give --sign-passphrase-file' : 'the passphrase does not decrypt it') : `not a private key (${msg})`}`, { cause: err });
  }
  if (key.asymmetricKeyType !== 'rsa' && key.asymmetricKeyType !== 'ec') throw new SignatureError(`${keyFile}: a ${key.asymmetricKeyType ?? 'unknown'} key (composefs signatures here are made with RSA or EC keys, as fsverity sign makes them)`);
  if (!createPublicKey(key).equals(cert.x509.publicKey)) throw new SignatureError(`${keyFile}: not the key of certificate "${cert.subject}" (${certFile})`);
  try {
    checkCertificate(cert, new Date());
  } catch (err) {
    throw new SignatureError(`${certFile}: ${(err as Error).message}`, { cause: err });
  }
  return { key, cert };
}

/** The roles a signature covers, in the spec's order. */
const SIGNED_ROLES: readonly SealRole[] = ['manifest', 'config', 'merged', 'merged.bootable'];

function digestOf(seal: Seal, role: SealRole): string | undefined {
  return role === 'merged' ? seal.merged : role === 'config' ? seal.config : role === 'manifest' ? seal.manifest : role === 'merged.bootable' ? seal.bootable : undefined;
}

/** `seal` with a signature (base64) for each of its digests: manifest, config, merged (and the boot variant). */
export function signSeal<S extends Seal>(seal: S, identity: SigningIdentity): S {
  const signatures: Partial<Record<SealRole, string>> = {};
  for (const role of SIGNED_ROLES) {
    const digest = digestOf(seal, role);
    if (digest !== undefined) signatures[role] = signFsverityDigest(formattedDigest(seal.algorithm, digest), identity).toString('base64');
  }
  return { ...seal, signatures };
}

export interface RoleSignature {
  role: SealRole;
  /** The trusted certificate that made it. */
  subject: string;
  fingerprint: string;
}

function where(seal: FoundSeal): string {
  return seal.mode === 'inline' ? 'inline' : `artifact ${seal.artifact}`;
}

/**
 * Check every signature of `seal` against `trusted` at `now`. Returns what
 * was verified; throws one line naming the image, the signature's key and
 * why. A seal whose merged EROFS is signed must have its config signed and,
 * in an artifact, its manifest (the spec's MUST); a signature for a role the
 * seal gives no digest of is refused.
 */
export function checkSealSignatures(reference: string, seal: FoundSeal, trusted: readonly CertificateInfo[], now: Date = new Date()): RoleSignature[] {
  const sigs = seal.signatures ?? {};
  const out: RoleSignature[] = [];
  if (sigs.merged !== undefined) {
    const needed: SealRole[] = seal.mode === 'artifact' ? ['manifest', 'config'] : ['config'];
    for (const role of needed) {
      if (sigs[role] === undefined) throw new SealError(`${reference}: seal (${where(seal)}) signs the merged EROFS but not the ${role} (${sealKey(role, seal.algorithm)}): the spec requires both`);
    }
  }
  for (const role of SIGNED_ROLES) {
    const sig = sigs[role];
    if (sig === undefined) continue;
    const key = `${sealKey(role, seal.algorithm)}.sig`;
    const digest = digestOf(seal, role);
    if (digest === undefined) throw new SealError(`${reference}: signature ${key} (${where(seal)}) without the digest it signs`);
    try {
      const verified = verifyFsverityDigestSignature(Buffer.from(sig, 'base64'), formattedDigest(seal.algorithm, digest), trusted, now);
      out.push({ role, subject: verified.certificate.subject, fingerprint: verified.certificate.fingerprint });
    } catch (err) {
      if (err instanceof SignatureError) throw new SignatureError(`${reference}: signature ${key} (${where(seal)}): ${err.message}`, { cause: err });
      throw err;
    }
  }
  return out;
}

/** Refuse, in one line, a seal that is not signed when signatures are required. */
export function requireSigned(reference: string, seals: readonly FoundSeal[]): void {
  if (seals.length === 0) throw new SealError(`${reference}: not signed (no composefs seal in its manifest nor among its referrers), and trusted certificates were given`);
  if (!seals.some((s) => s.signatures?.merged !== undefined)) {
    throw new SealError(`${reference}: not signed (its seal${seals.length > 1 ? 's carry' : ' carries'} no signature of the merged EROFS), and trusted certificates were given`);
  }
}
