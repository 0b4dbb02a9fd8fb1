/**
 * Lookaside signature storage (containers/image's docs/signature-protocols.md,
 * "Docker registries ... separate storage"): the signatures of the manifest
 * with digest ALGO:HEX of repository REPO (its path in the registry, without
 * the host) are `BASE/REPO@ALGO=HEX/signature-1`, `signature-2`, … where
 * BASE is the configured `lookaside` URL. Reading stops at the first index
 * that does not exist (ENOENT, HTTP 404); any other failure (HTTP 500, 403,
 * a permission error) is an error, never "unsigned". Like containers/image,
 * 128 signatures are taken for a broken server.
 *
 * `file://` storage is read and written beneath the base directory without
 * following a symbolic link (a link anywhere below BASE is refused: the
 * directories may be shared). BASE itself is an ordinary path, followed
 * through links as containers/image follows it: it is the registries.d
 * author's choice (and /var/lib is often a link); a BASE in a directory
 * others may write is theirs to redirect, for skopeo as here. New
 * signatures are written whole under a
 * temporary name and renamed to the first free index without replacing, so
 * no reader sees a partial file. Only `file://` is written (as skopeo).
 */
import { closeSync, constants, fsyncSync, mkdirSync, openSync, readSync, writeSync } from 'node:fs';
import http, { type IncomingMessage } from 'node:http';
import https from 'node:https';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ComposefsError, type ComposefsErrorOptions, reasonOf } from '../errors.js';
import { printable } from '../printable.js';
import { mkdirAt, O_NONBLOCK, openAt, openDirAt, renameAt, S_IFLNK, S_IFMT, S_IFREG, statAt, statFd, typeName, unlinkAt } from '../sys/dirfd.js';
import type { DockerName } from './reference.js';
import { systemCertificates } from './registry/tls.js';

/**
 * Why signatures could not be read from or written to a lookaside. `code`:
 * 'signature-storage' (a refused or broken storage), 'network'.
 */
export class SignatureStorageError extends ComposefsError {
  constructor(message: string, code = 'signature-storage', options?: ComposefsErrorOptions) {
    super(message, code, options);
  }
}

/** containers/image's iolimits.MaxSignatureBodySize. */
export const maxSignatureSize = 4 * 1024 * 1024;
/** containers/image's maxLookasideSignatures: reading fails once this many exist. */
export const maxLookasideSignatures = 128;
/**
 * All the signatures of one manifest together (each may be 4 MiB, and 127
 * of them are taken: half a gigabyte held at once for a hostile storage;
 * real signatures are a kilobyte or less).
 */
export const maxLookasideTotalSize = 16 * 1024 * 1024;
const defaultTimeoutMs = 30_000;
const maxRedirects = 10;

export interface LookasideReadOptions {
  signal?: AbortSignal;
  env: NodeJS.ProcessEnv;
  /**
   * Limit for reading all the signatures of the manifest over HTTP
   * (connections, heads and bodies); default 30 s. Per signature, a server
   * answering each just in time could hold a pull for 127 times as long.
   */
  timeoutMs?: number;
}

const sha256Digest = /^sha256:[0-9a-f]{64}$/;

function checkManifestDigest(digest: string): void {
  if (!sha256Digest.test(digest)) throw new SignatureStorageError(`lookaside: unsupported or malformed manifest digest '${printable(digest.slice(0, 100))}'`);
}

/** A URL for messages: the password hidden, control characters escaped. */
export function redactedUrl(url: URL | string): string {
  let u: URL;
  try {
    u = new URL(url.toString());
  } catch {
    return printable(url.toString());
  }
  if (u.password) u.password = 'xxxxx';
  return printable(u.href);
}

function parseBase(base: string): URL {
  let url: URL;
  try {
    url = new URL(base);
  } catch {
    throw new SignatureStorageError(`lookaside ${printable(base)}: not a valid URL`);
  }
  if (url.protocol !== 'file:' && url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new SignatureStorageError(`lookaside ${redactedUrl(url)}: unsupported scheme ${printable(url.protocol.slice(0, -1))} (file, http and https are)`);
  }
  return url;
}

/** The repository's path components, checked (no '.', '..' or empty one can reach the file system). */
function repositoryComponents(name: DockerName): string[] {
  const parts = name.path.split('/');
  if (parts.some((p) => p === '' || p === '.' || p === '..' || !/^[a-z0-9._-]+$/.test(p))) {
    throw new SignatureStorageError(`lookaside: unexpected repository path '${printable(name.path)}'`);
  }
  return parts;
}

/** `BASE/REPO@sha256=HEX` as containers/image builds it (BASE's path + "/" + REPO, then the digest). */
function signatureDirUrl(base: string, name: DockerName, manifestDigest: string): URL {
  checkManifestDigest(manifestDigest);
  repositoryComponents(name);
  const url = parseBase(base);
  // Go's url.URL keeps an empty path for "https://host"; WHATWG's URL says "/" for both that and "https://host/".
  const basePath = /^[a-z][a-z0-9+.-]*:\/\/[^/?#]*(?:[?#]|$)/i.test(base) ? '' : url.pathname;
  const [algo, hex] = manifestDigest.split(':');
  url.pathname = `${basePath}/${name.path}@${algo}=${hex}`;
  return url;
}

/** The URL of signature `index` (1-based) of `manifestDigest` of `name` in the lookaside `base`. */
export function lookasideSignatureUrl(base: string, name: DockerName, manifestDigest: string, index: number): URL {
  const url = signatureDirUrl(base, name, manifestDigest);
  url.pathname = `${url.pathname}/signature-${index}`;
  return url;
}

/** The signatures of `manifestDigest` of `name` in the lookaside `base`, in index order; none when there are none. */
export async function readLookasideSignatures(base: string, name: DockerName, manifestDigest: string, options: LookasideReadOptions): Promise<Buffer[]> {
  const url = signatureDirUrl(base, name, manifestDigest);
  if (url.protocol === 'file:') return readFileSignatures(base, name, manifestDigest);
  return readHttpSignatures(url, options);
}

function tooMany(where: string): SignatureStorageError {
  return new SignatureStorageError(`lookaside ${where}: ${maxLookasideSignatures} signatures or more, taken for a broken server`);
}

function tooLargeTogether(where: string, count: number): SignatureStorageError {
  return new SignatureStorageError(`lookaside ${where}: the first ${count} signatures are larger than ${maxLookasideTotalSize} bytes together, taken for a broken server`);
}

/** The base directory's path from a file: URL (a host other than localhost is refused). */
function basePathOf(base: string): string {
  try {
    return fileURLToPath(parseBase(base));
  } catch (err) {
    if (err instanceof SignatureStorageError) throw err;
    throw new SignatureStorageError(`lookaside ${redactedUrl(base)}: ${printable((err as Error).message)}`);
  }
}

/** The directory components beneath BASE: the repository's parents, then `NAME@sha256=HEX`. */
function signatureDirComponents(name: DockerName, manifestDigest: string): string[] {
  const parts = repositoryComponents(name);
  const [algo, hex] = manifestDigest.split(':');
  parts[parts.length - 1] = `${parts[parts.length - 1]}@${algo}=${hex}`;
  return parts;
}

function isSymlinkError(err: unknown): boolean {
  return (err as NodeJS.ErrnoException).code === 'ELOOP';
}

/** O_DIRECTORY|O_NOFOLLOW on a symbolic link fails with ENOTDIR: tell a link from another non-directory. */
function isSymlinkAt(dirFd: number, name: string, err: unknown): boolean {
  if ((err as NodeJS.ErrnoException).code !== 'ENOTDIR') return false;
  const st = statAt(dirFd, name);
  return st !== null && (st.mode & S_IFMT) === S_IFLNK;
}

function readFileSignatures(base: string, name: DockerName, manifestDigest: string): Buffer[] {
  const root = basePathOf(base);
  const components = signatureDirComponents(name, manifestDigest);
  const dirPath = join(root, ...components);
  let dirFd: number;
  try {
    dirFd = openSync(root, constants.O_RDONLY | constants.O_DIRECTORY);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new SignatureStorageError(`lookaside ${printable(root)}: ${reasonOf(err)}`, 'signature-storage', { cause: err });
  }
  try {
    let walked = root;
    for (const part of components) {
      walked = join(walked, part);
      let next: number;
      try {
        next = openDirAt(dirFd, part, walked);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
        if (isSymlinkError(err) || isSymlinkAt(dirFd, part, err)) throw new SignatureStorageError(`lookaside ${printable(walked)}: a symbolic link, refused`);
        throw new SignatureStorageError(`lookaside ${printable(walked)}: ${reasonOf(err)}`, 'signature-storage', { cause: err });
      }
      closeSync(dirFd);
      dirFd = next;
    }
    const out: Buffer[] = [];
    let total = 0;
    for (let index = 1; ; index++) {
      if (index > maxLookasideSignatures) throw tooMany(printable(dirPath));
      const sig = readSignatureFile(dirFd, `signature-${index}`, join(dirPath, `signature-${index}`));
      if (sig === undefined) return out;
      total += sig.length;
      if (total > maxLookasideTotalSize) throw tooLargeTogether(printable(dirPath), index);
      out.push(sig);
    }
  } finally {
    closeSync(dirFd);
  }
}

function readSignatureFile(dirFd: number, file: string, path: string): Buffer | undefined {
  let fd: number;
  try {
    fd = openAt(dirFd, file, constants.O_RDONLY | O_NONBLOCK, 0, path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    if (isSymlinkError(err)) throw new SignatureStorageError(`lookaside ${printable(path)}: a symbolic link, refused`);
    throw new SignatureStorageError(`lookaside ${printable(path)}: ${reasonOf(err)}`, 'signature-storage', { cause: err });
  }
  try {
    const st = statFd(fd, path);
    if ((st.mode & S_IFMT) !== S_IFREG) throw new SignatureStorageError(`lookaside ${printable(path)}: ${typeName(st.mode)}, not a regular file`);
    if (st.size > maxSignatureSize) throw new SignatureStorageError(`lookaside ${printable(path)}: too large (${st.size} bytes, at most ${maxSignatureSize})`);
    const buf = Buffer.alloc(st.size + 1);
    let got = 0;
    for (;;) {
      const n = readSync(fd, buf, got, buf.length - got, null);
      if (n === 0) break;
      got += n;
      // Grew while read: what is read is still bounded.
      if (got > st.size) throw new SignatureStorageError(`lookaside ${printable(path)}: changed while read`);
    }
    return buf.subarray(0, got);
  } catch (err) {
    if (err instanceof ComposefsError) throw err;
    throw new SignatureStorageError(`lookaside ${printable(path)}: ${reasonOf(err)}`, 'signature-storage', { cause: err });
  } finally {
    closeSync(fd);
  }
}

async function readHttpSignatures(dirUrl: URL, options: LookasideReadOptions): Promise<Buffer[]> {
  const timeoutMs = options.timeoutMs ?? defaultTimeoutMs;
  const deadline = { timeoutMs, timeout: AbortSignal.timeout(timeoutMs) };
  const httpAgent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const httpsAgent = new https.Agent({ keepAlive: true, maxSockets: 1, ca: systemCertificates(options.env) });
  try {
    const out: Buffer[] = [];
    let total = 0;
    for (let index = 1; ; index++) {
      if (index > maxLookasideSignatures) throw tooMany(redactedUrl(dirUrl));
      const url = new URL(dirUrl);
      url.pathname = `${url.pathname}/signature-${index}`;
      const sig = await fetchSignature(url, { httpAgent, httpsAgent }, deadline, options);
      if (sig === undefined) return out;
      total += sig.length;
      if (total > maxLookasideTotalSize) throw tooLargeTogether(redactedUrl(dirUrl), index);
      out.push(sig);
    }
  } finally {
    httpAgent.destroy();
    httpsAgent.destroy();
  }
}

/** GET one signature: its bytes, or undefined on 404; redirects followed (never from https to http). */
async function fetchSignature(
  first: URL,
  agents: { httpAgent: http.Agent; httpsAgent: https.Agent },
  { timeoutMs, timeout }: { timeoutMs: number; timeout: AbortSignal },
  options: LookasideReadOptions,
): Promise<Buffer | undefined> {
  const label = redactedUrl(first);
  const signal = options.signal ? AbortSignal.any([options.signal, timeout]) : timeout;
  let url = first;
  try {
    for (let hop = 0; ; hop++) {
      const res = await get(url, agents, signal);
      const status = res.statusCode ?? 0;
      if ([301, 302, 303, 307, 308].includes(status) && res.headers.location) {
        res.resume();
        if (hop >= maxRedirects) throw new SignatureStorageError(`lookaside ${label}: too many redirects`);
        const next = new URL(res.headers.location, url);
        if (next.protocol !== 'https:' && next.protocol !== 'http:') throw new SignatureStorageError(`lookaside ${label}: redirected to a URL that is not http(s)`);
        if (url.protocol === 'https:' && next.protocol === 'http:') throw new SignatureStorageError(`lookaside ${label}: redirected from https to plain http, refused`);
        url = next;
        continue;
      }
      if (status === 404) {
        res.resume();
        return undefined;
      }
      if (status !== 200) {
        res.resume();
        throw new SignatureStorageError(`lookaside ${label}: HTTP ${status} (an error, not a missing signature)`);
      }
      const length = Number(res.headers['content-length'] ?? NaN);
      if (length > maxSignatureSize) {
        res.destroy();
        throw new SignatureStorageError(`lookaside ${label}: too large (${length} bytes, at most ${maxSignatureSize})`);
      }
      const chunks: Buffer[] = [];
      let total = 0;
      for await (const chunk of res as AsyncIterable<Buffer>) {
        total += chunk.length;
        if (total > maxSignatureSize) {
          res.destroy();
          throw new SignatureStorageError(`lookaside ${label}: too large (more than ${maxSignatureSize} bytes)`);
        }
        chunks.push(chunk);
      }
      if (!res.complete) throw new SignatureStorageError(`lookaside ${label}: connection closed before the end of the signature`, 'network');
      return Buffer.concat(chunks);
    }
  } catch (err) {
    if (err instanceof SignatureStorageError) throw err;
    if (timeout.aborted && !options.signal?.aborted) throw new SignatureStorageError(`lookaside ${label}: the signatures not all read within ${timeoutMs / 1000} s`, 'network', { cause: err });
    if (options.signal?.aborted) throw options.signal.reason;
    const e = err as NodeJS.ErrnoException;
    const reason = reasonOf(e);
    throw new SignatureStorageError(`lookaside ${label}: ${printable(reason)}`, 'network', { cause: err });
  }
}

function get(url: URL, agents: { httpAgent: http.Agent; httpsAgent: https.Agent }, signal: AbortSignal): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const secure = url.protocol === 'https:';
    const headers: Record<string, string> = {};
    if (url.username || url.password) headers.authorization = `Basic ${Buffer.from(`${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`).toString('base64')}`;
    const req = (secure ? https : http).get(url, { agent: secure ? agents.httpsAgent : agents.httpAgent, signal, headers }, resolve);
    req.on('error', reject);
  });
}

/**
 * Add `signature` for `manifestDigest` of `name` to the `file://` lookaside
 * `base`, at the first free index (directories created, 0755; the file
 * 0644, as containers/image writes them). Returns the file's path.
 */
export async function writeLookasideSignature(base: string, name: DockerName, manifestDigest: string, signature: Buffer): Promise<string> {
  const url = signatureDirUrl(base, name, manifestDigest);
  if (url.protocol !== 'file:') {
    throw new SignatureStorageError(`lookaside ${redactedUrl(base)}: writing directly to a ${url.protocol.slice(0, -1)} lookaside is not supported; configure a file:// lookaside-staging in registries.d`);
  }
  if (signature.length > maxSignatureSize) throw new SignatureStorageError(`signature too large (${signature.length} bytes, at most ${maxSignatureSize})`);
  const root = basePathOf(base);
  const components = signatureDirComponents(name, manifestDigest);
  const dirPath = join(root, ...components);
  const fail = (what: string, err: unknown): never => {
    if (err instanceof ComposefsError) throw err;
    if (isSymlinkError(err)) throw new SignatureStorageError(`lookaside ${printable(what)}: a symbolic link, refused`, 'signature-storage', { cause: err });
    throw new SignatureStorageError(`lookaside ${printable(what)}: ${reasonOf(err)}`, 'signature-storage', { cause: err });
  };
  let dirFd: number;
  try {
    mkdirSync(root, { recursive: true, mode: 0o755 });
    dirFd = openSync(root, constants.O_RDONLY | constants.O_DIRECTORY);
  } catch (err) {
    return fail(root, err);
  }
  try {
    let walked = root;
    for (const part of components) {
      walked = join(walked, part);
      let next: number;
      try {
        mkdirAt(dirFd, part, 0o755, walked);
        next = openDirAt(dirFd, part, walked);
      } catch (err) {
        if (isSymlinkAt(dirFd, part, err)) throw new SignatureStorageError(`lookaside ${printable(walked)}: a symbolic link, refused`);
        return fail(walked, err);
      }
      closeSync(dirFd);
      dirFd = next;
    }
    const tmp = `.signature-tmp.${process.pid}.${Date.now().toString(36)}.${Math.random().toString(36).slice(2)}`;
    let fd = -1;
    try {
      fd = openAt(dirFd, tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644, join(dirPath, tmp));
      for (let off = 0; off < signature.length; ) off += writeSync(fd, signature, off, signature.length - off);
      fsyncSync(fd);
      closeSync(fd);
      fd = -1;
      for (let index = 1; ; index++) {
        const file = `signature-${index}`;
        // A reader fails once maxLookasideSignatures exist: do not make the storage unreadable.
        if (index >= maxLookasideSignatures) throw new SignatureStorageError(`lookaside ${printable(dirPath)}: already ${maxLookasideSignatures - 1} signatures, no more can be added`);
        const existing = statAt(dirFd, file, join(dirPath, file));
        if (existing !== null) {
          if ((existing.mode & S_IFMT) !== S_IFREG) throw new SignatureStorageError(`lookaside ${printable(join(dirPath, file))}: ${typeName(existing.mode)}, not a regular file`);
          continue;
        }
        try {
          renameAt(dirFd, tmp, dirFd, file, true, join(dirPath, file));
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'EEXIST') continue; // taken meanwhile by another writer
          throw err;
        }
        fsyncSync(dirFd);
        return join(dirPath, file);
      }
    } catch (err) {
      if (fd >= 0) closeSync(fd);
      try {
        unlinkAt(dirFd, tmp);
      } catch {
        /* not created, or renamed */
      }
      return fail(dirPath, err);
    }
  } finally {
    closeSync(dirFd);
  }
}
