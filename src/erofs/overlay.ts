/**
 * The composefs meaning of an image's xattrs, apart from decoding them
 * (src/erofs/reader.ts finds each xattr's name index, name and value in the
 * image; this layer says what it stands for in the tree), as the reference's
 * lcfs_build_node_erofs_xattr does:
 *
 *  - `trusted.overlay.redirect` is the payload (the backing object's path,
 *    without its leading `/`), a 36-byte `trusted.overlay.metacopy` carries
 *    the fs-verity digest (both on regular files only);
 *  - the escaped `trusted.overlay.overlay.X` names are un-escaped to
 *    `trusted.overlay.X`; every other `trusted.overlay.*` name and the
 *    whiteout markers composefs adds are not part of the tree;
 *  - a regular file marked `trusted.overlay.overlay.whiteout` is the
 *    character device 0:0 it stood for.
 */
import { XATTR_INDEX_PREFIX, XATTR_INDEX_TRUSTED, XATTR_INDEX_USER } from './format.js';
import { S_IFCHR, S_IFMT, S_IFREG, type Inode, type Xattr } from '../tree/model.js';

const latin1 = (text: string) => Buffer.from(text, 'latin1');

/** The prefix each name index stands for (index 0: the full name is stored), null where composefs has none. */
export const XATTR_NAME_PREFIXES: ReadonlyArray<Buffer | null> = XATTR_INDEX_PREFIX.map((prefix) => (prefix === null ? null : latin1(prefix)));

const TRUSTED = latin1('trusted.');
const USER = latin1('user.');
/** Names (after `trusted.`, or after `user.` for the two user ones) that mean something to composefs. */
const NAMES = {
  overlay: latin1('overlay.'),
  escape: latin1('overlay.overlay.'),
  redirect: latin1('overlay.redirect'),
  metacopy: latin1('overlay.metacopy'),
  escapedWhiteout: latin1('overlay.overlay.whiteout'),
  escapedWhiteouts: latin1('overlay.overlay.whiteouts'),
  userWhiteout: latin1('overlay.whiteout'),
  userWhiteouts: latin1('overlay.whiteouts'),
  aclAccess: latin1('system.posix_acl_access'),
  aclDefault: latin1('system.posix_acl_default'),
};

/** What an xattr means to composefs. */
export const enum XattrMeaning {
  /** Kept under its own name. */
  Keep,
  /** `trusted.overlay.overlay.X`: kept as `trusted.overlay.X`. */
  KeepEscaped,
  /** composefs's own overlayfs xattrs and whiteout markers: not part of the tree. */
  Drop,
  Redirect,
  Metacopy,
  /** `trusted.overlay.overlay.whiteout`: makes a regular file a whiteout; elsewhere kept un-escaped. */
  EscapedWhiteout,
}

/** Flags applyXattr returns, for the checks. */
export const HAS_REDIRECT = 1;
export const HAS_METACOPY = 2;

function equalAt(image: Uint8Array, pos: number, length: number, name: Buffer): boolean {
  if (length !== name.length) return false;
  for (let i = 0; i < length; i++) if (image[pos + i] !== name[i]) return false;
  return true;
}

function startsWithAt(image: Uint8Array, pos: number, length: number, prefix: Buffer): boolean {
  if (length < prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) if (image[pos + i] !== prefix[i]) return false;
  return true;
}

/** The meaning of the stored name (name index `index`, bytes image[nameStart..nameStart+nameLength)). */
export function xattrMeaning(image: Uint8Array, index: number, nameStart: number, nameLength: number): XattrMeaning {
  let restStart = -1;
  let restLength = 0;
  let user = false;
  if (index === XATTR_INDEX_TRUSTED) {
    restStart = nameStart;
    restLength = nameLength;
  } else if (index === XATTR_INDEX_USER) {
    restStart = nameStart;
    restLength = nameLength;
    user = true;
  } else if (index === 0) {
    if (startsWithAt(image, nameStart, nameLength, TRUSTED)) {
      restStart = nameStart + TRUSTED.length;
      restLength = nameLength - TRUSTED.length;
    } else if (startsWithAt(image, nameStart, nameLength, USER)) {
      restStart = nameStart + USER.length;
      restLength = nameLength - USER.length;
      user = true;
    }
  }
  if (restStart < 0) return XattrMeaning.Keep;
  if (user) {
    const marker = equalAt(image, restStart, restLength, NAMES.userWhiteout) || equalAt(image, restStart, restLength, NAMES.userWhiteouts);
    return marker ? XattrMeaning.Drop : XattrMeaning.Keep;
  }
  if (!startsWithAt(image, restStart, restLength, NAMES.overlay)) return XattrMeaning.Keep;
  if (equalAt(image, restStart, restLength, NAMES.redirect)) return XattrMeaning.Redirect;
  if (equalAt(image, restStart, restLength, NAMES.metacopy)) return XattrMeaning.Metacopy;
  if (!startsWithAt(image, restStart, restLength, NAMES.escape)) return XattrMeaning.Drop;
  if (equalAt(image, restStart, restLength, NAMES.escapedWhiteouts)) return XattrMeaning.Drop;
  if (equalAt(image, restStart, restLength, NAMES.escapedWhiteout)) return XattrMeaning.EscapedWhiteout;
  return XattrMeaning.KeepEscaped;
}

/** The name an xattr gets in the tree, or null when it gets none (dropped, or taken apart into payload/digest). */
export function treeXattrName(image: Buffer, meaning: XattrMeaning, index: number, nameStart: number, nameLength: number): Buffer | null {
  if (meaning === XattrMeaning.KeepEscaped || meaning === XattrMeaning.EscapedWhiteout) {
    // trusted.overlay.overlay.X -> trusted.overlay.X: drop one "overlay.".
    const restStart = index === 0 ? nameStart + TRUSTED.length : nameStart;
    const from = restStart + NAMES.overlay.length;
    const end = nameStart + nameLength;
    const name = Buffer.allocUnsafe(TRUSTED.length + end - from);
    TRUSTED.copy(name, 0);
    image.copy(name, TRUSTED.length, from, end);
    return name;
  }
  if (meaning !== XattrMeaning.Keep) return null;
  const prefix = XATTR_NAME_PREFIXES[index]!;
  const name = Buffer.allocUnsafe(prefix.length + nameLength);
  prefix.copy(name, 0);
  image.copy(name, prefix.length, nameStart, nameStart + nameLength);
  return name;
}

/**
 * The name an xattr has on a composefs mount (what overlayfs shows), or null
 * when overlayfs hides it: its own `trusted.overlay.*` names are hidden, the
 * escaped `trusted.overlay.overlay.X` show as `trusted.overlay.X`, every
 * other name as stored (the `user.overlay.*` whiteout markers too: overlayfs
 * with trusted xattrs leaves user ones alone).
 */
export function mountedXattrName(image: Buffer, index: number, nameStart: number, nameLength: number): Buffer | null {
  let restStart = -1;
  if (index === XATTR_INDEX_TRUSTED) restStart = nameStart;
  else if (index === 0 && startsWithAt(image, nameStart, nameLength, TRUSTED)) restStart = nameStart + TRUSTED.length;
  const restLength = nameLength - (restStart - nameStart);
  if (restStart >= 0 && startsWithAt(image, restStart, restLength, NAMES.overlay)) {
    if (!startsWithAt(image, restStart, restLength, NAMES.escape)) return null;
    return treeXattrName(image, XattrMeaning.KeepEscaped, index, nameStart, nameLength);
  }
  return treeXattrName(image, XattrMeaning.Keep, index, nameStart, nameLength);
}

/** Whether the stored name is a POSIX ACL (the header's has-ACL flag must say so). */
export function isAclXattr(image: Uint8Array, index: number, nameStart: number, nameLength: number): boolean {
  if (index === 2 || index === 3) return true;
  return index === 0 && (equalAt(image, nameStart, nameLength, NAMES.aclAccess) || equalAt(image, nameStart, nameLength, NAMES.aclDefault));
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  const length = a.length;
  if (length !== b.length) return false;
  for (let i = 0; i < length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function setXattr(list: Xattr[], key: Buffer, value: Buffer): void {
  for (let i = 0; i < list.length; i++) {
    if (bytesEqual(list[i].key, key)) {
      list[i].value = value;
      return;
    }
  }
  list.push({ key, value });
}

/**
 * Apply one xattr, its value at image[valueStart..valueEnd), to the node;
 * returns HAS_REDIRECT / HAS_METACOPY for the checks (src/erofs/image-checks.ts
 * also looks at the metacopy value's form). Views of the image are made only
 * for what the node keeps.
 */
export function applyXattr(
  node: Inode,
  meaning: XattrMeaning,
  treeName: Buffer | null,
  image: Buffer,
  valueStart: number,
  valueEnd: number,
): number {
  const regular = (node.mode & S_IFMT) === S_IFREG;
  const length = valueEnd - valueStart;
  switch (meaning) {
    case XattrMeaning.Drop:
      return 0;
    case XattrMeaning.Redirect: {
      if (!regular) return 0;
      // The reference stores "/" + payload; a NUL ends it as in C.
      const start = length > 1 && image[valueStart] === 0x2f ? valueStart + 1 : valueStart;
      let end = start;
      while (end < valueEnd && image[end] !== 0) end++;
      node.payload = image.subarray(start, end);
      return HAS_REDIRECT;
    }
    case XattrMeaning.Metacopy:
      if (!regular) return 0;
      // A SHA-256 (4 + 32 bytes) or SHA-512 (4 + 64) digest after the 4-byte header.
      if (length === 4 + 32 || length === 4 + 64) node.digest = image.subarray(valueStart + 4, valueEnd);
      return HAS_METACOPY;
    case XattrMeaning.EscapedWhiteout:
      if (regular) {
        node.mode = (node.mode & ~S_IFMT) | S_IFCHR;
        node.rdev = 0;
        node.size = 0;
        return 0;
      }
      break;
  }
  setXattr(node.xattrs, treeName!, image.subarray(valueStart, valueEnd));
  return 0;
}
