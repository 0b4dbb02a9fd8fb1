/**
 * composefs signatures end to end, against the real components: keys and
 * certificates by `openssl` (test/helpers/signers.ts); images by umoci;
 * signatures made by `fsverity sign` over the files themselves (the image
 * manifest, the config blob, the reference canonical image of
 * test/helpers/canonical.ts) carried in a hand-written artifact, which
 * `cfs pull --trust-cert` must accept; signatures `cfs seal --sign-key`
 * pushes to the real registry, fetched with curl and checked by
 * `openssl cms -verify` against the formatted digests built by hand from
 * `fsverity digest`. Every refusal is one line and leaves no name.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cfs, ok, oneLineError } from './helpers/cli.js';
import { blobFile, haveTool, indexEntry } from './helpers/oci-images.js';
import { NO_REGISTRY, haveRegistry, push, startRegistry } from './helpers/registry.js';
import { makeTemp, removeTemp } from './helpers/temp.js';
import { isRoot } from './helpers/paths.js';
import { referenceMergedDigest } from './helpers/canonical.js';
import { ARTIFACT_TYPE, EMPTY, OCI_MANIFEST, addLayoutArtifact, configKey, fsverityOf, mergedKey, sha256 } from './helpers/seal-publish.js';
import { handFormatted, makeSigners, run } from './helpers/signers.js';

const SKIP =
  (!(haveTool('fsverity') && haveTool('openssl')) && 'fsverity or openssl missing') ||
  (!(isRoot && haveTool('umoci') && haveTool('setfattr') && haveTool('getfattr')) && 'the reference canonical image needs root, umoci, setfattr and getfattr');
const PKCS7 = 'application/vnd.composefs.signature.v1+pkcs7';
const MANIFEST_KEY = 'composefs.manifest.fsverity-sha256-12';

function makeUsrImage(layout: string, tag: string, content: string): void {
  const umoci = (...args: string[]) => execFileSync('umoci', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  if (!existsSync(join(layout, 'oci-layout'))) umoci('init', '--layout', layout);
  umoci('new', '--image', `${layout}:${tag}`);
  const bundle = `${layout}.bundle-${tag}`;
  umoci('unpack', '--image', `${layout}:${tag}`, bundle);
  mkdirSync(join(bundle, 'rootfs/usr/bin'), { recursive: true });
  writeFileSync(join(bundle, 'rootfs/usr/bin/hello'), `#!/bin/sh\necho ${content}\n`, { mode: 0o755 });
  writeFileSync(join(bundle, 'rootfs/usr/big'), Buffer.alloc(200_000, content));
  umoci('repack', '--image', `${layout}:${tag}`, bundle);
  rmSync(bundle, { recursive: true, force: true });
  umoci('gc', '--layout', layout);
}

function names(repo: string): string[] {
  return existsSync(join(repo, 'names')) ? readdirSync(join(repo, 'names')) : [];
}

/** A refusal: one line, non-zero, nothing on stdout, no name in `repo`. */
function refused(r: ReturnType<typeof cfs>, pattern: RegExp, repo?: string): void {
  oneLineError(r, pattern);
  assert.equal(r.stdout, '');
  if (repo !== undefined) assert.deepEqual(names(repo), [], 'nothing named');
}

function addBlob(layout: string, bytes: Buffer): { digest: string; size: number } {
  const digest = sha256(bytes);
  writeFileSync(blobFile(layout, digest), bytes);
  return { digest, size: bytes.length };
}

interface Fixture {
  dir: string;
  layout: string;
  /** Files whose fs-verity digests the seal carries: the manifest's and config's exact bytes, the reference canonical image. */
  files: { manifest: string; config: string; merged: string };
  digests: { manifest: string; config: string; merged: string };
  subject: { mediaType: string; digest: string; size: number };
}

/**
 * A copy of the layout with a hand-written artifact whose layers carry the
 * given signature files (null: an empty layer, unsigned).
 */
function signedLayout(fx: Fixture, name: string, sigs: { manifest: Buffer | null; config: Buffer | null; merged: Buffer | null }, digests: Fixture['digests'] = fx.digests): string {
  const layout = join(fx.dir, `layout-${name}`);
  cpSync(fx.layout, layout, { recursive: true });
  addBlob(layout, Buffer.from('{}'));
  const layer = (role: 'manifest' | 'config' | 'merged', key: string) => {
    const sig = sigs[role];
    return { ...(sig ? { mediaType: PKCS7, ...addBlob(layout, sig) } : EMPTY), annotations: { [key]: digests[role] } };
  };
  const artifact = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    artifactType: ARTIFACT_TYPE,
    config: EMPTY,
    layers: [layer('manifest', MANIFEST_KEY), layer('config', configKey('sha256')), layer('merged', mergedKey('sha256'))],
    subject: fx.subject,
  };
  addLayoutArtifact(layout, Buffer.from(JSON.stringify(artifact)));
  return layout;
}

/** `fsverity sign` over each of the three files with `key`. */
function toolSignatures(fx: Fixture, key: string): { manifest: Buffer; config: Buffer; merged: Buffer } {
  const sign = (role: keyof Fixture['files']) => {
    const out = join(fx.dir, `${key}-${role}.sig`);
    run('fsverity', ['sign', fx.files[role], out, '--key', `${key}.key`, '--cert', `${key}.crt`], fx.dir);
    return readFileSync(out);
  };
  return { manifest: sign('manifest'), config: sign('config'), merged: sign('merged') };
}

/** `openssl cms -verify` of a signature over the hand-built formatted digest of `hex`, with `cert` as the only trust. */
function opensslVerifies(dir: string, sig: Buffer, hex: string, cert: string): boolean {
  writeFileSync(join(dir, 'check.sig'), sig);
  writeFileSync(join(dir, 'check.formatted'), handFormatted('sha256', hex));
  const r = spawnSync('openssl', ['cms', '-verify', '-binary', '-inform', 'DER', '-in', 'check.sig', '-content', 'check.formatted', '-CAfile', cert, '-purpose', 'any', '-nointern', '-certfile', cert, '-out', '/dev/null'], { cwd: dir, encoding: 'utf8' });
  return r.status === 0;
}

test('composefs signatures: fsverity sign\'s accepted by cfs pull --trust-cert and cfs verify; every bad one refused in one line, nothing named', { skip: SKIP }, async (t) => {
  const dir = makeTemp('seal-sign');
  try {
    makeSigners(dir);
    const layout = join(dir, 'layout');
    makeUsrImage(layout, 'v1', 'one');
    const entry = indexEntry(layout, 'v1');
    const manifestFile = blobFile(layout, entry.digest);
    const configFile = blobFile(layout, JSON.parse(readFileSync(manifestFile, 'utf8')).config.digest);
    const { digest: merged, image } = referenceMergedDigest(layout, 'v1');
    const mergedFile = join(dir, 'merged.cfs');
    writeFileSync(mergedFile, image);
    const fx: Fixture = {
      dir,
      layout,
      files: { manifest: manifestFile, config: configFile, merged: mergedFile },
      digests: { manifest: fsverityOf(manifestFile), config: fsverityOf(configFile), merged },
      subject: { mediaType: entry.mediaType, digest: entry.digest, size: entry.size },
    };
    const rsa = toolSignatures(fx, 'rsa');
    const trust = (name: string) => ['--trust-cert', join(dir, `${name}.crt`)];

    await t.test('signed by fsverity sign: accepted, recorded, verified offline, shown by inspect', () => {
      const src = `oci:${signedLayout(fx, 'good', rsa)}:v1`;
      const repo = join(dir, 'repo-good');
      const r = cfs('pull', '--quiet', '--explain', '--repo', repo, ...trust('rsa'), src, 'app');
      assert.equal(ok(r).trim(), merged);
      for (const role of ['manifest', 'config', 'merged']) assert.match(r.stderr, new RegExp(`signature: ${role} verified in userspace, signed by "CN=rsa signer"`));
      // This machine's file systems have no fs-verity: the kernel path reports it, and the pull goes on.
      assert.match(r.stderr, /signature: the kernel did not take the merged image's signature \(FS_IOC_ENABLE_VERITY: E[A-Z]+.*\): signatures were checked in userspace only/);
      const v = cfs('verify', '--repo', repo, ...trust('rsa'), 'app');
      assert.match(ok(v), /^app: ok \(.*signed \(manifest, config, merged\) by "CN=rsa signer"; checked .*signature/);
      // Offline, against another certificate: a problem, one line.
      const other = cfs('verify', '--repo', repo, ...trust('other'), 'app');
      assert.equal(other.status, 1);
      assert.match(other.stderr, /^cfs verify: app: signature composefs\.manifest\.fsverity-sha256-12\.sig \(artifact sha256:[0-9a-f]{64}\): no trusted certificate matches its signer \(serial [0-9a-f]+\)\n$/);
      const inspect = ok(cfs('inspect', '--repo', repo, 'app'));
      assert.match(inspect, /signed: +manifest, config, merged; verified at the pull \(userspace\) against "CN=rsa signer"/);
      // Pulled without --trust-cert: kept, said to be unverified; cfs verify --trust-cert checks them.
      const plain = join(dir, 'repo-plain');
      const p = cfs('pull', '--quiet', '--explain', '--repo', plain, src, 'app');
      assert.equal(ok(p).trim(), merged);
      assert.match(p.stderr, /signature: not checked \(no --trust-cert given\)/);
      assert.match(ok(cfs('inspect', '--repo', plain, 'app')), /signed: +manifest, config, merged; not verified/);
      ok(cfs('verify', '--repo', plain, ...trust('rsa'), 'app'));
    });

    await t.test('refused: another certificate, expired, wrong purpose, missing manifest signature, garbage, unsigned', () => {
      const cases: [string, { manifest: Buffer | null; config: Buffer | null; merged: Buffer | null }, string, RegExp][] = [
        ['other', rsa, 'other', /: signature composefs\.manifest\.fsverity-sha256-12\.sig \(artifact sha256:[0-9a-f]{64}\): no trusted certificate matches its signer \(serial [0-9a-f]+\)$/],
        ['swapped', { ...rsa, config: rsa.merged }, 'rsa', /: signature composefs\.config\.fsverity-sha256-12\.sig \(artifact sha256:[0-9a-f]{64}\): bad signature \(not made by the key of certificate "CN=rsa signer" over this digest\)$/],
        ['expired', toolSignatures(fx, 'expired'), 'expired', /: signature composefs\.manifest\.fsverity-sha256-12\.sig \(.*\): certificate "CN=expired signer" expired on 2020-01-02T00:00:00Z$/],
        ['ca-only', toolSignatures(fx, 'ca-only'), 'ca-only', /: certificate "CN=ca only" is not for signing \(its keyUsage lacks digitalSignature\)$/],
        ['tls', toolSignatures(fx, 'tls'), 'tls', /: certificate "CN=tls only" is not for signing \(its extendedKeyUsage has neither codeSigning nor anyExtendedKeyUsage\)$/],
        ['no-manifest-sig', { ...rsa, manifest: null }, 'rsa', /: seal \(artifact sha256:[0-9a-f]{64}\) signs the merged EROFS but not the manifest \(composefs\.manifest\.fsverity-sha256-12\): the spec requires both$/],
        ['truncated', { ...rsa, merged: rsa.merged.subarray(0, 100) }, 'rsa', /: signature composefs\.merged\.erofs\.v1\.fsverity-sha256-12\.sig \(.*\): truncated DER at offset 4: SEQUENCE of \d+ bytes, 96 left$/],
        ['garbage', { ...rsa, merged: Buffer.from('garbage, not DER\n') }, 'rsa', /: signature composefs\.merged\.erofs\.v1\.fsverity-sha256-12\.sig \(.*\): truncated DER at offset 2/],
        ['unsigned', { manifest: null, config: null, merged: null }, 'rsa', /: not signed \(its seal carries no signature of the merged EROFS\), and trusted certificates were given$/],
      ];
      for (const [name, sigs, cert, pattern] of cases) {
        const repo = join(dir, `repo-${name}`);
        refused(cfs('pull', '--quiet', '--repo', repo, ...trust(cert), `oci:${signedLayout(fx, name, sigs)}:v1`, 'app'), pattern, repo);
      }
      // An artifact whose manifest digest is not the manifest's: refused with or without signatures to check.
      const wrong = signedLayout(fx, 'wrong-manifest', { manifest: null, config: null, merged: null }, { ...fx.digests, manifest: 'ab'.repeat(32) });
      const wrongRepo = join(dir, 'repo-wrong-manifest');
      refused(cfs('pull', '--quiet', '--repo', wrongRepo, `oci:${wrong}:v1`, 'app'), new RegExp(`: seal mismatch: composefs\\.manifest\\.fsverity-sha256-12 \\(artifact sha256:[0-9a-f]{64}\\) expects ${'ab'.repeat(32)}, computed ${fx.digests.manifest}$`), wrongRepo);
      // No seal at all.
      const repo = join(dir, 'repo-none');
      refused(cfs('pull', '--quiet', '--repo', repo, ...trust('rsa'), `oci:${layout}:v1`, 'app'), /: not signed \(no composefs seal in its manifest nor among its referrers\), and trusted certificates were given$/, repo);
      // Certificates that cannot be read: one line, before anything is fetched.
      writeFileSync(join(dir, 'junk.pem'), 'not a certificate\n');
      refused(cfs('pull', '--quiet', '--repo', repo, '--trust-cert', join(dir, 'junk.pem'), `oci:${layout}:v1`, 'app'), /junk\.pem: no certificate in it/, repo);
      refused(cfs('pull', '--quiet', '--repo', repo, '--trust-cert', join(dir, 'nonexistent'), `oci:${layout}:v1`, 'app'), /nonexistent: no such file or directory \(trusted certificates\)$/, repo);
      // A directory of certificates: the right one among others.
      const certDir = join(dir, 'certs');
      mkdirSync(certDir);
      cpSync(join(dir, 'other.crt'), join(certDir, 'a.crt'));
      cpSync(join(dir, 'rsa.crt'), join(certDir, 'b.pem'));
      writeFileSync(join(certDir, 'README'), 'not read');
      const good = join(dir, 'repo-dir');
      assert.equal(ok(cfs('pull', '--quiet', '--repo', good, '--trust-cert', certDir, `oci:${join(dir, 'layout-good')}:v1`, 'app')).trim(), merged);
    });
  } finally {
    removeTemp(dir);
  }
});

test('cfs seal --sign-key: artifact and inline signatures in the real registry pass openssl cms -verify, and pull --trust-cert takes them', { skip: SKIP || (!haveRegistry && NO_REGISTRY) || (!haveTool('curl') && 'curl missing') }, async () => {
  const dir = makeTemp('seal-sign-reg');
  const registry = await startRegistry({ auth: { htpasswd: { alice: 'secret' } } });
  try {
    makeSigners(dir);
    const layout = join(dir, 'layout');
    makeUsrImage(layout, 'v1', 'one');
    await push(registry, `oci:${layout}:v1`, 'test/app:v1', 'alice:secret');
    const auth = ['--creds', 'alice:secret', '--cert-dir', registry.certs.certDir];
    const app = `docker://${registry.host}/test/app`;
    const curl = (path: string) => execFileSync('curl', ['-sS', '--fail', '--cacert', registry.certs.caCert, '-u', 'alice:secret', `https://${registry.host}/v2/test/app/${path}`]);
    const raw = (ref: string) => execFileSync('skopeo', ['inspect', '--raw', '--creds', 'alice:secret', '--cert-dir', registry.certs.certDir, ref]);
    const manifestBytes = raw(`${app}:v1`);
    writeFileSync(join(dir, 'manifest.json'), manifestBytes);
    const configDigest = JSON.parse(manifestBytes.toString()).config.digest as string;
    writeFileSync(join(dir, 'config.json'), curl(`blobs/${configDigest}`));
    const want = { manifest: fsverityOf(join(dir, 'manifest.json')), config: fsverityOf(join(dir, 'config.json')), merged: referenceMergedDigest(layout, 'v1').digest };

    // Artifact mode: manifest, config, merged, each a pkcs7 layer, in that order.
    const sealRepo = join(dir, 'seal-repo');
    const sealed = JSON.parse(ok(cfs('seal', '--repo', sealRepo, ...auth, '--json', '--sign-key', join(dir, 'rsa.key'), '--sign-cert', join(dir, 'rsa.crt'), `${app}:v1`))) as { artifact: { digest: string } };
    const artifact = JSON.parse(raw(`${app}@${sealed.artifact.digest}`).toString()) as { layers: { mediaType: string; digest: string; size: number; annotations: Record<string, string> }[] };
    assert.deepEqual(artifact.layers.map((l) => [l.mediaType, l.annotations]), [
      [PKCS7, { [MANIFEST_KEY]: want.manifest }],
      [PKCS7, { [configKey('sha256')]: want.config }],
      [PKCS7, { [mergedKey('sha256')]: want.merged }],
    ]);
    const roles = ['manifest', 'config', 'merged'] as const;
    artifact.layers.forEach((l, i) => {
      const sig = curl(`blobs/${l.digest}`);
      assert.equal(sha256(sig), l.digest);
      assert.ok(opensslVerifies(dir, sig, want[roles[i]], join(dir, 'rsa.crt')), `openssl cms -verify: ${roles[i]}`);
      assert.ok(!opensslVerifies(dir, sig, want[roles[(i + 1) % 3]], join(dir, 'rsa.crt')), `openssl refuses it for another digest: ${roles[i]}`);
    });
    const repo = join(dir, 'pull-repo');
    assert.equal(ok(cfs('pull', '--quiet', '--repo', repo, ...auth, '--trust-cert', join(dir, 'rsa.crt'), `${app}:v1`, 'app')).trim(), want.merged);
    ok(cfs('verify', '--repo', repo, '--trust-cert', join(dir, 'rsa.crt'), 'app'));
    const other = join(dir, 'other-repo');
    refused(cfs('pull', '--quiet', '--repo', other, ...auth, '--trust-cert', join(dir, 'other.crt'), `${app}:v1`, 'app'), /no trusted certificate matches its signer/, other);

    // Inline mode: base64 in the .sig annotations of the config descriptor and the manifest; no manifest signature.
    ok(cfs('seal', '--repo', sealRepo, ...auth, '--inline', '--sign-key', join(dir, 'ec.key'), '--sign-cert', join(dir, 'ec.crt'), `${app}:v1`, `${app}:signed`));
    const inline = JSON.parse(raw(`${app}:signed`).toString()) as { annotations: Record<string, string>; config: { annotations: Record<string, string> } };
    assert.ok(opensslVerifies(dir, Buffer.from(inline.annotations[`${mergedKey('sha256')}.sig`], 'base64'), want.merged, join(dir, 'ec.crt')));
    assert.ok(opensslVerifies(dir, Buffer.from(inline.config.annotations[`${configKey('sha256')}.sig`], 'base64'), want.config, join(dir, 'ec.crt')));
    assert.equal(Object.keys(inline.annotations).some((k) => k.startsWith('composefs.manifest')), false);
    const inlineRepo = join(dir, 'inline-repo');
    assert.equal(ok(cfs('pull', '--quiet', '--repo', inlineRepo, ...auth, '--trust-cert', join(dir, 'ec.crt'), `${app}:signed`, 'app')).trim(), want.merged);
    ok(cfs('verify', '--repo', inlineRepo, '--trust-cert', join(dir, 'ec.crt'), 'app'));
    refused(cfs('pull', '--quiet', '--repo', join(dir, 'inline-other'), ...auth, '--trust-cert', join(dir, 'rsa.crt'), `${app}:signed`, 'app'), /signature composefs\.config\.fsverity-sha256-12\.sig \(inline\): no trusted certificate matches its signer/, join(dir, 'inline-other'));

    // Signing identities refused before anything is pulled or pushed.
    const none = join(dir, 'none-repo');
    refused(cfs('seal', '--repo', none, ...auth, '--sign-key', join(dir, 'rsa.key'), `${app}:v1`), /--sign-key and --sign-cert go together \(--sign-key given alone\)/);
    refused(cfs('seal', '--repo', none, ...auth, '--sign-key', join(dir, 'other.key'), '--sign-cert', join(dir, 'rsa.crt'), `${app}:v1`), /other\.key: not the key of certificate "CN=rsa signer"/);
    refused(cfs('seal', '--repo', none, ...auth, '--sign-key', join(dir, 'expired.key'), '--sign-cert', join(dir, 'expired.crt'), `${app}:v1`), /expired\.crt: certificate "CN=expired signer" expired on 2020-01-02T00:00:00Z$/);
    // An encrypted key: its passphrase from a file.
    run('openssl', ['pkey', '-in', 'rsa.key', '-out', 'rsa-enc.key', '-aes256', '-passout', 'pass:s3cret'], dir);
    refused(cfs('seal', '--repo', none, ...auth, '--sign-key', join(dir, 'rsa-enc.key'), '--sign-cert', join(dir, 'rsa.crt'), `${app}:v1`), /rsa-enc\.key: the key is encrypted: give --sign-passphrase-file$/);
    writeFileSync(join(dir, 'wrong-pass'), 'nope\n');
    refused(cfs('seal', '--repo', none, ...auth, '--sign-key', join(dir, 'rsa-enc.key'), '--sign-cert', join(dir, 'rsa.crt'), '--sign-passphrase-file', join(dir, 'wrong-pass'), `${app}:v1`), /rsa-enc\.key: the passphrase does not decrypt it$/);
    assert.equal(existsSync(join(none, 'names')) ? readdirSync(join(none, 'names')).length : 0, 0);
    writeFileSync(join(dir, 'pass'), 's3cret\n');
    ok(cfs('seal', '--repo', sealRepo, ...auth, '--sign-key', join(dir, 'rsa-enc.key'), '--sign-cert', join(dir, 'rsa.crt'), '--sign-passphrase-file', join(dir, 'pass'), `${app}:v1`));
  } finally {
    await registry.stop();
    removeTemp(dir);
  }
});
