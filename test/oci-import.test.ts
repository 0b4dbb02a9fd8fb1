/**
 * OCI layers into a composefs repository, checked against umoci: layouts
 * made with the tests' own tar writer (every corner the importer must get
 * right) are pulled into a repository and unpacked with `umoci raw unpack`
 * (as root); the trees must be equal, and without hard links our image must
 * be byte-identical to what our `mkcomposefs --digest-store` writes from
 * umoci's rootfs.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { Repository } from '../src/repo/repository.js';
import { pullImage } from '../src/repo/pull.js';
import { fsverityDigest } from '../src/fsverity/index.js';
import { gzip, hasZstd, makeTar, zstd, type TarEntry } from './helpers/tar-writer.js';
import { gzLayer, layoutSource, writeLayout, type LayerSpec } from './helpers/oci-layout.js';
import { hasTool, imageLinkGroups, mkcomposefsOf, records, rootfsLinkGroups, umociUnpack } from './helpers/import-compare.js';
import { isRoot } from './helpers/paths.js';
import { inTemp } from './helpers/temp.js';

const T = 1700000000;


function bytes(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 131 + seed * 7 + (i >> 9)) & 0xff;
  return b;
}

const dir = (path: string, extra: Partial<TarEntry> = {}): TarEntry => ({ path, type: 'dir', mtime: T, ...extra });
const file = (path: string, data: Buffer | string, extra: Partial<TarEntry> = {}): TarEntry => ({ path, data, mtime: T + 1, ...extra });

/** Three layers with no hard links: whiteouts, opaque dirs, symlinked parents, PAX, long names, sparse files, devices. */
function edgeLayers(): TarEntry[][] {
  const long = `usr/share/${'long-directory-name-'.repeat(4)}/${'x'.repeat(120)}.txt`;
  const l1: TarEntry[] = [
    dir('./', { mode: 0o755, mtime: T - 100 }),
    dir('etc/'),
    file('etc/passwd', 'root:x:0:0:root:/root:/bin/sh\n'),
    file('etc/hostname', 'box\n', { mode: 0o600, uid: 1000, gid: 1000 }),
    dir('usr/'),
    dir('usr/bin/'),
    file('usr/bin/tool', bytes(200_000, 1), { mode: 0o4755 }),
    file('usr/bin/small', bytes(64, 2), { mode: 0o755 }),
    file('usr/bin/just-over', bytes(65, 3), { mode: 0o755 }),
    file('usr/bin/empty', ''),
    dir('usr/lib/'),
    file('usr/lib/libx.so', bytes(5000, 4)),
    { path: 'lib', type: 'symlink', linkname: 'usr/lib', mtime: T },
    dir('usr/share/'),
    dir(`usr/share/${'long-directory-name-'.repeat(4)}/`),
    file(long, 'long name via PAX\n'),
    dir('usr/share/gnu/'),
    file(`usr/share/gnu/${'g'.repeat(150)}`, 'long name via GNU L\n', { gnuLongName: true }),
    dir('dev/'),
    { path: 'dev/null', type: 'char', devmajor: 1, devminor: 3, mode: 0o666, mtime: T },
    { path: 'dev/sda', type: 'block', devmajor: 8, devminor: 0, mode: 0o660, gid: 6, mtime: T },
    dir('run/'),
    { path: 'run/initctl', type: 'fifo', mode: 0o600, mtime: T },
    dir('opt/'),
    dir('opt/a/'),
    file('opt/a/one', 'one\n'),
    file('opt/a/two', 'two\n'),
    dir('opt/a/sub/'),
    file('opt/a/sub/deep', 'deep\n'),
    dir('var/', { mode: 0o755 }),
    dir('var/cache/'),
    file('var/cache/gone', bytes(3000, 5)),
    file('xattrs', 'x\n', { xattrs: { 'user.mime': 'text/plain', 'trusted.md5': Buffer.from([0, 1, 2, 255]), 'security.selinux': 'system_u:object_r:etc_t:s0' } }),
    file('frac-mtime', 'f\n', { paxMtime: '1700000000.123456789' }),
    { path: 'abs-link', type: 'symlink', linkname: '/etc/passwd', mtime: T },
    file('/rooted', 'a path with a leading slash\n'),
    file('./dotted/../undotted', 'a path with dot components\n'),
  ];
  const l2: TarEntry[] = [
    dir('etc/', { mtime: T + 50 }),
    file('etc/.wh.passwd', ''),
    file('opt/a/three', 'three, before the opaque marker\n'),
    file('opt/a/.wh..wh..opq', ''),
    file('opt/a/four', 'four, after it\n'),
    file('lib/newfile', 'written through the lib -> usr/lib symlink\n'),
    { path: 'usr/bin/tool', type: 'symlink', linkname: 'small', mtime: T + 2 },
    dir('var/', { mode: 0o700, uid: 5, gid: 6, mtime: T + 7 }),
    file('var/cache/.wh.gone', ''),
    file('sparse-pax', '', { sparse: { form: 'pax1', size: 300_000, segments: [{ offset: 4096, data: bytes(1000, 6) }, { offset: 200_000, data: bytes(5000, 7) }] } }),
    file('usr/bin/small', bytes(64, 10), { mode: 0o700 }),
  ];
  const l3: TarEntry[] = [
    dir('etc/', { mtime: T + 60 }),
    file('etc/passwd', 'back again\n'),
    file('usr/lib/.wh.libx.so', ''),
    dir('opt/a/sub/', { mtime: T + 9 }),
    file('empty-after', ''),
  ];
  return [l1, l2, l3];
}

function layoutOf(path: string, ref: string, layers: TarEntry[][], compress: 'gzip' | 'zstd' = 'gzip'): void {
  const specs: LayerSpec[] = layers.map((entries) => {
    const tar = makeTar(entries);
    return compress === 'gzip' ? gzLayer(tar, gzip(tar)) : { tar, blob: zstd(tar), mediaType: 'application/vnd.oci.image.layer.v1.tar+zstd' };
  });
  writeLayout(path, ref, specs);
}

async function pull(repoDir: string, layout: string, ref: string, name?: string) {
  const repo = Repository.open(repoDir);
  // The unpacked form: these tests hold the importer to umoci's rootfs (test/canonical.test.ts has the canonical form).
  const result = await pullImage(repo, layoutSource(layout, ref), { name, form: 'unpacked' });
  return { repo, result, image: readFileSync(repo.imagePath(result.record.image)) };
}

const umociReady = isRoot && hasTool('umoci');
const SKIP_UMOCI = umociReady ? false : 'needs root and umoci';

test('import equals umoci raw unpack, byte-identical to mkcomposefs of its rootfs (no hard links)', { skip: SKIP_UMOCI }, inTemp('oci', async (tmp) => {
  const layout = join(tmp, 'layout');
  layoutOf(layout, 'edge', edgeLayers());
  const { image, result } = await pull(join(tmp, 'repo'), layout, 'edge');
  assert.equal(result.record.image, fsverityDigest(image).toString('hex'));
  const { dir: udir, rootfs } = umociUnpack(layout, 'edge');
  try {
    const theirs = mkcomposefsOf(rootfs, udir);
    const ours = records(image);
    const ref = records(theirs);
    assert.deepEqual([...ours.keys()], [...ref.keys()], 'same paths');
    for (const [p, r] of ref) assert.equal(ours.get(p), r, `entry ${p}`);
    assert.ok(theirs.equals(image), 'byte-identical to mkcomposefs --digest-store of the umoci rootfs');
    // The things the layers test, seen in the image.
    assert.ok(!ours.has('/etc/.wh.passwd') && ours.has('/etc/passwd'));
    assert.ok(!ours.has('/opt/a/one') && !ours.has('/opt/a/sub/deep') && ours.has('/opt/a/three') && ours.has('/opt/a/four'));
    assert.ok(ours.has('/usr/lib/newfile') && !ours.has('/usr/lib/libx.so'));
    assert.ok(!ours.has('/var/cache/gone'));
    assert.ok(ours.has('/undotted') && ours.has('/rooted'));
  } finally {
    rmSync(udir, { recursive: true, force: true });
  }
}));

test('hard links stay one inode, across layers, as in the umoci rootfs', { skip: SKIP_UMOCI }, inTemp('oci', async (tmp) => {
  const layers: TarEntry[][] = [
    [
      dir('./', { mtime: T }),
      dir('bin/'),
      file('bin/busybox', bytes(70_000, 1), { mode: 0o755 }),
      { path: 'bin/sh', type: 'hardlink', linkname: 'bin/busybox' },
      { path: 'bin/ls', type: 'hardlink', linkname: './bin/busybox' },
      file('bin/tiny', 'tiny\n'),
      { path: 'tiny-link', type: 'hardlink', linkname: 'bin/tiny' },
      { path: 'link-to-symlink-target', type: 'symlink', linkname: 'bin/tiny', mtime: T },
    ],
    [
      dir('sbin/'),
      { path: 'sbin/init', type: 'hardlink', linkname: 'bin/busybox' },
      file('bin/tiny', 'replaced: the other name keeps the old inode\n'),
    ],
  ];
  const layout = join(tmp, 'layout');
  layoutOf(layout, 'links', layers);
  const { image } = await pull(join(tmp, 'repo'), layout, 'links');
  const { dir: udir, rootfs } = umociUnpack(layout, 'links');
  try {
    const theirs = mkcomposefsOf(rootfs, udir);
    const ours = records(image);
    const ref = records(theirs);
    assert.deepEqual([...ours.keys()], [...ref.keys()]);
    for (const [p, r] of ref) assert.equal(ours.get(p), r, `entry ${p}`);
    const groups = imageLinkGroups(image);
    assert.deepEqual(groups, rootfsLinkGroups(rootfs, [...ref.keys()].filter((p) => p !== '/').map((p) => p.slice(1))).map((g) => g.map((p) => `/${p}`)));
    // bin/tiny was replaced in the second layer: tiny-link keeps the old inode, alone.
    assert.deepEqual(groups, [['/bin/busybox', '/bin/ls', '/bin/sh', '/sbin/init']]);
  } finally {
    rmSync(udir, { recursive: true, force: true });
  }
}));

test('pulling twice gives the same digest; the second pull reuses every layer', inTemp('oci', async (tmp) => {
  const layout = join(tmp, 'layout');
  layoutOf(layout, 'edge', edgeLayers());
  const a = await pull(join(tmp, 'repo1'), layout, 'edge');
  const b = await pull(join(tmp, 'repo2'), layout, 'edge', 'other:name');
  assert.equal(a.result.record.image, b.result.record.image);
  const again = await pull(join(tmp, 'repo1'), layout, 'edge');
  assert.equal(again.result.layersImported, 0);
  assert.equal(again.result.record.image, a.result.record.image);
  assert.equal(a.result.layersImported, 3);
}));

test('zstd layers give the same image as gzip ones', { skip: hasZstd() ? false : 'no zstd tool' }, inTemp('oci', async (tmp) => {
  layoutOf(join(tmp, 'gz'), 'edge', edgeLayers(), 'gzip');
  layoutOf(join(tmp, 'zst'), 'edge', edgeLayers(), 'zstd');
  const a = await pull(join(tmp, 'repo1'), join(tmp, 'gz'), 'edge');
  const b = await pull(join(tmp, 'repo2'), join(tmp, 'zst'), 'edge');
  assert.equal(a.result.record.image, b.result.record.image);
  assert.ok(existsSync(join(tmp, 'repo2', 'names', 'edge')));
}));

test('forms umoci cannot unpack: GNU and PAX 0.1 sparse files, LIBARCHIVE xattrs, base-256 ids, implied parents', inTemp('oci', async (tmp) => {
  const expand = (size: number, segs: { offset: number; data: Buffer }[]) => {
    const b = Buffer.alloc(size);
    for (const s of segs) s.data.copy(b, s.offset);
    return b;
  };
  const gnuSegs = [{ offset: 0, data: bytes(512, 8) }, { offset: 90_000, data: bytes(700, 9) }];
  const pax01Segs = [{ offset: 10_000, data: bytes(3000, 10) }];
  const layers: TarEntry[][] = [
    [
      dir('./'),
      file('sparse-gnu', '', { sparse: { form: 'gnu', size: 100_000, segments: gnuSegs } }),
      file('sparse-pax01', Buffer.concat(pax01Segs.map((s) => s.data)), { paxRecords: { 'GNU.sparse.size': '20000', 'GNU.sparse.map': '10000,3000' } }),
      file('la-xattr', 'x', { libarchiveXattrs: { 'user.from libarchive': Buffer.from([1, 2, 3]) }, xattrs: { 'user.both': 'schily' } }),
      file('implied/parent/child', 'c\n'),
      file('big-ids', 'ids\n', { uid: 3_000_000, gid: 4_000_000_000 }),
    ],
  ];
  // The LIBARCHIVE record for a name SCHILY also gives loses to it.
  layers[0][3].libarchiveXattrs!['user.both'] = 'libarchive';
  const layout = join(tmp, 'layout');
  layoutOf(layout, 'forms', layers);
  const { image, repo } = await pull(join(tmp, 'repo'), layout, 'forms');
  const r = records(image);
  const gnu = JSON.parse(r.get('/sparse-gnu')!);
  assert.equal(gnu.payload, objectPathOf(expand(100_000, gnuSegs)));
  assert.ok(readFileSync(join(repo.objects, gnu.payload)).equals(expand(100_000, gnuSegs)));
  assert.equal(JSON.parse(r.get('/sparse-pax01')!).payload, objectPathOf(expand(20_000, pax01Segs)));
  const la = JSON.parse(r.get('/la-xattr')!);
  assert.deepEqual(la.xattrs, [`user.both=${Buffer.from('schily').toString('hex')}`, 'user.from libarchive=010203']);
  const implied = JSON.parse(r.get('/implied')!);
  assert.equal(implied.mode, '40755');
  assert.equal(implied.mtime, '0.0');
  assert.ok(r.has('/implied/parent/child'));
  const ids = JSON.parse(r.get('/big-ids')!);
  assert.equal(ids.uid, 3_000_000);
  assert.equal(ids.gid, 4_000_000_000);
}));

function objectPathOf(data: Buffer): string {
  const hex = fsverityDigest(data).toString('hex');
  return `${hex.slice(0, 2)}/${hex.slice(2)}`;
}
