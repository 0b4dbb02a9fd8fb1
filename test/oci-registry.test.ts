/**
 * The docker:// transport against a real registry (docker-registry, over
 * HTTPS with a test CA), images pushed by skopeo from layouts umoci made.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { openSource } from '../src/oci/transports.js';
import { SourceError } from '../src/oci/source-errors.js';
import type { ImageSource, SourceOptions } from '../src/oci/source.js';
import { addBlob, addIndexEntry, addPlatformIndex, indexEntry, makeUmociImage, skopeoManifest } from './helpers/oci-images.js';
import { NO_REGISTRY, haveRegistry, push, startProxy, startRegistry, storedBlob } from './helpers/registry.js';

async function readAll(source: ImageSource, descriptor: Parameters<ImageSource['openBlob']>[0]): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of await source.openBlob(descriptor)) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** Resolve and read every layer; returns the manifest digest and the layers' bytes. */
async function pull(reference: string, options: SourceOptions): Promise<{ digest: string; layers: Buffer[]; platform?: string }> {
  const source = await openSource(reference, options);
  try {
    const image = await source.resolve();
    const layers = await Promise.all(image.layers.map((l) => readAll(source, l)));
    return { digest: image.manifestDigest, layers, platform: image.platform && `${image.platform.os}/${image.platform.architecture}` };
  } finally {
    await source.close();
  }
}

async function fails(promise: Promise<unknown>, code: string, pattern: RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof SourceError, `expected a SourceError, got ${(err as Error)?.stack ?? String(err)}`);
    assert.equal(err.code, code, err.message);
    assert.match(err.message, pattern);
    assert.ok(!err.message.includes('\n'), 'one line');
    return true;
  });
}

let workDir: string;
let layout: string;

function fixtures(): void {
  if (layout) return;
  workDir = mkdtempSync(join(tmpdir(), 'cfs-oci-reg-'));
  layout = join(workDir, 'layout');
  makeUmociImage(layout, 'v1');
  makeUmociImage(layout, 'amd', { architecture: 'amd64' });
  makeUmociImage(layout, 'arm', { architecture: 'arm64' });
  addPlatformIndex(layout, 'multi', [
    { tag: 'amd', platform: { os: 'linux', architecture: 'amd64' } },
    { tag: 'arm', platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
  ]);
}

test.after(() => {
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

test('registry with htpasswd basic auth: creds, auth files, TLS, 404, tampered blob, index, redirect, retries', { skip: !haveRegistry && NO_REGISTRY }, async (t) => {
  fixtures();
  const registry = await startRegistry({ auth: { htpasswd: { alice: 'secret' } }, allowUrls: ['^https://127\\.0\\.0\\.1:'] });
  const proxies: { close(): Promise<void> }[] = [];
  try {
    await push(registry, `oci:${layout}:v1`, 'test/app:v1', 'alice:secret');
    await push(registry, `oci:${layout}:multi`, 'test/multi:v1', 'alice:secret', '--all');
    const want = skopeoManifest(`oci:${layout}:v1`);
    const wantLayers = want.layers.map((l) => readFileSync(join(layout, 'blobs/sha256', l.digest.slice(7))));
    const ref = `docker://${registry.host}/test/app:v1`;
    const ok: SourceOptions = { creds: 'alice:secret', certDir: registry.certs.certDir };

    await t.test('basic credentials from --creds: the manifest and the layers skopeo pushed', async () => {
      const got = await pull(ref, ok);
      assert.equal(got.digest, indexEntry(layout, 'v1').digest);
      assert.deepEqual(got.layers, wantLayers);
      const byDigest = await pull(`docker://${registry.host}/test/app@${got.digest}`, ok);
      assert.deepEqual(byDigest.layers, wantLayers);
    });

    await t.test('401 without or with wrong credentials', async () => {
      const env = { HOME: join(workDir, 'nohome') };
      await fails(pull(ref, { certDir: registry.certs.certDir, env }), 'unauthorized', /requires credentials/);
      await fails(pull(ref, { creds: 'alice:wrong', certDir: registry.certs.certDir, env }), 'unauthorized', /test\/app:v1: unauthorized: credentials from --creds rejected/);
    });

    await t.test('credentials from $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json, ~/.docker/config.json', async () => {
      const auth = (user: string, pass: string) => Buffer.from(`${user}:${pass}`).toString('base64');
      const home = join(workDir, 'home');
      mkdirSync(join(home, '.docker'), { recursive: true });
      writeFileSync(join(home, '.docker/config.json'), JSON.stringify({ auths: { [`https://${registry.host}`]: { auth: auth('alice', 'secret') } } }));
      assert.equal((await pull(ref, { certDir: registry.certs.certDir, env: { HOME: home } })).layers.length, 2);
      const runtime = join(workDir, 'run');
      mkdirSync(join(runtime, 'containers'), { recursive: true });
      // The more specific key (host/namespace) wins over the host's.
      writeFileSync(join(runtime, 'containers/auth.json'), JSON.stringify({ auths: { [registry.host]: { auth: auth('alice', 'nope') }, [`${registry.host}/test`]: { auth: auth('alice', 'secret') } } }));
      assert.equal((await pull(ref, { certDir: registry.certs.certDir, env: { HOME: join(workDir, 'nohome'), XDG_RUNTIME_DIR: runtime } })).layers.length, 2);
      const file = join(workDir, 'auth.json');
      writeFileSync(file, JSON.stringify({ auths: { [registry.host]: { auth: auth('alice', 'bad') } } }));
      await fails(pull(ref, { certDir: registry.certs.certDir, env: { HOME: home, REGISTRY_AUTH_FILE: file } }), 'unauthorized', new RegExp(`credentials from ${file}`));
    });

    await t.test('TLS: an unknown CA is refused; --cert-dir and --tls-verify=false are accepted', async () => {
      await fails(pull(ref, { creds: 'alice:secret', env: { HOME: join(workDir, 'nohome') } }), 'tls', new RegExp(`certificate of ${registry.host} is not trusted.*--cert-dir`));
      assert.equal((await pull(ref, { creds: 'alice:secret', tlsVerify: false })).layers.length, 2);
      const extra = { NODE_EXTRA_CA_CERTS: registry.certs.caCert, HOME: join(workDir, 'nohome') };
      assert.equal((await pull(ref, { creds: 'alice:secret', env: extra })).layers.length, 2);
    });

    await t.test('404 for a missing tag or repository', async () => {
      await fails(pull(`docker://${registry.host}/test/app:nope`, ok), 'not-found', /test\/app:nope: not found \(MANIFEST_UNKNOWN/);
      await fails(pull(`docker://${registry.host}/test/none:v1`, ok), 'not-found', /test\/none:v1: not found/);
    });

    await t.test('an index: the running platform by default, --platform on request', async () => {
      const multi = `docker://${registry.host}/test/multi:v1`;
      const arm = await pull(multi, { ...ok, platform: 'linux/arm64' });
      assert.equal(arm.digest, indexEntry(layout, 'arm').digest);
      if (process.arch === 'x64') assert.equal((await pull(multi, ok)).digest, indexEntry(layout, 'amd').digest);
      await fails(pull(multi, { ...ok, platform: 'linux/ppc64le' }), 'not-found', /no image for linux\/ppc64le in the index \(it has linux\/amd64, linux\/arm64\/v8\)/);
    });

    await t.test('a redirect to another host drops Authorization', async () => {
      const storage = await startProxy(registry, () => ({ kind: 'forward' }), { authorization: `Basic ${Buffer.from('alice:secret').toString('base64')}` });
      proxies.push(storage);
      const storagePort = storage.host.split(':')[1];
      const front = await startProxy(registry, (path) => (path.includes('/blobs/') ? { kind: 'redirect', location: `https://localhost:${storagePort}${path}` } : { kind: 'forward' }));
      proxies.push(front);
      const got = await pull(`docker://${front.host}/test/app:v1`, ok);
      assert.deepEqual(got.layers, wantLayers);
      const redirected = storage.seen.filter((s) => s.path.includes('/blobs/'));
      assert.ok(redirected.length >= 3, 'config and layers went through the redirect');
      assert.deepEqual(redirected.map((s) => s.authorization), redirected.map(() => undefined));
      assert.ok(front.seen.filter((s) => s.path.includes('/blobs/')).every((s) => s.authorization?.startsWith('Basic ')));
    });

    await t.test('retries: 503, 429 and dropped connections, a blob resumed with Range', async () => {
      const layer = want.layers[0];
      let blobTries = 0;
      let manifestTries = 0;
      const flaky = await startProxy(registry, (path) => {
        if (path.includes('/manifests/') && manifestTries++ === 0) return { kind: 'drop' };
        if (!path.endsWith(`/blobs/${layer.digest}`)) return { kind: 'forward' };
        switch (blobTries++) {
          case 0: return { kind: 'status', status: 503 };
          case 1: return { kind: 'status', status: 429, headers: { 'retry-after': '0' } };
          case 2: return { kind: 'drop-midway' };
          default: return { kind: 'forward' };
        }
      });
      proxies.push(flaky);
      const got = await pull(`docker://${flaky.host}/test/app:v1`, { ...ok, retryDelayMs: 10 });
      assert.deepEqual(got.layers, wantLayers);
      const ranges = flaky.seen.filter((s) => s.path.endsWith(layer.digest)).map((s) => s.range);
      assert.equal(ranges.length, 4);
      assert.match(ranges[3] ?? '', /^bytes=[1-9][0-9]*-$/, 'the fourth try resumes where the third stopped');
      // A server that ignores Range sends the whole blob again: the bytes already passed on are skipped.
      let cutOnce = 0;
      const noRange = await startProxy(registry, (path) => (path.endsWith(layer.digest) && cutOnce++ === 0 ? { kind: 'drop-midway' } : { kind: 'forward' }), { range: '' });
      proxies.push(noRange);
      assert.deepEqual((await pull(`docker://${noRange.host}/test/app:v1`, { ...ok, retryDelayMs: 10 })).layers, wantLayers);
      assert.equal(cutOnce, 2);
      let always = 0;
      const dead = await startProxy(registry, (path) => (path.endsWith(layer.digest) ? (always++, { kind: 'status', status: 502 }) : { kind: 'forward' }));
      proxies.push(dead);
      await fails(pull(`docker://${dead.host}/test/app:v1`, { ...ok, retries: 2, retryDelayMs: 5 }), 'registry', new RegExp(`blob ${layer.digest} of docker://.*: HTTP 502`));
      assert.equal(always, 3, 'one try and two retries');
    });

    await t.test('a non-distributable layer is fetched from its urls, or refused naming it', async () => {
      const base = want.layers[0];
      const bytes = readFileSync(join(layout, 'blobs/sha256', base.digest.slice(7)));
      let hits = 0;
      let serving = true;
      const server = https.createServer({ cert: readFileSync(registry.certs.serverCert), key: readFileSync(registry.certs.serverKey) }, (req, res) => {
        hits++;
        if (serving && req.url === `/layers/${base.digest.slice(7)}`) res.end(bytes);
        else res.writeHead(404).end();
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      proxies.push({ close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }) });
      const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}/layers/${base.digest.slice(7)}`;
      const manifest = JSON.parse(readFileSync(join(layout, 'blobs/sha256', indexEntry(layout, 'v1').digest.slice(7)), 'utf8'));
      manifest.layers[0] = { ...manifest.layers[0], mediaType: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip', urls: [url] };
      addIndexEntry(layout, addBlob(layout, Buffer.from(JSON.stringify(manifest)), 'application/vnd.oci.image.manifest.v1+json'), 'foreign');
      await push(registry, `oci:${layout}:foreign`, 'test/foreign:v1', 'alice:secret');
      const foreign = `docker://${registry.host}/test/foreign:v1`;
      const got = await pull(foreign, ok);
      assert.deepEqual(got.layers, wantLayers);
      assert.ok(hits >= 1, 'the layer came from its url');
      serving = false;
      await fails(pull(foreign, ok), 'not-found', new RegExp(`blob ${base.digest} of ${foreign}: non-distributable layer not available from its urls nor from the registry`));
    });

    await t.test('a tampered blob in the registry storage fails, naming the blob', async () => {
      const layer = want.layers[1];
      const file = storedBlob(registry, layer.digest);
      const bytes = readFileSync(file);
      bytes[bytes.length - 5] ^= 0x55;
      writeFileSync(file, bytes);
      await fails(pull(ref, ok), 'digest-mismatch', new RegExp(`blob ${layer.digest} of docker://${registry.host}/test/app:v1: digest mismatch \\(got ${sha256(bytes)}\\)`));
      writeFileSync(file, bytes.subarray(0, bytes.length - 3));
      await fails(pull(ref, ok), 'size-mismatch', new RegExp(`blob ${layer.digest} .*size mismatch`));
    });
  } finally {
    for (const p of proxies) await p.close();
    await registry.stop();
  }
});

test('registry with token auth: anonymous, basic to the issuer, insufficient scope', { skip: !haveRegistry && NO_REGISTRY }, async (t) => {
  fixtures();
  const registry = await startRegistry({
    auth: {
      token: {
        users: { alice: 'secret', bob: 'pw' },
        grant: (user, repo) => (user === 'alice' ? ['pull', 'push'] : user === 'bob' && repo.startsWith('other/') ? ['pull'] : repo.startsWith('public/') ? ['pull'] : []),
      },
    },
  });
  try {
    await push(registry, `oci:${layout}:v1`, 'test/app:v1', 'alice:secret');
    await push(registry, `oci:${layout}:v1`, 'public/app:v1', 'alice:secret');
    const want = skopeoManifest(`oci:${layout}:v1`);
    const certDir = registry.certs.certDir;
    const env = { HOME: join(workDir, 'nohome') };
    await t.test('a token for repository:NAME:pull, with basic credentials to the issuer', async () => {
      registry.tokenRequests.length = 0;
      const got = await pull(`docker://${registry.host}/test/app:v1`, { creds: 'alice:secret', certDir, env });
      assert.deepEqual(got.layers.map(sha256), want.layers.map((l) => l.digest));
      assert.ok(registry.tokenRequests.length > 0);
      assert.ok(registry.tokenRequests.every((r) => r.user === 'alice' && r.scope === 'repository:test/app:pull'));
    });
    await t.test('anonymous token where the issuer grants pull', async () => {
      const got = await pull(`docker://${registry.host}/public/app:v1`, { certDir, env });
      assert.equal(got.layers.length, 2);
    });
    await t.test('a token without the scope is access denied; bad credentials are refused by the issuer', async () => {
      await fails(pull(`docker://${registry.host}/test/app:v1`, { certDir, env }), 'denied', /test\/app:v1: access denied: no pull access to test\/app/);
      await fails(pull(`docker://${registry.host}/test/app:v1`, { creds: 'bob:pw', certDir, env }), 'denied', /access denied/);
      await fails(pull(`docker://${registry.host}/test/app:v1`, { creds: 'bob:bad', certDir, env }), 'unauthorized', /token service 127\.0\.0\.1:\d+ refused repository:test\/app:pull \(credentials from --creds rejected/);
    });
  } finally {
    await registry.stop();
  }
});

test('schema 1 manifests are refused with a clear message', { skip: !haveRegistry && NO_REGISTRY }, async () => {
  fixtures();
  const registry = await startRegistry({ auth: { htpasswd: { alice: 'secret' } }, schema1: true });
  try {
    try {
      await push(registry, `oci:${layout}:v1`, 'old/app:v1', 'alice:secret', '--format', 'v2s1');
    } catch (err) {
      assert.fail(`skopeo could not push a schema 1 image: ${(err as { stderr?: string }).stderr ?? err}`);
    }
    await fails(pull(`docker://${registry.host}/old/app:v1`, { creds: 'alice:secret', certDir: registry.certs.certDir }), 'unsupported', /old\/app:v1: Docker schema 1 manifests are not supported/);
  } finally {
    await registry.stop();
  }
});


test('--tls-verify=false falls back to plain HTTP; with verification a plain HTTP registry is a clear TLS error', { skip: !haveRegistry && NO_REGISTRY }, async () => {
  fixtures();
  const registry = await startRegistry({ auth: { htpasswd: { alice: 'secret' } }, plainHttp: true });
  try {
    await push(registry, `oci:${layout}:v1`, 'test/app:v1', 'alice:secret', '--dest-tls-verify=false');
    const ref = `docker://${registry.host}/test/app:v1`;
    const got = await pull(ref, { creds: 'alice:secret', tlsVerify: false });
    assert.deepEqual(got.layers.map(sha256), skopeoManifest(`oci:${layout}:v1`).layers.map((l) => l.digest));
    await fails(pull(ref, { creds: 'alice:secret', certDir: registry.certs.certDir }), 'tls', new RegExp(`TLS handshake with ${registry.host} failed .*use --tls-verify=false`));
  } finally {
    await registry.stop();
  }
});
