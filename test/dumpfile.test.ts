import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { DumpParseError, parseDump, parseDumpFlat, writeDump, writeDumpChunks } from '../src/dumpfile/index.js';
import { inflate, type FlatTree } from '../src/tree/flat.js';
import { ComposefsError } from '../src/errors.js';
import { newInode, S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG, walk, type Dirent, type Inode } from '../src/tree/model.js';
import { conformanceDir, NO_CONFORMANCE } from './helpers/paths.js';

const b = (s: string) => Buffer.from(s, 'latin1');
const parse = (text: string, strict = false) => parseDump(b(text), { strict });
const dump = (root: Inode) => writeDump(root).toString('latin1');

function child(dir: Inode, name: string): Dirent {
  const d = dir.children?.find((c) => c.name.equals(b(name)));
  assert.ok(d, `no entry ${name}`);
  return d;
}

function at(root: Inode, path: string): Dirent {
  const parts = path.split('/').filter(Boolean);
  let d = child(root, parts[0]);
  for (const p of parts.slice(1)) d = child(d.inode, p);
  return d;
}

/** The error parseDump throws for `text`, checked to be a one-line DumpParseError. */
function parseError(text: string | Buffer, strict = false): DumpParseError {
  try {
    parseDump(typeof text === 'string' ? b(text) : text, { strict });
  } catch (e) {
    assert.ok(e instanceof DumpParseError, `not a DumpParseError: ${e}`);
    assert.ok(e instanceof ComposefsError);
    assert.match(e.message, /^line \d+: [a-z]+: \S/);
    assert.ok(!/[\n\r]/.test(e.message), `message spans lines: ${JSON.stringify(e.message)}`);
    return e;
  }
  assert.fail(`parsed without error: ${JSON.stringify(typeof text === 'string' ? text : text.toString('latin1'))}`);
}

const ROOT = '/ 4096 40755 2 0 0 0 0.0 - - -\n';
const D64 = 'ab'.repeat(32);

// ---- Trees from dumps written here ----------------------------------------

test('every field of every kind of file is read', () => {
  const text =
    '/ 4096 40755 3 0 0 0 1700000000.5 - - - user.root=r\n' +
    `/dir 4096 40750 2 1000 1001 0 12.345 - - - security.selinux=u:r:t:s0\\x00\n` +
    `/dir/file 123456 100644 1 7 8 0 1.2 ab/cdef - ${D64} user.a=1 trusted.b=\\x00\\xff\n` +
    '/dir/inline 5 100600 1 0 0 0 3.4 - hello -\n' +
    '/link 6 120777 1 0 0 0 5.6 target - -\n' +
    '/chr 0 20644 1 0 0 1025 7.8 - - -\n' +
    '/blk 0 60600 1 0 0 2049 9.10 - - -\n' +
    '/fifo 0 10644 1 0 0 0 11.12 - - -\n' +
    '/sock 0 140755 1 0 0 0 13.14 - - -\n';
  const root = parse(text, true);
  assert.equal(root.mode, S_IFDIR | 0o755);
  assert.equal(root.nlink, 3);
  assert.equal(root.mtimeSec, 1700000000);
  assert.equal(root.mtimeNsec, 5);
  assert.deepEqual(root.xattrs, [{ key: b('user.root'), value: b('r') }]);
  assert.deepEqual(
    root.children!.map((c) => c.name.toString()),
    ['blk', 'chr', 'dir', 'fifo', 'link', 'sock'],
  );

  const dir = at(root, 'dir').inode;
  assert.equal(dir.mode, 0o40750);
  assert.equal(dir.uid, 1000);
  assert.equal(dir.gid, 1001);
  assert.equal(dir.mtimeNsec, 345);
  assert.deepEqual(dir.xattrs[0].value, b('u:r:t:s0\0'));

  const file = at(root, 'dir/file').inode;
  assert.equal(file.size, 123456);
  assert.deepEqual(file.payload, b('ab/cdef'));
  assert.equal(file.content, null);
  assert.deepEqual(file.digest, Buffer.from(D64, 'hex'));
  assert.deepEqual(file.xattrs, [
    { key: b('user.a'), value: b('1') },
    { key: b('trusted.b'), value: Buffer.from([0, 255]) },
  ]);

  const inline = at(root, 'dir/inline').inode;
  assert.deepEqual(inline.content, b('hello'));
  assert.equal(inline.size, 5);
  assert.equal(inline.payload, null);

  const link = at(root, 'link').inode;
  assert.equal(link.mode, S_IFLNK | 0o777);
  assert.deepEqual(link.payload, b('target'));
  assert.equal(link.size, 6);

  assert.equal(at(root, 'chr').inode.rdev, 1025);
  assert.equal(at(root, 'blk').inode.rdev, 2049);
  assert.equal(at(root, 'fifo').inode.children, null);
  assert.equal(at(root, 'sock').inode.mode, 0o140755);

  // The writer prints the same lines, depth first in name order.
  const lines = text.split('\n');
  assert.equal(dump(root), [0, 6, 5, 1, 2, 3, 7, 4, 8].map((i) => lines[i] + '\n').join(''));
});

test('escapes are decoded, and printed back the way the reference prints them', () => {
  const text =
    ROOT +
    '/a\\x20b\\\\c\\nd\\te\\rf=g 0 100644 1 0 0 0 0.0 - - - user.k\\x3dx=v=w user.empty=\n' +
    '/dash 1 100644 1 0 0 0 0.0 \\x2d \\x2d -\n' +
    '/hex 2 100644 1 0 0 0 0.0 - \\xAb\\x7f -\n' +
    '/\\xc3\\xbc 0 100644 1 0 0 0 0.0 - - -\n';
  const root = parse(text);
  const odd = root.children![0];
  assert.deepEqual(odd.name, b('a b\\c\nd\te\rf=g'));
  assert.deepEqual(odd.inode.xattrs, [
    { key: b('user.k=x'), value: b('v=w') },
    { key: b('user.empty'), value: b('') },
  ]);
  const dash = at(root, 'dash').inode;
  assert.deepEqual(dash.payload, b('-'));
  assert.deepEqual(dash.content, b('-'));
  assert.deepEqual(at(root, 'hex').inode.content, Buffer.from([0xab, 0x7f]));
  assert.deepEqual(root.children![3].name, Buffer.from([0xc3, 0xbc]));

  assert.equal(
    dump(root),
    ROOT +
      '/a\\x20b\\\\c\\nd\\te\\rf=g 0 100644 1 0 0 0 0.0 - - - user.k\\x3dx=v\\x3dw user.empty=\n' +
      '/dash 1 100644 1 0 0 0 0.0 \\x2d \\x2d -\n' +
      '/hex 2 100644 1 0 0 0 0.0 - \\xab\\x7f -\n' +
      '/\\xc3\\xbc 0 100644 1 0 0 0 0.0 - - -\n',
  );
});

test('children are sorted by name bytes whatever order the lines come in', () => {
  const root = parse(
    ROOT +
      '/z 4096 40755 2 0 0 0 0.0 - - -\n' +
      '/b 0 100644 1 0 0 0 0.0 - - -\n' +
      '/z/y 0 100644 1 0 0 0 0.0 - - -\n' +
      '/\\xff 0 100644 1 0 0 0 0.0 - - -\n' +
      '/a 0 100644 1 0 0 0 0.0 - - -\n' +
      '/z/x 0 100644 1 0 0 0 0.0 - - -\n' +
      '/B 0 100644 1 0 0 0 0.0 - - -\n',
  );
  assert.deepEqual(
    root.children!.map((c) => c.name.toString('latin1')),
    ['B', 'a', 'b', 'z', '\xff'],
  );
  assert.deepEqual(
    at(root, 'z').inode.children!.map((c) => c.name.toString()),
    ['x', 'y'],
  );
  const paths: string[] = [];
  walk(root, (p) => paths.push(p.toString('latin1')));
  assert.deepEqual(paths, ['/', '/B', '/a', '/b', '/z', '/z/x', '/z/y', '/\xff']);
});

test('paths are resolved like the reference: extra slashes skipped, parents must exist', () => {
  const root = parse(ROOT + '/d 4096 40755 2 0 0 0 0.0 - - -\n' + 'd//f 0 100644 1 0 0 0 0.0 - - -\n' + '//g 0 100644 1 0 0 0 0.0 - - -\n');
  assert.ok(at(root, 'd/f'));
  assert.ok(at(root, 'g'));
  assert.equal(parseError(ROOT + '/d 4096 40755 2 0 0 0 0.0 - - -\n/d/ 0 100644 1 0 0 0 0.0 - - -\n').message, "line 3: path: empty file name in '/d/'");
  assert.equal(parseError(ROOT + '/f 0 100644 1 0 0 0 0.0 - - -\n/f/x 0 100644 1 0 0 0 0.0 - - -\n').message, "line 3: path: parent of '/f/x' is not a directory");
  assert.equal(parseError(ROOT + '/f 0 100644 1 0 0 0 0.0 - - -\n/f/x/y 0 100644 1 0 0 0 0.0 - - -\n').message, "line 3: path: parent directory missing for '/f/x/y'");
  assert.equal(parseError(ROOT + '/a 0 100644 1 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - -\n').message, "line 3: path: '/a' already exists");
  // A duplicate after the names went out of order is still found.
  assert.match(parseError(ROOT + '/b 0 100644 1 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - -\n//b 0 100644 1 0 0 0 0.0 - - -\n').message, /^line 4: path: .* already exists$/);
  assert.match(parseError(ROOT + `/${'n'.repeat(256)} 0 100644 1 0 0 0 0.0 - - -\n`).message, /^line 2: path: file name of 256 bytes exceeds the maximum of 255$/);
  assert.ok(parse(ROOT + `/${'n'.repeat(255)} 0 100644 1 0 0 0 0.0 - - -\n`));
  assert.equal(parseError('/a 0 100644 1 0 0 0 0.0 - - -\n').message, "line 1: path: '/a' comes before the root directory '/'");
  assert.equal(parseError(ROOT + ROOT).message, 'line 2: path: a second root directory');
  assert.equal(parseError('/ 0 100644 1 0 0 0 0.0 - - -\n').message, 'line 1: path: the root must be a directory');
  // An escaped NUL ends a path, as in C.
  assert.ok(at(parse(ROOT + '/a\\x00junk 0 100644 1 0 0 0 0.0 - - -\n'), 'a'));
  assert.equal(parseError(ROOT + '\\x00 0 100644 1 0 0 0 0.0 - - -\n').message, 'line 2: path: empty path');
});

test('hard links point at the same inode; the target keeps the nlink its own line gives', () => {
  const text =
    ROOT +
    '/a 0 @100644 9 9 9 9 9.9 /b - - user.ignored=1\n' +
    `/b 10 100644 2 1 2 0 3.4 ab/cd - ${D64} user.x=y\n` +
    '/c 999 @120777 1 0 0 0 0.0 a - -\n' +
    '/d 4096 40755 2 0 0 0 0.0 - - -\n' +
    '/d/e 0 @100644 1 0 0 0 0.0 //b/ - -\n';
  const root = parse(text);
  const a = at(root, 'a');
  const b2 = at(root, 'b');
  const c = at(root, 'c');
  const e = at(root, 'd/e');
  assert.equal(b2.hardlink, false);
  for (const link of [a, c, e]) {
    assert.equal(link.hardlink, true);
    assert.equal(link.inode, b2.inode, 'same Inode object');
  }
  assert.equal(b2.inode.nlink, 2, 'nlink as on the target line, not counted up');
  assert.deepEqual(b2.inode.xattrs, [{ key: b('user.x'), value: b('y') }]);
  assert.equal(
    dump(root),
    ROOT +
      `/a 10 @100644 2 1 2 0 3.4 /b - ${D64} user.x=y\n` +
      `/b 10 100644 2 1 2 0 3.4 ab/cd - ${D64} user.x=y\n` +
      `/c 10 @100644 2 1 2 0 3.4 /b - ${D64} user.x=y\n` +
      '/d 4096 40755 2 0 0 0 0.0 - - -\n' +
      `/d/e 10 @100644 2 1 2 0 3.4 /b - ${D64} user.x=y\n`,
  );
});

test('long chains of links to links resolve to the first inode', () => {
  let text = ROOT + '/f0 0 100644 1 0 0 0 0.0 - - -\n';
  for (let i = 1; i < 20000; i++) text += `/f${i} 0 @100644 1 0 0 0 0.0 /f${i - 1} - -\n`;
  const root = parse(text);
  const first = at(root, 'f0').inode;
  assert.equal(root.children!.length, 20000);
  assert.ok(root.children!.every((c) => c.inode === first && c.hardlink === (c.name.toString() !== 'f0')));
  assert.match(dump(root), /^\/f9999 0 @100644 1 0 0 0 0\.0 \/f0 - -$/m);
});

test('bad hard links are refused', () => {
  const f = '/f 0 100644 1 0 0 0 0.0 - - -\n';
  assert.equal(parseError(ROOT + f + '/l 0 @100644 1 0 0 0 0.0 - - -\n').message, 'line 3: payload: hard link without a target path');
  assert.equal(parseError(ROOT + f + '/l 0 @100644 1 0 0 0 0.0 /nope - -\n').message, "line 3: payload: no target at '/nope' for the hard link");
  assert.equal(parseError(ROOT + f + '/l 0 @100644 1 0 0 0 0.0 /l - -\n').message, "line 3: payload: hard link to itself ('/l')");
  assert.equal(parseError(ROOT + '/d 0 @40755 1 0 0 0 0.0 /f - -\n').message, 'line 2: mode: directories cannot be hard-linked');
  assert.match(parseError(ROOT + '/x 0 @100644 1 0 0 0 0.0 /y - -\n/y 0 @100644 1 0 0 0 0.0 /x - -\n').message, /^line [23]: payload: hard link cycle through '\/[xy]'$/);
  // The reference reports the last broken link first.
  assert.equal(parseError(ROOT + '/l1 0 @100644 1 0 0 0 0.0 /n1 - -\n/l2 0 @100644 1 0 0 0 0.0 /n2 - -\n').message, "line 3: payload: no target at '/n2' for the hard link");
});

test('numbers are read like strtoull, with the reference\'s uid/gid quirk', () => {
  const root = parse(
    ROOT +
      '/a 0 0100644 1 -1 +5 0 -1.4294967297 - - -\n' +
      '/b 0 100644 1 99999999999999999999999 0 0 0.0 - - -\n' +
      '/c 0 100644 1 7 bad bad 0.0 - - -\n' +
      '/d 0 20100644 4294967297 0 0 0 0.0 - - -\n',
  );
  const a = at(root, 'a').inode;
  assert.equal(a.mode, 0o100644);
  assert.equal(a.uid, 4294967295);
  assert.equal(a.gid, 5);
  assert.equal(a.mtimeSec, -1);
  assert.equal(a.mtimeNsec, 1);
  assert.equal(at(root, 'b').inode.uid, 4294967295);
  // An invalid gid or rdev reads as 0 when uid is not 0 (the reference checks uid there).
  assert.equal(at(root, 'c').inode.gid, 0);
  const d = at(root, 'd').inode;
  assert.equal(d.mode, 0o20100644);
  assert.equal(d.nlink, 1);
  assert.match(dump(root), /^\/a 0 100644 1 4294967295 5 0 -1\.1 - - -$/m);
  assert.match(dump(root), /^\/d 0 20100644 1 0 0 0 0\.0 - - -$/m);

  assert.equal(parseError(ROOT + '/x 0 100644 1 0 bad 0 0.0 - - -\n').message, "line 2: gid: invalid number 'bad'");
  assert.equal(parseError(ROOT + '/x 0 100644 1 0 0 1x 0.0 - - -\n').message, "line 2: rdev: invalid number '1x'");
  assert.equal(parseError(ROOT + '/x 0 100644 1 0 0 0 5 - - -\n').message, "line 2: mtime: invalid nanoseconds in '5'");
  assert.equal(parseError(ROOT + '/x 0 100644 1 0 0 0 .5 - - -\n').message, "line 2: mtime: invalid seconds in '.5'");
  assert.equal(parseError(ROOT + '/x 0 100648 1 0 0 0 0.0 - - -\n').message, "line 2: mode: invalid number '100648'");
});

test('numbers past 2^53 are kept as near as a JS number allows, and print back stably', () => {
  const root = parse(
    ROOT +
      '/d 18446744073709551615 20644 1 0 0 9999999999999999999 -9223372036854775808.5 - - -\n' +
      '/e 123 60644 4294967295 4294967295 4294967295 9007199254740993 9223372036854775807.4294967297 - - -\n',
  );
  const d = at(root, 'd').inode;
  assert.equal(d.size, 2 ** 64);
  // rdev keeps its low 32 bits (all the image stores) and stays non-zero.
  assert.equal(d.rdev % 2 ** 32, Number(9999999999999999999n % 2n ** 32n));
  assert.equal(d.mtimeSec, -(2 ** 63));
  const e = at(root, 'e').inode;
  assert.equal(e.nlink, 4294967295);
  assert.equal(e.rdev % 2 ** 32, 1);
  assert.ok(e.mtimeSec < 2 ** 63);
  assert.equal(e.mtimeNsec, 1);
  const out = writeDump(root);
  assert.ok(writeDump(parseDump(out)).equals(out));
});

test('malformed lines give a one-line message naming the line, field and reason', () => {
  const cases: [string, string][] = [
    [ROOT + '/a 0 10x644 1 0 0 0 0.0 - - -\n', "line 2: mode: invalid number '10x644'"],
    [ROOT + '/a 0 644 1 0 0 0 0.0 - - -\n', 'line 2: mode: invalid mode 644: no valid file type'],
    [ROOT + '/missing/a 0 100644 1 0 0 0 0.0 - - -\n', "line 2: path: parent directory missing for '/missing/a'"],
    [ROOT + '/a\\q 0 100644 1 0 0 0 0.0 - - -\n', "line 2: path: unsupported escape '\\q'"],
    [ROOT + '/a\\x4 0 100644 1 0 0 0 0.0 - - -\n', 'line 2: path: no hex digits after escape \\x'],
    [ROOT + '/a\\xzz 0 100644 1 0 0 0 0.0 - - -\n', "line 2: path: invalid hex digits in escape '\\xzz'"],
    [ROOT + '/a\\ 0 100644 1 0 0 0 0.0 - - -\n', 'line 2: path: no character after escape \\'],
    [ROOT + '/a 0 100644\n', "line 2: nlink: invalid number ''"],
    ['/ 4096 40755\n', "line 1: nlink: invalid number ''"],
    [ROOT + '/a x 100644 1 0 0 0 0.0 - - -\n', "line 2: size: invalid number 'x'"],
    [ROOT + '/a 0 100644 1 0 0 0 0.0 - - - novalue\n', "line 2: xattr: missing '=' in 'novalue'"],
    [ROOT + '/a 0 100644 1 0 0 0 0.0 - - - a=1  b=2\n', "line 2: xattr: missing '=' in ''"],
    [ROOT + '/a 0 100644 1 0 0 0 0.0 - - - =v\n', "line 2: xattr: empty xattr name in '=v'"],
    [ROOT + `/a 0 100644 1 0 0 0 0.0 - - - ${'k'.repeat(256)}=v\n`, 'line 2: xattr: xattr name of 256 bytes exceeds the maximum of 255'],
    [ROOT + '/a 3 100644 1 0 0 0 0.0 - ab -\n', 'line 2: content: content is 2 bytes but size is 3'],
    [ROOT + '/a 0 100644 1 0 0 0 0.0 a\\ - -\n', 'line 2: payload: no character after escape \\'],
    [ROOT + '/a 5 100644 1 0 0 0 0.0 obj - abc\n', "line 2: digest: invalid fs-verity digest 'abc': expected 64 hex digits"],
    [ROOT + '/a 0 120777 1 0 0 0 0.0 - - -\n', 'line 2: payload: symlink without a target'],
    [ROOT + `/a 0 100644 1 0 0 0 0.0 ${'p'.repeat(4096)} - -\n`, 'line 2: payload: payload of 4096 bytes is too long (the limit is 4095)'],
    [ROOT + '\n', 'line 2: path: empty path'],
    ['', "line 1: path: no entries: a dump file needs at least the root directory '/'"],
    [ROOT + '/a\0 0 100644 1 0 0 0 0.0 - - -\n', 'line 2: line: NUL byte at column 3'],
  ];
  for (const [text, message] of cases) assert.equal(parseError(text).message, message, JSON.stringify(text));
});

test('limits: inline content, symlink targets, file size, xattr space', () => {
  assert.ok(parse(ROOT + `/a 5000 100644 1 0 0 0 0.0 - ${'x'.repeat(5000)} -\n`));
  assert.equal(parseError(ROOT + `/a 5001 100644 1 0 0 0 0.0 - ${'x'.repeat(5001)} -\n`).message, 'line 2: content: inline content of 5001 bytes exceeds the maximum of 5000');
  assert.equal(at(parse(ROOT + `/l 4095 120777 1 0 0 0 0.0 ${'t'.repeat(4095)} - -\n`, true), 'l').inode.size, 4095);
  assert.equal(parseError(ROOT + `/l 4096 120777 1 0 0 0 0.0 ${'t'.repeat(4096)} - -\n`).message, 'line 2: payload: symlink target of 4096 bytes is too long (the limit is 4095)');
  assert.equal(at(parse(ROOT + '/big 9007199254740992 100644 1 0 0 0 0.0 x - -\n'), 'big').inode.size, 2 ** 53);
  assert.equal(parseError(ROOT + '/big 9007199254740993 100644 1 0 0 0 0.0 x - -\n').message, 'line 2: size: file of 9007199254740993 bytes is too big for an image (the limit is 9007199254740992)');
  // Not a limit on other kinds of file.
  assert.ok(parse(ROOT + '/dev 18446744073709551615 20644 1 0 0 0 0.0 - - -\n'));
  // The too-big error is the reference's write-time error: parse errors on later lines come first.
  assert.equal(parseError(ROOT + '/big 9500000000000000 100644 1 0 0 0 0.0 x - -\n/bad x 100644 1 0 0 0 0.0 - - -\n').message, "line 3: size: invalid number 'x'");
  // 12 bytes of header, then 7 + name + value bytes per xattr, at most 32767 in all.
  const fits = `user.a=${'v'.repeat(32767 - 12 - 7 - 6)}`;
  assert.ok(parse(ROOT + `/x 0 100644 1 0 0 0 0.0 - - - ${fits}\n`));
  assert.equal(parseError(ROOT + `/x 0 100644 1 0 0 0 0.0 - - - ${fits}v\n`).message, "line 2: xattr: xattrs of this file exceed 32767 bytes (at 'user.a')");
  assert.match(parseError(ROOT + `/x 0 100644 1 0 0 0 0.0 - - - user.a=${'v'.repeat(65536)}\n`).message, /^line 2: xattrs: 65543 bytes of xattrs on one line exceed the maximum of 65535$/);
});

test('setting an xattr twice replaces it the way the reference does', () => {
  const root = parse(ROOT + '/x 0 100644 1 0 0 0 0.0 - - - a=1 b=2 c=3 a=4 b=5\n');
  // a replaced: c moves into a's slot, a=4 appended -> c b a; then b: a moves in, b=5 appended.
  assert.deepEqual(
    at(root, 'x').inode.xattrs.map((x) => `${x.key}=${x.value}`),
    ['c=3', 'a=4', 'b=5'],
  );
  // Same with enough xattrs that the parser indexes them.
  const many = Array.from({ length: 20 }, (_, i) => `k${i}=${i}`).join(' ');
  const r2 = parse(ROOT + `/x 0 100644 1 0 0 0 0.0 - - - ${many} k3=new k19=last\n`);
  const keys = at(r2, 'x').inode.xattrs.map((x) => `${x.key}=${x.value}`);
  assert.equal(keys.length, 20);
  // k3 replaced: k19 moves to slot 3, k3=new appended; k19 replaced: k3=new moves back to slot 3.
  assert.equal(keys[3], 'k3=new');
  assert.deepEqual(keys.slice(17), ['k17=17', 'k18=18', 'k19=last']);
});

test('strict mode makes exactly the reference\'s CFS_PARSE_STRICT checks', () => {
  const cases: [string, string][] = [
    [ROOT + '/a 0 100644 1 0 0 0 0.0 - - -', 'line 2: line: missing newline at the end of the file'],
    [ROOT + '/a 0 100644 1 0 0 5 0.0 - - -\n', 'line 2: rdev: device number 5 on a file that is not a device'],
    [ROOT + '/l 3 120777 1 0 0 0 0.0 target - -\n', "line 2: size: symlink size 3 differs from its target's length 6"],
    [ROOT + '/l 6 120777 1 0 0 0 0.0 target target -\n', 'line 2: content: a symlink cannot have content'],
  ];
  for (const [text, message] of cases) {
    assert.equal(parseError(text, true).message, message);
    const root = parse(text, false);
    const e = root.children![0].inode;
    if ((e.mode & 0o170000) === S_IFLNK) {
      assert.equal(e.size, 6, 'the size of a symlink is its target length');
      assert.equal(e.content, null, 'content on a symlink is dropped');
    } else {
      assert.equal(e.rdev, 0, 'rdev of a non-device is dropped');
    }
  }
  assert.equal(at(parse(ROOT + '/c 0 20644 1 0 0 5 0.0 - - -\n', true), 'c').inode.rdev, 5);
});

test('digests: 64 hex digits of either case; others only matter where the image uses them', () => {
  const root = parse(ROOT + `/a 5 100644 1 0 0 0 0.0 obj - ${D64.toUpperCase()}\n/d 4096 40755 2 0 0 0 0.0 - - zz\n/e 0 100644 1 0 0 0 0.0 - - -\n`);
  assert.deepEqual(at(root, 'a').inode.digest, Buffer.from(D64, 'hex'));
  assert.equal(at(root, 'd').inode.digest, null);
  assert.equal(dump(root).split('\n')[1], `/a 5 100644 1 0 0 0 0.0 obj - ${D64}`);
});

test('the writer prints a tree built in code', () => {
  const root = newInode(S_IFDIR | 0o755, { nlink: 3, mtimeSec: 10, mtimeNsec: 5 });
  const target = newInode(S_IFREG | 0o644, { size: 100, nlink: 2, payload: b('aa/bb'), digest: Buffer.alloc(32, 0x11), xattrs: [{ key: b('user.q'), value: b('a b') }] });
  const sub = newInode(S_IFDIR | 0o700, { nlink: 2, uid: 1, gid: 2 });
  root.children!.push(
    { name: b('a-link'), inode: target, hardlink: true },
    { name: b('dev'), inode: newInode(S_IFCHR | 0o600, { rdev: 259 }), hardlink: false },
    { name: b('sub'), inode: sub, hardlink: false },
  );
  sub.children!.push({ name: b('t'), inode: target, hardlink: false });
  const expected =
    '/ 0 40755 3 0 0 0 10.5 - - -\n' +
    `/a-link 100 @100644 2 0 0 0 0.0 /sub/t - ${'11'.repeat(32)} user.q=a\\x20b\n` +
    '/dev 0 20600 1 0 0 259 0.0 - - -\n' +
    '/sub 0 40700 2 1 2 0 0.0 - - -\n' +
    `/sub/t 100 100644 2 0 0 0 0.0 aa/bb - ${'11'.repeat(32)} user.q=a\\x20b\n`;
  assert.equal(dump(root), expected);
  const chunks: Buffer[] = [];
  writeDumpChunks(root, (c) => chunks.push(c));
  assert.equal(Buffer.concat(chunks).toString('latin1'), expected);
  // Printing does not change the tree, and parsing the output gives it back.
  const again = parse(expected);
  assert.deepEqual(again, root);
});

// ---- The flat tree ------------------------------------------------------------

/** The entry at `path` in a flat tree (by binary search through the children, as a reader would). */
function flatAt(flat: FlatTree, path: string): number {
  let node = 0;
  for (const part of path.split('/').filter(Boolean)) {
    const want = b(part);
    let found = -1;
    for (let k = flat.childStart[node]; k < flat.childStart[node + 1]; k++) {
      const c = flat.children[k];
      if (Buffer.from(flat.pool.subarray(flat.nameStart[c], flat.nameEnd[c])).equals(want)) found = c;
    }
    assert.ok(found >= 0, `no entry ${path}`);
    node = found;
  }
  return node;
}

test('parseDumpFlat: columns over the input, children sorted, links to the primary entry', () => {
  const text =
    ROOT +
    '/z 4096 40755 2 0 0 0 0.0 - - -\n' +
    `/z/f 10 100644 2 1 2 0 3.4 ab/cd - ${D64} user.x=\\x00y\n` +
    '/a\\x20b 0 @100644 1 0 0 0 0.0 /z/f - -\n' +
    '/b 0 @100644 1 0 0 0 0.0 /a\\x20b - -\n' +
    '/c 3 100644 1 0 0 0 0.0 - a\\nb -\n';
  const input = b(text);
  const flat = parseDumpFlat(input);
  assert.equal(flat.pool, input, 'the pool is the input itself');
  assert.equal(flat.count, 6);
  assert.equal(flat.mode[0], 0o40755);
  // The root's children in name order, whatever the line order.
  const names = (e: number) => {
    const out: string[] = [];
    for (let k = flat.childStart[e]; k < flat.childStart[e + 1]; k++) out.push(Buffer.from(flat.pool.subarray(flat.nameStart[flat.children[k]], flat.nameEnd[flat.children[k]])).toString('latin1'));
    return out;
  };
  assert.deepEqual(names(0), ['a b', 'b', 'c', 'z']);
  const f = flatAt(flat, 'z/f');
  assert.equal(flat.linkTo[f], -1);
  assert.equal(flat.linkTo[flatAt(flat, 'a b')], f);
  assert.equal(flat.linkTo[flatAt(flat, 'b')], f, 'a link to a link ends at the primary entry');
  assert.deepEqual(Buffer.from(flat.pool.subarray(flat.digest[f], flat.digest[f] + 32)), Buffer.from(D64, 'hex'));
  assert.equal(flat.xattrStart[f + 1] - flat.xattrStart[f], 1);
  const x = flat.xattrStart[f];
  assert.deepEqual(Buffer.from(flat.pool.subarray(flat.xattrValueStart[x], flat.xattrValueEnd[x])), b('\0y'));
  const c = flatAt(flat, 'c');
  assert.deepEqual(Buffer.from(flat.pool.subarray(flat.contentStart[c], flat.contentEnd[c])), b('a\nb'));
  assert.equal(flat.payloadStart[c], -1);
  assert.equal(flat.xattrStart[flat.count], 1);
  // parseDump() leaves the caller's buffer alone, and gives the same tree.
  const again = b(text);
  const root = parseDump(again);
  assert.ok(again.equals(b(text)), 'parseDump does not change its input');
  assert.equal(dump(root), dump(inflate(parseDumpFlat(b(text)))));
  assert.ok(!input.equals(b(text)), 'parseDumpFlat decodes in place');
});

/**
 * The same dump written the long way: every name's first byte escaped, every
 * number with a '+', a '/' doubled. The parser's scanner reads plain numbers
 * itself and leaves these to the strtoull emulation, compares undecoded
 * paths with the input's text and these with their decoded copy, and such
 * paths are walked rather than found on the chain of directories; both
 * must build the same tree.
 */
function theLongWay(text: string): string {
  return text
    .split('\n')
    .map((line) => {
      if (line === '') return line;
      const f = line.split(' ');
      if (f.length < 11) return line;
      if (f[0] !== '/') f[0] = f[0].replace(/\/([^/\\])/g, (_m, ch: string) => `/\\x${ch.charCodeAt(0).toString(16).padStart(2, '0')}`).replace(/^\//, '//');
      for (const i of [1, 3, 4, 5, 6]) f[i] = `+${f[i]}`;
      if (!f[2].startsWith('@')) f[2] = `0${f[2]}`;
      return f.join(' ');
    })
    .join('\n');
}

test('plain lines and the same lines written the long way build the same trees', (t) => {
  const samples = [FUZZ_SEED, ROOT + '/d 4096 40755 2 0 0 0 1.2 - - -\n/d/e 4096 40755 2 0 0 0 1.2 - - -\n/d/e/f 5 100644 1 0 0 0 1700000000.999999999 - hello -\n/d/g 2 120777 1 0 0 0 0.0 /d - -\n/h 0 20644 1 0 0 1025 0.0 - - -\n'];
  const dir = conformanceDir();
  if (dir !== null) {
    for (const v of ['config.dump.gz', 'config-with-hard-link.dump.gz']) samples.push(gunzipSync(readFileSync(join(dir, 'upstream', v))).toString('latin1'));
  } else {
    t.diagnostic(NO_CONFORMANCE);
  }
  for (const text of samples) {
    const plain = dump(parse(text));
    const long = theLongWay(text);
    assert.notEqual(long, text);
    assert.equal(dump(parse(long)), plain);
  }
});

// ---- Fuzzing -----------------------------------------------------------------

/** A small deterministic PRNG (mulberry32). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const FUZZ_SEED =
  ROOT +
  '/d 4096 40755 2 0 0 0 1.2 - - - user.a=\\x00\\xff security.selinux=x\n' +
  `/d/f 70 100644 1 0 0 0 3.4 ab/cd - ${D64} trusted.overlay.x=1\n` +
  '/d/i 3 100644 1 0 0 0 0.0 - a\\nb -\n' +
  '/l 2 120777 1 0 0 0 0.0 /d - -\n' +
  '/h 0 @100644 1 0 0 0 0.0 /d/f - -\n' +
  '/c 0 20644 1 0 0 259 0.0 - - -\n';

/** Parse must either give a tree that prints and re-parses to the same dump, or throw a DumpParseError. */
function fuzzOne(input: Buffer, strict: boolean): void {
  let root: Inode;
  try {
    root = parseDump(input, { strict });
  } catch (e) {
    if (!(e instanceof DumpParseError)) throw new Error(`${e} for ${JSON.stringify(input.toString('latin1'))}`);
    assert.ok(!/[\n\r]/.test(e.message));
    return;
  }
  let dirLink = false;
  walk(root, (_p, inode, d) => {
    if (d?.hardlink && inode.children) dirLink = true;
  });
  const out = writeDump(root);
  // The reference accepts a hard link whose target is a directory, but then refuses its own dump of it.
  if (dirLink) return;
  const again = writeDump(parseDump(out, { strict: false }));
  assert.ok(again.equals(out), `unstable dump for ${JSON.stringify(input.toString('latin1'))}`);
}

test('fuzz: mutated dumps parse or fail cleanly, and what parses prints back stably', () => {
  const next = rng(0xc0ffee);
  const seed = b(FUZZ_SEED);
  const alphabet = b(' /\\x@-=.\n0123456789abcdef\t\0+');
  for (let n = 0; n < 4000; n++) {
    const buf = Buffer.from(seed);
    let data = buf;
    const edits = 1 + Math.floor(next() * 4);
    for (let k = 0; k < edits; k++) {
      const pos = Math.floor(next() * data.length);
      const r = next();
      if (r < 0.4) data[pos] = alphabet[Math.floor(next() * alphabet.length)];
      else if (r < 0.6) data[pos] = Math.floor(next() * 256);
      else if (r < 0.8) data = Buffer.concat([data.subarray(0, pos), data.subarray(pos + 1 + Math.floor(next() * 8))]);
      else data = Buffer.concat([data.subarray(0, pos), data.subarray(pos, pos + Math.floor(next() * 40)), data.subarray(pos)]);
    }
    fuzzOne(data, next() < 0.5);
  }
  for (let n = 0; n < 500; n++) {
    const len = Math.floor(next() * 200);
    const data = Buffer.alloc(len);
    for (let i = 0; i < len; i++) data[i] = next() < 0.5 ? alphabet[Math.floor(next() * alphabet.length)] : Math.floor(next() * 256);
    fuzzOne(Buffer.concat([b(ROOT), data]), false);
    fuzzOne(data, false);
  }
});

// ---- Conformance vectors ---------------------------------------------------

const NON_STRICT = new Set(['no-newline.dump', 'longlink.dump', 'honggfuzz-longlink-unterminated.dump']);

function vectors(sub: string): { name: string; data: Buffer }[] | null {
  const dir = conformanceDir();
  if (dir === null) return null;
  const full = join(dir, sub);
  return readdirSync(full)
    .filter((f) => f.endsWith('.dump') || f.endsWith('.dump.gz'))
    .sort()
    .map((f) => {
      const raw = readFileSync(join(full, f));
      return { name: f, data: f.endsWith('.gz') ? gunzipSync(raw) : raw };
    });
}

test('conformance: every should-fail vector is refused with a one-line message', (t) => {
  const all = vectors('upstream');
  if (all === null) return t.skip(NO_CONFORMANCE);
  const bad = all.filter((v) => v.name.startsWith('should-fail-'));
  assert.ok(bad.length >= 14);
  const expected: Record<string, RegExp> = {
    'should-fail-big-inline.dump': /^line 2: content: inline content of 5004 bytes/,
    'should-fail-dir-hardlink.dump': /^line 2: mode: directories cannot be hard-linked/,
    'should-fail-dot-name.dump': /^line 2: path: invalid name '\.'/,
    'should-fail-dotdot-name.dump': /^line 2: path: invalid name '\.\.'/,
    'should-fail-empty-link-name.dump': /^line 2: payload: symlink without a target/,
    'should-fail-empty-name.dump': /^line 2: path: empty file name/,
    'should-fail-empty-xattr-key.dump': /^line 2: xattr: empty xattr name/,
    'should-fail-honggfuzz-long-xattr.dump': /^line 1: xattr: xattrs of this file exceed 32767 bytes/,
    'should-fail-long-link.dump': /^line 2: payload: symlink target of 7248 bytes is too long/,
    'should-fail-long-xattr-key.dump': /^line 2: xattrs: 123219 bytes of xattrs on one line/,
    'should-fail-long-xattr-value.dump': /^line 2: mode: invalid mode 644/,
    'should-fail-no-ftype.dump': /^line 2: mode: invalid mode 0/,
    'should-fail-self-hardlink.dump': /^line 2: payload: hard link to itself/,
    'should-fail-too-big.dump': /^line 2: size: file of 9500000000000000 bytes is too big/,
  };
  for (const v of bad) {
    const lax = parseError(v.data, false);
    assert.match(lax.message, expected[v.name] ?? /./, v.name);
    parseError(v.data, true);
  }
});

test('conformance: the three non-strict vectors parse only without strict', (t) => {
  const all = vectors('upstream');
  if (all === null) return t.skip(NO_CONFORMANCE);
  const found = all.filter((v) => NON_STRICT.has(v.name));
  assert.equal(found.length, 3);
  for (const v of found) {
    assert.ok(parseDump(v.data), v.name);
    parseError(v.data, true);
  }
  const longlink = parseDump(found.find((v) => v.name === 'longlink.dump')!.data);
  assert.equal(at(longlink, 'max-link').inode.size, 4095);
  const unterminated = parseDump(found.find((v) => v.name === 'honggfuzz-longlink-unterminated.dump')!.data);
  const chardev = at(unterminated, 'chardev').inode;
  assert.equal(chardev.mode & 0o170000, S_IFLNK, 'mode 20720777 has the symlink type bits');
  assert.equal(chardev.mode, 0o20720777);
});

test('conformance: every other upstream vector parses strictly, and parse -> write -> parse gives the same tree', (t) => {
  const all = vectors('upstream');
  if (all === null) return t.skip(NO_CONFORMANCE);
  const good = all.filter((v) => !v.name.startsWith('should-fail-'));
  assert.ok(good.length >= 13);
  for (const v of good) {
    const strict = !NON_STRICT.has(v.name);
    const tree = parseDump(v.data, { strict });
    const out = writeDump(tree);
    const again = parseDump(out, { strict: true });
    assert.deepStrictEqual(again, tree, v.name);
    assert.ok(writeDump(again).equals(out), v.name);
    // Canonical inputs come back byte for byte.
    if (strict) assert.ok(out.equals(v.data), `${v.name} is printed back as it was`);
  }
  const hl = parseDump(good.find((v) => v.name === 'config-with-hard-link.dump.gz')!.data);
  const link = at(hl, 'usr/bin/ls-hardlink');
  assert.equal(link.hardlink, true);
  assert.equal(link.inode, at(hl, 'usr/bin/ls').inode);
});

test('conformance: every generated dump is printed back byte for byte', (t) => {
  const all = vectors('generated');
  if (all === null) return t.skip(NO_CONFORMANCE);
  assert.ok(all.length >= 20);
  for (const v of all) {
    const out = writeDump(parseDump(v.data, { strict: true }));
    if (!out.equals(v.data)) {
      const a = out.toString('latin1').split('\n');
      const e = v.data.toString('latin1').split('\n');
      const i = a.findIndex((l, k) => l !== e[k]);
      assert.fail(`${v.name} line ${i + 1}:\n got      ${a[i]}\n expected ${e[i]}`);
    }
  }
});
