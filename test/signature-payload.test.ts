/**
 * The simple signing payload (src/oci/signature-payload.ts) against
 * containers/image's vectors and rules: the bytes it writes, the documents it
 * accepts and refuses, and manifest digests.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildSignaturePayload, manifestMatchesDigest, parseSignaturePayload } from '../src/oci/signature-payload.js';
import { SignatureError } from '../src/errors.js';
import { repoRoot } from './helpers/paths.js';

const fixtures = join(repoRoot, 'test', 'fixtures', 'containers-image-signature');
const fixture = (name: string) => readFileSync(join(fixtures, name));

const imageDigest = 'sha256:20bf21ed457b390829cdbeec8795a7bea1626991fda603e0d01b4e7f60427e55';
/** The payload of containers/image's subkey.signature, as its mechanism_test.go gives it. */
const containersImagePayload = `{"critical":{"identity":{"docker-reference":"testing/manifest:latest"},"image":{"docker-manifest-digest":"${imageDigest}"},"type":"atomic container signature"},"optional":{}}`;

function refused(fn: () => unknown, pattern: RegExp, label = ''): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof SignatureError, `${label}: a SignatureError, got ${String(err)}`);
    assert.equal(err.code, 'signature');
    assert.doesNotMatch(err.message, /\n/, 'one line');
    assert.match(err.message, pattern, label);
    return true;
  }, label);
}

test('signature payload: built byte for byte as containers/image writes it', () => {
  const built = buildSignaturePayload({ dockerReference: 'testing/manifest:latest', manifestDigest: imageDigest }, 'simple-signing');
  assert.equal(built.toString(), containersImagePayload);
  const withOptional = buildSignaturePayload({ dockerReference: 'example.com/a<b>&c', manifestDigest: imageDigest }, 'sigstore', { creator: 'composefs-ts', timestamp: 1458239713 });
  assert.equal(
    withOptional.toString(),
    `{"critical":{"identity":{"docker-reference":"example.com/a\\u003cb\\u003e\\u0026c"},"image":{"docker-manifest-digest":"${imageDigest}"},"type":"cosign container image signature"},"optional":{"creator":"composefs-ts","timestamp":1458239713}}`,
  );
  refused(() => buildSignaturePayload({ dockerReference: 'x', manifestDigest: 'sha256:abc' }, 'simple-signing'), /manifest digest "sha256:abc": not 64 lower-case hex/);
  refused(() => buildSignaturePayload({ dockerReference: '', manifestDigest: imageDigest }, 'simple-signing'), /docker reference "": empty/);
  refused(() => buildSignaturePayload({ dockerReference: 'x', manifestDigest: imageDigest }, 'simple-signing', { timestamp: 1.5 }), /timestamp 1.5: not an integer/);
});

test('signature payload: the vectors of containers/image and of cosign are read', () => {
  assert.deepEqual(parseSignaturePayload(Buffer.from(containersImagePayload), 'simple-signing'), {
    dockerReference: 'testing/manifest:latest',
    manifestDigest: imageDigest,
    optional: {},
  });
  // The payload real cosign wrote (containers/image's dir-img-cosign-valid): "optional": null.
  const sigstoreBlob = fixture('dir-img-cosign-valid/signature-1');
  assert.equal(sigstoreBlob.subarray(0, 15).toString('latin1'), '\0sigstore-json\n');
  const cosignPayload = Buffer.from((JSON.parse(sigstoreBlob.subarray(15).toString()) as { payload: string }).payload, 'base64');
  assert.deepEqual(parseSignaturePayload(cosignPayload, 'sigstore'), {
    dockerReference: '192.168.64.2:5000/cosign-signed-single-sample',
    manifestDigest: 'sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00',
  });
  // The same document is not a simple signing payload: another type, and null optional fields.
  refused(() => parseSignaturePayload(cosignPayload, 'simple-signing'), /critical\.type "cosign container image signature" is not "atomic container signature"/);
  // Ours, read back.
  const built = buildSignaturePayload({ dockerReference: 'r/a:b', manifestDigest: imageDigest }, 'sigstore', { creator: 'c', timestamp: 7 });
  assert.deepEqual(parseSignaturePayload(built, 'sigstore'), { dockerReference: 'r/a:b', manifestDigest: imageDigest, optional: { creator: 'c', timestamp: 7 } });
});

test('signature payload: every departure from the format containers/image reads is refused in one line', () => {
  type Doc = { critical: Record<string, any>; optional: any; [k: string]: unknown };
  const valid = (): Doc => JSON.parse(buildSignaturePayload({ dockerReference: 'reference#@!', manifestDigest: imageDigest }, 'simple-signing', { creator: 'c', timestamp: 1 }).toString());
  const cases: Array<[string, (d: Doc) => void, RegExp]> = [
    ['critical missing', (d) => delete (d as Partial<Doc>).critical, /the payload: field "critical" missing/],
    ['optional missing', (d) => delete (d as Partial<Doc>).optional, /the payload: field "optional" missing/],
    ['extra top-level field', (d) => (d.unexpected = 1), /the payload: unknown field "unexpected"/],
    ['critical not an object', (d) => (d.critical = 1 as never), /critical: not a JSON object/],
    ['optional not an object', (d) => (d.optional = 1), /optional: not a JSON object/],
    ['optional null (simple signing)', (d) => (d.optional = null), /optional: not a JSON object/],
    ['type missing', (d) => delete d.critical.type, /critical: field "type" missing/],
    ['image missing', (d) => delete d.critical.image, /critical: field "image" missing/],
    ['identity missing', (d) => delete d.critical.identity, /critical: field "identity" missing/],
    ['extra critical field', (d) => (d.critical.unexpected = 1), /critical: unknown field "unexpected"/],
    ['type not a string', (d) => (d.critical.type = 1), /critical\.type: not a string/],
    ['type unknown', (d) => (d.critical.type = 'unexpected'), /critical\.type "unexpected" is not/],
    ['image not an object', (d) => (d.critical.image = 1), /critical\.image: not a JSON object/],
    ['digest missing', (d) => delete d.critical.image['docker-manifest-digest'], /critical\.image: field "docker-manifest-digest" missing/],
    ['extra image field', (d) => (d.critical.image.unexpected = 1), /critical\.image: unknown field/],
    ['digest not a string', (d) => (d.critical.image['docker-manifest-digest'] = 1), /docker-manifest-digest: not a string/],
    ['digest path', (d) => (d.critical.image['docker-manifest-digest'] = 'sha256:../..'), /docker-manifest-digest "sha256:\.\.\/\.\.": not ALGORITHM:HEX/],
    ['digest upper-case', (d) => (d.critical.image['docker-manifest-digest'] = imageDigest.toUpperCase()), /not ALGORITHM:HEX/],
    ['digest unknown algorithm', (d) => (d.critical.image['docker-manifest-digest'] = 'md5:d41d8cd98f00b204e9800998ecf8427e'), /unsupported digest algorithm md5/],
    ['digest short', (d) => (d.critical.image['docker-manifest-digest'] = 'sha512:abcd'), /not 128 lower-case hex digits/],
    ['identity not an object', (d) => (d.critical.identity = 1), /critical\.identity: not a JSON object/],
    ['reference missing', (d) => delete d.critical.identity['docker-reference'], /critical\.identity: field "docker-reference" missing/],
    ['extra identity field', (d) => (d.critical.identity.unexpected = 1), /critical\.identity: unknown field/],
    ['reference not a string', (d) => (d.critical.identity['docker-reference'] = 1), /docker-reference: not a string/],
    ['reference null', (d) => (d.critical.identity['docker-reference'] = null), /docker-reference: not a string/],
    ['creator not a string', (d) => (d.optional.creator = 1), /optional\.creator: not a string/],
    ['timestamp not a number', (d) => (d.optional.timestamp = 'unexpected'), /optional\.timestamp: not a number/],
    ['timestamp fractional', (d) => (d.optional.timestamp = 0.5), /optional\.timestamp: not an integer/],
  ];
  for (const [name, change, pattern] of cases) {
    const d = valid();
    change(d);
    refused(() => parseSignaturePayload(Buffer.from(JSON.stringify(d)), 'simple-signing', 'signature-1'), new RegExp(`^signature-1: .*${pattern.source}`), name);
  }
  // Unknown optional fields are ignored, as containers/image ignores them.
  const extra = valid();
  extra.optional.unexpected = { deep: [1, 2] };
  assert.equal(parseSignaturePayload(Buffer.from(JSON.stringify(extra)), 'simple-signing').dockerReference, 'reference#@!');
});

test('signature payload: not JSON, duplicated keys, bad UTF-8, deep nesting, oversize: refused in one line', () => {
  const good = buildSignaturePayload({ dockerReference: 'a/b', manifestDigest: imageDigest }, 'simple-signing').toString();
  const bad: Array<[Buffer, RegExp]> = [
    [Buffer.from('&'), /invalid JSON at line 1 column 1/],
    [Buffer.from('1'), /the payload: not a JSON object/],
    [Buffer.from(''), /unexpected end/],
    [Buffer.from(good.slice(0, -5)), /invalid JSON/],
    [Buffer.from(`${good} x`), /unexpected text after the JSON value/],
    // The second identity would win in JSON.parse: refused, as containers/image refuses it.
    [Buffer.from(good.replace('"identity":{', '"identity":{"docker-reference":"evil/x",')), /duplicate key "docker-reference"/],
    [Buffer.from(good.replace('"critical":', '"critical":{},"critical":')), /duplicate key "critical"/],
    [Buffer.concat([Buffer.from(good.slice(0, 40)), Buffer.from([0xff]), Buffer.from(good.slice(40))]), /not UTF-8 text/],
    [Buffer.from(good.replace('"optional":{}', `"optional":{"x":${'['.repeat(100)}${']'.repeat(100)}}`)), /nested deeper than 64/],
    [Buffer.alloc(4 * 1024 * 1024 + 1, 0x20), /larger than 4194304 bytes/],
  ];
  for (const [bytes, pattern] of bad) refused(() => parseSignaturePayload(bytes, 'simple-signing'), pattern);
});

test('signature payload: manifests match their sha256, sha384 and sha512 digests; schema 1 signed manifests are refused', () => {
  const manifest = fixture('image.manifest.json');
  assert.equal(manifestMatchesDigest(manifest, imageDigest), true);
  assert.equal(manifestMatchesDigest(Buffer.concat([manifest, Buffer.from(' ')]), imageDigest), false);
  for (const algorithm of ['sha384', 'sha512'] as const) {
    // The expected digest from coreutils, not from the code under test.
    const hex = execFileSync(`${algorithm}sum`, [join(fixtures, 'image.manifest.json')]).toString().split(' ')[0]!;
    assert.equal(manifestMatchesDigest(manifest, `${algorithm}:${hex}`), true);
    assert.equal(manifestMatchesDigest(manifest, `${algorithm}:${hex.replace(/^./, (c) => (c === '0' ? '1' : '0'))}`), false);
  }
  refused(() => manifestMatchesDigest(manifest, 'sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709'), /unsupported digest algorithm sha1/);
  refused(() => manifestMatchesDigest(manifest, imageDigest.toUpperCase()), /not ALGORITHM:HEX/);
  refused(() => manifestMatchesDigest(fixture('v2s1-invalid-signatures.manifest.json'), imageDigest), /docker schema 1 signed manifest/);
});
