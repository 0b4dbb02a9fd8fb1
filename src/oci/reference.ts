/**
 * Image references in skopeo's transport syntax:
 *   docker://HOST[:PORT]/REPO[:TAG|@sha256:HEX]   (docker.io names normalized)
 *   oci:DIR[:REF]             an OCI image layout directory
 *   oci-archive:FILE[:REF]    a tar of an OCI image layout
 *   docker-archive:FILE[:REF] `docker save` / `podman save` output (REF: NAME[:TAG] or @INDEX)
 * The rules follow containers/image: the path ends at the first ':', the
 * docker:// name is normalized as distribution/reference's
 * ParseNormalizedNamed does (no domain → docker.io, one component on
 * docker.io → library/NAME), a bare name gets the tag `latest`.
 */
import { basename, resolve } from 'node:path';
import { SourceError } from './source-errors.js';

export interface DockerName {
  /** The registry as written (normalized: index.docker.io → docker.io). */
  domain: string;
  /** Repository path inside the registry (library/alpine). */
  path: string;
  tag?: string;
  digest?: string;
}

export type SourceReference =
  | { transport: 'docker'; text: string; name: DockerName }
  | { transport: 'oci'; text: string; path: string; ref?: string }
  | { transport: 'oci-archive'; text: string; path: string; ref?: string }
  | { transport: 'docker-archive'; text: string; path: string; name?: DockerName; index?: number };

export const transports = ['docker', 'oci', 'oci-archive', 'docker-archive'] as const;

export const defaultDomain = 'docker.io';
const legacyDefaultDomain = 'index.docker.io';

// distribution/reference's grammar.
const alnum = '[a-z0-9]+';
const separator = '(?:[._]|__|[-]+)';
const pathComponent = `${alnum}(?:${separator}${alnum})*`;
const domainComponent = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const ipv6 = '\\[(?:[a-fA-F0-9:]+)\\]';
const domainRe = new RegExp(`^(?:${domainComponent}(?:\\.${domainComponent})*|${ipv6})(?::[0-9]+)?$`);
const pathRe = new RegExp(`^${pathComponent}(?:/${pathComponent})*$`);
const tagRe = /^[\w][\w.-]{0,127}$/;
const digestRe = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$/;
const hex64 = /^[a-f0-9]{64}$/;
const maxNameLength = 255;

/** distribution/reference's domain grammar: host or [IPv6], with an optional :port. */
export function isDockerDomain(text: string): boolean {
  return domainRe.test(text);
}

/** distribution/reference's repository path grammar (components separated by '/'), without a domain. */
export function isDockerPath(text: string): boolean {
  return pathRe.test(text);
}

// The OCI layout's org.opencontainers.image.ref.name grammar, which containers/image checks REF against.
const ociRefComponent = '[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*';
const ociRefRe = new RegExp(`^${ociRefComponent}(?:/${ociRefComponent})*$`);

function invalid(text: string, reason: string): SourceError {
  return new SourceError(`invalid image reference '${text}': ${reason}`, 'invalid-reference');
}

/** ParseNormalizedNamed: a docker name, its domain and path normalized. */
export function parseDockerName(input: string, text = input): DockerName {
  if (hex64.test(input)) throw invalid(text, 'a repository name cannot be a 64-byte hexadecimal string');
  let rest = input;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!digestRe.test(digest)) throw invalid(text, `malformed digest '${digest}'`);
    if (!digest.startsWith('sha256:') || !/^sha256:[a-f0-9]{64}$/.test(digest)) {
      throw invalid(text, `unsupported digest '${digest}' (only sha256:<64 hex digits>)`);
    }
  }
  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.indexOf(':', lastSlash + 1);
  if (colon >= 0) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!tagRe.test(tag)) throw invalid(text, `malformed tag '${tag}'`);
  }
  if (rest === '') throw invalid(text, 'no repository name');
  let domain: string;
  let path: string;
  const slash = rest.indexOf('/');
  const first = slash >= 0 ? rest.slice(0, slash) : '';
  if (slash < 0 || (!/[.:]/.test(first) && first !== 'localhost' && first.toLowerCase() === first)) {
    domain = defaultDomain;
    path = rest;
  } else {
    domain = first;
    path = rest.slice(slash + 1);
  }
  if (domain === legacyDefaultDomain) domain = defaultDomain;
  if (domain === defaultDomain && !path.includes('/')) path = `library/${path}`;
  if (!domainRe.test(domain)) throw invalid(text, `malformed registry '${domain}'`);
  if (path.toLowerCase() !== path) throw invalid(text, `repository name (${path}) must be lowercase`);
  if (!pathRe.test(path)) throw invalid(text, `malformed repository name '${path}'`);
  if (domain.length + 1 + path.length > maxNameLength) throw invalid(text, `repository name longer than ${maxNameLength} characters`);
  return { domain, path, ...(tag !== undefined ? { tag } : {}), ...(digest !== undefined ? { digest } : {}) };
}

/** `host/repo:tag`, `host/repo@digest`. */
export function formatDockerName(name: DockerName): string {
  return `${name.domain}/${name.path}${name.tag !== undefined ? `:${name.tag}` : ''}${name.digest !== undefined ? `@${name.digest}` : ''}`;
}

function splitPathAndRef(rest: string): { path: string; ref?: string } {
  const colon = rest.indexOf(':');
  return colon < 0 ? { path: rest } : { path: rest.slice(0, colon), ref: rest.slice(colon + 1) };
}

export function parseReference(text: string): SourceReference {
  const colon = text.indexOf(':');
  if (colon <= 0) throw invalid(text, `no transport (expected one of ${transports.map((t) => `${t}:`).join(', ')})`);
  const transport = text.slice(0, colon);
  const rest = text.slice(colon + 1);
  switch (transport) {
    case 'docker': {
      if (!rest.startsWith('//')) throw invalid(text, "docker: references must start with 'docker://'");
      const name = parseDockerName(rest.slice(2), text);
      if (name.tag !== undefined && name.digest !== undefined) throw invalid(text, 'references with both a tag and a digest are not supported');
      if (name.tag === undefined && name.digest === undefined) name.tag = 'latest';
      return { transport, text, name };
    }
    case 'oci':
    case 'oci-archive': {
      const { path, ref } = splitPathAndRef(rest);
      if (path === '') throw invalid(text, `no ${transport === 'oci' ? 'directory' : 'file'}`);
      if (ref !== undefined && ref !== '' && !ociRefRe.test(ref)) throw invalid(text, `malformed image name '${ref}'`);
      return { transport, text, path, ...(ref ? { ref } : {}) };
    }
    case 'docker-archive': {
      const { path, ref } = splitPathAndRef(rest);
      if (path === '') throw invalid(text, 'no file');
      if (!ref) return { transport, text, path };
      if (ref.startsWith('@')) {
        if (!/^@[0-9]+$/.test(ref)) throw invalid(text, `malformed image index '${ref}'`);
        return { transport, text, path, index: Number(ref.slice(1)) };
      }
      const name = parseDockerName(ref, text);
      if (name.digest !== undefined) throw invalid(text, 'docker-archive references cannot name a digest');
      if (name.tag === undefined) name.tag = 'latest';
      return { transport, text, path, name };
    }
    default:
      throw invalid(text, `unknown transport '${transport}' (expected one of ${transports.join(', ')})`);
  }
}

/** The name a pulled image gets unless the user gives one. */
export function defaultNameOf(ref: SourceReference): string {
  switch (ref.transport) {
    case 'docker':
      return formatDockerName(ref.name);
    case 'oci':
      return `${basename(resolve(ref.path))}:${ref.ref ?? 'latest'}`;
    case 'oci-archive':
      return `${basename(ref.path).replace(/\.tar$/, '')}:${ref.ref ?? 'latest'}`;
    case 'docker-archive':
      return ref.name ? formatDockerName(ref.name) : `${basename(ref.path).replace(/\.tar$/, '')}:latest`;
  }
}
