/**
 * The sealing format (src/oci/seal-format.ts): the annotation keys of the
 * composefs-rs sealing spec, read from an inline manifest and from an
 * artifact, and every malformed seal refused with one line.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { artifactSeal, buildArtifact, buildInlineManifest, inlineSeals, sealKey, SealError, EMPTY_BLOB, EMPTY_DESCRIPTOR } from '../src/oci/seal-format.js';
import { createHash } from 'node:crypto';

const H256 = 'ab'.repeat(32);
const H512 = 'cd'.repeat(64);
const SUBJECT = { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${'12'.repeat(32)}`, size: 700 };

function refused(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof SealError, String(err));
    assert.match(err.message, pattern);
    assert.doesNotMatch(err.message, /\n/);
    return true;
  });
}

test('the keys are the spec\'s, and the empty descriptor is the digest of {}', () => {
  assert.equal(sealKey('merged', 'sha512'), 'composefs.merged.erofs.v1.fsverity-sha512-12');
  assert.equal(sealKey('config', 'sha256'), 'composefs.config.fsverity-sha256-12');
  assert.equal(sealKey('merged.bootable', 'sha256'), 'composefs.merged.bootable.erofs.v1.fsverity-sha256-12');
  assert.equal(`sha256:${createHash('sha256').update(EMPTY_BLOB).digest('hex')}`, EMPTY_DESCRIPTOR.digest);
});

test('an inline seal reads back from the manifest it was written into; other annotations and fields stay', () => {
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: SUBJECT.mediaType, config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${'34'.repeat(32)}`, size: 10, annotations: { keep: 'me' } }, layers: [], annotations: { 'org.example': 'x' } }));
  const sealed = JSON.parse(buildInlineManifest(manifest, { algorithm: 'sha512', merged: H512, config: H512 }).toString());
  assert.equal(sealed.annotations['org.example'], 'x');
  assert.equal(sealed.annotations['composefs.merged.erofs.v1.fsverity-sha512-12'], H512);
  assert.equal(sealed.config.annotations.keep, 'me');
  assert.equal(sealed.config.annotations['composefs.config.fsverity-sha512-12'], H512);
  const [seal, more] = inlineSeals(sealed);
  assert.equal(more, undefined);
  assert.deepEqual({ ...seal }, { algorithm: 'sha512', merged: H512, config: H512, mode: 'inline' });
  assert.deepEqual(inlineSeals({ schemaVersion: 2, annotations: { 'org.example': 'x' } }), []);
});

test('an artifact reads back, in the spec\'s layer order with the subject it names', () => {
  const bytes = buildArtifact({ algorithm: 'sha256', merged: H256, config: H256 }, SUBJECT);
  const json = JSON.parse(bytes.toString());
  assert.equal(json.artifactType, 'application/vnd.composefs.metadata.v1');
  assert.deepEqual(json.config, EMPTY_DESCRIPTOR);
  assert.deepEqual(json.layers.map((l: { annotations: object }) => Object.keys(l.annotations)[0]), ['composefs.config.fsverity-sha256-12', 'composefs.merged.erofs.v1.fsverity-sha256-12']);
  const seal = artifactSeal(json, 'sha256:ff', SUBJECT.digest);
  assert.equal(seal.merged, H256);
  assert.equal(seal.config, H256);
  assert.equal(seal.mode, 'artifact');
});

test('malformed seals are refused with one line', () => {
  const inline = (annotations: Record<string, unknown>) => () => inlineSeals({ annotations });
  refused(inline({ 'composefs.merged.erofs.v1.fsverity-sha256-12': 'ab'.repeat(31) }), /62 characters, not 64/);
  refused(inline({ 'composefs.merged.erofs.v1.fsverity-sha512-12': H256 }), /64 characters, not 128/);
  refused(inline({ 'composefs.merged.erofs.v1.fsverity-sha256-12': 'zz'.repeat(32) }), /not lowercase hexadecimal/);
  refused(inline({ 'composefs.merged.erofs.v1.fsverity-sha256-12': 'AB'.repeat(32) }), /not lowercase hexadecimal/);
  refused(inline({ 'composefs.merged.erofs.v1.fsverity-blake3-12': H256 }), /unknown fs-verity algorithm "blake3"/);
  refused(inline({ 'composefs.merged.erofs.v1.fsverity-sha256-16': H256 }), /block size 2\^16/);
  refused(inline({ 'composefs.merged.erofs.v2.fsverity-sha256-12': H256 }), /EROFS format v2/);
  refused(inline({ 'composefs.merged.fsverity-sha256-12': H256 }), /no EROFS format version/);
  refused(inline({ 'composefs.config.fsverity-sha256-12': H256 }), /does not belong there/);
  refused(inline({ 'composefs.merged.erofs.v1.fsverity-sha256-12': 5 }), /is not a string/);
  refused(inline({ 'composefs.whatever': 'x' }), /not a composefs seal key/);
  refused(() => inlineSeals({ config: { annotations: { 'composefs.config.fsverity-sha256-12': H256 } } }), /merged\.erofs\.v1\.fsverity-sha256-12 is missing/);

  const good = JSON.parse(buildArtifact({ algorithm: 'sha256', merged: H256, config: H256 }, SUBJECT).toString());
  const variant = (edit: (a: any) => void) => () => {
    const a = structuredClone(good);
    edit(a);
    return artifactSeal(a, 'sha256:ff', SUBJECT.digest);
  };
  refused(variant((a) => (a.subject.digest = `sha256:${'99'.repeat(32)}`)), /its subject is sha256:9999.*not the image/);
  refused(variant((a) => delete a.subject), /no subject/);
  refused(variant((a) => (a.artifactType = 'application/x-other')), /artifactType/);
  refused(variant((a) => (a.layers[0].annotations = { 'composefs.config.fsverity-sha512-12': H512 })), /mixes sha512 and sha256/);
  refused(variant((a) => a.layers.reverse()), /out of order/);
  refused(variant((a) => (a.layers[1].annotations['composefs.config.fsverity-sha256-12'] = H256)), /2 composefs annotations/);
  refused(variant((a) => (a.layers = [])), /no layers/);
  refused(variant((a) => a.layers.pop()), /merged\.erofs\.v1\.fsverity-sha256-12 is missing/);
  refused(variant((a) => (a.layers = Array(5).fill(a.layers[0]))), /5 layers/);
});

test('signatures: artifact layers carry them as pkcs7 blobs, inline manifests as .sig annotations; oversized or non-base64 ones refused', () => {
  const sig = Buffer.from('30820101', 'hex').toString('base64');
  const seal = { algorithm: 'sha256' as const, merged: H256, config: H256, manifest: H256, signatures: { manifest: sig, config: sig, merged: sig } };
  const json = JSON.parse(buildArtifact(seal, SUBJECT).toString());
  const sigDigest = `sha256:${createHash('sha256').update(Buffer.from(sig, 'base64')).digest('hex')}`;
  assert.deepEqual(json.layers.map((l: { mediaType: string; digest: string; size: number }) => [l.mediaType, l.digest, l.size]), [
    ['application/vnd.composefs.signature.v1+pkcs7', sigDigest, 4],
    ['application/vnd.composefs.signature.v1+pkcs7', sigDigest, 4],
    ['application/vnd.composefs.signature.v1+pkcs7', sigDigest, 4],
  ]);
  const found = artifactSeal(json, 'sha256:ff', SUBJECT.digest);
  assert.deepEqual(Object.keys(found.signatureLayers ?? {}), ['manifest', 'config', 'merged']);
  json.layers[2].size = 16129;
  refused(() => artifactSeal(json, 'sha256:ff', SUBJECT.digest), /layer 2: signature layer of 16129 bytes \(1 to 16128\)$/);
  json.layers[2].size = 4;
  json.layers[2].digest = 'sha512:00';
  refused(() => artifactSeal(json, 'sha256:ff', SUBJECT.digest), /layer 2: signature layer without a sha256 digest$/);

  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, config: { mediaType: 'x', digest: `sha256:${'34'.repeat(32)}`, size: 10 }, layers: [] }));
  const inline = JSON.parse(buildInlineManifest(manifest, seal).toString());
  assert.equal(inline.annotations['composefs.merged.erofs.v1.fsverity-sha256-12.sig'], sig);
  assert.equal(inline.config.annotations['composefs.config.fsverity-sha256-12.sig'], sig);
  assert.deepEqual(inlineSeals(inline)[0].signatures, { merged: sig, config: sig });
  const withSig = (value: string) => () => inlineSeals({ annotations: { 'composefs.merged.erofs.v1.fsverity-sha256-12': H256, 'composefs.merged.erofs.v1.fsverity-sha256-12.sig': value } });
  refused(withSig('A'.repeat(21508)), /holds 21508 base64 characters \(a signature has at most 16128 bytes\)$/);
  refused(withSig('not base64!'), /\.sig is not base64$/);
  refused(withSig('QUJD='), /\.sig is not base64$/);
});
