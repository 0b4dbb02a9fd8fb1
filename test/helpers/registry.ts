/**
 * A real registry for the tests: the CNCF distribution registry from
 * Debian's docker-registry package, on 127.0.0.1 on a free port, over HTTPS
 * with a certificate made here by openssl, with htpasswd basic auth or token
 * auth (the token issuer below signs JWTs with a test key; the registry
 * trusts its certificate through `rootcertbundle`). Everything runs
 * asynchronously: the issuer lives in this process and must answer while
 * skopeo pushes.
 */
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createPrivateKey, randomBytes, sign } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

export const execFileAsync = promisify(execFile);
export const haveRegistry = spawnSync('sh', ['-c', 'command -v docker-registry && command -v skopeo && command -v umoci && command -v openssl && command -v perl'], { stdio: 'ignore' }).status === 0;
export const NO_REGISTRY = 'docker-registry, skopeo, umoci or openssl missing (npm test installs them as root on Debian): registry tests skipped';

export interface Certificates {
  dir: string;
  /** A certs.d-style directory holding only ca.crt. */
  certDir: string;
  caCert: string;
  serverCert: string;
  serverKey: string;
  signingCert: string;
  signingKey: string;
}

async function openssl(...args: string[]): Promise<void> {
  await execFileAsync('openssl', args);
}

/** A CA, a server certificate for 127.0.0.1 and localhost signed by it, and a self-signed token signing certificate. */
export async function makeCertificates(dir: string): Promise<Certificates> {
  mkdirSync(dir, { recursive: true });
  const p = (name: string) => join(dir, name);
  await openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', p('ca.key'), '-out', p('ca.crt'), '-days', '2', '-subj', '/CN=cfs test CA');
  await openssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', p('server.key'), '-out', p('server.csr'), '-subj', '/CN=127.0.0.1');
  writeFileSync(p('server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  await openssl('x509', '-req', '-in', p('server.csr'), '-CA', p('ca.crt'), '-CAkey', p('ca.key'), '-CAcreateserial', '-out', p('server.crt'), '-days', '2', '-extfile', p('server.ext'));
  await openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', p('signing.key'), '-out', p('signing.crt'), '-days', '2', '-subj', '/CN=cfs test token issuer');
  const certDir = p('certs.d');
  mkdirSync(certDir);
  writeFileSync(join(certDir, 'ca.crt'), readFileSync(p('ca.crt')));
  return { dir, certDir, caCert: p('ca.crt'), serverCert: p('server.crt'), serverKey: p('server.key'), signingCert: p('signing.crt'), signingKey: p('signing.key') };
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

/** An htpasswd line with a bcrypt hash, from libxcrypt through perl's crypt (no apache2-utils needed). */
async function htpasswdLine(user: string, password: string): Promise<string> {
  const alphabet = './ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  // The last salt character carries only 2 significant bits: pick one of the canonical ones.
  const salt = [...randomBytes(21)].map((b) => alphabet[b % 64]).join('') + '.Oeu'[randomBytes(1)[0] % 4];
  const { stdout } = await execFileAsync('perl', ['-e', 'print crypt($ARGV[0], $ARGV[1])', password, `$2b$05$${salt}`]);
  if (!stdout.startsWith('$2b$05$')) throw new Error(`perl's crypt() has no bcrypt here: ${stdout}`);
  return `${user}:${stdout}`;
}

export interface TokenPolicy {
  /** user → password; a user not listed is refused by the issuer (401). */
  users: Record<string, string>;
  /** Actions a user (or '' for anonymous) gets on a repository. */
  grant(user: string, repository: string): string[];
}

export interface Registry {
  /** host:port */
  host: string;
  storage: string;
  certs: Certificates;
  /** Scopes the token issuer was asked for, in order. */
  tokenRequests: { user: string; scope: string }[];
  stop(): Promise<void>;
}

function b64url(data: Buffer | string): string {
  return Buffer.from(data).toString('base64url');
}

/** Start a token issuer (HTTPS, the test certificate) signing RS256 JWTs with x5c, as distribution's token auth verifies them. */
async function startIssuer(certs: Certificates, policy: TokenPolicy, service: string, issuer: string, log: { user: string; scope: string }[]): Promise<{ url: string; close(): Promise<void> }> {
  const key = createPrivateKey(readFileSync(certs.signingKey));
  const der = Buffer.from(readFileSync(certs.signingCert, 'utf8').replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
  const server = https.createServer({ cert: readFileSync(certs.serverCert), key: readFileSync(certs.serverKey) }, (req, res) => {
    const url = new URL(req.url ?? '/', 'https://issuer');
    const header = req.headers.authorization ?? '';
    let user = '';
    if (header.startsWith('Basic ')) {
      const decoded = Buffer.from(header.slice(6), 'base64').toString();
      const colon = decoded.indexOf(':');
      user = decoded.slice(0, colon);
      if (policy.users[user] === undefined || policy.users[user] !== decoded.slice(colon + 1)) {
        res.writeHead(401, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'bad credentials' }] }));
        return;
      }
    }
    const access = url.searchParams.getAll('scope').flatMap((scope) => {
      log.push({ user, scope });
      const [type, name, actions] = scope.split(':');
      const granted = policy.grant(user, name).filter((a) => actions.split(',').includes(a));
      return granted.length ? [{ type, name, actions: granted }] : [];
    });
    const now = Math.floor(Date.now() / 1000);
    const head = b64url(JSON.stringify({ typ: 'JWT', alg: 'RS256', x5c: [der.toString('base64')] }));
    const claims = b64url(JSON.stringify({ iss: issuer, sub: user, aud: service, exp: now + 600, nbf: now - 60, iat: now, jti: randomBytes(8).toString('hex'), access }));
    const signature = b64url(sign('sha256', Buffer.from(`${head}.${claims}`), key));
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ token: `${head}.${claims}.${signature}`, expires_in: 600 }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `https://127.0.0.1:${port}/token`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

async function waitForRegistry(host: string, ca: string, child: ChildProcess, stderr: () => string, scheme: 'http' | 'https'): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (child.exitCode !== null) throw new Error(`docker-registry exited: ${stderr()}`);
    const up = await new Promise<boolean>((resolve) => {
      const req = (scheme === 'https' ? https : http).get(`${scheme}://${host}/v2/`, { ca }, (res) => {
        res.resume();
        resolve(true);
      });
      req.on('error', () => resolve(false));
    });
    if (up) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`docker-registry did not answer on ${host}: ${stderr()}`);
}

export interface RegistryOptions {
  auth: { htpasswd: Record<string, string> } | { token: TokenPolicy };
  /** Accept schema 1 manifests (for the test that they are refused). */
  schema1?: boolean;
  /** Accept manifests whose layers have `urls` matching these patterns (non-distributable layers). */
  allowUrls?: string[];
  /** Serve plain HTTP (no TLS section), for --tls-verify=false's fallback. */
  plainHttp?: boolean;
}

export async function startRegistry(options: RegistryOptions, certs?: Certificates): Promise<Registry> {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-registry-'));
  const stops: (() => Promise<void>)[] = [async () => rmSync(dir, { recursive: true, force: true })];
  const stop = async () => {
    for (const s of stops.reverse()) await s().catch(() => {});
  };
  try {
    const certificates = certs ?? (await makeCertificates(join(dir, 'certs')));
    const port = await freePort();
    const host = `127.0.0.1:${port}`;
    const storage = join(dir, 'storage');
    const tokenRequests: { user: string; scope: string }[] = [];
    let auth: string;
    if ('htpasswd' in options.auth) {
      const lines = await Promise.all(Object.entries(options.auth.htpasswd).map(([u, p]) => htpasswdLine(u, p)));
      writeFileSync(join(dir, 'htpasswd'), lines.join('\n') + '\n');
      auth = `auth:\n  htpasswd:\n    realm: cfs-test\n    path: ${join(dir, 'htpasswd')}\n`;
    } else {
      const issuer = await startIssuer(certificates, options.auth.token, 'cfs-test-registry', 'cfs-test-issuer', tokenRequests);
      stops.push(issuer.close);
      auth = `auth:\n  token:\n    realm: ${issuer.url}\n    service: cfs-test-registry\n    issuer: cfs-test-issuer\n    rootcertbundle: ${certificates.signingCert}\n`;
    }
    const config = [
      'version: 0.1',
      'log:\n  level: error\n  accesslog:\n    disabled: true',
      `storage:\n  filesystem:\n    rootdirectory: ${storage}\n  delete:\n    enabled: true`,
      `http:\n  addr: ${host}\n  secret: cfs-test-secret` + (options.plainHttp ? '' : `\n  tls:\n    certificate: ${certificates.serverCert}\n    key: ${certificates.serverKey}`),
      auth.trimEnd(),
      ...(options.schema1 ? ['compatibility:\n  schema1:\n    enabled: true'] : []),
      ...(options.allowUrls ? [`validation:\n  manifests:\n    urls:\n      allow:\n${options.allowUrls.map((u) => `        - '${u}'`).join('\n')}`] : []),
    ].join('\n');
    writeFileSync(join(dir, 'config.yml'), config + '\n');
    const child = spawn('docker-registry', ['serve', join(dir, 'config.yml')], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr = (stderr + d).slice(-4000)));
    stops.push(
      () =>
        new Promise<void>((resolve) => {
          if (child.exitCode !== null || child.signalCode !== null) return resolve();
          child.once('exit', () => resolve());
          child.kill('SIGTERM');
        }),
    );
    await waitForRegistry(host, readFileSync(certificates.caCert, 'utf8'), child, () => stderr, options.plainHttp ? 'http' : 'https');
    return { host, storage, certs: certificates, tokenRequests, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** Push an image from an OCI layout with skopeo. */
export async function push(registry: Registry, from: string, repoTag: string, creds: string, ...flags: string[]): Promise<void> {
  await execFileAsync('skopeo', ['copy', '--quiet', '--dest-cert-dir', registry.certs.certDir, '--dest-creds', creds, ...flags, from, `docker://${registry.host}/${repoTag}`]);
}

/** The file the registry stores a blob in (for tampering). */
export function storedBlob(registry: Registry, digest: string): string {
  const hex = digest.slice('sha256:'.length);
  return join(registry.storage, 'docker/registry/v2/blobs/sha256', hex.slice(0, 2), hex, 'data');
}

export type ProxyAction =
  | { kind: 'forward'; responseHeaders?: Record<string, string> }
  | { kind: 'status'; status: number; headers?: Record<string, string>; body?: string }
  | { kind: 'drop' }
  | { kind: 'drop-midway' }
  | { kind: 'redirect'; location: string }
  | { kind: 'respond'; status: number; headers?: Record<string, string>; body: Buffer };

export interface Proxy {
  host: string;
  /** Every request seen: method, path, Range and Authorization headers. */
  seen: { method: string; path: string; range?: string; authorization?: string }[];
  close(): Promise<void>;
}

/**
 * A small HTTPS server on 127.0.0.1 (the test certificate) in front of the
 * registry: `decide` says for each request whether to forward it, answer
 * with a status (or a whole answer), drop the connection before answering, drop it halfway
 * through the body, or redirect. `extraHeaders` are added to forwarded requests.
 */
export async function startProxy(registry: Registry, decide: (path: string, index: number, method: string) => ProxyAction, extraHeaders: Record<string, string> = {}, bindHost = '127.0.0.1'): Promise<Proxy> {
  const ca = readFileSync(registry.certs.caCert, 'utf8');
  const seen: Proxy['seen'] = [];
  const server = https.createServer({ cert: readFileSync(registry.certs.serverCert), key: readFileSync(registry.certs.serverKey) }, (req, res) => {
    const path = req.url ?? '/';
    seen.push({ method: req.method ?? 'GET', path, range: req.headers.range, authorization: req.headers.authorization });
    const action = decide(path, seen.length - 1, req.method ?? 'GET');
    if (action.kind === 'drop') {
      req.socket.destroy();
      return;
    }
    if (action.kind === 'status') {
      req.resume();
      res.writeHead(action.status, action.headers ?? {});
      res.end(action.body);
      return;
    }
    if (action.kind === 'respond') {
      res.writeHead(action.status, { 'content-length': String(action.body.length), ...(action.headers ?? {}) });
      res.end(action.body);
      return;
    }
    if (action.kind === 'redirect') {
      res.writeHead(307, { location: action.location });
      res.end();
      return;
    }
    const headers: Record<string, string | string[] | undefined> = { ...req.headers, ...extraHeaders, host: registry.host };
    const upstream = https.request(`https://${registry.host}${path}`, { method: req.method, headers, ca }, (up) => {
      if (action.kind === 'drop-midway') {
        const chunks: Buffer[] = [];
        up.on('data', (c: Buffer) => chunks.push(c));
        up.on('end', () => {
          const body = Buffer.concat(chunks);
          res.writeHead(up.statusCode ?? 502, up.headers);
          res.write(body.subarray(0, body.length >> 1));
          setTimeout(() => req.socket.destroy(), 30);
        });
        return;
      }
      res.writeHead(up.statusCode ?? 502, { ...up.headers, ...(action.kind === 'forward' ? action.responseHeaders : {}) });
      up.pipe(res);
    });
    upstream.on('error', () => req.socket.destroy());
    req.pipe(upstream);
  });
  await new Promise<void>((resolve) => server.listen(0, bindHost, resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    host: `${bindHost === '127.0.0.1' ? '127.0.0.1' : bindHost}:${port}`,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
