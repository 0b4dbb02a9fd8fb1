/**
 * Sigstore signatures in cosign's format (src/oci/cosign-signature.ts):
 * a signature real cosign made (containers/image's fixture), vectors made
 * here with Node's crypto from cosign's published description (ECDSA P-256
 * over SHA-256 of the payload, ASN.1 DER, base64), what this code signs
 * checked by openssl, and the encrypted private key format against
 * go-securesystemslib's and cosign's published vectors and one built here
 * from the format's description.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { constants, createPublicKey, generateKeyPairSync, randomBytes, scryptSync, sign, verify, type KeyObject } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { xsalsa20poly1305 } from '@noble/ciphers/salsa.js';
import {
  decryptSigstoreEnvelope,
  readSigstorePrivateKey,
  readSigstorePublicKeys,
  signSigstore,
  SIGSTORE_PAYLOAD_MEDIA_TYPE,
  SIGSTORE_SIGNATURE_ANNOTATION,
  verifySigstoreSignature,
} from '../src/oci/cosign-signature.js';
import { SignatureError } from '../src/errors.js';
import { buildSignaturePayload, manifestMatchesDigest, parseSignaturePayload } from '../src/oci/signature-payload.js';
import { repoRoot } from './helpers/paths.js';
import { withTemp } from './helpers/temp.js';

const fixtures = join(repoRoot, 'test', 'fixtures');
const file = (name: string) => ({ what: name, bytes: readFileSync(join(fixtures, name)) });

function refused(fn: () => unknown, pattern: RegExp, label = ''): void {
  assert.throws(fn, (err: unknown) => check(err, pattern, label), label);
}
async function refusedAsync(promise: Promise<unknown>, pattern: RegExp, label = ''): Promise<void> {
  await assert.rejects(promise, (err: unknown) => check(err, pattern, label), label);
}
function check(err: unknown, pattern: RegExp, label: string): true {
  assert.ok(err instanceof SignatureError, `${label}: a SignatureError, got ${String(err)}`);
  assert.equal(err.code, 'signature');
  assert.doesNotMatch(err.message, /\n/, `${label}: one line`);
  assert.match(err.message, pattern, label);
  return true;
}

const publicPem = (key: KeyObject) => ({ what: 'key.pub', bytes: Buffer.from(key.export({ type: 'spki', format: 'pem' }) as string) });

/** containers/image's serialization of a sigstore signature: "\0sigstore-json\n" then JSON. */
function readContainersImageSigstore(name: string): { mimeType: string; payload: Buffer; annotations: Record<string, string> } {
  const blob = readFileSync(join(fixtures, 'containers-image-signature', name));
  assert.equal(blob.subarray(0, 15).toString('latin1'), '\0sigstore-json\n');
  const doc = JSON.parse(blob.subarray(15).toString()) as { mimeType: string; payload: string; annotations: Record<string, string> };
  return { mimeType: doc.mimeType, payload: Buffer.from(doc.payload, 'base64'), annotations: doc.annotations };
}

test('cosign: a signature real cosign made is accepted with its key, refused with another or when anything changed', () => {
  const sig = readContainersImageSigstore('dir-img-cosign-valid/signature-1');
  assert.equal(sig.mimeType, SIGSTORE_PAYLOAD_MEDIA_TYPE);
  const signature = sig.annotations[SIGSTORE_SIGNATURE_ANNOTATION]!;
  const [key] = readSigstorePublicKeys([file('containers-image-signature/cosign.pub')]);
  verifySigstoreSignature(sig.payload, signature, [key!]);
  const [other] = readSigstorePublicKeys([file('containers-image-signature/cosign2.pub')]);
  verifySigstoreSignature(sig.payload, signature, [other!, key!]);
  refused(() => verifySigstoreSignature(sig.payload, signature, [other!]), /^sigstore signature: not a valid signature of the payload by the public key$/);
  const changed = Buffer.from(sig.payload);
  changed[changed.length - 3] ^= 1;
  refused(() => verifySigstoreSignature(changed, signature, [key!]), /not a valid signature/);
  const sigBytes = Buffer.from(signature, 'base64');
  sigBytes[10] ^= 1;
  refused(() => verifySigstoreSignature(sig.payload, sigBytes.toString('base64'), [key!]), /not a valid signature/);
  refused(() => verifySigstoreSignature(sig.payload, signature.slice(0, -4), [key!]), /not a valid signature/);
  refused(() => verifySigstoreSignature(sig.payload, `${signature}!`, [key!]), /not base64/);
  refused(() => verifySigstoreSignature(sig.payload, '', [key!]), /not base64/);
  refused(() => verifySigstoreSignature(sig.payload, 'A'.repeat(9000), [key!]), /longer than 8192/);
  refused(() => verifySigstoreSignature(sig.payload, signature, []), /no public key/);
  // The payload claims the digest of the manifest it came with.
  const claim = parseSignaturePayload(sig.payload, 'sigstore');
  assert.equal(manifestMatchesDigest(readFileSync(join(fixtures, 'containers-image-signature', 'dir-img-cosign-valid', 'manifest.json')), claim.manifestDigest), true);
  // A cosign signature by a key not given.
  const unknown = readContainersImageSigstore('unknown-cosign-key.signature');
  refused(() => verifySigstoreSignature(unknown.payload, unknown.annotations[SIGSTORE_SIGNATURE_ANNOTATION]!, [key!, other!]), /by any of the 2 public keys/);
});

test('cosign: vectors made from the published description (ECDSA P-256 over SHA-256, DER, base64) and the other key types containers/image reads', () => {
  const payload = Buffer.from(`{"critical":{"identity":{"docker-reference":"localhost:5000/a"},"image":{"docker-manifest-digest":"sha256:${'a'.repeat(64)}"},"type":"cosign container image signature"},"optional":null}`);
  const cases: Array<{ name: string; pair: { publicKey: KeyObject; privateKey: KeyObject }; signed: Buffer }> = [];
  for (const namedCurve of ['P-256', 'P-384', 'P-521']) {
    const pair = generateKeyPairSync('ec', { namedCurve });
    // sigstore's verifier hashes with SHA-256 whatever the curve.
    cases.push({ name: namedCurve, pair, signed: sign('sha256', payload, { key: pair.privateKey, dsaEncoding: 'der' }) });
  }
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  cases.push({ name: 'RSA PKCS#1 v1.5', pair: rsa, signed: sign('sha256', payload, rsa.privateKey) });
  const ed = generateKeyPairSync('ed25519');
  cases.push({ name: 'Ed25519', pair: ed, signed: sign(null, payload, ed.privateKey) });
  for (const { name, pair, signed } of cases) {
    const keys = readSigstorePublicKeys([publicPem(pair.publicKey)]);
    verifySigstoreSignature(payload, signed.toString('base64'), keys);
    refused(() => verifySigstoreSignature(Buffer.concat([payload, Buffer.from(' ')]), signed.toString('base64'), keys), /not a valid signature/, name);
    // What this code signs, Node's crypto checks by the description.
    const ours = Buffer.from(signSigstore(payload, pair.privateKey), 'base64');
    const hash = name === 'Ed25519' ? null : 'sha256';
    assert.ok(verify(hash, payload, name.startsWith('P-') ? { key: pair.publicKey, dsaEncoding: 'der' } : pair.publicKey, ours), name);
  }
  // Not what cosign makes: P-384 over SHA-384, raw (IEEE P1363) r||s, RSA-PSS.
  const p384 = cases[1]!.pair;
  const k384 = readSigstorePublicKeys([publicPem(p384.publicKey)]);
  refused(() => verifySigstoreSignature(payload, sign('sha384', payload, { key: p384.privateKey, dsaEncoding: 'der' }).toString('base64'), k384), /not a valid signature/);
  refused(() => verifySigstoreSignature(payload, sign('sha256', payload, { key: p384.privateKey, dsaEncoding: 'ieee-p1363' }).toString('base64'), k384), /not a valid signature/);
  const pss = sign('sha256', payload, { key: rsa.privateKey, padding: constants.RSA_PKCS1_PSS_PADDING });
  refused(() => verifySigstoreSignature(payload, pss.toString('base64'), readSigstorePublicKeys([publicPem(rsa.publicKey)])), /not a valid signature/);
});

test('cosign: public key files: PUBLIC KEY and RSA PUBLIC KEY PEM; other types, curves, sizes and garbage refused in one line', () => {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const pkcs1 = Buffer.from(rsa.publicKey.export({ type: 'pkcs1', format: 'pem' }) as string);
  assert.match(pkcs1.toString(), /BEGIN RSA PUBLIC KEY/);
  assert.equal(readSigstorePublicKeys([{ what: 'rsa.pub', bytes: pkcs1 }])[0]!.asymmetricKeyType, 'rsa');
  assert.equal(readSigstorePublicKeys([file('containers-image-signature/some-rsa-key.pub')])[0]!.asymmetricKeyDetails?.modulusLength, 4096);
  const pem = (what: string, key: KeyObject) => ({ what, bytes: Buffer.from(key.export({ type: 'spki', format: 'pem' }) as string) });
  const bad: Array<[{ what: string; bytes: Buffer }, RegExp]> = [
    [pem('k1.pub', generateKeyPairSync('ec', { namedCurve: 'secp256k1' }).publicKey), /^k1\.pub: ECDSA curve secp256k1 is not P-256, P-384 or P-521$/],
    [pem('p224.pub', generateKeyPairSync('ec', { namedCurve: 'P-224' }).publicKey), /^p224\.pub: ECDSA curve secp224r1 is not/],
    [pem('rsa1024.pub', generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey), /^rsa1024\.pub: RSA key of 1024 bits \(accepted: 2048 to 16384\)$/],
    [pem('x25519.pub', generateKeyPairSync('x25519').publicKey), /^x25519\.pub: x25519 keys are not supported/],
    [{ what: 'priv.pem', bytes: Buffer.from(rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string) }, /^priv\.pem: PEM PRIVATE KEY is not a PUBLIC KEY$/],
    [{ what: 'empty.pub', bytes: Buffer.alloc(0) }, /^empty\.pub: no PEM block in it$/],
    [{ what: 'gpg.pub', bytes: readFileSync(join(fixtures, 'containers-image-signature', 'public-key.gpg')) }, /^gpg\.pub: PEM PGP PUBLIC KEY BLOCK: malformed base64$/],
    [{ what: 'junk.pub', bytes: Buffer.from('-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n') }, /^junk\.pub: not a public key: /],
    [{ what: 'b64.pub', bytes: Buffer.from('-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n') }, /^b64\.pub: PEM PUBLIC KEY: malformed base64$/],
    [{ what: 'huge.pub', bytes: Buffer.alloc(1024 * 1024 + 1, 0x41) }, /^huge\.pub: larger than 1048576 bytes/],
  ];
  for (const [input, pattern] of bad) refused(() => readSigstorePublicKeys([input]), pattern, input.what);
});

test('cosign: a key file of many BEGIN lines and no END is refused in time linear in its size (no rescan per BEGIN)', () => {
  // 1 MiB (the bound) of BEGIN lines: a lazy BEGIN…END match rescanned the rest of the file for each, about 20 s.
  const line = '-----BEGIN PUBLIC KEY-----\n';
  const bytes = Buffer.from(line.repeat(Math.floor((1024 * 1024) / line.length)));
  const started = performance.now();
  refused(() => readSigstorePublicKeys([{ what: 'begins.pub', bytes }]), /^begins\.pub: no PEM block in it$/, 'begins.pub');
  // The same with one END of another type at the very end, and for the private key reader.
  const mixed = Buffer.concat([bytes.subarray(0, bytes.length - 64), Buffer.from('-----END OTHER-----\n')]);
  refused(() => readSigstorePublicKeys([{ what: 'mixed.pub', bytes: mixed }]), /^mixed\.pub: no PEM block in it$/, 'mixed.pub');
  const ms = performance.now() - started;
  assert.ok(ms < 2000, `refusing two 1 MiB files of BEGIN lines took ${Math.round(ms)} ms`);
  // A block after many unmatched BEGINs of another type is still found.
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey;
  const late = Buffer.concat([Buffer.from('-----BEGIN JUNK-----\n'.repeat(1000)), Buffer.from(ec.export({ type: 'spki', format: 'pem' }) as string)]);
  assert.equal(readSigstorePublicKeys([{ what: 'late.pub', bytes: late }]).length, 1);
});

test('cosign: what this code signs, openssl verifies', () => {
  withTemp('cosign', (dir) => {
    const payload = buildSignaturePayload({ dockerReference: 'localhost:5000/x:y', manifestDigest: `sha256:${'b'.repeat(64)}` }, 'sigstore', { creator: 't', timestamp: 1 });
    const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    writeFileSync(join(dir, 'payload'), payload);
    writeFileSync(join(dir, 'key.pub'), pair.publicKey.export({ type: 'spki', format: 'pem' }) as string);
    writeFileSync(join(dir, 'sig'), Buffer.from(signSigstore(payload, pair.privateKey), 'base64'));
    const r = spawnSync('openssl', ['dgst', '-sha256', '-verify', join(dir, 'key.pub'), '-signature', join(dir, 'sig'), join(dir, 'payload')], { timeout: 30_000 });
    assert.equal(r.status, 0, r.stderr.toString());
    assert.match(r.stdout.toString(), /Verified OK/);
    writeFileSync(join(dir, 'payload'), Buffer.concat([payload, Buffer.from('\n')]));
    assert.notEqual(spawnSync('openssl', ['dgst', '-sha256', '-verify', join(dir, 'key.pub'), '-signature', join(dir, 'sig'), join(dir, 'payload')], { timeout: 30_000 }).status, 0);
  });
  refused(() => signSigstore(Buffer.from('x'), generateKeyPairSync('ed25519').publicKey), /not a private key/);
});

test("cosign: the encrypted envelope: go-securesystemslib's published vectors decrypt, a wrong passphrase or a changed byte is one line", async () => {
  // encrypted_test.go: kdfVectors (legacy, standard, OWASP scrypt parameters; encrypted.Marshal of the
  // bytes, so their plaintext is a JSON string of their base64) and TestDecrypt (the bytes themselves).
  const vectors = [
    '{"kdf":{"name":"scrypt","params":{"N":32768,"r":8,"p":1},"salt":"WO3mVvyTwJ9vwT5/Tk5OW5WPIBUofMjcpEfrLnfY4uA="},"cipher":{"name":"nacl/secretbox","nonce":"tCy7HcTFr4uxv4Nrg/DWmncuZ148U1MX"},"ciphertext":"08n43p5G5yviPEZpO7tPPF4aZQkWiWjkv4taFdhDBA0tamKH4nw="}',
    '{"kdf":{"name":"scrypt","params":{"N":65536,"r":8,"p":1},"salt":"FhzPOt9/bJG4PTq6lQ6ecG6GzaOuOy/ynG5+yRiFlNs="},"cipher":{"name":"nacl/secretbox","nonce":"aw1ng1jHaDz/tQ7V2gR9O2+IGQ8xJEuE"},"ciphertext":"HycvuLZL4sYH0BrYTh4E/H20VtAW6u5zL5Pr+IBjYLYnCPzDkq8="}',
    '{"kdf":{"name":"scrypt","params":{"N":131072,"r":8,"p":1},"salt":"m38E3kouJTtiheLQN22NQ8DTito5hrjpUIskqcd375k="},"cipher":{"name":"nacl/secretbox","nonce":"Y6PM13yA+o44pE/W1ZBwczeGnTV/m9Zc"},"ciphertext":"6H8sqj1K6B6yDjtH5AQ6lbFigg/C2yDDJc4rYJ79w9aVPImFIPI="}',
    '{"kdf":{"name":"scrypt","params":{"N":32768,"r":8,"p":1},"salt":"N9a7x5JFGbrtB2uBR81jPwp0eiLR4A7FV3mjVAQrg1g="},"cipher":{"name":"nacl/secretbox","nonce":"2h8HxMmgRfuYdpswZBQaU3xJ1nkA/5Ik"},"ciphertext":"SEW6sUh0jf2wfdjJGPNS9+bkk2uB+Cxamf32zR8XkQ=="}',
  ];
  const marshalled = Buffer.from(JSON.stringify(Buffer.from('reallyimportant').toString('base64')));
  const expected = [marshalled, marshalled, marshalled, Buffer.from('reallyimportant')];
  for (const [i, v] of vectors.entries()) assert.deepEqual(await decryptSigstoreEnvelope(Buffer.from(v), 'supersecret'), expected[i]);
  await refusedAsync(decryptSigstoreEnvelope(Buffer.from(vectors[0]!), 'supersecreT', 'k.key'), /^k\.key: cannot decrypt it: wrong passphrase, or the file was changed$/);
  const doc = JSON.parse(vectors[0]!) as { kdf: { params: { N: number } }; ciphertext: string; cipher: { nonce: string; name: string } };
  const changed = Buffer.from(doc.ciphertext, 'base64');
  changed[0] ^= 1;
  await refusedAsync(decryptSigstoreEnvelope(Buffer.from(JSON.stringify({ ...doc, ciphertext: changed.toString('base64') })), 'supersecret'), /cannot decrypt it/);
  // Parameters go-securesystemslib does not accept are refused before any scrypt work (2^22 would take seconds and 4 GiB).
  const costly = JSON.parse(vectors[0]!);
  costly.kdf.params.N = 4194304;
  const started = performance.now();
  await refusedAsync(decryptSigstoreEnvelope(Buffer.from(JSON.stringify(costly)), 'supersecret'), /scrypt parameters \{"N":4194304,"r":8,"p":1\} are not ones cosign uses/);
  assert.ok(performance.now() - started < 1000);
  const otherCipher = JSON.parse(vectors[0]!);
  otherCipher.cipher.name = 'aes-gcm';
  await refusedAsync(decryptSigstoreEnvelope(Buffer.from(JSON.stringify(otherCipher)), 'supersecret'), /cipher "aes-gcm" is not "nacl\/secretbox"/);
  const shortNonce = JSON.parse(vectors[0]!);
  shortNonce.cipher.nonce = 'AAAA';
  await refusedAsync(decryptSigstoreEnvelope(Buffer.from(JSON.stringify(shortNonce)), 'supersecret'), /cipher\.nonce: 3 bytes, not 24/);
  await refusedAsync(decryptSigstoreEnvelope(Buffer.from('not json'), 'x'), /not JSON/);
  await refusedAsync(decryptSigstoreEnvelope(Buffer.from('{"kdf":{}}'), 'x'), /field "cipher" missing/);
});

test("cosign: cosign's published encrypted keys are read with their passphrase and sign what their public key verifies", async () => {
  for (const name of ['cosign/sigstore.key', 'cosign/cosign-labelled.key']) {
    const key = await readSigstorePrivateKey(file(name), 'hello');
    assert.equal(key.type, 'private');
    const payload = buildSignaturePayload({ dockerReference: 'localhost:5000/a', manifestDigest: `sha256:${'c'.repeat(64)}` }, 'sigstore');
    const signature = signSigstore(payload, key);
    const publicKeys = readSigstorePublicKeys([{ what: `${name}.pub`, bytes: Buffer.from(createPublicKey(key).export({ type: 'spki', format: 'pem' }) as string) }]);
    verifySigstoreSignature(payload, signature, publicKeys);
    await refusedAsync(readSigstorePrivateKey(file(name), 'hellO'), new RegExp(`^${name.replace(/[./]/g, '\\$&')}: cannot decrypt it: wrong passphrase, or the file was changed$`));
  }
  // cosign refuses it too: its plaintext is a SEC 1 EC key, not PKCS #8.
  await refusedAsync(readSigstorePrivateKey(file('cosign/cosign-ec-sec1.key'), 'hello'), /^cosign\/cosign-ec-sec1\.key: the decrypted key is not a PKCS #8 private key$/);
});


/**
 * An encrypted key file made here from the format's description, not by the
 * code under test: PKCS #8 DER, secretbox-sealed (XSalsa20-Poly1305) under
 * scrypt(passphrase, salt, N (2^15: go-securesystemslib's legacy parameters, the cheapest it reads), r=8, p=1, 32 bytes), the JSON envelope
 * with standard base64 fields, base64 again inside the PEM block.
 */
function encryptedKeyFile(privateKey: KeyObject, passphrase: string, type = 'ENCRYPTED SIGSTORE PRIVATE KEY', N = 32768): Buffer {
  const der = privateKey.export({ type: 'pkcs8', format: 'der' });
  const salt = randomBytes(32);
  const nonce = randomBytes(24);
  const key = scryptSync(passphrase, salt, 32, { N, r: 8, p: 1, maxmem: 256 * 1024 * 1024 });
  const ciphertext = Buffer.from(xsalsa20poly1305(key, nonce).encrypt(der));
  const envelope = JSON.stringify({
    kdf: { name: 'scrypt', params: { N, r: 8, p: 1 }, salt: salt.toString('base64') },
    cipher: { name: 'nacl/secretbox', nonce: nonce.toString('base64') },
    ciphertext: ciphertext.toString('base64'),
  });
  const body = Buffer.from(envelope).toString('base64').replace(/.{64}/g, '$&\n');
  return Buffer.from(`-----BEGIN ${type}-----\n${body}\n-----END ${type}-----\n`);
}

test('cosign: an encrypted key built from the published format round-trips: read, sign, verify; wrong passphrase and wrong types refused', async () => {
  for (const [kind, pair] of [
    ['P-256', generateKeyPairSync('ec', { namedCurve: 'P-256' })],
    ['RSA', generateKeyPairSync('rsa', { modulusLength: 2048 })],
    ['Ed25519', generateKeyPairSync('ed25519')],
  ] as const) {
    for (const type of ['ENCRYPTED SIGSTORE PRIVATE KEY', 'ENCRYPTED COSIGN PRIVATE KEY']) {
      const bytes = encryptedKeyFile(pair.privateKey, 'pässphrase', type);
      const key = await readSigstorePrivateKey({ what: 'cosign.key', bytes }, 'pässphrase');
      const payload = Buffer.from('payload');
      verifySigstoreSignature(payload, signSigstore(payload, key), readSigstorePublicKeys([publicPem(pair.publicKey)]));
      // Also given as bytes, as a passphrase file holds it.
      await readSigstorePrivateKey({ what: 'cosign.key', bytes }, Buffer.from('pässphrase'));
      await refusedAsync(readSigstorePrivateKey({ what: 'cosign.key', bytes }, 'passphrase'), /^cosign\.key: cannot decrypt it: wrong passphrase, or the file was changed$/, kind);
    }
  }
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  await refusedAsync(readSigstorePrivateKey({ what: 'plain.key', bytes: Buffer.from(ec.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string) }, 'x'), /^plain\.key: PEM PRIVATE KEY is not an ENCRYPTED SIGSTORE PRIVATE KEY$/);
  await refusedAsync(readSigstorePrivateKey({ what: 'other.key', bytes: encryptedKeyFile(ec.privateKey, 'x', 'ENCRYPTED PRIVATE KEY') }, 'x'), /^other\.key: PEM ENCRYPTED PRIVATE KEY is not an ENCRYPTED SIGSTORE PRIVATE KEY$/);
  await refusedAsync(readSigstorePrivateKey({ what: 'k1.key', bytes: encryptedKeyFile(generateKeyPairSync('ec', { namedCurve: 'secp256k1' }).privateKey, 'x') }, 'x'), /^k1\.key: ECDSA curve secp256k1 is not/);
  await refusedAsync(readSigstorePrivateKey({ what: 'n.key', bytes: encryptedKeyFile(ec.privateKey, 'x', undefined, 16384) }, 'x'), /^n\.key: scrypt parameters \{"N":16384,"r":8,"p":1\} are not ones cosign uses$/);
  await refusedAsync(readSigstorePrivateKey({ what: 'empty.key', bytes: Buffer.alloc(0) }, 'x'), /^empty\.key: no PEM block in it$/);
  await refusedAsync(readSigstorePrivateKey({ what: 'huge.key', bytes: Buffer.alloc(1024 * 1024 + 1) }, 'x'), /^huge\.key: larger than 1048576 bytes/);
});
