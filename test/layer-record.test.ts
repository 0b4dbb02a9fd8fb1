/**
 * Layer records (src/repo/layer-record.ts): versioned, with named fields,
 * and the old form (one-letter keys, no version line) that repositories
 * made before still hold is read back: images, fsck --repo, gc, a pull that
 * reuses the old record, and a mount by name all keep working.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzip, makeTar, patternBytes, type TarEntry } from './helpers/tar-writer.js';
import { gzLayer, writeLayout } from './helpers/oci-layout.js';
import { isRoot } from './helpers/paths.js';
import { cfs, ok } from './helpers/cli.js';
import { decodeLayerRecord, encodeLayerRecord } from '../src/repo/layer-record.js';
import { inTemp } from './helpers/temp.js';

const T = 1700000000;

const baseLayer: TarEntry[] = [
  { path: './', type: 'dir', mtime: T },
  { path: 'etc/', type: 'dir', mtime: T, mode: 0o755 },
  { path: 'etc/hostname', data: 'old-form\n', mtime: T, mode: 0o644 },
  { path: 'data', data: patternBytes(5000, 1), mtime: T, mode: 0o640, uid: 1000, gid: 100, xattrs: { 'user.note': 'kept' } },
  { path: 'data-link', type: 'hardlink', linkname: 'data', mtime: T },
  { path: 'etc/alias', type: 'symlink', linkname: '../data', mtime: T },
  { path: 'dev/', type: 'dir', mtime: T },
  { path: 'dev/null', type: 'char', devmajor: 1, devminor: 3, mtime: T, mode: 0o666 },
];

/**
 * The record of `baseLayer` exactly as commit f62d518 (before versioning)
 * wrote it: taken from a repository made by that commit's `cfs pull`.
 */
const OLD_DIFF_ID = '2790813221fa08ab0a9b9545cf9bd6f7e36019c192fee909c24d16e64ba79c46';
const OLD_RECORD = `{"p":"","t":"dir","m":493,"u":0,"g":0,"s":1700000000}
{"p":"etc","t":"dir","m":493,"u":0,"g":0,"s":1700000000}
{"p":"etc/hostname","t":"file","m":420,"u":0,"g":0,"s":1700000000,"z":9,"d":"0df026e711c17b0b7c8558197ca528fb9b3babf14d22241c2e2a741cfcdba1bd","c":"b2xkLWZvcm0K"}
{"p":"data","t":"file","m":416,"u":1000,"g":100,"s":1700000000,"x":[["user.note","a2VwdA=="]],"z":5000,"d":"b1c20b5a251cfa97c386974777de8183fe96d20ee53b2a541b17c1a797cba26e"}
{"p":"data-link","t":"hardlink","l":"data"}
{"p":"etc/alias","t":"symlink","m":511,"u":0,"g":0,"s":1700000000,"l":"../data"}
{"p":"dev","t":"dir","m":493,"u":0,"g":0,"s":1700000000}
{"p":"dev/null","t":"char","m":438,"u":0,"g":0,"s":1700000000,"ma":1,"mi":3}
`;
const DATA_OBJECT = 'b1c20b5a251cfa97c386974777de8183fe96d20ee53b2a541b17c1a797cba26e';

const withTemp = (fn: (dir: string) => Promise<void> | void) => inTemp('layer-record', fn);

test('a record is written versioned with named fields, and the old form reads as the same entries', () => {
  const old = decodeLayerRecord(OLD_RECORD, 'old');
  const text = encodeLayerRecord(old);
  assert.equal(text.split('\n')[0], '{"layerRecord":2}');
  assert.match(text, /\n\{"path":"data","type":"file","mode":416,"uid":1000,"gid":100,"mtimeSec":1700000000,"size":5000,"digest":"b1c2[0-9a-f]{60}","xattrs":\[\["user.note","a2VwdA=="\]\]\}\n/);
  assert.doesNotMatch(text, /"[a-z]{1,2}":/, 'no one-letter key left');
  assert.deepEqual(decodeLayerRecord(text, 'new'), old);
  assert.deepEqual(old[7], { path: 'dev/null', type: 'char', mode: 0o666, uid: 0, gid: 0, mtimeSec: T, major: 1, minor: 3 });
  assert.throws(() => decodeLayerRecord('{"layerRecord":3}\n', 'future'), /layer record future is of version 3, not 2/);
  assert.throws(() => decodeLayerRecord('{"p":"x","t":"file","z":"9"}\n', 'hostile'), /layer record hostile is corrupt \(line 1: z is not a whole number\)/);
  assert.throws(() => decodeLayerRecord('{"layerRecord":2}\n{"path":"x","type":"file","digest":"../../etc"}\n', 'hostile'), /line 2: digest is not a sha256 digest/);
});

test(
  'a repository whose layer record is of the old form: images, fsck --repo, gc, a pull reusing the record, mount by name',
  { skip: isRoot ? false : 'needs root (mount)' },
  withTemp((dir) => {
    const layout = join(dir, 'layout');
    const repo = join(dir, 'repo');
    const one = makeTar(baseLayer);
    assert.equal(createHash('sha256').update(one).digest('hex'), OLD_DIFF_ID, 'the layer is the one the old record was made from');
    const two = makeTar([
      { path: './', type: 'dir', mtime: T },
      { path: 'extra', data: patternBytes(3000, 2), mtime: T },
      { path: 'etc/.wh.hostname', data: '', mtime: T },
    ]);
    writeLayout(layout, 'one', [gzLayer(one, gzip(one))]);
    writeLayout(layout, 'two', [gzLayer(one, gzip(one)), gzLayer(two, gzip(two))]);
    ok(cfs('pull', '--quiet', '--repo', repo, `oci:${layout}:one`, 'one'));
    // The record as a repository made before versioning holds it.
    const record = join(repo, 'layers', OLD_DIFF_ID);
    assert.match(readFileSync(record, 'utf8'), /^\{"layerRecord":2\}\n\{"path":"","type":"dir",/, 'a pull writes the versioned form');
    writeFileSync(record, OLD_RECORD);

    const list = JSON.parse(ok(cfs('images', '--repo', repo, '--json'))) as { name: string }[];
    assert.deepEqual(list.map((i) => i.name), ['one']);
    assert.match(ok(cfs('fsck', '--repo', repo)), /clean, 1 objects, 1 images, 1 layers, 1 names checked/);
    // gc keeps the object only the old record refers to.
    ok(cfs('rm', '--repo', repo, 'one'));
    ok(cfs('pull', '--quiet', '--repo', repo, `oci:${layout}:one`, 'one'));
    assert.equal(readFileSync(record, 'utf8'), OLD_RECORD, 'the old record was reused, not rewritten');
    assert.match(ok(cfs('gc', '--repo', repo)), /removed 1 images, 0 layers, 0 blobs, 0 objects|removed 0 images, 0 layers, 0 blobs, 0 objects/);
    assert.ok(existsSync(join(repo, 'objects', DATA_OBJECT.slice(0, 2), DATA_OBJECT.slice(2))));

    const rec = JSON.parse(ok(cfs('pull', '--json', '--repo', repo, `oci:${layout}:two`, 'two'))) as { layersImported: number };
    assert.equal(rec.layersImported, 1, 'the shared layer came from its old record');
    assert.equal(readFileSync(record, 'utf8'), OLD_RECORD);
    assert.deepEqual(readdirSync(join(repo, 'layers')).filter((f) => f !== OLD_DIFF_ID && !f.startsWith('.')).map((f) => readFileSync(join(repo, 'layers', f), 'utf8').split('\n')[0]), ['{"layerRecord":2}']);
    assert.match(ok(cfs('fsck', '--repo', repo)), /clean, 2 objects, 2 images, 2 layers, 2 names checked/);

    const mnt = join(dir, 'mnt');
    mkdirSync(mnt);
    ok(cfs('mount', '--repo', repo, 'two', mnt));
    try {
      assert.deepEqual(readFileSync(join(mnt, 'data')), patternBytes(5000, 1));
      assert.deepEqual(readFileSync(join(mnt, 'extra')), patternBytes(3000, 2));
      const st = statSync(join(mnt, 'data'));
      assert.equal(st.mode & 0o7777, 0o640);
      assert.equal(st.uid, 1000);
      assert.equal(st.gid, 100);
      assert.equal(st.nlink, 2, 'data-link is a hard link of data');
      assert.equal(statSync(join(mnt, 'data-link')).ino, st.ino);
      assert.equal(readlinkSync(join(mnt, 'etc/alias')), '../data');
      const dev = lstatSync(join(mnt, 'dev/null'));
      assert.ok(dev.isCharacterDevice());
      assert.equal(dev.rdev, (1 << 8) | 3);
      assert.ok(!existsSync(join(mnt, 'etc/hostname')), 'whited out by the second layer');
      const xattr = spawnSync('getfattr', ['--only-values', '-n', 'user.note', join(mnt, 'data')], { encoding: 'utf8' });
      if (xattr.error === undefined) assert.equal(xattr.stdout, 'kept');
      assert.deepEqual(readdirSync(mnt).sort(), ['data', 'data-link', 'dev', 'etc', 'extra']);
    } finally {
      ok(cfs('umount', mnt));
    }
  }),
);
