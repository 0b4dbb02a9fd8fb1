/**
 * A repository's metadata file, `meta.json` at its root: which fs-verity
 * algorithm names its objects and images, and what a tool must understand to
 * use it. The facts follow composefs-rs's repository format (its
 * `repository_format.rs`): a format `version` (1; a tool refuses a higher
 * one), the `algorithm` as `fsverity-<hash>-<log2 block size>` (here
 * `fsverity-sha256-12` or `fsverity-sha512-12`, the OCI sealing
 * specification's names), and `features` in three lists as in ext4, XFS and
 * EROFS superblocks: `compatible` ones may be ignored, an unknown
 * `read-only-compatible` one lets a tool read but not write, an unknown
 * `incompatible` one makes it refuse the repository.
 *
 * A repository without the file is one made before it existed: SHA-256.
 * The file is written when a repository is created (before its directories,
 * so that no repository ever exists without it) and, for an older one, by
 * `cfs init` or the first pull into it.
 *
 * The file is read as hostile input: beneath the repository's fd, never
 * through a link, never from a FIFO or device, at most META_MAX_BYTES, and
 * anything that is not what is described here is one line naming the file
 * and what is wrong.
 */
import { printable } from '../printable.js';
import type { VerityAlgorithm } from '../fsverity/index.js';

export const META_FILE = 'meta.json';
export const REPO_FORMAT_VERSION = 1;
/** Far more than any real metadata needs. */
export const META_MAX_BYTES = 64 << 10;

/** The features this version understands, per list (none yet). */
const KNOWN: Record<FeatureList, readonly string[]> = { compatible: [], 'read-only-compatible': [], incompatible: [] };
const LISTS = ['compatible', 'read-only-compatible', 'incompatible'] as const;
type FeatureList = (typeof LISTS)[number];

export interface RepoMeta {
  version: number;
  algorithm: VerityAlgorithm;
  features: Record<FeatureList, string[]>;
}

/** How this version may use a repository with such metadata. */
export type MetaAccess = { access: 'read-write' } | { access: 'read-only'; unknown: string[] };

/** The name the file spells an algorithm with. */
export function algorithmName(algorithm: VerityAlgorithm): string {
  return `fsverity-${algorithm}-12`;
}

export function newMeta(algorithm: VerityAlgorithm): RepoMeta {
  return { version: REPO_FORMAT_VERSION, algorithm, features: { compatible: [], 'read-only-compatible': [], incompatible: [] } };
}

export function encodeMeta(meta: RepoMeta): string {
  return `${JSON.stringify({ version: meta.version, algorithm: algorithmName(meta.algorithm), features: meta.features }, null, 2)}\n`;
}

/** A short, printable rendering of something the file holds, for a message. */
function shown(value: unknown): string {
  const text = typeof value === 'string' ? value : JSON.stringify(value) ?? String(value);
  return printable(text.length > 80 ? `${text.slice(0, 80)}…` : text);
}

/**
 * Parse and check the file's bytes; `path` names it in messages. Throws an
 * Error whose message is one line (the caller wraps it) for anything wrong,
 * an unknown incompatible feature or a newer version included.
 */
export function decodeMeta(bytes: Buffer, path: string): { meta: RepoMeta; use: MetaAccess } {
  let value: unknown;
  try {
    value = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw new Error(`${path} is not valid JSON`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error(`${path} is not a JSON object`);
  const v = value as Record<string, unknown>;
  if (typeof v.version !== 'number' || !Number.isSafeInteger(v.version) || v.version < 1) throw new Error(`${path}: version ${shown(v.version)} is not a format version`);
  if (v.version > REPO_FORMAT_VERSION) {
    throw new Error(`${path}: repository format version ${v.version} is newer than this cfs understands (${REPO_FORMAT_VERSION})`);
  }
  let algorithm: VerityAlgorithm;
  if (v.algorithm === 'fsverity-sha256-12') algorithm = 'sha256';
  else if (v.algorithm === 'fsverity-sha512-12') algorithm = 'sha512';
  else throw new Error(`${path}: unknown algorithm ${shown(v.algorithm)} (this cfs knows fsverity-sha256-12 and fsverity-sha512-12)`);
  const features: Record<FeatureList, string[]> = { compatible: [], 'read-only-compatible': [], incompatible: [] };
  if (v.features !== undefined) {
    if (typeof v.features !== 'object' || v.features === null || Array.isArray(v.features)) throw new Error(`${path}: features is not an object`);
    const f = v.features as Record<string, unknown>;
    for (const list of LISTS) {
      const items = f[list];
      if (items === undefined) continue;
      if (!Array.isArray(items) || !items.every((x) => typeof x === 'string')) throw new Error(`${path}: features.${list} is not a list of names`);
      features[list] = items as string[];
    }
  }
  const unknown = (list: FeatureList) => features[list].filter((x) => !KNOWN[list].includes(x));
  const incompatible = unknown('incompatible');
  if (incompatible.length > 0) {
    throw new Error(`${path}: the repository needs features this cfs does not know: ${incompatible.map(shown).join(', ')} (incompatible)`);
  }
  const readOnly = unknown('read-only-compatible');
  const meta: RepoMeta = { version: v.version, algorithm, features };
  return { meta, use: readOnly.length > 0 ? { access: 'read-only', unknown: readOnly.map(shown) } : { access: 'read-write' } };
}
