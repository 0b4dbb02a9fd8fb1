/**
 * `cfs fsck`: the image's structure, and with --basedir its objects: each
 * problem with its path, the exit status, --json. Damaged images are
 * cross-checked with fsck.erofs where it is installed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeImage } from '../src/erofs/writer.js';
import { fsckImage } from '../src/check/fsck.js';
import { digestToObjectPath, fsverityDigest } from '../src/fsverity/index.js';
import { S_IFDIR, S_IFREG, newInode } from '../src/tree/model.js';
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
      writeFileSync(image, writeImage(randomTree(rnd, { entries: 60 })));
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
