/**
 * The signature check run once at build time, on keys made on the spot, so
 * that V8's code cache for the bundle (scripts/train-code-cache.cjs) holds
 * OpenPGP.js and the policy code compiled: a pull with a signedBy policy then
 * skips compiling them (the README's Performance section gives the gain).
 */
import { createHash } from 'node:crypto';

export async function trainSignatureCheck(): Promise<void> {
  const openpgp = await import('openpgp');
  const [{ readOpenPgpKeyring, signSimpleSigning, verifySimpleSigningSignature }, { buildSignaturePayload, parseSignaturePayload, manifestMatchesDigest }, { parsePolicy }, { parseRegistriesDFile }] = await Promise.all([
    import('../oci/openpgp-signature.js'),
    import('../oci/signature-payload.js'),
    import('../oci/policy.js'),
    import('../oci/registries-d.js'),
  ]);
  const manifest = Buffer.from('{}');
  const digest = `sha256:${createHash('sha256').update(manifest).digest('hex')}`;
  const payload = buildSignaturePayload({ dockerReference: 'example.invalid/train:latest', manifestDigest: digest }, 'simple-signing', { creator: 'training', timestamp: 0 });
  // RSA, as gpg makes by default; the keyring read from its binary form, as `gpg --export` writes it.
  const { privateKey, publicKey } = await openpgp.generateKey({ type: 'rsa', rsaBits: 2048, userIDs: [{ email: 'train@example.invalid' }], format: 'binary' });
  const signature = await signSimpleSigning(payload, { what: 'training key', bytes: privateKey });
  const keyring = await readOpenPgpKeyring([{ what: 'training key', bytes: publicKey }]);
  const verified = await verifySimpleSigningSignature(signature, keyring);
  const claim = parseSignaturePayload(verified.payload, 'simple-signing');
  if (!manifestMatchesDigest(manifest, claim.manifestDigest)) throw new Error('training: the signed digest does not match');
  parsePolicy(JSON.stringify({ default: [{ type: 'reject' }], transports: { docker: { 'example.invalid': [{ type: 'signedBy', keyType: 'GPGKeys', keyPath: '/dev/null' }] } } }), 'training policy');
  parseRegistriesDFile(await import('yaml'), Buffer.from('docker:\n  example.invalid:\n    lookaside: https://example.invalid/sigstore\n'), 'training.yaml', []);
}
