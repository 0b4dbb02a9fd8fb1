/**
 * containers-registries.d(5): where the signatures of images in registries
 * are kept. The directory is `--registries.d DIR` (which must exist), else
 * `$HOME/.config/containers/registries.d` when it exists, else
 * `/etc/containers/registries.d` (none: nothing configured). Every `*.yaml`
 * in it is read; the files are merged, and one namespace (or
 * `default-docker`) configured in two files is an error, as containers/image
 * has it.
 *
 * The lookup follows containers/image's code (docker/registries_d.go),
 * which differs from the man page in one point: a namespace that matches but
 * does not set the key looked for (say, no `lookaside`) does not stop the
 * search; the next less specific namespace, then `default-docker`, are
 * asked. When nothing sets a lookaside, the built-in default directory
 * (/var/lib/containers/sigstore for root, else
 * $HOME/.local/share/containers/sigstore) is used for reading and writing.
 *
 * Keys containers/image does not know are ignored as it ignores them
 * (yaml.v3's Unmarshal is not strict), so a registries.d shared with newer
 * tools keeps working; each is reported in `warnings` with its file and
 * line. Duplicate keys in one mapping are refused (yaml.v3 refuses them too).
 * The `yaml` package is loaded only when a directory is read.
 */
import { closeSync, constants, fstatSync, openSync, readdirSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { InvalidInputError, ioError } from '../errors.js';
import { printable } from '../printable.js';
import type { DockerName } from './reference.js';

/** One configuration section (`default-docker`, or a value of `docker`). */
export interface RegistriesDSection {
  lookaside?: string;
  lookasideStaging?: string;
  /** The deprecated names of lookaside and lookaside-staging, still read. */
  sigstore?: string;
  sigstoreStaging?: string;
  useSigstoreAttachments?: boolean;
  /** For messages: `docker["NS"] in FILE` or `default-docker in FILE`. */
  origin: string;
  /** The file it was read from. */
  file: string;
}

export interface RegistriesD {
  /** The directory read, or undefined when none exists. */
  dir?: string;
  defaultDocker?: RegistriesDSection;
  /** Namespace (host[:port][/path...][:tag|@digest], or *.domain) → section. */
  docker: Map<string, RegistriesDSection>;
  /** Keys ignored (unknown to containers/image), each with its file and line. */
  warnings: string[];
  /** $HOME and the effective uid, for the built-in default location. */
  home?: string;
  euid: number;
}

export interface SignatureStorage {
  /** Where signatures are read from: a `file://`, `http://` or `https://` URL (the built-in default when nothing is configured). */
  lookaside: string;
  /** Where new signatures are written: `lookaside-staging`, else `lookaside` (the same search, for writing). */
  lookasideStaging: string;
  /** Whether sigstore attachments (the `sha256-HEX.sig` tag) are read and written. */
  useSigstoreAttachments: boolean;
  /** Which section gave `lookaside`: `docker["example.com/ns"] in /etc/.../x.yaml`, `default-docker in FILE` or `built-in default`. */
  section: string;
  /** Which section gave `lookasideStaging`. */
  stagingSection: string;
  /** Which section gave `useSigstoreAttachments` (`built-in default`: off). */
  sigstoreSection: string;
}

/**
 * A registries.d file larger than this is refused (the real ones are a few
 * hundred bytes): parsing YAML costs about 0.5 s and 400 MB of memory per
 * megabyte of small mappings.
 */
export const maxRegistriesDFileSize = 256 * 1024;
/** At most this many `*.yaml` files are read from one directory. */
export const maxRegistriesDFiles = 1000;
/** All the files of one directory together: what bounds the time reading it takes. */
export const maxRegistriesDTotalSize = 1024 * 1024;
/** YAML aliases resolved per file (bounds "billion laughs" documents). */
const maxAliases = 100;

const userDir = '.config/containers/registries.d';
export const systemRegistriesDir = '/etc/containers/registries.d';

function exists(path: string): boolean {
  try {
    statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** The directory to read, as containers/image chooses it; undefined when there is none. */
export function registriesDirFor(options: { dir?: string; env: NodeJS.ProcessEnv }): string | undefined {
  if (options.dir !== undefined) {
    let st;
    try {
      st = statSync(options.dir);
    } catch (err) {
      throw ioError(err, `registries.d directory ${printable(options.dir)}`);
    }
    if (!st.isDirectory()) throw new InvalidInputError(`registries.d directory ${printable(options.dir)}: not a directory`);
    return options.dir;
  }
  const home = options.env.HOME;
  if (home) {
    const user = join(home, userDir);
    if (exists(user)) return user;
  }
  return exists(systemRegistriesDir) ? systemRegistriesDir : undefined;
}

/** A file of the directory, read whole and bounded; a FIFO or device is refused rather than waited on. */
function readConfigFile(path: string): Buffer | undefined {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (err) {
    // Removed between the listing and the open: containers/image ignores that race too.
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw ioError(err, `registries.d file ${printable(path)}`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new InvalidInputError(`registries.d file ${printable(path)}: not a regular file`);
    if (st.size > maxRegistriesDFileSize) throw new InvalidInputError(`registries.d file ${printable(path)}: too large (${st.size} bytes, at most ${maxRegistriesDFileSize})`);
    const buf = Buffer.alloc(maxRegistriesDFileSize + 1);
    let got = 0;
    for (;;) {
      const n = readSync(fd, buf, got, buf.length - got, null);
      if (n === 0) break;
      got += n;
      if (got > maxRegistriesDFileSize) throw new InvalidInputError(`registries.d file ${printable(path)}: too large (more than ${maxRegistriesDFileSize} bytes)`);
    }
    return buf.subarray(0, got);
  } catch (err) {
    throw err instanceof InvalidInputError ? err : ioError(err, `registries.d file ${printable(path)}`);
  } finally {
    closeSync(fd);
  }
}

/** Read and merge the registries.d directory (see the file comment). */
export async function loadRegistriesD(options: { dir?: string; env: NodeJS.ProcessEnv }): Promise<RegistriesD> {
  const config: RegistriesD = { docker: new Map(), warnings: [], home: options.env.HOME, euid: process.geteuid?.() ?? 0 };
  const dir = registriesDirFor(options);
  if (dir === undefined) return config;
  config.dir = dir;
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n.endsWith('.yaml'));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' && options.dir === undefined) return config;
    throw ioError(err, `registries.d directory ${printable(dir)}`);
  }
  if (names.length === 0) return config;
  if (names.length > maxRegistriesDFiles) throw new InvalidInputError(`registries.d directory ${printable(dir)}: too many .yaml files (${names.length}, at most ${maxRegistriesDFiles})`);
  names.sort();
  const yaml = await import('yaml');
  let defaultFrom: string | undefined;
  let total = 0;
  for (const name of names) {
    const path = join(dir, name);
    const bytes = readConfigFile(path);
    if (bytes === undefined) continue;
    total += bytes.length;
    if (total > maxRegistriesDTotalSize) throw new InvalidInputError(`registries.d directory ${printable(dir)}: its .yaml files are larger than ${maxRegistriesDTotalSize} bytes together`);
    const parsed = parseRegistriesDFile(yaml, bytes, path, config.warnings);
    if (parsed.defaultDocker) {
      if (config.defaultDocker) throw new InvalidInputError(`registries.d: "default-docker" defined both in ${printable(defaultFrom!)} and ${printable(path)}`);
      config.defaultDocker = parsed.defaultDocker;
      defaultFrom = path;
    }
    for (const [ns, section] of parsed.docker) {
      const earlier = config.docker.get(ns);
      if (earlier) throw new InvalidInputError(`registries.d: "docker" namespace ${printable(JSON.stringify(ns))} defined both in ${printable(earlier.file)} and ${printable(path)}`);
      config.docker.set(ns, section);
    }
  }
  return config;
}

type Yaml = typeof import('yaml');
type YamlNode = import('yaml').Node;

const sectionKeys: Record<string, keyof RegistriesDSection> = {
  lookaside: 'lookaside',
  'lookaside-staging': 'lookasideStaging',
  sigstore: 'sigstore',
  'sigstore-staging': 'sigstoreStaging',
  'use-sigstore-attachments': 'useSigstoreAttachments',
};

// yaml.v3 decodes YAML 1.1's booleans into a bool field too (plain scalars only).
const trueWords = new Set(['y', 'Y', 'yes', 'Yes', 'YES', 'on', 'On', 'ON', 'true', 'True', 'TRUE']);
const falseWords = new Set(['n', 'N', 'no', 'No', 'NO', 'off', 'Off', 'OFF', 'false', 'False', 'FALSE']);

/** Parse one file; `path` names it in every message, with the line of the offending node. */
export function parseRegistriesDFile(yaml: Yaml, bytes: Buffer, path: string, warnings: string[]): { defaultDocker?: RegistriesDSection; docker: Map<string, RegistriesDSection> } {
  const file = printable(path);
  const text = bytes.toString('utf8');
  if (text.includes('\uFFFD') && !Buffer.from(text, 'utf8').equals(bytes)) throw new InvalidInputError(`registries.d file ${file}: not valid UTF-8`);
  const lines = new yaml.LineCounter();
  // Duplicate keys are checked below in one pass: yaml's uniqueKeys compares each key with every earlier one (a file of 20 000 namespaces took 5 s).
  const docs = yaml.parseAllDocuments(text, { uniqueKeys: false, lineCounter: lines, prettyErrors: false, strict: true });
  const at = (node: { range?: [number, number, number] | null } | null | undefined): string => {
    const offset = node?.range?.[0];
    return offset === undefined ? file : `${file}:${lines.linePos(offset).line}`;
  };
  const fail = (node: { range?: [number, number, number] | null } | null | undefined, reason: string): never => {
    throw new InvalidInputError(`registries.d file ${at(node)}: ${reason}`);
  };
  const list = Array.isArray(docs) ? docs : [docs];
  for (const doc of list) {
    const problem = doc.errors[0];
    if (problem) {
      const line = problem.linePos?.[0]?.line ?? (problem.pos?.[0] !== undefined ? lines.linePos(problem.pos[0]).line : undefined);
      const reason = problem.message.split('\n')[0].replace(/ at line \d+, column \d+:?$/, '');
      throw new InvalidInputError(`registries.d file ${file}${line !== undefined ? `:${line}` : ''}: ${printable(reason)}`);
    }
  }
  const result: { defaultDocker?: RegistriesDSection; docker: Map<string, RegistriesDSection> } = { docker: new Map() };
  if (list.length === 0) return result;
  if (list.length > 1) fail(list[1].contents, 'more than one YAML document');
  const doc = list[0];
  // yaml.v3 refuses a duplicate key in any mapping, as yaml's uniqueKeys did (scalars by value and type; aliases by name).
  yaml.visit(doc, {
    Map(_, map) {
      const seen = new Set<string>();
      for (const pair of map.items) {
        const k = pair.key;
        const shown = yaml.isScalar(k) ? (JSON.stringify(k.value) ?? 'null') : yaml.isAlias(k) ? `*${k.source}` : undefined;
        if (shown === undefined) continue;
        const id = yaml.isScalar(k) ? `${typeof k.value}:${String(k.value)}` : shown;
        if (seen.has(id)) fail(k as YamlNode, `Map keys must be unique (${printable(shown)})`);
        seen.add(id);
      }
    },
  });
  let aliases = 0;
  const resolve = (node: unknown): YamlNode | null => {
    let n = node as YamlNode | null;
    while (n && yaml.isAlias(n)) {
      if (++aliases > maxAliases) fail(n, `more than ${maxAliases} aliases`);
      n = n.resolve(doc) as YamlNode | undefined ?? null;
      if (!n) fail(node as YamlNode, 'an alias to no anchor');
    }
    return n;
  };
  const isNull = (n: YamlNode | null) => n === null || (yaml.isScalar(n) && n.value === null);
  // `where`: the node as written (an alias names the line it is used on, not its anchor's).
  const mapping = (n: YamlNode | null, what: string, where: unknown = n) => {
    if (!yaml.isMap(n)) fail(where as YamlNode, `${what} must be a mapping`);
    return n as import('yaml').YAMLMap<unknown, unknown>;
  };
  const keyOf = (pair: import('yaml').Pair<unknown, unknown>): { key: string; node: YamlNode | null } => {
    const k = resolve(pair.key);
    if (!yaml.isScalar(k) || typeof k.value !== 'string') return fail(k, 'a key that is not a string');
    return { key: k.value, node: k };
  };
  const top = resolve(doc.contents);
  if (isNull(top)) return result;
  const section = (written: unknown, title: string): RegistriesDSection => {
    const n = resolve(written);
    const out: RegistriesDSection = { origin: `${title} in ${file}`, file: path };
    if (isNull(n)) return out;
    for (const pair of mapping(n, title, written).items) {
      const { key, node } = keyOf(pair);
      const field = sectionKeys[key];
      if (!field) {
        warnings.push(`registries.d file ${at(node)}: unknown key ${printable(JSON.stringify(key))} ignored`);
        continue;
      }
      const v = resolve(pair.value);
      if (isNull(v)) continue;
      const where = pair.value as YamlNode;
      if (!yaml.isScalar(v)) fail(where, `${key} must be a scalar`);
      const scalar = v as import('yaml').Scalar;
      if (field === 'useSigstoreAttachments') {
        const word = typeof scalar.value === 'string' && scalar.type === 'PLAIN' ? scalar.value : undefined;
        if (typeof scalar.value === 'boolean') out.useSigstoreAttachments = scalar.value;
        else if (word !== undefined && trueWords.has(word)) out.useSigstoreAttachments = true;
        else if (word !== undefined && falseWords.has(word)) out.useSigstoreAttachments = false;
        else fail(where, `${key} must be true or false`);
      } else {
        if (typeof scalar.value !== 'string') fail(where, `${key} must be a string (a URL)`);
        // An empty string is "not configured" for containers/image.
        if (scalar.value !== '') out[field] = scalar.value as never;
      }
    }
    return out;
  };
  for (const pair of mapping(top, 'the document', doc.contents).items) {
    const { key, node } = keyOf(pair);
    const value = resolve(pair.value);
    if (key === 'default-docker') {
      if (!isNull(value)) result.defaultDocker = section(pair.value, 'default-docker');
    } else if (key === 'docker') {
      if (isNull(value)) continue;
      for (const nsPair of mapping(value, 'docker', pair.value).items) {
        const { key: ns } = keyOf(nsPair);
        result.docker.set(ns, section(nsPair.value, `docker[${printable(JSON.stringify(ns))}]`));
      }
    } else {
      warnings.push(`registries.d file ${at(node)}: unknown key ${printable(JSON.stringify(key))} ignored`);
    }
  }
  return result;
}

/** containers/image's PolicyConfigurationIdentity of a docker reference: NAME:TAG or NAME@DIGEST (NAME alone when it has neither). */
export function policyIdentity(name: DockerName): string {
  const repo = `${name.domain}/${name.path}`;
  if (name.digest !== undefined) return `${repo}@${name.digest}`;
  if (name.tag !== undefined) return `${repo}:${name.tag}`;
  return repo;
}

/**
 * containers/image's PolicyConfigurationNamespaces: the repository, its
 * parent namespaces up to the host[:port], then `*.DOMAIN` wildcards of the
 * host without its port (example.com:5000/ns/repo → example.com:5000/ns/repo,
 * example.com:5000/ns, example.com:5000, *.com).
 */
export function policyNamespaces(name: DockerName): string[] {
  const out: string[] = [];
  let current = `${name.domain}/${name.path}`;
  for (;;) {
    out.push(current);
    const slash = current.lastIndexOf('/');
    if (slash < 0) break;
    current = current.slice(0, slash);
  }
  const colon = current.indexOf(':');
  if (colon >= 0) current = current.slice(0, colon);
  for (;;) {
    const dot = current.indexOf('.');
    if (dot < 0) break;
    current = current.slice(dot + 1);
    out.push(`*.${current}`);
  }
  return out;
}

/** The sections searched for `name`, most specific first (the identity, the namespaces, default-docker). */
function candidates(config: RegistriesD, name: DockerName): RegistriesDSection[] {
  const out: RegistriesDSection[] = [];
  const identity = policyIdentity(name);
  const exact = config.docker.get(identity);
  if (exact && (name.tag !== undefined || name.digest !== undefined)) out.push(exact);
  for (const ns of policyNamespaces(name)) {
    const s = config.docker.get(ns);
    if (s && !out.includes(s)) out.push(s);
  }
  if (config.defaultDocker) out.push(config.defaultDocker);
  return out;
}

/** The built-in lookaside when nothing is configured: /var/lib/containers/sigstore for root, ~/.local/share/containers/sigstore for others. */
export function builtInLookaside(config: Pick<RegistriesD, 'home' | 'euid'>): string {
  if (config.euid === 0) return 'file:///var/lib/containers/sigstore';
  // A file: URL made from the path (a '#', '?' or '%' in $HOME is part of the path, not of the URL's syntax).
  return pathToFileURL(join(config.home ?? '/', '.local/share/containers/sigstore')).href;
}

/** Where the signatures of `name` are read and written, and whether sigstore attachments are used. */
export function signatureStorageFor(config: RegistriesD, name: DockerName): SignatureStorage {
  const sections = candidates(config, name);
  const pick = (keys: ('lookaside' | 'lookasideStaging' | 'sigstore' | 'sigstoreStaging')[]) => {
    for (const s of sections) {
      for (const k of keys) {
        const v = s[k];
        if (v !== undefined) return { url: v, section: s.origin };
      }
    }
    return { url: builtInLookaside(config), section: 'built-in default' };
  };
  const read = pick(['lookaside', 'sigstore']);
  const write = pick(['lookasideStaging', 'sigstoreStaging', 'lookaside', 'sigstore']);
  const attach = sections.find((s) => s.useSigstoreAttachments !== undefined);
  return {
    lookaside: read.url,
    lookasideStaging: write.url,
    useSigstoreAttachments: attach?.useSigstoreAttachments ?? false,
    section: read.section,
    stagingSection: write.section,
    sigstoreSection: attach ? attach.origin : 'built-in default',
  };
}
