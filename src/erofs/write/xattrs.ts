/** Xattr names as EROFS stores them, and the shared xattr area. */
import {
  XATTR_ENTRY_SIZE,
  XATTR_FILTER_BITS,
  XATTR_FILTER_SEED,
  XATTR_LONG_PREFIX,
  XATTR_PREFIXES,
} from '../format.js';
import { compareBytes, roundUp } from './bytes.js';
import { xxh32 } from '../xxhash.js';
import { type WXattr, type WNode, valueLength, valueBytes, sameValue } from './nodes.js';

export interface KeyInfo {
  /** EROFS name index of the prefix (0: none, the whole name is stored). */
  index: number;
  /** The name without its prefix, as stored in the image. */
  suffix: Buffer;
  /** This name's bit in the per-inode xattr bloom filter. */
  filterBit: number;
}

export const keyInfos = new Map<string, KeyInfo>();

export function keyInfo(key: string): KeyInfo {
  let info = keyInfos.get(key);
  if (!info) {
    let index = 0;
    let plen = 0;
    for (const [prefix, i] of XATTR_PREFIXES) {
      if (key.startsWith(prefix)) {
        index = i;
        plen = prefix.length;
        break;
      }
    }
    const suffix = Buffer.from(key.slice(plen), 'latin1');
    const filterBit = xxh32(suffix, (XATTR_FILTER_SEED + index) >>> 0) & (XATTR_FILTER_BITS - 1);
    info = { index, suffix, filterBit };
    // Names repeat across a tree; bound the cache for trees where they do not.
    if (keyInfos.size < 65536) keyInfos.set(key, info);
  }
  return info;
}

export function xattrEntrySize(x: WXattr): number {
  return roundUp(XATTR_ENTRY_SIZE + (x.info ?? keyInfo(x.key)).suffix.length + valueLength(x), 4);
}

export interface SharedXattrs {
  list: WXattr[];
  size: number;
}

/**
 * FNV-1a over the length and the first and last bytes: only used to bucket
 * values before comparing them, and digests and object paths differ early.
 */
export function hashBytes(b: Buffer | null, seed: number): number {
  let h = 0x811c9dc5 ^ seed;
  if (!b) return h >>> 0;
  const n = b.length;
  h = Math.imul(h ^ n, 0x01000193);
  const head = n < 16 ? n : 16;
  for (let i = 0; i < head; i++) h = Math.imul(h ^ b[i], 0x01000193);
  for (let i = n - 8 > head ? n - 8 : head; i < n; i++) h = Math.imul(h ^ b[i], 0x01000193);
  return h >>> 0;
}

/** Every (name, value) pair used by more than one inode goes to the shared area once. */
export function sameXattr(a: WXattr, b: WXattr): boolean {
  return a.key === b.key && sameValue(a, b);
}

/**
 * Every (name, value) pair used by more than one inode goes to the shared area
 * once. Pairs are grouped by sorting (hash, position) keys in a Float64Array,
 * which costs far less than a hash table of objects for the many unique pairs.
 */
export function computeSharedXattrs(nodes: WNode[]): SharedXattrs {
  const all: WXattr[] = [];
  const keyHashes = new Map<string, number>();
  for (let n = 0; n < nodes.length; n++) {
    const xattrs = nodes[n].xattrs;
    for (let i = 0; i < xattrs.length; i++) {
      const x = xattrs[i];
      x.info = keyInfo(x.key);
      all.push(x);
    }
  }
  // Positions need 21 bits (2M xattrs); beyond that, fall back to a plain sort.
  const POS = 0x200000;
  const keys = new Float64Array(all.length);
  for (let i = 0; i < all.length; i++) {
    const x = all[i];
    let kh = keyHashes.get(x.key);
    if (kh === undefined) keyHashes.set(x.key, (kh = hashBytes(x.info!.suffix, x.info!.index)));
    keys[i] = hashBytes(x.data, kh ^ x.kind) * POS + i;
  }
  if (all.length < POS) keys.sort();
  else keys.sort((a, b) => a - b);
  const groupOf = new Int32Array(all.length).fill(-1);
  const count = new Int32Array(all.length);
  const shared: WXattr[] = [];
  for (let start = 0; start < keys.length; ) {
    const hash = Math.floor(keys[start] / POS);
    let end = start + 1;
    while (end < keys.length && Math.floor(keys[end] / POS) === hash) end++;
    // Within one hash, sort out the distinct values (almost always exactly one).
    for (let i = start; i < end; i++) {
      const xi = keys[i] % POS;
      if (groupOf[xi] >= 0) continue;
      groupOf[xi] = xi;
      let c = 1;
      for (let j = i + 1; j < end; j++) {
        const xj = keys[j] % POS;
        if (groupOf[xj] < 0 && sameXattr(all[xi], all[xj])) {
          groupOf[xj] = xi;
          c++;
        }
      }
      count[xi] = c;
      if (c > 1) shared.push(all[xi]);
    }
    start = end;
  }
  // The reference's canonical order: name, then value length, then value, all descending.
  const sortable = shared.map((x) => ({ x, value: valueBytes(x) }));
  sortable.sort((a, b) => {
    if (a.x.key !== b.x.key) return a.x.key < b.x.key ? 1 : -1;
    if (a.value.length !== b.value.length) return b.value.length - a.value.length;
    return compareBytes(b.value, a.value);
  });
  shared.length = 0;
  for (const e of sortable) shared.push(e.x);
  const offsetOf = new Map<WXattr, number>();
  let offset = 0;
  for (const x of shared) {
    offsetOf.set(x, offset);
    offset += xattrEntrySize(x);
  }
  let k = 0;
  for (let n = 0; n < nodes.length; n++) {
    const xattrs = nodes[n].xattrs;
    let nShared = 0;
    for (let i = 0; i < xattrs.length; i++, k++) {
      const leader = groupOf[k];
      const off = count[leader] > 1 ? offsetOf.get(all[leader])! : -1;
      if (off >= 0 && nShared < XATTR_LONG_PREFIX) {
        xattrs[i].sharedOffset = off;
        nShared++;
      } else xattrs[i].sharedOffset = -1;
    }
  }
  return { list: shared, size: offset };
}
