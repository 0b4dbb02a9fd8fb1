/**
 * The canonical form of an image: the tree the composefs OCI sealing
 * specification's "canonical generation" defines, built the way composefs-rs
 * builds it (crates/composefs-oci/src/image.rs `process_entry`,
 * crates/composefs/src/generic_tree.rs `transform_for_oci`), so that its
 * composefs digest is the one a seal carries.
 *
 * Layers, base first, each entry in archive order against the tree as it
 * stands (not against the lower layers only, as umoci does):
 * - `.wh.NAME` removes NAME, and `.wh..wh..opq` empties its directory, of
 *   whatever is there at that point, this layer's earlier entries included;
 * - a parent directory must exist and be a directory: a path through a
 *   symbolic link, or under a name the layer never made, cannot be canonical;
 * - a directory over a directory keeps the children and takes the new
 *   metadata; anything else replaces what was at its path;
 * - a hard link names the leaf found at its target, looked up (no symbolic
 *   links followed) before the link's own path is touched;
 * - modes are the tar header's permission bits, symbolic links included;
 *   the root's own entry does not count (its metadata is replaced below).
 * Then: the root takes `/usr`'s mode, owner, mtime and xattrs; `/run`, if
 * there, is emptied and takes `/usr`'s mtime; only `security.capability`
 * xattrs are kept (and `user.*` ones with keepUserXattrs); what only `/run`
 * or a removed directory reached is gone. An image without a `/usr`
 * directory, or with a `/run` that is not one, has no canonical form.
 *
 * Every step is one pass over the entries or the tree, with no symbolic link
 * resolution: cheaper than the umoci replay of merge.ts.
 */
import { S_IFDIR, S_IFLNK, S_IFMT, type Inode, type Xattr } from '../tree/model.js';
import type { LayerEntry } from '../oci/layer.js';
import { isDirNode, leafOf, newDir, nodeTreeToInode, showPath, type Node } from './merge.js';
import { CanonicalFormError } from './form.js';

export { CanonicalFormError } from './form.js';

/** The xattrs composefs-rs keeps (CONTAINER_XATTR_ALLOWLIST). */
export const CANONICAL_XATTR_ALLOWLIST: readonly string[] = ['security.capability'];

export interface CanonicalOptions {
  /** Keep `user.*` xattrs as well (composefs-rs XattrFiltering::KeepUserXattrs, cfsctl --keep-user-xattrs). */
  keepUserXattrs?: boolean;
}

export class CanonicalTreeBuilder {
  readonly root: Node = newDir();
  private readonly keepUser: boolean;
  private layer = '';
  /**
   * The directory the last entry's parent path named: consecutive entries
   * mostly share one. Every removal follows a lookup of the removed entry's
   * parent, which then is the cached one, so the cache never holds a node the
   * tree no longer reaches; forgetUnder keeps that true should an operation
   * ever remove without that lookup.
   */
  private lastParentPath: string | null = null;
  private lastParent: Node = this.root;

  constructor(opts: CanonicalOptions = {}) {
    this.keepUser = opts.keepUserXattrs ?? false;
  }

  /** Apply one layer's entries; `name` labels the reason when the image cannot be canonical. */
  applyLayer(name: string, entries: Iterable<LayerEntry>): void {
    this.layer = name;
    this.lastParentPath = null;
    for (const e of entries) this.apply(e);
  }

  private refuse(e: LayerEntry, reason: string): CanonicalFormError {
    return new CanonicalFormError(`${this.layer}: entry ${showPath(e.path)}: ${reason}`);
  }

  /** The directory at `path` (normalized, '' the root), which must exist, reached without following symbolic links. */
  private directory(path: string, e: LayerEntry, what: string): Node {
    if (path === this.lastParentPath) return this.lastParent;
    let cur = this.root;
    if (path !== '') {
      let start = 0;
      for (;;) {
        const slash = path.indexOf('/', start);
        const part = slash < 0 ? path.slice(start) : path.slice(start, slash);
        const child = cur.children!.get(part);
        const prefix = slash < 0 ? path : path.slice(0, slash);
        if (child === undefined) throw this.refuse(e, `${what} ${showPath(prefix)} does not exist (composefs-rs makes no parent directory a layer leaves out)`);
        if (!isDirNode(child)) {
          const kind = (child.mode & S_IFMT) === S_IFLNK ? 'a symbolic link (composefs-rs follows none)' : 'not a directory';
          throw this.refuse(e, `${what} ${showPath(prefix)} is ${kind}`);
        }
        cur = child;
        if (slash < 0) break;
        start = slash + 1;
      }
    }
    this.lastParentPath = path;
    this.lastParent = cur;
    return cur;
  }

  /** `dir`'s entry `name` (at `path`) goes; a directory leaving the tree with the cached parent in it forgets that. */
  private detach(dir: Node, name: string, path: string): void {
    const old = dir.children!.get(name);
    if (old === undefined) return;
    dir.children!.delete(name);
    if (old.children) this.forgetUnder(path);
  }

  /** Forget the cached parent if it is `path` or beneath it ('' the root). */
  private forgetUnder(path: string): void {
    const cached = this.lastParentPath;
    if (cached === null) return;
    if (path === '' ? cached !== '' : cached === path || (cached.length > path.length && cached.startsWith(path) && cached.charCodeAt(path.length) === 0x2f)) this.lastParentPath = null;
  }

  private apply(e: LayerEntry): void {
    const slash = e.path.lastIndexOf('/');
    const parentPath = slash < 0 ? '' : e.path.slice(0, slash);
    const name = e.path.slice(slash + 1);
    if (e.type === 'opaque') {
      // `DIR/.wh..wh..opq`: DIR must be there; everything in it goes, whatever put it there.
      const dir = this.directory(e.path, e, 'its directory');
      if (dir.children!.size > 0) {
        dir.children = new Map();
        this.forgetUnder(e.path);
      }
      return;
    }
    // The root's own entry: composefs-rs sets the root's metadata from it, then replaces all of it with /usr's.
    if (e.path === '') return;
    let linked: Node | undefined;
    if (e.type === 'hardlink') {
      const lslash = e.link!.lastIndexOf('/');
      const ldir = this.directory(lslash < 0 ? '' : e.link!.slice(0, lslash), e, `hard link target ${showPath(e.link!)}: its parent`);
      linked = ldir.children!.get(e.link!.slice(lslash + 1));
      if (linked === undefined) throw this.refuse(e, `hard link to ${showPath(e.link!)}, which does not exist`);
      if (isDirNode(linked)) throw this.refuse(e, `hard link to ${showPath(e.link!)}, which is a directory`);
    }
    const parent = this.directory(parentPath, e, 'its parent');
    if (e.type === 'whiteout') {
      this.detach(parent, name, e.path);
      return;
    }
    if (linked !== undefined) {
      this.detach(parent, name, e.path);
      parent.children!.set(name, linked);
      return;
    }
    if (e.type === 'dir') {
      const existing = parent.children!.get(name);
      if (existing !== undefined && isDirNode(existing)) {
        this.setMetadata(existing, e);
        return;
      }
      const dir = newDir();
      this.setMetadata(dir, e);
      this.detach(parent, name, e.path);
      parent.children!.set(name, dir);
      return;
    }
    const node = leafOf(e);
    if (node === null) throw this.refuse(e, `unknown entry type ${String(e.type)}`);
    this.setMetadata(node, e);
    this.detach(parent, name, e.path);
    parent.children!.set(name, node);
  }

  /** The entry's stat, its xattrs filtered here rather than in a pass of their own (the allowlist applies to every inode alike). */
  private setMetadata(node: Node, e: LayerEntry): void {
    node.mode = (node.mode & S_IFMT) | ((e.mode ?? 0) & 0o7777);
    node.uid = e.uid ?? 0;
    node.gid = e.gid ?? 0;
    node.mtimeSec = e.mtimeSec ?? 0;
    node.mtimeNsec = e.mtimeNsec ?? 0;
    node.xattrs = e.xattrs === undefined ? [] : this.keptXattrs(e.xattrs);
  }

  private keptXattrs(list: [string, string][]): Xattr[] {
    const kept: Xattr[] = [];
    for (const [k, v] of list) {
      if (!(k === 'security.capability' || (this.keepUser && k.startsWith('user.')))) continue;
      const key = Buffer.from(k, 'latin1');
      const value = Buffer.from(v, 'base64');
      const i = kept.findIndex((x) => x.key.equals(key));
      if (i >= 0) kept[i] = { key, value };
      else kept.push({ key, value });
    }
    if (kept.length > 1) kept.sort((a, b) => Buffer.compare(a.key, b.key));
    return kept;
  }

  /**
   * composefs-rs's transform_for_oci after the layers: the root takes /usr's
   * metadata, /run is emptied and takes /usr's mtime (xattrs were filtered as
   * entries were applied; what nothing reaches is left out by toInode).
   */
  finish(): void {
    const usr = this.root.children!.get('usr');
    if (usr === undefined) throw new CanonicalFormError('the image has no /usr, whose metadata the canonical root takes');
    if (!isDirNode(usr)) throw new CanonicalFormError('/usr is not a directory, and the canonical root takes a directory\'s metadata from it');
    const root = this.root;
    root.mode = S_IFDIR | (usr.mode & 0o7777);
    root.uid = usr.uid;
    root.gid = usr.gid;
    root.mtimeSec = usr.mtimeSec;
    root.mtimeNsec = usr.mtimeNsec;
    root.xattrs = usr.xattrs.slice();
    const run = root.children!.get('run');
    if (run === undefined) return;
    if (!isDirNode(run)) throw new CanonicalFormError('/run is not a directory (composefs-rs refuses to canonicalize it)');
    run.children = new Map();
    run.mtimeSec = usr.mtimeSec;
    run.mtimeNsec = usr.mtimeNsec;
  }

  /** The tree in the project's model (call finish first). */
  toInode(): Inode {
    return nodeTreeToInode(this.root);
  }
}
