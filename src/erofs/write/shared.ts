/** Xattr values and the shared xattr area: every (name, value) pair used by more than one inode, stored once. */
import { FS_VERITY_HASH_ALG_SHA256, XATTR_ENTRY_SIZE, XATTR_LONG_PREFIX } from '../format.js';
import { compareBytes, copyBytes, roundUp } from './bytes.js';
import { ValueKind, type Plan } from './plan.js';

export function valueLength(kind: ValueKind, data: Buffer | null): number {
  if (kind === ValueKind.Bytes) return data!.length;
  if (kind === ValueKind.Metacopy) return data ? 4 + 32 : 0;
  return 1 + data!.length;
}

export function writeValue(b: Uint8Array, pos: number, kind: ValueKind, data: Buffer | null): void {
  if (kind === ValueKind.Bytes) copyBytes(b, pos, data!, 0, data!.length);
  else if (kind === ValueKind.Metacopy) {
    if (!data) return;
    b[pos] = 0; // version
    b[pos + 1] = 4 + 32; // length
    b[pos + 2] = 0; // flags
    b[pos + 3] = FS_VERITY_HASH_ALG_SHA256;
    copyBytes(b, pos + 4, data, 0, 32);
  } else {
    b[pos] = 0x2f; // '/'
    copyBytes(b, pos + 1, data!, 0, data!.length);
  }
}

function valueBytes(kind: ValueKind, data: Buffer | null): Buffer {
  const b = Buffer.alloc(valueLength(kind, data));
  writeValue(b, 0, kind, data);
  return b;
}

export function entrySize(plan: Plan, k: number): number {
  return roundUp(XATTR_ENTRY_SIZE + plan.keys.suffix[plan.xattrKey[k]].length + valueLength(plan.xattrKind[k], plan.xattrData[k]), 4);
}

/**
 * FNV-1a over the length and the first and last bytes: only used to bucket
 * values before comparing them, and digests and object paths differ early.
 */
function hashBytes(b: Buffer | null, seed: number): number {
  let h = 0x811c9dc5 ^ seed;
  if (!b) return h >>> 0;
  const n = b.length;
  h = Math.imul(h ^ n, 0x01000193);
  const head = n < 16 ? n : 16;
  for (let i = 0; i < head; i++) h = Math.imul(h ^ b[i], 0x01000193);
  for (let i = n - 8 > head ? n - 8 : head; i < n; i++) h = Math.imul(h ^ b[i], 0x01000193);
  return h >>> 0;
}

function sameXattr(plan: Plan, a: number, b: number): boolean {
  if (plan.xattrKey[a] !== plan.xattrKey[b]) return false;
  const ka = plan.xattrKind[a];
  const kb = plan.xattrKind[b];
  const da = plan.xattrData[a];
  const db = plan.xattrData[b];
  if (ka !== kb) return valueBytes(ka, da).equals(valueBytes(kb, db));
  if (da === db) return true;
  if (!da || !db) return false;
  return compareBytes(da, db) === 0;
}

export interface Shared {
  /** Flat indices of one xattr of each shared pair, in the order of the shared area. */
  list: number[];
  size: number;
  /** Per flat xattr: its offset in the shared area, or -1 when stored inline. */
  offset: Int32Array;
}

/**
 * Pairs are grouped by sorting (hash, position) keys in a Float64Array, which
 * costs far less than a hash table of objects for the many unique pairs.
 */
export function computeShared(plan: Plan): Shared {
  const total = plan.xattrKey.length;
  // Positions need 21 bits (2M xattrs); beyond that, fall back to a comparator.
  const POS = 0x200000;
  const sortKeys = new Float64Array(total);
  for (let k = 0; k < total; k++) {
    const key = plan.xattrKey[k];
    sortKeys[k] = hashBytes(plan.xattrData[k], Math.imul(key + 1, 0x9e3779b1) ^ plan.xattrKind[k]) * POS + k;
  }
  if (total < POS) sortKeys.sort();
  else sortKeys.sort((a, b) => a - b);
  const leader = new Int32Array(total).fill(-1);
  const count = new Int32Array(total);
  const shared: number[] = [];
  for (let start = 0; start < total; ) {
    const hash = Math.floor(sortKeys[start] / POS);
    let end = start + 1;
    while (end < total && Math.floor(sortKeys[end] / POS) === hash) end++;
    // Within one hash, sort out the distinct values (almost always exactly one).
    for (let i = start; i < end; i++) {
      const a = sortKeys[i] % POS;
      if (leader[a] >= 0) continue;
      leader[a] = a;
      let c = 1;
      for (let j = i + 1; j < end; j++) {
        const b = sortKeys[j] % POS;
        if (leader[b] < 0 && sameXattr(plan, a, b)) {
          leader[b] = a;
          c++;
        }
      }
      count[a] = c;
      if (c > 1) shared.push(a);
    }
    start = end;
  }
  // The reference's canonical order: name, then value length, then value, all descending.
  const names = plan.keys.name;
  const sortable = shared.map((k) => ({ k, name: names[plan.xattrKey[k]], value: valueBytes(plan.xattrKind[k], plan.xattrData[k]) }));
  sortable.sort((a, b) => {
    if (a.name !== b.name) return a.name < b.name ? 1 : -1;
    if (a.value.length !== b.value.length) return b.value.length - a.value.length;
    return compareBytes(b.value, a.value);
  });
  const list = sortable.map((e) => e.k);
  const leaderOffset = new Map<number, number>();
  let size = 0;
  for (const k of list) {
    leaderOffset.set(k, size);
    size += entrySize(plan, k);
  }
  const offset = new Int32Array(total).fill(-1);
  for (let i = 0; i < plan.count; i++) {
    let nShared = 0;
    for (let k = plan.xattrStart[i]; k < plan.xattrStart[i + 1]; k++) {
      const l = leader[k];
      if (count[l] > 1 && nShared < XATTR_LONG_PREFIX) {
        offset[k] = leaderOffset.get(l)!;
        nShared++;
      }
    }
  }
  return { list, size, offset };
}
