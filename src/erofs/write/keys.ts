/**
 * Xattr names as EROFS stores them: each distinct name once, with its prefix
 * index, suffix and filter bit, and the id of every name in a flat tree.
 */
import { XATTR_FILTER_BITS, XATTR_FILTER_SEED, XATTR_PREFIXES } from '../format.js';
import { xxh32 } from '../xxhash.js';
import type { FlatTree } from '../../tree/flat.js';
import { ImageWriteError } from './errors.js';

/** Ids the table always gives these names (FIXED, in this order); the writer tests ids rather than names. */
export const enum Key {
  METACOPY,
  REDIRECT,
  OPAQUE,
  ESC_WHITEOUT,
  ESC_WHITEOUTS,
  ESC_OPAQUE,
  USER_WHITEOUT,
  USER_WHITEOUTS,
  USER_OPAQUE,
  ACL_ACCESS,
  ACL_DEFAULT,
  SELINUX,
}

const FIXED = [
  'trusted.overlay.metacopy',
  'trusted.overlay.redirect',
  'trusted.overlay.opaque',
  'trusted.overlay.overlay.whiteout',
  'trusted.overlay.overlay.whiteouts',
  'trusted.overlay.overlay.opaque',
  'user.overlay.whiteout',
  'user.overlay.whiteouts',
  'user.overlay.opaque',
  'system.posix_acl_access',
  'system.posix_acl_default',
  'security.selinux',
];

let BASE: KeyTable | undefined;

const OVERLAY_PREFIX = 'trusted.overlay.';
const ESCAPE_PREFIX = 'trusted.overlay.overlay.';

export class KeyTable {
  /** Names as latin1 strings: one char per byte, so string order is byte order. */
  readonly name: string[];
  /** EROFS name index of the prefix (0: none, the whole name is stored). */
  readonly index: number[];
  /** The name without its prefix, as stored in the image. */
  readonly suffix: Buffer[];
  /** The name's bit in the per-inode xattr bloom filter. */
  readonly filterBit: number[];
  /** Filled by `freeze()` once every name is known: each name's position in byte order, */
  order = new Int32Array(0);
  /** its suffix length */
  suffixLength = new Int32Array(0);
  /** its filter bit as a mask, */
  filterMask = new Int32Array(0);
  /** its prefix index, and its suffix as little-endian words padded with zeros, from suffixStart (in words). */
  prefixIndex = new Uint8Array(0);
  suffixStart = new Int32Array(0);
  suffixWords = new Uint32Array(0);
  private readonly ids: Map<string, number>;

  /** A table with the FIXED names, from a copy of `base` (built once: its hashes need not be redone). */
  constructor(base?: KeyTable) {
    this.name = base ? base.name.slice() : [];
    this.index = base ? base.index.slice() : [];
    this.suffix = base ? base.suffix.slice() : [];
    this.filterBit = base ? base.filterBit.slice() : [];
    this.ids = new Map(base?.ids);
    if (!base) for (const name of FIXED) this.id(name);
  }

  /** A table with the FIXED names. */
  static create(): KeyTable {
    return new KeyTable((BASE ??= new KeyTable()));
  }

  /** The id of a name, adding it on first sight. */
  id(name: string): number {
    let id = this.ids.get(name);
    if (id !== undefined) return id;
    id = this.name.length;
    let index = 0;
    let prefixLength = 0;
    for (let k = 0; k < XATTR_PREFIXES.length; k++) {
      const prefix = XATTR_PREFIXES[k][0];
      if (name.startsWith(prefix)) {
        index = XATTR_PREFIXES[k][1];
        prefixLength = prefix.length;
        break;
      }
    }
    const suffix = Buffer.from(name.slice(prefixLength), 'latin1');
    this.name.push(name);
    this.index.push(index);
    this.suffix.push(suffix);
    this.filterBit.push(xxh32(suffix, (XATTR_FILTER_SEED + index) >>> 0) & (XATTR_FILTER_BITS - 1));
    this.ids.set(name, id);
    return id;
  }

  /** Number every name by its byte order, so xattrs sort by comparing integers. */
  freeze(): void {
    const n = this.name.length;
    const byName = this.name.map((_, id) => id).sort((a, b) => (this.name[a] < this.name[b] ? -1 : 1));
    this.order = new Int32Array(n);
    this.suffixLength = new Int32Array(n);
    this.filterMask = new Int32Array(n);
    for (let r = 0; r < n; r++) this.order[byName[r]] = r;
    this.prefixIndex = Uint8Array.from(this.index);
    this.suffixStart = new Int32Array(n);
    let words = 0;
    for (let id = 0; id < n; id++) words += (this.suffix[id].length + 3) >> 2;
    this.suffixWords = new Uint32Array(words);
    let at = 0;
    for (let id = 0; id < n; id++) {
      const suffix = this.suffix[id];
      this.suffixLength[id] = suffix.length;
      this.suffixStart[id] = at;
      for (let i = 0; i < suffix.length; i++) this.suffixWords[at + (i >> 2)] |= suffix[i] << (8 * (i & 3));
      at += (suffix.length + 3) >> 2;
      this.filterMask[id] = 1 << this.filterBit[id];
    }
  }
}

/**
 * The id of every xattr name of a flat tree (by position in its xattr
 * columns), with `trusted.overlay.*` escaped to `trusted.overlay.overlay.*`.
 *
 * Names repeat on nearly every file when there are any (SELinux labels), so
 * they are told apart by hashing their bytes into a table of typed arrays and
 * decoded to a string only once per distinct name.
 */
export function xattrKeyIds(flat: FlatTree, keys: KeyTable): Int32Array {
  const total = flat.xattrStart[flat.count];
  const out = new Int32Array(total);
  if (total === 0) return out;
  const pool = flat.pool;
  const poolLength = pool.length;
  const ks = flat.xattrKeyStart;
  const ke = flat.xattrKeyEnd;
  const vs = flat.xattrValueStart;
  const ve = flat.xattrValueEnd;
  const words = new DataView(pool.buffer, pool.byteOffset, poolLength);
  const bytes = Buffer.from(pool.buffer, pool.byteOffset, poolLength);
  let size = 16;
  while (size < 2 * total) size *= 2;
  // Slot: 1 + the position of the name's first use, 0 when free.
  const table = new Int32Array(size);
  const hashOf = new Int32Array(total);
  for (let k = 0; k < total; k++) {
    const s = ks[k];
    const e = ke[k];
    if (!(s >= 0 && e >= s && e <= poolLength && vs[k] >= 0 && ve[k] >= vs[k] && ve[k] <= poolLength)) {
      throw new ImageWriteError(`xattr ${k} lies outside the byte pool`);
    }
    // The length and three words, read natively (as for values in shared.ts); names of one tree are few.
    let h = e - s;
    if (e - s >= 4) {
      h = (h * 31 + words.getInt32(s, true)) | 0;
      h = (h * 31 + words.getInt32((s + e - 4) >> 1, true)) | 0;
      h = (h * 31 + words.getInt32(e - 4, true)) | 0;
    } else for (let i = s; i < e; i++) h = (h * 31 + pool[i]) | 0;
    hashOf[k] = h;
    let slot = (h ^ (h >>> 13) ^ (h >>> 23)) & (size - 1);
    for (;;) {
      const f = table[slot] - 1;
      if (f < 0) {
        table[slot] = k + 1;
        let name = bytes.toString('latin1', s, e);
        if (name.startsWith(OVERLAY_PREFIX)) name = ESCAPE_PREFIX + name.slice(OVERLAY_PREFIX.length);
        out[k] = keys.id(name);
        break;
      }
      const fs = ks[f];
      // One range of the pool (a tree may hold each name once), or equal bytes.
      if (hashOf[f] === h && ke[f] - fs === e - s && (fs === s || bytes.compare(bytes, fs, ke[f], s, e) === 0)) {
        out[k] = out[f];
        break;
      }
      slot = (slot + 1) & (size - 1);
    }
  }
  return out;
}
