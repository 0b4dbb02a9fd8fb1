/**
 * Registry credentials and challenges. Credentials: `--creds USER:PASS`,
 * else the first auth file with an entry for the registry:
 * `--authfile` or $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,
 * ~/.config/containers/auth.json, ~/.docker/config.json. Within a file the
 * most specific key wins (`host/ns/repo`, `host/ns`, `host`), as
 * containers-auth.json(5) has it. Credential helpers are not run.
 */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { SourceError } from '../source-errors.js';

export interface Credentials {
  username: string;
  password: string;
  /** Where they came from, for messages. */
  origin: string;
}

export function parseCreds(text: string): Credentials {
  const colon = text.indexOf(':');
  if (colon <= 0) throw new SourceError(`invalid --creds: expected USER:PASS`, 'invalid-reference');
  return { username: text.slice(0, colon), password: text.slice(colon + 1), origin: '--creds' };
}

function normalizeKey(key: string): string {
  let k = key.replace(/^https?:\/\//, '').replace(/\/+$/, '').replace(/\/v[12]$/, '');
  if (k === 'index.docker.io' || k === 'registry-1.docker.io' || k.startsWith('index.docker.io/')) k = k.replace(/^index\.docker\.io/, 'docker.io');
  return k;
}

export function authFiles(env: NodeJS.ProcessEnv, authFile?: string): string[] {
  const files: string[] = [];
  const primary = authFile ?? env.REGISTRY_AUTH_FILE;
  if (primary) files.push(primary);
  if (env.XDG_RUNTIME_DIR) files.push(join(env.XDG_RUNTIME_DIR, 'containers/auth.json'));
  const home = env.HOME ?? homedir();
  files.push(join(home, '.config/containers/auth.json'), join(home, '.docker/config.json'));
  return files;
}

function fromEntry(entry: unknown, origin: string): Credentials | undefined {
  if (typeof entry !== 'object' || entry === null) return undefined;
  const e = entry as { auth?: unknown; username?: unknown; password?: unknown };
  if (typeof e.auth === 'string' && e.auth !== '') {
    const decoded = Buffer.from(e.auth, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon <= 0) throw new SourceError(`${origin}: malformed auth entry`, 'invalid-input');
    return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1), origin };
  }
  if (typeof e.username === 'string' && typeof e.password === 'string') return { username: e.username, password: e.password, origin };
  return undefined;
}

export function findCredentials(domain: string, repository: string, options: { creds?: string; authFile?: string; env: NodeJS.ProcessEnv }): Credentials | undefined {
  if (options.creds !== undefined) return parseCreds(options.creds);
  const wanted: string[] = [];
  const parts = repository.split('/');
  for (let n = parts.length; n >= 1; n--) wanted.push(`${domain}/${parts.slice(0, n).join('/')}`);
  wanted.push(domain);
  for (const file of authFiles(options.env, options.authFile)) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      if (file === options.authFile) throw new SourceError(`auth file ${file}: ${(err as Error).message}`, 'invalid-input', { cause: err });
      continue;
    }
    let auths: Record<string, unknown>;
    try {
      const parsed = JSON.parse(text) as { auths?: Record<string, unknown> };
      auths = parsed.auths ?? {};
    } catch (err) {
      throw new SourceError(`auth file ${file}: not valid JSON`, 'invalid-input', { cause: err });
    }
    const byKey = new Map(Object.entries(auths).map(([k, v]) => [normalizeKey(k), v]));
    for (const key of wanted) {
      const creds = fromEntry(byKey.get(key), `${file} (${key})`);
      if (creds) return creds;
    }
  }
  return undefined;
}

export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** `WWW-Authenticate: Bearer realm="…",service="…",scope="…"` (one challenge per header line, as registries send them). */
export function parseChallenges(header: string | string[] | undefined): Challenge[] {
  const texts = Array.isArray(header) ? header : header ? [header] : [];
  const challenges: Challenge[] = [];
  for (const text of texts) {
    const scheme = /^\s*([A-Za-z][\w-]*)/.exec(text);
    if (!scheme) continue;
    const params: Record<string, string> = {};
    const re = /([\w-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))/g;
    const rest = text.slice(scheme[0].length);
    let m: RegExpExecArray | null;
    while ((m = re.exec(rest)) !== null) params[m[1].toLowerCase()] = m[2] !== undefined ? m[2].replace(/\\(.)/g, '$1') : m[3];
    challenges.push({ scheme: scheme[1].toLowerCase(), params });
  }
  return challenges;
}
