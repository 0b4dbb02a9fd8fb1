/**
 * Passes 1 and 2: the tree in the image's breadth-first inode order, with what
 * the reference adds for overlayfs, held in flat arrays indexed by inode number
 * rather than in an object per inode (a build runs mostly before V8 has
 * optimised it, and objects are what cost most then).
 *
 * - directory entries get `.` and `..`, the root gets the `00`..`ff` whiteouts;
 * - `trusted.overlay.*` xattrs are escaped to `trusted.overlay.overlay.*`;
 * - files whose data lives in the store get `metacopy` (with the fs-verity
 *   digest) and `redirect` (the backing path);
 * - whiteouts (character devices 0/0) become empty regular files marked
 *   `overlay.whiteout`, their directories `overlay.whiteouts` (and, from
 *   version 1, `overlay.opaque=x`); the root is `trusted.overlay.opaque=y`.
 */
import { S_IFCHR, S_IFDIR, S_IFMT, S_IFREG, newInode, type Inode } from '../../tree/model.js';
import { compareBytes } from './bytes.js';
import { KeyTable } from './keys.js';

import { ImageWriteError } from './errors.js';

export { ImageWriteError };

/** How an xattr's value is held: as bytes, or derived from the file's digest or backing path. */
export const enum ValueKind {
  Bytes,
  /** `trusted.overlay.metacopy`: a 4-byte header and the fs-verity digest (or empty without one). */
  Metacopy,
  /** `trusted.overlay.redirect`: `/` followed by the backing path. */
  Redirect,
}

export interface Plan {
  /** Inodes in image order; `inodes[0]` is the root. */
  inodes: Inode[];
  count: number;
  /** Mode and size as written (whiteouts become empty regular files). */
  mode: Int32Array;
  size: Float64Array;
  nlink: Float64Array;
  /** Entry names and target inode numbers of each directory, sorted, with `.` and `..`. */
  entryNames: Array<Buffer[] | null>;
  entryTargets: Array<Int32Array | null>;
  /** Each inode's xattrs: xattrStart[i] .. xattrStart[i+1] in the flat arrays, sorted by name. */
  xattrStart: Int32Array;
  xattrKey: number[];
  xattrKind: ValueKind[];
  /** The value (Bytes), the digest (Metacopy) or the backing path (Redirect). */
  xattrData: Array<Buffer | null>;
  keys: KeyTable;
  version: number;
  minSec: number;
  minNsec: number;
  hasAcl: boolean;
}

const latin1 = (s: string) => Buffer.from(s, 'latin1');
const EMPTY = Buffer.alloc(0);
const X = latin1('x');
const Y = latin1('y');
const DOT = latin1('.');
const DOTDOT = latin1('..');
const HEX = '0123456789abcdef';
const OVERLAY_PREFIX = 'trusted.overlay.';
const ESCAPE_PREFIX = 'trusted.overlay.overlay.';

function isWhiteoutInode(inode: Inode): boolean {
  return (inode.mode & S_IFMT) === S_IFCHR && inode.rdev === 0;
}

/** A directory entry name the image can hold: not empty, not `.`/`..`, no `/` or NUL, at most 255 bytes. */
function checkName(name: Buffer): void {
  const n = name.length;
  let bad = n === 0 || n > 255 || (name[0] === 0x2e && (n === 1 || (n === 2 && name[1] === 0x2e)));
  for (let i = 0; i < n && !bad; i++) bad = name[i] === 0x2f || name[i] === 0;
  if (bad) throw new ImageWriteError(`invalid file name '${name.toString('latin1')}'`);
}

/** The 256 whiteouts overlayfs wants in the root, less the names the root already has. */
function rootWhiteouts(root: Inode): Array<[Buffer, Inode]> {
  const selinux = root.xattrs.find((x) => x.key.length === 16 && x.key.toString('latin1') === 'security.selinux');
  const taken = new Set(root.children!.map((d) => d.name.toString('latin1')));
  const out: Array<[Buffer, Inode]> = [];
  for (let i = 0; i < 256; i++) {
    const name = HEX[i >> 4] + HEX[i & 15];
    if (taken.has(name)) continue;
    const stub = newInode(S_IFCHR | 0o644, { uid: root.uid, gid: root.gid, mtimeSec: root.mtimeSec, mtimeNsec: root.mtimeNsec });
    if (selinux) stub.xattrs.push({ key: selinux.key, value: selinux.value });
    out.push([latin1(name), stub]);
  }
  return out;
}

/** Breadth-first order, directory entries and whiteout bookkeeping. */
function order(root: Inode) {
  const inodes: Inode[] = [root];
  const parentOf: number[] = [0];
  const entryNames: Array<Buffer[] | null> = [];
  const entryTargets: Array<Int32Array | null> = [];
  const linkTargets: Inode[] = [];
  let whiteoutParents: Set<number> | null = null;
  const stubs = new Set<Inode>();
  const dirs = new Set<Inode>([root]);
  for (let i = 0; i < inodes.length; i++) {
    const dir = inodes[i];
    const children = dir.children;
    if (!children) {
      entryNames.push(null);
      entryTargets.push(null);
      continue;
    }
    if ((dir.mode & S_IFMT) !== S_IFDIR) throw new ImageWriteError('only directories can have children');
    let list: Array<{ name: Buffer; inode: Inode; hardlink: boolean }> = children;
    if (i === 0) {
      // The root's whiteouts sort in among its entries.
      const extra = rootWhiteouts(root).map(([name, inode]) => ({ name, inode, hardlink: false }));
      for (const e of extra) stubs.add(e.inode);
      list = [...children, ...extra].sort((a, b) => compareBytes(a.name, b.name));
    }
    const names: Buffer[] = [];
    const targets: number[] = [];
    let dot = false;
    let dotdot = false;
    for (let j = 0; j < list.length; j++) {
      const d = list[j];
      checkName(d.name);
      if (!dot && compareBytes(DOT, d.name) < 0) {
        names.push(DOT);
        targets.push(i);
        dot = true;
      }
      if (!dotdot && compareBytes(DOTDOT, d.name) < 0) {
        names.push(DOTDOT);
        targets.push(parentOf[i]);
        dotdot = true;
      }
      names.push(d.name);
      if (d.hardlink) {
        targets.push(-1 - linkTargets.length);
        linkTargets.push(d.inode);
        continue;
      }
      if (d.inode.children) {
        // A directory reachable twice would make the walk endless.
        if (dirs.has(d.inode)) throw new ImageWriteError(`directory ${d.name.toString()} appears twice in the tree`);
        dirs.add(d.inode);
      }
      const index = inodes.length;
      inodes.push(d.inode);
      parentOf.push(i);
      targets.push(index);
      if (isWhiteoutInode(d.inode) && !stubs.has(d.inode)) (whiteoutParents ??= new Set()).add(i);
    }
    if (!dot) {
      names.push(DOT);
      targets.push(i);
    }
    if (!dotdot) {
      names.push(DOTDOT);
      targets.push(parentOf[i]);
    }
    entryNames.push(names);
    entryTargets.push(Int32Array.from(targets));
  }
  if (linkTargets.length > 0) {
    const indexOf = new Map<Inode, number>();
    for (let i = 0; i < inodes.length; i++) indexOf.set(inodes[i], i);
    if (indexOf.size !== inodes.length) throw new ImageWriteError('an inode is reachable under two primary names');
    for (const targets of entryTargets) {
      if (!targets) continue;
      for (let k = 0; k < targets.length; k++) {
        if (targets[k] >= 0) continue;
        const target = linkTargets[-1 - targets[k]];
        const index = indexOf.get(target);
        if (index === undefined) throw new ImageWriteError('a hard link points outside the tree');
        if ((target.mode & S_IFMT) === S_IFDIR) throw new ImageWriteError('a hard link points at a directory');
        targets[k] = index;
      }
    }
  }
  return { inodes, entryNames, entryTargets, whiteoutParents, stubs };
}

/** The reference upgrades to version 1 (xwhiteout marking) when the tree holds a whiteout. */
function chooseVersion(hasWhiteout: boolean, min: number, max: number): number {
  return min < 1 && max >= 1 && hasWhiteout ? 1 : min;
}

export function planTree(root: Inode, minVersion: number, maxVersion: number): Plan {
  if ((root.mode & S_IFMT) !== S_IFDIR) throw new ImageWriteError('the root of an image must be a directory');
  const { inodes, entryNames, entryTargets, whiteoutParents, stubs } = order(root);
  const count = inodes.length;
  const version = chooseVersion(whiteoutParents !== null || isWhiteoutInode(root), minVersion, maxVersion);

  const keys = new KeyTable();
  const K = {
    metacopy: keys.id('trusted.overlay.metacopy'),
    redirect: keys.id('trusted.overlay.redirect'),
    opaque: keys.id('trusted.overlay.opaque'),
    escWhiteout: keys.id('trusted.overlay.overlay.whiteout'),
    escWhiteouts: keys.id('trusted.overlay.overlay.whiteouts'),
    escOpaque: keys.id('trusted.overlay.overlay.opaque'),
    userWhiteout: keys.id('user.overlay.whiteout'),
    userWhiteouts: keys.id('user.overlay.whiteouts'),
    userOpaque: keys.id('user.overlay.opaque'),
    aclAccess: keys.id('system.posix_acl_access'),
    aclDefault: keys.id('system.posix_acl_default'),
  };

  const mode = new Int32Array(count);
  const size = new Float64Array(count);
  const nlink = new Float64Array(count);
  const xattrStart = new Int32Array(count + 1);
  const xattrKey: number[] = [];
  const xattrKind: ValueKind[] = [];
  const xattrData: Array<Buffer | null> = [];
  let minSec = root.mtimeSec;
  let minNsec = root.mtimeNsec;
  let hasAcl = false;

  let start = 0;
  /** Set an xattr on the inode being built, replacing one of the same name. */
  const set = (key: number, kind: ValueKind, data: Buffer | null) => {
    for (let k = start; k < xattrKey.length; k++) {
      if (xattrKey[k] === key) {
        xattrKind[k] = kind;
        xattrData[k] = data;
        return;
      }
    }
    xattrKey.push(key);
    xattrKind.push(kind);
    xattrData.push(data);
  };

  for (let i = 0; i < count; i++) {
    const inode = inodes[i];
    start = xattrKey.length;
    xattrStart[i] = start;
    const stub = stubs.has(inode);
    const whiteout = !stub && isWhiteoutInode(inode);
    const type = inode.mode & S_IFMT;
    mode[i] = whiteout ? S_IFREG | (inode.mode & ~S_IFMT) : inode.mode;
    size[i] = whiteout ? 0 : inode.size;
    const targets = entryTargets[i];
    if (targets) {
      let links = 2;
      const names = entryNames[i]!;
      for (let k = 0; k < targets.length; k++) {
        const t = targets[k];
        // `.`, `..` and hard links do not count; subdirectories do.
        if (t > i && (inodes[t].mode & S_IFMT) === S_IFDIR && names[k] !== DOT && names[k] !== DOTDOT) links++;
      }
      nlink[i] = links;
    } else nlink[i] = inode.nlink;
    if (inode.mtimeSec < minSec || (inode.mtimeSec === minSec && inode.mtimeNsec < minNsec)) {
      minSec = inode.mtimeSec;
      minNsec = inode.mtimeNsec;
    }

    const xs = inode.xattrs;
    for (let k = 0; k < xs.length; k++) {
      let name = keys.nameOf(xs[k].key);
      if (name.startsWith(OVERLAY_PREFIX)) name = ESCAPE_PREFIX + name.slice(OVERLAY_PREFIX.length);
      set(keys.id(name), ValueKind.Bytes, xs[k].value);
    }
    if (!stub) {
      if (type === S_IFREG && inode.size > 0 && inode.content === null) {
        set(K.metacopy, ValueKind.Metacopy, inode.digest);
        if (inode.payload && inode.payload.length > 0) set(K.redirect, ValueKind.Redirect, inode.payload);
      }
      if (whiteout) {
        set(K.escWhiteout, ValueKind.Bytes, EMPTY);
        set(K.userWhiteout, ValueKind.Bytes, EMPTY);
      }
      if (whiteoutParents?.has(i)) {
        set(K.escWhiteouts, ValueKind.Bytes, EMPTY);
        set(K.userWhiteouts, ValueKind.Bytes, EMPTY);
        if (version >= 1) {
          set(K.escOpaque, ValueKind.Bytes, X);
          set(K.userOpaque, ValueKind.Bytes, X);
        }
      }
      if (i === 0) set(K.opaque, ValueKind.Bytes, Y);
    }
    // Names in byte order: a few per inode, so insertion sort.
    for (let a = start + 1; a < xattrKey.length; a++) {
      const key = xattrKey[a];
      const kind = xattrKind[a];
      const data = xattrData[a];
      const name = keys.name[key];
      let b = a - 1;
      while (b >= start && keys.name[xattrKey[b]] > name) {
        xattrKey[b + 1] = xattrKey[b];
        xattrKind[b + 1] = xattrKind[b];
        xattrData[b + 1] = xattrData[b];
        b--;
      }
      xattrKey[b + 1] = key;
      xattrKind[b + 1] = kind;
      xattrData[b + 1] = data;
    }
    for (let k = start; k < xattrKey.length && !hasAcl; k++) hasAcl = xattrKey[k] === K.aclAccess || xattrKey[k] === K.aclDefault;
  }
  xattrStart[count] = xattrKey.length;
  return { inodes, count, mode, size, nlink, entryNames, entryTargets, xattrStart, xattrKey, xattrKind, xattrData, keys, version, minSec, minNsec, hasAcl };
}
