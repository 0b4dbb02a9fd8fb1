/**
 * Signed images, checked the way skopeo checks them: containers-policy.json
 * and containers-registries.d applied by `cfs pull` (and `cfs seal`) to
 * images in the real registry, signed by the real `skopeo copy --sign-by`
 * with keys the real `gpg` made; and the other way round, images signed by
 * `cfs sign` checked by the real `skopeo copy --policy`. Every refusal is
 * one line and no name.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import { cliPath, repoRoot } from './helpers/paths.js';
import { cfs, oneLineError } from './helpers/cli.js';
import { gzLayers, writeLayout } from './helpers/oci-layout.js';
import { haveTool } from './helpers/oci-images.js';
import { execFileAsync, haveRegistry, NO_REGISTRY, push, startRegistry, type Registry } from './helpers/registry.js';
import { makeTemp, removeTemp } from './helpers/temp.js';
import type { TarEntry } from './helpers/tar-writer.js';

const MISSING = !haveRegistry ? NO_REGISTRY : !haveTool('gpg') ? 'gpg (gnupg) missing (npm test installs it as root on Debian): signature tests skipped' : false;
const creds = 'alice:secret';
const T = 1700000000;

function tree(content: string): TarEntry[] {
  return [
    { path: './', type: 'dir', mtime: T },
    { path: 'etc/', type: 'dir', mtime: T },
    { path: 'etc/os-release', data: `ID=${content}\n`, mtime: T },
    { path: 'usr/', type: 'dir', mtime: T },
    { path: 'usr/data', data: `${content}\n`.repeat(1000), mtime: T },
  ];
}

function cfsAsync(...args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cliPath('cfs'), args, { encoding: 'utf8' }, (err, stdout, stderr) => {
      resolve({ status: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}, input?: string): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: { ...process.env, ...env }, input });
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** A key made by gpg in `home`: its fingerprint, its public key exported (binary), its secret key armored. */
function gpgKey(home: string, uid: string, passphrase = ''): { fingerprint: string; publicKey: string; secretKey: string } {
  const env = { GNUPGHOME: home };
  run('gpg', ['--batch', '--pinentry-mode', 'loopback', '--passphrase', passphrase, '--quick-gen-key', uid, 'default', 'default', 'never'], env);
  const colons = run('gpg', ['--batch', '--with-colons', '--list-keys', uid], env);
  const fingerprint = colons.split('\n').find((l) => l.startsWith('fpr:'))!.split(':')[9]!;
  const publicKey = join(home, `${fingerprint}.gpg`);
  run('gpg', ['--batch', '--output', publicKey, '--export', fingerprint], env);
  const secretKey = join(home, `${fingerprint}.asc`);
  run('gpg', ['--batch', '--pinentry-mode', 'loopback', '--passphrase', passphrase, '--armor', '--output', secretKey, '--export-secret-keys', fingerprint], env);
  return { fingerprint, publicKey, secretKey };
}

function writePolicy(file: string, scopes: Record<string, unknown[]>, def: unknown[] = [{ type: 'reject' }]): string {
  writeFileSync(file, JSON.stringify({ default: def, transports: { docker: scopes } }, null, 2));
  return file;
}

function names(repo: string): string[] {
  const r = cfs('images', '--repo', repo, '--json');
  if (r.status !== 0) return [];
  return (JSON.parse(r.stdout) as { name: string }[]).map((n) => n.name);
}

async function startStatusServer(status: number): Promise<{ url: string; requests: string[]; server: Server }> {
  const requests: string[] = [];
  const server = createServer((req, res) => {
    requests.push(req.url ?? '');
    res.statusCode = status;
    res.end(status === 404 ? 'not found' : 'broken');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return { url: `http://127.0.0.1:${port}/sigs`, requests, server };
}

test('simple signing: skopeo --sign-by signs, cfs pull checks signedBy as skopeo does; cfs sign signs, skopeo checks', { skip: MISSING }, async (t) => {
  const tmp = makeTemp('signed-pull');
  const gnupg = join(tmp, 'gnupg');
  mkdirSync(gnupg, { mode: 0o700 });
  let registry: Registry | undefined;
  const servers: Server[] = [];
  try {
    registry = await startRegistry({ auth: { htpasswd: { alice: creds.split(':')[1]! } } });
    const host = registry.host;
    const layout = join(tmp, 'layout');
    writeLayout(layout, 'a', gzLayers(tree('alpha')));
    writeLayout(layout, 'b', gzLayers(tree('beta')));
    const signer = gpgKey(gnupg, 'Signer <signer@example.com>');
    const other = gpgKey(gnupg, 'Other <other@example.com>');
    const sigs = join(tmp, 'sigs');
    const regd = join(tmp, 'registries.d');
    mkdirSync(regd);
    writeFileSync(join(regd, 'test.yaml'), `docker:\n  ${host}:\n    lookaside: file://${sigs}\n    lookaside-staging: file://${sigs}\n`);
    const signedBy = (key: string, extra: Record<string, unknown> = {}) => ({ type: 'signedBy', keyType: 'GPGKeys', keyPath: key, ...extra });
    const policy = writePolicy(join(tmp, 'policy.json'), { [`${host}/signed`]: [signedBy(signer.publicKey)] });
    const pull = (repo: string, ref: string, ...extra: string[]) => cfsAsync('pull', '--repo', repo, '--cert-dir', registry!.certs.certDir, '--creds', creds, '--registries.d', regd, ...extra, `docker://${host}/${ref}`, 'app');

    // skopeo signs what it pushes, into the lookaside registries.d names.
    await execFileAsync('skopeo', ['copy', '--quiet', '--dest-cert-dir', registry.certs.certDir, '--dest-creds', creds, '--registries.d', regd, '--sign-by', signer.fingerprint, `oci:${layout}:a`, `docker://${host}/signed/app:v1`], { env: { ...process.env, GNUPGHOME: gnupg } });
    // The same image under another tag, unsigned: the lookaside already holds the v1 signature for its digest.
    await push(registry, `oci:${layout}:a`, 'signed/app:v2', creds);
    await push(registry, `oci:${layout}:b`, 'signed/unsigned:v1', creds);
    await push(registry, `oci:${layout}:b`, 'other/app:v1', creds);

    await t.test('the lookaside holds what skopeo wrote, where registries.d says', () => {
      const dirs = readdirSync(join(sigs, 'signed'));
      assert.equal(dirs.length, 1);
      assert.match(dirs[0]!, /^app@sha256=[0-9a-f]{64}$/);
      assert.deepEqual(readdirSync(join(sigs, 'signed', dirs[0]!)), ['signature-1']);
    });

    await t.test('signedBy: the signed image is accepted, and --explain and inspect say by which key', async () => {
      const repo = join(tmp, 'r-ok');
      const r = await pull(repo, 'signed/app:v1', '--policy', policy, '--explain');
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, new RegExp(`policy: accepted by .*policy.json transports.docker\\["${host.replace(/\./g, '\\.')}/signed"\\]: signedBy by key ${signer.fingerprint}`, 'i'));
      const info = JSON.parse(cfs('inspect', '--repo', repo, '--json', 'app').stdout) as { policy: { accepted: { requirement: string; by: string }[] } };
      assert.equal(info.policy.accepted[0]!.requirement, 'signedBy');
      assert.match(info.policy.accepted[0]!.by, new RegExp(signer.fingerprint, 'i'));
    });

    await t.test('the same image under another tag: the signature names another identity', async () => {
      const repo = join(tmp, 'r-tag');
      const line = oneLineError(await pull(repo, 'signed/app:v2', '--policy', policy), /refused by .*signedBy.*identity/);
      assert.match(line, /signed\/app:v1/);
      assert.deepEqual(names(repo), []);
      // matchRepository accepts it: the signature is for this repository.
      const loose = writePolicy(join(tmp, 'policy-repo.json'), { [`${host}/signed`]: [signedBy(signer.publicKey, { signedIdentity: { type: 'matchRepository' } })] });
      const r = await pull(repo, 'signed/app:v2', '--policy', loose);
      assert.equal(r.status, 0, r.stderr);
    });

    await t.test('a policy trusting another key refuses it', async () => {
      const repo = join(tmp, 'r-other');
      const p = writePolicy(join(tmp, 'policy-other.json'), { [`${host}/signed`]: [signedBy(other.publicKey)] });
      oneLineError(await pull(repo, 'signed/app:v1', '--policy', p), /refused by .*transports\.docker.*signedBy.*no signature was accepted/);
      assert.deepEqual(names(repo), []);
    });

    await t.test('an unsigned image is refused: no signature exists', async () => {
      const repo = join(tmp, 'r-unsigned');
      oneLineError(await pull(repo, 'signed/unsigned:v1', '--policy', policy), /refused by .*signedBy.*no signature .* exists/);
      assert.deepEqual(names(repo), []);
    });

    await t.test('reject, and the default scope; --insecure-policy accepts anything', async () => {
      const repo = join(tmp, 'r-reject');
      oneLineError(await pull(repo, 'other/app:v1', '--policy', policy), /refused by .*policy\.json default \(reject\)/);
      // cfs seal reads the image it seals under the same policy: refused before anything is pulled or pushed.
      const seal = await cfsAsync('seal', '--repo', repo, '--cert-dir', registry!.certs.certDir, '--creds', creds, '--registries.d', regd, '--policy', policy, `docker://${host}/other/app:v1`);
      oneLineError(seal, /refused by .*policy\.json default \(reject\)/);
      const tags = spawnSync('skopeo', ['list-tags', '--cert-dir', registry!.certs.certDir, '--creds', creds, `docker://${host}/other/app`], { encoding: 'utf8' });
      assert.deepEqual((JSON.parse(tags.stdout) as { Tags: string[] }).Tags, ['v1']);
      const r = await pull(repo, 'signed/unsigned:v1', '--insecure-policy', '--explain');
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, /policy: no policy applied \(--insecure-policy\)/);
    });

    await t.test('a lookaside server: 404 is no signature, 500 is an error', async () => {
      for (const [status, pattern] of [
        [404, /refused by .*no signature .* exists/],
        [500, /500/],
      ] as const) {
        const srv = await startStatusServer(status);
        servers.push(srv.server);
        const d = join(tmp, `registries-${status}.d`);
        mkdirSync(d);
        // With credentials in the URL: they are the lookaside's, never printed.
        writeFileSync(join(d, 'x.yaml'), `docker:\n  ${host}:\n    lookaside: ${srv.url.replace('//', '//sig-user:sig-secret@')}\n`);
        const repo = join(tmp, `r-${status}`);
        const line = oneLineError(await cfsAsync('pull', '--repo', repo, '--cert-dir', registry!.certs.certDir, '--creds', creds, '--registries.d', d, '--policy', policy, `docker://${host}/signed/app:v1`), pattern);
        assert.doesNotMatch(line, /sig-secret/);
        if (status === 500) assert.doesNotMatch(line, /no signature/);
        assert.ok(srv.requests.some((u) => /^\/sigs\/signed\/app@sha256=[0-9a-f]{64}\/signature-1$/.test(u)), srv.requests.join(' '));
        assert.deepEqual(names(repo), []);
      }
    });

    await t.test('cfs sign --sign-by-key writes a signature skopeo accepts, and skopeo refuses the image once changed', async () => {
      const secret = gpgKey(gnupg, 'Pass <pass@example.com>', 'hunter2');
      const passFile = join(tmp, 'pass');
      writeFileSync(passFile, 'hunter2\n');
      await push(registry!, `oci:${layout}:b`, 'cfs/app:v1', creds);
      const signed = cfs('sign', '--cert-dir', registry!.certs.certDir, '--creds', creds, '--registries.d', regd, '--sign-by-key', secret.secretKey, '--sign-passphrase-file', passFile, `docker://${host}/cfs/app:v1`);
      assert.equal(signed.status, 0, signed.stderr);
      const written = signed.stdout.trim();
      assert.match(written, new RegExp(`^${sigs}/cfs/app@sha256=[0-9a-f]{64}/signature-1$`));
      assert.ok(existsSync(written));
      // gpg itself reads it: the payload claims this image.
      const payload = JSON.parse(run('gpg', ['--batch', '--decrypt', written], { GNUPGHOME: gnupg })) as { critical: { identity: { 'docker-reference': string }; type: string } };
      assert.equal(payload.critical.type, 'atomic container signature');
      assert.equal(payload.critical.identity['docker-reference'], `${host}/cfs/app:v1`);

      const skopeoPolicy = writePolicy(join(tmp, 'policy-skopeo.json'), { [`${host}/cfs`]: [signedBy(secret.publicKey)] });
      const copy = () => spawnSync('skopeo', ['--policy', skopeoPolicy, '--registries.d', regd, 'copy', '--quiet', '--remove-signatures', '--src-cert-dir', registry!.certs.certDir, '--src-creds', creds, `docker://${host}/cfs/app:v1`, `oci:${join(tmp, 'copied')}:x`], { encoding: 'utf8' });
      const accepted = copy();
      assert.equal(accepted.status, 0, accepted.stderr);
      // The tag moves to another image: the signature no longer matches any of its manifests.
      await push(registry!, `oci:${layout}:a`, 'cfs/app:v1', creds);
      const refused = copy();
      assert.notEqual(refused.status, 0);
      assert.match(refused.stderr, /signature|Signature/);
      // And cfs pull refuses it the same way.
      const repo = join(tmp, 'r-changed');
      const p = writePolicy(join(tmp, 'policy-cfs.json'), { [`${host}/cfs`]: [signedBy(secret.publicKey)] });
      oneLineError(await pull(repo, 'cfs/app:v1', '--policy', p), /refused by .*signedBy/);
    });

    await t.test('bad policies and registries.d: one line naming the file, no name', async () => {
      const repo = join(tmp, 'r-bad');
      const broken = join(tmp, 'broken.json');
      writeFileSync(broken, '{\n  "default": [\n    {"type": "insecureAcceptAnything"},\n  ]\n}\n');
      oneLineError(await pull(repo, 'signed/app:v1', '--policy', broken), /broken\.json.*line 4/);
      const unknown = writePolicy(join(tmp, 'unknown.json'), {}, [{ type: 'acceptIfSunny' }]);
      oneLineError(await pull(repo, 'signed/app:v1', '--policy', unknown), /unknown\.json.*acceptIfSunny/);
      oneLineError(await pull(repo, 'signed/app:v1', '--policy', join(tmp, 'missing.json')), /missing\.json.*(no such file|ENOENT)/i);
      const badd = join(tmp, 'bad-registries.d');
      mkdirSync(badd);
      writeFileSync(join(badd, 'bad.yaml'), `docker:\n  ${host}:\n    lookaside: file:///x\n   bad indentation: [\n`);
      oneLineError(await cfsAsync('pull', '--repo', repo, '--cert-dir', registry!.certs.certDir, '--creds', creds, '--registries.d', badd, '--policy', policy, `docker://${host}/signed/app:v1`), /bad\.yaml:4: /);
      assert.deepEqual(names(repo), []);
    });
  } finally {
    for (const s of servers) s.close();
    spawnSync('gpgconf', ['--kill', 'all'], { env: { ...process.env, GNUPGHOME: gnupg } });
    await registry?.stop();
    removeTemp(tmp);
  }
});

test('sigstore: cfs sign --sign-by-sigstore-private-key pushes a cosign attachment openssl verifies; cfs pull checks sigstoreSigned', { skip: MISSING }, async (t) => {
  const tmp = makeTemp('sigstore-pull');
  let registry: Registry | undefined;
  try {
    registry = await startRegistry({ auth: { htpasswd: { alice: creds.split(':')[1]! } } });
    const host = registry.host;
    const layout = join(tmp, 'layout');
    writeLayout(layout, 'a', gzLayers(tree('gamma')));
    writeLayout(layout, 'b', gzLayers(tree('delta')));
    await push(registry, `oci:${layout}:a`, 'sig/app:v1', creds);
    await push(registry, `oci:${layout}:b`, 'sig/unsigned:v1', creds);
    const regd = join(tmp, 'registries.d');
    mkdirSync(regd);
    writeFileSync(join(regd, 'sigstore.yaml'), `docker:\n  ${host}:\n    use-sigstore-attachments: true\n`);
    // cosign's own published encrypted key (passphrase "hello"), and the public half openssl derives
    // from it once it is out of the envelope (the envelope itself is what cfs must read).
    const key = join(repoRoot, 'test/fixtures/cosign/sigstore.key');
    const pass = join(tmp, 'pass');
    writeFileSync(pass, 'hello\n');
    const remote = ['--cert-dir', registry.certs.certDir, '--creds', creds, '--registries.d', regd];
    const signed = cfs('sign', ...remote, '--sign-by-sigstore-private-key', key, '--sign-passphrase-file', pass, `docker://${host}/sig/app:v1`);
    assert.equal(signed.status, 0, signed.stderr);
    const tag = signed.stdout.trim().split(':').pop()!;
    assert.match(tag, /^sha256-[0-9a-f]{64}\.sig$/);

    const publicKey = join(tmp, 'cosign.pub');
    {
      const { readSigstorePrivateKey } = await import('../src/oci/cosign-signature.js');
      const { createPublicKey } = await import('node:crypto');
      const priv = await readSigstorePrivateKey({ what: key, bytes: readFileSync(key) }, 'hello');
      writeFileSync(publicKey, createPublicKey(priv).export({ type: 'spki', format: 'pem' }));
    }
    await t.test('the attachment, read by skopeo, holds the payload and a signature openssl verifies', () => {
      const out = join(tmp, 'attachment');
      run('skopeo', ['copy', '--quiet', '--src-cert-dir', registry!.certs.certDir, '--src-creds', creds, `docker://${host}/sig/app:${tag}`, `dir:${out}`]);
      const manifest = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8')) as { layers: { digest: string; mediaType: string; annotations: Record<string, string> }[] };
      assert.equal(manifest.layers.length, 1);
      const layer = manifest.layers[0]!;
      assert.equal(layer.mediaType, 'application/vnd.dev.cosign.simplesigning.v1+json');
      const payloadFile = join(out, layer.digest.slice('sha256:'.length));
      const payload = JSON.parse(readFileSync(payloadFile, 'utf8')) as { critical: { type: string; identity: { 'docker-reference': string }; image: { 'docker-manifest-digest': string } } };
      assert.equal(payload.critical.type, 'cosign container image signature');
      assert.equal(payload.critical.identity['docker-reference'], `${host}/sig/app:v1`);
      assert.equal(`${payload.critical.image['docker-manifest-digest'].replace(':', '-')}.sig`, tag);
      const sig = join(tmp, 'sig.der');
      writeFileSync(sig, Buffer.from(layer.annotations['dev.cosignproject.cosign/signature']!, 'base64'));
      assert.match(run('openssl', ['dgst', '-sha256', '-verify', publicKey, '-signature', sig, payloadFile]), /Verified OK/);
    });

    const policy = writePolicy(join(tmp, 'policy.json'), { [`${host}/sig`]: [{ type: 'sigstoreSigned', keyPath: publicKey }] });
    const pull = (repo: string, ref: string, p: string) => cfsAsync('pull', '--repo', repo, ...remote, '--policy', p, '--explain', `docker://${host}/${ref}`, 'app');

    await t.test('sigstoreSigned with its public key accepts it', async () => {
      const r = await pull(join(tmp, 'r-ok'), 'sig/app:v1', policy);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, /policy: accepted by .*sigstoreSigned by a trusted public key \(sigstore attachments, signature 1\)/);
    });

    await t.test('another key, no attachment, and attachments off in registries.d are refused in one line', async () => {
      const other = writePolicy(join(tmp, 'policy-other.json'), { [`${host}/sig`]: [{ type: 'sigstoreSigned', keyPath: join(repoRoot, 'test/fixtures/containers-image-signature/cosign2.pub') }] });
      oneLineError(await pull(join(tmp, 'r-other'), 'sig/app:v1', other), /refused by .*sigstoreSigned.*no signature was accepted/);
      oneLineError(await pull(join(tmp, 'r-none'), 'sig/unsigned:v1', policy), /refused by .*sigstoreSigned.*no sigstore signature .* exists/);
      const off = join(tmp, 'off.d');
      mkdirSync(off);
      const r = await cfsAsync('pull', '--repo', join(tmp, 'r-off'), '--cert-dir', registry!.certs.certDir, '--creds', creds, '--registries.d', off, '--policy', policy, `docker://${host}/sig/app:v1`);
      oneLineError(r, /refused by .*use-sigstore-attachments/);
      for (const r of ['r-other', 'r-none', 'r-off']) assert.deepEqual(names(join(tmp, r)), []);
    });

    await t.test('an attachment of another media type is no signature, even signed by the trusted key', async () => {
      const { readSigstorePrivateKey, signSigstore } = await import('../src/oci/cosign-signature.js');
      const { buildSignaturePayload } = await import('../src/oci/signature-payload.js');
      const { pushSigstoreAttachment } = await import('../src/oci/sigstore-attachments.js');
      const { RegistryTarget } = await import('../src/oci/registry/push.js');
      const { parseDockerName } = await import('../src/oci/reference.js');
      const digest = (JSON.parse(run('skopeo', ['inspect', '--cert-dir', registry!.certs.certDir, '--creds', creds, `docker://${host}/sig/unsigned:v1`])) as { Digest: string }).Digest;
      const payload = buildSignaturePayload({ dockerReference: `${host}/sig/unsigned:v1`, manifestDigest: digest }, 'sigstore');
      const signature = signSigstore(payload, await readSigstorePrivateKey({ what: key, bytes: readFileSync(key) }, 'hello'));
      const target = new RegistryTarget(parseDockerName(`${host}/sig/unsigned:v1`), `docker://${host}/sig/unsigned:v1`, { creds, certDir: registry!.certs.certDir, env: {} });
      await pushSigstoreAttachment(target, digest, { payload, mediaType: 'application/vnd.example.attestation+json', annotations: { 'dev.cosignproject.cosign/signature': signature } });
      oneLineError(await pull(join(tmp, 'r-attestation'), 'sig/unsigned:v1', policy), /refused by .*sigstoreSigned.*no sigstore signature of sha256:[0-9a-f]{64} exists \(sigstore attachments; 1 attachment of other media types\)$/);
      assert.deepEqual(names(join(tmp, 'r-attestation')), []);
    });
  } finally {
    await registry?.stop();
    removeTemp(tmp);
  }
});

test('a policy file that is a FIFO is refused at once, not waited on', { skip: MISSING }, () => {
  const tmp = makeTemp('policy-fifo');
  try {
    const fifo = join(tmp, 'policy.json');
    run('mkfifo', [fifo]);
    oneLineError(cfs('pull', '--repo', join(tmp, 'r'), '--policy', fifo, 'oci:/nonexistent:x'), /policy\.json.*not a regular file/);
  } finally {
    removeTemp(tmp);
  }
});
