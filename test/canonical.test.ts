/**
 * The canonical form `cfs pull` builds by default, checked against the
 * reference: the same OCI image unpacked by `umoci raw unpack`, canonicalized
 * on disk as composefs-rs's canonical generation says (test/helpers/canonical.ts)
 * and written by `mkcomposefs --min-version=1` (the reference C one when it is
 * here, else our drop-in, held to the C one by conformance.test.ts; the first
 * test's diagnostic says which); the image our pull stored must be byte for
 * byte that one. Where composefs-rs and umoci
 * disagree (order within a layer, missing or symlinked parents) the expected
 * tree is made by hand on disk instead, or the pull must fall back to the
 * unpacked form and say why. Images come from umoci (with setfattr and ln on
 * its bundle) and from the tests' tar writer where umoci cannot make the case
 * (nanosecond PAX mtimes, a root entry or none, opaque directories).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { linkSync, mkdirSync, readFileSync, rmSync, writeFileSync, symlinkSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { makeTar, gzip, patternBytes, type TarEntry } from './helpers/tar-writer.js';
import { gzLayer, writeLayout } from './helpers/oci-layout.js';
import { makeUmociImage } from './helpers/oci-images.js';
import { hasTool, mkcomposefsOf, umociUnpack } from './helpers/import-compare.js';
import { canonicalizeOnDisk, referenceCanonicalImage, referenceImageOfTree, referenceWriterNote, referenceWorkDir } from './helpers/canonical.js';
import { isRoot } from './helpers/paths.js';
import { cfs, ok, oneLineError } from './helpers/cli.js';
import { inTemp } from './helpers/temp.js';
import { readImage } from '../src/erofs/reader.js';
import { fsverityDigest } from '../src/fsverity/index.js';
import { Repository } from '../src/repo/repository.js';
import { pullImage } from '../src/repo/pull.js';
import { buildImage } from '../src/repo/build.js';
import { CanonicalFormError } from '../src/repo/canonical.js';
import { InvalidInputError } from '../src/errors.js';
import { layoutSource } from './helpers/oci-layout.js';
import { haveRegistry, makeCertificates, NO_REGISTRY, push, startRegistry } from './helpers/registry.js';

const T = 1700000000;
/** A valid VFS_CAP_REVISION_2 security.capability value: cap_net_raw, effective. */
const CAP = Buffer.from('0100000200200000000000000000000000000000', 'hex');

const ready = isRoot && hasTool('umoci') && hasTool('setfattr') && hasTool('getfattr');
const SKIP = !ready && 'needs root, umoci, setfattr and getfattr';

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');


/** `cfs pull --json` of oci:LAYOUT:REF under NAME, with extra options: the record. */
function pull(repo: string, layout: string, ref: string, name: string, ...flags: string[]): Record<string, unknown> {
  return JSON.parse(ok(cfs('pull', '--repo', repo, '--json', ...flags, `oci:${layout}:${ref}`, name))) as Record<string, unknown>;
}

function storedImage(repo: string, digest: string): Buffer {
  return readFileSync(join(repo, 'images', digest));
}

/** The stored image of a record, checked against the reference byte for byte. */
function assertSameAsReference(repo: string, rec: Record<string, unknown>, ref: { image: Buffer; sha256: string }, what: string): Buffer {
  const image = storedImage(repo, rec.image as string);
  assert.equal(sha256(image), ref.sha256, `${what}: our image's sha256 is the reference mkcomposefs --min-version=1 one`);
  assert.ok(image.equals(ref.image), what);
  return image;
}

/**
 * An image made by umoci: /usr with a user xattr, a file with
 * security.capability, user.* and trusted.* xattrs and a second name (hard
 * link) in /run, hard links in /usr/bin, /run with files and a directory,
 * a second layer deleting a file (a whiteout) and replacing another.
 */
function makeUmociUsrImage(layout: string, tag: string): void {
  const umoci = (...args: string[]) => execFileSync('umoci', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const setfattr = (path: string, name: string, value: string) => execFileSync('setfattr', ['-h', '-n', name, '-v', value, path]);
  umoci('init', '--layout', layout);
  umoci('new', '--image', `${layout}:${tag}`);
  const bundle = `${layout}.bundle`;
  umoci('unpack', '--image', `${layout}:${tag}`, bundle);
  const r = join(bundle, 'rootfs');
  for (const d of ['usr/bin', 'usr/lib', 'etc', 'run/lock', 'run/user/0', 'var/tmp']) mkdirSync(join(r, d), { recursive: true });
  writeFileSync(join(r, 'usr/bin/ping'), patternBytes(3000, 1));
  chmodSync(join(r, 'usr/bin/ping'), 0o755);
  setfattr(join(r, 'usr/bin/ping'), 'security.capability', `0x${CAP.toString('hex')}`);
  setfattr(join(r, 'usr/bin/ping'), 'user.note', 'kept only with --keep-user-xattrs');
  setfattr(join(r, 'usr/bin/ping'), 'trusted.secret', 'never kept');
  writeFileSync(join(r, 'usr/bin/tool'), patternBytes(20_000, 2));
  linkSync(join(r, 'usr/bin/tool'), join(r, 'usr/bin/tool-again'));
  linkSync(join(r, 'usr/bin/ping'), join(r, 'run/ping-in-run'));
  writeFileSync(join(r, 'usr/lib/small'), 'small\n');
  symlinkSync('../lib/small', join(r, 'usr/bin/small-link'));
  writeFileSync(join(r, 'run/lock/pid'), '42\n');
  writeFileSync(join(r, 'run/user/0/socket-ish'), patternBytes(500, 3));
  writeFileSync(join(r, 'etc/gone'), 'deleted by the second layer\n');
  writeFileSync(join(r, 'etc/os-release'), 'ID=canonical\n');
  setfattr(join(r, 'usr'), 'user.dir', 'the root takes this with --keep-user-xattrs');
  execFileSync('touch', ['-d', '@1700000100', join(r, 'usr/bin/ping'), join(r, 'usr/bin')]);
  execFileSync('touch', ['-d', '@1700000200', join(r, 'usr')]);
  umoci('repack', '--image', `${layout}:${tag}`, bundle);
  rmSync(bundle, { recursive: true, force: true });
  umoci('unpack', '--image', `${layout}:${tag}`, bundle);
  rmSync(join(r, 'etc/gone'));
  writeFileSync(join(r, 'etc/os-release'), 'ID=canonical\nVERSION=2\n');
  writeFileSync(join(r, 'run/lock/second'), 'second layer, in /run\n');
  umoci('repack', '--image', `${layout}:${tag}`, bundle);
  rmSync(bundle, { recursive: true, force: true });
}

test('umoci image: canonical by default, byte for byte the reference mkcomposefs --min-version=1 of the canonicalized rootfs', { skip: SKIP }, (t) => inTemp('canonical', async (tmp) => {
  t.diagnostic(referenceWriterNote());
  const layout = join(tmp, 'layout');
  makeUmociUsrImage(layout, 'usr');
  const repo = join(tmp, 'repo');
  const rec = pull(repo, layout, 'usr', 'c/usr:1');
  assert.equal(rec.form, 'canonical');
  assert.equal(rec.keepUserXattrs, false);
  const image = assertSameAsReference(repo, rec, referenceCanonicalImage(layout, 'usr'), 'default form');
  // What the reference agreed with, seen in the image.
  const { root } = readImage(image);
  const byName = (dir: typeof root, name: string) => dir.children!.find((c) => c.name.toString() === name)!.inode;
  const usr = byName(root, 'usr');
  const ping = byName(byName(usr, 'bin'), 'ping');
  assert.deepEqual(ping.xattrs.map((x) => x.key.toString()), ['security.capability']);
  assert.equal(ping.nlink, 1, 'its second name was in /run');
  assert.equal(byName(byName(usr, 'bin'), 'tool').nlink, 2);
  assert.equal(byName(root, 'run').children!.length, 0);
  assert.equal(byName(root, 'run').mtimeSec, usr.mtimeSec);
  assert.equal(root.mode, usr.mode);
  assert.equal(root.mtimeSec, 1700000200);
  assert.equal(readImage(image).version, 1);

  // --keep-user-xattrs: user.* stays, on the root too (from /usr).
  const keep = pull(repo, layout, 'usr', 'c/usr:keep', '--keep-user-xattrs');
  assert.equal(keep.form, 'canonical');
  assert.equal(keep.keepUserXattrs, true);
  const kept = assertSameAsReference(repo, keep, referenceCanonicalImage(layout, 'usr', { keepUserXattrs: true }), '--keep-user-xattrs');
  assert.deepEqual(readImage(kept).root.xattrs.map((x) => x.key.toString()), ['user.dir']);
  assert.notEqual(keep.image, rec.image);

  // The record says so, and `cfs inspect` and `--explain` show it.
  assert.match(ok(cfs('inspect', '--repo', repo, 'c/usr:1')), /^form: +canonical \(.*xattrs kept: security\.capability\)$/m);
  assert.match(ok(cfs('inspect', '--repo', repo, 'c/usr:keep')), /^form: +canonical \(.*security\.capability, user\.\*\)$/m);
  assert.equal(JSON.parse(ok(cfs('inspect', '--repo', repo, '--json', 'c/usr:1'))).form, 'canonical');
  const explained = cfs('pull', '--repo', repo, '--explain', `oci:${layout}:usr`, 'c/usr:2');
  assert.equal(ok(explained).trim(), rec.image);
  assert.match(explained.stderr, /^form: canonical /m);
})());

/** Hand-built layers: every thing umoci agrees with composefs-rs on, in tar forms umoci does not write. */
function handLayers(withRootEntry: boolean): TarEntry[][] {
  const l1: TarEntry[] = [
    ...(withRootEntry ? [{ path: './', type: 'dir' as const, mode: 0o700, uid: 7, mtime: T - 5, xattrs: { 'user.root': 'from the root entry' } }] : []),
    { path: 'usr/', type: 'dir', mode: 0o751, uid: 0, gid: 10, mtime: T, paxMtime: '1700000000.987654321', xattrs: { 'user.usr': 'on /usr', 'trusted.t': 'dropped' } },
    { path: 'usr/bin/', type: 'dir', mode: 0o755, mtime: T },
    { path: 'usr/bin/ping', data: patternBytes(1000, 4), mode: 0o4755, mtime: T, paxMtime: '1700000003.000000001', xattrs: { 'security.capability': CAP, 'user.x': 'y', 'security.selinux': 'system_u:object_r:bin_t:s0' } },
    { path: 'usr/bin/a', data: patternBytes(100, 5), mtime: T, paxMtime: '1700000004.5' },
    { path: 'usr/bin/b', type: 'hardlink', linkname: 'usr/bin/a', mtime: T },
    { path: 'usr/bin/small', data: 'small file, inline\n', mtime: T },
    { path: 'usr/lib/', type: 'dir', mtime: T + 1 },
    { path: 'lib', type: 'symlink', linkname: 'usr/lib', mode: 0o777, mtime: T },
    { path: 'etc/', type: 'dir', mtime: T },
    { path: 'etc/gone', data: 'gone\n', mtime: T },
    { path: 'etc/keep', data: 'keep\n', mtime: T, xattrs: { 'user.keep': 'k' } },
    { path: 'opt/', type: 'dir', mtime: T },
    { path: 'opt/d/', type: 'dir', mtime: T },
    { path: 'opt/d/old', data: 'old\n', mtime: T },
    { path: 'opt/d/sub/', type: 'dir', mtime: T },
    { path: 'opt/d/sub/deeper', data: patternBytes(5000, 6), mtime: T },
    { path: 'run/', type: 'dir', mtime: T + 3, paxMtime: '1700000003.25' },
    { path: 'run/lock/', type: 'dir', mtime: T },
    { path: 'run/lock/pid', data: '1\n', mtime: T },
    { path: 'run/a-link', type: 'hardlink', linkname: 'usr/bin/a', mtime: T },
    { path: 'dev/', type: 'dir', mtime: T },
    { path: 'dev/null', type: 'char', devmajor: 1, devminor: 3, mode: 0o666, mtime: T },
    { path: 'dev/fifo', type: 'fifo', mode: 0o600, mtime: T },
  ];
  const l2: TarEntry[] = [
    { path: 'etc/', type: 'dir', mtime: T + 20 },
    { path: 'etc/.wh.gone', data: '' },
    { path: 'opt/d/', type: 'dir', mtime: T + 21 },
    { path: 'opt/d/.wh..wh..opq', data: '' },
    { path: 'opt/d/new', data: 'new, after the opaque marker\n', mtime: T + 22 },
    { path: 'usr/bin/', type: 'dir', mode: 0o755, mtime: T + 23, paxMtime: '1700000023.000000777' },
    { path: 'usr/bin/c', data: patternBytes(70, 7), mtime: T + 24 },
    { path: 'usr/lib/libz.so', data: patternBytes(9000, 8), mtime: T + 25 },
  ];
  return [l1, l2];
}

function handLayout(layout: string, ref: string, layers: TarEntry[][]): void {
  writeLayout(layout, ref, layers.map((entries) => {
    const tar = makeTar(entries);
    return gzLayer(tar, gzip(tar));
  }));
}

test('hand-built layers: PAX nanosecond mtimes, xattr allowlist, /run, hard links, whiteouts, opaque dirs; root entry or none', { skip: SKIP }, inTemp('canonical', async (tmp) => {
  const layout = join(tmp, 'layout');
  handLayout(layout, 'with-root', handLayers(true));
  handLayout(layout, 'no-root', handLayers(false));
  const repo = join(tmp, 'repo');
  const withRoot = pull(repo, layout, 'with-root', 'h/with-root');
  const noRoot = pull(repo, layout, 'no-root', 'h/no-root');
  assert.equal(withRoot.form, 'canonical');
  const image = assertSameAsReference(repo, withRoot, referenceCanonicalImage(layout, 'with-root'), 'root entry in the layer');
  assertSameAsReference(repo, noRoot, referenceCanonicalImage(layout, 'no-root'), 'no root entry');
  assert.equal(noRoot.image, withRoot.image, 'the root entry does not count: the root takes /usr\'s metadata');
  const { root } = readImage(image);
  assert.equal([root.mtimeSec, root.mtimeNsec, root.mode & 0o7777, root.gid].join(' '), '1700000000 987654321 489 10', '/usr\'s nanosecond mtime, mode 0751 and group');
  const keep = pull(repo, layout, 'with-root', 'h/keep', '--keep-user-xattrs');
  assertSameAsReference(repo, keep, referenceCanonicalImage(layout, 'with-root', { keepUserXattrs: true }), '--keep-user-xattrs');
  assert.deepEqual(readImage(storedImage(repo, keep.image as string)).root.xattrs.map((x) => x.key.toString()), ['user.usr']);
}));

test('order within a layer, as composefs-rs applies it: a whiteout or opaque marker removes what the same layer put there before it, a directory made again starts empty', { skip: SKIP }, inTemp('canonical', async (tmp) => {
  const layout = join(tmp, 'layout');
  handLayout(layout, 'order', [
    [
      { path: 'usr/', type: 'dir', mode: 0o755, mtime: T },
      { path: 'usr/lower', data: 'lower\n', mtime: T },
      { path: 'x/', type: 'dir', mode: 0o755, mtime: T },
      { path: 'x/lower', data: 'lower\n', mtime: T },
    ],
    [
      { path: 'x/', type: 'dir', mode: 0o755, mtime: T + 2 },
      { path: 'x/before', data: 'before the opaque marker\n', mtime: T },
      { path: 'x/.wh..wh..opq', data: '' },
      { path: 'x/after', data: 'after it\n', mtime: T + 1 },
      { path: 'x/sub/', type: 'dir', mode: 0o755, mtime: T + 4 },
      { path: 'x/sub/one', data: 'whited out with its directory\n', mtime: T },
      { path: 'x/.wh.sub', data: '' },
      { path: 'x/sub/', type: 'dir', mode: 0o700, mtime: T + 5 },
      { path: 'x/sub/two', data: 'in the directory made again\n', mtime: T },
      { path: 'usr/mine', data: 'put here and whited out by this layer\n', mtime: T },
      { path: 'usr/.wh.mine', data: '' },
      { path: 'usr/', type: 'dir', mode: 0o750, mtime: T + 3 },
    ],
  ]);
  const repo = join(tmp, 'repo');
  const rec = pull(repo, layout, 'order', 'o/order');
  assert.equal(rec.form, 'canonical');
  // The expected tree, made by hand: umoci keeps x/before and usr/mine (a whiteout there only hides lower layers).
  const work = referenceWorkDir();
  try {
    const r = join(work, 'rootfs');
    mkdirSync(join(r, 'usr'), { recursive: true });
    mkdirSync(join(r, 'x'));
    writeFileSync(join(r, 'usr/lower'), 'lower\n');
    writeFileSync(join(r, 'x/after'), 'after it\n');
    mkdirSync(join(r, 'x/sub'));
    writeFileSync(join(r, 'x/sub/two'), 'in the directory made again\n');
    for (const [p, mode, mtime] of [['usr/lower', 0o644, T], ['x/after', 0o644, T + 1], ['x/sub/two', 0o644, T], ['x/sub', 0o700, T + 5], ['x', 0o755, T + 2], ['usr', 0o750, T + 3]] as const) {
      chmodSync(join(r, p), mode);
      execFileSync('touch', ['-h', '-m', '-d', `@${mtime}`, join(r, p)]);
    }
    canonicalizeOnDisk(r);
    assertSameAsReference(repo, rec, referenceImageOfTree(r, work), 'composefs-rs order');
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}));

test('no canonical form (no /usr, a missing parent, a parent through a symlink, /run not a directory): auto builds unpacked and says why; --form=canonical refuses in one line', { skip: SKIP }, inTemp('canonical', async (tmp) => {
  const layout = join(tmp, 'layout');
  makeUmociImage(layout, 'scratch'); // hello, big, d/: no /usr
  handLayout(layout, 'missing-parent', [[{ path: 'usr/', type: 'dir', mtime: T }, { path: 'opt/implied/file', data: 'x\n', mtime: T }]]);
  handLayout(layout, 'symlinked-parent', [
    [{ path: 'usr/', type: 'dir', mtime: T }, { path: 'usr/lib/', type: 'dir', mtime: T }, { path: 'lib', type: 'symlink', linkname: 'usr/lib', mode: 0o777, mtime: T }],
    [{ path: 'lib/through-the-link', data: 'x\n', mtime: T }],
  ]);
  handLayout(layout, 'link-through-symlink', [
    [{ path: 'usr/', type: 'dir', mtime: T }, { path: 'usr/lib/', type: 'dir', mtime: T }, { path: 'usr/lib/f', data: 'f\n', mtime: T }, { path: 'lib', type: 'symlink', linkname: 'usr/lib', mode: 0o777, mtime: T }],
    [{ path: 'usr/g', type: 'hardlink', linkname: 'lib/f' }],
  ]);
  handLayout(layout, 'run-symlink', [[{ path: 'usr/', type: 'dir', mtime: T }, { path: 'var/', type: 'dir', mtime: T }, { path: 'run', type: 'symlink', linkname: 'var/run', mode: 0o777, mtime: T }]]);
  const repo = join(tmp, 'repo');
  // The last: whether the unpacked image is byte for byte our mkcomposefs of umoci's rootfs (not with
  // implied parents: umoci gives them the time of the unpack, we give them 0 to stay reproducible).
  const cases: [string, RegExp, boolean][] = [
    ['scratch', /no \/usr/, true],
    ['missing-parent', /entry opt\/implied\/file: its parent opt does not exist/, false],
    ['symlinked-parent', /entry lib\/through-the-link: its parent lib is a symbolic link/, true],
    ['link-through-symlink', /entry usr\/g: hard link target lib\/f: its parent lib is a symbolic link/, false],
    ['run-symlink', /\/run is not a directory/, true],
  ];
  for (const [ref, why, compare] of cases) {
    const rec = pull(repo, layout, ref, `n/${ref}`);
    assert.equal(rec.form, 'unpacked', ref);
    assert.match(rec.formReason as string, why, ref);
    assert.equal(rec.keepUserXattrs, undefined);
    // Unpacked: what our mkcomposefs writes from umoci's rootfs (no hard links in these images).
    if (compare) {
      const { dir, rootfs } = umociUnpack(layout, ref);
      try {
        assert.ok(storedImage(repo, rec.image as string).equals(mkcomposefsOf(rootfs, dir)), `${ref}: the unpacked form, as umoci writes the rootfs`);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
    const inspected = ok(cfs('inspect', '--repo', repo, `n/${ref}`));
    assert.match(inspected, /^form: +unpacked, because the image has no canonical form: /m);
    const explained = cfs('pull', '--repo', repo, '--explain', `oci:${layout}:${ref}`, `n/${ref}:again`);
    assert.equal(ok(explained).trim(), rec.image);
    assert.match(explained.stderr, new RegExp(`^form: unpacked, because the image has no canonical form: .*${why.source}`, 'm'));
    const refused = cfs('pull', '--repo', repo, '--form=canonical', `oci:${layout}:${ref}`, `n/${ref}:canonical`);
    oneLineError(refused, new RegExp(`no canonical form: .*${why.source}`));
    const names = (JSON.parse(ok(cfs('images', '--repo', repo, '--json'))) as { name: string }[]).map((r) => r.name);
    assert.ok(names.includes(`n/${ref}`) && !names.includes(`n/${ref}:canonical`), `${ref}: no name made by the refused pull`);
  }
  oneLineError(cfs('pull', '--repo', repo, '--form=tidy', `oci:${layout}:scratch`), /--form: 'tidy'/);
}));

test('--form=unpacked gives the image umoci raw unpack writes, for an image that has a canonical form too', { skip: SKIP }, inTemp('canonical', async (tmp) => {
  const layout = join(tmp, 'layout');
  handLayout(layout, 'plain', handLayers(true).map((l) => l.filter((e) => e.type !== 'hardlink')));
  const repo = join(tmp, 'repo');
  const unpacked = pull(repo, layout, 'plain', 'u/plain', '--form=unpacked');
  assert.equal(unpacked.form, 'unpacked');
  assert.equal(unpacked.formReason, undefined);
  const { dir, rootfs } = umociUnpack(layout, 'plain');
  try {
    assert.ok(storedImage(repo, unpacked.image as string).equals(mkcomposefsOf(rootfs, dir)), 'byte-identical to our mkcomposefs of the umoci rootfs');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const canonical = pull(repo, layout, 'plain', 'u/canonical', '--form=canonical');
  assert.equal(canonical.form, 'canonical');
  assertSameAsReference(repo, canonical, referenceCanonicalImage(layout, 'plain'), '--form=canonical');
  assert.match(ok(cfs('inspect', '--repo', repo, 'u/plain')), /^form: +unpacked \(as umoci raw unpack writes it\)$/m);
  oneLineError(cfs('pull', '--repo', repo, '--form=unpacked', '--keep-user-xattrs', `oci:${layout}:plain`), /--keep-user-xattrs applies to the canonical form only/);
}));

test('library: pullImage form and keepUserXattrs, buildImage over the stored layer records, CanonicalFormError', { skip: SKIP }, inTemp('canonical', async (tmp) => {
  const layout = join(tmp, 'layout');
  handLayout(layout, 'hand', handLayers(false));
  makeUmociImage(layout, 'scratch');
  const repo = Repository.open(join(tmp, 'repo'));
  const auto = await pullImage(repo, layoutSource(layout, 'hand'), { name: 'lib/auto' });
  assert.equal(auto.record.form, 'canonical');
  assert.equal(auto.record.image, fsverityDigest(referenceCanonicalImage(layout, 'hand').image).toString('hex'));
  const keep = await pullImage(repo, layoutSource(layout, 'hand'), { name: 'lib/keep', keepUserXattrs: true });
  assert.equal(keep.record.keepUserXattrs, true);
  assert.equal(keep.record.image, fsverityDigest(referenceCanonicalImage(layout, 'hand', { keepUserXattrs: true }).image).toString('hex'));
  assert.notEqual(keep.record.image, auto.record.image);
  const layers = auto.record.layers.map((d) => ({ name: d, entries: repo.readLayer(d) }));
  const built = buildImage(layers);
  assert.equal(built.form, 'canonical');
  assert.equal(built.digest, auto.record.image);
  assert.equal(buildImage(layers, { keepUserXattrs: true }).digest, keep.record.image);
  const unpacked = buildImage(layers, { form: 'unpacked' });
  assert.equal(unpacked.form, 'unpacked');
  assert.notEqual(unpacked.digest, built.digest);
  const scratch = await pullImage(repo, layoutSource(layout, 'scratch'), { name: 'lib/scratch' });
  assert.equal(scratch.record.form, 'unpacked');
  const scratchLayers = scratch.record.layers.map((d) => ({ name: d, entries: repo.readLayer(d) }));
  assert.throws(() => buildImage(scratchLayers, { form: 'canonical' }), (err: unknown) => err instanceof CanonicalFormError && /no \/usr/.test(err.message));
  await assert.rejects(pullImage(repo, layoutSource(layout, 'scratch'), { name: 'lib/refused', form: 'canonical' }), CanonicalFormError);
  await assert.rejects(pullImage(repo, layoutSource(layout, 'hand'), { name: 'lib/bad', form: 'tidy' as 'auto' }), InvalidInputError);
  assert.deepEqual(repo.images().map((r) => r.name), ['lib/auto', 'lib/keep', 'lib/scratch']);
}));

test('from a real registry (skopeo push): the same canonical image as from the layout', { skip: SKIP || (haveRegistry ? false : NO_REGISTRY) }, inTemp('canonical', async (tmp) => {
  const layout = join(tmp, 'layout');
  makeUmociUsrImage(layout, 'usr');
  const certs = await makeCertificates(join(tmp, 'certs'));
  const registry = await startRegistry({ auth: { htpasswd: { alice: 'secret' } } }, certs);
  try {
    await push(registry, `oci:${layout}:usr`, 'canonical/usr:1', 'alice:secret');
    const repo = join(tmp, 'repo');
    const rec = JSON.parse(ok(cfs('pull', '--repo', repo, '--json', '--creds', 'alice:secret', '--cert-dir', certs.certDir, `docker://${registry.host}/canonical/usr:1`, 'r/usr'))) as Record<string, unknown>;
    assert.equal(rec.form, 'canonical');
    assertSameAsReference(repo, rec, referenceCanonicalImage(layout, 'usr'), 'pulled from the registry');
  } finally {
    await registry.stop();
  }
}));
