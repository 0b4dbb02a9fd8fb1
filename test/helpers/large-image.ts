/**
 * A large valid composefs image made in memory: `entries` regular files in
 * directories of 128, each redirected to an object (that need not exist),
 * with an xattr on one in eight. What it is for: a rewrite that takes the
 * CPU for a while.
 */
import { createHash } from 'node:crypto';
import { writeImage } from '../../src/erofs/writer.js';
import { digestToObjectPath } from '../../src/store/layout.js';
import { newInode, S_IFDIR, S_IFREG } from '../../src/tree/model.js';

export function largeImage(entries: number): Buffer {
  const root = newInode(S_IFDIR | 0o755, { mtimeSec: 1700000000 });
  const perDir = 128;
  for (let d = 0; d * perDir < entries; d++) {
    const dir = newInode(S_IFDIR | 0o755, { mtimeSec: 1700000000 + d });
    for (let f = 0; f < perDir && d * perDir + f < entries; f++) {
      const n = d * perDir + f;
      const digest = createHash('sha256').update(`object ${n}`).digest();
      const file = newInode(S_IFREG | 0o644, { size: 4096 + n, payload: Buffer.from(digestToObjectPath(digest)), digest, mtimeSec: 1700000000 + n });
      if (n % 8 === 0) file.xattrs.push({ key: Buffer.from('user.n'), value: Buffer.from(String(n)) });
      dir.children!.push({ name: Buffer.from(`file-${String(f).padStart(4, '0')}`), inode: file, hardlink: false });
    }
    root.children!.push({ name: Buffer.from(`dir-${String(d).padStart(6, '0')}`), inode: dir, hardlink: false });
  }
  return writeImage(root);
}
