/**
 * Trees the tests build themselves (so the suite means something on a clone
 * without ../shared), and the comparison of a mounted plain-EROFS view of an
 * image with the tree it was written from.
 */
import assert from 'node:assert/strict';
import { lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { newInode, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, type Dirent, type Inode } from '../../src/tree/model.js';
import { readXattrs, cPath } from '../../src/sys/fs.js';

const b = (s: string) => Buffer.from(s, 'utf8');

function add(dir: Inode, name: string | Buffer, inode: Inode, hardlink = false): Inode {
  const entry: Dirent = { name: typeof name === 'string' ? b(name) : name, inode, hardlink };
  dir.children!.push(entry);
  dir.children!.sort((x, y) => Buffer.compare(x.name, y.name));
  if (hardlink) inode.nlink++;
  return inode;
}

function digestOf(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

/** A tree exercising every corner the writer has: built in code, no files needed. */
export function sampleTree(): Inode {
  const t0 = 1700000000;
  const root = newInode(S_IFDIR | 0o755, { mtimeSec: t0, xattrs: [{ key: b('user.root'), value: b('r') }] });
  for (const size of [0, 1, 17, 2048, 2049, 4095, 4096, 4097]) {
    const content = Buffer.alloc(size, size & 0xff);
    for (let i = 0; i < size; i++) content[i] = (i * 31 + size) & 0xff;
    add(root, `inline-${size}`, newInode(S_IFREG | 0o644, { size, content: size ? content : null, mtimeSec: t0 }));
  }
  const ext = add(
    root,
    'external',
    newInode(S_IFREG | 0o640, {
      size: 123456,
      digest: digestOf('external'),
      payload: b(`${digestOf('external').toString('hex').slice(0, 2)}/${digestOf('external').toString('hex').slice(2)}`),
      mtimeSec: t0 + 5,
      mtimeNsec: 123456789,
      uid: 1000,
      gid: 100,
    }),
  );
  add(root, 'external-link', ext, true);
  add(root, 'no-digest', newInode(S_IFREG | 0o600, { size: 99, payload: b('aa/bbbb'), mtimeSec: t0 }));
  add(root, 'big-ids', newInode(S_IFREG | 0o644, { size: 3, content: b('ids'), uid: 70000, gid: 80000, mtimeSec: t0 }));
  add(root, 'old', newInode(S_IFREG | 0o644, { size: 0, mtimeSec: 0, mtimeNsec: 1 }));
  add(root, 'symlink', newInode(S_IFLNK | 0o777, { size: 6, payload: b('target'), mtimeSec: t0 }));
  const long = 'x/'.repeat(1990) + 'end';
  add(root, 'long-symlink', newInode(S_IFLNK | 0o777, { size: long.length, payload: b(long), mtimeSec: t0 }));
  add(root, 'chardev', newInode(S_IFCHR | 0o600, { rdev: (4 << 8) | 1, mtimeSec: t0 }));
  add(root, 'blockdev', newInode(S_IFBLK | 0o600, { rdev: (8 << 8) | 3, mtimeSec: t0 }));
  add(root, 'fifo', newInode(S_IFIFO | 0o644, { mtimeSec: t0 }));
  add(root, 'name with spaces and ünïcödé', newInode(S_IFREG | 0o644, { size: 2, content: b('hi'), mtimeSec: t0 }));
  add(root, Buffer.from([0x01, 0x7f, 0xff, 0x20]), newInode(S_IFREG | 0o644, { mtimeSec: t0 }));
  const x = add(
    root,
    'xattrs',
    newInode(S_IFREG | 0o644, {
      size: 1,
      content: b('x'),
      mtimeSec: t0,
      xattrs: [
        { key: b('user.shared'), value: b('same') },
        { key: b('user.unique'), value: Buffer.from([0, 1, 2, 255]) },
        { key: b('trusted.overlay.custom'), value: b('escaped') },
        { key: b('security.selinux'), value: b('system_u:object_r:usr_t:s0\0') },
        { key: b('trusted.plain'), value: b('') },
      ],
    }),
  );
  assert.ok(x);
  const sub = add(root, 'sub', newInode(S_IFDIR | 0o750, { mtimeSec: t0 + 1, xattrs: [{ key: b('user.shared'), value: b('same') }] }));
  add(sub, 'whiteout', newInode(S_IFCHR | 0o000, { rdev: 0, mtimeSec: t0 }));
  add(sub, 'nested', newInode(S_IFDIR | 0o700, { mtimeSec: t0 }));
  // A directory needing several blocks of entries.
  const many = add(root, 'many', newInode(S_IFDIR | 0o755, { mtimeSec: t0 }));
  for (let i = 0; i < 700; i++) {
    add(many, `entry-with-a-fairly-long-name-${String(i).padStart(5, '0')}`, newInode(S_IFREG | 0o644, { mtimeSec: t0, xattrs: [{ key: b('user.shared'), value: b('same') }] }));
  }
  return root;
}

function xattrMap(path: Buffer): Map<string, string> {
  const m = new Map<string, string>();
  for (const x of readXattrs(cPath(path))) m.set(x.key.toString('latin1'), x.value.toString('hex'));
  return m;
}

function expectedXattrs(inode: Inode, type: number, version: number, isRoot: boolean): Map<string, string> {
  const m = new Map<string, string>();
  for (const x of inode.xattrs) {
    let key = x.key.toString('latin1');
    if (key.startsWith('trusted.overlay.')) key = `trusted.overlay.overlay.${key.slice('trusted.overlay.'.length)}`;
    m.set(key, x.value.toString('hex'));
  }
  if (type === S_IFREG && inode.size > 0 && !inode.content) {
    m.set('trusted.overlay.metacopy', inode.digest ? `00240001${inode.digest.toString('hex')}` : '');
    if (inode.payload && inode.payload.length) m.set('trusted.overlay.redirect', Buffer.concat([b('/'), inode.payload]).toString('hex'));
  }
  if (type === S_IFCHR && inode.rdev === 0) {
    m.set('trusted.overlay.overlay.whiteout', '');
    m.set('user.overlay.whiteout', '');
  }
  if (type === S_IFDIR && inode.children!.some((d) => !d.hardlink && (d.inode.mode & S_IFMT) === S_IFCHR && d.inode.rdev === 0)) {
    m.set('trusted.overlay.overlay.whiteouts', '');
    m.set('user.overlay.whiteouts', '');
    if (version >= 1) {
      m.set('trusted.overlay.overlay.opaque', '78');
      m.set('user.overlay.opaque', '78');
    }
  }
  if (isRoot) m.set('trusted.overlay.opaque', '79');
  return m;
}

/**
 * Compare a plain EROFS mount of an image with the tree it came from, allowing
 * for what the writer adds: overlay xattrs, escapes, whiteouts as files, the
 * root's 00..ff whiteouts.
 */
export function compareMountWithTree(mnt: string, root: Inode, version: number): number {
  let checked = 0;
  const visit = (path: Buffer, inode: Inode, isRoot: boolean) => {
    const where = path.toString();
    const st = lstatSync(path, { bigint: true });
    const type = inode.mode & S_IFMT;
    const isWhiteout = type === S_IFCHR && inode.rdev === 0;
    const wantType = isWhiteout ? S_IFREG : type;
    assert.equal(Number(st.mode) & S_IFMT, wantType, `${where}: type`);
    assert.equal(Number(st.mode) & 0o7777, inode.mode & 0o7777, `${where}: permissions`);
    assert.equal(Number(st.uid), inode.uid, `${where}: uid`);
    assert.equal(Number(st.gid), inode.gid, `${where}: gid`);
    assert.equal(st.mtimeNs, BigInt(inode.mtimeSec) * 1_000_000_000n + BigInt(inode.mtimeNsec), `${where}: mtime`);
    if (type === S_IFREG) assert.equal(Number(st.size), inode.size, `${where}: size`);
    if (type === S_IFLNK) assert.deepEqual(readlinkSync(path, { encoding: 'buffer' }), inode.payload, `${where}: symlink target`);
    if (type === S_IFCHR || type === S_IFBLK) {
      if (!isWhiteout) assert.equal(Number(st.rdev), inode.rdev, `${where}: rdev`);
    }
    if (type === S_IFREG && inode.content) assert.deepEqual(readFileSync(path), inode.content, `${where}: content`);
    assert.deepEqual(xattrMap(path), expectedXattrs(inode, type, version, isRoot), `${where}: xattrs`);
    if (type === S_IFDIR) {
      let subdirs = 0;
      for (const d of inode.children!) if (!d.hardlink && (d.inode.mode & S_IFMT) === S_IFDIR) subdirs++;
      assert.equal(Number(st.nlink), 2 + subdirs, `${where}: directory link count`);
      const names = readdirSync(path, { encoding: 'buffer' }).map((n) => n.toString('latin1'));
      const want = inode.children!.map((d) => d.name.toString('latin1'));
      if (isRoot) for (let i = 0; i < 256; i++) want.push(i.toString(16).padStart(2, '0'));
      assert.deepEqual([...new Set(names)].sort(), [...new Set(want)].sort(), `${where}: entries`);
      for (const d of inode.children!) visit(Buffer.concat([path, b('/'), d.name]), d.inode, false);
    } else assert.equal(Number(st.nlink), inode.nlink, `${where}: link count`);
    checked++;
  };
  visit(b(mnt), root, true);
  return checked;
}
