/**
 * A registry client for pulling and pushing, following the OCI distribution spec, on
 * `node:https` (see the README for why not fetch/undici): a keep-alive agent
 * per registry carrying its CAs, anonymous or basic access, bearer tokens
 * from the `WWW-Authenticate` challenge (credentials sent to a token realm
 * over TLS only, unless the realm is on the host --tls-verify=false called
 * insecure), redirects followed (Authorization dropped when the host
 * changes), bounded retries with exponential backoff
 * on 429, 5xx and dropped connections. A client made for pushing asks the
 * token service for `repository:NAME:pull,push` (and pull on the repository
 * a blob is mounted from); requests with a body resend it whole on a retry.
 */
import http, { type IncomingMessage, type IncomingHttpHeaders } from 'node:http';
import https from 'node:https';
import type { Readable } from 'node:stream';
import { SourceError } from '../source-errors.js';
import { checkBytes, checkDigestSyntax } from '../verify.js';
import type { SourceOptions } from '../source.js';
import { findCredentials, parseChallenges, type Credentials } from './auth.js';
import { tlsSettings } from './tls.js';
import { DEFAULT_SPEED_FLOOR, TooSlowError, withSpeedFloor, type SpeedFloor } from './speed.js';

/** What the client takes of a source's options: all but the platform choice, which is the transport's. */
export type ClientOptions = Omit<SourceOptions, 'platform'>;

/** What a client may do: pull, or push as well (and pull from other repositories of the registry, to mount their blobs). */
export interface ClientAccess {
  push?: boolean;
  mountFrom?: string[];
}

/** A request body: bytes, or a stream opened again for every try. */
export type RequestBody = Buffer | { size: number; open(): Promise<Readable> };

export type Method = 'GET' | 'HEAD' | 'POST' | 'PUT';

export interface RequestOptions {
  method?: Method;
  body?: RequestBody;
  /** Content-Type of the body. */
  contentType?: string;
  accept?: string[];
  /** First byte wanted (a `Range: bytes=N-` request). */
  from?: number;
  signal?: AbortSignal;
  /** Statuses the caller handles itself rather than failing on. */
  expect?: number[];
}

const retryableStatus = new Set([408, 429, 500, 502, 503, 504]);
const retryableErrors = new Set(['ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ECONNABORTED', 'EAI_AGAIN', 'ENETUNREACH', 'EHOSTUNREACH', 'ERR_STREAM_PREMATURE_CLOSE', 'UND_ERR_SOCKET']);
const tlsErrors = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'SELF_SIGNED_CERT_IN_CHAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_GET_ISSUER_CERT', 'CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID', 'ERR_TLS_CERT_ALTNAME_INVALID', 'CERT_UNTRUSTED', 'CERT_SIGNATURE_FAILURE',
]);
const maxRedirects = 10;
const socketTimeoutMs = 60_000;

/** A dropped connection or a timeout: worth another try. */
export function isRetryableError(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  if (code && retryableErrors.has(code)) return true;
  const message = (err as Error | null)?.message ?? '';
  return message === 'socket hang up' || message === 'aborted' || message === 'Premature close';
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** The host a docker.io name is served from. */
export function registryHost(domain: string): string {
  return domain === 'docker.io' ? 'registry-1.docker.io' : domain;
}

async function readBody(res: IncomingMessage, max: number, floor: SpeedFloor): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of withSpeedFloor(res, floor)) {
    total += (chunk as Buffer).length;
    if (total > max) {
      res.destroy();
      throw new Error(`response larger than ${max} bytes`);
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/** The `errors[0].message` of a registry's JSON error body, if any. */
async function registryErrorText(res: IncomingMessage, floor: SpeedFloor): Promise<string | undefined> {
  try {
    const body = await readBody(res, 64 * 1024, floor);
    const parsed = JSON.parse(body.toString('utf8')) as { errors?: { code?: string; message?: string }[]; details?: string };
    const first = parsed.errors?.[0];
    if (first) return [first.code, first.message].filter(Boolean).join(': ');
  } catch {
    /* not a registry error body */
  }
  return undefined;
}

export class RegistryClient {
  readonly host: string;
  private scheme: 'https' | 'http' = 'https';
  private readonly agents = new Map<string, https.Agent>();
  private readonly httpAgent = new http.Agent({ keepAlive: true, maxSockets: 8 });
  private readonly credentials: Credentials | undefined;
  /** The Authorization value for the registry once a challenge was answered. */
  private authorization: string | undefined;
  private pinged = false;
  private readonly retries: number;
  private readonly retryDelayMs: number;
  private readonly env: NodeJS.ProcessEnv;
  /** The slowest a response body may come (see speed.ts). */
  readonly speedFloor: SpeedFloor;

  constructor(
    domain: string,
    readonly repository: string,
    /** What messages name: the reference as given. */
    readonly label: string,
    private readonly options: ClientOptions,
    private readonly access: ClientAccess = {},
  ) {
    this.host = registryHost(domain);
    this.env = options.env ?? process.env;
    this.credentials = findCredentials(domain, repository, { creds: options.creds, authFile: options.authFile, env: this.env });
    this.retries = options.retries ?? 5;
    this.retryDelayMs = options.retryDelayMs ?? 250;
    this.speedFloor = { bytesPerSecond: options.speedLimit ?? DEFAULT_SPEED_FLOOR.bytesPerSecond, seconds: options.speedTime ?? DEFAULT_SPEED_FLOOR.seconds };
  }

  private agentFor(hostPort: string): https.Agent {
    let agent = this.agents.get(hostPort);
    if (!agent) {
      const tls = tlsSettings(hostPort, { certDir: this.options.certDir, tlsVerify: this.options.tlsVerify, env: this.env });
      agent = new https.Agent({ keepAlive: true, maxSockets: 8, ...tls });
      this.agents.set(hostPort, agent);
    }
    return agent;
  }

  url(path: string): URL {
    return new URL(`${this.scheme}://${this.host}${path}`);
  }

  /** One HTTP exchange, no retries, no redirects: resolves with the response head. */
  private async exchange(url: URL, headers: Record<string, string>, signal?: AbortSignal, method: Method = 'GET', body?: RequestBody): Promise<IncomingMessage> {
    const stream = body && !Buffer.isBuffer(body) ? await body.open() : undefined;
    if (body) headers['content-length'] = String(Buffer.isBuffer(body) ? body.length : body.size);
    return new Promise((resolve, reject) => {
      const secure = url.protocol === 'https:';
      const agent = secure ? this.agentFor(url.host) : this.httpAgent;
      // The response head within the speed floor's period (counted from the
      // body's end when there is one): the socket's idle timeout alone lets a
      // server trickle its headers a byte at a time for ever.
      const { bytesPerSecond, seconds } = this.speedFloor;
      let headTimer: NodeJS.Timeout | undefined;
      const startHeadTimer = () => {
        if (bytesPerSecond > 0) headTimer = setTimeout(() => req.destroy(Object.assign(new Error(`no response within ${seconds} s`), { code: 'ETIMEDOUT' })), seconds * 1000);
      };
      const req = (secure ? https : http).request(url, { method, headers, agent, signal, timeout: socketTimeoutMs }, (res) => {
        clearTimeout(headTimer);
        // An answer before the whole body went (a 401, a refusal): the rest is not wanted.
        if (stream && !stream.readableEnded) stream.destroy();
        resolve(res);
      });
      req.on('timeout', () => req.destroy(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })));
      req.on('error', (err) => {
        clearTimeout(headTimer);
        stream?.destroy();
        reject(err);
      });
      req.on('finish', startHeadTimer);
      if (stream) {
        stream.on('error', (err) => req.destroy(err));
        stream.pipe(req);
      } else req.end(body as Buffer | undefined);
    });
  }

  private describeNetworkError(err: unknown, url: URL): SourceError {
    const code = (err as NodeJS.ErrnoException).code ?? '';
    if (tlsErrors.has(code)) {
      return new SourceError(
        `${this.label}: TLS: the certificate of ${url.host} is not trusted (${(err as Error).message}); add its CA with --cert-dir or use --tls-verify=false`,
        'tls',
        { cause: err },
      );
    }
    if (code === 'EPROTO' || code.startsWith('ERR_SSL_')) {
      return new SourceError(`${this.label}: TLS handshake with ${url.host} failed (${(err as Error).message.split('\n')[0].trim()}); if it serves plain HTTP, use --tls-verify=false`, 'tls', { cause: err });
    }
    if (code === 'ECONNREFUSED') return new SourceError(`${this.label}: cannot connect to ${url.host}: connection refused`, 'network', { cause: err });
    if (code === 'ENOTFOUND') return new SourceError(`${this.label}: cannot resolve ${url.hostname}`, 'network', { cause: err });
    return new SourceError(`${this.label}: ${url.host}: ${(err as Error).message}${code && !(err as Error).message.includes(code) ? ` (${code})` : ''}`, 'network', { cause: err });
  }

  /** Backoff before try `attempt` (1-based): exponential, or the server's Retry-After (capped). */
  private delay(attempt: number, retryAfter?: string): number {
    const seconds = retryAfter !== undefined ? Number(retryAfter) : NaN;
    if (Number.isFinite(seconds) && seconds >= 0) return Math.min(seconds * 1000, 30_000);
    return Math.min(this.retryDelayMs * 2 ** (attempt - 1), 10_000);
  }

  /** First contact: GET /v2/, learning the auth challenge (and, with --tls-verify=false, falling back to plain HTTP as skopeo does). */
  async ping(signal?: AbortSignal): Promise<void> {
    if (this.pinged) return;
    let res: IncomingMessage;
    try {
      res = await this.withRetries(() => this.exchange(this.url('/v2/'), {}, signal), this.url('/v2/'), signal);
    } catch (err) {
      if (this.options.tlsVerify === false && this.scheme === 'https' && err instanceof SourceError && (err.code === 'network' || err.code === 'tls')) {
        this.scheme = 'http';
        res = await this.withRetries(() => this.exchange(this.url('/v2/'), {}, signal), this.url('/v2/'), signal);
      } else throw err;
    }
    res.resume();
    this.pinged = true;
    if (res.statusCode === 401) await this.answerChallenge(res.headers, signal);
  }

  /** Retries network failures and retryable statuses; other statuses are the caller's. */
  private async withRetries(attempt: () => Promise<IncomingMessage>, url: URL, signal?: AbortSignal): Promise<IncomingMessage> {
    for (let tried = 1; ; tried++) {
      let res: IncomingMessage;
      try {
        res = await attempt();
      } catch (err) {
        if (signal?.aborted) throw err;
        if (isRetryableError(err) && tried <= this.retries) {
          await sleep(this.delay(tried), signal);
          continue;
        }
        throw err instanceof SourceError ? err : this.describeNetworkError(err, url);
      }
      if (retryableStatus.has(res.statusCode ?? 0) && tried <= this.retries) {
        res.resume();
        await sleep(this.delay(tried, res.headers['retry-after'] as string | undefined), signal);
        continue;
      }
      return res;
    }
  }

  /** The scopes a token is asked for: this repository (pull, or pull and push), and pull on the repositories blobs are mounted from. */
  private scopes(): string[] {
    const own = `repository:${this.repository}:${this.access.push ? 'pull,push' : 'pull'}`;
    return [own, ...(this.access.mountFrom ?? []).filter((r) => r !== this.repository).map((r) => `repository:${r}:pull`)];
  }

  private scope(): string {
    return this.scopes().join(' ');
  }

  /** Turn a 401's challenge into an Authorization value (a bearer token, or basic credentials). */
  private async answerChallenge(headers: IncomingHttpHeaders, signal?: AbortSignal): Promise<void> {
    const challenges = parseChallenges(headers['www-authenticate']);
    const bearer = challenges.find((c) => c.scheme === 'bearer');
    if (bearer) {
      this.authorization = `Bearer ${await this.fetchToken(bearer.params, signal)}`;
      return;
    }
    if (challenges.some((c) => c.scheme === 'basic')) {
      if (!this.credentials) throw new SourceError(`${this.label}: unauthorized: ${this.host} requires credentials (give --creds USER:PASS or log in to an auth file)`, 'unauthorized');
      this.authorization = `Basic ${Buffer.from(`${this.credentials.username}:${this.credentials.password}`).toString('base64')}`;
      return;
    }
    throw new SourceError(`${this.label}: unauthorized: ${this.host} asks for an unsupported authentication (${challenges.map((c) => c.scheme).join(', ') || 'no challenge'})`, 'unauthorized');
  }

  /** With --tls-verify=false, the registry's own host name (any port) may be spoken to in plain HTTP, credentials included. */
  private insecureHost(url: URL): boolean {
    return this.options.tlsVerify === false && url.hostname === new URL(`https://${this.host}`).hostname;
  }

  private async fetchToken(params: Record<string, string>, signal?: AbortSignal): Promise<string> {
    if (!params.realm) throw new SourceError(`${this.label}: unauthorized: bearer challenge without a realm`, 'unauthorized');
    let realm: URL;
    try {
      realm = new URL(params.realm);
    } catch {
      throw new SourceError(`${this.label}: unauthorized: malformed token realm '${params.realm}'`, 'unauthorized');
    }
    if (realm.protocol !== 'https:' && realm.protocol !== 'http:') throw new SourceError(`${this.label}: unauthorized: token realm '${params.realm}' is not an http(s) URL`, 'unauthorized');
    // The password goes over TLS only: a registry (or whoever answers for
    // it) naming a plain-HTTP realm would have it in clear text. The one
    // exception is the host the user called insecure (--tls-verify=false).
    if (this.credentials && realm.protocol === 'http:' && !this.insecureHost(realm)) {
      throw new SourceError(
        `${this.label}: refusing to send the credentials from ${this.credentials.origin} to the token service ${realm.host} over plain HTTP (the realm ${this.host} names must be https)`,
        'unauthorized',
      );
    }
    if (params.service) realm.searchParams.set('service', params.service);
    for (const scope of this.scopes()) realm.searchParams.append('scope', scope);
    const headers: Record<string, string> = {};
    if (this.credentials) headers.authorization = `Basic ${Buffer.from(`${this.credentials.username}:${this.credentials.password}`).toString('base64')}`;
    const res = await this.withRetries(() => this.exchange(realm, headers, signal), realm, signal);
    if (res.statusCode === 401 || res.statusCode === 403) {
      const detail = await registryErrorText(res, this.speedFloor);
      const why = this.credentials ? `credentials from ${this.credentials.origin} rejected` : 'anonymous access refused';
      throw new SourceError(`${this.label}: unauthorized: the token service ${realm.host} refused ${this.scope()} (${why}${detail ? `: ${detail}` : ''})`, res.statusCode === 403 ? 'denied' : 'unauthorized');
    }
    if (res.statusCode !== 200) {
      res.resume();
      throw new SourceError(`${this.label}: the token service ${realm.host} answered HTTP ${res.statusCode}`, 'unauthorized');
    }
    let body: { token?: unknown; access_token?: unknown };
    try {
      body = JSON.parse((await readBody(res, 1 << 20, this.speedFloor)).toString('utf8'));
    } catch (err) {
      if (err instanceof TooSlowError) throw new SourceError(`${this.label}: the token service ${realm.host}: ${err.message}`, 'network', { cause: err });
      throw new SourceError(`${this.label}: the token service ${realm.host} sent no valid JSON`, 'unauthorized');
    }
    const token = typeof body.token === 'string' && body.token ? body.token : body.access_token;
    if (typeof token !== 'string' || !token) throw new SourceError(`${this.label}: the token service ${realm.host} sent no token`, 'unauthorized');
    return token;
  }

  /**
   * GET a registry path: authorized, retried, redirects followed. Returns the
   * final response when it is 2xx or listed in `expect`; otherwise throws a
   * one-line error naming `what`.
   */
  get(path: string, what: string, options: RequestOptions = {}): Promise<IncomingMessage> {
    return this.request(path, what, options);
  }

  /**
   * A request to the registry (a path, or a URL it gave, such as an upload's
   * Location): authorized when it goes to the registry's host, retried,
   * redirects followed (for PUT and POST only 307 and 308, which keep the
   * method and body). Returns the final response when it is 2xx or listed in
   * `expect`; otherwise throws a one-line error naming `what` and the registry's answer.
   */
  async request(target: string | URL, what: string, options: RequestOptions = {}): Promise<IncomingMessage> {
    await this.ping(options.signal);
    const method = options.method ?? 'GET';
    const keepsMethod = method === 'GET' || method === 'HEAD' ? [301, 302, 303, 307, 308] : [307, 308];
    let answered = false;
    for (;;) {
      let url = typeof target === 'string' ? this.url(target) : target;
      let authorization = url.host === this.host && url.protocol === `${this.scheme}:` ? this.authorization : undefined;
      let res: IncomingMessage | undefined;
      for (let hop = 0; ; hop++) {
        const headers: Record<string, string> = {};
        if (options.accept) headers.accept = options.accept.join(', ');
        if (options.from) headers.range = `bytes=${options.from}-`;
        if (options.contentType) headers['content-type'] = options.contentType;
        if (authorization) headers.authorization = authorization;
        const current = url;
        res = await this.withRetries(() => this.exchange(current, headers, options.signal, method, options.body), current, options.signal);
        const status = res.statusCode ?? 0;
        if (!keepsMethod.includes(status) || !res.headers.location) break;
        res.resume();
        if (hop >= maxRedirects) throw new SourceError(`${what}: too many redirects`, 'network');
        const next = new URL(res.headers.location, url);
        // Credentials for the registry are not for whoever it redirects to (a CDN, object storage).
        if (next.host !== url.host || next.protocol !== url.protocol) authorization = undefined;
        url = next;
      }
      const status = res.statusCode ?? 0;
      if (status >= 200 && status < 300) return res;
      if (options.expect?.includes(status)) return res;
      if (status === 401 && !answered && url.host === this.host) {
        answered = true;
        const hadAuthorization = Boolean(this.authorization);
        res.resume();
        await this.answerChallenge(res.headers, options.signal);
        if (!hadAuthorization || this.authorization?.startsWith('Bearer ')) continue;
      }
      const detail = method === 'HEAD' ? undefined : await registryErrorText(res, this.speedFloor);
      res.resume();
      const suffix = detail ? ` (${detail})` : '';
      const access = this.access.push ? 'push' : 'pull';
      if (status === 401) {
        const challenge = parseChallenges(res.headers['www-authenticate']).find((c) => c.scheme === 'bearer');
        if (challenge?.params.error === 'insufficient_scope') throw new SourceError(`${what}: access denied: no ${access} access to ${this.repository}${suffix}`, 'denied');
        const why = this.credentials ? `credentials from ${this.credentials.origin} rejected` : 'authentication required (give --creds USER:PASS or log in to an auth file)';
        throw new SourceError(`${what}: unauthorized: ${why}${suffix}`, 'unauthorized');
      }
      if (status === 403) throw new SourceError(`${what}: access denied${suffix}`, 'denied');
      if (status === 404) throw new SourceError(`${what}: not found${suffix}`, 'not-found');
      if (status === 416) throw new SourceError(`${what}: range not satisfiable`, 'registry');
      throw new SourceError(`${what}: HTTP ${status}${suffix}`, 'registry');
    }
  }

  /** GET a URL outside the registry (a non-distributable layer's `urls`), without credentials. */
  async getExternal(url: URL, what: string, options: RequestOptions = {}): Promise<IncomingMessage> {
    let target = url;
    for (let hop = 0; hop <= maxRedirects; hop++) {
      const headers: Record<string, string> = options.from ? { range: `bytes=${options.from}-` } : {};
      const current = target;
      const res = await this.withRetries(() => this.exchange(current, headers, options.signal), current, options.signal);
      const status = res.statusCode ?? 0;
      if ([301, 302, 303, 307, 308].includes(status) && res.headers.location) {
        res.resume();
        target = new URL(res.headers.location, target);
        continue;
      }
      if (status >= 200 && status < 300) return res;
      res.resume();
      throw new SourceError(`${what}: ${url.href} answered HTTP ${status}`, status === 404 ? 'not-found' : 'registry');
    }
    throw new SourceError(`${what}: too many redirects`, 'network');
  }

  /**
   * A manifest of the repository under `reference` (a tag such as a sigstore
   * attachment's, or a digest) as served, or null when the registry has none
   * (404); at most `max` bytes. The caller checks what it is.
   */
  async getManifest(reference: string, accept: string[], what: string, max: number, signal?: AbortSignal): Promise<{ bytes: Buffer; mediaType?: string } | null> {
    const res = await this.get(`/v2/${this.repository}/manifests/${reference}`, what, { accept, expect: [404], signal });
    if (res.statusCode === 404) {
      res.resume();
      return null;
    }
    const length = Number(res.headers['content-length'] ?? NaN);
    if (length > max) {
      res.destroy();
      throw new SourceError(`${what}: too large (${length} bytes, at most ${max})`, 'invalid-manifest');
    }
    return { bytes: await this.readAll(res, max, what), mediaType: res.headers['content-type'] };
  }

  /** A small blob of the repository whole (a config, a signature payload), at most `max` bytes, checked against its descriptor. */
  async getBlobBytes(descriptor: { digest: string; size: number }, max: number, what: string, signal?: AbortSignal): Promise<Buffer> {
    checkDigestSyntax(descriptor.digest, what);
    if (descriptor.size > max) throw new SourceError(`${what}: too large (${descriptor.size} bytes, at most ${max})`, 'invalid-manifest');
    const res = await this.get(`/v2/${this.repository}/blobs/${descriptor.digest}`, what, { signal });
    const bytes = await this.readAll(res, max, what);
    checkBytes(bytes, descriptor, what);
    return bytes;
  }

  /** Read a response whole, at most `max` bytes. */
  async readAll(res: IncomingMessage, max: number, what: string): Promise<Buffer> {
    try {
      return await readBody(res, max, this.speedFloor);
    } catch (err) {
      throw new SourceError(`${what}: ${(err as Error).message}`, isRetryableError(err) ? 'network' : 'invalid-manifest', { cause: err });
    }
  }

  get retryLimit(): number {
    return this.retries;
  }

  backoff(attempt: number): number {
    return this.delay(attempt);
  }

  close(): void {
    for (const agent of this.agents.values()) agent.destroy();
    this.httpAgent.destroy();
  }
}
