/**
 * The random-access decoder (src/erofs/decoder.ts) on its own: images our
 * writer makes from the conformance dumps, every path looked up by name from
 * the root and its inode held to what the dump file says; and hand-damaged
 * images, where the decoder, the reader's walk and the FUSE view must refuse
 * with the one reason written here.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import {
  ENTRY_DOT,
  ENTRY_DOTDOT,
  ENTRY_NAME,
  ImageDecoder,
  ImageEntryError,
  newDirentRecord,
  newInodeRecord,
  type InodeRecord,
} from '../src/erofs/decoder.js';
import { ImageFormatError, readImage } from '../src/erofs/reader.js';
import { writeImage } from '../src/erofs/writer.js';
import { parseDump } from '../src/dumpfile/parse.js';
import { ImageView } from '../src/fuse/image.js';
import { ComposefsError } from '../src/errors.js';
import { S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, type Inode } from '../src/tree/model.js';
import { conformanceDir } from './helpers/paths.js';

const FT = { [S_IFREG]: 1, [S_IFDIR]: 2, [S_IFCHR]: 3, [S_IFLNK]: 7 } as Record<number, number>;

/** Every entry of a directory through the decoder's block and entry calls: names (latin1) -> nid, and what `.`/`..` point at. */
function listDirectory(d: ImageDecoder, dir: InodeRecord): { names: Map<string, { nid: number; ftype: number }>; dot: number; dotdot: number } {
  const names = new Map<string, { nid: number; ftype: number }>();
  let dot = -1;
  let dotdot = -1;
  const e = newDirentRecord();
  const blocks = d.dirBlocks(dir);
  const where: Array<[number, number]> = [];
  for (let k = 0; k < blocks; k++) where.push([d.dirBlockStart(k), d.dirBlockLength(k)]);
  for (const [start, len] of where) {
    const n = d.direntCount(dir.nid, start, len);
    for (let i = 0; i < n; i++) {
      const kind = d.dirent(dir.nid, start, len, n, i, e);
      if (kind === ENTRY_DOT) dot = e.nid;
      else if (kind === ENTRY_DOTDOT) dotdot = e.nid;
      else {
        assert.equal(kind, ENTRY_NAME);
        names.set(d.buf.toString('latin1', e.nameStart, e.nameEnd), { nid: e.nid, ftype: e.ftype });
      }
    }
  }
  return { names, dot, dotdot };
}

/** The stored xattrs of an inode as "full name=value" (latin1). */
function storedXattrs(d: ImageDecoder, rec: InodeRecord): Set<string> {
  const prefixes = ['', 'user.', 'system.posix_acl_access', 'system.posix_acl_default', 'trusted.', '', 'security.'];
  const out = new Set<string>();
  d.eachXattr(rec, (index, ns, nl, vs, ve) => out.add(`${prefixes[index]}${d.buf.toString('latin1', ns, ns + nl)}=${d.buf.toString('latin1', vs, ve)}`));
  return out;
}

test('the decoder finds every path of the conformance dumps by name, with the inode the dump file describes', (t) => {
  const dir = conformanceDir();
  if (!dir) return t.skip('no ../shared/conformance');
  let files = 0;
  let paths = 0;
  for (const sub of ['upstream', 'generated']) {
    const d0 = join(dir, sub);
    if (!existsSync(d0)) continue;
    for (const f of readdirSync(d0).sort()) {
      if (!/\.dump(\.gz)?$/.test(f) || f.startsWith('should-fail')) continue;
      const raw = readFileSync(join(d0, f));
      let tree: Inode;
      let image: Buffer;
      try {
        tree = parseDump(f.endsWith('.gz') ? gunzipSync(raw) : raw);
        image = writeImage(tree);
      } catch {
        continue; // vectors that need a lenient parse: not this test's material
      }
      files++;
      const d = new ImageDecoder(image);
      const root = d.root(newInodeRecord());
      const rootList = listDirectory(d, root);
      assert.equal(rootList.dot, d.header.rootNid, `${f}: / .`);
      assert.equal(rootList.dotdot, d.header.rootNid, `${f}: / ..`);
      const nidOf = new Map<Inode, number>();
      const stack: Array<{ node: Inode; rec: InodeRecord; path: string; nid: number }> = [{ node: tree, rec: root, path: '', nid: d.header.rootNid }];
      while (stack.length > 0) {
        const { node, rec, path, nid } = stack.pop()!;
        const list = path === '' ? rootList : listDirectory(d, rec);
        if (path !== '') assert.equal(list.dot, nid, `${f}: ${path}/.`);
        // The root also holds the 00..ff whiteouts the writer adds; every other directory holds exactly the dump's names.
        if (path !== '') assert.deepEqual([...list.names.keys()].sort(), node.children!.map((c) => c.name.toString('latin1')).sort(), `${f}: ${path}`);
        for (const child of node.children!) {
          const where = `${f}: ${path}/${child.name.toString('latin1')}`;
          paths++;
          const found = newDirentRecord();
          assert.ok(d.lookup(rec, child.name, found), `${where}: lookup`);
          assert.equal(found.nid, list.names.get(child.name.toString('latin1'))?.nid, `${where}: lookup and listing agree`);
          const c = child.inode;
          if (nidOf.has(c)) assert.equal(found.nid, nidOf.get(c), `${where}: a hard link names the same inode`);
          nidOf.set(c, found.nid);
          const r = d.inode(found.nid, newInodeRecord());
          const type = c.mode & S_IFMT;
          if (type === S_IFCHR && c.rdev === 0) {
            // A whiteout of the tree is stored escaped: a regular file the overlay xattrs mark.
            assert.equal(r.mode & S_IFMT, S_IFREG, `${where}: escaped whiteout`);
            continue;
          }
          assert.equal(r.mode, c.mode & 0xffff, `${where}: mode (EROFS keeps 16 bits)`);
          if (FT[type] !== undefined) assert.equal(found.ftype, FT[type], `${where}: dirent type`);
          assert.equal(r.uid, c.uid, `${where}: uid`);
          assert.equal(r.gid, c.gid, `${where}: gid`);
          assert.equal(r.mtimeSec, c.mtimeSec, `${where}: mtime`);
          if (type !== S_IFDIR) {
            assert.equal(r.size, c.size, `${where}: size`);
            assert.equal(r.nlink, c.nlink, `${where}: nlink`);
          }
          if (type === S_IFCHR || type === 0o060000) assert.equal(r.u, c.rdev, `${where}: rdev`);
          if (type === S_IFLNK) assert.deepEqual(d.symlinkTarget(r), c.payload, `${where}: target`);
          if (type === S_IFREG && c.content && c.content.length > 0) assert.deepEqual(d.data(r), c.content, `${where}: inline content`);
          const stored = storedXattrs(d, r);
          for (const x of c.xattrs) {
            const key = x.key.toString('latin1');
            const escaped = key.startsWith('trusted.overlay.') ? `trusted.overlay.overlay.${key.slice('trusted.overlay.'.length)}` : key;
            assert.ok(stored.has(`${escaped}=${x.value.toString('latin1')}`), `${where}: xattr ${key}`);
          }
          if (type === S_IFREG && c.payload) assert.ok(stored.has(`trusted.overlay.redirect=/${c.payload.toString('latin1')}`), `${where}: redirect`);
          if (type === S_IFDIR) {
            assert.equal(listDirectory(d, r).dotdot, nid, `${where}/..`);
            stack.push({ node: c, rec: r, path: `${path}/${child.name.toString('latin1')}`, nid: found.nid });
          }
        }
      }
      const missing = newDirentRecord();
      assert.equal(d.lookup(root, Buffer.from('no such name \u00ff'), missing), false, `${f}: a name not there`);
    }
  }
  t.diagnostic(`${files} dump files, ${paths} paths looked up`);
  assert.ok(files > 0, 'some conformance dump parsed');
});

// ------------------------------------------------------------------ damage

const DUMP = [
  '/ 4096 40755 3 0 0 0 0.0 - - -',
  '/dir 4096 40755 2 0 0 0 0.0 - - -',
  '/dir/zzname1 5 100644 1 0 0 0 0.0 - hello -',
  '/link 8 120777 1 0 0 0 0.0 zztarget - -',
  '/withx 0 100644 1 0 0 0 0.0 - - - user.zzxattr=v',
  '',
].join('\n');

function fresh(): { image: Buffer; metaStart: number; rootNid: number } {
  const image = writeImage(parseDump(Buffer.from(DUMP)));
  return { image, metaStart: image.readUInt32LE(1024 + 40) * 4096, rootNid: image.readUInt16LE(1024 + 14) };
}

/** Every unique occurrence of `text` in the image (the test's own landmark, found without the decoder). */
function at(image: Buffer, text: string): number {
  const i = image.indexOf(text, 0, 'latin1');
  assert.ok(i > 0, text);
  assert.equal(image.indexOf(text, i + 1, 'latin1'), -1, `${text} is unique`);
  return i;
}

/** The reason the reader refuses the image with, and the reason of the first failing request of a FUSE walk to `path`. */
function refusals(image: Buffer, request: (view: ImageView) => void): { reader: string; view: string } {
  let reader = '';
  try {
    readImage(image);
  } catch (e) {
    assert.ok(e instanceof ImageFormatError, String(e));
    reader = e.reason;
  }
  let view = '';
  try {
    request(new ImageView(image));
  } catch (e) {
    assert.ok(e instanceof ComposefsError && e instanceof ImageFormatError, `the view throws ImageFormatErrors: ${String(e)}`);
    view = e.reason;
  }
  return { reader, view };
}

const walkTo = (view: ImageView, names: string[]) => {
  let ino = view.inode(view.rootNid);
  for (const name of names) {
    let hit: number | null = null;
    view.readdir(ino, 0, (e) => {
      if (view.name(e).toString('latin1') === name) hit = e.nid;
      return true;
    });
    const e = view.lookup(ino, Buffer.from(name, 'latin1'));
    ino = view.inode(e?.nid ?? hit ?? -1);
  }
  return ino;
};

test('damage: a "/" in a stored name', () => {
  const { image } = fresh();
  const i = at(image, 'zzname1');
  image[i + 2] = 0x2f;
  const dirNid = walkTo(new ImageView(fresh().image), ['dir']).nid;
  const expected = `inode ${dirNid}: entry name 'zz/ame1' contains '/' or NUL`;
  assert.deepEqual(refusals(image, (v) => walkTo(v, ['dir', 'zz/ame1'])), { reader: expected, view: expected });
});

test('damage: an xattr name index composefs has no prefix for', () => {
  const { image, metaStart } = fresh();
  const i = at(image, 'zzxattr');
  image[i - 4 + 1] = 9; // the entry header: name length, name index, value size (u16)
  const nid = walkTo(new ImageView(fresh().image), ['withx']).nid;
  assert.ok(nid * 32 + metaStart < i);
  const expected = `inode ${nid}: unsupported xattr name index 9`;
  assert.deepEqual(refusals(image, (v) => v.xattrs(walkTo(v, ['withx']))), { reader: expected, view: expected });
});

test('damage: a symlink target longer than PATH_MAX allows', () => {
  const { image, metaStart } = fresh();
  // A compact inode without xattrs: its inline target right after its 32 bytes.
  const inode = at(image, 'zztarget') - 32;
  assert.equal(image.readUInt16LE(inode + 4), 0o120777);
  image.writeUInt32LE(5000, inode + 8);
  const nid = (inode - metaStart) / 32;
  const expected = `inode ${nid}: symlink target of 5000 bytes is too long (the limit is 4095)`;
  assert.deepEqual(refusals(image, (v) => v.symlinkTarget(walkTo(v, ['link']))), { reader: expected, view: expected });
});

test('damage: a root that is not a directory refuses the whole image, in the view too', () => {
  const { image, metaStart, rootNid } = fresh();
  image.writeUInt16LE(0o100644, metaStart + rootNid * 32 + 4);
  const expected = `root inode ${rootNid} is not a directory`;
  assert.deepEqual(refusals(image, () => {}), { reader: expected, view: expected });
  assert.throws(() => new ImageView(image), { message: `/: ${expected}` });
});

test('damage: an entry naming an inode past the end of the image', () => {
  const { image } = fresh();
  const name = at(image, 'zzname1');
  // The dir's block holds ., .., zzname1: three 12-byte dirents, then the names '.', '..', 'zzname1'.
  const block = name - 36 - 3;
  assert.deepEqual([0, 1, 2].map((i) => image.readUInt16LE(block + i * 12 + 8)), [36, 37, 39]);
  image.writeUInt32LE(0xffffffff, block + 2 * 12);
  const expected = `inode 4294967295 lies outside the image (${image.length} bytes)`;
  assert.deepEqual(refusals(image, (v) => walkTo(v, ['dir', 'zzname1'])), { reader: expected, view: expected });
  const d = new ImageDecoder(image);
  assert.throws(() => d.inode(0xffffffff, newInodeRecord()), (e) => e instanceof ImageEntryError && e.code === 'bounds' && e.reason === expected);
});
