/**
 * containers-policy.json(5): which images are accepted, read as strictly as
 * containers/image reads it (unknown, duplicated or mistyped fields refuse
 * the whole file), the requirements chosen for an image by the most
 * specific scope, and the `signedIdentity` rules a signature's claimed
 * docker reference must satisfy. No signature cryptography here: checking
 * `signedBy`/`sigstoreSigned` signatures is the caller's, with the keys this
 * module only names.
 */
import { resolve } from 'node:path';
import { ComposefsError, type ComposefsErrorOptions } from '../errors.js';
import { printable, printableJson } from '../printable.js';
import { member, parseStrictJson, type Json, type JsonObject } from './strict-json.js';
import { formatDockerName, isDockerDomain, isDockerPath, parseDockerName, type DockerName, type SourceReference } from './reference.js';

export class PolicyError extends ComposefsError {
  constructor(message: string, options?: ComposefsErrorOptions) {
    super(message, 'policy', options);
  }
}

/** containers/image reads policies of any size; a policy is a few kilobytes, so more is refused rather than buffered. */
export const maxPolicyBytes = 1024 * 1024;

export type SignedIdentity =
  | { type: 'matchExact' }
  | { type: 'matchRepoDigestOrExact' }
  | { type: 'matchRepository' }
  | { type: 'exactReference'; dockerReference: string }
  | { type: 'exactRepository'; dockerRepository: string }
  | { type: 'remapIdentity'; prefix: string; signedPrefix: string };

/** Where the keys of a signature requirement are: files, or the key material itself (base64-decoded). */
export type KeySource = { keyPath: string } | { keyPaths: string[] } | { keyData: Buffer } | { keyDatas: Buffer[] };

export type PolicyRequirement =
  | { type: 'insecureAcceptAnything' }
  | { type: 'reject' }
  | { type: 'signedBy'; keyType: 'GPGKeys'; keys: KeySource; signedIdentity: SignedIdentity }
  | { type: 'sigstoreSigned'; keys: KeySource; signedIdentity: SignedIdentity };

export interface Policy {
  default: PolicyRequirement[];
  /** transport name → scope → requirements; transports containers/image does not know are kept (never matched). */
  transports: Map<string, Map<string, PolicyRequirement[]>>;
}

// ---- strict JSON -------------------------------------------------------------------------------

/** A scope is always written bracketed, so that `transports.docker["a"]` reads as a scope, not a field. */
function scopeMember(path: string, scope: string): string {
  return `${path}[${printableJson(scope)}]`;
}

function where(path: string): string {
  return path === '' ? 'top level' : path;
}

// ---- the policy's shape ------------------------------------------------------------------------

class Reader {
  constructor(readonly what: string) {}

  fail(path: string, reason: string): PolicyError {
    return new PolicyError(`${printable(this.what)}: ${where(path)}: ${reason}`);
  }

  object(value: Json, path: string): JsonObject {
    if (!(value instanceof Map)) throw this.fail(path, 'must be a JSON object');
    return value;
  }

  /** Refuses any member other than `allowed`, as containers/image's paranoid unmarshalling does. */
  fields(value: Json, path: string, allowed: readonly string[]): JsonObject {
    const obj = this.object(value, path);
    for (const key of obj.keys()) {
      if (!allowed.includes(key)) throw this.fail(path, `unknown field ${printableJson(key)}`);
    }
    return obj;
  }

  string(value: Json | undefined, path: string): string {
    if (typeof value !== 'string') throw this.fail(path, 'must be a string');
    return value;
  }

  stringList(value: Json | undefined, path: string): string[] {
    if (!Array.isArray(value)) throw this.fail(path, 'must be an array of strings');
    return value.map((v, i) => this.string(v, `${path}[${i}]`));
  }

  /** Go's []byte: standard base64 with padding. */
  base64(value: Json | undefined, path: string): Buffer {
    const text = this.string(value, path);
    if (!/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(text)) throw this.fail(path, 'is not valid base64');
    return Buffer.from(text, 'base64');
  }
}

const identityFields: Record<SignedIdentity['type'], readonly string[]> = {
  matchExact: [],
  matchRepoDigestOrExact: [],
  matchRepository: [],
  exactReference: ['dockerReference'],
  exactRepository: ['dockerRepository'],
  remapIdentity: ['prefix', 'signedPrefix'],
};

function typeOf(r: Reader, obj: JsonObject, path: string): string {
  if (!obj.has('type')) throw r.fail(path, 'no "type"');
  return r.string(obj.get('type'), member(path, 'type'));
}

/** A remapIdentity prefix: a host[:port], or a repository or namespace in the fully expanded form (host first). */
function validRemapPrefix(s: string): boolean {
  if (isDockerDomain(s)) return true;
  const slash = s.indexOf('/');
  return slash > 0 && isDockerDomain(s.slice(0, slash)) && isDockerPath(s.slice(slash + 1));
}

function parseDockerReferenceField(r: Reader, text: string, path: string): DockerName {
  try {
    return parseDockerName(text);
  } catch (err) {
    throw r.fail(path, `invalid docker reference ${printableJson(text)}: ${err instanceof ComposefsError ? err.message.replace(/^invalid image reference '[^']*': /, '') : String(err)}`);
  }
}

function parseSignedIdentity(r: Reader, value: Json, path: string): SignedIdentity {
  const obj = r.object(value, path);
  const type = typeOf(r, obj, path);
  if (!Object.hasOwn(identityFields, type)) throw r.fail(path, `unknown signedIdentity type ${printableJson(type)}`);
  const fields = identityFields[type as SignedIdentity['type']];
  r.fields(obj, path, ['type', ...fields]);
  // containers/image requires every field of these types to be present.
  for (const f of fields) if (!obj.has(f)) throw r.fail(path, `${type} needs "${f}"`);
  switch (type) {
    case 'exactReference': {
      const p = member(path, 'dockerReference');
      const text = r.string(obj.get('dockerReference'), p);
      const name = parseDockerReferenceField(r, text, p);
      if (name.tag === undefined && name.digest === undefined) throw r.fail(p, `docker reference ${printableJson(text)} has neither a tag nor a digest`);
      return { type, dockerReference: text };
    }
    case 'exactRepository': {
      const p = member(path, 'dockerRepository');
      const text = r.string(obj.get('dockerRepository'), p);
      parseDockerReferenceField(r, text, p);
      return { type, dockerRepository: text };
    }
    case 'remapIdentity': {
      const out: string[] = [];
      for (const f of ['prefix', 'signedPrefix']) {
        const p = member(path, f);
        const text = r.string(obj.get(f), p);
        if (!validRemapPrefix(text)) throw r.fail(p, `${printableJson(text)} is not a host[:port], namespace or repository in the fully expanded form`);
        out.push(text);
      }
      return { type, prefix: out[0]!, signedPrefix: out[1]! };
    }
    default:
      return { type: type as 'matchExact' | 'matchRepoDigestOrExact' | 'matchRepository' };
  }
}

const signedByFields = ['type', 'keyType', 'keyPath', 'keyPaths', 'keyData', 'signedIdentity'];
const sigstoreFields = ['type', 'keyPath', 'keyPaths', 'keyData', 'keyDatas', 'signedIdentity'];
const sigstoreUnsupported = ['fulcio', 'pki', 'rekorPublicKeyPath', 'rekorPublicKeyPaths', 'rekorPublicKeyData', 'rekorPublicKeyDatas'];
/** keyType values containers/image names but does not implement either. */
const knownKeyTypes = ['signedByGPGKeys', 'X509Certificates', 'signedByX509CAs'];

function parseKeys(r: Reader, obj: JsonObject, path: string, names: readonly string[]): KeySource {
  const present = names.filter((n) => obj.has(n));
  if (present.length !== 1) {
    const list = names.join(', ');
    throw r.fail(path, present.length === 0 ? `exactly one of ${list} must be present, none is` : `exactly one of ${list} must be present, not ${present.join(' and ')}`);
  }
  const name = present[0]!;
  const p = member(path, name);
  const v = obj.get(name);
  switch (name) {
    case 'keyPath': {
      const text = r.string(v, p);
      if (text === '') throw r.fail(p, 'is empty');
      return { keyPath: text };
    }
    case 'keyPaths': {
      const list = r.stringList(v, p);
      if (list.length === 0) throw r.fail(p, 'contains no entries');
      return { keyPaths: list };
    }
    case 'keyData':
      return { keyData: r.base64(v, p) };
    default: {
      if (!Array.isArray(v)) throw r.fail(p, 'must be an array of base64 strings');
      if (v.length === 0) throw r.fail(p, 'contains no entries');
      return { keyDatas: v.map((d, i) => r.base64(d, `${p}[${i}]`)) };
    }
  }
}

function identityOf(r: Reader, obj: JsonObject, path: string): SignedIdentity {
  // The man page: "If the signedIdentity field is missing, it is treated as matchRepoDigestOrExact."
  return obj.has('signedIdentity') ? parseSignedIdentity(r, obj.get('signedIdentity')!, member(path, 'signedIdentity')) : { type: 'matchRepoDigestOrExact' };
}

function parseRequirement(r: Reader, value: Json, path: string): PolicyRequirement {
  const obj = r.object(value, path);
  const type = typeOf(r, obj, path);
  switch (type) {
    case 'insecureAcceptAnything':
    case 'reject':
      r.fields(obj, path, ['type']);
      return { type };
    case 'signedBy': {
      r.fields(obj, path, signedByFields);
      const kp = member(path, 'keyType');
      if (!obj.has('keyType')) throw r.fail(path, 'signedBy needs "keyType" (GPGKeys)');
      const keyType = r.string(obj.get('keyType'), kp);
      if (keyType !== 'GPGKeys') {
        throw r.fail(kp, knownKeyTypes.includes(keyType) ? `keyType ${printableJson(keyType)} is not supported (only "GPGKeys")` : `unrecognized keyType ${printableJson(keyType)}`);
      }
      const signedIdentity = identityOf(r, obj, path);
      return { type, keyType, keys: parseKeys(r, obj, path, ['keyPath', 'keyPaths', 'keyData']), signedIdentity };
    }
    case 'sigstoreSigned': {
      for (const key of obj.keys()) {
        if (sigstoreUnsupported.includes(key)) throw r.fail(member(path, key), `"${key}" is not supported (only sigstore public keys: keyPath, keyPaths, keyData, keyDatas)`);
      }
      r.fields(obj, path, sigstoreFields);
      const signedIdentity = identityOf(r, obj, path);
      return { type, keys: parseKeys(r, obj, path, ['keyPath', 'keyPaths', 'keyData', 'keyDatas']), signedIdentity };
    }
    default:
      // signedBaseLayer is known to containers/image but never implemented there (it rejects every image).
      throw r.fail(path, type === 'signedBaseLayer' ? 'requirement type "signedBaseLayer" is not supported' : `unknown requirement type ${printableJson(type)}`);
  }
}

function parseRequirements(r: Reader, value: Json | undefined, path: string): PolicyRequirement[] {
  if (!Array.isArray(value)) throw r.fail(path, 'must be an array of requirements');
  if (value.length === 0) throw r.fail(path, 'the list of requirements must not be empty');
  return value.map((v, i) => parseRequirement(r, v, `${path}[${i}]`));
}

/** containers/image's ValidatePolicyConfigurationScope, for the transports cfs reads. */
function scopeProblem(transport: string, scope: string): string | undefined {
  if (scope === '') return undefined;
  switch (transport) {
    case 'docker-archive':
      return 'docker-archive supports no scope but the default ""';
    case 'oci':
    case 'oci-archive':
      if (!scope.startsWith('/')) return 'must be an absolute path';
      if (scope === '/') return 'use the transport default scope "" instead of "/"';
      if (resolve(scope) !== scope) return `not a canonical path (perhaps ${printableJson(resolve(scope))})`;
      return undefined;
    default:
      return undefined;
  }
}

/**
 * Parses a containers-policy.json(5) file's text; `what` names it in
 * errors ("policy.json: transports.docker[\"example.com\"][0]: …").
 */
export function parsePolicy(text: string | Uint8Array, what: string): Policy {
  const r = new Reader(what);
  const size = typeof text === 'string' ? Buffer.byteLength(text) : text.byteLength;
  if (size > maxPolicyBytes) throw new PolicyError(`${printable(what)}: larger than ${maxPolicyBytes} bytes`);
  let source: string;
  if (typeof text === 'string') source = text;
  else {
    try {
      source = new TextDecoder('utf-8', { fatal: true }).decode(text);
    } catch {
      throw new PolicyError(`${printable(what)}: not UTF-8 text`);
    }
  }
  const doc = parseStrictJson(source, (path, reason) => r.fail(path, reason));
  const top = r.fields(doc, '', ['default', 'transports']);
  if (!top.has('default') || top.get('default') === null) throw r.fail('', 'no "default" requirements');
  const policy: Policy = { default: parseRequirements(r, top.get('default'), 'default'), transports: new Map() };
  const transports = top.get('transports');
  // containers/image refuses "transports": null too (its strict reader wants an object).
  if (transports !== undefined) {
    for (const [name, scopesJson] of r.object(transports, 'transports')) {
      const tp = member('transports', name);
      const scopes = new Map<string, PolicyRequirement[]>();
      for (const [scope, reqs] of r.object(scopesJson, tp)) {
        const sp = scopeMember(tp, scope);
        const problem = scopeProblem(name, scope);
        if (problem !== undefined) throw r.fail(sp, `invalid scope: ${problem}`);
        scopes.set(scope, parseRequirements(r, reqs, sp));
      }
      policy.transports.set(name, scopes);
    }
  }
  return policy;
}

// ---- scopes ------------------------------------------------------------------------------------

/** An image's place in the policy: its most specific scope, then the more general ones in order (the transport's "" excluded). */
export interface PolicyScopes {
  transport: string;
  identity: string;
  namespaces: string[];
}

function dockerNamespaces(name: DockerName): string[] {
  const out: string[] = [];
  let n = `${name.domain}/${name.path}`;
  for (;;) {
    out.push(n);
    const slash = n.lastIndexOf('/');
    if (slash < 0) break;
    n = n.slice(0, slash);
  }
  // Wildcards are over the host name without its port (example.com:5000 → *.com).
  let host = n.includes(':') && !n.startsWith('[') ? n.slice(0, n.indexOf(':')) : n;
  for (let dot = host.indexOf('.'); dot >= 0; dot = host.indexOf('.')) {
    host = host.slice(dot + 1);
    out.push(`*.${host}`);
  }
  return out;
}

function pathNamespaces(path: string): string[] {
  const out: string[] = [];
  let p = path;
  while (p !== '/' && p.lastIndexOf('/') >= 0) {
    out.push(p);
    p = p.slice(0, p.lastIndexOf('/'));
  }
  return out;
}

/**
 * The scopes of a parsed reference, as containers/image derives them:
 * docker: `host/repo:tag` or `host/repo@digest`, then `host/repo`, its
 * namespaces, `host[:port]`, `*.domain`s; oci/oci-archive: the path, then
 * its parent directories (the `:REF` part is not used); docker-archive: none
 * but the default. `resolvedPath` is the absolute path with symlinks
 * resolved (the caller's I/O); without it, the path is only made absolute.
 */
export function policyScopesOf(ref: SourceReference, resolvedPath?: string): PolicyScopes {
  switch (ref.transport) {
    case 'docker': {
      const { name } = ref;
      if (name.tag !== undefined && name.digest !== undefined) throw new PolicyError(`${printable(ref.text)}: a reference with both a tag and a digest has no policy scope`);
      const base = `${name.domain}/${name.path}`;
      return { transport: 'docker', identity: name.tag !== undefined ? `${base}:${name.tag}` : `${base}@${name.digest}`, namespaces: dockerNamespaces(name) };
    }
    case 'oci':
    case 'oci-archive': {
      const path = resolvedPath ?? resolve(ref.path);
      return { transport: ref.transport, identity: path, namespaces: pathNamespaces(path).slice(1) };
    }
    case 'docker-archive':
      return { transport: 'docker-archive', identity: '', namespaces: [] };
  }
}

export interface ChosenRequirements {
  /** The transport section used, or undefined for the global `default`. */
  transport?: string;
  /** The scope used inside it ("" for the transport's default). */
  scope?: string;
  requirements: PolicyRequirement[];
}

/** The requirements of the most specific matching scope (containers/image's requirementsForImageRef). */
export function requirementsFor(policy: Policy, scopes: PolicyScopes): ChosenRequirements {
  const section = policy.transports.get(scopes.transport);
  if (section) {
    for (const scope of [scopes.identity, ...scopes.namespaces, '']) {
      const reqs = section.get(scope);
      if (reqs) return { transport: scopes.transport, scope, requirements: reqs };
    }
  }
  return { requirements: policy.default };
}

/** How a choice reads in a message: `transports.docker["docker.io/library/busybox"]`, `default`. */
export function describeChoice(choice: ChosenRequirements): string {
  return choice.transport === undefined ? 'default' : scopeMember(member('transports', choice.transport), choice.scope ?? '');
}

// ---- signedIdentity ----------------------------------------------------------------------------

/**
 * The docker-like identity signatures are matched against: a docker:
 * reference's name, a docker-archive: reference's NAME[:TAG] if it has one;
 * undefined for oci: and oci-archive: (their :REF is no docker reference), for
 * which the man page allows only exactReference and exactRepository.
 */
export function dockerIdentityOf(ref: SourceReference): DockerName | undefined {
  switch (ref.transport) {
    case 'docker':
      return ref.name;
    case 'docker-archive':
      return ref.name;
    default:
      return undefined;
  }
}

function tryParse(text: string): DockerName | undefined {
  try {
    return parseDockerName(text);
  } catch {
    return undefined;
  }
}

const repoOf = (n: DockerName): string => `${n.domain}/${n.path}`;
const nameOnly = (n: DockerName): boolean => n.tag === undefined && n.digest === undefined;

function matchRepoDigestOrExact(intended: DockerName, signature: DockerName): boolean {
  if (nameOnly(signature)) return false;
  if (intended.tag !== undefined) return formatDockerName(signature) === formatDockerName(intended);
  if (intended.digest !== undefined) return repoOf(signature) === repoOf(intended);
  return false;
}

function remap(identity: { prefix: string; signedPrefix: string }, intended: DockerName): DockerName | undefined {
  const repo = repoOf(intended);
  const matches = repo === identity.prefix || (repo.startsWith(identity.prefix) && repo[identity.prefix.length] === '/');
  if (!matches) return intended;
  const full = formatDockerName(intended);
  const rewritten = identity.signedPrefix + full.slice(identity.prefix.length);
  // The rewritten reference must already be in the canonical, fully expanded form.
  const parsed = tryParse(rewritten);
  return parsed !== undefined && formatDockerName(parsed) === rewritten ? parsed : undefined;
}

/**
 * Whether a signature claiming `signatureDockerReference` satisfies
 * `identity` for an image known as `imageReference` (a docker-like identity;
 * undefined for transports without one, oci and oci-archive). Malformed
 * claimed references match nothing.
 */
export function identityMatches(identity: SignedIdentity, imageReference: DockerName | undefined, signatureDockerReference: string): boolean {
  const signature = tryParse(signatureDockerReference);
  if (signature === undefined) return false;
  switch (identity.type) {
    case 'matchExact':
      if (imageReference === undefined || nameOnly(imageReference) || nameOnly(signature)) return false;
      return formatDockerName(signature) === formatDockerName(imageReference);
    case 'matchRepoDigestOrExact':
      return imageReference !== undefined && matchRepoDigestOrExact(imageReference, signature);
    case 'matchRepository':
      return imageReference !== undefined && repoOf(signature) === repoOf(imageReference);
    case 'exactReference': {
      const intended = tryParse(identity.dockerReference);
      if (intended === undefined || nameOnly(intended) || nameOnly(signature)) return false;
      return formatDockerName(signature) === formatDockerName(intended);
    }
    case 'exactRepository': {
      const intended = tryParse(identity.dockerRepository);
      return intended !== undefined && repoOf(signature) === repoOf(intended);
    }
    case 'remapIdentity': {
      if (imageReference === undefined) return false;
      const intended = remap(identity, imageReference);
      return intended !== undefined && matchRepoDigestOrExact(intended, signature);
    }
  }
}
