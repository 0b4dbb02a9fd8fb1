/**
 * The unpacked form (build.ts; the canonical one is canonical.ts).
 *
 * An image's layers, replayed into one tree: each layer's entries applied in
 * archive order, base layer first, with the semantics `umoci raw unpack`
 * gives them on disk, so that the composefs image equals the rootfs umoci
 * would write:
 *
 * - an entry replaces whatever is at its path, except a directory entry
 *   over a directory, which keeps the children and takes the new metadata
 *   (mode, owner, xattrs, mtime);
 * - `.wh.NAME` removes NAME and `.wh..wh..opq` the contents of its
 *   directory, as found in the lower layers: what the same layer has put
 *   there (before or after the whiteout) stays, as the OCI image spec says;
 * - parent directories only implied get mode 0755, owner 0:0 and mtime 0
 *   (umoci makes them with the time of the unpack; we keep images
 *   reproducible), and a parent that exists but is not a directory fails the
 *   entry (as umoci 0.4 does);
 * - parent paths resolve symlinks inside the image root, never outside it
 *   (absolute targets start at the image root, `..` stops there), as
 *   umoci's securejoin does; so `lib/x` under a symlink `lib -> usr/lib`
 *   lands in `usr/lib/x`;
 * - a hard link names the same inode as its target (which must exist, in
 *   this layer or a lower one, and not be a directory); replacing either
 *   name later gives that name a new inode, as unlinking and creating does;
 * - symlinks have mode 0777; `security.selinux` and `system.nfs4_acl` xattrs
 *   are dropped (umoci refuses to set them: they are host-specific).
 */
import { ComposefsError, type ComposefsErrorOptions } from '../errors.js';
import { S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, type Dirent, type Inode, type Xattr, PATH_MAX } from '../tree/model.js';
import { makedev } from '../sys/fs.js';
import { digestToObjectPath } from '../store/layout.js';
import { showLong, type LayerEntry } from '../oci/layer.js';

export class MergeError extends ComposefsError {
  constructor(message: string, options?: ComposefsErrorOptions) {
    super(message, 'layer', options);
  }
}

/** A node of the tree being built; hard links are one node under several names. */
export interface Node {
  mode: number;
  uid: number;
  gid: number;
  mtimeSec: number;
  mtimeNsec: number;
  rdev: number;
  size: number;
  digest: Buffer | null;
  content: Buffer | null;
  target: Buffer | null;
  xattrs: Xattr[];
  /** Directory entries by name (latin1: one char per byte). */
  children: Map<string, Node> | null;
}

const IGNORED_XATTRS = new Set(['security.selinux', 'system.nfs4_acl']);
const MAX_SYMLINKS = 255;
/**
 * Parent directories a layer may leave implied (made here, 0755 0:0): at
 * most this many per entry of the layer, plus a free allowance. Each costs a
 * node, and a small hostile layer of a few hundred paths 2,000 directories
 * deep would otherwise make a million of them (1.5 GB); a real layer implies
 * a few per entry at most, even one that lists no directory at all.
 */
const IMPLIED_DIRS_PER_ENTRY = 64;
const IMPLIED_DIRS_FREE = 65_536;
/** Linux's PATH_MAX (with its NUL): no runtime could make a longer path, so no layer gets one through a symlink either. */

export function newDir(mode = 0o755): Node {
  return { mode: S_IFDIR | mode, uid: 0, gid: 0, mtimeSec: 0, mtimeNsec: 0, rdev: 0, size: 0, digest: null, content: null, target: null, xattrs: [], children: new Map() };
}

export function isDirNode(n: Node): boolean {
  return (n.mode & S_IFMT) === S_IFDIR;
}

export class TreeBuilder {
  readonly root: Node = newDir();
  /**
   * What this layer has put in place: the names it touched, by the
   * directory node holding them. By node and name, not by path string: a
   * path 2000 directories deep would cost each of its prefixes as a string
   * of up to 4 KB, hashed again for every entry beneath it.
   */
  private upper = new Map<Node, Set<string>>();
  private layer = '';
  /** This layer's entries so far, and the directories its paths implied. */
  private entries = 0;
  private implied = 0;

  /** Apply one layer's entries; `name` labels errors ("layer sha256:…"). */
  applyLayer(name: string, entries: Iterable<LayerEntry>): void {
    this.layer = name;
    this.upper = new Map();
    this.entries = 0;
    this.implied = 0;
    for (const e of entries) this.apply(e);
  }

  private fail(e: LayerEntry, reason: string): MergeError {
    return new MergeError(`${this.layer}: entry ${showPath(e.path)}: ${reason}`);
  }

  /**
   * Resolve a directory path inside the root, following symlinks (securejoin):
   * the canonical components. Components past a missing one are taken as they are.
   */
  private resolve(parts: string[], e: LayerEntry): string[] {
    const out: string[] = [];
    const stack: Node[] = [this.root];
    const todo = parts.slice().reverse();
    let links = 0;
    let missing = false;
    while (todo.length > 0) {
      const part = todo.pop()!;
      if (part === '' || part === '.') continue;
      if (part === '..') {
        if (out.length > 0) {
          out.pop();
          stack.pop();
        }
        missing = false;
        continue;
      }
      const cur = stack[stack.length - 1];
      const child = missing || !cur.children ? undefined : cur.children.get(part);
      if (child === undefined || (child.mode & S_IFMT) !== S_IFLNK) {
        out.push(part);
        if (child === undefined) missing = true;
        stack.push(child ?? newDir());
        continue;
      }
      if (++links > MAX_SYMLINKS) throw this.fail(e, 'too many levels of symbolic links in its path');
      const target = child.target!.toString('latin1');
      const tparts = target.split('/');
      for (let i = tparts.length - 1; i >= 0; i--) todo.push(tparts[i]);
      if (target.startsWith('/')) {
        out.length = 0;
        stack.length = 1;
        missing = false;
      }
    }
    return out;
  }

  /** The directory at canonical `parts`, made (0755, 0:0, mtime 0) where missing. */
  private mkdirAll(parts: string[], e: LayerEntry): Node {
    let cur = this.root;
    for (const part of parts) {
      let child = cur.children!.get(part);
      if (child === undefined) {
        if (++this.implied > IMPLIED_DIRS_PER_ENTRY * this.entries + IMPLIED_DIRS_FREE) {
          throw this.fail(e, `the layer's paths imply ${this.implied} parent directories it does not list, for ${this.entries} entries: more than ${IMPLIED_DIRS_PER_ENTRY} per entry (and ${IMPLIED_DIRS_FREE}) is refused`);
        }
        child = newDir();
        cur.children!.set(part, child);
      } else if (!isDirNode(child)) throw this.fail(e, `its parent ${showPath(part)} is not a directory`);
      cur = child;
    }
    return cur;
  }

  /** The node at canonical `parts`, or undefined. */
  private lookup(parts: string[]): Node | undefined {
    let cur: Node | undefined = this.root;
    for (const part of parts) {
      if (!cur || !cur.children) return undefined;
      cur = cur.children.get(part);
    }
    return cur;
  }

  /** Mark the names along canonical `parts` (which exist) as this layer's. */
  private markUpper(parts: string[]): void {
    let cur = this.root;
    for (const part of parts) {
      let names = this.upper.get(cur);
      if (names === undefined) this.upper.set(cur, (names = new Set()));
      names.add(part);
      const next = cur.children?.get(part);
      if (next === undefined) return;
      cur = next;
    }
  }

  /**
   * Remove `name` from `dir` unless this layer put it there; go into what
   * this layer touched. A stack, not recursion: a layer's tree may be
   * thousands of directories deep.
   */
  private whiteout(dir: Node, name: string): void {
    const todo: [Node, string][] = [[dir, name]];
    while (todo.length > 0) {
      const [parent, child] = todo.pop()!;
      const node = parent.children!.get(child);
      if (node === undefined) continue;
      if (!this.upper.get(parent)?.has(child)) {
        parent.children!.delete(child);
        continue;
      }
      if (node.children) for (const grandchild of node.children.keys()) todo.push([node, grandchild]);
    }
  }

  private apply(e: LayerEntry): void {
    this.entries++;
    const parts = e.path === '' ? [] : e.path.split('/');
    if (e.type === 'opaque') {
      const dirParts = this.resolve(parts, e);
      const dir = this.lookup(dirParts);
      if (dir && dir.children) for (const child of [...dir.children.keys()]) this.whiteout(dir, child);
      return;
    }
    const name = parts.pop();
    const parentParts = this.resolve(parts, e);
    if (e.type === 'whiteout') {
      const dir = this.lookup(parentParts);
      if (dir && dir.children) this.whiteout(dir, name!);
      return;
    }
    if (name === undefined) {
      // The root itself: only a directory entry reaches here (src/oci/layer.ts refuses the rest).
      this.setMetadata(this.root, e);
      return;
    }
    const canonicalBytes = parentParts.reduce((n, part) => n + part.length + 1, 0) + name.length;
    if (canonicalBytes >= PATH_MAX) throw this.fail(e, `its path through symbolic links is ${canonicalBytes} bytes long, longer than ${PATH_MAX - 1}`);
    const parent = this.mkdirAll(parentParts, e);
    const existing = parent.children!.get(name);
    if (existing !== undefined && !(isDirNode(existing) && e.type === 'dir')) parent.children!.delete(name);
    let node: Node;
    switch (e.type) {
      case 'hardlink': {
        const lparts = e.link!.split('/');
        const lname = lparts.pop()!;
        const ldir = this.lookup(this.resolve(lparts, e));
        const target = ldir?.children?.get(lname);
        if (target === undefined) throw this.fail(e, `hard link to ${showPath(e.link!)}, which does not exist`);
        if (isDirNode(target)) throw this.fail(e, `hard link to ${showPath(e.link!)}, which is a directory`);
        parent.children!.set(name, target);
        this.markUpper([...parentParts, name]);
        return;
      }
      case 'dir':
        node = existing !== undefined && isDirNode(existing) ? existing : newDir();
        break;
      default: {
        const made = leafOf(e);
        if (made === null) throw this.fail(e, `unknown entry type ${String(e.type)}`);
        node = made;
      }
    }
    this.setMetadata(node, e);
    parent.children!.set(name, node);
    this.markUpper([...parentParts, name]);
  }

  private setMetadata(node: Node, e: LayerEntry): void {
    const type = node.mode & S_IFMT;
    node.mode = type | (type === S_IFLNK ? 0o777 : (e.mode ?? 0) & 0o7777);
    node.uid = e.uid ?? 0;
    node.gid = e.gid ?? 0;
    node.mtimeSec = e.mtimeSec ?? 0;
    node.mtimeNsec = e.mtimeNsec ?? 0;
    const xattrs: Xattr[] = [];
    for (const [k, v] of e.xattrs ?? []) {
      if (IGNORED_XATTRS.has(k)) continue;
      const key = Buffer.from(k, 'latin1');
      const i = xattrs.findIndex((x) => x.key.equals(key));
      const value = Buffer.from(v, 'base64');
      if (i >= 0) xattrs[i] = { key, value };
      else xattrs.push({ key, value });
    }
    xattrs.sort((a, b) => Buffer.compare(a.key, b.key));
    node.xattrs = xattrs;
  }

  /** The tree in the project's model (see nodeTreeToInode). */
  toInode(): Inode {
    return nodeTreeToInode(this.root);
  }
}

/**
 * A tree of nodes in the project's model: children sorted by name bytes; a
 * hard link's primary name is its first in depth-first name order (the order
 * a dump lists them), its link count the number of its names. Only what the
 * root reaches is in it.
 */
export function nodeTreeToInode(root: Node): Inode {
  // Walked with explicit stacks, not recursion: a layer's tree may be thousands of directories deep.
  const counts = new Map<Node, number>();
  const dirs: Node[] = [root];
  while (dirs.length > 0) {
    for (const c of dirs.pop()!.children!.values()) {
      if (c.children) dirs.push(c);
      else counts.set(c, (counts.get(c) ?? 0) + 1);
    }
  }
  const made = new Map<Node, Inode>();
  const convert = (n: Node): Inode => {
    const inode: Inode = {
      mode: n.mode,
      nlink: n.children ? 1 : counts.get(n) ?? 1,
      uid: n.uid,
      gid: n.gid,
      rdev: n.rdev,
      size: n.size,
      mtimeSec: n.mtimeSec,
      mtimeNsec: n.mtimeNsec,
      payload: n.target,
      content: n.content,
      digest: n.digest,
      xattrs: n.xattrs,
      children: n.children ? [] : null,
    };
    if ((n.mode & S_IFMT) === S_IFREG && n.digest && n.size > 0) inode.payload = Buffer.from(digestToObjectPath(n.digest));
    return inode;
  };
  interface Frame {
    node: Node;
    children: Dirent[];
    names: Buffer[];
    next: number;
  }
  const open = (node: Node, inode: Inode): Frame => ({
    node,
    children: inode.children!,
    names: [...node.children!.keys()].map((k) => Buffer.from(k, 'latin1')).sort(Buffer.compare),
    next: 0,
  });
  const rootInode = convert(root);
  // Depth first in name order, as a dump lists the tree: a hard link's first name there is its primary one.
  const stack: Frame[] = [open(root, rootInode)];
  while (stack.length > 0) {
    const frame = stack[stack.length - 1];
    if (frame.next === frame.names.length) {
      stack.pop();
      continue;
    }
    const name = frame.names[frame.next++];
    const c = frame.node.children!.get(name.toString('latin1'))!;
    const seen = made.get(c);
    if (seen) {
      frame.children.push({ name, inode: seen, hardlink: true });
      continue;
    }
    const ci = convert(c);
    if (!c.children && (counts.get(c) ?? 1) > 1) made.set(c, ci);
    frame.children.push({ name, inode: ci, hardlink: false });
    if (c.children) stack.push(open(c, ci));
  }
  return rootInode;
}

/** The node of a layer entry that is not a directory nor a hard link (its metadata still to set); null for an unknown type. */
export function leafOf(e: LayerEntry): Node | null {
  let node: Node;
  switch (e.type) {
    case 'file':
      node = leaf(S_IFREG);
      node.size = e.size ?? 0;
      node.digest = e.digest ? Buffer.from(e.digest, 'hex') : null;
      node.content = e.inline ? Buffer.from(e.inline, 'base64') : null;
      return node;
    case 'symlink':
      node = leaf(S_IFLNK);
      node.target = Buffer.from(e.link!, 'latin1');
      node.size = node.target.length;
      return node;
    case 'char':
    case 'block':
      node = leaf(e.type === 'char' ? S_IFCHR : S_IFBLK);
      node.rdev = makedev(e.major ?? 0, e.minor ?? 0);
      return node;
    case 'fifo':
      return leaf(S_IFIFO);
    default:
      return null;
  }
}

export function leaf(type: number): Node {
  return { mode: type, uid: 0, gid: 0, mtimeSec: 0, mtimeNsec: 0, rdev: 0, size: 0, digest: null, content: null, target: null, xattrs: [], children: null };
}

export function showPath(p: string): string {
  return p === '' ? '/' : showLong(Buffer.from(p, 'latin1'));
}
