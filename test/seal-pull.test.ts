/**
 * Seals checked on every pull, and `cfs verify`: images sealed inline (a
 * layout's manifest edited by the test, pushed with skopeo) and by composefs
 * artifacts (written by hand into a layout, or pushed to the real registry
 * by plain HTTP requests: the referrers tag schema the registry gives, and
 * the referrers API through a front that answers only that endpoint). Each
 * bad seal is one line, and no name.
 *
 * The expected merged digest is the fs-verity digest (by the `fsverity`
 * tool) of the reference canonical image (test/helpers/canonical.ts: umoci
 * raw unpack, canonicalized on disk, `mkcomposefs --min-version=1`), not of
 * anything our code built. The repositories here hold sha256. The sha512
 * digests below are the sha512 fs-verity digests of that same image and
 * serve only seals that are refused or left unchecked before any comparison:
 * a sha512 repository's image differs (its metacopy xattrs name sha512
 * objects) and no reference writer makes it (the C mkcomposefs has no
 * sha512 digest store).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cliPath, isRoot } from './helpers/paths.js';
import { referenceMergedDigest } from './helpers/canonical.js';
import { cfs, ok, oneLineError } from './helpers/cli.js';
import { gzLayers, writeLayout } from './helpers/oci-layout.js';
import { patternBytes, type TarEntry } from './helpers/tar-writer.js';
import { blobFile, haveTool, indexEntry, skopeo } from './helpers/oci-images.js';
import { haveRegistry, NO_REGISTRY, push, startRegistry } from './helpers/registry.js';
import { makeTemp, removeTemp } from './helpers/temp.js';
import {
  ARTIFACT_TYPE,
  OCI_INDEX,
  addLayoutArtifact,
  artifactBytes,
  configKey,
  fsverityOf,
  inlineSealLayout,
  mergedKey,
  pushArtifact,
  pushReferrersTag,
  referrersIndex,
  startReferrersFront,
  type Descriptor,
} from './helpers/seal-publish.js';

/** Why the tests here cannot run: the fsverity tool, and what the reference canonical image needs. */
const MISSING = !haveTool('fsverity')
  ? 'fsverity (fsverity-utils) missing'
  : !(isRoot && haveTool('umoci') && haveTool('setfattr') && haveTool('getfattr')) && 'the reference canonical image needs root, umoci, setfattr and getfattr';

const T = 1700000000;
const base: TarEntry[] = [
  { path: './', type: 'dir', mtime: T },
  { path: 'etc/', type: 'dir', mtime: T },
  { path: 'etc/os-release', data: 'ID=sealed\n', mtime: T },
  { path: 'usr/', type: 'dir', mtime: T },
  { path: 'usr/big', data: patternBytes(100_000, 7), mtime: T },
];
const second: TarEntry[] = [{ path: 'usr/second', data: patternBytes(50_000, 8), mtime: T }];
const other: TarEntry[] = [{ path: 'usr/other', data: patternBytes(20_000, 9), mtime: T }];

type Run = { status: number | null; stdout: string; stderr: string };

/** `cfs` without blocking this process (the referrers front answers from it). */
function cfsAsync(...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(cliPath('cfs'), args, { encoding: 'utf8' }, (err, stdout, stderr) => {
      resolve({ status: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}


function names(repo: string): string[] {
  return existsSync(join(repo, 'names')) ? readdirSync(join(repo, 'names')).filter((f) => !f.startsWith('.')) : [];
}

interface SealRecord {
  algorithm: string;
  merged: string;
  config?: string;
  mode: 'inline' | 'artifact';
  artifact?: string;
}

function inspect(repo: string, name: string): { image: string; manifest: string; seal: SealRecord | null } {
  return JSON.parse(ok(cfs('inspect', '--repo', repo, '--json', name)));
}

/** Flip the last hex digit: a digest of the right shape that is not the right one. */
const wrong = (hex: string) => hex.slice(0, -1) + (hex.endsWith('0') ? '1' : '0');

/**
 * One layout with the image `plain`, and what its seal must say: the merged
 * digest (the fsverity tool over the reference canonical image) and the
 * config digest (the fsverity tool over the config blob), in sha256 and
 * sha512 (see the header for what the sha512 ones are). An unsealed pull of
 * the image must record the reference merged digest.
 */
function fixture(tmp: string): { layout: string; subject: Descriptor; merged: string; config: string; merged512: string; config512: string } {
  const layout = join(tmp, 'layout');
  writeLayout(layout, 'plain', gzLayers(base, second));
  const subject = indexEntry(layout, 'plain');
  const configDigest = JSON.parse(readFileSync(blobFile(layout, subject.digest), 'utf8')).config.digest as string;
  const reference = referenceMergedDigest(layout, 'plain');
  const referenceFile = join(tmp, 'reference.cfs');
  writeFileSync(referenceFile, reference.image);
  const scratch = join(tmp, 'scratch-repo');
  const image = ok(cfs('pull', '--repo', scratch, `oci:${layout}:plain`, 'plain')).trim();
  assert.equal(image, reference.digest, 'an unsealed pull records the reference canonical image\'s digest');
  return {
    layout,
    subject,
    merged: reference.digest,
    config: fsverityOf(blobFile(layout, configDigest)),
    merged512: fsverityOf(referenceFile, 'sha512'),
    config512: fsverityOf(blobFile(layout, configDigest), 'sha512'),
  };
}

/** A copy of the fixture's layout (each case adds its own seals). */
function layoutCopy(tmp: string, from: string, name: string): string {
  const to = join(tmp, name);
  cpSync(from, to, { recursive: true });
  return to;
}

test('seals in OCI layouts: inline and artifact checked, recorded, kept, shown; every bad seal one line and no name', { skip: MISSING }, async (t) => {
  const tmp = makeTemp('seal-layout');
  try {
    const f = fixture(tmp);

    await t.test('inline seal: pulled, recorded, shown by inspect and --explain; --require-seal accepts it', () => {
      const layout = layoutCopy(tmp, f.layout, 'inline');
      inlineSealLayout(layout, 'plain', 'sealed', { [mergedKey('sha256')]: f.merged }, { [configKey('sha256')]: f.config });
      const repo = join(tmp, 'repo-inline');
      const r = cfs('pull', '--repo', repo, '--explain', '--require-seal', `oci:${layout}:sealed`, 'app');
      assert.equal(ok(r).trim(), f.merged);
      assert.match(r.stderr, /seal: found inline, fsverity-sha256: merged [0-9a-f]{64}, config [0-9a-f]{64}/);
      assert.match(r.stderr, /seal: checked: the image built has the merged digest, the config has the config digest \(fsverity-sha256\)/);
      const rec = inspect(repo, 'app');
      assert.deepEqual(rec.seal, { algorithm: 'sha256', merged: f.merged, config: f.config, mode: 'inline' });
      const text = ok(cfs('inspect', '--repo', repo, 'app'));
      assert.match(text, new RegExp(`seal: +inline, fsverity-sha256\\n +merged: +${f.merged}\\n +config: +${f.config}`));
      assert.match(ok(cfs('verify', '--repo', repo, 'app')), /app: ok \(sealed inline, fsverity-sha256 [0-9a-f]{64}; checked image, config, manifest, rebuild\)/);
    });

    await t.test('a seal of the canonical variant that keeps user.* xattrs: a pull that did not choose finds that variant', () => {
      // An image with a user.* xattr under /usr, sealed (inline) by a publisher who kept user xattrs.
      const layout = join(tmp, 'user-xattrs');
      writeLayout(layout, 'img', gzLayers([...base, { path: 'usr/tagged', data: 'has a user xattr\n', mtime: T, xattrs: { 'user.origin': 'publisher' } }]));
      const kept = referenceMergedDigest(layout, 'img', { keepUserXattrs: true }).digest;
      const dropped = referenceMergedDigest(layout, 'img').digest;
      assert.notEqual(kept, dropped, 'the two variants differ for this image');
      const configDigest = JSON.parse(readFileSync(blobFile(layout, indexEntry(layout, 'img').digest), 'utf8')).config.digest as string;
      inlineSealLayout(layout, 'img', 'sealed', { [mergedKey('sha256')]: kept }, { [configKey('sha256')]: fsverityOf(blobFile(layout, configDigest)) });
      const repo = join(tmp, 'repo-user-xattrs');
      assert.equal(ok(cfs('pull', '--repo', repo, `oci:${layout}:sealed`, 'app')).trim(), kept);
      const rec = inspect(repo, 'app') as ReturnType<typeof inspect> & { keepUserXattrs?: boolean };
      assert.equal(rec.keepUserXattrs, true);
      assert.equal(rec.seal?.merged, kept);
      assert.match(ok(cfs('verify', '--repo', repo, 'app')), /app: ok/);
    });

    await t.test('artifact in the layout beside its subject: pulled, kept in blobs/ through gc, fsck clean', () => {
      const layout = layoutCopy(tmp, f.layout, 'artifact');
      const artifact = addLayoutArtifact(layout, artifactBytes(f.subject, [{ [configKey('sha256')]: f.config }, { [mergedKey('sha256')]: f.merged }]));
      // An artifact of another image in the same layout is not this image's (and is not an image to pick either).
      addLayoutArtifact(layout, artifactBytes({ ...f.subject, digest: `sha256:${'e'.repeat(64)}` }, [{ [mergedKey('sha256')]: wrong(f.merged) }]));
      const repo = join(tmp, 'repo-artifact');
      const r = cfs('pull', '--repo', repo, '--explain', `oci:${layout}:plain`, 'app');
      assert.equal(ok(r).trim(), f.merged);
      assert.match(r.stderr, /looked for in the manifest and among its referrers \(the layout's index\.json\)/);
      assert.match(r.stderr, new RegExp(`seal: found artifact ${artifact.digest}, fsverity-sha256`));
      assert.deepEqual(inspect(repo, 'app').seal, { algorithm: 'sha256', merged: f.merged, config: f.config, mode: 'artifact', artifact: artifact.digest });
      ok(cfs('gc', '--repo', repo));
      assert.ok(readFileSync(join(repo, 'blobs/sha256', artifact.digest.slice(7))).equals(readFileSync(blobFile(layout, artifact.digest))), 'the artifact manifest kept as served');
      ok(cfs('fsck', '--repo', repo));
      assert.match(ok(cfs('verify', '--repo', repo, 'app')), new RegExp(`sealed by artifact ${artifact.digest}.*checked image, config, artifact, rebuild`));
      // Without a REF, the layout still holds one image: its artifacts are not images to choose from.
      assert.equal(ok(cfs('pull', '--repo', repo, `oci:${layout}`, 'app2')).trim(), f.merged);
    });

    await t.test('inline and artifact together: both checked, the artifact recorded with the inline config digest, verify ok', () => {
      const layout = layoutCopy(tmp, f.layout, 'both');
      const sealed = inlineSealLayout(layout, 'plain', 'both', { [mergedKey('sha256')]: f.merged }, { [configKey('sha256')]: f.config });
      const artifact = addLayoutArtifact(layout, artifactBytes(sealed, [{ [mergedKey('sha256')]: f.merged }]));
      const repo = join(tmp, 'repo-both');
      const r = cfs('pull', '--repo', repo, '--explain', `oci:${layout}:both`, 'app');
      assert.equal(ok(r).trim(), f.merged);
      assert.match(r.stderr, /seal: found inline.*\n.*seal: found artifact/);
      assert.deepEqual(inspect(repo, 'app').seal, { algorithm: 'sha256', merged: f.merged, config: f.config, mode: 'artifact', artifact: artifact.digest });
      ok(cfs('verify', '--repo', repo, 'app'));
    });

    const refused: { what: string; seal: (layout: string) => string; error: RegExp }[] = [
      {
        what: 'inline merged digest wrong',
        seal: (layout) => (inlineSealLayout(layout, 'plain', 'x', { [mergedKey('sha256')]: wrong(f.merged) }, { [configKey('sha256')]: f.config }), 'x'),
        error: new RegExp(`seal mismatch: composefs\\.merged\\.erofs\\.v1\\.fsverity-sha256-12 \\(inline\\) expects ${wrong(f.merged)}, computed ${f.merged}$`),
      },
      {
        what: 'artifact config digest wrong',
        seal: (layout) => (addLayoutArtifact(layout, artifactBytes(f.subject, [{ [configKey('sha256')]: wrong(f.config) }, { [mergedKey('sha256')]: f.merged }])), 'plain'),
        error: new RegExp(`seal mismatch: composefs\\.config\\.fsverity-sha256-12 \\(artifact sha256:[0-9a-f]{64}\\) expects ${wrong(f.config)}, computed ${f.config}$`),
      },
      {
        what: 'artifact merged digest wrong, inline right: every seal must agree',
        seal: (layout) => {
          const sealed = inlineSealLayout(layout, 'plain', 'x', { [mergedKey('sha256')]: f.merged }, {});
          addLayoutArtifact(layout, artifactBytes(sealed, [{ [mergedKey('sha256')]: wrong(f.merged) }]));
          return 'x';
        },
        error: /seal mismatch: composefs\.merged\.erofs\.v1\.fsverity-sha256-12 \(artifact sha256:[0-9a-f]{64}\) expects/,
      },
      {
        what: 'sealed in sha512 only',
        seal: (layout) => (inlineSealLayout(layout, 'plain', 'x', { [mergedKey('sha512')]: f.merged512 }, { [configKey('sha512')]: f.config512 }), 'x'),
        error: /sealed with sha512 only \(inline\), and the repository's algorithm is sha256: the seal cannot be checked$/,
      },
      {
        what: 'two algorithms mixed in one artifact',
        seal: (layout) => (addLayoutArtifact(layout, artifactBytes(f.subject, [{ [configKey('sha256')]: f.config }, { [mergedKey('sha512')]: f.merged512 }])), 'plain'),
        error: /composefs artifact sha256:[0-9a-f]{64}: mixes sha256 and sha512 \(one algorithm per artifact\)$/,
      },
      {
        what: 'inline digest of a bad length',
        seal: (layout) => (inlineSealLayout(layout, 'plain', 'x', { [mergedKey('sha256')]: f.merged.slice(2) }, {}), 'x'),
        error: /annotation composefs\.merged\.erofs\.v1\.fsverity-sha256-12: digest has 62 characters, not 64$/,
      },
      {
        what: 'inline digest not hexadecimal',
        seal: (layout) => (inlineSealLayout(layout, 'plain', 'x', { [mergedKey('sha256')]: f.merged.toUpperCase() }, {}), 'x'),
        error: /digest is not lowercase hexadecimal$/,
      },
      {
        what: 'an unknown algorithm',
        seal: (layout) => (inlineSealLayout(layout, 'plain', 'x', { 'composefs.merged.erofs.v1.fsverity-blake3-12': f.merged }, {}), 'x'),
        error: /unknown fs-verity algorithm "blake3"/,
      },
    ];
    for (const c of refused) {
      await t.test(`refused, no name: ${c.what}`, () => {
        const layout = layoutCopy(tmp, f.layout, `bad-${refused.indexOf(c)}`);
        const ref = c.seal(layout);
        const repo = join(tmp, `repo-bad-${refused.indexOf(c)}`);
        oneLineError(cfs('pull', '--repo', repo, `oci:${layout}:${ref}`, 'app'), c.error);
        assert.deepEqual(names(repo), [], 'no name');
        assert.deepEqual(readdirSync(join(repo, 'images')), [], 'no image stored');
        ok(cfs('fsck', '--repo', repo));
      });
    }

    await t.test('--require-seal refuses an unsealed image (one line, no name); without it the pull goes on', () => {
      const repo = join(tmp, 'repo-require');
      oneLineError(cfs('pull', '--repo', repo, '--require-seal', `oci:${f.layout}:plain`, 'app'), /oci:.*:plain: not sealed \(no composefs seal in its manifest nor among its referrers\), and a seal is required$/);
      assert.deepEqual(names(repo), []);
      const r = cfs('pull', '--repo', repo, '--explain', `oci:${f.layout}:plain`, 'app');
      assert.equal(ok(r).trim(), f.merged);
      assert.match(r.stderr, /seal: none found: the image is not sealed/);
      assert.equal(inspect(repo, 'app').seal, null);
      assert.match(ok(cfs('inspect', '--repo', repo, 'app')), /seal: +none \(not sealed\)/);
    });

    await t.test('cfs verify: ok; unsealed fails unless --allow-unsealed; a tampered image, config or layer record is one line each', () => {
      const layout = layoutCopy(tmp, f.layout, 'verify');
      const artifact = addLayoutArtifact(layout, artifactBytes(f.subject, [{ [configKey('sha256')]: f.config }, { [mergedKey('sha256')]: f.merged }]));
      const repo = join(tmp, 'repo-verify');
      ok(cfs('pull', '--repo', repo, `oci:${layout}:plain`, 'app'));
      ok(cfs('pull', '--repo', repo, `oci:${f.layout}:plain`, 'unsealed'));
      const good = JSON.parse(ok(cfs('verify', '--repo', repo, '--json', 'app')));
      assert.equal(good.ok, true);
      assert.deepEqual(good.problems, []);
      assert.equal(good.seal.artifact, artifact.digest);

      oneLineError(cfs('verify', '--repo', repo, 'unsealed'), /unsealed: not sealed/);
      assert.match(ok(cfs('verify', '--repo', repo, '--allow-unsealed', 'unsealed')), /unsealed: ok \(not sealed; checked image, config, rebuild\)/);
      oneLineError(cfs('verify', '--repo', repo, 'nothing'), /no image named 'nothing'/);

      const imageFile = join(repo, 'images', f.merged);
      const image = readFileSync(imageFile);
      const tampered = Buffer.from(image);
      tampered[tampered.length - 1] ^= 0xff;
      writeFileSync(imageFile, tampered);
      const computed = fsverityOf(imageFile);
      const r = cfs('verify', '--repo', repo, 'app');
      oneLineError(r, new RegExp(`app: the stored image's fs-verity digest is ${computed}, the seal's merged digest \\(composefs\\.merged\\.erofs\\.v1\\.fsverity-sha256-12\\) ${f.merged}$`));
      const json = JSON.parse(cfs('verify', '--repo', repo, '--json', 'app').stdout);
      assert.equal(json.ok, false);
      assert.deepEqual(json.problems.map((p: { check: string }) => p.check), ['image']);
      assert.equal(json.problems[0].computed, computed);
      writeFileSync(imageFile, image);

      const configDigest = (JSON.parse(readFileSync(join(repo, 'names', 'app'), 'utf8')) as { config: string }).config;
      const configFile = join(repo, 'blobs/sha256', configDigest.slice(7));
      const config = readFileSync(configFile);
      writeFileSync(configFile, Buffer.concat([config, Buffer.from(' ')]));
      oneLineError(cfs('verify', '--repo', repo, 'app'), new RegExp(`app: config blob ${configDigest} has digest sha256:[0-9a-f]{64}$`));
      writeFileSync(configFile, config);

      // The artifact's blob altered (here: made to name another subject).
      const artifactFile = join(repo, 'blobs/sha256', artifact.digest.slice(7));
      const stored = readFileSync(artifactFile);
      writeFileSync(artifactFile, artifactBytes({ ...f.subject, digest: `sha256:${'e'.repeat(64)}` }, [{ [configKey('sha256')]: f.config }, { [mergedKey('sha256')]: f.merged }]));
      oneLineError(cfs('verify', '--repo', repo, 'app'), /app: artifact sha256:[0-9a-f]{64}: its bytes have digest/);
      writeFileSync(artifactFile, stored);

      // A layer record changed: the image rebuilt from the records is not the stored one.
      const diffId = JSON.parse(ok(cfs('inspect', '--repo', repo, '--json', 'app'))).layers[1] as string;
      const recordFile = join(repo, 'layers', diffId.slice(7));
      const record = readFileSync(recordFile, 'utf8');
      assert.ok(record.includes('usr/second'), 'the record names its entries');
      writeFileSync(recordFile, record.replace('usr/second', 'usr/secone'));
      oneLineError(cfs('verify', '--repo', repo, 'app'), new RegExp(`app: the image rebuilt from the layer records has fs-verity digest [0-9a-f]{64}, the seal ${f.merged}$`));
      writeFileSync(recordFile, record);
      ok(cfs('verify', '--repo', repo, 'app'));
    });

    await t.test('cfs mount NAME pins digest= to the sealed digest: a record pointed at another image, or a tampered image, is refused', { skip: isRoot ? false : 'needs root' }, () => {
      const layout = layoutCopy(tmp, f.layout, 'mount');
      inlineSealLayout(layout, 'plain', 'sealed', { [mergedKey('sha256')]: f.merged }, { [configKey('sha256')]: f.config });
      writeLayout(layout, 'other', gzLayers(base, other));
      const repo = join(tmp, 'repo-mount');
      ok(cfs('pull', '--repo', repo, `oci:${layout}:sealed`, 'app'));
      const otherImage = ok(cfs('pull', '--repo', repo, `oci:${layout}:other`, 'other')).trim();
      const mnt = join(tmp, 'mnt');
      mkdirSync(mnt);
      const m = JSON.parse(ok(cfs('mount', '--json', '--repo', repo, 'app', mnt))) as { verity: boolean };
      try {
        assert.equal(m.verity, true);
        assert.equal(readFileSync(join(mnt, 'etc/os-release'), 'utf8'), 'ID=sealed\n');
      } finally {
        ok(cfs('umount', mnt));
      }
      // The name's record pointed at another image (its seal unchanged): the seal's digest is what the mount pins.
      const recordFile = join(repo, 'names', 'app');
      const record = readFileSync(recordFile, 'utf8');
      writeFileSync(recordFile, record.replace(`"image": "${f.merged}"`, `"image": "${otherImage}"`));
      oneLineError(cfs('mount', '--repo', repo, 'app', mnt), /digest/i);
      writeFileSync(recordFile, record);
      // The sealed image itself tampered with.
      const imageFile = join(repo, 'images', f.merged);
      const image = readFileSync(imageFile);
      writeFileSync(imageFile, readFileSync(join(repo, 'images', otherImage)));
      oneLineError(cfs('mount', '--repo', repo, 'app', mnt), /digest/i);
      writeFileSync(imageFile, image);
      assert.deepEqual(spawnSync('findmnt', ['-n', mnt]).stdout.toString(), '', 'nothing left mounted');
    });
  } finally {
    removeTemp(tmp);
  }
});

test('seals from a real registry: inline through skopeo, artifacts through the referrers tag and the referrers API; bad referrers one line, no name', { skip: !haveRegistry ? NO_REGISTRY : MISSING }, async (t) => {
  const tmp = makeTemp('seal-registry');
  const registry = await startRegistry({ auth: { htpasswd: { alice: 'secret' } } });
  const creds = 'alice:secret';
  const closers: { close(): Promise<void> }[] = [];
  try {
    const f = fixture(tmp);
    const layout = layoutCopy(tmp, f.layout, 'push');
    inlineSealLayout(layout, 'plain', 'inline', { [mergedKey('sha256')]: f.merged }, { [configKey('sha256')]: f.config });
    const pull = (host: string, path: string, repo: string, ...extra: string[]) =>
      cfsAsync('pull', '--repo', repo, '--cert-dir', registry.certs.certDir, '--creds', creds, ...extra, `docker://${host}/${path}`, 'app');
    const sealArtifact = (subject: Descriptor, merged = f.merged) => artifactBytes(subject, [{ [configKey('sha256')]: f.config }, { [mergedKey('sha256')]: merged }]);

    await t.test('inline: the annotations survive skopeo copy, and the pull checks them', async () => {
      await push(registry, `oci:${layout}:inline`, 'test/inline:v1', creds);
      const raw = JSON.parse(skopeo('inspect', '--raw', '--cert-dir', registry.certs.certDir, '--creds', creds, `docker://${registry.host}/test/inline:v1`));
      assert.equal(raw.annotations[mergedKey('sha256')], f.merged);
      const repo = join(tmp, 'r-inline');
      const r = await pull(registry.host, 'test/inline:v1', repo, '--explain');
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, /referrers tag: the registry has no referrers API/);
      assert.equal(inspect(repo, 'app').seal?.mode, 'inline');
    });

    await t.test('artifact through the referrers tag schema (the registry has no referrers API)', async () => {
      await push(registry, `oci:${f.layout}:plain`, 'test/tagged:v1', creds);
      const artifact = await pushArtifact(registry, creds, 'test/tagged', sealArtifact(f.subject));
      await pushReferrersTag(registry, creds, 'test/tagged', f.subject.digest, [{ ...artifact, artifactType: 'application/example.other' }, artifact]);
      const repo = join(tmp, 'r-tagged');
      const r = await pull(registry.host, 'test/tagged:v1', repo, '--explain', '--require-seal');
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout.trim(), f.merged);
      assert.match(r.stderr, new RegExp(`referrers tag.*\\n.*seal: found artifact ${artifact.digest}`));
      assert.deepEqual(inspect(repo, 'app').seal, { algorithm: 'sha256', merged: f.merged, config: f.config, mode: 'artifact', artifact: artifact.digest });
      assert.equal((await cfsAsync('verify', '--repo', repo, 'app')).status, 0);
    });

    await t.test('artifact whose subject is not the image: one line, no name', async () => {
      await push(registry, `oci:${f.layout}:plain`, 'test/stray:v1', creds);
      const elsewhere = { ...f.subject, digest: `sha256:${'d'.repeat(64)}` };
      const artifact = await pushArtifact(registry, creds, 'test/stray', sealArtifact(elsewhere));
      await pushReferrersTag(registry, creds, 'test/stray', f.subject.digest, [artifact]);
      const repo = join(tmp, 'r-stray');
      oneLineError(await pull(registry.host, 'test/stray:v1', repo), new RegExp(`composefs artifact ${artifact.digest}: its subject is sha256:d{64}, not the image ${f.subject.digest}$`));
      assert.deepEqual(names(repo), []);
    });

    await t.test('artifact whose merged digest is wrong, through the tag schema: one line, no name', async () => {
      await push(registry, `oci:${f.layout}:plain`, 'test/wrong:v1', creds);
      const artifact = await pushArtifact(registry, creds, 'test/wrong', sealArtifact(f.subject, wrong(f.merged)));
      await pushReferrersTag(registry, creds, 'test/wrong', f.subject.digest, [artifact]);
      const repo = join(tmp, 'r-wrong');
      oneLineError(await pull(registry.host, 'test/wrong:v1', repo), new RegExp(`seal mismatch: composefs\\.merged\\.erofs\\.v1\\.fsverity-sha256-12 \\(artifact ${artifact.digest}\\) expects ${wrong(f.merged)}, computed ${f.merged}$`));
      assert.deepEqual(names(repo), []);
    });

    // The referrers API, which the registry lacks, answered by a front; the artifact itself comes from the registry.
    await push(registry, `oci:${f.layout}:plain`, 'test/api:v1', creds);
    const apiArtifact = await pushArtifact(registry, creds, 'test/api', sealArtifact(f.subject));
    let answer: { status: number; contentType?: string; body: Buffer } = { status: 404, body: Buffer.alloc(0) };
    const asked: string[] = [];
    const front = await startReferrersFront(registry, (path) => {
      asked.push(path);
      return answer;
    });
    closers.push(front);

    await t.test('artifact through the referrers API (the front answers it; filtered by type here too)', async () => {
      answer = { status: 200, contentType: OCI_INDEX, body: referrersIndex([{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${'f'.repeat(64)}`, size: 10, artifactType: 'application/example.other' }, apiArtifact]) };
      const repo = join(tmp, 'r-api');
      const r = await pull(front.host, 'test/api:v1', repo, '--explain');
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, /the registry's referrers API/);
      assert.match(asked.at(-1)!, new RegExp(`^/v2/test/api/referrers/${f.subject.digest}\\?artifactType=${encodeURIComponent(ARTIFACT_TYPE).replace(/\./g, '\\.')}$`));
      assert.equal(inspect(repo, 'app').seal?.artifact, apiArtifact.digest);
    });

    const badIndexes: { what: string; answer: () => typeof answer; error: RegExp }[] = [
      {
        what: 'too large',
        answer: () => ({ status: 200, contentType: OCI_INDEX, body: Buffer.concat([referrersIndex([apiArtifact]).subarray(0, -2), Buffer.from(`,"pad":"${'x'.repeat(5 << 20)}"}`)]) }),
        error: /referrers of sha256:[0-9a-f]{64}: index too large \(\d+ bytes, at most 4194304\)$/,
      },
      {
        what: 'malformed (a descriptor without a digest)',
        answer: () => ({ status: 200, contentType: OCI_INDEX, body: Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [{ mediaType: 'x', size: 1, artifactType: ARTIFACT_TYPE }] })) }),
        error: /referrers of sha256:[0-9a-f]{64}: manifests\[0\]: descriptor without a digest$/,
      },
      {
        what: 'not JSON',
        answer: () => ({ status: 200, contentType: OCI_INDEX, body: Buffer.from('{"manifests": [') }),
        error: /referrers of sha256:[0-9a-f]{64}: manifest is not valid JSON/,
      },
      {
        what: 'too many composefs artifacts',
        answer: () => ({ status: 200, contentType: OCI_INDEX, body: referrersIndex(Array.from({ length: 17 }, (_, i) => ({ ...apiArtifact, digest: `sha256:${i.toString(16).padStart(64, '0')}` }))) }),
        error: /17 composefs artifacts refer to sha256:[0-9a-f]{64} \(at most 16 are read\)$/,
      },
    ];
    for (const c of badIndexes) {
      await t.test(`referrers index ${c.what}: one line, no name`, async () => {
        answer = c.answer();
        const repo = join(tmp, `r-bad-${badIndexes.indexOf(c)}`);
        oneLineError(await pull(front.host, 'test/api:v1', repo), c.error);
        assert.deepEqual(names(repo), []);
      });
    }

    await t.test('a referrers API answer that is no index (an HTML page) falls back to the tag schema', async () => {
      answer = { status: 200, contentType: 'text/html', body: Buffer.from('<html>not here</html>') };
      const repo = join(tmp, 'r-html');
      const r = await pull(front.host, 'test/api:v1', repo, '--explain');
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, /seal: none found/);
      assert.equal(inspect(repo, 'app').seal, null);
    });
  } finally {
    for (const c of closers) await c.close();
    await registry.stop();
    removeTemp(tmp);
  }
});

test('the library: findSeals on a source, pull with requireSeal, verifyName', { skip: MISSING }, async () => {
  const tmp = makeTemp('seal-library');
  try {
    const f = fixture(tmp);
    const layout = layoutCopy(tmp, f.layout, 'lib');
    const artifact = addLayoutArtifact(layout, artifactBytes(f.subject, [{ [configKey('sha256')]: f.config }, { [mergedKey('sha256')]: f.merged }]));
    inlineSealLayout(layout, 'plain', 'inline', { [mergedKey('sha256')]: f.merged, [mergedKey('sha512')]: f.merged512 }, {});
    const lib = await import('../src/index.js');
    const { openSource } = await import('../src/oci/transports.js');
    const source = await openSource(`oci:${layout}:plain`);
    try {
      const found = await lib.findSeals(source, await source.resolve());
      assert.equal(found.via, 'layout');
      assert.deepEqual(found.seals, [{ algorithm: 'sha256', merged: f.merged, config: f.config, mode: 'artifact', artifact: artifact.digest }]);
      assert.ok(found.artifacts.get(artifact.digest)?.equals(readFileSync(blobFile(layout, artifact.digest))));
    } finally {
      await source.close();
    }
    const repo = await lib.openRepository(join(tmp, 'repo'));
    try {
      await assert.rejects(lib.pull(repo, `oci:${f.layout}:plain`, { name: 'bare', requireSeal: true }), (err: Error) => {
        assert.equal((err as { code?: string }).code, 'seal');
        assert.match(err.message, /not sealed/);
        return true;
      });
      // Inline in two algorithms: the repository's is checked, the other kept aside.
      const events: unknown[] = [];
      const r = await lib.pull(repo, `oci:${layout}:inline`, { name: 'app', requireSeal: true, onEvent: (e) => e.type === 'sealed' && events.push(e) });
      assert.deepEqual(r.record.seal, { algorithm: 'sha256', merged: f.merged, mode: 'inline' });
      assert.equal((events[0] as { unchecked: { algorithm: string }[] }).unchecked[0].algorithm, 'sha512');
      const v = await lib.verifyName(repo, 'app');
      assert.equal(v.ok, true, JSON.stringify(v.problems));
      assert.deepEqual(v.checked, ['image', 'config', 'manifest', 'rebuild']);
    } finally {
      repo.close();
    }
  } finally {
    removeTemp(tmp);
  }
});
