/**
 * fs-verity builtin signatures: PKCS#7 SignedData (DER) over the kernel's
 * `struct fsverity_formatted_digest`, the bytes FS_IOC_ENABLE_VERITY takes
 * and `fsverity sign` writes, and the composefs sealing spec carries.
 *
 * Signing writes what fsverity-utils writes (PKCS7_BINARY | PKCS7_DETACHED
 * | PKCS7_NOATTR | PKCS7_NOCERTS, the digest algorithm the fs-verity one):
 * detached content, no signed attributes, no certificates, the signer named
 * by its certificate's issuer and serial number. For RSA keys that output is
 * byte for byte `fsverity sign`'s (PKCS#1 v1.5 is deterministic).
 *
 * Verification reads hostile bytes (src/fsverity/der.ts bounds them) and
 * accepts what the kernel and openssl accept beyond that: certificates
 * embedded (never trusted for being there), signed attributes with a
 * messageDigest, content embedded when it is the formatted digest, signers
 * named by subject key identifier. A signature counts only when a signer
 * names a trusted certificate and verifies with its key; that certificate
 * must be valid at `now` and fit for signing (see `checkPurpose`).
 */
import { X509Certificate, createHash, createPrivateKey, createPublicKey, sign as cryptoSign, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { SignatureError } from '../errors.js';
import { DER_NULL, DerError, Tag, content, contextTag, der, derOid, derSmallInteger, elements, encoding, expect, readOid, readRoot, readSmallInteger, readTime, type DerNode } from './der.js';
import { VERITY_ALGORITHM_IDS, verityAlgorithmOfId, verityDigestSize, type VerityAlgorithm } from './index.js';

export { SignatureError };

/**
 * The kernel's limit for a builtin signature (FS_VERITY_MAX_SIGNATURE_SIZE:
 * 16384 bytes of descriptor less its 256-byte header): a larger one could
 * never be applied, so it is refused before it is parsed.
 */
export const MAX_SIGNATURE_SIZE = 16128;
/** Certificates embedded in one signature, and signers, beyond these are refused. */
const MAX_EMBEDDED_CERTIFICATES = 16;
const MAX_SIGNERS = 16;

const OID = {
  data: '1.2.840.113549.1.7.1',
  signedData: '1.2.840.113549.1.7.2',
  contentType: '1.2.840.113549.1.9.3',
  messageDigest: '1.2.840.113549.1.9.4',
  sha256: '2.16.840.1.101.3.4.2.1',
  sha384: '2.16.840.1.101.3.4.2.2',
  sha512: '2.16.840.1.101.3.4.2.3',
  rsaEncryption: '1.2.840.113549.1.1.1',
  sha256WithRSA: '1.2.840.113549.1.1.11',
  sha384WithRSA: '1.2.840.113549.1.1.12',
  sha512WithRSA: '1.2.840.113549.1.1.13',
  ecPublicKey: '1.2.840.10045.2.1',
  ecdsaSha256: '1.2.840.10045.4.3.2',
  ecdsaSha384: '1.2.840.10045.4.3.3',
  ecdsaSha512: '1.2.840.10045.4.3.4',
  keyUsage: '2.5.29.15',
  extKeyUsage: '2.5.29.37',
  subjectKeyIdentifier: '2.5.29.14',
  anyExtendedKeyUsage: '2.5.29.37.0',
  codeSigning: '1.3.6.1.5.5.7.3.3',
} as const;

type Hash = 'sha256' | 'sha384' | 'sha512';
const HASH_OF_OID: Record<string, Hash> = { [OID.sha256]: 'sha256', [OID.sha384]: 'sha384', [OID.sha512]: 'sha512' };
const OID_OF_HASH: Record<Hash, string> = { sha256: OID.sha256, sha384: OID.sha384, sha512: OID.sha512 };
/** Signature algorithms: the key type, and the hash a combined OID names (it must be the digest algorithm). */
const SIGNATURE_ALGORITHMS: Record<string, { key: 'rsa' | 'ec'; hash?: Hash }> = {
  [OID.rsaEncryption]: { key: 'rsa' },
  [OID.sha256WithRSA]: { key: 'rsa', hash: 'sha256' },
  [OID.sha384WithRSA]: { key: 'rsa', hash: 'sha384' },
  [OID.sha512WithRSA]: { key: 'rsa', hash: 'sha512' },
  [OID.ecPublicKey]: { key: 'ec' },
  [OID.ecdsaSha256]: { key: 'ec', hash: 'sha256' },
  [OID.ecdsaSha384]: { key: 'ec', hash: 'sha384' },
  [OID.ecdsaSha512]: { key: 'ec', hash: 'sha512' },
};
const ECDSA_OID_OF_HASH: Record<Hash, string> = { sha256: OID.ecdsaSha256, sha384: OID.ecdsaSha384, sha512: OID.ecdsaSha512 };

const MAGIC = Buffer.from('FSVerity', 'latin1');

/** `struct fsverity_formatted_digest`: "FSVerity", le16 algorithm, le16 size, the digest. */
export function formattedDigest(algorithm: VerityAlgorithm, digest: Uint8Array | string): Buffer {
  const bytes = typeof digest === 'string' ? Buffer.from(digest, 'hex') : Buffer.from(digest);
  const size = verityDigestSize(algorithm);
  if (bytes.length !== size || (typeof digest === 'string' && digest.length !== size * 2)) throw new SignatureError(`an fs-verity ${algorithm} digest has ${size} bytes, not ${bytes.length}`);
  const head = Buffer.alloc(12);
  MAGIC.copy(head, 0);
  head.writeUInt16LE(VERITY_ALGORITHM_IDS[algorithm], 8);
  head.writeUInt16LE(size, 10);
  return Buffer.concat([head, bytes]);
}

function algorithmOfFormatted(formatted: Buffer): VerityAlgorithm {
  const alg = formatted.length >= 12 && formatted.subarray(0, 8).equals(MAGIC) ? verityAlgorithmOfId(formatted.readUInt16LE(8)) : null;
  if (alg === null || formatted.readUInt16LE(10) !== verityDigestSize(alg) || formatted.length !== 12 + verityDigestSize(alg)) {
    throw new SignatureError('not an fsverity_formatted_digest');
  }
  return alg;
}

// --- certificates ----------------------------------------------------------------

/** What the checks need of an X.509 certificate, read from its DER. */
export interface CertificateInfo {
  x509: X509Certificate;
  /** The issuer Name's DER, compared byte for byte with a signer's. */
  issuer: Buffer;
  /** The serial number INTEGER's content octets. */
  serial: Buffer;
  subject: string;
  notBefore: Date;
  notAfter: Date;
  /** keyUsage bits (bit 0 digitalSignature first); null when the extension is absent. */
  keyUsage: boolean[] | null;
  /** extendedKeyUsage OIDs; null when absent. */
  extKeyUsage: string[] | null;
  subjectKeyIdentifier: Buffer | null;
  /** SHA-256 of the DER, hex, to name it. */
  fingerprint: string;
}

function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, ', ');
}

/** Parse one DER certificate (hostile: bounded, every field checked). */
export function parseCertificate(derBytes: Buffer, what = 'certificate'): CertificateInfo {
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(derBytes);
  } catch (err) {
    throw new SignatureError(`${what}: not an X.509 certificate (${(err as Error).message})`, { cause: err });
  }
  try {
    const [tbs] = elements(readRoot(derBytes), Tag.sequence, `${what}: Certificate`, 3, 3);
    const fields = elements(tbs, Tag.sequence, `${what}: TBSCertificate`, 6, 10);
    let i = fields[0].tag === contextTag(0, true) ? 1 : 0;
    const serial = content(expect(fields[i++], Tag.integer, `${what}: serialNumber`));
    i++; // signature algorithm
    const issuer = encoding(expect(fields[i++], Tag.sequence, `${what}: issuer`));
    const [nb, na] = elements(fields[i++], Tag.sequence, `${what}: validity`, 2, 2);
    const notBefore = readTime(nb, `${what}: notBefore`);
    const notAfter = readTime(na, `${what}: notAfter`);
    i += 2; // subject, subjectPublicKeyInfo
    let keyUsage: boolean[] | null = null;
    let extKeyUsage: string[] | null = null;
    let subjectKeyIdentifier: Buffer | null = null;
    for (; i < fields.length; i++) {
      if (fields[i].tag !== contextTag(3, true)) continue;
      const [list] = elements(fields[i], contextTag(3, true), `${what}: extensions`, 1, 1);
      for (const ext of elements(list, Tag.sequence, `${what}: extensions`, 0, 256)) {
        const parts = elements(ext, Tag.sequence, `${what}: extension`, 2, 3);
        const oid = readOid(parts[0], `${what}: extension`);
        const value = readRoot(content(expect(parts[parts.length - 1], Tag.octetString, `${what}: extension ${oid}`)));
        if (oid === OID.keyUsage) {
          const bits = content(expect(value, Tag.bitString, `${what}: keyUsage`));
          if (bits.length < 1 || bits[0] > 7) throw new DerError(`${what}: keyUsage is not a BIT STRING`);
          keyUsage = [];
          for (let b = 0; b < (bits.length - 1) * 8 - bits[0]; b++) keyUsage.push((bits[1 + (b >> 3)] & (0x80 >> (b & 7))) !== 0);
        } else if (oid === OID.extKeyUsage) {
          extKeyUsage = elements(value, Tag.sequence, `${what}: extendedKeyUsage`, 1, 64).map((n) => readOid(n, `${what}: extendedKeyUsage`));
        } else if (oid === OID.subjectKeyIdentifier) {
          subjectKeyIdentifier = Buffer.from(content(expect(value, Tag.octetString, `${what}: subjectKeyIdentifier`)));
        }
      }
    }
    return {
      x509,
      issuer: Buffer.from(issuer),
      serial: Buffer.from(serial),
      subject: oneLine(x509.subject),
      notBefore,
      notAfter,
      keyUsage,
      extKeyUsage,
      subjectKeyIdentifier,
      fingerprint: createHash('sha256').update(derBytes).digest('hex'),
    };
  } catch (err) {
    if (err instanceof DerError) throw new SignatureError(`${what}: ${err.message.startsWith(what) ? err.message.slice(what.length + 2) : err.message}`, { cause: err });
    throw err;
  }
}

const PEM_RE = /-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]*?)-----END CERTIFICATE-----/g;
/** Certificates in one file beyond this are refused. */
export const MAX_CERTIFICATES_PER_FILE = 256;

/** The certificates of a PEM file (one or more CERTIFICATE blocks) or a DER file (one). */
export function parseCertificates(bytes: Buffer, what: string): CertificateInfo[] {
  if (bytes.length > 0 && bytes[0] === Tag.sequence) return [parseCertificate(bytes, what)];
  const text = bytes.toString('latin1');
  const out: CertificateInfo[] = [];
  for (const m of text.matchAll(PEM_RE)) {
    if (out.length >= MAX_CERTIFICATES_PER_FILE) throw new SignatureError(`${what}: more than ${MAX_CERTIFICATES_PER_FILE} certificates`);
    out.push(parseCertificate(Buffer.from(m[1].replace(/\s+/g, ''), 'base64'), `${what}: certificate ${out.length + 1}`));
  }
  if (out.length === 0) throw new SignatureError(`${what}: no certificate in it (PEM "BEGIN CERTIFICATE" blocks or one DER certificate)`);
  return out;
}

function date(d: Date): string {
  return d.toISOString().replace(/\.000Z$/, 'Z');
}

/**
 * Whether a certificate may sign images. The kernel checks neither validity
 * nor purpose of the keys in its .fs-verity keyring; these checks are the
 * userspace ones the issue asks for, in the rules X.509 (RFC 5280 4.2.1.3,
 * 4.2.1.12) gives for an extension that is present: a keyUsage without
 * digitalSignature, or an extendedKeyUsage with neither codeSigning (the
 * nearest named purpose to signing software images) nor
 * anyExtendedKeyUsage, says the key is for something else. Absent
 * extensions restrict nothing (self-made signing certificates have none).
 */
export function checkCertificate(cert: CertificateInfo, now: Date): void {
  if (now < cert.notBefore) throw new SignatureError(`certificate "${cert.subject}" is not valid before ${date(cert.notBefore)}`);
  if (now > cert.notAfter) throw new SignatureError(`certificate "${cert.subject}" expired on ${date(cert.notAfter)}`);
  if (cert.keyUsage !== null && !cert.keyUsage[0]) throw new SignatureError(`certificate "${cert.subject}" is not for signing (its keyUsage lacks digitalSignature)`);
  if (cert.extKeyUsage !== null && !cert.extKeyUsage.includes(OID.codeSigning) && !cert.extKeyUsage.includes(OID.anyExtendedKeyUsage)) {
    throw new SignatureError(`certificate "${cert.subject}" is not for signing (its extendedKeyUsage has neither codeSigning nor anyExtendedKeyUsage)`);
  }
}

// --- signing -----------------------------------------------------------------------

export interface SigningIdentity {
  /** The private key: a KeyObject, or PEM/DER bytes (with `passphrase` when encrypted). */
  key: KeyObject | Buffer | string;
  passphrase?: string | Buffer;
  /** The signer's certificate (PEM or DER, or parsed). */
  cert: Buffer | string | CertificateInfo;
}

function signerKey(identity: SigningIdentity): KeyObject {
  if (typeof identity.key === 'object' && 'asymmetricKeyType' in identity.key) return identity.key as KeyObject;
  try {
    return createPrivateKey({ key: identity.key as Buffer | string, ...(identity.passphrase !== undefined ? { passphrase: identity.passphrase } : {}) });
  } catch (err) {
    const msg = (err as Error).message;
    throw new SignatureError(`the signing key cannot be read${/passphrase|decrypt|bad decrypt/i.test(msg) ? ' (encrypted: its passphrase is missing or wrong)' : ''}: ${msg}`, { cause: err });
  }
}

function certOf(identity: SigningIdentity): CertificateInfo {
  const c = identity.cert;
  if (typeof c === 'object' && !Buffer.isBuffer(c)) return c;
  const certs = parseCertificates(Buffer.isBuffer(c) ? c : Buffer.from(c), 'the signing certificate');
  if (certs.length !== 1) throw new SignatureError(`the signing certificate file holds ${certs.length} certificates (one expected)`);
  return certs[0];
}

/**
 * Sign an `fsverity_formatted_digest` as `fsverity sign` does: PKCS#7
 * SignedData DER, detached, no attributes, no certificates; the message
 * digest algorithm is the fs-verity one (sha256 or sha512).
 */
export function signFsverityDigest(formatted: Buffer, identity: SigningIdentity): Buffer {
  const hash: Hash = algorithmOfFormatted(formatted);
  const key = signerKey(identity);
  const cert = certOf(identity);
  const pub = cert.x509.publicKey;
  if (pub.asymmetricKeyType !== key.asymmetricKeyType || !pub.equals(createPublicKey(key))) {
    throw new SignatureError(`the signing key is not the key of certificate "${cert.subject}"`);
  }
  let encAlg: Buffer;
  if (key.asymmetricKeyType === 'rsa') encAlg = der(Tag.sequence, derOid(OID.rsaEncryption), DER_NULL);
  else if (key.asymmetricKeyType === 'ec') encAlg = der(Tag.sequence, derOid(ECDSA_OID_OF_HASH[hash]));
  else throw new SignatureError(`a ${key.asymmetricKeyType ?? 'unknown'} key cannot make an fs-verity signature here (RSA and ECDSA keys can)`);
  const signature = cryptoSign(hash, formatted, key);
  const digestAlg = der(Tag.sequence, derOid(OID_OF_HASH[hash]), DER_NULL);
  const signerInfo = der(
    Tag.sequence,
    derSmallInteger(1),
    der(Tag.sequence, cert.issuer, der(Tag.integer, cert.serial)),
    digestAlg,
    encAlg,
    der(Tag.octetString, signature),
  );
  const signedData = der(Tag.sequence, derSmallInteger(1), der(Tag.set, digestAlg), der(Tag.sequence, derOid(OID.data)), der(Tag.set, signerInfo));
  return der(Tag.sequence, derOid(OID.signedData), der(contextTag(0, true), signedData));
}

// --- verification -------------------------------------------------------------------

interface SignerInfo {
  /** issuerAndSerialNumber, or subjectKeyIdentifier. */
  issuer?: Buffer;
  serial?: Buffer;
  keyId?: Buffer;
  hash: Hash;
  keyType: 'rsa' | 'ec';
  signedAttributes: DerNode | null;
  signature: Buffer;
}

interface ParsedSignature {
  signers: SignerInfo[];
  certificates: number;
  content: Buffer | null;
}

function hashOf(node: DerNode, what: string): Hash {
  const [oidNode, params] = elements(node, Tag.sequence, what, 1, 2);
  const oid = readOid(oidNode, what);
  if (params !== undefined && params.tag !== Tag.null) throw new DerError(`${what}: parameters at offset ${params.start} (NULL or none expected)`);
  const hash = HASH_OF_OID[oid];
  if (!hash) throw new SignatureError(`digest algorithm ${oid} is not accepted (sha256, sha384, sha512)`);
  return hash;
}

function parseSignerInfo(node: DerNode): SignerInfo {
  const what = 'SignerInfo';
  const f = elements(node, Tag.sequence, what, 5, 7);
  const version = readSmallInteger(f[0], `${what} version`);
  const signer: Partial<SignerInfo> = {};
  if (f[1].tag === Tag.sequence) {
    const [issuer, serial] = elements(f[1], Tag.sequence, `${what} issuerAndSerialNumber`, 2, 2);
    signer.issuer = Buffer.from(encoding(expect(issuer, Tag.sequence, `${what} issuer`)));
    signer.serial = Buffer.from(content(expect(serial, Tag.integer, `${what} serialNumber`)));
  } else if (f[1].tag === contextTag(0, false)) {
    signer.keyId = Buffer.from(content(f[1]));
  } else throw new DerError(`${what}: signer identifier at offset ${f[1].start} is neither issuerAndSerialNumber nor subjectKeyIdentifier`);
  if (version !== 1 && version !== 3) throw new DerError(`${what}: version ${version} (1 or 3 expected)`);
  signer.hash = hashOf(f[2], `${what} digestAlgorithm`);
  let i = 3;
  signer.signedAttributes = null;
  if (f[i].tag === contextTag(0, true)) signer.signedAttributes = f[i++];
  if (i + 1 >= f.length) throw new DerError(`${what}: truncated at offset ${f[f.length - 1].end}`);
  const [algOid, algParams] = elements(f[i++], Tag.sequence, `${what} signatureAlgorithm`, 1, 2);
  const oid = readOid(algOid, `${what} signatureAlgorithm`);
  const alg = SIGNATURE_ALGORITHMS[oid];
  if (!alg) throw new SignatureError(`signature algorithm ${oid} is not accepted (RSA PKCS#1 v1.5 and ECDSA are)`);
  if (algParams !== undefined && algParams.tag !== Tag.null) throw new DerError(`${what} signatureAlgorithm: parameters at offset ${algParams.start}`);
  if (alg.hash && alg.hash !== signer.hash) throw new SignatureError(`signature algorithm ${oid} uses ${alg.hash}, the signer's digest algorithm is ${signer.hash}`);
  signer.keyType = alg.key;
  signer.signature = Buffer.from(content(expect(f[i++], Tag.octetString, `${what} signature`)));
  if (i < f.length && f[i].tag !== contextTag(1, true)) throw new DerError(`${what}: unexpected ${f[i].tag.toString(16)} at offset ${f[i].start}`);
  return signer as SignerInfo;
}

/** Parse a PKCS#7 SignedData (structure only; nothing is trusted yet). */
export function parsePkcs7(derBytes: Buffer): ParsedSignature {
  if (derBytes.length > MAX_SIGNATURE_SIZE) throw new SignatureError(`${derBytes.length} bytes (a kernel fs-verity signature has at most ${MAX_SIGNATURE_SIZE})`);
  try {
    const [type, explicit] = elements(readRoot(derBytes), Tag.sequence, 'ContentInfo', 2, 2);
    if (readOid(type, 'ContentInfo contentType') !== OID.signedData) throw new SignatureError('not a PKCS#7 SignedData');
    const [signedData] = elements(explicit, contextTag(0, true), 'ContentInfo content', 1, 1);
    const f = elements(signedData, Tag.sequence, 'SignedData', 4, 6);
    const version = readSmallInteger(f[0], 'SignedData version');
    if (version < 1 || version > 5) throw new DerError(`SignedData version ${version}`);
    for (const alg of elements(f[1], Tag.set, 'SignedData digestAlgorithms', 0, 8)) hashOf(alg, 'SignedData digestAlgorithm');
    const encap = elements(f[2], Tag.sequence, 'SignedData contentInfo', 1, 2);
    if (readOid(encap[0], 'SignedData contentType') !== OID.data) throw new SignatureError('the signed content is not PKCS#7 data');
    let embedded: Buffer | null = null;
    if (encap.length === 2) {
      const [octets] = elements(encap[1], contextTag(0, true), 'SignedData content', 1, 1);
      embedded = Buffer.from(content(expect(octets, Tag.octetString, 'SignedData content')));
    }
    let i = 3;
    let certificates = 0;
    if (f[i].tag === contextTag(0, true)) certificates = elements(f[i++], contextTag(0, true), 'SignedData certificates', 0, MAX_EMBEDDED_CERTIFICATES).length;
    if (f[i] && f[i].tag === contextTag(1, true)) i++; // CRLs: read past, never used
    if (i !== f.length - 1) throw new DerError(`SignedData: ${f.length - i} elements where signerInfos was expected`);
    const signers = elements(f[i], Tag.set, 'SignedData signerInfos', 1, MAX_SIGNERS).map(parseSignerInfo);
    return { signers, certificates, content: embedded };
  } catch (err) {
    if (err instanceof DerError) throw new SignatureError(err.message, { cause: err });
    throw err;
  }
}

/** The data a signer's signature covers: the content, or the DER of its signed attributes as a SET. */
function signedBytes(signer: SignerInfo, formatted: Buffer): Buffer {
  if (signer.signedAttributes === null) return formatted;
  const attrs = elements(signer.signedAttributes, contextTag(0, true), 'signedAttrs', 1, 64);
  let messageDigest: Buffer | null = null;
  for (const attr of attrs) {
    const [typeNode, values] = elements(attr, Tag.sequence, 'Attribute', 2, 2);
    const type = readOid(typeNode, 'Attribute type');
    const vals = elements(values, Tag.set, `Attribute ${type}`, 1, 1);
    if (type === OID.messageDigest) {
      if (messageDigest !== null) throw new SignatureError('two messageDigest attributes');
      messageDigest = Buffer.from(content(expect(vals[0], Tag.octetString, 'messageDigest')));
    } else if (type === OID.contentType && readOid(vals[0], 'contentType') !== OID.data) {
      throw new SignatureError('the contentType attribute is not PKCS#7 data');
    }
  }
  if (messageDigest === null) throw new SignatureError('signed attributes without a messageDigest');
  if (!messageDigest.equals(createHash(signer.hash).update(formatted).digest())) throw new SignatureError('signed for another digest (its messageDigest attribute differs)');
  // RFC 5652 5.4: the signature is over the attributes' DER with the SET OF tag, not [0] IMPLICIT.
  const bytes = Buffer.from(encoding(signer.signedAttributes));
  bytes[0] = Tag.set;
  return bytes;
}

export interface VerifiedSignature {
  /** The trusted certificate whose key made it. */
  certificate: { subject: string; fingerprint: string; notAfter: string };
  /** The message digest algorithm the signer used. */
  hash: Hash;
  signedAttributes: boolean;
  embeddedCertificates: number;
}

function describeSigner(s: SignerInfo): string {
  if (s.keyId) return `subject key identifier ${s.keyId.toString('hex').slice(0, 80)}`;
  return `serial ${s.serial!.toString('hex').slice(0, 80)}`;
}

/**
 * Check `der` as an fs-verity builtin signature over `formatted` by one of
 * `trusted`, at `now`. Throws a one-line SignatureError saying why not.
 */
export function verifyFsverityDigestSignature(derBytes: Buffer, formatted: Buffer, trusted: readonly CertificateInfo[], now: Date = new Date()): VerifiedSignature {
  algorithmOfFormatted(formatted);
  const parsed = parsePkcs7(derBytes);
  if (parsed.content !== null && !parsed.content.equals(formatted)) throw new SignatureError('signed for another digest (the content it carries differs)');
  const matched: { signer: SignerInfo; cert: CertificateInfo }[] = [];
  for (const signer of parsed.signers) {
    for (const cert of trusted) {
      const match = signer.keyId ? cert.subjectKeyIdentifier !== null && cert.subjectKeyIdentifier.equals(signer.keyId) : cert.serial.equals(signer.serial!) && cert.issuer.equals(signer.issuer!);
      if (match) matched.push({ signer, cert });
    }
  }
  if (matched.length === 0) {
    throw new SignatureError(`no trusted certificate matches its signer (${parsed.signers.map(describeSigner).join('; ')})`);
  }
  let failure: SignatureError | null = null;
  for (const { signer, cert } of matched) {
    try {
      const keyType = cert.x509.publicKey.asymmetricKeyType;
      if (keyType !== signer.keyType) throw new SignatureError(`bad signature: a ${signer.keyType.toUpperCase()} signature, and certificate "${cert.subject}" has a ${String(keyType).toUpperCase()} key`);
      const data = signedBytes(signer, formatted);
      let ok = false;
      try {
        ok = cryptoVerify(signer.hash, data, cert.x509.publicKey, signer.signature);
      } catch {
        ok = false;
      }
      if (!ok) {
        throw new SignatureError(signer.signedAttributes === null ? `bad signature (not made by the key of certificate "${cert.subject}" over this digest)` : `bad signature over its signed attributes (certificate "${cert.subject}")`);
      }
      checkCertificate(cert, now);
      return {
        certificate: { subject: cert.subject, fingerprint: cert.fingerprint, notAfter: date(cert.notAfter) },
        hash: signer.hash,
        signedAttributes: signer.signedAttributes !== null,
        embeddedCertificates: parsed.certificates,
      };
    } catch (err) {
      if (err instanceof DerError) failure ??= new SignatureError(err.message, { cause: err });
      else if (err instanceof SignatureError) failure ??= err;
      else throw err;
    }
  }
  throw failure!;
}
