/**
 * Simple signing signatures (src/oci/openpgp-signature.ts) against real gpg
 * and containers/image's fixtures: what gpg signs (compressed or not, by a
 * primary key or a subkey) is read back with its payload and key; what this
 * code signs, gpg verifies and decrypts to the payload; other keys, expired
 * and revoked keys, changed, truncated and garbage signatures are refused in
 * one line.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readOpenPgpKeyring, signSimpleSigning, verifySimpleSigningSignature, type OpenPgpKeyring } from '../src/oci/openpgp-signature.js';
import { SignatureError } from '../src/errors.js';
import { buildSignaturePayload, manifestMatchesDigest, parseSignaturePayload } from '../src/oci/signature-payload.js';
import { makeTemp, removeTemp } from './helpers/temp.js';
import { repoRoot } from './helpers/paths.js';

const fixtures = join(repoRoot, 'test', 'fixtures', 'containers-image-signature');
const fixture = (name: string) => ({ what: name, bytes: readFileSync(join(fixtures, name)) });

const PAYLOAD = Buffer.from('{"critical":{"identity":{"docker-reference":"localhost:5000/test:latest"},"image":{"docker-manifest-digest":"sha256:20bf21ed457b390829cdbeec8795a7bea1626991fda603e0d01b4e7f60427e55"},"type":"atomic container signature"},"optional":{"creator":"test"}}');

let home: string;
let scratch: string;

function gpg(args: string[], input?: Uint8Array): Buffer {
  const r = spawnSync('gpg', ['--batch', '--no-tty', '--pinentry-mode', 'loopback', ...args], {
    env: { ...process.env, GNUPGHOME: home },
    input,
    timeout: 120_000,
    maxBuffer: 64 * 1024 * 1024,
  });
  if (r.status !== 0) throw new Error(`gpg ${args.join(' ')}: status ${r.status}: ${r.stderr?.toString()}`);
  return r.stdout;
}

/** gpg's own answer: status, the status-fd lines and what it wrote. */
function gpgVerify(args: string[], input: Uint8Array): { status: number | null; statusLines: string; stdout: Buffer } {
  const r = spawnSync('gpg', ['--batch', '--no-tty', '--status-fd', '2', ...args], { env: { ...process.env, GNUPGHOME: home }, input, timeout: 60_000 });
  return { status: r.status, statusLines: r.stderr.toString(), stdout: r.stdout };
}

/** The primary fingerprint of the key gpg just made for `uid`. */
function fingerprintOf(uid: string): string {
  const colons = gpg(['--with-colons', '--list-keys', `=${uid}`]).toString().split('\n');
  const fpr = colons.find((l) => l.startsWith('fpr:'));
  assert.ok(fpr, `a fingerprint for ${uid}`);
  return fpr.split(':')[9]!;
}

function subkeyFingerprintsOf(uid: string): string[] {
  const lines = gpg(['--with-colons', '--list-keys', `=${uid}`]).toString().split('\n');
  const out: string[] = [];
  lines.forEach((l, i) => {
    if (l.startsWith('sub:')) out.push(lines[i + 1]!.split(':')[9]!);
  });
  return out;
}

const keys: Record<string, string> = {};

before(() => {
  home = makeTemp('gpghome', 0o700);
  scratch = makeTemp('gpgsig');
  const make = (name: string, args: string[]) => {
    gpg(['--passphrase', name === 'locked' ? 'sekrit' : '', '--quick-gen-key', `${name} <${name}@example.com>`, ...args]);
    keys[name] = fingerprintOf(`${name} <${name}@example.com>`);
  };
  make('ed', ['ed25519', 'sign,cert', 'never']);
  make('rsa', ['rsa2048', 'sign,cert', 'never']);
  make('other', ['ed25519', 'sign,cert', 'never']);
  make('locked', ['ed25519', 'sign,cert', 'never']);
  // A certification-only primary with a signing subkey: gpg signs with the subkey.
  make('sub', ['ed25519', 'cert', 'never']);
  gpg(['--passphrase', '', '--quick-add-key', keys.sub!, 'ed25519', 'sign', 'never']);
  // A key revoked after it signed: gpg's own revocation certificate, imported.
  make('revoked', ['ed25519', 'sign,cert', 'never']);
});

after(() => {
  spawnSync('gpgconf', ['--kill', 'all'], { env: { ...process.env, GNUPGHOME: home }, timeout: 30_000 });
  removeTemp(home);
  removeTemp(scratch);
});

function exported(...names: string[]): Buffer {
  return gpg(['--export', ...names.map((n) => keys[n]!)]);
}

async function keyringOf(...names: string[]): Promise<OpenPgpKeyring> {
  return readOpenPgpKeyring([{ what: 'keyring', bytes: exported(...names) }]);
}

function signWithGpg(name: string, extra: string[] = [], payload: Uint8Array = PAYLOAD): Buffer {
  return gpg(['--passphrase', name === 'locked' ? 'sekrit' : '', '--local-user', keys[name]!, ...extra, '--sign'], payload);
}

async function refused(promise: Promise<unknown>, pattern: RegExp, label = ''): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof SignatureError, `${label}: a SignatureError, got ${String(err)}`);
    assert.equal(err.code, 'signature');
    assert.doesNotMatch(err.message, /\n/, `${label}: one line`);
    assert.match(err.message, pattern, label);
    return true;
  }, label);
}

test('openpgp: what gpg signs, compressed any way, is verified and gives the payload and the primary key', async () => {
  const keyring = await keyringOf('ed', 'rsa', 'sub');
  assert.deepEqual(keyring.fingerprints, [keys.ed, keys.rsa, keys.sub]);
  for (const name of ['ed', 'rsa'] as const) {
    for (const compression of [[], ['--compress-algo', 'zlib'], ['--compress-algo', 'zip'], ['--compress-algo', 'bzip2'], ['--compress-algo', 'none'], ['-z', '0']]) {
      const signature = signWithGpg(name, compression);
      const verified = await verifySimpleSigningSignature(signature, keyring);
      assert.deepEqual(verified.payload, PAYLOAD, `${name} ${compression.join(' ')}`);
      assert.equal(verified.fingerprint, keys[name]);
      assert.equal(verified.signingKeyFingerprint, keys[name]);
    }
  }
  // By the signing subkey: the identity is the primary key's, as containers/image names it.
  const bySubkey = await verifySimpleSigningSignature(signWithGpg('sub'), keyring);
  assert.equal(bySubkey.fingerprint, keys.sub);
  assert.deepEqual([bySubkey.signingKeyFingerprint], subkeyFingerprintsOf(`sub <sub@example.com>`));
  assert.notEqual(bySubkey.signingKeyFingerprint, keys.sub);
});

test('openpgp: keyrings binary and armored, several keys and several blocks per file', async () => {
  const armoredTwo = Buffer.concat([gpg(['--export', '--armor', keys.ed!]), Buffer.from('\n'), gpg(['--export', '--armor', keys.rsa!])]);
  const keyring = await readOpenPgpKeyring([
    { what: 'two.asc', bytes: armoredTwo },
    { what: 'sub.gpg', bytes: exported('sub') },
  ]);
  assert.deepEqual(keyring.fingerprints, [keys.ed, keys.rsa, keys.sub]);
  for (const name of ['ed', 'rsa', 'sub']) assert.equal((await verifySimpleSigningSignature(signWithGpg(name), keyring)).fingerprint, keys[name]);
  // A secret key export is read as its public half.
  const fromSecret = await readOpenPgpKeyring([{ what: 'secret.gpg', bytes: gpg(['--passphrase', '', '--export-secret-keys', keys.ed!]) }]);
  assert.equal((await verifySimpleSigningSignature(signWithGpg('ed'), fromSecret)).fingerprint, keys.ed);
  // containers/image's fixtures: armored (public-key.gpg) and binary (pubring.gpg).
  assert.deepEqual((await readOpenPgpKeyring([fixture('public-key.gpg')])).fingerprints, ['08CD26E446E2E95249B7A405E932F44B23E8DD43']);
  assert.ok((await readOpenPgpKeyring([fixture('pubring.gpg')])).fingerprints.includes('B9F4CDB9FD8C475BFA340AC38D54A947EE396F36'));
  for (const [what, bytes, pattern] of [
    ['empty.gpg', Buffer.alloc(0), /^empty\.gpg: no OpenPGP public key in it$/],
    ['garbage.gpg', randomBytes(512), /^garbage\.gpg: not an OpenPGP keyring: /],
    ['truncated.gpg', exported('ed').subarray(0, 50), /^truncated\.gpg: not an OpenPGP keyring: /],
    ['cosign.pub', readFileSync(join(fixtures, 'cosign.pub')), /^cosign\.pub: (no OpenPGP public key in it|not an OpenPGP keyring: )/],
    ['huge.gpg', Buffer.alloc(16 * 1024 * 1024 + 1), /^huge\.gpg: larger than 16777216 bytes/],
  ] as const) {
    await refused(readOpenPgpKeyring([{ what, bytes }]), pattern, what);
  }
});

test('openpgp: an armored keyring of many BEGIN lines and no END is refused in time linear in its size', async () => {
  // 2 MiB of BEGIN lines: a lazy BEGIN…END match rescanned the rest for each, about 16 s (the 16 MiB bound: minutes).
  const line = '-----BEGIN PGP PUBLIC KEY BLOCK-----\n';
  const bytes = Buffer.from(line.repeat(Math.floor((2 * 1024 * 1024) / line.length)));
  const started = performance.now();
  await refused(readOpenPgpKeyring([{ what: 'begins.asc', bytes }]), /^begins\.asc: no OpenPGP public key in it$/, 'begins.asc');
  const ms = performance.now() - started;
  assert.ok(ms < 2000, `refusing 2 MiB of BEGIN lines took ${Math.round(ms)} ms`);
  // Blocks after unmatched BEGINs are still read.
  const late = Buffer.concat([Buffer.from(line.repeat(1000)), Buffer.from('-----END PGP PRIVATE KEY BLOCK-----\n'), gpg(['--export', '--armor', keys.ed!])]);
  assert.deepEqual((await readOpenPgpKeyring([{ what: 'late.asc', bytes: late }])).fingerprints, [keys.ed]);
});

test('openpgp: another key, several signatures, changed, truncated, garbage, unsigned and oversized messages are refused in one line', async () => {
  const keyring = await keyringOf('ed');
  await refused(verifySimpleSigningSignature(signWithGpg('other'), keyring, 'sig-other'), new RegExp(`^sig-other: signed by key ID ${keys.other!.slice(-16)}, which is not one of the 1 trusted keys$`));
  const both = gpg(['--passphrase', '', '--local-user', keys.ed!, '--local-user', keys.rsa!, '--sign'], PAYLOAD);
  await refused(verifySimpleSigningSignature(both, await keyringOf('ed', 'rsa')), /^signature: 2 signatures in the message, expected exactly 1$/);

  const plain = signWithGpg('ed', ['--compress-algo', 'none']);
  const at = plain.indexOf(Buffer.from('docker-reference'));
  assert.ok(at > 0);
  const changed = Buffer.from(plain);
  changed[at] ^= 0x20;
  await refused(verifySimpleSigningSignature(changed, keyring), /^signature: (signature by key ID [0-9A-F]{16} is not valid|not an OpenPGP signed message): .*(did not match|verification failed)/i);
  const compressed = signWithGpg('ed', ['--compress-algo', 'zlib']);
  for (const cut of [1, 10, compressed.length >> 1, compressed.length - 1]) {
    await refused(verifySimpleSigningSignature(compressed.subarray(0, cut), keyring), /^signature: /, `cut at ${cut}`);
  }
  const flipped = Buffer.from(compressed);
  flipped[flipped.length >> 1] ^= 0x01;
  await refused(verifySimpleSigningSignature(flipped, keyring), /^signature: /, 'compressed, one bit changed');
  await refused(verifySimpleSigningSignature(randomBytes(300), keyring), /^signature: not an OpenPGP signed message: /);
  await refused(verifySimpleSigningSignature(Buffer.alloc(0), keyring), /^signature: empty$/);
  // Not signed: literal data only, and an encrypted message.
  const literal = gpg(['--store'], PAYLOAD);
  await refused(verifySimpleSigningSignature(literal, keyring), /^signature: no signature in the message that can be read/);
  const encrypted = gpg(['--passphrase', 'x', '--symmetric'], PAYLOAD);
  await refused(verifySimpleSigningSignature(encrypted, keyring), /^signature: not an OpenPGP signed message: /);
  // Armored signatures are not what containers/image's lookaside holds.
  await refused(verifySimpleSigningSignature(gpg(['--passphrase', '', '--local-user', keys.ed!, '--armor', '--sign'], PAYLOAD), keyring), /^signature: not an OpenPGP signed message: /);
  // A compression bomb: 8 MiB of zeros signed and compressed into a few kilobytes; inflated only up to 4 MiB.
  const bomb = signWithGpg('ed', ['--compress-algo', 'zlib', '-z', '9'], Buffer.alloc(8 * 1024 * 1024));
  assert.ok(bomb.length < 64 * 1024);
  await refused(verifySimpleSigningSignature(bomb, keyring), /^signature: not an OpenPGP signed message: .*(size|larger|exceed)/i);
  await refused(verifySimpleSigningSignature(Buffer.alloc(4 * 1024 * 1024 + 1, 0xa3), keyring), /^signature: larger than 4194304 bytes$/);
});

test('openpgp: keys expired or revoked since they signed are refused, as gpgme refuses them', async () => {
  // Made and used in 2020 (gpg's faked clock, in a home of its own), expired a day later.
  const expiredHome = makeTemp('gpgexp', 0o700);
  try {
    const run = (args: string[], input?: Uint8Array) => {
      const r = spawnSync('gpg', ['--batch', '--no-tty', '--pinentry-mode', 'loopback', '--passphrase', '', '--faked-system-time', '20200101T120000!', ...args], {
        env: { ...process.env, GNUPGHOME: expiredHome },
        input,
        timeout: 60_000,
      });
      if (r.status !== 0) throw new Error(`gpg ${args.join(' ')}: ${r.stderr.toString()}`);
      return r.stdout;
    };
    run(['--quick-gen-key', 'old <old@example.com>', 'ed25519', 'sign,cert', '1d']);
    const signature = run(['--local-user', '=old <old@example.com>', '--sign'], PAYLOAD);
    const fingerprint = run(['--with-colons', '--list-keys', '=old <old@example.com>']).toString().split('\n').find((l) => l.startsWith('fpr:'))!.split(':')[9]!;
    const keyring = await readOpenPgpKeyring([{ what: 'old.gpg', bytes: run(['--export', '=old <old@example.com>']) }]);
    await refused(verifySimpleSigningSignature(signature, keyring), new RegExp(`^signature: signing key [0-9A-F]{16} of ${fingerprint} is not valid now: .*expired`, 'i'));
  } finally {
    spawnSync('gpgconf', ['--kill', 'all'], { env: { ...process.env, GNUPGHOME: expiredHome }, timeout: 30_000 });
    removeTemp(expiredHome);
  }

  const before = signWithGpg('revoked');
  const keyringBefore = await keyringOf('revoked');
  assert.equal((await verifySimpleSigningSignature(before, keyringBefore)).fingerprint, keys.revoked);
  const certificate = readFileSync(join(home, 'openpgp-revocs.d', `${keys.revoked}.rev`), 'latin1').replace(/^:-----BEGIN/m, '-----BEGIN');
  gpg(['--import'], Buffer.from(certificate));
  await refused(verifySimpleSigningSignature(before, await keyringOf('revoked')), /^signature: (signature by key ID [0-9A-F]{16} is not valid|signing key [0-9A-F]{16} of [0-9A-F]{40} is not valid now): .*revoked/i);

  // containers/image's fixtures.
  const pub = await readOpenPgpKeyring([fixture('public-key.gpg')]);
  await refused(verifySimpleSigningSignature(fixture('expired.signature').bytes, pub), /^signature: .*expired/i);
});

test("openpgp: containers/image's fixtures verify or are refused as containers/image's tests expect", async () => {
  const pub = await readOpenPgpKeyring([fixture('public-key.gpg')]);
  const image = await verifySimpleSigningSignature(fixture('image.signature').bytes, pub);
  assert.equal(image.fingerprint, '08CD26E446E2E95249B7A405E932F44B23E8DD43');
  assert.match(image.payload.toString(), /^\{"critical":\{"identity":\{"docker-reference":"testing\/manifest"\}/);
  assert.deepEqual((await verifySimpleSigningSignature(fixture('invalid-blob.signature').bytes, pub)).payload, Buffer.from('This is not JSON\n'));
  const withSubkey = await readOpenPgpKeyring([fixture('public-key-with-subkey.gpg')]);
  const sub = await verifySimpleSigningSignature(fixture('subkey.signature').bytes, withSubkey);
  assert.equal(sub.fingerprint, 'B9F4CDB9FD8C475BFA340AC38D54A947EE396F36');
  assert.equal(sub.signingKeyFingerprint, '57D1D95BBC53BA0EAFF0718CD75B3109B3BAAEAF');
  assert.equal(
    sub.payload.toString(),
    '{"critical":{"identity":{"docker-reference":"testing/manifest:latest"},"image":{"docker-manifest-digest":"sha256:20bf21ed457b390829cdbeec8795a7bea1626991fda603e0d01b4e7f60427e55"},"type":"atomic container signature"},"optional":{}}',
  );
  const all = await readOpenPgpKeyring([fixture('pubring.gpg')]);
  for (const name of ['corrupt.signature', 'corrupt.signature-v3', 'unknown-key.signature', 'subkey-revoked.signature', 'unsigned-literal.signature', 'unsigned-encrypted.signature', 'expired.signature']) {
    await refused(verifySimpleSigningSignature(fixture(name).bytes, all, name), new RegExp(`^${name.replace('.', '\\.')}: `), name);
  }
  await refused(verifySimpleSigningSignature(fixture('image.signature').bytes, withSubkey), /not one of the 1 trusted keys/);
  // Version 3 signature packets (gpg before 2.1) are not read by OpenPGP.js: refused, where containers/image accepts them.
  await refused(verifySimpleSigningSignature(fixture('subkey.signature-v3').bytes, all), /^signature: no signature in the message that can be read \(not signed, or signed in the version 3 format/);
});

test('openpgp: what this code signs, gpg verifies and decrypts to the payload; this code reads it back', async () => {
  for (const name of ['ed', 'rsa', 'sub', 'locked']) {
    const passphrase = name === 'locked' ? 'sekrit' : undefined;
    const secret = gpg(['--passphrase', passphrase ?? '', '--armor', '--export-secret-keys', keys[name]!]);
    const signature = await signSimpleSigning(PAYLOAD, { what: `${name}.asc`, bytes: secret }, passphrase);
    const file = join(scratch, `${name}.sig`);
    writeFileSync(file, signature);
    const verified = gpgVerify(['--verify', file], new Uint8Array());
    assert.equal(verified.status, 0, verified.statusLines);
    assert.match(verified.statusLines, new RegExp(`\\[GNUPG:\\] VALIDSIG [0-9A-F]{40} .* ${keys[name]}\\n`));
    assert.match(verified.statusLines, /\[GNUPG:\] GOODSIG /);
    const decrypted = gpgVerify(['--decrypt'], signature);
    assert.equal(decrypted.status, 0, decrypted.statusLines);
    assert.deepEqual(decrypted.stdout, PAYLOAD);
    const back = await verifySimpleSigningSignature(signature, await keyringOf(name));
    assert.deepEqual(back.payload, PAYLOAD);
    assert.equal(back.fingerprint, keys[name]);
  }
  // gpg notices a changed byte in it.
  const signature = await signSimpleSigning(PAYLOAD, { what: 'ed.asc', bytes: gpg(['--passphrase', '', '--armor', '--export-secret-keys', keys.ed!]) });
  const changed = Buffer.from(signature);
  changed[changed.indexOf(Buffer.from('docker-reference'))] ^= 0x20;
  assert.notEqual(gpgVerify(['--decrypt'], changed).status, 0);
});

test('openpgp: signing refuses a wrong or missing passphrase, a public key, several keys, garbage, in one line', async () => {
  const locked = { what: 'locked.asc', bytes: gpg(['--passphrase', 'sekrit', '--armor', '--export-secret-keys', keys.locked!]) };
  await refused(signSimpleSigning(PAYLOAD, locked, 'wrong'), /^locked\.asc: cannot unlock the key: .*passphrase/i);
  await refused(signSimpleSigning(PAYLOAD, locked), /^locked\.asc: the key is protected by a passphrase and none was given$/);
  await refused(signSimpleSigning(PAYLOAD, { what: 'public.asc', bytes: gpg(['--armor', '--export', keys.ed!]) }), /^public\.asc: not an OpenPGP secret key: /);
  const two = gpg(['--passphrase', '', '--armor', '--export-secret-keys', keys.ed!, keys.rsa!]);
  await refused(signSimpleSigning(PAYLOAD, { what: 'two.asc', bytes: two }), /^two\.asc: 2 secret keys in the file, expected exactly 1$/);
  await refused(signSimpleSigning(PAYLOAD, { what: 'junk.asc', bytes: randomBytes(200) }), /^junk\.asc: not an OpenPGP secret key: /);
});

test("openpgp: skopeo (containers/image with gpgme) accepts what this code signs, and this code accepts what skopeo signs", async () => {
  const manifestFile = join(fixtures, 'image.manifest.json');
  const manifest = readFileSync(manifestFile);
  const digest = 'sha256:20bf21ed457b390829cdbeec8795a7bea1626991fda603e0d01b4e7f60427e55';
  const reference = 'localhost:5000/signed/image:tag';
  const skopeo = (args: string[]) => spawnSync('skopeo', args, { env: { ...process.env, GNUPGHOME: home }, timeout: 60_000 });
  writeFileSync(join(scratch, 'passphrase'), 'sekrit');
  for (const name of ['ed', 'rsa', 'sub', 'locked']) {
    // skopeo → this code.
    const out = join(scratch, `skopeo-${name}.sig`);
    const signed = skopeo(['standalone-sign', ...(name === 'locked' ? ['--passphrase-file', join(scratch, 'passphrase')] : []), manifestFile, reference, keys[name]!, '-o', out]);
    assert.equal(signed.status, 0, signed.stderr.toString());
    const verified = await verifySimpleSigningSignature(readFileSync(out), await keyringOf(name));
    assert.equal(verified.fingerprint, keys[name]);
    const claim = parseSignaturePayload(verified.payload, 'simple-signing');
    assert.equal(claim.dockerReference, reference);
    assert.equal(claim.manifestDigest, digest);
    assert.equal(manifestMatchesDigest(manifest, claim.manifestDigest), true);

    // This code → skopeo.
    const passphrase = name === 'locked' ? 'sekrit' : undefined;
    const secret = gpg(['--passphrase', passphrase ?? '', '--armor', '--export-secret-keys', keys[name]!]);
    const payload = buildSignaturePayload({ dockerReference: reference, manifestDigest: digest }, 'simple-signing', { creator: 'composefs-ts test', timestamp: 1700000000 });
    const ours = join(scratch, `ours-${name}.sig`);
    writeFileSync(ours, await signSimpleSigning(payload, { what: `${name}.asc`, bytes: secret }, passphrase));
    // skopeo 1.9 (Debian's) names a signature by the key that made it: for a signing subkey, the subkey's
    // fingerprint (later containers/image versions also accept the primary's).
    const expected = name === 'sub' ? subkeyFingerprintsOf('sub <sub@example.com>')[0]! : keys[name]!;
    const accepted = skopeo(['standalone-verify', manifestFile, reference, expected, ours]);
    assert.equal(accepted.status, 0, accepted.stderr.toString());
    assert.match(accepted.stdout.toString(), new RegExp(`^Signature verified(?: using fingerprint ${expected})?, digest ${digest}\n$`));
    // skopeo refuses it for another reference, another key, another manifest.
    assert.notEqual(skopeo(['standalone-verify', manifestFile, 'localhost:5000/signed/image:other', expected, ours]).status, 0);
    assert.notEqual(skopeo(['standalone-verify', manifestFile, reference, keys.other!, ours]).status, 0);
    writeFileSync(join(scratch, 'changed.json'), Buffer.concat([manifest, Buffer.from(' ')]));
    assert.notEqual(skopeo(['standalone-verify', join(scratch, 'changed.json'), reference, expected, ours]).status, 0);
  }
});

test('openpgp: importing the signature modules loads neither OpenPGP.js nor @noble/ciphers (only a check or a signature does)', () => {
  // A resolve hook that refuses the two packages: importing the modules must still work, and the control import must not.
  const hook = `export async function resolve(specifier, context, next) { if (/^(openpgp|@noble\\/)/.test(specifier)) throw new Error('loaded ' + specifier); return next(specifier, context); }`;
  const script = `
    import { register } from 'node:module';
    register('data:text/javascript,' + encodeURIComponent(${JSON.stringify(hook)}));
    await import(${JSON.stringify(join(repoRoot, 'dist', 'src', 'oci', 'openpgp-signature.js'))});
    await import(${JSON.stringify(join(repoRoot, 'dist', 'src', 'oci', 'cosign-signature.js'))});
    await import(${JSON.stringify(join(repoRoot, 'dist', 'src', 'oci', 'signature-payload.js'))});
    console.log('modules imported');
    await import('openpgp').then(() => console.log('control: openpgp loaded'), (e) => console.log('control: ' + e.message));
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { cwd: repoRoot, timeout: 60_000 });
  assert.equal(r.status, 0, r.stderr.toString());
  assert.equal(r.stdout.toString(), 'modules imported\ncontrol: loaded openpgp\n');
});
