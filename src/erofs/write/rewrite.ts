/** Pass 1: what the reference adds to a tree for overlayfs before laying it out. */
import { S_IFCHR, S_IFMT, S_IFREG } from '../../tree/model.js';
import { ValueKind, type WNode, EMPTY, K, X, DOT, DOTDOT, setXattr, insertSorted, newWNode, isWhiteout } from './nodes.js';

/** The reference upgrades to version 1 (xwhiteout marking) when the tree holds a whiteout. */
export function chooseVersion(hasWhiteout: boolean, min: number, max: number): number {
  return min < 1 && max >= 1 && hasWhiteout ? 1 : min;
}

export function addOverlayXattrs(node: WNode, version: number): void {
  for (const x of node.xattrs) {
    if (x.key.startsWith(K.overlayPrefix)) x.key = K.escapePrefix + x.key.slice(K.overlayPrefix.length);
  }
  const type = node.mode & S_IFMT;
  if (type === S_IFREG && node.size > 0 && node.content === null) {
    setXattr(node, K.metacopy, ValueKind.Metacopy, node.digest);
    if (node.payload && node.payload.length > 0) setXattr(node, K.redirect, ValueKind.Redirect, node.payload);
  }
  if (isWhiteout(node)) {
    // A whiteout has no data, whatever size the input claimed.
    node.size = 0;
    node.mode = S_IFREG | (node.mode & ~S_IFMT);
    setXattr(node, K.escWhiteout, ValueKind.Bytes, EMPTY);
    setXattr(node, K.userWhiteout, ValueKind.Bytes, EMPTY);
    const parent = node.parent;
    if (parent) {
      setXattr(parent, K.escWhiteouts, ValueKind.Bytes, EMPTY);
      setXattr(parent, K.userWhiteouts, ValueKind.Bytes, EMPTY);
      if (version >= 1) {
        setXattr(parent, K.escOpaque, ValueKind.Bytes, X);
        setXattr(parent, K.userOpaque, ValueKind.Bytes, X);
      }
    }
  }
}

export function rewriteTree(root: WNode, version: number): void {
  const nodes: WNode[] = [root];
  const parents: WNode[] = [root];
  while (nodes.length > 0) {
    const node = nodes.pop()!;
    const parent = parents.pop()!;
    addOverlayXattrs(node, version);
    const children = node.children;
    if (!children) continue;
    // Names were checked: the tree holds no `.` or `..` of its own.
    insertSorted(children, { name: DOT, node, isLink: true });
    insertSorted(children, { name: DOTDOT, node: parent, isLink: true });
    for (let i = 0; i < children.length; i++) {
      if (!children[i].isLink) {
        nodes.push(children[i].node);
        parents.push(node);
      }
    }
  }
}

export const HEX = '0123456789abcdef';

export function addRootWhiteouts(root: WNode): void {
  const selinux = root.xattrs.find((x) => x.key === K.selinux) ?? null;
  const children = root.children!;
  const existing = new Set(children.map((e) => e.name.toString('latin1')));
  for (let i = 0; i < 256; i++) {
    const name = HEX[i >> 4] + HEX[i & 15];
    if (existing.has(name)) continue;
    const child = newWNode(S_IFCHR | 0o644, root);
    child.uid = root.uid;
    child.gid = root.gid;
    child.mtimeSec = root.mtimeSec;
    child.mtimeNsec = root.mtimeNsec;
    if (selinux) child.xattrs.push({ ...selinux, sharedOffset: -1 });
    insertSorted(children, { name: Buffer.from(name, 'latin1'), node: child, isLink: false });
  }
}
