/**
 * `cfs info`, `composefs-info`, `cfs dump` and `composefs-dump`: the
 * reference's commands and output formats, run as processes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { writeImage } from '../src/erofs/writer.js';
import { parseDump } from '../src/dumpfile/parse.js';
import { digestToHex, fsverityDigest } from '../src/fsverity/index.js';
import { digestToObjectPath } from '../src/store/layout.js';
import { S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG, newInode, type Inode } from '../src/tree/model.js';
import { normalizeTree } from './fuzz-long.js';
import { cliPath, conformanceDir, NO_CONFORMANCE } from './helpers/paths.js';

const B = (s: string) => Buffer.from(s);

function run(tool: string, args: string[]): { status: number | null; stdout: Buffer; stderr: string } {
  const r = spawnSync(cliPath(tool), args, { maxBuffer: 1 << 28 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

/** A small image with every kind of entry, and an object store holding two of its three objects. */
function fixture(dir: string): { image: string; store: string; objects: Buffer[]; byName: Record<string, string> } {
  const root = newInode(S_IFDIR | 0o755, { mtimeSec: 1000 });
  const add = (parent: Inode, name: string | Buffer, inode: Inode, hardlink = false) => {
    parent.children!.push({ name: typeof name === 'string' ? B(name) : name, inode, hardlink });
    return inode;
  };
  const store = join(dir, 'store');
  const objects: Buffer[] = [];
  const byName: Record<string, string> = {};
  const sub = add(root, 'sub dir', newInode(S_IFDIR | 0o700));
  for (const [name, data, present] of [
    ['one', B('first object'), true],
    ['two', Buffer.alloc(10000, 7), true],
    ['gone', B('never stored'), false],
  ] as const) {
    const digest = fsverityDigest(data);
    const path = digestToObjectPath(digest);
    objects.push(B(path));
    byName[name] = path;
    if (present) {
      mkdirSync(join(store, path.slice(0, 2)), { recursive: true });
      writeFileSync(join(store, path), data);
    }
    add(sub, name, newInode(S_IFREG | 0o644, { size: data.length, payload: B(path), digest }));
  }
  const shared = add(root, 'inline', newInode(S_IFREG | 0o644, { size: 3, content: B('abc') }));
  add(sub, 'hardlink', shared, true);
  shared.nlink = 2;
  add(root, 'link', newInode(S_IFLNK | 0o777, { size: 6, payload: B('a b\tc') }));
  add(root, 'odd\nname', newInode(S_IFREG | 0o600));
  add(root, 'whiteout', newInode(S_IFCHR | 0o644, { rdev: 0 }));
  normalizeTree(root);
  const image = join(dir, 'test.img');
  writeFileSync(image, writeImage(root));
  objects.sort(Buffer.compare);
  return { image, store, objects, byName };
}

test('ls, objects, missing-objects: the reference formats', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-info-'));
  try {
    const { image, store, objects, byName } = fixture(dir);
    for (const tool of ['cfs', 'composefs-info']) {
      const pre = tool === 'cfs' ? ['info'] : [];
      const ls = run(tool, [...pre, 'ls', image]);
      assert.equal(ls.status, 0, ls.stderr);
      assert.equal(
        ls.stdout.toString(),
        [
          '/inline',
          '/link\t-> a\\x20b\\tc',
          '/odd\\nname',
          '/sub dir/\t',
          `/sub dir/gone\t@ ${byName.gone}`,
          '/sub dir/hardlink',
          `/sub dir/one\t@ ${byName.one}`,
          `/sub dir/two\t@ ${byName.two}`,
          '/whiteout',
          '',
        ].join('\n'),
      );
      const objs = run(tool, [...pre, 'objects', image]);
      assert.equal(objs.status, 0, objs.stderr);
      assert.equal(objs.stdout.toString(), objects.map((o) => `${o}\n`).join(''));
      // Objects of several images are listed once each.
      const twice = run(tool, [...pre, 'objects', image, image]);
      assert.equal(twice.stdout.toString(), objs.stdout.toString());
      const missing = run(tool, [...pre, `--basedir=${store}`, 'missing-objects', image]);
      assert.equal(missing.status, 0, missing.stderr);
      const gone = byName.gone;
      assert.equal(missing.stdout.toString(), `${gone}\n`);
      // Option after the command, as getopt allows.
      assert.equal(run(tool, [...pre, 'missing-objects', '--basedir', store, image]).stdout.toString(), `${gone}\n`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('dump prints the dump file; cfs dump writes it; composefs-dump copies the image', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-info-'));
  try {
    const { image } = fixture(dir);
    const dump = run('composefs-info', ['dump', image]);
    assert.equal(dump.status, 0, dump.stderr);
    const text = dump.stdout.toString();
    assert.match(text, /^\/ \d+ 40755 \d+ 0 0 0 1000\.0 - - - /);
    assert.match(text, /\n\/sub\\x20dir\/hardlink 3 @100644 2 0 0 0 0\.0 \/inline abc -\n/);
    assert.match(text, /\n\/whiteout 0 20644 1 0 0 0 0\.0 - - -\n/);
    // The dump reads back into the same image.
    const original = readFileSync(image);
    assert.ok(writeImage(parseDump(dump.stdout)).equals(original));
    // cfs dump: to a file, or to stdout.
    const out = join(dir, 'out.dump');
    assert.equal(run('cfs', ['dump', image, out]).status, 0);
    assert.ok(readFileSync(out).equals(dump.stdout));
    assert.ok(run('cfs', ['dump', image]).stdout.equals(dump.stdout));
    // composefs-dump SRC DEST and cfs dump --image: the identical image.
    const copy = join(dir, 'copy.img');
    const r = run('composefs-dump', [image, copy]);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(readFileSync(copy).equals(original));
    const copy2 = join(dir, 'copy2.img');
    assert.equal(run('cfs', ['dump', '--image', image, copy2]).status, 0);
    assert.ok(readFileSync(copy2).equals(original));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('measure-file prints fs-verity digests', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-info-'));
  try {
    const a = join(dir, 'a');
    const b = join(dir, 'b');
    writeFileSync(a, 'hello');
    writeFileSync(b, Buffer.alloc(100000, 3));
    const r = run('composefs-info', ['measure-file', a, b]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.toString(), `${digestToHex(fsverityDigest(B('hello')))}\n${digestToHex(fsverityDigest(Buffer.alloc(100000, 3)))}\n`);
    const bad = run('cfs', ['info', 'measure-file', join(dir, 'nope')]);
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /^cfs info: Failed to open '.*nope': No such file or directory\n$/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('user errors: one line naming the thing and the reason, non-zero exit, no output and no file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-info-'));
  try {
    const { image } = fixture(dir);
    const junk = join(dir, 'junk.img');
    writeFileSync(junk, Buffer.alloc(8192, 0x41));
    const damaged = join(dir, 'damaged.img');
    const img = readFileSync(image);
    writeFileSync(damaged, img.subarray(0, 2000));
    const cases: Array<[string, string[], RegExp]> = [
      ['composefs-info', [], /No command specified/],
      ['composefs-info', ['frobnicate', image], /Unknown command 'frobnicate'/],
      ['composefs-info', ['ls'], /No image path specified/],
      ['composefs-info', ['ls', join(dir, 'missing.img')], /Failed to open '.*missing\.img': No such file or directory/],
      ['composefs-info', ['dump', junk], /Failed to load '.*junk\.img': not a composefs image/],
      ['composefs-info', ['ls', image, damaged], /Failed to load '.*damaged\.img': .*outside the image/],
      ['composefs-info', ['--basedir=/nonexistent', 'missing-objects', image], /Can't open basedir/],
      ['cfs', ['info', '--bogus', 'ls', image], /unrecognized option '--bogus'/],
      ['composefs-dump', [], /No source path specified/],
      ['composefs-dump', [image], /No destination path specified/],
      ['composefs-dump', [junk, join(dir, 'never.img')], /Failed to load/],
      ['cfs', ['dump', damaged, join(dir, 'never.dump')], /Failed to load/],
    ];
    for (const [tool, args, pattern] of cases) {
      const r = run(tool, args);
      assert.notEqual(r.status, 0, `${tool} ${args.join(' ')}`);
      assert.match(r.stderr, pattern, `${tool} ${args.join(' ')}`);
      assert.equal(r.stderr.trimEnd().split('\n').length, 1, `${tool} ${args.join(' ')}: ${r.stderr}`);
      assert.ok(!r.stderr.includes('    at '), 'no stack trace');
      assert.equal(r.stdout.length, 0, `${tool} ${args.join(' ')}: partial output`);
    }
    assert.ok(!existsSync(join(dir, 'never.img')) && !existsSync(join(dir, 'never.dump')));
    assert.deepEqual(readdirSync(dir).filter((f) => f.endsWith('.tmp')), []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('conformance: composefs-info dump of each vector image is the vector (cs9 included)', { skip: !conformanceDir() && NO_CONFORMANCE }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-info-'));
  try {
    const up = join(conformanceDir()!, 'upstream');
    for (const [name, gz] of [
      ['cs9-x86_64-minimal.dump.gz', true],
      ['config-with-hard-link.dump.gz', true],
    ] as const) {
      const text = gz ? gunzipSync(readFileSync(join(up, name))) : readFileSync(join(up, name));
      const image = join(dir, `${name}.img`);
      writeFileSync(image, writeImage(parseDump(text, { strict: true })));
      const r = run('composefs-info', ['dump', image]);
      assert.equal(r.status, 0, r.stderr);
      assert.ok(r.stdout.equals(text), `${name}: dump differs`);
      const copy = join(dir, `${name}.copy`);
      assert.equal(run('composefs-dump', [image, copy]).status, 0);
      assert.ok(readFileSync(copy).equals(readFileSync(image)), `${name}: composefs-dump copy differs`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('missing-objects never looks outside the store: a path through .. is missing even when the file it names exists', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-info-'));
  try {
    const store = join(dir, 'store');
    mkdirSync(join(store, 'sub'), { recursive: true });
    writeFileSync(join(dir, 'secret.txt'), 'outside the store');
    writeFileSync(join(store, 'inside'), 'a file in the store');
    const root = newInode(S_IFDIR | 0o755);
    for (const [name, payload] of [
      ['escape', '../secret.txt'],
      ['deep', 'sub/../../secret.txt'],
      ['inside', 'inside'],
    ]) {
      root.children!.push({ name: B(name), inode: newInode(S_IFREG | 0o644, { size: 100, payload: B(payload) }), hardlink: false });
    }
    normalizeTree(root);
    const image = join(dir, 'img');
    writeFileSync(image, writeImage(root));
    for (const tool of ['cfs', 'composefs-info']) {
      const pre = tool === 'cfs' ? ['info'] : [];
      const r = run(tool, [...pre, `--basedir=${store}`, 'missing-objects', image]);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout.toString(), '../secret.txt\nsub/../../secret.txt\n');
      // objects only prints what the image holds; it opens nothing.
      assert.equal(run(tool, [...pre, 'objects', image]).stdout.toString(), '../secret.txt\ninside\nsub/../../secret.txt\n');
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
