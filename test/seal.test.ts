/**
 * `cfs seal` against the real components: the CNCF registry (docker-registry
 * 2.8, no referrers API, so the referrers tag schema is what is tested),
 * images made by umoci and pushed by skopeo, and every assertion read back
 * by tools independent of this code: `skopeo inspect --raw` for what the
 * registry holds, `skopeo copy` for what a plain copy keeps, `curl` for the
 * raw pushes of other referrers, `fsverity digest` for the config's digest,
 * and for the merged digest over the reference canonical image
 * (test/helpers/canonical.ts: umoci raw unpack, canonicalized on disk,
 * `mkcomposefs --min-version=1`). The repositories here hold sha256; a
 * sha512 repository's image differs (its metacopy xattrs name sha512
 * objects) and has no reference writer, so sha512 seals are tested elsewhere.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cfs, ok, oneLineError } from './helpers/cli.js';
import { blobFile, haveTool, indexEntry } from './helpers/oci-images.js';
import { NO_REGISTRY, haveRegistry, push, startProxy, startRegistry, type Registry } from './helpers/registry.js';
import { makeTemp, removeTemp } from './helpers/temp.js';
import { cliPath, isRoot } from './helpers/paths.js';
import { referenceMergedDigest } from './helpers/canonical.js';

const haveTools = haveRegistry && haveTool('curl') && haveTool('fsverity');
const haveReference = isRoot && haveTool('umoci') && haveTool('setfattr') && haveTool('getfattr');
const SKIP = (!haveTools && `${NO_REGISTRY} (or curl, fsverity missing)`) || (!haveReference && 'the reference canonical image needs root, umoci, setfattr and getfattr');
const ARTIFACT_TYPE = 'application/vnd.composefs.metadata.v1';
const MERGED_KEY = 'composefs.merged.erofs.v1.fsverity-sha256-12';
const CONFIG_KEY = 'composefs.config.fsverity-sha256-12';
const EMPTY = { mediaType: 'application/vnd.oci.empty.v1+json', digest: 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a', size: 2 };
const INDEX_TYPE = 'application/vnd.oci.image.index.v1+json';
const MANIFEST_TYPE = 'application/vnd.oci.image.manifest.v1+json';

const sha256 = (b: Buffer | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** A layout image with a /usr tree (what the canonical form needs): two layers, the second adding a file. */
function makeUsrImage(layout: string, tag: string, content: string): void {
  const run = (...args: string[]) => execFileSync('umoci', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  if (!existsSync(join(layout, 'oci-layout'))) run('init', '--layout', layout);
  run('new', '--image', `${layout}:${tag}`);
  const bundle = `${layout}.bundle-${tag}`;
  rmSync(bundle, { recursive: true, force: true });
  run('unpack', '--image', `${layout}:${tag}`, bundle);
  mkdirSync(join(bundle, 'rootfs/usr/bin'), { recursive: true });
  mkdirSync(join(bundle, 'rootfs/usr/share/doc'), { recursive: true });
  writeFileSync(join(bundle, 'rootfs/usr/bin/hello'), `#!/bin/sh\necho ${content}\n`, { mode: 0o755 });
  writeFileSync(join(bundle, 'rootfs/usr/share/doc/big'), Buffer.alloc(1 << 20, content));
  run('repack', '--image', `${layout}:${tag}`, bundle);
  rmSync(bundle, { recursive: true, force: true });
  run('unpack', '--image', `${layout}:${tag}`, bundle);
  writeFileSync(join(bundle, 'rootfs/usr/share/doc/second'), `${content} again\n`);
  run('repack', '--image', `${layout}:${tag}`, bundle);
  rmSync(bundle, { recursive: true, force: true });
  run('gc', '--layout', layout);
}

/** The fs-verity digest `fsverity digest` prints for a file (hex). */
function fsverityOf(file: string): string {
  const out = execFileSync('fsverity', ['digest', '--compact', file], { encoding: 'utf8' }).trim();
  assert.match(out, /^[0-9a-f]{64}$/);
  return out;
}

interface Ctx {
  dir: string;
  layout: string;
  registry: Registry;
  auth: string[];
  skopeoAuth: string[];
}

function skopeoRaw(ctx: Ctx, ref: string): { text: string; json: Record<string, unknown> } | null {
  const r = spawnSync('skopeo', ['inspect', '--raw', ...(ref.startsWith('docker://') ? ctx.skopeoAuth : []), ref], { encoding: 'utf8' });
  if (r.status !== 0) {
    assert.match(r.stderr, /manifest unknown|not found|no such|does not exist/i, r.stderr);
    return null;
  }
  return { text: r.stdout, json: JSON.parse(r.stdout) };
}

/** PUT raw bytes as a manifest with curl (basic auth, the test CA): a writer independent of ours. */
function curlPutManifest(ctx: Ctx, repo: string, reference: string, bytes: string, mediaType: string): void {
  const out = execFileSync('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code}', '--cacert', ctx.registry.certs.caCert, '-u', 'alice:secret', '-X', 'PUT', '-H', `Content-Type: ${mediaType}`, '--data-binary', bytes, `https://${ctx.registry.host}/v2/${repo}/manifests/${reference}`], { encoding: 'utf8' });
  assert.equal(out, '201', `curl PUT ${repo}/manifests/${reference}`);
}

/**
 * `cfs` run without blocking this process: the proxies and the token issuer
 * answer from its event loop, which spawnSync would stop.
 */
function cfsAsync(args: string[], env?: NodeJS.ProcessEnv): Promise<SpawnSyncReturns<string>> {
  return new Promise((resolve) => {
    const child = execFile(cliPath('cfs'), args, { encoding: 'utf8', env: env ?? process.env, timeout: 120_000 }, (err, stdout, stderr) => {
      resolve({ pid: child.pid ?? 0, output: [null, stdout, stderr], stdout, stderr, status: err ? (typeof err.code === 'number' ? err.code : 1) : 0, signal: null });
    });
  });
}

/** Upload a blob with curl (POST for a session, PUT to its Location with ?digest=). */
function curlPutBlob(ctx: Ctx, repo: string, bytes: string): void {
  const curl = ['curl', '-sS', '--fail', '--cacert', ctx.registry.certs.caCert, '-u', 'alice:secret'];
  const head = execFileSync(curl[0], [...curl.slice(1), '-D', '-', '-o', '/dev/null', '-X', 'POST', `https://${ctx.registry.host}/v2/${repo}/blobs/uploads/`], { encoding: 'utf8' });
  const location = /^location:\s*(\S+)/im.exec(head)?.[1];
  assert.ok(location, head);
  const url = new URL(location, `https://${ctx.registry.host}`);
  url.searchParams.set('digest', sha256(bytes));
  execFileSync(curl[0], [...curl.slice(1), '-o', '/dev/null', '-X', 'PUT', '-H', 'Content-Type: application/octet-stream', '--data-binary', bytes, url.href]);
}

function failsOneLine(r: SpawnSyncReturns<string>, pattern: RegExp): void {
  oneLineError(r, pattern);
  assert.equal(r.stdout, '');
}

test('cfs seal: artifacts, the referrers tag schema, inline seals, oci: layouts, and bad input, against the real registry', { skip: SKIP }, async (t) => {
  const dir = makeTemp('seal');
  const layout = join(dir, 'layout');
  makeUsrImage(layout, 'v1', 'one');
  makeUsrImage(layout, 'v2', 'two');
  const registry = await startRegistry({ auth: { htpasswd: { alice: 'secret' } } });
  const ctx: Ctx = { dir, layout, registry, auth: ['--creds', 'alice:secret', '--cert-dir', registry.certs.certDir], skopeoAuth: ['--creds', 'alice:secret', '--cert-dir', registry.certs.certDir] };
  const proxies: { close(): Promise<void> }[] = [];
  try {
    await push(registry, `oci:${layout}:v1`, 'test/app:v1', 'alice:secret');
    await push(registry, `oci:${layout}:v2`, 'test/app:v2', 'alice:secret');
    const app = `docker://${registry.host}/test/app`;
    const repo = join(dir, 'repo');
    const subjectBytes = skopeoRaw(ctx, `${app}:v1`)!.text;
    const subject = sha256(subjectBytes);
    const configDigest = (JSON.parse(subjectBytes) as { config: { digest: string } }).config.digest;
    const wantConfig = fsverityOf(blobFile(layout, configDigest));
    // The merged digest: `fsverity digest` over the reference canonical image of v1 (not our code).
    const wantMerged = referenceMergedDigest(layout, 'v1').digest;
    assert.match(wantMerged, /^[0-9a-f]{64}$/);
    // An unsealed `cfs pull` of the pushed image, in a repository of its own, records that digest.
    const pulledRepo = join(dir, 'pulled');
    assert.equal(ok(cfs('pull', '--quiet', '--repo', pulledRepo, ...ctx.auth, `${app}:v1`)).trim(), wantMerged, 'the pull builds the reference canonical image');
    const tagOf = (digest: string) => `${app}:${digest.replace(':', '-')}`;

    await t.test('artifact mode: an artifact beside the image, listed in the sha256-HEX referrers index', async () => {
      // Another tool's referrer of the same image, already listed in the tag schema's index (pushed by curl).
      const other = JSON.stringify({ schemaVersion: 2, mediaType: MANIFEST_TYPE, artifactType: 'application/example.sbom', config: EMPTY, layers: [EMPTY], subject: { mediaType: MANIFEST_TYPE, digest: subject, size: subjectBytes.length } });
      curlPutBlob(ctx, 'test/app', '{}');
      curlPutManifest(ctx, 'test/app', sha256(other), other, MANIFEST_TYPE);
      const otherEntry = { mediaType: MANIFEST_TYPE, digest: sha256(other), size: other.length, artifactType: 'application/example.sbom' };
      curlPutManifest(ctx, 'test/app', subject.replace(':', '-'), JSON.stringify({ schemaVersion: 2, mediaType: INDEX_TYPE, manifests: [otherEntry] }), INDEX_TYPE);

      const r = cfs('seal', '--repo', repo, ...ctx.auth, '--json', `${app}:v1`);
      const result = JSON.parse(ok(r)) as { artifact: { digest: string; where: string; discovery: { kind: string } }; merged: string; config: string; pulled: boolean };
      assert.equal(result.pulled, true, 'the image was not in the repository: pulled first');
      assert.equal(result.artifact.discovery.kind, 'tag-schema');
      const artifact = skopeoRaw(ctx, `${app}@${result.artifact.digest}`);
      assert.ok(artifact, 'the registry serves the artifact by digest');
      assert.equal(sha256(artifact.text), result.artifact.digest);
      assert.deepEqual(artifact.json, {
        schemaVersion: 2,
        mediaType: MANIFEST_TYPE,
        artifactType: ARTIFACT_TYPE,
        config: EMPTY,
        layers: [
          { ...EMPTY, annotations: { [CONFIG_KEY]: wantConfig } },
          { ...EMPTY, annotations: { [MERGED_KEY]: wantMerged } },
        ],
        subject: { mediaType: MANIFEST_TYPE, digest: subject, size: subjectBytes.length },
      });
      const index = skopeoRaw(ctx, tagOf(subject))!.json as { mediaType: string; manifests: Record<string, unknown>[] };
      assert.equal(index.mediaType, INDEX_TYPE);
      assert.deepEqual(index.manifests, [otherEntry, { mediaType: MANIFEST_TYPE, digest: result.artifact.digest, size: artifact.text.length, artifactType: ARTIFACT_TYPE }]);
      // The image itself is untouched.
      assert.equal(skopeoRaw(ctx, `${app}:v1`)!.text, subjectBytes);
    });

    await t.test('a second seal of an image already in the repository reads no object and lists nothing twice', async () => {
      // Without its objects and layer records the repository can still give the merged digest: the name's record holds it.
      for (const sub of ['objects', 'layers']) {
        for (const e of readdirSync(join(repo, sub))) rmSync(join(repo, sub, e), { recursive: true, force: true });
      }
      const r = cfs('seal', '--repo', repo, ...ctx.auth, '--explain', `${app}:v1`);
      const digest = ok(r).trim();
      assert.match(r.stderr, /merged digest from the name '.*test\/app:v1', which holds this manifest in canonical form \(nothing read again\)/);
      assert.match(r.stderr, /already in the referrers index/);
      const index = skopeoRaw(ctx, tagOf(subject))!.json as { manifests: { digest: string }[] };
      assert.deepEqual(index.manifests.map((m) => m.digest).filter((d) => d === digest), [digest], 'listed once');
      assert.equal(index.manifests.length, 2, 'the other referrer kept');
    });

    await t.test('a registry with the referrers API (OCI-Subject on the PUT): no referrers tag is written', async () => {
      const v2 = skopeoRaw(ctx, `${app}:v2`)!.text;
      // A front that answers as a registry with the referrers API would: OCI-Subject on an artifact's PUT.
      const front = await startProxy(registry, (path, _i, method) => (method === 'PUT' && path.includes('/manifests/sha256:') ? { kind: 'forward', responseHeaders: { 'oci-subject': sha256(v2) } } : { kind: 'forward' }));
      proxies.push(front);
      const r = await cfsAsync(['seal', '--repo', join(dir, 'api-repo'), ...ctx.auth, '--json', `docker://${front.host}/test/app:v2`]);
      const result = JSON.parse(ok(r)) as { artifact: { digest: string; discovery: { kind: string; subject: string } } };
      assert.deepEqual(result.artifact.discovery, { kind: 'referrers-api', subject: sha256(v2) });
      assert.ok(skopeoRaw(ctx, `${app}@${result.artifact.digest}`), 'the artifact is there');
      assert.equal(skopeoRaw(ctx, tagOf(sha256(v2))), null, 'no sha256-HEX tag');
      // The pull that sealing starts with looks for seals (and so at the tag); after the artifact's PUT nothing looks at it.
      const put = front.seen.findIndex((s) => s.method === 'PUT' && s.path.includes(`/manifests/${result.artifact.digest}`));
      assert.ok(put >= 0, 'the artifact was pushed through the front');
      assert.ok(!front.seen.slice(put).some((s) => s.path.includes('/manifests/sha256-')), 'the tag was not even looked up');
    });

    await t.test('--inline into the same repository: nothing but the manifest is sent; skopeo sees and copies the annotations', async () => {
      const proxy = await startProxy(registry, () => ({ kind: 'forward' }));
      proxies.push(proxy);
      const front = `docker://${proxy.host}/test/app`;
      const digest = ok(await cfsAsync(['seal', '--inline', '--repo', repo, ...ctx.auth, `${front}:v1`, `${front}:sealed`])).trim();
      const writes = proxy.seen.filter((s) => s.method !== 'GET');
      assert.deepEqual(writes.map((s) => `${s.method} ${s.path}`), [`PUT /v2/test/app/manifests/sealed`], 'no blob checked, mounted or uploaded');
      const sealed = skopeoRaw(ctx, `${app}:sealed`)!;
      assert.equal(sha256(sealed.text), digest);
      const m = sealed.json as { annotations: Record<string, string>; config: { digest: string; annotations: Record<string, string> }; layers: unknown[] };
      assert.equal(m.annotations[MERGED_KEY], wantMerged);
      assert.equal(m.config.annotations[CONFIG_KEY], wantConfig);
      assert.equal(m.config.digest, configDigest);
      assert.deepEqual(m.layers, (JSON.parse(subjectBytes) as { layers: unknown[] }).layers);
      const copied = join(dir, 'copied');
      execFileSync('skopeo', ['copy', '--quiet', '--src-creds', 'alice:secret', '--src-cert-dir', registry.certs.certDir, `${app}:sealed`, `oci:${copied}:s`]);
      const kept = skopeoRaw(ctx, `oci:${copied}:s`)!.json as typeof m;
      assert.equal(kept.annotations[MERGED_KEY], wantMerged);
      assert.equal(kept.config.annotations[CONFIG_KEY], wantConfig);
    });

    await t.test('--inline into another repository of the registry mounts the blobs; into another registry copies them', async () => {
      const proxy = await startProxy(registry, () => ({ kind: 'forward' }));
      proxies.push(proxy);
      const front = `docker://${proxy.host}`;
      const r = await cfsAsync(['seal', '--inline', '--repo', repo, ...ctx.auth, '--explain', `${front}/test/app:v1`, `${front}/other/app:sealed`]);
      const digest = ok(r).trim();
      const posts = proxy.seen.filter((s) => s.method === 'POST' || (s.method === 'PUT' && s.path.includes('/blobs/')));
      const blobCount = (JSON.parse(subjectBytes) as { layers: unknown[] }).layers.length + 1;
      assert.equal(posts.length, blobCount, posts.map((s) => s.path).join(' '));
      assert.ok(posts.every((s) => s.method === 'POST' && /\/v2\/other\/app\/blobs\/uploads\/\?mount=sha256%3A[0-9a-f]{64}&from=test%2Fapp$/.test(s.path)), 'every blob mounted, none uploaded');
      // skopeo reads the image whole from the other repository.
      const sealed = skopeoRaw(ctx, `docker://${registry.host}/other/app:sealed`)!;
      assert.equal(sha256(sealed.text), digest);
      execFileSync('skopeo', ['copy', '--quiet', '--src-creds', 'alice:secret', '--src-cert-dir', registry.certs.certDir, `docker://${registry.host}/other/app:sealed`, `oci:${join(dir, 'from-other')}:s`]);

      const second = await startRegistry({ auth: { htpasswd: { alice: 'secret' } } }, registry.certs);
      try {
        const there = ok(cfs('seal', '--inline', '--repo', repo, ...ctx.auth, `${app}:v1`, `docker://${second.host}/mirror/app:sealed`)).trim();
        assert.equal(there, digest, 'the same sealed manifest');
        const copy = join(dir, 'from-second');
        execFileSync('skopeo', ['copy', '--quiet', '--src-creds', 'alice:secret', '--src-cert-dir', registry.certs.certDir, `docker://${second.host}/mirror/app:sealed`, `oci:${copy}:s`]);
        assert.equal(skopeoRaw(ctx, `oci:${copy}:s`)!.text, sealed.text);
      } finally {
        await second.stop();
      }
    });

    await t.test('--inline into an oci: layout', async () => {
      const out = join(dir, 'inline-layout');
      const digest = ok(cfs('seal', '--inline', '--repo', repo, ...ctx.auth, `${app}:v1`, `oci:${out}:sealed`)).trim();
      const sealed = skopeoRaw(ctx, `oci:${out}:sealed`)!;
      assert.equal(sha256(sealed.text), digest);
      assert.equal((sealed.json as { annotations: Record<string, string> }).annotations[MERGED_KEY], wantMerged);
      // Every blob there: skopeo copies the image out of it.
      execFileSync('skopeo', ['copy', '--quiet', `oci:${out}:sealed`, `oci:${join(dir, 'inline-copy')}:x`]);
      assert.equal(readdirSync(out).filter((f) => f.startsWith('.')).length, 0, 'no temporary file left');
    });

    await t.test('an oci: layout gets the artifact in its index.json, with no name, next to its subject', async () => {
      const before = indexEntry(layout, 'v1');
      const digest = ok(cfs('seal', '--repo', repo, `oci:${layout}:v1`)).trim();
      const index = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8')) as { manifests: { digest: string; artifactType?: string; annotations?: Record<string, string> }[] };
      const entries = index.manifests.filter((m) => m.digest === digest);
      assert.equal(entries.length, 1);
      assert.equal(entries[0].artifactType, ARTIFACT_TYPE);
      assert.equal(entries[0].annotations, undefined, 'no name');
      const artifact = JSON.parse(readFileSync(blobFile(layout, digest), 'utf8')) as { subject: { digest: string }; layers: { annotations: Record<string, string> }[] };
      assert.equal(artifact.subject.digest, before.digest);
      assert.equal(artifact.layers[1].annotations[MERGED_KEY], wantMerged);
      assert.ok(existsSync(blobFile(layout, EMPTY.digest)));
      // The image is still there under its name, and skopeo still reads it.
      assert.equal(skopeoRaw(ctx, `oci:${layout}:v1`)!.text, subjectBytes);
      // Sealing again lists it once.
      assert.equal(ok(cfs('seal', '--repo', repo, `oci:${layout}:v1`)).trim(), digest);
      const again = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8')) as typeof index;
      assert.equal(again.manifests.filter((m) => m.digest === digest).length, 1);
    });

    await t.test('bad input: one line, nothing half-written', async (tt) => {
      await tt.test('a registry refusing the artifact PUT: no referrers index written', async () => {
        const v2 = sha256(skopeoRaw(ctx, `${app}:v2`)!.text);
        const refusing = await startProxy(registry, (path, _i, method) =>
          method === 'PUT' && path.includes('/manifests/') ? { kind: 'status', status: 400, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ errors: [{ code: 'MANIFEST_INVALID', message: 'manifest invalid\nsecond line' }] }) } : { kind: 'forward' },
        );
        proxies.push(refusing);
        const r = await cfsAsync(['seal', '--repo', repo, ...ctx.auth, `docker://${refusing.host}/test/app:v2`]);
        failsOneLine(r, /pushing manifest sha256:[0-9a-f]{64} to docker:\/\/.*\/test\/app: HTTP 400 \(MANIFEST_INVALID: manifest invalid\\x0asecond line\)/);
        assert.equal(skopeoRaw(ctx, tagOf(v2)), null, 'no referrers index');
      });

      await tt.test('a DEST that cannot be written', async () => {
        const file = join(dir, 'a-file');
        writeFileSync(file, 'x');
        failsOneLine(cfs('seal', '--inline', '--repo', repo, ...ctx.auth, `${app}:v1`, `oci:${file}/layout:x`), /cannot (open|create) OCI layout .*a-file\/layout: .*(not a directory|ENOTDIR)/i);
        const ro = join(dir, 'ro');
        mkdirSync(ro);
        execFileSync('mount', ['-t', 'tmpfs', '-o', 'ro,size=1m', 'tmpfs', ro]);
        try {
          failsOneLine(cfs('seal', '--inline', '--repo', repo, ...ctx.auth, `${app}:v1`, `oci:${ro}/layout:x`), /cannot create OCI layout .*ro\/layout: .*read-only/i);
        } finally {
          execFileSync('umount', [ro]);
        }
        failsOneLine(cfs('seal', '--inline', '--repo', repo, ...ctx.auth, `${app}:v1`, `docker-archive:${join(dir, 'x.tar')}`), /DEST must be docker:\/\/ or oci:/);
        failsOneLine(cfs('seal', '--repo', repo, ...ctx.auth, `${app}@${subject}`, 'extra'), /too many arguments: 'extra' \(a DEST is for --inline\)/);
        failsOneLine(cfs('seal', '--inline', '--repo', repo, ...ctx.auth, `${app}@${subject}`), /names no tag to put the sealed manifest under: give DEST/);
      });

      await tt.test('a DEST layout whose index.json is not an index gets nothing', async () => {
        const broken = join(dir, 'broken');
        mkdirSync(broken);
        writeFileSync(join(broken, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
        writeFileSync(join(broken, 'index.json'), '{"schemaVersion":2,"manifests":{}}');
        failsOneLine(cfs('seal', '--inline', '--repo', repo, ...ctx.auth, `${app}:v1`, `oci:${broken}:x`), /broken\/index\.json: not an image index/);
        assert.deepEqual(readdirSync(broken).sort(), ['index.json', 'oci-layout'], 'no blob, no temporary file');
        assert.equal(readFileSync(join(broken, 'index.json'), 'utf8'), '{"schemaVersion":2,"manifests":{}}');
      });

      await tt.test('a sha256-HEX tag that is not an index is refused, and left as it was', async () => {
        const v2 = skopeoRaw(ctx, `${app}:v2`)!;
        const squatter = JSON.stringify({ schemaVersion: 2, mediaType: MANIFEST_TYPE, config: EMPTY, layers: [] });
        curlPutManifest(ctx, 'test/app', sha256(v2.text).replace(':', '-'), squatter, MANIFEST_TYPE);
        failsOneLine(cfs('seal', '--repo', repo, ...ctx.auth, `${app}:v2`), /referrers index sha256-[0-9a-f]{64} in docker:\/\/.*\/test\/app: media type .* is not an OCI image index/);
        assert.equal(skopeoRaw(ctx, tagOf(sha256(v2.text)))!.text, squatter);
      });

      await tt.test('--algorithm: unknown, or not the repository\'s', async () => {
        failsOneLine(cfs('seal', '--repo', repo, '--algorithm', 'md5', `${app}:v1`), /invalid value for --algorithm: 'md5' \(sha256 or sha512\)/);
        failsOneLine(cfs('seal', '--repo', repo, ...ctx.auth, '--algorithm', 'sha512', `${app}:v1`), /repository .* holds sha256 objects .*, not sha512 \(--algorithm sha512\)/);
        // A new repository takes the algorithm: the seal's keys and digests are sha512's.
        const layout512 = join(dir, 'layout-sha512');
        execFileSync('cp', ['-a', layout, layout512]);
        const repo512 = join(dir, 'repo-sha512');
        const r = JSON.parse(ok(cfs('seal', '--repo', repo512, '--algorithm', 'sha512', '--json', `oci:${layout512}:v1`))) as { algorithm: string; merged: string; config: string; artifact: { digest: string } };
        assert.equal(r.algorithm, 'sha512');
        const image = join(repo512, 'images', r.merged);
        assert.equal(execFileSync('fsverity', ['digest', '--compact', '--hash-alg=sha512', image], { encoding: 'utf8' }).trim(), r.merged);
        const artifact = JSON.parse(readFileSync(blobFile(layout512, r.artifact.digest), 'utf8')) as { layers: { annotations: Record<string, string> }[] };
        assert.deepEqual(artifact.layers.map((l) => l.annotations), [{ 'composefs.config.fsverity-sha512-12': r.config }, { 'composefs.merged.erofs.v1.fsverity-sha512-12': r.merged }]);
      });

      await tt.test('--inline refuses an index source, before pulling anything', async () => {
        const multi = join(dir, 'multi');
        execFileSync('cp', ['-a', layout, multi]);
        const v1 = indexEntry(layout, 'v1');
        const arch = process.arch === 'arm64' ? 'arm64' : 'amd64';
        const idx = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: INDEX_TYPE, manifests: [{ ...v1, annotations: undefined, platform: { os: 'linux', architecture: arch } }] }));
        writeFileSync(blobFile(multi, sha256(idx)), idx);
        const index = JSON.parse(readFileSync(join(multi, 'index.json'), 'utf8'));
        index.manifests.push({ mediaType: INDEX_TYPE, digest: sha256(idx), size: idx.length, annotations: { 'org.opencontainers.image.ref.name': 'multi' } });
        writeFileSync(join(multi, 'index.json'), JSON.stringify(index));
        const fresh = join(dir, 'fresh-repo');
        failsOneLine(cfs('seal', '--inline', '--repo', fresh, `oci:${multi}:multi`, `oci:${multi}:sealed`), /is an image index; an inline seal rewrites one image manifest: seal its platform image by digest \(sha256:[0-9a-f]{64}\) or use artifact mode/);
        assert.deepEqual(readdirSync(join(fresh, 'names')), [], 'nothing pulled');
        // Artifact mode seals the platform image: the artifact's subject is its manifest.
        const digest = ok(cfs('seal', '--repo', fresh, `oci:${multi}:multi`)).trim();
        const artifact = JSON.parse(readFileSync(blobFile(multi, digest), 'utf8')) as { subject: { digest: string } };
        assert.equal(artifact.subject.digest, v1.digest);
      });

      await tt.test('an image that has no canonical form (no /usr) is refused, and one pulled unpacked is not sealed from its name', async () => {
        const scratch = join(dir, 'scratch');
        const run = (...args: string[]) => execFileSync('umoci', args, { stdio: ['ignore', 'ignore', 'pipe'] });
        run('init', '--layout', scratch);
        run('new', '--image', `${scratch}:etc`);
        const bundle = join(dir, 'scratch-bundle');
        run('unpack', '--image', `${scratch}:etc`, bundle);
        mkdirSync(join(bundle, 'rootfs/etc'), { recursive: true });
        writeFileSync(join(bundle, 'rootfs/etc/motd'), 'no usr here\n');
        run('repack', '--image', `${scratch}:etc`, bundle);
        rmSync(bundle, { recursive: true, force: true });
        const indexBefore = readFileSync(join(scratch, 'index.json'), 'utf8');
        const fresh = join(dir, 'scratch-repo');
        failsOneLine(cfs('seal', '--repo', fresh, `oci:${scratch}:etc`), /cannot be sealed: .*no canonical form: .*usr/);
        assert.equal(readFileSync(join(scratch, 'index.json'), 'utf8'), indexBefore, 'nothing written into the layout');
        assert.deepEqual(readdirSync(join(fresh, 'names')), [], 'nothing named');
        // A name holding the image unpacked gives no merged digest: sealing pulls it canonical first.
        // (A layout not sealed yet: an image sealed already refuses --form=unpacked, whose image no seal speaks of.)
        const usrLayout = join(dir, 'usr-layout');
        makeUsrImage(usrLayout, 'v1', 'unsealed');
        const usrRepo = join(dir, 'unpacked-repo');
        const unpacked = JSON.parse(ok(cfs('pull', '--repo', usrRepo, '--json', '--form=unpacked', `oci:${usrLayout}:v1`, 'app'))) as { image: string; form: string };
        assert.equal(unpacked.form, 'unpacked');
        const sealed = JSON.parse(ok(cfs('seal', '--repo', usrRepo, '--json', '--name', 'app', `oci:${usrLayout}:v1`))) as { seal?: { merged: string }; merged?: string };
        const merged = sealed.seal?.merged ?? sealed.merged;
        assert.notEqual(merged, unpacked.image);
        const rec = JSON.parse(ok(cfs('inspect', '--repo', usrRepo, '--json', 'app'))) as { image: string; form: string };
        assert.equal(rec.form, 'canonical');
        assert.equal(rec.image, merged);
      });
    });
  } finally {
    for (const p of proxies) await p.close();
    await registry.stop();
    removeTemp(dir);
  }
});

test('cfs seal with token auth: the token is asked for pull,push; a user without push is refused in one line', { skip: SKIP }, async () => {
  const dir = makeTemp('seal-token');
  const layout = join(dir, 'layout');
  makeUsrImage(layout, 'v1', 'one');
  const registry = await startRegistry({
    auth: { token: { users: { alice: 'secret', bob: 'pw' }, grant: (user) => (user === 'alice' ? ['pull', 'push'] : user === 'bob' ? ['pull'] : []) } },
  });
  try {
    await push(registry, `oci:${layout}:v1`, 'test/app:v1', 'alice:secret');
    const ref = `docker://${registry.host}/test/app:v1`;
    const repo = join(dir, 'repo');
    const env = { HOME: join(dir, 'nohome') };
    const run = (...args: string[]) => cfsAsync(args, { ...process.env, ...env });
    registry.tokenRequests.length = 0;
    const digest = ok(await run('seal', '--repo', repo, '--creds', 'alice:secret', '--cert-dir', registry.certs.certDir, ref)).trim();
    assert.match(digest, /^sha256:[0-9a-f]{64}$/);
    assert.ok(registry.tokenRequests.some((r) => r.user === 'alice' && r.scope === 'repository:test/app:pull,push'), JSON.stringify(registry.tokenRequests));
    const r = await run('seal', '--repo', repo, '--creds', 'bob:pw', '--cert-dir', registry.certs.certDir, ref);
    failsOneLine(r, /test\/app: access denied: no push access to test\/app|unauthorized/);
  } finally {
    await registry.stop();
    removeTemp(dir);
  }
});

test('the library: sealImage and sealOf take and give plain data', { skip: SKIP }, async () => {
  const dir = makeTemp('seal-lib');
  try {
    const layout = join(dir, 'layout');
    makeUsrImage(layout, 'v1', 'lib');
    const { openRepository, sealImage } = await import('../src/index.js');
    const repo = await openRepository(join(dir, 'repo'));
    try {
      const manifest = JSON.parse(readFileSync(blobFile(layout, indexEntry(layout, 'v1').digest), 'utf8')) as { config: { digest: string } };
      const lines: string[] = [];
      const result = await sealImage(repo, `oci:${layout}:v1`, { explain: (line) => lines.push(line) });
      assert.deepEqual(JSON.parse(JSON.stringify(result)), result, 'plain data');
      assert.equal(result.algorithm, 'sha256');
      assert.equal(result.subject.digest, indexEntry(layout, 'v1').digest);
      assert.equal(result.config, fsverityOf(blobFile(layout, manifest.config.digest)));
      assert.equal(result.pulled, true);
      assert.equal(result.merged, repo.getName(result.name).image);
      assert.equal(result.artifact?.discovery.kind, 'layout-index');
      assert.ok(lines.some((l) => l.includes('pulling it')));
      const again = await sealImage(repo, `oci:${layout}:v1`);
      assert.equal(again.pulled, false);
      assert.equal(again.artifact?.digest, result.artifact?.digest);
    } finally {
      repo.close();
    }
  } finally {
    removeTemp(dir);
  }
});
