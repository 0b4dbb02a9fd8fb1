/**
 * `cfs pull` against registries that misbehave on purpose (issue #16): one
 * naming a plain-HTTP token realm must not receive the user's password in
 * clear text, one trickling a blob must not hold the pull (and its lock)
 * forever. The registry is a small HTTPS stand-in here (the behaviour under
 * test is the client's), with the test CA; the realm is a plain HTTP server
 * that logs what it receives.
 */
import { oneLineError } from './helpers/cli.js';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { gzip, makeTar } from './helpers/tar-writer.js';
import { cliPath } from './helpers/paths.js';
import { haveTool } from './helpers/oci-images.js';
import { makeCertificates, type Certificates } from './helpers/registry.js';
import { inTemp } from './helpers/temp.js';

const haveOpenssl = haveTool('openssl');

interface Seen {
  path: string;
  authorization?: string;
}

interface Server {
  host: string;
  seen: Seen[];
  close(): Promise<void>;
}

async function listen(server: http.Server | https.Server, seen: Seen[], hostname = '127.0.0.1'): Promise<Server> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    host: `${hostname}:${(server.address() as AddressInfo).port}`,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** A plain HTTP token service: logs each request and its Authorization, hands out a token. */
async function startHttpRealm(): Promise<Server> {
  const seen: Seen[] = [];
  const server = http.createServer((req, res) => {
    seen.push({ path: req.url ?? '/', authorization: req.headers.authorization });
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ token: 'anonymous-token' }));
  });
  return listen(server, seen);
}

/** An HTTPS registry stand-in answering every request with `answer`. */
async function startRegistry(certs: Certificates, answer: (req: http.IncomingMessage, res: http.ServerResponse) => void): Promise<Server> {
  const seen: Seen[] = [];
  const server = https.createServer({ cert: readFileSync(certs.serverCert), key: readFileSync(certs.serverKey) }, (req, res) => {
    seen.push({ path: req.url ?? '/', authorization: req.headers.authorization });
    answer(req, res);
  });
  return listen(server, seen);
}

/** `cfs ARGS` run asynchronously (the stand-ins live in this process), killed after `ms`. */
function cfsAsync(args: string[], ms = 60_000, env: NodeJS.ProcessEnv = {}): Promise<{ status: number | null; stdout: string; stderr: string; ms: number }> {
  return new Promise((resolve) => {
    const started = Date.now();
    const child = spawn(cliPath('cfs'), args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), ms);
    child.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr, ms: Date.now() - started });
    });
  });
}


test(
  'credentials never go in clear text to a token realm on plain HTTP that an HTTPS registry names',
  { skip: haveOpenssl ? false : 'no openssl' },
  inTemp('registry-hostile', async (tmp) => {
    const certs = await makeCertificates(join(tmp, 'certs'));
    const realm = await startHttpRealm();
    // The realm named by its host name, as the registry is by its IP: not the registry's host.
    const realmElsewhere = realm.host.replace('127.0.0.1', 'localhost');
    let realmHost = realm.host;
    const registry = await startRegistry(certs, (req, res) => {
      if (req.headers.authorization === 'Bearer anonymous-token') {
        res.writeHead(404, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ errors: [{ code: 'MANIFEST_UNKNOWN', message: 'no such manifest' }] }));
        return;
      }
      res.writeHead(401, { 'www-authenticate': `Bearer realm="http://${realmHost}/token",service="stand-in"` });
      res.end();
    });
    try {
      const repo = join(tmp, 'repo');
      const ref = `docker://${registry.host}/test/app:v1`;
      const pull = (...flags: string[]) => cfsAsync(['pull', '--repo', repo, '--cert-dir', certs.certDir, ...flags, ref, 'app']);

      // With credentials: refused with one line, and nothing reaches the realm.
      oneLineError(await pull('--creds', 'alice:secret'), new RegExp(`refusing to send the credentials from --creds to the token service ${realm.host} over plain HTTP`));
      assert.equal(realm.seen.length, 0, 'the realm heard nothing');

      // Without credentials there is nothing to leak: the token is fetched anonymously, and the pull goes on (to the stand-in's 404).
      oneLineError(await pull(), /not found \(MANIFEST_UNKNOWN: no such manifest\)/);
      assert.equal(realm.seen.length, 1, 'one anonymous token request');
      assert.equal(realm.seen[0].authorization, undefined);

      // --tls-verify=false names the registry's host insecure: a realm on that host may have the credentials (the user's choice)...
      realm.seen.length = 0;
      oneLineError(await pull('--creds', 'alice:secret', '--tls-verify=false'), /not found/);
      assert.equal(realm.seen[0]?.authorization, `Basic ${Buffer.from('alice:secret').toString('base64')}`);

      // ...but not a realm on another host.
      realm.seen.length = 0;
      realmHost = realmElsewhere;
      oneLineError(await pull('--creds', 'alice:secret', '--tls-verify=false'), /refusing to send the credentials from --creds to the token service localhost:\d+ over plain HTTP/);
      assert.equal(realm.seen.length, 0, 'the realm heard nothing');
    } finally {
      await registry.close();
      await realm.close();
    }
  }),
);

/** An image of one gzip layer, as a registry serves it: manifest, config and layer by path. */
function image(): { paths: Map<string, { type: string; body: Buffer }>; layerPath: string; layerDigest: string } {
  const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
  // Random bytes: gzip keeps them 20 KB, hours at a byte every 250 ms.
  const tar = makeTar([{ path: 'f', data: randomBytes(20_000), mtime: 1700000000 }]);
  const layer = gzip(tar);
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [sha(tar)] } }));
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha(config), size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: sha(layer), size: layer.length }],
    }),
  );
  const paths = new Map([
    ['/v2/test/app/manifests/v1', { type: 'application/vnd.oci.image.manifest.v1+json', body: manifest }],
    [`/v2/test/app/blobs/${sha(config)}`, { type: 'application/octet-stream', body: config }],
    [`/v2/test/app/blobs/${sha(layer)}`, { type: 'application/octet-stream', body: layer }],
  ]);
  return { paths, layerPath: `/v2/test/app/blobs/${sha(layer)}`, layerDigest: sha(layer) };
}

test(
  'a blob that trickles (a byte every 250 ms) fails the pull with one line naming it once below the speed floor, and the repository is free again',
  { skip: haveOpenssl ? false : 'no openssl', timeout: 120_000 },
  inTemp('registry-hostile', async (tmp) => {
    const certs = await makeCertificates(join(tmp, 'certs'));
    const { paths, layerPath, layerDigest } = image();
    let trickle = true;
    let trickleManifest = false;
    let trickleHead = false;
    const timers = new Set<NodeJS.Timeout>();
    const registry = await startRegistry(certs, (req, res) => {
      if (req.url === '/v2/') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end('{}');
        return;
      }
      if (trickleHead && req.url?.includes('/manifests/')) {
        // The status line and headers, a byte at a time, straight on the connection.
        const head = Buffer.from('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-padding: ' + 'x'.repeat(1000) + '\r\n\r\n');
        let sent = 0;
        const timer = setInterval(() => {
          if (sent >= head.length || res.socket === null || res.socket.destroyed) {
            clearInterval(timer);
            return;
          }
          res.socket.write(head.subarray(sent, ++sent));
        }, 100);
        timers.add(timer);
        return;
      }
      const found = paths.get(req.url ?? '');
      if (!found) {
        res.writeHead(404);
        res.end();
        return;
      }
      res.writeHead(200, { 'content-type': found.type, 'content-length': String(found.body.length) });
      if (!(req.url === layerPath && trickle) && !(req.url?.includes('/manifests/') && trickleManifest)) {
        res.end(found.body);
        return;
      }
      res.write(found.body.subarray(0, 100));
      let sent = 100;
      const timer = setInterval(() => {
        if (sent >= found.body.length || res.destroyed) {
          clearInterval(timer);
          return;
        }
        res.write(found.body.subarray(sent, ++sent));
      }, 250);
      timers.add(timer);
    });
    try {
      const repo = join(tmp, 'repo');
      const ref = `docker://${registry.host}/test/app:v1`;
      // The floor from the environment (a period of 2 s to stay fast); --speed-limit and --speed-time say the same.
      const pull = () => cfsAsync(['pull', '--repo', repo, '--cert-dir', certs.certDir, ref, 'app'], 30_000, { CFS_SPEED_LIMIT: '1024', CFS_SPEED_TIME: '2' });

      const r = await pull();
      oneLineError(r, new RegExp(`blob ${layerDigest} of docker://${registry.host}/test/app:v1: transfer slower than 1024 bytes/s for 2 s \\(1\\d\\d of \\d+ bytes received\\); giving up`));
      assert.ok(r.ms < 20_000, `failed in ${r.ms} ms`);
      // The pull's lock is gone with it: gc runs at once.
      const gc = await cfsAsync(['gc', '--repo', repo], 15_000);
      assert.equal(gc.status, 0, gc.stderr);

      // The same blob at full speed passes the same floor.
      trickle = false;
      const fast = await pull();
      assert.equal(fast.status, 0, fast.stderr);
      assert.match(fast.stdout, /^[0-9a-f]{64}\n$/);

      // A manifest that trickles: the same floor.
      trickleManifest = true;
      const manifest = await cfsAsync(['pull', '--repo', repo, '--cert-dir', certs.certDir, ref, 'again'], 30_000, { CFS_SPEED_TIME: '1' });
      oneLineError(manifest, /test\/app:v1: transfer slower than 1024 bytes\/s for 1 s/);
      trickleManifest = false;

      // A manifest whose response head trickles: no response within the period, tried again (as a timeout), then one line.
      trickleHead = true;
      const head = await cfsAsync(['pull', '--repo', repo, '--cert-dir', certs.certDir, ref, 'again'], 30_000, { CFS_SPEED_TIME: '1' });
      oneLineError(head, new RegExp(`test/app:v1: ${registry.host}: no response within 1 s \\(ETIMEDOUT\\)`));
      trickleHead = false;

      // The options, over the environment.
      trickle = true;
      const options = await cfsAsync(['pull', '--repo', join(tmp, 'repo2'), '--cert-dir', certs.certDir, '--speed-limit', '1024', '--speed-time', '1', ref, 'other'], 30_000, { CFS_SPEED_TIME: '600' });
      oneLineError(options, /transfer slower than 1024 bytes\/s for 1 s/);
    } finally {
      for (const t of timers) clearInterval(t);
      await registry.close();
    }
  }),
);
