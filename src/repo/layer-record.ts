/**
 * A layer's record in a repository's `layers/`: the entries of an imported
 * layer (src/oci/layer.ts makes them), kept so that the layer is never
 * downloaded or decompressed again. The one reader and writer of that file:
 * the pull writes and reuses records, gc and fsck read which objects they
 * refer to.
 *
 * Form (version 2): newline-delimited JSON, a first line
 * `{"layerRecord":2}` and then one entry a line with named fields (those of
 * LayerEntry). Repositories made before versioning hold the old form: no
 * first line, and one-letter keys (`p` path, `t` type, `m` mode, `u` uid,
 * `g` gid, `s`/`n` mtime seconds/nanoseconds, `z` size, `d` digest, `c`
 * inline content, `l` link target, `ma`/`mi` device numbers, `x` xattrs);
 * it is read as it is, never rewritten.
 *
 * A record is as hostile as anything else in a shared repository: every
 * field is checked for its type here, so no caller meets a string where a
 * number should be.
 */
import { digestHexPattern, type VerityAlgorithm } from '../fsverity/index.js';
import { ComposefsError, type ComposefsErrorOptions } from '../errors.js';
import { INLINE_LIMIT } from '../store/objects.js';
import type { LayerEntry, LayerEntryType } from '../oci/layer.js';

export const LAYER_RECORD_VERSION = 2;

export class LayerRecordError extends ComposefsError {
  constructor(message: string, options?: ComposefsErrorOptions) {
    super(message, 'repo', options);
  }
}

const TYPES: ReadonlySet<string> = new Set<LayerEntryType>(['file', 'hardlink', 'symlink', 'char', 'block', 'dir', 'fifo', 'whiteout', 'opaque']);

/** The old form's one-letter keys, by the named field each stands for. */
const OLD_KEYS: Readonly<Record<keyof LayerEntry, string>> = {
  path: 'p',
  type: 't',
  mode: 'm',
  uid: 'u',
  gid: 'g',
  mtimeSec: 's',
  mtimeNsec: 'n',
  size: 'z',
  digest: 'd',
  inline: 'c',
  link: 'l',
  major: 'ma',
  minor: 'mi',
  xattrs: 'x',
};

const NUMBERS = ['mode', 'uid', 'gid', 'mtimeSec', 'mtimeNsec', 'size', 'major', 'minor'] as const;
const STRINGS = ['digest', 'inline', 'link'] as const;

/** The record's text for `entries`. */
export function encodeLayerRecord(entries: readonly LayerEntry[]): string {
  const lines = [JSON.stringify({ layerRecord: LAYER_RECORD_VERSION })];
  for (const e of entries) lines.push(JSON.stringify(e));
  return `${lines.join('\n')}\n`;
}

/** The entries of a record's text, in either form; `path` names it in messages. */
export function decodeLayerRecord(text: string, path: string, algorithm: VerityAlgorithm = 'sha256'): LayerEntry[] {
  const out: LayerEntry[] = [];
  let start = 0;
  let line = 0;
  /** null until the first line says which form this is. */
  let named: boolean | null = null;
  while (start < text.length) {
    let end = text.indexOf('\n', start);
    if (end < 0) end = text.length;
    line++;
    if (end > start) {
      let value: unknown;
      try {
        value = JSON.parse(text.slice(start, end));
      } catch {
        throw new LayerRecordError(`layer record ${path} is corrupt (line ${line}: not JSON)`);
      }
      if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new LayerRecordError(`layer record ${path} is corrupt (line ${line}: not an object)`);
      const obj = value as Record<string, unknown>;
      if (named === null && 'layerRecord' in obj) {
        if (obj.layerRecord !== LAYER_RECORD_VERSION) {
          throw new LayerRecordError(`layer record ${path} is of version ${JSON.stringify(obj.layerRecord)}, not ${LAYER_RECORD_VERSION}: made by another version of cfs`);
        }
        named = true;
      } else {
        named ??= false;
        out.push(entryOf(obj, named, path, line, algorithm));
      }
    }
    start = end + 1;
  }
  return out;
}

function entryOf(obj: Record<string, unknown>, named: boolean, path: string, line: number, algorithm: VerityAlgorithm): LayerEntry {
  const digestHex = digestHexPattern(algorithm);
  const get = (field: keyof LayerEntry): unknown => obj[named ? field : OLD_KEYS[field]];
  const bad = (field: keyof LayerEntry, what: string): LayerRecordError =>
    new LayerRecordError(`layer record ${path} is corrupt (line ${line}: ${named ? field : OLD_KEYS[field]} is not ${what})`);
  const p = get('path');
  if (typeof p !== 'string') throw bad('path', 'a string');
  const t = get('type');
  if (typeof t !== 'string' || !TYPES.has(t)) throw bad('type', 'an entry type');
  const e: LayerEntry = { path: p, type: t as LayerEntryType };
  for (const f of NUMBERS) {
    const v = get(f);
    if (v === undefined) continue;
    // Only a time may be before 1970.
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || (v < 0 && f !== 'mtimeSec')) throw bad(f, 'a whole number');
    e[f] = v;
  }
  for (const f of STRINGS) {
    const v = get(f);
    if (v === undefined) continue;
    if (typeof v !== 'string') throw bad(f, 'a string');
    e[f] = v;
  }
  if (e.digest !== undefined && !digestHex.test(e.digest)) throw bad('digest', `a ${algorithm} digest`);
  const x = get('xattrs');
  if (x !== undefined) {
    if (!Array.isArray(x) || !x.every((kv) => Array.isArray(kv) && kv.length === 2 && typeof kv[0] === 'string' && typeof kv[1] === 'string')) throw bad('xattrs', 'a list of name and value pairs');
    e.xattrs = x as [string, string][];
  }
  return e;
}

/** The object (its digest, hex) an entry's content is stored as, or null when there is none (inlined, empty, not a file). */
export function storedObject(e: LayerEntry): string | null {
  return e.type === 'file' && e.digest !== undefined && e.size !== undefined && e.size > INLINE_LIMIT ? e.digest : null;
}
