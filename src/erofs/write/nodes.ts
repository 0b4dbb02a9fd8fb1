/** The writer's private copy of the tree: nodes, entries and xattrs whose values may be derived. */
import { FS_VERITY_HASH_ALG_SHA256 } from '../format.js';
import { S_IFCHR, S_IFDIR, S_IFMT, type Inode } from '../../tree/model.js';
import { type KeyInfo } from './xattrs.js';
import { copyBytes, compareBytes } from './bytes.js';


export class ImageWriteError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ImageWriteError';
  }
}

/** How an xattr's value is held: as bytes, or derived from the file's digest or backing path. */
export const enum ValueKind {
  Bytes,
  /** `trusted.overlay.metacopy`: a 4-byte header and the fs-verity digest (or empty without one). */
  Metacopy,
  /** `trusted.overlay.redirect`: `/` followed by the backing path. */
  Redirect,
}

export interface WXattr {
  /** The name as a latin1 string: one char per byte, so string order is byte order. */
  key: string;
  kind: ValueKind;
  /** The value (Bytes), the digest (Metacopy) or the backing path (Redirect). */
  data: Buffer | null;
  /** Offset in the shared xattr area, or -1 when stored inline. */
  sharedOffset: number;
  /** Prefix index, stored suffix and filter bit of the name (set once the names are final). */
  info?: KeyInfo;
}

export interface WEntry {
  name: Buffer;
  node: WNode;
  /** `.`, `..` and secondary hard-link names: not inodes of their own. */
  isLink: boolean;
}

export interface WNode {
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: number;
  size: number;
  mtimeSec: number;
  mtimeNsec: number;
  payload: Buffer | null;
  content: Buffer | null;
  digest: Buffer | null;
  xattrs: WXattr[];
  children: WEntry[] | null;
  parent: WNode | null;
  // Layout results.
  ino: number;
  nid: number;
  nBlocks: number;
  tailSize: number;
  compact: boolean;
  pad: number;
  xattrSize: number;
}

export const utf8 = (s: string) => Buffer.from(s, 'utf8');

export const EMPTY = Buffer.alloc(0);

export const K = {
  metacopy: 'trusted.overlay.metacopy',
  redirect: 'trusted.overlay.redirect',
  opaque: 'trusted.overlay.opaque',
  overlayPrefix: 'trusted.overlay.',
  escapePrefix: 'trusted.overlay.overlay.',
  escWhiteout: 'trusted.overlay.overlay.whiteout',
  escWhiteouts: 'trusted.overlay.overlay.whiteouts',
  escOpaque: 'trusted.overlay.overlay.opaque',
  userWhiteout: 'user.overlay.whiteout',
  userWhiteouts: 'user.overlay.whiteouts',
  userOpaque: 'user.overlay.opaque',
  selinux: 'security.selinux',
  aclAccess: 'system.posix_acl_access',
  aclDefault: 'system.posix_acl_default',
};

export const X = utf8('x');

export const Y = utf8('y');

export const DOT = utf8('.');

export const DOTDOT = utf8('..');

export function setXattr(node: WNode, key: string, kind: ValueKind, data: Buffer | null): void {
  const list = node.xattrs;
  for (let i = 0; i < list.length; i++) {
    if (list[i].key === key) {
      list[i].kind = kind;
      list[i].data = data;
      return;
    }
  }
  list.push({ key, kind, data, sharedOffset: -1 });
}

export function valueLength(x: WXattr): number {
  if (x.kind === ValueKind.Bytes) return x.data!.length;
  if (x.kind === ValueKind.Metacopy) return x.data ? 4 + 32 : 0;
  return 1 + x.data!.length;
}

export function writeValue(b: Buffer, pos: number, x: WXattr): void {
  if (x.kind === ValueKind.Bytes) b.set(x.data!, pos);
  else if (x.kind === ValueKind.Metacopy) {
    if (!x.data) return;
    b[pos] = 0; // version
    b[pos + 1] = 4 + 32; // length
    b[pos + 2] = 0; // flags
    b[pos + 3] = FS_VERITY_HASH_ALG_SHA256;
    copyBytes(b, pos + 4, x.data, 0, 32);
  } else {
    b[pos] = 0x2f; // '/'
    b.set(x.data!, pos + 1);
  }
}

export function valueBytes(x: WXattr): Buffer {
  if (x.kind === ValueKind.Bytes) return x.data!;
  const b = Buffer.alloc(valueLength(x));
  writeValue(b, 0, x);
  return b;
}

export function sameValue(a: WXattr, b: WXattr): boolean {
  if (a.kind !== b.kind) return valueBytes(a).equals(valueBytes(b));
  if (a.data === b.data) return true;
  if (!a.data || !b.data) return false;
  return a.data.equals(b.data);
}


export function insertSorted(entries: WEntry[], entry: WEntry): void {
  let lo = 0;
  let hi = entries.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (compareBytes(entries[mid].name, entry.name) < 0) lo = mid + 1;
    else hi = mid;
  }
  entries.splice(lo, 0, entry);
}

/** A directory entry name the image can hold: not empty, not `.`/`..`, no `/` or NUL, at most 255 bytes. */
export function checkName(name: Buffer): void {
  const n = name.length;
  let bad = n === 0 || n > 255 || (name[0] === 0x2e && (n === 1 || (n === 2 && name[1] === 0x2e)));
  for (let i = 0; i < n && !bad; i++) bad = name[i] === 0x2f || name[i] === 0;
  if (bad) throw new ImageWriteError(`invalid file name '${name.toString('latin1')}'`);
}

export function newWNode(mode: number, parent: WNode | null): WNode {
  return {
    mode,
    nlink: 1,
    uid: 0,
    gid: 0,
    rdev: 0,
    size: 0,
    mtimeSec: 0,
    mtimeNsec: 0,
    payload: null,
    content: null,
    digest: null,
    xattrs: [],
    children: (mode & S_IFMT) === S_IFDIR ? [] : null,
    parent,
    ino: 0,
    nid: 0,
    nBlocks: 0,
    tailSize: 0,
    compact: false,
    pad: 0,
    xattrSize: 0,
  };
}

/** Xattr names as latin1 strings, decoded once per distinct name. */
export class KeyInterner {
  private readonly table = new Map<number, Array<[Buffer, string]>>();

  get(bytes: Buffer): string {
    let h = 0x811c9dc5;
    for (let i = 0; i < bytes.length; i++) h = Math.imul(h ^ bytes[i], 0x01000193);
    let bucket = this.table.get(h);
    if (bucket) {
      for (let i = 0; i < bucket.length; i++) if (compareBytes(bucket[i][0], bytes) === 0) return bucket[i][1];
    } else this.table.set(h, (bucket = []));
    const str = bytes.toString('latin1');
    bucket.push([bytes, str]);
    return str;
  }
}

export function copyNode(inode: Inode, parent: WNode | null, keys: KeyInterner): WNode {
  const n = newWNode(inode.mode, parent);
  n.nlink = inode.nlink;
  n.uid = inode.uid;
  n.gid = inode.gid;
  n.rdev = inode.rdev;
  n.size = inode.size;
  n.mtimeSec = inode.mtimeSec;
  n.mtimeNsec = inode.mtimeNsec;
  n.payload = inode.payload;
  n.content = inode.content;
  n.digest = inode.digest;
  const xs = inode.xattrs;
  for (let i = 0; i < xs.length; i++) {
    n.xattrs.push({ key: keys.get(xs[i].key), kind: ValueKind.Bytes, data: xs[i].value, sharedOffset: -1 });
  }
  return n;
}

/** Copy the caller's tree into writer nodes (without recursion); hard links keep pointing at one node. */
export function copyTree(root: Inode): { root: WNode; hasWhiteout: boolean } {
  let hasWhiteout = false;
  const keys = new KeyInterner();
  const rootNode = copyNode(root, null, keys);
  const copiedFrom: Inode[] = [root];
  const copies: WNode[] = [rootNode];
  const links: Array<[WEntry, Inode]> = [];
  const stackIn: Inode[] = [root];
  const stackOut: WNode[] = [rootNode];
  while (stackIn.length > 0) {
    const inode = stackIn.pop()!;
    const node = stackOut.pop()!;
    const children = inode.children;
    if (!children) continue;
    if ((node.mode & S_IFMT) !== S_IFDIR) throw new ImageWriteError('only directories can have children');
    const out = node.children!;
    for (let i = 0; i < children.length; i++) {
      const d = children[i];
      checkName(d.name);
      if (d.hardlink) {
        const entry: WEntry = { name: d.name, node: rootNode, isLink: true };
        links.push([entry, d.inode]);
        out.push(entry);
        continue;
      }
      const child = copyNode(d.inode, node, keys);
      if (!hasWhiteout) hasWhiteout = isWhiteout(child);
      copiedFrom.push(d.inode);
      copies.push(child);
      out.push({ name: d.name, node: child, isLink: false });
      if (d.inode.children) {
        stackIn.push(d.inode);
        stackOut.push(child);
      }
    }
  }
  if (links.length > 0) {
    const byInode = new Map<Inode, WNode>();
    for (let i = 0; i < copiedFrom.length; i++) byInode.set(copiedFrom[i], copies[i]);
    if (byInode.size !== copiedFrom.length) throw new ImageWriteError('an inode is reachable under two primary names');
    for (const [entry, target] of links) {
      const t = byInode.get(target);
      const name = entry.name.toString();
      if (!t) throw new ImageWriteError(`hard link ${name} points outside the tree`);
      if ((t.mode & S_IFMT) === S_IFDIR) throw new ImageWriteError(`hard link ${name} points at a directory`);
      entry.node = t;
    }
  }
  return { root: rootNode, hasWhiteout };
}

export function isWhiteout(n: WNode): boolean {
  return (n.mode & S_IFMT) === S_IFCHR && n.rdev === 0;
}

