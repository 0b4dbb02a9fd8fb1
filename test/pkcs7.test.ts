/**
 * fs-verity builtin signatures (src/fsverity/pkcs7.ts) against the real
 * tools: keys and certificates made by `openssl` (RSA, EC, an expired one
 * by `openssl ca`, a keyCertSign-only one, a serverAuth-only one);
 * signatures made by `fsverity sign` (sha256 and sha512) and by
 * `openssl cms -sign` (signed attributes, certificate embedded) accepted;
 * signatures ours makes checked by `openssl cms -verify` and compared with
 * `fsverity sign`'s bytes. The formatted digest the tools' files are
 * checked against is built here from `fsverity digest`'s output and the
 * kernel's struct layout, not by the code under test.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { formattedDigest, parseCertificates, signFsverityDigest, verifyFsverityDigestSignature, SignatureError, type CertificateInfo } from '../src/fsverity/pkcs7.js';
import { makeTemp, removeTemp } from './helpers/temp.js';
import { handFormatted, makeSigners, run } from './helpers/signers.js';
import { haveTool } from './helpers/oci-images.js';

const MISSING = !haveTool('openssl') ? 'openssl missing' : !haveTool('fsverity') ? 'fsverity (fsverity-utils) missing' : false;

function toolDigest(dir: string, file: string, algorithm: 'sha256' | 'sha512'): string {
  return run('fsverity', ['digest', '--compact', `--hash-alg=${algorithm}`, file], dir).trim();
}

function certs(dir: string, name: string): CertificateInfo[] {
  return parseCertificates(readFileSync(join(dir, name)), name);
}

function refused(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof SignatureError, String(err));
    assert.match(err.message, pattern);
    assert.doesNotMatch(err.message, /\n/);
    return true;
  });
}

test('pkcs7: signatures fsverity sign and openssl cms make are accepted; ours pass openssl cms -verify and are fsverity sign\'s bytes', { skip: MISSING }, () => {
  const dir = makeTemp('pkcs7');
  try {
    makeSigners(dir);
    writeFileSync(join(dir, 'file'), Buffer.alloc(50_000, 7));
    for (const [alg, key] of [['sha256', 'rsa'], ['sha512', 'ec'], ['sha512', 'rsa'], ['sha256', 'ec']] as const) {
      const hex = toolDigest(dir, 'file', alg);
      const formatted = handFormatted(alg, hex);
      assert.deepEqual(formattedDigest(alg, hex), formatted);
      run('fsverity', ['sign', 'file', `${alg}-${key}.sig`, '--key', `${key}.key`, '--cert', `${key}.crt`, `--hash-alg=${alg}`], dir);
      const theirs = readFileSync(join(dir, `${alg}-${key}.sig`));
      const ok = verifyFsverityDigestSignature(theirs, formatted, [...certs(dir, 'other.crt'), ...certs(dir, `${key}.crt`)]);
      assert.equal(ok.certificate.subject, key === 'rsa' ? 'CN=rsa signer' : 'CN=ec signer');
      assert.equal(ok.hash, alg);

      const ours = signFsverityDigest(formatted, { key: readFileSync(join(dir, `${key}.key`)), cert: readFileSync(join(dir, `${key}.crt`)) });
      // PKCS#1 v1.5 is deterministic: for RSA, fsverity sign's bytes exactly; ECDSA signatures differ each time.
      if (key === 'rsa') assert.ok(ours.equals(theirs), `${alg}: our RSA signature is not fsverity sign's`);
      writeFileSync(join(dir, 'ours.sig'), ours);
      writeFileSync(join(dir, 'formatted'), formatted);
      run('openssl', ['cms', '-verify', '-binary', '-inform', 'DER', '-in', 'ours.sig', '-content', 'formatted', '-CAfile', `${key}.crt`, '-purpose', 'any', '-nointern', '-certfile', `${key}.crt`, '-out', '/dev/null'], dir);
      // And openssl refuses ours for another digest (so the check above can fail).
      writeFileSync(join(dir, 'formatted-other'), handFormatted(alg, 'ee'.repeat(hex.length / 2)));
      const bad = spawnSync('openssl', ['cms', '-verify', '-binary', '-inform', 'DER', '-in', 'ours.sig', '-content', 'formatted-other', '-CAfile', `${key}.crt`, '-purpose', 'any', '-nointern', '-certfile', `${key}.crt`, '-out', '/dev/null'], { cwd: dir, encoding: 'utf8' });
      assert.notEqual(bad.status, 0);
    }
    // openssl cms -sign: signed attributes (contentType, messageDigest, signingTime…) and the certificate embedded.
    const hex = toolDigest(dir, 'file', 'sha256');
    writeFileSync(join(dir, 'formatted'), handFormatted('sha256', hex));
    run('openssl', ['cms', '-sign', '-binary', '-in', 'formatted', '-signer', 'ec.crt', '-inkey', 'ec.key', '-outform', 'DER', '-out', 'cms.sig', '-md', 'sha256'], dir);
    const cms = verifyFsverityDigestSignature(readFileSync(join(dir, 'cms.sig')), handFormatted('sha256', hex), certs(dir, 'ec.crt'));
    assert.equal(cms.signedAttributes, true);
    assert.equal(cms.embeddedCertificates, 1);
    refused(() => verifyFsverityDigestSignature(readFileSync(join(dir, 'cms.sig')), handFormatted('sha256', 'ee'.repeat(32)), certs(dir, 'ec.crt')), /^signed for another digest \(its messageDigest attribute differs\)$/);
    // A certificate embedded is not trusted for being there.
    refused(() => verifyFsverityDigestSignature(readFileSync(join(dir, 'cms.sig')), handFormatted('sha256', hex), certs(dir, 'rsa.crt')), /^no trusted certificate matches its signer \(serial [0-9a-f]+\)$/);
  } finally {
    removeTemp(dir);
  }
});

test('pkcs7: another certificate, another digest, truncated or garbage DER, expired and wrong-purpose certificates: one line each', { skip: MISSING }, () => {
  const dir = makeTemp('pkcs7-bad');
  try {
    makeSigners(dir);
    writeFileSync(join(dir, 'file'), 'hello\n');
    const hex = toolDigest(dir, 'file', 'sha256');
    const formatted = handFormatted('sha256', hex);
    run('fsverity', ['sign', 'file', 'rsa.sig', '--key', 'rsa.key', '--cert', 'rsa.crt'], dir);
    const sig = readFileSync(join(dir, 'rsa.sig'));
    refused(() => verifyFsverityDigestSignature(sig, formatted, certs(dir, 'other.crt')), /^no trusted certificate matches its signer \(serial [0-9a-f]+\)$/);
    refused(() => verifyFsverityDigestSignature(sig, handFormatted('sha256', 'ab'.repeat(32)), certs(dir, 'rsa.crt')), /^bad signature \(not made by the key of certificate "CN=rsa signer" over this digest\)$/);
    refused(() => verifyFsverityDigestSignature(sig.subarray(0, sig.length - 10), formatted, certs(dir, 'rsa.crt')), /^truncated DER at offset 4: SEQUENCE of \d+ bytes, \d+ left$/);
    refused(() => verifyFsverityDigestSignature(Buffer.concat([sig, Buffer.from([0])]), formatted, certs(dir, 'rsa.crt')), /^1 bytes after the DER value at offset \d+$/);
    refused(() => verifyFsverityDigestSignature(Buffer.from('not a signature at all'), formatted, certs(dir, 'rsa.crt')), /^truncated DER at offset 2/);
    refused(() => verifyFsverityDigestSignature(Buffer.alloc(0), formatted, certs(dir, 'rsa.crt')), /^truncated DER at offset 0/);
    refused(() => verifyFsverityDigestSignature(Buffer.from([0x30, 0x80, 0, 0]), formatted, certs(dir, 'rsa.crt')), /^indefinite length at offset 1/);
    refused(() => verifyFsverityDigestSignature(Buffer.from([0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), formatted, certs(dir, 'rsa.crt')), /^truncated DER at offset 6: SEQUENCE of 4294967295 bytes, 0 left$/);
    refused(() => verifyFsverityDigestSignature(Buffer.alloc(20_000, 0x30), formatted, certs(dir, 'rsa.crt')), /^20000 bytes \(a kernel fs-verity signature has at most 16128\)$/);
    // Nested 3000 deep: refused by the shape expected at the top, no recursion into it.
    let deep = Buffer.alloc(0);
    for (let i = 0; i < 3000; i++) deep = Buffer.concat([Buffer.from(deep.length < 128 ? [0x30, deep.length] : [0x30, 0x82, deep.length >> 8, deep.length & 0xff]), deep]);
    refused(() => verifyFsverityDigestSignature(deep, formatted, certs(dir, 'rsa.crt')), /^ContentInfo: 1 elements at offset 0 \(2 expected\)$/);
    // Each byte of the signature flipped in turn: never accepted, never more than one line.
    for (let i = 0; i < sig.length; i += 7) {
      const flipped = Buffer.from(sig);
      flipped[i] ^= 0x01;
      assert.throws(() => verifyFsverityDigestSignature(flipped, formatted, certs(dir, 'rsa.crt')), (err: unknown) => err instanceof SignatureError && !err.message.includes('\n'), `byte ${i}`);
    }
    for (const [name, pattern] of [
      ['expired', /^certificate "CN=expired signer" expired on 2020-01-02T00:00:00Z$/],
      ['ca-only', /^certificate "CN=ca only" is not for signing \(its keyUsage lacks digitalSignature\)$/],
      ['tls', /^certificate "CN=tls only" is not for signing \(its extendedKeyUsage has neither codeSigning nor anyExtendedKeyUsage\)$/],
    ] as const) {
      run('fsverity', ['sign', 'file', `${name}.sig`, '--key', `${name}.key`, '--cert', `${name}.crt`], dir);
      refused(() => verifyFsverityDigestSignature(readFileSync(join(dir, `${name}.sig`)), formatted, certs(dir, `${name}.crt`)), pattern);
    }
    // Not yet valid: the same certificate, checked at a time before it.
    refused(() => verifyFsverityDigestSignature(sig, formatted, certs(dir, 'rsa.crt'), new Date('2001-01-01T00:00:00Z')), /^certificate "CN=rsa signer" is not valid before \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    // Certificate files: garbage, and PEM with several certificates.
    assert.throws(() => parseCertificates(Buffer.from('garbage'), 'x.pem'), /^SignatureError: x\.pem: no certificate in it/);
    const both = parseCertificates(Buffer.concat([readFileSync(join(dir, 'rsa.crt')), readFileSync(join(dir, 'ec.crt'))]), 'both.pem');
    assert.deepEqual(both.map((c) => c.subject), ['CN=rsa signer', 'CN=ec signer']);
    run('openssl', ['x509', '-in', 'ec.crt', '-outform', 'DER', '-out', 'ec.der'], dir);
    assert.equal(certs(dir, 'ec.der')[0].fingerprint, certs(dir, 'ec.crt')[0].fingerprint);
    // Signing with a key that is not the certificate's.
    refused(() => signFsverityDigest(formatted, { key: readFileSync(join(dir, 'other.key')), cert: readFileSync(join(dir, 'rsa.crt')) }), /^the signing key is not the key of certificate "CN=rsa signer"$/);
  } finally {
    removeTemp(dir);
  }
});
