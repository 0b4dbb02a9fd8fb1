/**
 * `cfs fsck`: the image's structure, and with --basedir its objects: each
 * problem with its path, the exit status, --json. Damaged images are
 * cross-checked with fsck.erofs where it is installed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeImage } from '../src/erofs/writer.js';
import { fsckImage } from '../src/check/fsck.js';
import { fsverityDigest } from '../src/fsverity/index.js';
import { digestToObjectPath } from '../src/store/layout.js';
import { S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG, newInode, walk, type Inode } from '../src/tree/model.js';
import { Rng, layoutOf, normalizeTree, randomTree } from './fuzz-long.js';
import { cliPath } from './helpers/paths.js';

const B = (s: string) => Buffer.from(s);
const has = (tool: string) => spawnSync('sh', ['-c', `command -v ${tool}`]).status === 0;

function fsck(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(cliPath('cfs'), ['fsck', ...args], { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

interface Fixture {
  image: string;
  store: string;
  store2: string;
}

/** Five external files; the store has: one right, one missing, one short, one with other bytes, one misnamed; a second store has the missing one. */
function fixture(dir: string): Fixture {
  const store = join(dir, 'store');
  const store2 = join(dir, 'store2');
  const root = newInode(S_IFDIR | 0o755);
  const sub = newInode(S_IFDIR | 0o755);
  root.children!.push({ name: B('files'), inode: sub, hardlink: false });
  const put = (base: string, path: string, data: Buffer) => {
    mkdirSync(join(base, path.slice(0, 2)), { recursive: true });
    writeFileSync(join(base, path), data);
  };
  const add = (name: string, data: Buffer, stored: Buffer | null, storeIn = store, payload?: string) => {
    const digest = fsverityDigest(data);
    const path = payload ?? digestToObjectPath(digest);
    if (stored) put(storeIn, path, stored);
    sub.children!.push({ name: B(name), inode: newInode(S_IFREG | 0o644, { size: data.length, payload: B(path), digest }), hardlink: false });
  };
  const good = Buffer.alloc(5000, 1);
  add('good', good, good);
  add('missing', B('not in the first store'), B('not in the first store'), store2);
  add('short', Buffer.alloc(9000, 2), Buffer.alloc(100, 2));
  const other = Buffer.alloc(7000, 3);
  const tampered = Buffer.from(other);
  tampered[10] ^= 1;
  add('tampered', other, tampered);
  // Named after one digest, recorded with another: the image itself disagrees.
  add('misnamed', B('misnamed content'), B('misnamed content'), store, digestToObjectPath(fsverityDigest(B('something else'))));
  normalizeTree(root);
  const image = join(dir, 'img');
  writeFileSync(image, writeImage(root));
  return { image, store, store2 };
}

test('a clean image is clean: exit 0, one summary line', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-fsck-'));
  try {
    const rnd = new Rng(7);
    for (let i = 0; i < 5; i++) {
      const image = join(dir, `clean${i}.img`);
      const tree = randomTree(rnd, { entries: 60 });
      // Every redirect an object name (random trees also hold 'some/object', which fsck flags).
      walk(tree, (_p, inode) => {
        if (inode.payload && (inode.mode & 0o170000) === S_IFREG && !/^[0-9a-f]{2}\/[0-9a-f]{62}$/.test(inode.payload.toString('latin1'))) inode.payload = B(digestToObjectPath(fsverityDigest(inode.payload)));
      });
      writeFileSync(image, writeImage(tree));
      const r = fsck([image]);
      assert.equal(r.status, 0, r.stdout + r.stderr);
      assert.match(r.stdout, /^.*clean\d?\.img: clean, \d+ inodes\n$/);
      if (has('fsck.erofs')) assert.equal(spawnSync('fsck.erofs', [image]).status, 0, 'fsck.erofs agrees');
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('objects: missing, wrong size, wrong digest and wrong name are reported at their paths', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-fsck-'));
  try {
    const { image, store, store2 } = fixture(dir);
    const r = fsck([`--basedir=${store}`, image]);
    assert.equal(r.status, 1, r.stderr);
    const lines = r.stdout.trimEnd().split('\n');
    const byPath = (p: string) => lines.filter((l) => l.startsWith(`${p}: `));
    assert.equal(byPath('/files/good').length, 0);
    assert.match(byPath('/files/missing').join('\n'), /is missing from/);
    assert.match(byPath('/files/short').join('\n'), /has 100 bytes, the image says 9000/);
    assert.match(byPath('/files/tampered').join('\n'), /has fs-verity digest [0-9a-f]{64}, the image expects [0-9a-f]{64}/);
    assert.match(byPath('/files/misnamed').join('\n'), /is named after digest/);
    assert.match(lines[lines.length - 1], /: \d+ problems found, \d+ inodes, 5 objects checked \(1 missing, 3 bad\)$/);
    // Stores are searched in order: the second has the missing object.
    const r2 = fsck([`--basedir=${store}`, `--basedir=${store2}`, image]);
    assert.equal(r2.status, 1);
    assert.equal(r2.stdout.split('\n').filter((l) => l.startsWith('/files/missing: ')).length, 0);
    // Without a store only the image's own disagreement is found.
    const r3 = fsck([image]);
    assert.equal(r3.status, 1);
    assert.deepEqual(
      r3.stdout.trimEnd().split('\n').slice(0, -1).map((l) => l.split(':')[0]),
      ['/files/misnamed'],
    );
    // --json: one object with the same problems.
    const j = fsck(['--json', `--basedir=${store}`, image]);
    assert.equal(j.status, 1);
    const report = JSON.parse(j.stdout);
    assert.equal(report.ok, false);
    assert.equal(report.image, image);
    assert.deepEqual(report.objects, { referenced: 5, checked: 5, missing: 1, bad: 3 });
    assert.deepEqual(
      [...new Set(report.problems.map((p: { path: string }) => p.path))].sort(),
      ['/files/misnamed', '/files/missing', '/files/short', '/files/tampered'],
    );
    for (const p of report.problems) assert.ok(typeof p.code === 'string' && typeof p.message === 'string');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('structural damage is reported with its path; fsck.erofs agrees the image is damaged', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-fsck-'));
  try {
    const root = newInode(S_IFDIR | 0o755);
    const a = newInode(S_IFDIR | 0o755);
    const b = newInode(S_IFDIR | 0o755);
    a.children!.push({ name: B('b'), inode: b, hardlink: false });
    b.children!.push({ name: B('file'), inode: newInode(S_IFREG | 0o644, { size: 4, content: B('data') }), hardlink: false });
    root.children!.push({ name: B('a'), inode: a, hardlink: false }, { name: B('z'), inode: newInode(S_IFREG | 0o644), hardlink: false });
    normalizeTree(root);
    const clean = writeImage(root);
    const layout = layoutOf(clean);
    const entry = (name: string) => layout.dirents.find((d) => clean.subarray(d.nameOff, d.nameOff + d.nameLen).toString() === name)!;

    // /a/b points back at the root: a loop.
    const loop = Buffer.from(clean);
    loop.writeBigUInt64LE(BigInt(layout.rootNid), entry('b').off);
    const loopFile = join(dir, 'loop.img');
    writeFileSync(loopFile, loop);
    const r = fsck([loopFile]);
    assert.equal(r.status, 1);
    assert.match(r.stdout, /^\/a\/b: .*(loop|already in the tree)/m);
    assert.match(r.stdout, /problems? found/);
    const report = fsckImage(loop);
    assert.ok(report.problems.some((p) => p.path === '/a/b' && p.code === 'loop'));

    // A truncated image: reported, exit 1.
    const cut = join(dir, 'cut.img');
    writeFileSync(cut, clean.subarray(0, 1100));
    const rc = fsck([cut]);
    assert.equal(rc.status, 1);
    assert.match(rc.stdout, /cut\.img: image too small/);

    // A file's data pointing past the end.
    const far = Buffer.from(clean);
    const fileIno = layout.inodes.find((i) => i.size === 4)!;
    far.writeUInt32LE(0xffffff, fileIno.off + 16);
    far.writeUInt16LE(0, fileIno.off); // plain layout, so the data is in blocks
    const farFile = join(dir, 'far.img');
    writeFileSync(farFile, far);
    const rf = fsck(['--json', farFile]);
    assert.equal(rf.status, 1);
    const j = JSON.parse(rf.stdout);
    assert.ok(j.problems.some((p: { path: string; code: string }) => p.path === '/a/b/file' && p.code === 'bounds'), rf.stdout);

    if (has('fsck.erofs')) {
      for (const f of [loopFile, farFile]) assert.notEqual(spawnSync('fsck.erofs', ['--extract', f], { encoding: 'utf8' }).status, 0, `fsck.erofs accepts ${f}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('cannot check: missing image or base directory is exit 3, usage is exit 2, one line each', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-fsck-'));
  try {
    const image = join(dir, 'img');
    writeFileSync(image, writeImage(newInode(S_IFDIR | 0o755)));
    const cases: Array<[string[], number, RegExp]> = [
      [[join(dir, 'nope')], 3, /Failed to open '.*nope': No such file or directory/],
      [[`--basedir=${join(dir, 'nostore')}`, image], 3, /Can't open basedir/],
      [[], 2, /No image path specified/],
      [[image, image], 2, /unexpected argument/],
      [['--frob', image], 2, /unrecognized option/],
    ];
    for (const [args, code, pattern] of cases) {
      const r = fsck(args);
      assert.equal(r.status, code, args.join(' '));
      assert.match(r.stderr, pattern);
      assert.equal(r.stderr.trimEnd().split('\n').length, 1);
      assert.equal(r.stdout, '');
    }
    assert.equal(fsck(['--help']).status, 0);
    assert.ok(readFileSync(image).length > 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** A root directory holding `files`: name -> inode. */
function treeOf(files: Record<string, Inode>): Inode {
  const root = newInode(S_IFDIR | 0o755);
  for (const [name, inode] of Object.entries(files)) root.children!.push({ name: B(name), inode, hardlink: false });
  normalizeTree(root);
  return root;
}

test('files redirected out of the store or to a path that is no object name are problems, with or without a basedir', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-fsck-'));
  try {
    const store = join(dir, 'store');
    mkdirSync(store);
    writeFileSync(join(dir, 'secret.txt'), 'not an object');
    writeFileSync(join(store, 'passwd'), 'not an object either');
    const good = Buffer.alloc(3000, 9);
    const goodPath = digestToObjectPath(fsverityDigest(good));
    mkdirSync(join(store, goodPath.slice(0, 2)));
    writeFileSync(join(store, goodPath), good);
    const file = (payload: string, size = 13) => newInode(S_IFREG | 0o644, { size, payload: B(payload) });
    const image = join(dir, 'img');
    writeFileSync(
      image,
      writeImage(
        treeOf({
          dotdot: file('../secret.txt'),
          absolute: file('/etc/passwd'),
          plain: file('passwd', 20),
          upper: file(goodPath.toUpperCase(), good.length),
          good: file(goodPath, good.length),
        }),
      ),
    );
    const expected = ['/absolute', '/dotdot', '/plain', '/upper'];
    for (const args of [[image], [`--basedir=${store}`, image]]) {
      const r = fsck(args);
      assert.equal(r.status, 1, r.stdout + r.stderr);
      const lines = r.stdout.trimEnd().split('\n');
      assert.deepEqual(lines.slice(0, -1).map((l) => l.slice(0, l.indexOf(':'))).sort(), expected, r.stdout);
      assert.match(r.stdout, /^\/dotdot: backing object path '..\/secret.txt' leads out of the object store$/m);
      assert.match(r.stdout, /^\/plain: backing object path 'passwd' is not an object name/m);
      assert.match(lines[lines.length - 1], /: 4 problems found, 6 inodes/);
    }
    // With a basedir, the four are bad objects; nothing outside the store was opened as one.
    assert.match(fsck([`--basedir=${store}`, image]).stdout, /5 objects checked \(0 missing, 4 bad\)\n$/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the inode count is what a mount shows: a version-1 image does not count its 256 hidden whiteouts', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-fsck-'));
  try {
    const shared = newInode(S_IFREG | 0o644, { size: 4, content: B('data') });
    const root = treeOf({
      a: newInode(S_IFDIR | 0o755),
      file: shared,
      link: newInode(S_IFLNK | 0o777, { size: 4, payload: B('file') }),
      whiteout: newInode(S_IFCHR | 0o644, { rdev: 0 }),
      empty: newInode(S_IFREG | 0o644),
      fifo: newInode(0o010644),
    });
    root.children!.push({ name: B('hardlink'), inode: shared, hardlink: true });
    shared.nlink = 2;
    normalizeTree(root);
    for (const version of [0, 1]) {
      const image = join(dir, `v${version}.img`);
      writeFileSync(image, writeImage(root, { minVersion: version, maxVersion: version }));
      // What the mounted tree holds: the root, six entries, the hard link once.
      const r = fsck([image]);
      assert.equal(r.status, 0, r.stdout);
      assert.equal(r.stdout, `${image}: clean, 7 inodes\n`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('--repair removes each object whose content does not match its name, one line each, and a rebuild writes it again', { skip: existsSync('/usr/bin/fsverity') ? false : 'no /usr/bin/fsverity' }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-fsck-'));
  try {
    const { image, store, store2 } = fixture(dir);
    // A symbolic link where an object should be is no object either (the kernel does not follow it).
    const linked = digestToObjectPath(fsverityDigest(Buffer.alloc(5000, 1)));
    const before = readdirSync(join(store, linked.slice(0, 2)));
    const r = fsck([`--basedir=${store}`, `--basedir=${store2}`, '--repair', image]);
    assert.equal(r.status, 1, r.stderr);
    const removed = r.stdout.split('\n').filter((l) => l.endsWith(': removed (its content does not match its name)'));
    // short (100 bytes of another content), tampered (one bit flipped), misnamed (named after other bytes).
    assert.equal(removed.length, 3, r.stdout);
    for (const l of removed) assert.ok(l.startsWith(`${store}/`), l);
    assert.match(r.stdout, /3 removed\)\n$/);
    assert.deepEqual(readdirSync(join(store, linked.slice(0, 2))), before, 'the good object stays');
    // What is left is right: only missing objects now.
    const again = fsck(['--json', `--basedir=${store}`, `--basedir=${store2}`, '--repair', image]);
    const report = JSON.parse(again.stdout);
    assert.deepEqual(report.removed, []);
    assert.deepEqual(report.objects, { referenced: 5, checked: 5, missing: 3, bad: 0 });
    // --repair needs a store.
    const u = fsck(['--repair', image]);
    assert.equal(u.status, 2);
    assert.match(u.stderr, /--repair needs --basedir/);

    // A real build: an object overwritten in place with other bytes of the same size.
    const src = join(dir, 'src');
    const objects = join(dir, 'objects');
    mkdirSync(src);
    writeFileSync(join(src, 'data'), Buffer.alloc(100_000, 5));
    const built = join(dir, 'built.img');
    const mk = () => spawnSync(cliPath('mkcomposefs'), [`--digest-store=${objects}`, src, built], { encoding: 'utf8' });
    assert.equal(mk().status, 0);
    const [sub] = readdirSync(objects);
    const [name] = readdirSync(join(objects, sub));
    writeFileSync(join(objects, sub, name), Buffer.alloc(100_000, 6));
    // The build trusts the object by its name: it stays wrong.
    assert.equal(mk().status, 0);
    assert.match(fsck([`--basedir=${objects}`, built]).stdout, /\/data: backing object '.*' has fs-verity digest/);
    const fixed = fsck([`--basedir=${objects}`, '--repair', built]);
    assert.equal(fixed.stdout.split('\n')[1], `${join(objects, sub, name)}: removed (its content does not match its name)`);
    assert.equal(mk().status, 0);
    const clean = fsck([`--basedir=${objects}`, built]);
    assert.equal(clean.status, 0, clean.stdout);
    const measured = execFileSync('fsverity', ['digest', join(objects, sub, name)], { encoding: 'utf8' });
    assert.equal(measured.split(' ')[0], `sha256:${sub}${name}`);
    // A symbolic link in the store's place is removed, not followed.
    rmSync(join(objects, sub, name));
    writeFileSync(join(dir, 'elsewhere'), Buffer.alloc(100_000, 5));
    symlinkSync(join(dir, 'elsewhere'), join(objects, sub, name));
    const viaLink = fsck([`--basedir=${objects}`, '--repair', built]);
    assert.match(viaLink.stdout, /is a symbolic link, not a regular file\n.*: removed/);
    assert.ok(existsSync(join(dir, 'elsewhere')));
    assert.equal(existsSync(join(objects, sub, name)), false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
