/**
 * The drop-ins level with upstream composefs/composefs main (2026-07, after
 * 1.0.8): composefs-info --filter (upstream's tests/test-dump-filtered.sh),
 * hard-linked whiteouts refused when an image is read (upstream commit
 * 19cd25b, "reject hardlinked whiteout inodes with EINVAL"), measure-file of
 * an empty file (upstream a66faad, "fix root_hash for zero-length files"),
 * and every option of the four reference tools' --help accepted.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';

import { join } from 'node:path';
import { readImage, readImageHeader } from '../src/erofs/reader.js';
import { cliPath, conformanceDir, NO_CONFORMANCE } from './helpers/paths.js';
import { withTemp } from './helpers/temp.js';

function run(tool: string, args: string[]) {
  return spawnSync(cliPath(tool), args, { encoding: 'utf8' });
}

test("upstream's test-dump-filtered.sh: composefs-info --filter dumps only those top-level entries", (t) => {
  const conf = conformanceDir();
  if (!conf) return t.skip(NO_CONFORMANCE);
  withTemp('dropins', (dir) => {
    const image = join(dir, 'out.cfs');
    const mk = run('mkcomposefs', ['--from-file', join(conf, 'upstream', 'special.dump'), image]);
    assert.equal(mk.status, 0, mk.stderr);
    const r = run('composefs-info', ['--filter=chardev', '--filter=inline', '--filter=whiteout', 'dump', image]);
    assert.equal(r.status, 0, r.stderr);
    // The expectations of upstream's tests/test-dump-filtered.sh, as written there.
    const lines = r.stdout.split('\n').filter((l) => l !== '');
    assert.equal(lines.length, 4, `expected 4 lines, found ${lines.length}:\n${r.stdout}`);
    for (const re of [/^\/ 4096 40555.*trusted.foo1/m, /^\/chardev 0 20777/m, /^\/inline 15 100777.*FOOBAR/m, /^\/whiteout 0 20777/m]) {
      assert.match(r.stdout, re);
    }
  });
});

test('composefs-info --filter keeps what lies under a kept directory, for every command; a name with / is refused', () => {
  withTemp('dropins', (dir) => {
    const dump = `/ 4096 40755 3 0 0 0 0.0 - - -
/a 4096 40755 2 0 0 0 0.0 - - -
/a/x 100 100644 1 0 0 0 0.0 aa/${'1'.repeat(62)} - -
/b 4096 40755 2 0 0 0 0.0 - - -
/b/y 100 100644 1 0 0 0 0.0 bb/${'2'.repeat(62)} - -
/c 3 100644 1 0 0 0 0.0 - abc -
`;
    writeFileSync(join(dir, 't.dump'), dump);
    const image = join(dir, 't.cfs');
    assert.equal(run('mkcomposefs', ['--from-file', join(dir, 't.dump'), image]).status, 0);
    const ls = run('composefs-info', ['--filter', 'a', '--filter=c', 'ls', image]);
    assert.equal(ls.status, 0, ls.stderr);
    assert.equal(ls.stdout, `/a/\t\n/a/x\t@ aa/${'1'.repeat(62)}\n/c\n`);
    const objects = run('composefs-info', ['--filter=b', 'objects', image]);
    assert.equal(objects.stdout, `bb/${'2'.repeat(62)}\n`);
    const missing = run('cfs', ['info', '--filter=a', '--basedir', dir, 'missing-objects', image]);
    assert.equal(missing.stdout, `aa/${'1'.repeat(62)}\n`);
    const none = run('composefs-info', ['--filter=nothing-here', 'dump', image]);
    assert.equal(none.status, 0);
    assert.equal(none.stdout.split('\n').filter(Boolean).length, 1, 'only the root');
    const bad = run('composefs-info', ['--filter=a/x', 'dump', image]);
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /^composefs-info: Filter must be a single name: a\/x\n$/);
  });
});

test('an image holding a hard-linked whiteout (character device 0:0, link count 2) is refused when read', () => {
  withTemp('dropins', (dir) => {
    // A version-1 image: the writer adds the whiteouts 00..ff to the root as character devices 0:0.
    writeFileSync(join(dir, 'w.dump'), '/ 4096 40755 2 0 0 0 0.0 - - -\n/wh 0 20644 1 0 0 0 0.0 - - -\n');
    const good = join(dir, 'good.cfs');
    assert.equal(run('mkcomposefs', ['--max-version=1', '--from-file', join(dir, 'w.dump'), good]).status, 0);
    const image = readFileSync(good);
    assert.equal(readImageHeader(image).version, 1);
    // Find the inode of the root's "00" and raise its link count to 2.
    let nid = -1;
    readImage(image, { trace: { dirent: (_dir, _off, _nameOff, child, name) => void (name.toString() === '00' && (nid = child)) } });
    assert.ok(nid > 0, 'the 00 whiteout is in the image');
    const offset = readImageHeader(image).metaBlkaddr * 4096 + nid * 32;
    assert.equal(image.readUInt16LE(offset + 4) & 0o170000, 0o020000, 'a character device');
    const extended = (image.readUInt16LE(offset) & 1) === 1;
    if (extended) image.writeUInt32LE(2, offset + 44);
    else image.writeUInt16LE(2, offset + 6);
    const bad = join(dir, 'bad.cfs');
    writeFileSync(bad, image);
    for (const [tool, args] of [
      ['composefs-dump', [bad, join(dir, 'copy.cfs')]],
      ['composefs-info', ['dump', bad]],
      ['composefs-info', ['ls', bad]],
      ['composefs-info', ['objects', bad]],
      ['cfs', ['dump', bad]],
    ] as const) {
      const r = run(tool, [...args]);
      assert.equal(r.status, 1, `${tool} ${args[0]}: ${r.stderr}`);
      assert.equal(r.stdout, '', `${tool} ${args[0]}: nothing printed`);
      assert.match(r.stderr, /^[^\n]*Failed to load '.*bad\.cfs': .*whiteout.*link count 2[^\n]*\n$/, `${tool} ${args[0]}`);
    }
    // The untouched image reads.
    assert.equal(run('composefs-info', ['dump', good]).status, 0);
  });
});

// Independent value: `fsverity digest` (fsverity-utils 1.5) of an empty file. An all-zero root hash.
const EMPTY_FILE_DIGEST = '3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95';

test('measure-file of an empty file gives the fs-verity digest with an all-zero root hash', (t) => {
  withTemp('dropins', (dir) => {
    const empty = join(dir, 'empty');
    writeFileSync(empty, '');
    const r = run('composefs-info', ['measure-file', empty]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, `${EMPTY_FILE_DIGEST}\n`);
    const tool = spawnSync('fsverity', ['digest', '--compact', empty], { encoding: 'utf8' });
    if (tool.status === 0) assert.equal(tool.stdout.trim(), EMPTY_FILE_DIGEST, 'the fsverity tool agrees');
    else t.diagnostic('no fsverity tool: compared with the recorded value only');
  });
});

// The options of the reference tools' current --help (upstream tools/*.c, main 2026-07), each with a
// value where it takes one. Each must be accepted: never "unrecognized option"/"unsupported option".
const REFERENCE_OPTIONS: Record<string, string[][]> = {
  mkcomposefs: [
    ['--digest-store=STORE'],
    ['--use-epoch'],
    ['--skip-devices'],
    ['--skip-xattrs'],
    ['--user-xattrs'],
    ['--print-digest'],
    ['--print-digest-only'],
    ['--from-file'],
    ['--min-version=0'],
    ['--max-version=1'],
    ['--threads=2'],
  ],
  'composefs-info': [['--basedir=BASEDIR'], ['--filter=NAME']],
  'composefs-dump': [],
  'mount.composefs': [['-t', 'composefs'], ['-h']],
};
const REFERENCE_MOUNT_OPTIONS = ['basedir=BASEDIR', 'digest=DIGEST', 'idmap=/proc/self/ns/user', 'verity', 'tryverity', 'ro', 'rw', 'upperdir=UP', 'workdir=WORK'];

test("every option of the reference tools' --help is accepted", () => {
  withTemp('dropins', (dir) => {
    const dump = join(dir, 'in.dump');
    writeFileSync(dump, '/ 4096 40755 2 0 0 0 0.0 - - -\n/f 3 100644 1 0 0 0 0.0 - abc -\n');
    const image = join(dir, 'in.cfs');
    assert.equal(run('mkcomposefs', ['--from-file', dump, image]).status, 0);
    const subst = (a: string) => a.replace('STORE', join(dir, 'store')).replace('BASEDIR', dir).replace('UP', join(dir, 'up')).replace('WORK', join(dir, 'work'));
    for (const opt of REFERENCE_OPTIONS.mkcomposefs) {
      const onlyDigest = opt[0] === '--print-digest-only';
      // --from-file needs a dump source; the others take a directory too, but a dump keeps this quick.
      const args = [...opt.map(subst), ...(opt[0] === '--from-file' ? [] : ['--from-file']), dump, ...(onlyDigest ? [] : [join(dir, 'o.cfs')])];
      const r = run('mkcomposefs', args);
      assert.equal(r.status, 0, `mkcomposefs ${opt.join(' ')}: ${r.stderr}`);
    }
    for (const opt of REFERENCE_OPTIONS['composefs-info']) {
      const r = run('composefs-info', [...opt.map(subst), 'dump', image]);
      assert.equal(r.status, 0, `composefs-info ${opt.join(' ')}: ${r.stderr}`);
    }
    const help = run('mount.composefs', ['-h']);
    assert.equal(help.status, 0);
    for (const o of REFERENCE_MOUNT_OPTIONS) assert.ok(help.stdout.includes(o.split('=')[0]), `mount.composefs -h mentions ${o}`);
    for (const o of REFERENCE_MOUNT_OPTIONS) {
      // A missing image: every option is parsed and accepted before the image is opened.
      const opts = o.startsWith('basedir=') ? subst(o) : `basedir=${dir},${subst(o)}`;
      const r = run('mount.composefs', ['-t', 'composefs', '-o', opts, join(dir, 'missing.cfs'), join(dir, 'mnt')]);
      assert.notEqual(r.status, 0);
      assert.doesNotMatch(r.stderr, /unsupported|unrecognized|invalid option/i, `mount.composefs -o ${o}: ${r.stderr}`);
    }
    // The reference tools exit 1 on a bad option, getopt's usage(); exit(1).
    for (const tool of ['mkcomposefs', 'composefs-info', 'composefs-dump']) {
      const r = run(tool, ['--no-such-option', image, join(dir, 'x')]);
      assert.equal(r.status, 1, `${tool} --no-such-option: ${r.stderr}`);
      assert.equal(r.stderr.split('\n').filter(Boolean).length, 1, `${tool}: one line`);
    }
    const wrongType = run('mount.composefs', ['-t', 'ext4', '-o', `basedir=${dir}`, image, join(dir, 'mnt')]);
    assert.notEqual(wrongType.status, 0);
    assert.match(wrongType.stderr, /ext4/);
  });
});
