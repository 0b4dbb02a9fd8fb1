/**
 * sha512 as well as sha256 (issue 18, item 2): `fsverity-sha512-12` objects,
 * images and metacopy xattrs, from `cfs mkcomposefs --algorithm sha512` and
 * from a repository created for sha512 (`cfs init`, `cfs pull --algorithm`),
 * read back by `cfs info`, `cfs fsck`, `cfs gc`, the kernel mount and the FUSE
 * server with verity. Every digest is compared with what fsverity-utils
 * (`fsverity digest --hash-alg=sha512`) prints. Also the repository's
 * meta.json: its features, a mismatched --algorithm, and hostile files.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { patternBytes, type TarEntry } from './helpers/tar-writer.js';
import { gzLayers, writeLayout } from './helpers/oci-layout.js';
import { cliPath, isRoot } from './helpers/paths.js';
import { cfs, ok, oneLineError } from './helpers/cli.js';
import { haveRegistry, makeCertificates, NO_REGISTRY, push, startRegistry } from './helpers/registry.js';
import { inTemp } from './helpers/temp.js';
import { alive, eventually } from './mount-fixtures.js';

const T = 1700000000;
const FSVERITY = '/usr/bin/fsverity';
const NO_TOOL = existsSync(FSVERITY) ? false : 'no /usr/bin/fsverity (fsverity-utils): sha512 digests cannot be checked';

/** What fsverity-utils says the sha512 fs-verity digest of `path` is. */
function toolSha512(path: string): string {
  const out = execFileSync(FSVERITY, ['digest', '--hash-alg=sha512', '--compact', path], { encoding: 'utf8' }).trim();
  assert.match(out, /^[0-9a-f]{128}$/);
  return out;
}


/** Every object file of a store: its path relative to the store. */
function objectFiles(store: string): string[] {
  const out: string[] = [];
  for (const d of readdirSync(store)) {
    if (!/^[0-9a-f]{2}$/.test(d)) continue;
    for (const f of readdirSync(join(store, d))) out.push(`${d}/${f}`);
  }
  return out.sort();
}

/** Change one byte of a file in place (its size stays). */
function tamper(file: string, at = 100): void {
  const fd = openSync(file, 'r+');
  try {
    const b = readFileSync(file);
    writeSync(fd, Buffer.from([b[at] ^ 0xff]), 0, 1, at);
  } finally {
    closeSync(fd);
  }
}

const base: TarEntry[] = [
  { path: './', type: 'dir', mtime: T },
  { path: 'etc/', type: 'dir', mtime: T },
  { path: 'etc/os-release', data: 'ID=test\n', mtime: T },
  { path: 'usr/', type: 'dir', mtime: T },
  // More than 64 blocks: two levels of SHA-512 hashes (64 to a block).
  { path: 'usr/big', data: patternBytes(300_000, 1), mtime: T },
  { path: 'usr/small', data: patternBytes(5000, 2), mtime: T },
];
const second: TarEntry[] = [{ path: 'usr/second', data: patternBytes(50_000, 3), mtime: T }];
const third: TarEntry[] = [{ path: 'usr/third', data: patternBytes(70_000, 4), mtime: T }];

test('cfs mkcomposefs --algorithm sha512: the image, its objects and measure-file are what fsverity digest --hash-alg=sha512 says; dump round trip; fsck --basedir; the drop-in stays the reference', { skip: NO_TOOL }, inTemp('sha512-mk', (tmp) => {
  const src = join(tmp, 'src');
  mkdirSync(join(src, 'd'), { recursive: true });
  writeFileSync(join(src, 'big'), patternBytes(300_000, 7));
  writeFileSync(join(src, 'd', 'f'), patternBytes(9000, 8));
  writeFileSync(join(src, 'tiny'), 'inline\n');
  const store = join(tmp, 'store');
  const image = join(tmp, 'image');
  const printed = ok(cfs('mkcomposefs', '--algorithm', 'sha512', '--digest-store', store, '--print-digest', src, image)).trim();
  assert.equal(printed, toolSha512(image), 'the printed digest is the image file\'s sha512 fs-verity digest');
  const objects = objectFiles(store);
  assert.equal(objects.length, 2);
  for (const o of objects) assert.equal(o.replace('/', ''), toolSha512(join(store, o)), `object ${o} is named after its sha512 fs-verity digest`);
  assert.equal(toolSha512(join(store, objects.find((o) => o.replace('/', '') === toolSha512(join(src, 'big')))!)), toolSha512(join(src, 'big')));
  assert.equal(ok(cfs('info', 'measure-file', '--algorithm', 'sha512', join(src, 'big'))).trim(), toolSha512(join(src, 'big')));

  // The metacopy xattr: version 0, length 68, flags 0, algorithm 2, then the digest.
  const bytes = readFileSync(image);
  const digest = Buffer.from(toolSha512(join(src, 'big')), 'hex');
  const at = bytes.indexOf(digest);
  assert.ok(at >= 4, 'the digest is in the image');
  assert.deepEqual([...bytes.subarray(at - 4, at)], [0, 68, 0, 2]);

  const dump = ok(cfs('info', 'dump', image));
  assert.match(dump, new RegExp(`^/big 300000 100644 .* ${digest.toString('hex').slice(0, 2)}/${digest.toString('hex').slice(2)} - ${digest.toString('hex')}$`, 'm'));
  writeFileSync(join(tmp, 'dump'), dump);
  ok(cfs('mkcomposefs', '--algorithm', 'sha512', '--from-file', join(tmp, 'dump'), join(tmp, 'again')));
  assert.ok(readFileSync(join(tmp, 'again')).equals(bytes), 'the dump builds the same image again');

  assert.match(ok(cfs('fsck', '--basedir', store, image)), /ok|clean/i);
  tamper(join(store, objects[0]));
  const bad = cfs('fsck', '--basedir', store, image);
  assert.notEqual(bad.status, 0);
  assert.match(bad.stdout + bad.stderr, /has fs-verity digest [0-9a-f]{128}, the image expects [0-9a-f]{128}/);

  const dropIn = spawnSync(cliPath('mkcomposefs'), ['--algorithm', 'sha512', src, join(tmp, 'x')], { encoding: 'utf8' });
  assert.equal(dropIn.status, 1);
  assert.match(dropIn.stderr, /unrecognized option '--algorithm'/);
  oneLineError(cfs('mkcomposefs', '--algorithm', 'md5', src, join(tmp, 'x')), /invalid value for --algorithm: 'md5' \(sha256 or sha512\)/);
}));

test('a sha512 repository: pull from an OCI layout, names, layer records, fsck --repo, gc; every digest fsverity-utils\'s', { skip: NO_TOOL }, inTemp('sha512-repo', (tmp) => {
  const layout = join(tmp, 'layout');
  const repo = join(tmp, 'repo');
  writeLayout(layout, 'one', gzLayers(base, second));
  writeLayout(layout, 'two', gzLayers(base, second, third));
  assert.equal(ok(cfs('init', '--repo', repo, '--algorithm', 'sha512')).trim(), `${repo}: fsverity-sha512-12`);
  const meta = JSON.parse(readFileSync(join(repo, 'meta.json'), 'utf8'));
  assert.deepEqual(meta, { version: 1, algorithm: 'fsverity-sha512-12', features: { compatible: [], 'read-only-compatible': [], incompatible: [] } });
  const digest = ok(cfs('pull', '--repo', repo, `oci:${layout}:one`, 'one')).trim();
  assert.match(digest, /^[0-9a-f]{128}$/);
  assert.equal(toolSha512(join(repo, 'images', digest)), digest);
  ok(cfs('pull', '--repo', repo, '--algorithm', 'sha512', `oci:${layout}:two`, 'two'));
  const objects = objectFiles(join(repo, 'objects'));
  assert.equal(objects.length, 4);
  for (const o of objects) assert.equal(o.replace('/', ''), toolSha512(join(repo, 'objects', o)), `object ${o}`);
  const record = JSON.parse(readFileSync(join(repo, 'names', 'one'), 'utf8'));
  assert.equal(record.image, digest);
  for (const f of readdirSync(join(repo, 'layers'))) {
    for (const m of readFileSync(join(repo, 'layers', f), 'utf8').matchAll(/"digest":"([0-9a-f]*)"/g)) assert.equal(m[1].length, 128, `layer record ${f}`);
  }
  // cfs info on the repository's image: its objects are the store's.
  const listed = ok(cfs('info', 'objects', join(repo, 'images', digest))).trim().split('\n');
  assert.equal(listed.length, 3);
  for (const o of listed) assert.ok(objects.includes(o), o);
  assert.equal(ok(cfs('info', 'missing-objects', '--basedir', join(repo, 'objects'), join(repo, 'images', digest))), '');

  assert.match(ok(cfs('fsck', '--repo', repo)), /clean, 4 objects, 2 images, 3 layers, 2 names checked/);
  ok(cfs('rm', '--repo', repo, 'two'));
  assert.match(ok(cfs('gc', '--repo', repo)), /removed 1 images, 1 layers, 2 blobs, 1 objects, 0 temporary files/);
  assert.equal(objectFiles(join(repo, 'objects')).length, 3);
  assert.match(ok(cfs('fsck', '--repo', repo)), /clean, 3 objects, 1 images, 2 layers, 1 names checked/);
  const victim = objectFiles(join(repo, 'objects'))[0];
  tamper(join(repo, 'objects', victim));
  const bad = cfs('fsck', '--repo', repo);
  assert.notEqual(bad.status, 0);
  assert.match(bad.stdout, new RegExp(`object ${victim}: content has fs-verity digest [0-9a-f]{128}`));
}));

test('--algorithm that disagrees with the repository: one line naming both (also when two first pulls race); an older repository without meta.json is sha256 and gets the file at its first pull', inTemp('sha512-mismatch', async (tmp) => {
  const layout = join(tmp, 'layout');
  writeLayout(layout, 'one', gzLayers(base));
  const r512 = join(tmp, 'r512');
  ok(cfs('pull', '--repo', r512, '--algorithm', 'sha512', `oci:${layout}:one`, 'one'));
  assert.equal(JSON.parse(readFileSync(join(r512, 'meta.json'), 'utf8')).algorithm, 'fsverity-sha512-12');
  oneLineError(cfs('pull', '--repo', r512, '--algorithm', 'sha256', `oci:${layout}:one`, 'x'), /repository .*r512 holds sha512 objects \(fsverity-sha512-12 in its meta.json\), not sha256 \(--algorithm sha256\)/);
  oneLineError(cfs('init', '--repo', r512, '--algorithm', 'sha256'), /holds sha512 objects .*not sha256/);
  assert.match(ok(cfs('init', '--repo', r512)), /fsverity-sha512-12/, 'init without --algorithm keeps the repository\'s');
  assert.equal(ok(cfs('pull', '--repo', r512, `oci:${layout}:one`, 'again')).trim().length, 128, 'a pull without --algorithm uses the repository\'s');
  assert.equal((JSON.parse(ok(cfs('inspect', '--repo', r512, '--json', 'again'))) as { algorithm: string }).algorithm, 'sha512');
  assert.match(ok(cfs('inspect', '--repo', r512, 'again')), /^image: +[0-9a-f]{128} \(fsverity-sha512\)$/m);

  // A repository as older versions made it: content, no meta.json.
  const old = join(tmp, 'old');
  ok(cfs('pull', '--repo', old, `oci:${layout}:one`, 'one'));
  rmSync(join(old, 'meta.json'));
  oneLineError(cfs('pull', '--repo', old, '--algorithm', 'sha512', `oci:${layout}:one`, 'x'), /holds sha256 objects \(it has no meta.json.*\), not sha512 \(--algorithm sha512\)/);
  assert.ok(!existsSync(join(old, 'meta.json')), 'a refused command writes nothing');
  assert.match(ok(cfs('images', '--repo', old)), /one/);
  assert.ok(!existsSync(join(old, 'meta.json')), 'reading does not write it');
  assert.equal(ok(cfs('pull', '--repo', old, `oci:${layout}:one`, 'two')).trim().length, 64);
  assert.equal(JSON.parse(readFileSync(join(old, 'meta.json'), 'utf8')).algorithm, 'fsverity-sha256-12', 'the first pull records the algorithm');

  // Two first pulls at once asking for different algorithms: one meta.json, one pull, the other refused.
  const raced = join(tmp, 'raced');
  const both = await Promise.all(
    (['sha256', 'sha512'] as const).map(
      (algorithm) =>
        new Promise<{ algorithm: string; status: number | null; stdout: string; stderr: string }>((resolve) => {
          const child = spawn(cliPath('cfs'), ['pull', '--repo', raced, '--algorithm', algorithm, `oci:${layout}:one`, algorithm]);
          let stdout = '';
          let stderr = '';
          child.stdout.on('data', (d) => (stdout += d));
          child.stderr.on('data', (d) => (stderr += d));
          child.on('close', (status) => resolve({ algorithm, status, stdout, stderr }));
        }),
    ),
  );
  const won = both.filter((r) => r.status === 0);
  assert.equal(won.length, 1, both.map((r) => r.stderr).join(''));
  const lost = both.find((r) => r.status !== 0)!;
  assert.match(lost.stderr.trim(), new RegExp(`^cfs pull: repository .* holds ${won[0].algorithm} objects .*, not ${lost.algorithm} \\(--algorithm ${lost.algorithm}\\)$`));
  assert.equal(JSON.parse(readFileSync(join(raced, 'meta.json'), 'utf8')).algorithm, `fsverity-${won[0].algorithm}-12`);
  assert.equal(won[0].stdout.trim().length, won[0].algorithm === 'sha512' ? 128 : 64);
  assert.deepEqual(readdirSync(join(raced, 'names')), [won[0].algorithm]);

  // An empty repository (made by a command that only reads) takes the algorithm of its first write.
  const empty = join(tmp, 'empty');
  ok(cfs('images', '--repo', empty));
  ok(cfs('pull', '--repo', empty, '--algorithm', 'sha512', `oci:${layout}:one`, 'one'));
  assert.equal(JSON.parse(readFileSync(join(empty, 'meta.json'), 'utf8')).algorithm, 'fsverity-sha512-12');
}));

test('meta.json features: an unknown incompatible one refuses the repository, an unknown read-only-compatible one lets it be read and refuses every write with one line', inTemp('sha512-features', (tmp) => {
  const layout = join(tmp, 'layout');
  writeLayout(layout, 'one', gzLayers(base));
  const repo = join(tmp, 'repo');
  ok(cfs('pull', '--repo', repo, '--algorithm', 'sha512', `oci:${layout}:one`, 'one'));
  const meta = (features: object, extra: object = {}) =>
    writeFileSync(join(repo, 'meta.json'), JSON.stringify({ version: 1, algorithm: 'fsverity-sha512-12', features, ...extra }));

  meta({ incompatible: ['from-the-future'] });
  for (const args of [['images'], ['pull', `oci:${layout}:one`, 'x'], ['gc'], ['fsck'], ['inspect', 'one']]) {
    const r = args[0] === 'fsck' ? cfs('fsck', '--repo', repo) : cfs(args[0], '--repo', repo, ...args.slice(1));
    oneLineError(r, /refusing repository .*: .*meta.json: the repository needs features this cfs does not know: from-the-future \(incompatible\)/);
  }

  meta({ 'read-only-compatible': ['newer-index'], compatible: ['ignored-by-old-tools'] });
  assert.match(ok(cfs('images', '--repo', repo)), /one/);
  assert.match(ok(cfs('inspect', '--repo', repo, 'one')), /one/);
  assert.match(ok(cfs('fsck', '--repo', repo)), /clean/);
  const readOnly = /repository .* is read-only for this cfs: its meta.json lists features it does not know \(newer-index; read-only-compatible\)/;
  oneLineError(cfs('pull', '--repo', repo, `oci:${layout}:one`, 'x'), readOnly);
  oneLineError(cfs('tag', '--repo', repo, 'one', 'x'), readOnly);
  oneLineError(cfs('rm', '--repo', repo, 'one'), readOnly);
  oneLineError(cfs('gc', '--repo', repo), readOnly);
  assert.deepEqual(readdirSync(join(repo, 'names')), ['one'], 'nothing was written');
  assert.match(ok(cfs('gc', '--repo', repo, '--dry-run')), /would remove 0 images/);

  meta({ compatible: ['ignored-by-old-tools'] });
  ok(cfs('tag', '--repo', repo, 'one', 'x'));

  meta({}, { version: 2 });
  oneLineError(cfs('images', '--repo', repo), /meta.json: repository format version 2 is newer than this cfs understands \(1\)/);
  meta({}, { algorithm: 'fsverity-blake3-12' });
  oneLineError(cfs('images', '--repo', repo), /meta.json: unknown algorithm fsverity-blake3-12/);
}));

test('hostile meta.json: a symbolic link, a FIFO, a huge file, garbage, control characters: one line, nothing followed or hung on', inTemp('sha512-hostile', (tmp) => {
  const repo = join(tmp, 'repo');
  ok(cfs('init', '--repo', repo, '--algorithm', 'sha512'));
  const file = join(repo, 'meta.json');
  const elsewhere = join(tmp, 'elsewhere.json');
  writeFileSync(elsewhere, JSON.stringify({ version: 1, algorithm: 'fsverity-sha256-12' }));
  const cases: [string, () => void, RegExp][] = [
    ['a symbolic link', () => symlinkSync(elsewhere, file), /refusing repository .*: .*meta.json is a symbolic link \(never followed\)/],
    ['a FIFO', () => execFileSync('mkfifo', [file]), /meta.json is a FIFO|meta.json is a fifo|not a regular file/i],
    ['a directory', () => mkdirSync(file), /meta.json is a directory, not a regular file/],
    ['huge', () => writeFileSync(file, `{"version":1,"algorithm":"fsverity-sha512-12","pad":"${'x'.repeat(200_000)}"}`), /meta.json has \d+ bytes, more than metadata ever needs \(65536\)/],
    ['garbage', () => writeFileSync(file, Buffer.from([0xff, 0x00, 0x1b, 0x5b, 0x32, 0x4a])), /meta.json is not valid JSON/],
    ['not an object', () => writeFileSync(file, '[1,2]'), /meta.json is not a JSON object/],
    ['a bad feature list', () => writeFileSync(file, '{"version":1,"algorithm":"fsverity-sha512-12","features":{"incompatible":"x"}}'), /features.incompatible is not a list of names/],
    ['escapes in a name', () => writeFileSync(file, JSON.stringify({ version: 1, algorithm: 'fsverity-sha512-12', features: { incompatible: ['\u001b[2Jevil'] } })), /needs features this cfs does not know: \\x1b\[2Jevil|needs features this cfs does not know: \\e\[2Jevil|needs features this cfs does not know: \\033\[2Jevil/],
  ];
  for (const [what, make, pattern] of cases) {
    rmSync(file, { recursive: true, force: true });
    make();
    const r = spawnSync(process.execPath, [cliPath('cfs'), 'images', '--repo', repo], { encoding: 'utf8', timeout: 20_000 });
    assert.equal(r.error, undefined, `${what}: did not hang`);
    oneLineError(r, pattern);
    assert.doesNotMatch(r.stderr, /\u001b/, `${what}: no raw escape reaches the terminal`);
  }
  assert.equal(readFileSync(elsewhere, 'utf8'), JSON.stringify({ version: 1, algorithm: 'fsverity-sha256-12' }), 'the link target is untouched');
}));

const MOUNT_SKIP = !isRoot ? 'needs root (kernel mounts)' : NO_TOOL || (!existsSync('/dev/fuse') ? 'no /dev/fuse' : false);

function mounted(mnt: string): boolean {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[4] === mnt);
}

test('a sha512 repository pulled from a real registry, mounted: by the kernel, by name (digest= pinned, FUSE with verity where the kernel lacks fs-verity), and with -o verity; a changed object reads EIO', { skip: MOUNT_SKIP || (haveRegistry ? false : NO_REGISTRY) }, inTemp('sha512-mount', async (tmp) => {
  const layout = join(tmp, 'layout');
  writeLayout(layout, 'one', gzLayers(base, second));
  const certs = await makeCertificates(join(tmp, 'certs'));
  const registry = await startRegistry({ auth: { htpasswd: { u: 'p' } } }, certs);
  const repo = join(tmp, 'repo');
  let digest: string;
  try {
    await push(registry, `oci:${layout}:one`, 'test/sha512:1', 'u:p');
    digest = ok(cfs('pull', '--repo', repo, '--algorithm', 'sha512', '--creds', 'u:p', '--cert-dir', certs.certDir, `docker://${registry.host}/test/sha512:1`, 'one')).trim();
  } finally {
    await registry.stop();
  }
  assert.equal(toolSha512(join(repo, 'images', digest)), digest);
  const image = join(repo, 'images', digest);
  const objects = join(repo, 'objects');
  const mnt = join(tmp, 'mnt');
  mkdirSync(mnt);
  const want = { big: patternBytes(300_000, 1), second: patternBytes(50_000, 3) };
  const pids: number[] = [];
  const umount = async () => {
    const u = cfs('umount', mnt);
    assert.equal(u.status, 0, u.stderr);
    assert.ok(!mounted(mnt));
    for (const pid of pids.splice(0)) assert.ok(await eventually(() => !alive(pid), 5000), 'the server exits once unmounted');
  };

  // The kernel: EROFS with sha512 metacopy xattrs, overlayfs over the store (without verity, which it lacks here).
  const k = JSON.parse(ok(cfs('mount', '--json', '--fuse=no', '-o', `basedir=${objects}`, image, mnt))) as { rung: string };
  assert.equal(k.rung, 'kernel');
  try {
    assert.ok(readFileSync(join(mnt, 'usr/big')).equals(want.big));
    assert.ok(readFileSync(join(mnt, 'usr/second')).equals(want.second));
  } finally {
    await umount();
  }

  // By name: digest= pinned to the 128-hex digest, checked in userspace with sha512.
  const byName = JSON.parse(ok(cfs('mount', '--json', '--repo', repo, 'one', mnt))) as { rung: string; verity: boolean; pid?: number; explain: string[] };
  if (byName.pid) pids.push(byName.pid);
  try {
    assert.ok(byName.explain.some((l) => /digest/.test(l)), byName.explain.join('\n'));
    assert.ok(readFileSync(join(mnt, 'usr/big')).equals(want.big));
  } finally {
    await umount();
  }
  oneLineError(cfs('mount', '-o', `basedir=${objects},digest=${'0'.repeat(128)}`, image, mnt), new RegExp(`fs-verity digest ${digest} is not the expected 0{128}|expected 0{128}, the image has ${digest}`));
  assert.ok(!mounted(mnt));
  oneLineError(cfs('mount', '-o', `basedir=${objects},digest=${'0'.repeat(96)}`, image, mnt), /invalid digest '0{96}': expected 64 hex digits .* or 128/);

  // FUSE with userspace verity: each object measured with SHA-512, each block checked.
  writeFileSync(join(tmp, 'big-copy'), want.big);
  const bigHex = toolSha512(join(tmp, 'big-copy'));
  const f = JSON.parse(ok(cfs('mount', '--json', '--fuse', '-o', `basedir=${objects},verity,log=${join(tmp, 'server.log')}`, image, mnt))) as { rung: string; verity: boolean; pid: number };
  pids.push(f.pid);
  try {
    assert.equal(f.rung, 'fuse');
    assert.equal(f.verity, true);
    assert.ok(readFileSync(join(mnt, 'usr/second')).equals(want.second));
    tamper(join(objects, bigHex.slice(0, 2), bigHex.slice(2)), 200_000);
    assert.throws(() => readFileSync(join(mnt, 'usr/big')), /EIO/);
    assert.match(readFileSync(join(tmp, 'server.log'), 'utf8'), new RegExp(`verity: ${bigHex.slice(0, 2)}/${bigHex.slice(2)} .*fs-verity digest [0-9a-f]{128} is not the ${bigHex}`));
  } finally {
    await umount();
  }
  // fsck sees the same change.
  const bad = cfs('fsck', '--repo', repo);
  assert.notEqual(bad.status, 0);
  assert.match(bad.stdout, new RegExp(`object ${bigHex.slice(0, 2)}/${bigHex.slice(2)}: content has fs-verity digest [0-9a-f]{128}`));
}));
