/**
 * The tree model in columns: the same content as an `Inode` tree, held in
 * parallel typed arrays indexed by entry number, with every byte string
 * (names, payloads, inline content, digests, xattrs) a range of one pool.
 *
 * It exists for speed. A build from a dump file runs mostly before V8 has
 * optimised anything, and there an object or a Buffer view per entry costs
 * more than all the real work; in columns the dump parser and the image
 * writer allocate a few dozen arrays whatever the tree's size.
 *
 * Entry 0 is the root. Every entry but the root is one name in one directory.
 * A hard link is an entry with `linkTo` set to the entry of the inode's
 * primary name (never itself a link); its inode columns are unused. Arrays
 * may be longer than `count` (+1 where noted); only the first `count` count.
 */
import { S_IFDIR, S_IFMT, type Dirent, type Inode, type Xattr } from './model.js';

export interface FlatTree {
  count: number;
  /** The bytes every `…Start`/`…End` pair points into. */
  pool: Uint8Array;

  /** Directory `e` holds `children[childStart[e] .. childStart[e + 1])`, sorted by name bytes. (count + 1) */
  childStart: Int32Array;
  children: Int32Array;
  /** The entry's name in its directory (empty for the root). */
  nameStart: Int32Array;
  nameEnd: Int32Array;
  /** -1, or for a hard link the entry whose inode it names. */
  linkTo: Int32Array;

  mode: Uint32Array;
  nlink: Uint32Array;
  uid: Uint32Array;
  gid: Uint32Array;
  rdev: Float64Array;
  size: Float64Array;
  mtimeSec: Float64Array;
  mtimeNsec: Uint32Array;
  /** Symlink target or backing path; start -1 means none. */
  payloadStart: Int32Array;
  payloadEnd: Int32Array;
  /** Inline content of a regular file; start -1 means none. */
  contentStart: Int32Array;
  contentEnd: Int32Array;
  /** Offset of the fs-verity digest (`digestSize` bytes), or -1. */
  digest: Int32Array;
  /** Bytes in every digest of the tree: 32 (SHA-256, the default) or 64 (SHA-512). */
  digestSize?: number;
  /** Entry `e` has xattrs `xattrStart[e] .. xattrStart[e + 1]`, in their given order. (count + 1) */
  xattrStart: Int32Array;
  xattrKeyStart: Int32Array;
  xattrKeyEnd: Int32Array;
  xattrValueStart: Int32Array;
  xattrValueEnd: Int32Array;
}

/**
 * The `Inode` tree of a flat tree. Byte strings are views into `flat.pool`,
 * so the pool must stay unchanged while the tree is in use.
 */
export function inflate(flat: FlatTree): Inode {
  const pool = Buffer.from(flat.pool.buffer, flat.pool.byteOffset, flat.pool.length);
  const view = (start: number, end: number) => (start < 0 ? null : pool.subarray(start, end));
  const inodes: Array<Inode | null> = new Array(flat.count).fill(null);
  const digestSize = flat.digestSize ?? 32;
  for (let e = 0; e < flat.count; e++) {
    if (flat.linkTo[e] >= 0) continue;
    const xattrs: Xattr[] = [];
    for (let k = flat.xattrStart[e]; k < flat.xattrStart[e + 1]; k++) {
      xattrs.push({ key: pool.subarray(flat.xattrKeyStart[k], flat.xattrKeyEnd[k]), value: pool.subarray(flat.xattrValueStart[k], flat.xattrValueEnd[k]) });
    }
    const mode = flat.mode[e];
    inodes[e] = {
      mode,
      nlink: flat.nlink[e],
      uid: flat.uid[e],
      gid: flat.gid[e],
      rdev: flat.rdev[e],
      size: flat.size[e],
      mtimeSec: flat.mtimeSec[e],
      mtimeNsec: flat.mtimeNsec[e],
      payload: view(flat.payloadStart[e], flat.payloadEnd[e]),
      content: view(flat.contentStart[e], flat.contentEnd[e]),
      digest: flat.digest[e] < 0 ? null : pool.subarray(flat.digest[e], flat.digest[e] + digestSize),
      xattrs,
      children: (mode & S_IFMT) === S_IFDIR ? [] : null,
    };
  }
  for (let e = 0; e < flat.count; e++) {
    const dir = inodes[e];
    if (dir === null || dir.children === null) continue;
    for (let k = flat.childStart[e]; k < flat.childStart[e + 1]; k++) {
      const c = flat.children[k];
      const link = flat.linkTo[c];
      const d: Dirent = { name: pool.subarray(flat.nameStart[c], flat.nameEnd[c]), inode: inodes[link >= 0 ? link : c]!, hardlink: link >= 0 };
      dir.children.push(d);
    }
  }
  return inodes[0]!;
}
