/**
 * (Over 600 lines on purpose: the two passes share one typed-array state,
 * Order, through which the inode numbers, the directory entries and the
 * xattrs are laid out in one walk; split apart, each piece would need that
 * state exported and its hot loops would lose the literals and the locals
 * they keep.)
 *
 * Passes 1 and 2: the tree in the image's breadth-first inode order, with what
 * the reference adds for overlayfs, in typed arrays indexed by inode number.
 *
 * - directory entries get `.` and `..`, the root gets the `00`..`ff` whiteouts;
 * - `trusted.overlay.*` xattrs are escaped to `trusted.overlay.overlay.*`;
 * - files whose data lives in the store get `metacopy` (with the fs-verity
 *   digest) and `redirect` (the backing path);
 * - whiteouts (character devices 0/0) become empty regular files marked
 *   `overlay.whiteout`, their directories `overlay.whiteouts` (and, from
 *   version 1, `overlay.opaque=x`); the root is `trusted.overlay.opaque=y`.
 *
 * A build runs mostly before V8 has optimised anything (a loop over 22,000
 * entries is often done before its optimised code is ready), so what a pass
 * costs is about the operations it does per entry: each typed-array read or
 * write, call or property load some nanoseconds, an object or a Buffer view
 * far more. So the passes are a few long loops over typed arrays doing as
 * little per entry as they can; the common case keeps to a small loop and the
 * rest goes out of line (a small function is also one V8 compiles sooner);
 * byte strings stay ranges of the tree's pool or of SYNTH.
 */
import type { FlatTree } from '../../tree/flat.js';
import { Key, KeyTable, xattrKeyIds } from './keys.js';
import { Mode } from './consts.js';
import { ImageWriteError } from './errors.js';

export { ImageWriteError };

/**
 * The bytes the writer makes up, referred to as `~offset` where a pool
 * offset would be: `.`, `..`, the values `x` and `y`, then the 256 root
 * whiteout names `00`..`ff`.
 */
export const SYNTH = new Uint8Array(5 + 512);
/** Where the made-up bytes sit in SYNTH (references to them are ~offset). */
const enum Synth {
  DOT = 0,
  DOTDOT = 1,
  X = 3,
  Y = 4,
  HEX_NAMES = 5,
}
SYNTH.set([0x2e, 0x2e, 0x2e, 0x78, 0x79]);
for (let v = 0; v < 256; v++) {
  const hex = '0123456789abcdef';
  SYNTH[Synth.HEX_NAMES + 2 * v] = hex.charCodeAt(v >> 4);
  SYNTH[Synth.HEX_NAMES + 2 * v + 1] = hex.charCodeAt(v & 15);
}

/** Inodes that do not simply take their entry's columns. */
export const enum Kind {
  PLAIN = 0,
  /** One of the root's made-up whiteouts: mode 020644, size 0, nlink 1, rdev 0; ids, times and SELinux label the root's. */
  STUB = 1,
  /** A whiteout of the tree: an empty regular file. */
  WHITEOUT = 2,
}

export interface Plan {
  flat: FlatTree;
  /** Number of inodes; inode 0 is the root. */
  count: number;
  /** The entry each inode takes its columns from (the root, for a stub). */
  entry: Int32Array;
  kind: Uint8Array;
  /** Mode as written. */
  mode: Uint32Array;
  /** Link count of each directory (2 and its subdirectories); others take their entry's. */
  dirNlink: Int32Array;
  /**
   * Directory entries of directory inode i: direntStart[i] .. direntEnd[i],
   * in image order with `.` and `..`; names as pool offsets (or ~SYNTH
   * offsets) and lengths, targets as inode numbers.
   */
  direntStart: Int32Array;
  direntEnd: Int32Array;
  direntName: Int32Array;
  direntLength: Uint8Array;
  direntTarget: Int32Array;
  /**
   * Xattrs of inode i: xattrStart[i] .. xattrStart[i + 1], sorted by name.
   * Each is a name id and the bytes its value is made of: the value itself,
   * or the digest (metacopy: empty, or 32 or 64 bytes) or the backing path
   * (redirect), as a pool offset (or ~SYNTH offset) and a length.
   */
  xattrStart: Int32Array;
  xattrKey: Int32Array;
  xattrFrom: Int32Array;
  xattrLength: Int32Array;
  keys: KeyTable;
  version: number;
  minSec: number;
  minNsec: number;
  hasAcl: boolean;
}

function latin1(pool: Uint8Array, start: number, end: number): string {
  return Buffer.from(pool.buffer, pool.byteOffset + start, end - start).toString('latin1');
}

function hexDigit(c: number): number {
  return c >= 0x30 && c <= 0x39 ? c - 0x30 : c >= 0x61 && c <= 0x66 ? c - 0x57 : -1;
}

/** -1, 0 or 1 as name a sorts before, with or after name b (strcmp; names hold no NUL). */
function compareNames(a: Uint8Array, as: number, al: number, b: Uint8Array, bs: number, bl: number): number {
  const n = al < bl ? al : bl;
  for (let i = 0; i < n; i++) if (a[as + i] !== b[bs + i]) return a[as + i] < b[bs + i] ? -1 : 1;
  return al === bl ? 0 : al < bl ? -1 : 1;
}

/**
 * The message for the first of entries [from, to) whose name holds `/` or
 * NUL, or null. Those bytes are checked as names are copied into the image;
 * this finds the culprit when that check fails, or before another error is
 * reported: the reference checks every name before anything else.
 */
export function badNameMessage(flat: FlatTree, from = 1, to = flat.count): string | null {
  const pool = flat.pool;
  for (let e = from; e < to; e++) {
    const s = flat.nameStart[e];
    const end = flat.nameEnd[e];
    // A range that is no name at all is reported by the entry scan.
    if (!(s >= 0 && end <= pool.length && end - s <= 255)) continue;
    for (let j = s; j < end; j++) if (pool[j] === 0x2f || pool[j] === 0) return `invalid file name '${latin1(pool, s, end)}'`;
  }
  return null;
}

/** Throw `message`, unless a name is bad: the reference reports that first. */
function fail(flat: FlatTree, message: string): never {
  throw new ImageWriteError(badNameMessage(flat) ?? message);
}

/**
 * What can be checked entry by entry, in entry order (for a flattened tree,
 * the order the reference meets them in): every name but the root's is one
 * an image can hold (not empty, not `.` or `..`, at most 255 bytes; NUL and
 * `/` are looked for as names are copied), every byte range lies in the
 * pool, inline content is as long as the file. Returns the oldest mtime of
 * any inode (every entry that is not a hard link is one; that all are in the
 * tree is checked by the walk).
 */
function scanEntries(flat: FlatTree): { minSec: number; minNsec: number } {
  const count = flat.count;
  const pool = flat.pool;
  const poolLength = pool.length;
  const nameStart = flat.nameStart;
  const nameEnd = flat.nameEnd;
  const linkTo = flat.linkTo;
  const mtimeSec = flat.mtimeSec;
  const mtimeNsec = flat.mtimeNsec;
  const payloadStart = flat.payloadStart;
  const payloadEnd = flat.payloadEnd;
  const contentStart = flat.contentStart;
  const contentEnd = flat.contentEnd;
  const digest = flat.digest;
  const childStart = flat.childStart;
  const digestSize = flat.digestSize ?? 32;
  if (digestSize !== 32 && digestSize !== 64) fail(flat, `digests of ${digestSize} bytes (SHA-256 digests are 32, SHA-512 digests 64)`);
  let minSec = mtimeSec[0];
  let minNsec = mtimeNsec[0];
  for (let e = 0; e < count; e++) {
    const s = nameStart[e];
    const l = nameEnd[e] - s;
    if (e > 0 && (l - 1 >>> 0 > 254 || s < 0 || s + l > poolLength || (pool[s] === 0x2e && (l === 1 || (l === 2 && pool[s + 1] === 0x2e))))) {
      const message = badNameMessage(flat, 1, e) ?? `invalid file name '${l > 0 && s >= 0 && s + l <= poolLength ? latin1(pool, s, s + l) : ''}'`;
      throw new ImageWriteError(message);
    }
    if (linkTo[e] >= 0) continue;
    if (childStart[e + 1] !== childStart[e] && (flat.mode[e] & Mode.TYPE) !== Mode.DIR) fail(flat, 'only directories can have children');
    const sec = mtimeSec[e];
    if (sec <= minSec && (sec < minSec || mtimeNsec[e] < minNsec)) {
      minSec = sec;
      minNsec = mtimeNsec[e];
    }
    const ps = payloadStart[e];
    if (ps >= 0 && !(payloadEnd[e] >= ps && payloadEnd[e] <= poolLength)) fail(flat, `the payload of entry ${e} lies outside the byte pool`);
    const cs = contentStart[e];
    if (cs >= 0) {
      const ce = contentEnd[e];
      if (!(ce >= cs && ce <= poolLength)) fail(flat, `the content of entry ${e} lies outside the byte pool`);
      if ((flat.mode[e] & Mode.TYPE) === Mode.REG && ce - cs < flat.size[e]) fail(flat, `inline content of ${ce - cs} bytes for a file of ${flat.size[e]}`);
    }
    if (digest[e] >= 0 && !(digest[e] + digestSize <= poolLength)) fail(flat, `the digest of entry ${e} lies outside the byte pool`);
  }
  return { minSec, minNsec };
}

/**
 * The root's entries in image order: its children (entries >= 0) and the
 * whiteouts `00`..`ff` it does not already have a name for (~value).
 */
function rootEntries(flat: FlatTree): Int32Array {
  const pool = flat.pool;
  const from = flat.childStart[0];
  const to = flat.childStart[1];
  if (!(from >= 0 && to >= from && to <= flat.children.length)) throw new ImageWriteError('the children of entry 0 lie outside the children column');
  const taken = new Uint8Array(256);
  let free = 256;
  let sorted = true;
  for (let k = from; k < to; k++) {
    const c = flat.children[k];
    if (!(c >= 0 && c < flat.count)) throw new ImageWriteError(`child entry ${c} out of range (${flat.count} entries)`);
    const s = flat.nameStart[c];
    const l = flat.nameEnd[c] - s;
    if (l === 2) {
      const v = (hexDigit(pool[s]) << 4) | hexDigit(pool[s + 1]);
      if (v >= 0 && taken[v] === 0) {
        taken[v] = 1;
        free--;
      }
    }
    if (k > from) {
      const p = flat.children[k - 1];
      const ps = flat.nameStart[p];
      if (compareNames(pool, ps, flat.nameEnd[p] - ps, pool, s, l) > 0) sorted = false;
    }
  }
  const out = new Int32Array(to - from + free);
  let n = 0;
  let v = 0;
  if (sorted) {
    for (let k = from; k < to; k++) {
      const c = flat.children[k];
      const s = flat.nameStart[c];
      const l = flat.nameEnd[c] - s;
      for (; v < 256; v++) {
        if (taken[v] === 1) continue;
        if (compareNames(SYNTH, Synth.HEX_NAMES + 2 * v, 2, pool, s, l) > 0) break;
        out[n++] = ~v;
      }
      out[n++] = c;
    }
  } else {
    // Children out of order: sort them with the whiteouts, as a whole (stable).
    const all: number[] = [];
    for (let k = from; k < to; k++) all.push(flat.children[k]);
    for (let w = 0; w < 256; w++) if (taken[w] === 0) all.push(~w);
    const nameOf = (x: number): [Uint8Array, number, number] =>
      x < 0 ? [SYNTH, Synth.HEX_NAMES + 2 * ~x, 2] : [pool, flat.nameStart[x], flat.nameEnd[x] - flat.nameStart[x]];
    all.sort((a, b) => {
      const [ab, as, al] = nameOf(a);
      const [bb, bs, bl] = nameOf(b);
      return compareNames(ab, as, al, bb, bs, bl);
    });
    for (const x of all) out[n++] = x;
    v = 256;
  }
  for (; v < 256; v++) if (taken[v] === 0) out[n++] = ~v;
  return out;
}

/** The breadth-first walk's state, and its result: the plan's inodes and entries so far. */
interface Order extends Pick<Plan, 'flat' | 'count' | 'entry' | 'kind' | 'mode' | 'dirNlink' | 'direntStart' | 'direntEnd' | 'direntName' | 'direntLength' | 'direntTarget'> {
  parent: Int32Array;
  whiteoutParent: Uint8Array;
  /** 1 + the inode number of each entry that is a primary name (hard links: 1 once named), else 0. */
  inodeOf: Int32Array;
  direntCount: number;
  links: number;
  hasWhiteout: boolean;
  /** Directory inodes in inode order, the walk's queue. */
  dirs: Int32Array;
  dirCount: number;
  /** While a directory is visited: how many of `.` and `..` are placed, and how many subdirectories it has. */
  dots: number;
  subdirs: number;
}

/**
 * The entries of directory inode i, list[k..end) (entries, or for the root
 * ~whiteout too), with `.` and `..` where they sort; each primary name gets
 * the next inode number. The loop takes the child nearly every one is (a
 * primary name, once `.` and `..` are placed) and leaves the rest to
 * visitChild: a small loop is one V8 optimises early.
 */
function visitDir(o: Order, i: number, list: Int32Array, k: number, end: number): void {
  // The columns as locals: the loop reads them for every entry.
  const { count, nameStart, nameEnd, linkTo, mode: fmode } = o.flat;
  const { entry, mode, parent, inodeOf, direntName, direntLength, direntTarget, dirs } = o;
  let n = o.count;
  let nd = o.direntCount;
  let dots = 0;
  let subdirs = 0;
  o.direntStart[i] = nd;
  for (; k < end; k++) {
    const c = list[k];
    if (dots === 2 && c >= 0 && c < count && inodeOf[c] === 0 && linkTo[c] < 0) {
      const m = fmode[c];
      const type = m & Mode.TYPE;
      // Character devices may be whiteouts: the long way.
      if (type !== Mode.CHR) {
        const s = nameStart[c];
        direntName[nd] = s;
        direntLength[nd] = nameEnd[c] - s;
        if (type === Mode.DIR) {
          subdirs++;
          parent[n] = i;
          dirs[o.dirCount++] = n;
        }
        entry[n] = c;
        mode[n] = m;
        inodeOf[c] = n + 1;
        direntTarget[nd++] = n++;
        continue;
      }
    }
    o.count = n;
    o.direntCount = nd;
    o.dots = dots;
    o.subdirs = subdirs;
    visitChild(o, i, c);
    n = o.count;
    nd = o.direntCount;
    dots = o.dots;
    subdirs = o.subdirs;
  }
  if (dots === 0) {
    direntName[nd] = ~Synth.DOT;
    direntLength[nd] = 1;
    direntTarget[nd++] = i;
  }
  if (dots < 2) {
    direntName[nd] = ~Synth.DOTDOT;
    direntLength[nd] = 2;
    direntTarget[nd++] = parent[i];
  }
  // `.`, `..` and hard links do not count; subdirectories do.
  o.dirNlink[i] = 2 + subdirs;
  o.direntEnd[i] = nd;
  o.count = n;
  o.direntCount = nd;
}

/** Child c of directory inode i, any child: `.` and `..` before it where they sort, a hard link, a whiteout. */
function visitChild(o: Order, i: number, c: number): void {
  const flat = o.flat;
  const { count, pool, linkTo, mode: fmode } = flat;
  const { entry, kind, mode, inodeOf, direntName, direntLength, direntTarget } = o;
  let nd = o.direntCount;
  let s: number;
  let l: number;
  if (c >= 0 && c < count) {
    s = flat.nameStart[c];
    l = flat.nameEnd[c] - s;
  } else if (c < 0 && i === 0) {
    s = ~(Synth.HEX_NAMES + 2 * ~c);
    l = 2;
  } else fail(flat, `child entry ${c} out of range (${count} entries)`);
  if (o.dots < 2) {
    // `.` and `..` go where they sort (names are never `.` or `..` themselves); a whiteout's hex digits sort after both.
    const b0 = c < 0 ? 0x30 : pool[s];
    const b1 = c >= 0 && l > 1 ? pool[s + 1] : -1;
    if (o.dots === 0 && (b0 > 0x2e || (b0 === 0x2e && l > 1))) {
      direntName[nd] = ~Synth.DOT;
      direntLength[nd] = 1;
      direntTarget[nd++] = i;
      o.dots = 1;
    }
    if (o.dots === 1 && (b0 > 0x2e || (b0 === 0x2e && (b1 > 0x2e || (b1 === 0x2e && l > 2))))) {
      direntName[nd] = ~Synth.DOTDOT;
      direntLength[nd] = 2;
      direntTarget[nd++] = o.parent[i];
      o.dots = 2;
    }
  }
  direntName[nd] = s;
  direntLength[nd] = l;
  const n = o.count;
  if (c < 0) {
    entry[n] = 0;
    kind[n] = Kind.STUB;
    mode[n] = Mode.CHR | 0o644;
    direntTarget[nd++] = n;
    o.count = n + 1;
    o.direntCount = nd;
    return;
  }
  if (inodeOf[c] !== 0) {
    if (linkTo[c] >= 0) fail(flat, 'a hard link entry appears twice in the tree');
    // A directory reachable twice would make the walk endless.
    if ((fmode[c] & Mode.TYPE) === Mode.DIR) fail(flat, `directory ${Buffer.from(pool.buffer, pool.byteOffset + s, l).toString()} appears twice in the tree`);
    fail(flat, 'an inode is reachable under two primary names');
  }
  if (linkTo[c] >= 0) {
    inodeOf[c] = 1;
    direntTarget[nd++] = ~c; // resolved once every primary name has its inode
    o.links++;
    o.direntCount = nd;
    return;
  }
  let m = fmode[c];
  const type = m & Mode.TYPE;
  if (type === Mode.DIR) {
    o.subdirs++;
    o.parent[n] = i;
    o.dirs[o.dirCount++] = n;
  } else if (type === Mode.CHR && flat.rdev[c] === 0) {
    kind[n] = Kind.WHITEOUT;
    m = Mode.REG | (m & ~Mode.TYPE);
    o.whiteoutParent[i] = 1;
    o.hasWhiteout = true;
  }
  entry[n] = c;
  mode[n] = m;
  inodeOf[c] = n + 1;
  direntTarget[nd++] = n;
  o.count = n + 1;
  o.direntCount = nd;
}

/** Breadth first: inode numbers, each directory's entries with `.` and `..` where they sort. */
function order(flat: FlatTree): Order {
  const count = flat.count;
  // Every entry is named at most once (checked), so these bounds hold.
  const maxInodes = count + 256;
  const maxDirents = 3 * count + 256;
  const o: Order = {
    flat,
    count: 1,
    entry: new Int32Array(maxInodes),
    kind: new Uint8Array(maxInodes),
    mode: new Uint32Array(maxInodes),
    dirNlink: new Int32Array(maxInodes),
    parent: new Int32Array(maxInodes),
    whiteoutParent: new Uint8Array(maxInodes),
    inodeOf: new Int32Array(count),
    direntCount: 0,
    direntStart: new Int32Array(maxInodes),
    direntEnd: new Int32Array(maxInodes),
    dirs: new Int32Array(maxInodes),
    dirCount: 1,
    direntName: new Int32Array(maxDirents),
    direntLength: new Uint8Array(maxDirents),
    direntTarget: new Int32Array(maxDirents),
    links: 0,
    hasWhiteout: false,
    dots: 0,
    subdirs: 0,
  };
  const { entry, dirs } = o;
  const childStart = flat.childStart;
  const children = flat.children;
  o.inodeOf[0] = 1;
  o.mode[0] = flat.mode[0];
  const rootList = rootEntries(flat);
  // Directories in inode order, as the walk finds them (dirs[0] is the root): breadth first.
  for (let k = 0; k < o.dirCount; k++) {
    const i = dirs[k];
    const e = entry[i];
    const from = childStart[e];
    const to = childStart[e + 1];
    if (!(from >= 0 && to >= from && to <= children.length)) fail(flat, `the children of entry ${e} lie outside the children column`);
    if (i === 0) visitDir(o, 0, rootList, 0, rootList.length);
    else visitDir(o, i, children, from, to);
  }
  const nd = o.direntCount;

  const linkTo = flat.linkTo;
  const inodeOf = o.inodeOf;
  // Every entry named once (checked as they were met): each is an inode or a hard link, but for the root's whiteouts.
  const named = o.count - (rootList.length - (childStart[1] - childStart[0])) + o.links;
  if (named !== count) fail(flat, `${count - named} entries are not in the tree`);
  if (o.links > 0) {
    const direntTarget = o.direntTarget;
    for (let d = 0; d < nd; d++) {
      if (direntTarget[d] >= 0) continue;
      const to = linkTo[~direntTarget[d]];
      if (!(to < count)) fail(flat, 'a hard link points outside the tree');
      if (linkTo[to] >= 0) fail(flat, 'a hard link points at another hard link');
      if ((flat.mode[to] & Mode.TYPE) === Mode.DIR) fail(flat, 'a hard link points at a directory');
      direntTarget[d] = inodeOf[to] - 1;
    }
  }
  return o;
}

interface Xattrs {
  xattrStart: Int32Array;
  xattrKey: Int32Array;
  xattrFrom: Int32Array;
  xattrLength: Int32Array;
  hasAcl: boolean;
}

/** Where planXattrs and its out-of-line helper put each inode's xattrs. */
interface XattrState {
  flat: FlatTree;
  o: Order;
  keyOf: Int32Array;
  rank: Int32Array;
  version: number;
  /** The root's first SELinux label (its whiteouts carry it), or -1. */
  selinux: number;
  xattrKey: Int32Array;
  xattrFrom: Int32Array;
  xattrLength: Int32Array;
  hasAcl: boolean;
}

/**
 * Each inode's xattrs: its own (escaped), then what the reference adds, sorted
 * by name. The loop handles the inode nearly every file is (no xattrs of its
 * own, nothing overlay adds but metacopy and redirect) and leaves the rest to
 * a function of its own: a small loop is one V8 optimises early.
 */
function planXattrs(flat: FlatTree, o: Order, keys: KeyTable, version: number): Xattrs {
  const n = o.count;
  const { entry, kind, whiteoutParent } = o;
  let keyOf: Int32Array;
  try {
    keyOf = xattrKeyIds(flat, keys);
  } catch (err) {
    if (err instanceof ImageWriteError) fail(flat, err.message);
    throw err;
  }
  keys.freeze();
  const fxStart = flat.xattrStart;
  // The root's whiteouts carry its SELinux label (its first, should it have two).
  let selinux = -1;
  for (let k = fxStart[0]; k < fxStart[1] && selinux < 0; k++) if (keyOf[k] === Key.SELINUX) selinux = k;
  // At most 5 xattrs per inode come on top of the tree's (a whiteouts directory's 4 and the root's opaque).
  const maxXattrs = fxStart[flat.count] + 5 * n + 1;
  const s: XattrState = {
    flat,
    o,
    keyOf,
    rank: keys.order,
    version,
    selinux,
    xattrKey: new Int32Array(maxXattrs),
    xattrFrom: new Int32Array(maxXattrs),
    xattrLength: new Int32Array(maxXattrs),
    hasAcl: false,
  };
  const { xattrKey, xattrFrom, xattrLength } = s;
  const xattrStart = new Int32Array(n + 1);
  const fmode = flat.mode;
  const fsize = flat.size;
  const payloadStart = flat.payloadStart;
  const payloadEnd = flat.payloadEnd;
  const contentStart = flat.contentStart;
  const digest = flat.digest;
  const digestSize = flat.digestSize ?? 32;
  let x = 0;
  for (let i = 0; i < n; i++) {
    xattrStart[i] = x;
    const e = entry[i];
    if (kind[i] !== Kind.PLAIN || fxStart[e + 1] !== fxStart[e] || whiteoutParent[i] !== 0 || i === 0) x = oddXattrs(s, i, x);
    else if ((fmode[e] & Mode.TYPE) === Mode.REG && contentStart[e] < 0 && fsize[e] > 0) {
      // metacopy, then redirect: already in name order.
      const d = digest[e];
      xattrKey[x] = Key.METACOPY;
      xattrFrom[x] = d;
      xattrLength[x++] = d >= 0 ? digestSize : 0;
      const ps = payloadStart[e];
      const pe = payloadEnd[e];
      if (ps >= 0 && pe > ps) {
        xattrKey[x] = Key.REDIRECT;
        xattrFrom[x] = ps;
        xattrLength[x++] = pe - ps;
      }
    }
  }
  xattrStart[n] = x;
  return { xattrStart, xattrKey, xattrFrom, xattrLength, hasAcl: s.hasAcl };
}

/** Inode i's xattrs from x on, for any inode: returns where they end. */
function oddXattrs(s: XattrState, i: number, x: number): number {
  const { flat, o, keyOf, rank, xattrKey, xattrFrom, xattrLength } = s;
  const start = x;
  const e = o.entry[i];
  const kind = o.kind[i];
  if (kind === Kind.STUB) {
    if (s.selinux >= 0) {
      xattrKey[x] = Key.SELINUX;
      xattrFrom[x] = flat.xattrValueStart[s.selinux];
      xattrLength[x++] = flat.xattrValueEnd[s.selinux] - flat.xattrValueStart[s.selinux];
    }
    return x;
  }
  const fxStart = flat.xattrStart;
  const from = fxStart[e];
  const to = fxStart[e + 1];
  if (to !== from) {
    if (!(from >= 0 && to >= from && to <= fxStart[flat.count])) fail(flat, `the xattrs of entry ${e} lie outside the xattr columns`);
    for (let k = from; k < to; k++) {
      const key = keyOf[k];
      if (key === Key.ACL_ACCESS || key === Key.ACL_DEFAULT) s.hasAcl = true;
      xattrKey[x] = key;
      xattrFrom[x] = flat.xattrValueStart[k];
      xattrLength[x++] = flat.xattrValueEnd[k] - flat.xattrValueStart[k];
    }
  }
  if ((flat.mode[e] & Mode.TYPE) === Mode.REG && flat.contentStart[e] < 0 && flat.size[e] > 0) {
    const digest = flat.digest[e];
    xattrKey[x] = Key.METACOPY;
    xattrFrom[x] = digest;
    xattrLength[x++] = digest >= 0 ? (flat.digestSize ?? 32) : 0;
    const ps = flat.payloadStart[e];
    if (ps >= 0 && flat.payloadEnd[e] > ps) {
      xattrKey[x] = Key.REDIRECT;
      xattrFrom[x] = ps;
      xattrLength[x++] = flat.payloadEnd[e] - ps;
    }
  }
  if (kind === Kind.WHITEOUT) {
    xattrKey[x] = Key.ESC_WHITEOUT;
    xattrLength[x++] = 0;
    xattrKey[x] = Key.USER_WHITEOUT;
    xattrLength[x++] = 0;
  }
  if (o.whiteoutParent[i] === 1) {
    xattrKey[x] = Key.ESC_WHITEOUTS;
    xattrLength[x++] = 0;
    xattrKey[x] = Key.USER_WHITEOUTS;
    xattrLength[x++] = 0;
    if (s.version >= 1) {
      xattrKey[x] = Key.ESC_OPAQUE;
      xattrFrom[x] = ~Synth.X;
      xattrLength[x++] = 1;
      xattrKey[x] = Key.USER_OPAQUE;
      xattrFrom[x] = ~Synth.X;
      xattrLength[x++] = 1;
    }
  }
  if (i === 0) {
    xattrKey[x] = Key.OPAQUE;
    xattrFrom[x] = ~Synth.Y;
    xattrLength[x++] = 1;
  }
  // By name, a few per inode: a stable insertion sort, then the last value set for a name wins.
  for (let a = start + 1; a < x; a++) {
    const key = xattrKey[a];
    const f = xattrFrom[a];
    const l = xattrLength[a];
    const r = rank[key];
    let b = a - 1;
    while (b >= start && rank[xattrKey[b]] > r) {
      xattrKey[b + 1] = xattrKey[b];
      xattrFrom[b + 1] = xattrFrom[b];
      xattrLength[b + 1] = xattrLength[b];
      b--;
    }
    xattrKey[b + 1] = key;
    xattrFrom[b + 1] = f;
    xattrLength[b + 1] = l;
  }
  let w = start;
  for (let a = start; a < x; a++) {
    const key = xattrKey[a];
    if (a + 1 < x && xattrKey[a + 1] === key) continue;
    xattrKey[w] = key;
    xattrFrom[w] = xattrFrom[a];
    xattrLength[w++] = xattrLength[a];
  }
  return w;
}

/** Every column is as long as the entry count says, so no index read later falls off one. */
function checkColumns(flat: FlatTree): void {
  const n = flat.count;
  if (!(Number.isInteger(n) && n >= 1)) throw new ImageWriteError(`a tree of ${n} entries (the root is one)`);
  const perEntry = [
    flat.nameStart,
    flat.nameEnd,
    flat.linkTo,
    flat.mode,
    flat.nlink,
    flat.uid,
    flat.gid,
    flat.rdev,
    flat.size,
    flat.mtimeSec,
    flat.mtimeNsec,
    flat.payloadStart,
    flat.payloadEnd,
    flat.contentStart,
    flat.contentEnd,
    flat.digest,
  ];
  let short = perEntry.some((column) => column.length < n) || flat.childStart.length < n + 1 || flat.xattrStart.length < n + 1;
  const xattrs = flat.xattrStart[n];
  const perXattr = [flat.xattrKeyStart, flat.xattrKeyEnd, flat.xattrValueStart, flat.xattrValueEnd];
  short ||= !(xattrs >= 0) || perXattr.some((column) => column.length < xattrs);
  if (short) throw new ImageWriteError(`a column of the flat tree is shorter than its ${n} entries (or their xattrs) need`);
}

export function planTree(flat: FlatTree, minVersion: number, maxVersion: number): Plan {
  checkColumns(flat);
  if ((flat.mode[0] & Mode.TYPE) !== Mode.DIR) throw new ImageWriteError('the root of an image must be a directory');
  if (flat.linkTo[0] >= 0) throw new ImageWriteError('the root of an image cannot be a hard link');
  const { minSec, minNsec } = scanEntries(flat);
  const o = order(flat);
  // The reference upgrades to version 1 (xwhiteout marking) when the tree holds a whiteout.
  const version = minVersion < 1 && maxVersion >= 1 && o.hasWhiteout ? 1 : minVersion;
  const keys = KeyTable.create();
  const xattrs = planXattrs(flat, o, keys, version);
  return {
    flat,
    count: o.count,
    entry: o.entry,
    kind: o.kind,
    mode: o.mode,
    dirNlink: o.dirNlink,
    direntStart: o.direntStart,
    direntEnd: o.direntEnd,
    direntName: o.direntName,
    direntLength: o.direntLength,
    direntTarget: o.direntTarget,
    xattrStart: xattrs.xattrStart,
    xattrKey: xattrs.xattrKey,
    xattrFrom: xattrs.xattrFrom,
    xattrLength: xattrs.xattrLength,
    keys,
    version,
    minSec,
    minNsec,
    hasAcl: xattrs.hasAcl,
  };
}
