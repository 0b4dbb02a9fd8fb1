/** The shared xattr area: every (name, value) pair used by more than one inode, stored once. */
import { Key } from './keys.js';
import { Erofs } from './consts.js';
import { SYNTH, type Plan } from './plan.js';
import { copyBytes, type Words } from './bytes.js';

/**
 * Length of a value as stored, from the length of the bytes it is made of:
 * metacopy is a 4-byte header and the digest (or nothing without one),
 * redirect `/` and the backing path.
 */
export function valueLength(key: number, length: number): number {
  return key > Key.REDIRECT ? length : key === Key.REDIRECT ? length + 1 : length > 0 ? 4 + length : 0;
}

export interface Shared {
  /** Per xattr: the first xattr of its (name, value) pair. */
  leader: Int32Array;
  /** Per pair leader: how many xattrs hold the pair. */
  users: Int32Array;
  /** Per pair leader used more than once: its offset in the shared area. */
  areaOffset: Int32Array;
  /** Leaders of the shared pairs, in the order of the shared area. */
  list: Int32Array;
  size: number;
}

/**
 * Which xattrs hold the same (name, value) pair. Within one name the bytes a
 * value is made of decide it, so a pair is (name id, those bytes). Typical
 * trees have one pair on nearly every file (the empty metacopy: found by
 * name alone) and one pair per file (the redirect: an open-addressing hash
 * table of typed arrays, keyed by the length and three 4-byte words from the
 * start, middle and end, read natively; equal keys are compared in full).
 */
export function computeShared(plan: Plan): Shared {
  const total = plan.xattrStart[plan.count];
  const keyOf = plan.xattrKey;
  const fromOf = plan.xattrFrom;
  const lengthOf = plan.xattrLength;
  const pool = plan.flat.pool;
  const words = new DataView(pool.buffer, pool.byteOffset, pool.length);
  const bytes = Buffer.from(pool.buffer, pool.byteOffset, pool.length);
  let size = 16;
  while (size < 2 * total) size *= 2;
  const mask = size - 1;
  // Slot: 1 + the leader of a pair, 0 when free.
  const table = new Int32Array(size);
  const emptyLeader = new Int32Array(plan.keys.name.length).fill(-1);
  const leader = new Int32Array(total);
  const users = new Int32Array(total);
  const hashOf = new Int32Array(total);
  /** Leaders of the pairs used more than once, as they are found. */
  const found = new Int32Array(total);
  let nShared = 0;
  for (let x = 0; x < total; x++) {
    const length = lengthOf[x];
    let l: number;
    if (length === 0) {
      const key = keyOf[x];
      l = emptyLeader[key];
      if (l < 0) l = emptyLeader[key] = x;
    } else {
      const key = keyOf[x];
      const from = fromOf[x];
      let h = (key << 16) ^ length;
      if (length >= 4 && from >= 0) {
        const end = from + length - 4;
        h = (h * 31 + words.getInt32(from, true)) | 0;
        h = (h * 31 + words.getInt32((from + end) >> 1, true)) | 0;
        h = (h * 31 + words.getInt32(end, true)) | 0;
      } else {
        const src = from >= 0 ? pool : SYNTH;
        const at = from >= 0 ? from : ~from;
        for (let i = 0; i < length; i++) h = (h * 31 + src[at + i]) | 0;
      }
      hashOf[x] = h;
      let slot = (h ^ (h >>> 13) ^ (h >>> 23)) & mask;
      for (;;) {
        l = table[slot] - 1;
        if (l < 0) {
          table[slot] = x + 1;
          l = x;
          break;
        }
        // Same hash, name and length: nearly always the same value; the bytes say.
        if (hashOf[l] === h && keyOf[l] === key && lengthOf[l] === length) {
          const lf = fromOf[l];
          if (lf === from || (lf >= 0 && from >= 0 ? bytes.compare(bytes, lf, lf + length, from, from + length) === 0 : sameValue(pool, lf, from, length))) break;
        }
        slot = (slot + 1) & mask;
      }
    }
    leader[x] = l;
    if (++users[l] === 2) found[nShared++] = l;
  }

  const list = found.subarray(0, nShared);
  if (nShared > 1) sortShared(plan, list);
  const areaOffset = new Int32Array(total);
  let areaSize = 0;
  for (let k = 0; k < nShared; k++) {
    areaOffset[list[k]] = areaSize;
    areaSize += entrySize(plan, list[k]);
  }
  return { leader, users, areaOffset, list, size: areaSize };
}

/** Whether the bytes at a and b (pool offsets, or ~SYNTH offsets) are the same. */
function sameValue(pool: Uint8Array, a: number, b: number, length: number): boolean {
  const sa = a >= 0 ? pool : SYNTH;
  const sb = b >= 0 ? pool : SYNTH;
  if (a < 0) a = ~a;
  if (b < 0) b = ~b;
  for (let i = 0; i < length; i++) if (sa[a + i] !== sb[b + i]) return false;
  return true;
}

/** Size of xattr x's entry: header, name suffix, value, padded to 4. */
function entrySize(plan: Plan, x: number): number {
  const key = plan.xattrKey[x];
  return (Erofs.XATTR_ENTRY_SIZE + 3 + plan.keys.suffixLength[key] + valueLength(key, plan.xattrLength[x])) & ~3;
}

/**
 * The reference's canonical order: name, then value length, then value, all
 * descending. Within one name, values of one length differ only in the bytes
 * they are made of, so each pair becomes a string (name rank, length, bytes,
 * then its index) for the engine to sort natively, then read in reverse.
 */
function sortShared(plan: Plan, list: Int32Array): void {
  const pool = plan.flat.pool;
  const bytes = Buffer.from(pool.buffer, pool.byteOffset, pool.length);
  const synth = Buffer.from(SYNTH.buffer, SYNTH.byteOffset, SYNTH.length);
  const rank = plan.keys.order;
  const { xattrKey, xattrFrom, xattrLength } = plan;
  const keys: string[] = new Array(list.length);
  for (let k = 0; k < list.length; k++) {
    const x = list[k];
    const from = xattrFrom[x];
    const length = xattrLength[x];
    const r = rank[xattrKey[x]];
    const value = from >= 0 ? bytes.toString('latin1', from, from + length) : synth.toString('latin1', ~from, ~from + length);
    keys[k] = String.fromCharCode(r >>> 16, r & 0xffff, length >>> 16, length & 0xffff) + value + String.fromCharCode(x >>> 16, x & 0xffff);
  }
  keys.sort();
  for (let k = 0; k < list.length; k++) {
    const key = keys[list.length - 1 - k];
    list[k] = key.charCodeAt(key.length - 2) * 0x10000 + key.charCodeAt(key.length - 1);
  }
}

/** Xattr x as an entry at pos (4-aligned): header, name suffix, value; returns its end, padded to 4. */
export function writeXattr(out: Words, pos: number, plan: Plan, x: number): number {
  const b = out.b;
  const u32 = out.u32;
  const keys = plan.keys;
  const key = plan.xattrKey[x];
  const length = plan.xattrLength[x];
  const from = plan.xattrFrom[x];
  const sl = keys.suffixLength[key];
  const vl = valueLength(key, length);
  const w = pos >> 2;
  u32[w] = (sl & 0xff) | (keys.prefixIndex[key] << 8) | (vl << 16);
  // The suffix a word at a time; the zeros padding its last word are the value's to overwrite.
  const suffix = keys.suffixWords;
  const ss = keys.suffixStart[key];
  for (let i = 0; i < (sl + 3) >> 2; i++) u32[w + 1 + i] = suffix[ss + i];
  let v = pos + Erofs.XATTR_ENTRY_SIZE + sl;
  if (key === Key.METACOPY) {
    if (length === 0) return (v + 3) & ~3;
    b[v] = 0; // version
    b[v + 1] = vl;
    b[v + 2] = 0; // flags
    b[v + 3] = length === 64 ? Erofs.FS_VERITY_SHA512 : Erofs.FS_VERITY_SHA256;
    v += 4;
  } else if (key === Key.REDIRECT) b[v++] = 0x2f; // '/'
  if (from >= 0) copyBytes(b, v, plan.flat.pool, from, length);
  else copyBytes(b, v, SYNTH, ~from, length);
  v += length;
  return (v + 3) & ~3;
}
