/**
 * Which certificates a registry connection trusts, as skopeo decides: the
 * system store (not Node's bundled Mozilla list, when the system has one),
 * plus the registry's certs.d directory (`--cert-dir`, else
 * /etc/containers/certs.d/HOST[:PORT] or /etc/docker/certs.d/HOST[:PORT]):
 * `*.crt` are CAs, `*.cert` + `*.key` a client certificate.
 *
 * Node's `ca` option replaces its default store, so the system bundle is
 * read here (Node 20 has no API for the system store). NODE_EXTRA_CA_CERTS
 * still counts for library users: Node read it at start-up, but passing `ca`
 * would drop it, so its file is read here too. The `cfs` executables remove
 * NODE_EXTRA_CA_CERTS before Node starts (it costs start-up time), so for
 * them `--cert-dir` or the system store are the ways to add a CA.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { rootCertificates } from 'node:tls';
import { ioError } from '../../errors.js';

const systemBundles = ['/etc/ssl/certs/ca-certificates.crt', '/etc/pki/tls/certs/ca-bundle.crt', '/etc/ssl/ca-bundle.pem', '/etc/ssl/cert.pem'];

export interface TlsSettings {
  ca: string[];
  cert?: string;
  key?: string;
  rejectUnauthorized: boolean;
}

function readIfPresent(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

let systemStore: string[] | undefined;

export function systemCertificates(env: NodeJS.ProcessEnv): string[] {
  if (!systemStore) {
    const bundle = [env.SSL_CERT_FILE, ...systemBundles].filter((p): p is string => Boolean(p)).map(readIfPresent).find((b) => b !== undefined);
    systemStore = bundle !== undefined ? [bundle] : [...rootCertificates];
  }
  const extra = env.NODE_EXTRA_CA_CERTS ? readIfPresent(env.NODE_EXTRA_CA_CERTS) : undefined;
  return extra ? [...systemStore, extra] : systemStore;
}

/** The certs.d directory for `hostPort`: the given one, or the first default that exists. */
function certDirFor(hostPort: string, certDir: string | undefined): string | undefined {
  if (certDir !== undefined) return certDir;
  const candidates = [join(homedir(), '.config/containers/certs.d', hostPort), join('/etc/containers/certs.d', hostPort), join('/etc/docker/certs.d', hostPort)];
  return candidates.find((dir) => {
    try {
      readdirSync(dir);
      return true;
    } catch {
      return false;
    }
  });
}

export function tlsSettings(hostPort: string, options: { certDir?: string; tlsVerify?: boolean; env: NodeJS.ProcessEnv }): TlsSettings {
  const settings: TlsSettings = { ca: [...systemCertificates(options.env)], rejectUnauthorized: options.tlsVerify !== false };
  const dir = certDirFor(hostPort, options.certDir);
  if (dir === undefined) return settings;
  let names: string[];
  try {
    names = readdirSync(dir).sort();
  } catch (err) {
    throw ioError(err, `certificate directory ${dir}`);
  }
  const read = (name: string) => {
    try {
      return readFileSync(join(dir, name), 'utf8');
    } catch (err) {
      throw ioError(err, join(dir, name));
    }
  };
  for (const name of names) {
    if (name.endsWith('.crt')) settings.ca.push(read(name));
    else if (name.endsWith('.cert')) {
      const keyName = `${name.slice(0, -'.cert'.length)}.key`;
      if (!names.includes(keyName)) throw ioError(Object.assign(new Error('missing key'), { code: 'ENOENT' }), join(dir, keyName));
      settings.cert = read(name);
      settings.key = read(keyName);
    }
  }
  return settings;
}
