/**
 * An `Inode` tree in columns (src/tree/flat.ts), the form the writer works
 * on. Refuses what no image can hold: children on a non-directory, a
 * directory reachable twice, an inode under two primary names, a hard link to
 * an inode outside the tree or to a directory.
 */
import { S_IFDIR, S_IFMT, type Inode } from '../../tree/model.js';
import type { FlatTree } from '../../tree/flat.js';
import { ImageWriteError } from './errors.js';

export function flatten(root: Inode): FlatTree {
  if ((root.mode & S_IFMT) !== S_IFDIR) throw new ImageWriteError('the root of an image must be a directory');
  // Entries in breadth-first order; hard links resolved once all primaries are known.
  const inodes: Inode[] = [root];
  const names: Buffer[] = [Buffer.alloc(0)];
  const linkInode: Array<Inode | null> = [null];
  const entryOf = new Map<Inode, number>([[root, 0]]);
  const childLists: number[][] = [];
  for (let e = 0; e < inodes.length; e++) {
    const inode = inodes[e];
    const list: number[] = [];
    childLists.push(list);
    if (linkInode[e] !== null || inode.children === null) continue;
    if ((inode.mode & S_IFMT) !== S_IFDIR) throw new ImageWriteError('only directories can have children');
    for (const d of inode.children) {
      list.push(inodes.length);
      names.push(d.name);
      if (d.hardlink) {
        inodes.push(d.inode);
        linkInode.push(d.inode);
        continue;
      }
      if (entryOf.has(d.inode)) {
        if (d.inode.children) throw new ImageWriteError(`directory ${d.name.toString()} appears twice in the tree`);
        throw new ImageWriteError('an inode is reachable under two primary names');
      }
      entryOf.set(d.inode, inodes.length);
      inodes.push(d.inode);
      linkInode.push(null);
    }
  }
  const count = inodes.length;

  let poolSize = 0;
  let xattrCount = 0;
  for (let e = 0; e < count; e++) {
    poolSize += names[e].length;
    if (linkInode[e] !== null) continue;
    const inode = inodes[e];
    poolSize += (inode.payload?.length ?? 0) + (inode.content?.length ?? 0) + (inode.digest?.length ?? 0);
    for (const x of inode.xattrs) poolSize += x.key.length + x.value.length;
    xattrCount += inode.xattrs.length;
  }
  const pool = Buffer.allocUnsafe(poolSize);
  let at = 0;
  const put = (b: Uint8Array): number => {
    pool.set(b, at);
    at += b.length;
    return at - b.length;
  };

  const flat: FlatTree = {
    count,
    pool,
    childStart: new Int32Array(count + 1),
    children: new Int32Array(count),
    nameStart: new Int32Array(count),
    nameEnd: new Int32Array(count),
    linkTo: new Int32Array(count).fill(-1),
    mode: new Uint32Array(count),
    nlink: new Uint32Array(count),
    uid: new Uint32Array(count),
    gid: new Uint32Array(count),
    rdev: new Float64Array(count),
    size: new Float64Array(count),
    mtimeSec: new Float64Array(count),
    mtimeNsec: new Uint32Array(count),
    payloadStart: new Int32Array(count).fill(-1),
    payloadEnd: new Int32Array(count).fill(-1),
    contentStart: new Int32Array(count).fill(-1),
    contentEnd: new Int32Array(count).fill(-1),
    digest: new Int32Array(count).fill(-1),
    xattrStart: new Int32Array(count + 1),
    xattrKeyStart: new Int32Array(xattrCount),
    xattrKeyEnd: new Int32Array(xattrCount),
    xattrValueStart: new Int32Array(xattrCount),
    xattrValueEnd: new Int32Array(xattrCount),
  };
  let child = 0;
  let xattr = 0;
  let digestSize = 0;
  for (let e = 0; e < count; e++) {
    flat.childStart[e] = child;
    for (const c of childLists[e]) flat.children[child++] = c;
    flat.nameStart[e] = put(names[e]);
    flat.nameEnd[e] = at;
    flat.xattrStart[e] = xattr;
    const target = linkInode[e];
    if (target !== null) {
      const to = entryOf.get(target);
      if (to === undefined) throw new ImageWriteError('a hard link points outside the tree');
      if ((target.mode & S_IFMT) === S_IFDIR) throw new ImageWriteError('a hard link points at a directory');
      flat.linkTo[e] = to;
      continue;
    }
    const inode = inodes[e];
    flat.mode[e] = inode.mode;
    flat.nlink[e] = inode.nlink;
    flat.uid[e] = inode.uid;
    flat.gid[e] = inode.gid;
    flat.rdev[e] = inode.rdev;
    flat.size[e] = inode.size;
    flat.mtimeSec[e] = inode.mtimeSec;
    flat.mtimeNsec[e] = inode.mtimeNsec;
    if (inode.payload) {
      flat.payloadStart[e] = put(inode.payload);
      flat.payloadEnd[e] = at;
    }
    if (inode.content) {
      flat.contentStart[e] = put(inode.content);
      flat.contentEnd[e] = at;
    }
    if (inode.digest) {
      if (digestSize === 0 && (inode.digest.length === 32 || inode.digest.length === 64)) flat.digestSize = digestSize = inode.digest.length;
      if (inode.digest.length !== digestSize) {
        throw new ImageWriteError(digestSize === 0 ? `fs-verity digest of ${inode.digest.length} bytes (SHA-256 digests are 32, SHA-512 digests 64)` : `fs-verity digests of ${digestSize} and ${inode.digest.length} bytes in one tree (one algorithm per image)`);
      }
      flat.digest[e] = put(inode.digest);
    }
    for (const x of inode.xattrs) {
      flat.xattrKeyStart[xattr] = put(x.key);
      flat.xattrKeyEnd[xattr] = at;
      flat.xattrValueStart[xattr] = put(x.value);
      flat.xattrValueEnd[xattr] = at;
      xattr++;
    }
  }
  flat.childStart[count] = child;
  flat.xattrStart[count] = xattr;
  return flat;
}
