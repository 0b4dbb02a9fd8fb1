/**
 * The FUSE server against the real kernel: the FUSE mount of an image must
 * show exactly what the kernel's composefs mount of the same image shows
 * (generated trees, a hand-made tree with every kind of entry and hard
 * links, a scan of /usr/share/doc); it must work for an unprivileged user
 * through fusermount3 and inside a user namespace with mount(2); a killed
 * server leaves a mount `cfs status` reports and `--clean` removes; verity
 * refuses changed objects; hostile images never take the server down.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import {
  chmodSync, chownSync, existsSync, mkdirSync, openSync, closeSync, readFileSync, readSync, statSync, symlinkSync, writeFileSync, writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { cliPath, conformanceDir, isRoot, repoRoot } from './helpers/paths.js';
import { manifest } from './helpers/manifest.js';
import { alive, cleanupDir, eventually, leftovers, scratch, snapshot } from './mount-fixtures.js';
import { isKernelMount, mountComposefs, mountImage, unmountComposefs } from '../src/mount/index.js';
// The mount library knows FUSE only as its entry points register it (src/mount/ imports nothing of src/fuse/).
import '../src/fuse/register.js';
import { mountFuse, serveFuse } from '../src/fuse/mount.js';
import { unmountFuse } from '../src/fuse/unmount.js';
import { mountAt } from '../src/mount/mountinfo.js';
import { scanDirectory } from '../src/scan/index.js';
import { writeImage } from '../src/erofs/writer.js';
import { fsverityDigest } from '../src/fsverity/index.js';
import { digestToObjectPath } from '../src/store/layout.js';
import { generatedBases, mutate, Rng } from './fuzz-long.js';
import type { Inode } from '../src/tree/model.js';

const execFileAsync = promisify(execFile);
const hasFuse = existsSync('/dev/fuse');
const hasFusermount = existsSync('/usr/bin/fusermount3');
const hasSetpriv = existsSync('/usr/bin/setpriv');
const SKIP = !isRoot ? 'needs root (kernel mounts to compare with, device nodes, trusted xattrs)' : !hasFuse ? 'no /dev/fuse' : false;
const SKIP_USER = SKIP || (!hasFusermount ? 'no fusermount3 (Debian fuse3)' : !hasSetpriv ? 'no setpriv' : false);
const NOBODY = ['/usr/bin/setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all'];
const manifestJs = join(repoRoot, 'dist', 'test', 'helpers', 'manifest.js');

/** No mount service answers here: a user's ladder goes from the kernel to FUSE whatever runs on this machine (the service rung: test/service-mount.test.ts). */
const NO_SERVICE = '/nonexistent/cfs-fuse-test/mount.sock';
const noServiceEnv = { ...process.env, CFS_SERVICE_SOCKET: NO_SERVICE };

function cfs(args: string[], opts: { asNobody?: boolean; cwd?: string } = {}) {
  const cmd = opts.asNobody ? [...NOBODY, process.execPath, cliPath('cfs'), ...args] : [process.execPath, cliPath('cfs'), ...args];
  return spawnSync(cmd[0], cmd.slice(1), { encoding: 'utf8', cwd: opts.cwd, timeout: 60_000, env: noServiceEnv });
}

/** A source tree with every kind of entry, scanned into a store; hard links added to the tree before writing. */
async function handmadeImage(dir: string): Promise<{ image: string; store: string; root: Inode }> {
  const src = join(dir, 'src');
  const store = join(dir, 'objects');
  mkdirSync(join(src, 'sub', 'deeper'), { recursive: true });
  const big = Buffer.alloc(300_000);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7919) & 0xff;
  writeFileSync(join(src, 'big'), big);
  writeFileSync(join(src, 'small'), 'inline content\n');
  writeFileSync(join(src, 'empty'), '');
  writeFileSync(join(src, 'exactly-4096'), Buffer.alloc(4096, 0x61));
  writeFileSync(join(src, 'sub', 'deeper', 'file'), Buffer.alloc(70_000, 0x62));
  symlinkSync('sub/deeper/file', join(src, 'link'));
  symlinkSync('x/'.repeat(1000) + 'end', join(src, 'long-link'));
  spawnSync('mknod', [join(src, 'chr'), 'c', '1', '3']);
  spawnSync('mknod', [join(src, 'blk'), 'b', '7', '200']);
  spawnSync('mkfifo', [join(src, 'fifo')]);
  spawnSync('mknod', [join(src, 'sub', 'whiteout'), 'c', '0', '0']);
  spawnSync('setfattr', ['-n', 'user.hello', '-v', 'world', join(src, 'small')]);
  spawnSync('setfattr', ['-n', 'trusted.overlay.custom', '-v', 'escaped', join(src, 'big')]);
  spawnSync('setfattr', ['-n', 'trusted.plain', '-v', '0x00ff', join(src, 'sub')]);
  spawnSync('setfacl', ['-m', 'u:1234:r', join(src, 'small')]);
  chmodSync(join(src, 'sub', 'deeper'), 0o750);
  chownSync(join(src, 'sub', 'deeper', 'file'), 4321, 8765);
  const { root } = await scanDirectory(src, { digestStore: store });
  // Hard links: the scan keeps each name its own inode, as the reference; a tree may still have them.
  const byName = (name: string) => root.children!.find((c) => c.name.toString() === name)!.inode;
  for (const [name, target] of [['big-link', 'big'], ['small-link', 'small']] as const) {
    const inode = byName(target);
    inode.nlink++;
    root.children!.push({ name: Buffer.from(name), inode, hardlink: true });
  }
  root.children!.sort((a, b) => Buffer.compare(a.name, b.name));
  const image = join(dir, 'tree.cfs');
  writeFileSync(image, writeImage(root));
  return { image, store, root };
}

/** Kernel mount and FUSE mount (detached server) of the same image: their manifests must be equal. */
async function compareWithKernel(dir: string, image: string, store: string): Promise<number> {
  const kmnt = join(dir, 'kernel');
  const fmnt = join(dir, 'fuse');
  mkdirSync(kmnt);
  mkdirSync(fmnt);
  await mountComposefs(image, kmnt, { basedir: [store] });
  try {
    const r = await mountFuse(image, fmnt, { basedir: [store], via: 'direct' });
    try {
      const k = manifest(kmnt);
      const f = manifest(fmnt);
      assert.deepEqual(f, k);
      return k.length;
    } finally {
      unmountFuse(fmnt);
      assert.ok(await eventually(() => !alive(r.pid), 5000), 'the server exits when its mount goes');
    }
  } finally {
    unmountComposefs(kmnt);
  }
}

test('FUSE shows what the kernel composefs mount shows: a hand-made tree with every kind of entry and hard links', { skip: SKIP }, async () => {
  const dir = scratch('fuse-tree');
  const before = snapshot();
  try {
    const { image, store } = await handmadeImage(dir);
    const n = await compareWithKernel(dir, image, store);
    assert.ok(n >= 15, `compared ${n} entries`);
  } finally {
    cleanupDir(dir);
  }
  assert.deepEqual(leftovers(before), []);
});

const conf = conformanceDir();
for (const seed of [3, 11]) {
  test(`FUSE shows what the kernel mount shows: gentree seed ${seed}`, { skip: SKIP || (!conf ? 'no ../shared/conformance (gentree.py)' : false) }, async () => {
    const dir = scratch('fuse-gentree');
    try {
      const src = join(dir, 'src');
      const g = spawnSync('python3', [join(conf!, 'gentree.py'), src, '--seed', String(seed), '--entries', '1200'], { encoding: 'utf8' });
      assert.equal(g.status, 0, g.stderr);
      const store = join(dir, 'objects');
      const { root } = await scanDirectory(src, { digestStore: store });
      const image = join(dir, 'tree.cfs');
      writeFileSync(image, writeImage(root));
      const n = await compareWithKernel(dir, image, store);
      assert.ok(n > 500, `compared ${n} entries`);
    } finally {
      cleanupDir(dir);
    }
  });
}

test('FUSE shows what the kernel mount shows: a scan of /usr/share/doc', { skip: SKIP || (!existsSync('/usr/share/doc') ? 'no /usr/share/doc' : false) }, async () => {
  const dir = scratch('fuse-doc');
  try {
    const store = join(dir, 'objects');
    const { root } = await scanDirectory('/usr/share/doc', { digestStore: store });
    const image = join(dir, 'doc.cfs');
    writeFileSync(image, writeImage(root));
    const n = await compareWithKernel(dir, image, store);
    assert.ok(n > 100, `compared ${n} entries`);
  } finally {
    cleanupDir(dir);
  }
});

/** A scratch directory an unprivileged user can reach, with a mountpoint that user owns; /dev/fuse 0666 as udev makes it. */
function userSetup(dir: string): { mnt: string; restore: () => void } {
  chmodSync(dir, 0o755);
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  chownSync(mnt, 65534, 65534);
  const mode = statSync('/dev/fuse').mode & 0o7777;
  chmodSync('/dev/fuse', 0o666);
  return { mnt, restore: () => chmodSync('/dev/fuse', mode) };
}

test('an unprivileged user mounts with plain `cfs mount` (FUSE through fusermount3), sees what the kernel mount shows, and unmounts', { skip: SKIP_USER }, async () => {
  const dir = scratch('fuse-user');
  const { mnt, restore } = userSetup(dir);
  const kmnt = join(dir, 'kernel');
  let pid = 0;
  try {
    const { image, store } = await handmadeImage(dir);
    spawnSync('chmod', ['-R', 'a+rX', store, image]);
    const explain = cfs(['mount', '--explain', '-o', `basedir=${store}`, image, mnt], { asNobody: true });
    assert.equal(explain.status, 0, explain.stderr);
    assert.match(explain.stdout, /through FUSE/);
    assert.match(explain.stdout, /lacks privilege/);
    assert.match(explain.stdout, /fusermount3/);
    assert.match(explain.stdout, /passthrough: off/);
    const mine = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(` ${mnt} `));
    assert.equal(mine.length, 1);
    assert.match(mine[0], /fuse\.composefs composefs ro,user_id=65534,group_id=65534,default_permissions/);
    const ps = spawnSync('pgrep', ['-u', '65534', '-f', 'fuse/daemon.js'], { encoding: 'utf8' });
    pid = Number(ps.stdout.trim().split('\n')[0]);
    assert.ok(pid > 0 && alive(pid));
    mkdirSync(kmnt);
    await mountComposefs(image, kmnt, { basedir: [store] });
    try {
      const asUser = (m: string) => spawnSync(NOBODY[0], [...NOBODY.slice(1), process.execPath, manifestJs, m], { encoding: 'utf8', maxBuffer: 64 << 20 });
      const k = asUser(kmnt);
      const f = asUser(mnt);
      assert.equal(f.status, 0, f.stderr);
      assert.deepEqual(f.stdout.split('\n'), k.stdout.split('\n'));
      assert.match(f.stdout, /err=EACCES/, 'a directory the user may not read is refused alike');
    } finally {
      unmountComposefs(kmnt);
    }
    const u = cfs(['umount', mnt], { asNobody: true });
    assert.equal(u.status, 0, u.stderr);
    assert.ok(await eventually(() => !alive(pid), 5000), 'the server exits after fusermount3 -u');
    assert.ok(!readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${mnt} `));
  } finally {
    restore();
    if (pid && alive(pid)) process.kill(pid, 'SIGKILL');
    spawnSync('umount', ['-l', mnt]);
    cleanupDir(dir);
  }
});

test('the mount ladder as an unprivileged user: FUSE when the kernel refuses, named in --explain; --fuse=no and several pairs keep the one-line privilege error; --foreground serves in the process', { skip: SKIP_USER }, async () => {
  const dir = scratch('fuse-ladder');
  const { mnt, restore } = userSetup(dir);
  const mnt2 = join(dir, 'mnt2');
  mkdirSync(mnt2);
  chownSync(mnt2, 65534, 65534);
  const mounted = () => readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(` ${mnt} `) || l.includes(` ${mnt2} `));
  const servers = () => spawnSync('pgrep', ['-u', '65534', '-f', `fuse/daemon.js.*${dir}`]).status === 0;
  let foreground: ReturnType<typeof spawn> | null = null;
  const before = snapshot();
  try {
    const { image, store } = await handmadeImage(dir);
    spawnSync('chmod', ['-R', 'a+rX', store, image]);
    const privilegeLine = /^cfs mount: mounting .*: fsopen erofs: Operation not permitted \(mounting needs root: CAP_SYS_ADMIN\)$/;

    // The ladder: the kernel refuses (EPERM), FUSE takes over; the first line under the head says so.
    const j = cfs(['mount', '--json', '-o', `basedir=${store}`, image, mnt], { asNobody: true });
    assert.equal(j.status, 0, j.stderr);
    const r = JSON.parse(j.stdout) as { rung: string; readonly: boolean; via: string; pid: number; explain: string[] };
    assert.equal(r.rung, 'fuse');
    assert.equal(r.readonly, true);
    assert.equal(r.via, 'fusermount');
    assert.equal(r.explain[0], `service: no mount service at ${NO_SERVICE} (connect: No such file or directory)`);
    assert.match(r.explain[1], /^fuse: the kernel path lacks privilege \(mounting .*fsopen erofs: Operation not permitted \(mounting needs root: CAP_SYS_ADMIN\)\); FUSE needs none$/);
    assert.ok(r.explain.some((l) => /^passthrough: off: the server lacks CAP_SYS_ADMIN/.test(l)), r.explain.join('\n'));
    const read = () => spawnSync(NOBODY[0], [...NOBODY.slice(1), 'cat', join(mnt, 'small')], { encoding: 'utf8' });
    assert.equal(read().stdout, 'inline content\n', read().stderr);
    assert.equal(cfs(['umount', mnt], { asNobody: true }).status, 0);
    assert.ok(await eventually(() => !alive(r.pid), 5000), 'the server exits once unmounted');

    // --fuse=no, and -o fuse=no through the drop-in: the kernel's one line, nothing mounted, no server.
    for (const [args, prog] of [
      [['mount', '--fuse=no', '--explain', '-o', `basedir=${store}`, image, mnt], 'cfs'],
      [[image, mnt, '-v', '-o', `fuse=no,basedir=${store}`], 'mount.composefs'],
    ] as const) {
      const cmd = [...NOBODY, process.execPath, cliPath(prog), ...args];
      const no = spawnSync(cmd[0], cmd.slice(1), { encoding: 'utf8', timeout: 60_000, env: noServiceEnv });
      assert.equal(no.status, 1, no.stderr);
      assert.equal(no.stdout, '');
      const lines = no.stderr.trim().split('\n');
      assert.equal(lines.length, 1, no.stderr);
      assert.match(lines[0].replace(/^mount\.composefs: /, 'cfs mount: '), privilegeLine);
      assert.deepEqual(mounted(), []);
      assert.ok(!servers(), 'no server started');
    }

    // Several pairs are the kernel's alone: the same one line, and nothing of either pair mounted.
    const two = cfs(['mount', '-o', `basedir=${store}`, image, mnt, image, mnt2], { asNobody: true });
    assert.equal(two.status, 1);
    assert.equal(two.stderr.trim().split('\n').length, 1, two.stderr);
    assert.match(two.stderr.trim(), privilegeLine);
    assert.deepEqual(mounted(), []);
    assert.ok(!servers());

    // --foreground through the ladder: this process serves until the mount goes, then exits 0.
    foreground = spawn(NOBODY[0], [...NOBODY.slice(1), process.execPath, cliPath('cfs'), 'mount', '--foreground', '--explain', '-o', `basedir=${store}`, image, mnt], { stdio: ['ignore', 'pipe', 'pipe'], env: noServiceEnv });
    let out = '';
    foreground.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    foreground.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => foreground!.on('exit', (code) => resolve(code)));
    assert.ok(await eventually(() => /passthrough: off/.test(out), 20_000), out);
    const lines = out.split('\n');
    assert.match(lines[0], /^mounted .* on .* \(ro\) through FUSE in /);
    assert.equal(lines[1], `  service: no mount service at ${NO_SERVICE} (connect: No such file or directory)`);
    assert.match(lines[2], /^ {2}fuse: the kernel path lacks privilege \(.*Operation not permitted.*\); FUSE needs none$/);
    assert.equal(mounted().length, 1);
    const ps = spawnSync('pgrep', ['-u', '65534', '-f', 'fuse/daemon.js']);
    assert.equal(ps.status, 1, 'no detached server: the mounting process serves');
    assert.equal(read().stdout, 'inline content\n', read().stderr);
    assert.equal(cfs(['umount', mnt], { asNobody: true }).status, 0);
    assert.equal(await exited, 0, out);
    foreground = null;
    assert.deepEqual(mounted(), []);
  } finally {
    restore();
    if (foreground?.pid && alive(foreground.pid)) foreground.kill('SIGKILL');
    spawnSync('umount', ['-l', mnt]);
    spawnSync('umount', ['-l', mnt2]);
    cleanupDir(dir);
  }
  assert.deepEqual(leftovers(before), []);
});

test('the mount ladder as root: the kernel rung mounts and says so; --fuse asks for FUSE by name', { skip: SKIP }, async () => {
  const dir = scratch('fuse-ladder-root');
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  const before = snapshot();
  try {
    const { image, store } = await handmadeImage(dir);
    const k = cfs(['mount', '--json', '-o', `basedir=${store}`, image, mnt]);
    assert.equal(k.status, 0, k.stderr);
    const kr = JSON.parse(k.stdout) as { rung: string; backing: string; explain: string[] };
    assert.equal(kr.rung, 'kernel');
    assert.match(kr.explain[0], /^kernel: /);
    assert.ok(kr.explain.some((l) => l.startsWith('backing: ')));
    assert.equal(mountAt(mnt)?.fstype, 'overlay');
    assert.equal(cfs(['umount', mnt]).status, 0);
    const f = cfs(['mount', '--fuse', '--explain', '-o', `basedir=${store}`, image, mnt]);
    assert.equal(f.status, 0, f.stderr);
    assert.match(f.stdout, /^mounted .* \(ro\) through FUSE in .*\n {2}fuse: asked for \(--fuse\)\n/);
    assert.equal(mountAt(mnt)?.fstype, 'fuse.composefs');
    assert.equal(cfs(['umount', mnt]).status, 0);
    // The library entry, with the image as an open descriptor: each rung gets it.
    const fd = openSync(image, 'r');
    try {
      for (const fuse of [false, true]) {
        const m = await mountImage(fd, mnt, { basedir: [store], fuse });
        try {
          assert.equal(m.result.rung, fuse ? 'fuse' : 'kernel');
          assert.equal(isKernelMount(m.result), !fuse);
          assert.equal(m.record.length, 1);
          assert.equal(m.closed, null);
          assert.equal(mountAt(mnt)?.fstype, fuse ? 'fuse.composefs' : 'overlay');
          assert.equal((await execFileAsync('cat', [join(mnt, 'small')])).stdout, 'inline content\n');
        } finally {
          unmountComposefs(mnt);
        }
      }
    } finally {
      closeSync(fd);
    }
  } finally {
    spawnSync('umount', ['-l', mnt]);
    cleanupDir(dir);
  }
  assert.deepEqual(leftovers(before), []);
});

test('inside a user namespace the server mounts /dev/fuse itself with mount(2)', { skip: SKIP_USER || (spawnSync('unshare', ['--version']).status !== 0 ? 'no unshare' : false) }, async (t) => {
  const dir = scratch('fuse-userns');
  const { mnt, restore } = userSetup(dir);
  try {
    const { image, store } = await handmadeImage(dir);
    spawnSync('chmod', ['-R', 'a+rX', store, image]);
    const script = `set -e; ${process.execPath} ${cliPath('cfs')} mount --fuse --explain -o basedir=${store} ${image} ${mnt}; ${process.execPath} ${manifestJs} ${mnt}; ${process.execPath} ${cliPath('cfs')} umount ${mnt}`;
    const r = spawnSync(NOBODY[0], [...NOBODY.slice(1), 'unshare', '-Urm', 'sh', '-c', script], { encoding: 'utf8', timeout: 60_000 });
    if (r.status !== 0 && /unshare failed|Operation not permitted/.test(r.stderr) && !/cfs/.test(r.stderr)) {
      // Refused by the machine (user namespaces off), not by us: a skip, never a pass.
      t.skip(`this machine refuses user namespaces: ${r.stderr.trim().split('\n')[0]}`);
      return;
    }
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /mount\(2\) on an open \/dev\/fuse/);
    assert.match(r.stdout, /in a user namespace/);
    const inside = r.stdout;
    assert.match(inside, /^big .*sha256=[0-9a-f]{64}/m);
    assert.match(inside, /^sub\/deeper\/file .*sha256=[0-9a-f]{64}/m);
  } finally {
    restore();
    cleanupDir(dir);
  }
});

test('a killed server leaves a mount `cfs status` reports as disconnected and `cfs status --clean` removes (root and user)', { skip: SKIP_USER }, async () => {
  const dir = scratch('fuse-kill');
  const { mnt, restore } = userSetup(dir);
  try {
    const { image, store } = await handmadeImage(dir);
    spawnSync('chmod', ['-R', 'a+rX', store, image]);
    for (const asNobody of [false, true]) {
      const m = cfs(['mount', '--fuse', '--json', '-o', `basedir=${store}`, image, mnt], { asNobody });
      assert.equal(m.status, 0, m.stderr);
      const { pid } = JSON.parse(m.stdout) as { pid: number };
      assert.ok(alive(pid));
      process.kill(pid, 'SIGKILL');
      assert.ok(await eventually(() => !alive(pid), 5000));
      const dead = spawnSync(asNobody ? NOBODY[0] : 'stat', asNobody ? [...NOBODY.slice(1), 'stat', join(mnt, 'small')] : [join(mnt, 'small')], { encoding: 'utf8' });
      assert.match(dead.stderr, /Transport endpoint is not connected/);
      const s = cfs(['status', '--json'], { asNobody });
      const st = JSON.parse(s.stdout) as { fuse: Array<{ mountpoint: string; state: string }> };
      assert.deepEqual(st.fuse.filter((f) => f.mountpoint === mnt).map((f) => f.state), ['disconnected']);
      const text = cfs(['status'], { asNobody });
      assert.match(text.stdout, /disconnected: ENOTCONN/);
      const c = cfs(['status', '--clean'], { asNobody });
      assert.equal(c.status, 0, c.stderr);
      assert.match(c.stdout, /cleaned: unmounted/);
      assert.ok(await eventually(() => !readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${mnt} `), 3000), `${asNobody ? 'user' : 'root'}: the dead mount is gone`);
    }
  } finally {
    restore();
    spawnSync('umount', ['-l', mnt]);
    cleanupDir(dir);
  }
});

test('-o verity: objects are checked before they are served and every block on each read; a changed object gives EIO and a log line naming it', { skip: SKIP }, async () => {
  const dir = scratch('fuse-verity');
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  const log = join(dir, 'server.log');
  let pid = 0;
  try {
    const { image, store, root } = await handmadeImage(dir);
    const objectOf = (name: string) => {
      const inode = root.children!.find((c) => c.name.toString() === name)!.inode;
      return join(store, digestToObjectPath(inode.digest!));
    };
    const m = cfs(['mount', '--fuse', '--json', '-o', `verity,basedir=${store},log=${log}`, image, mnt]);
    assert.equal(m.status, 0, m.stderr);
    pid = (JSON.parse(m.stdout) as { pid: number }).pid;
    // Intact objects read as they are.
    assert.deepEqual(readFileSync(join(mnt, 'exactly-4096')), Buffer.alloc(4096, 0x61));
    // Changed before its first use: the digest check refuses it.
    const small70k = join(store, digestToObjectPath(fsverityDigest(Buffer.alloc(70_000, 0x62))));
    const fd = openSync(small70k, 'r+');
    writeSync(fd, Buffer.from('X'), 0, 1, 1000);
    closeSync(fd);
    assert.throws(() => readFileSync(join(mnt, 'sub', 'deeper', 'file')), /EIO/);
    // Changed after the check: the block read later does not match its leaf.
    const bigObject = objectOf('big');
    const f = openSync(join(mnt, 'big'), 'r');
    try {
      const head = Buffer.alloc(4096);
      const n = readSync(f, head, 0, 4096, 0);
      assert.equal(n, 4096);
      const o = openSync(bigObject, 'r+');
      writeSync(o, Buffer.from('Y'), 0, 1, 290_000);
      closeSync(o);
      const tail = Buffer.alloc(4096);
      assert.throws(() => readSync(f, tail, 0, 4096, 286_720), /EIO/);
    } finally {
      closeSync(f);
    }
    const text = readFileSync(log, 'utf8');
    assert.match(text, new RegExp(`verity: ${digestToObjectPath(fsverityDigest(Buffer.alloc(70_000, 0x62)))} .*digest`));
    assert.match(text, new RegExp(`verity: ${bigObject.slice(store.length + 1)} .*changed since it was checked`));
  } finally {
    spawnSync('umount', ['-l', mnt]);
    if (pid) await eventually(() => !alive(pid), 5000);
    cleanupDir(dir);
  }
});

test('digest= is checked on the image the server serves; a wrong one mounts nothing and leaves no server', { skip: SKIP }, async () => {
  const dir = scratch('fuse-digest');
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  const before = snapshot();
  try {
    const { image, store } = await handmadeImage(dir);
    const wrong = '0'.repeat(64);
    const r = cfs(['mount', '--fuse', '-o', `basedir=${store},digest=${wrong}`, image, mnt]);
    assert.equal(r.status, 1);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /fs-verity digest [0-9a-f]{64} is not the expected 0{64}/);
    assert.equal(spawnSync('pgrep', ['-f', `fuse/daemon.js.*${mnt}`]).status, 1, 'no server left');
    const right = fsverityDigest(readFileSync(image)).toString('hex');
    const ok = spawnSync(process.execPath, [cliPath('mount.composefs'), image, mnt, '-o', `fuse,basedir=${store},digest=${right}`], { encoding: 'utf8' });
    assert.equal(ok.status, 0, ok.stderr);
    assert.equal(readFileSync(join(mnt, 'small'), 'utf8'), 'inline content\n');
    const u = cfs(['umount', mnt]);
    assert.equal(u.status, 0, u.stderr);
  } finally {
    cleanupDir(dir);
  }
  assert.deepEqual(leftovers(before), []);
});

test('passthrough: as root the kernel reads objects straight from the store, and the data is the same', { skip: SKIP }, async () => {
  const dir = scratch('fuse-passthrough');
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  try {
    const { image, store } = await handmadeImage(dir);
    const served = await serveFuse(image, mnt, { basedir: [store], via: 'direct', foreground: true });
    try {
      // Read by another process: this one serves.
      const { stdout } = await execFileAsync('sha256sum', [join(mnt, 'big'), join(mnt, 'sub', 'deeper', 'file'), join(mnt, 'small')]);
      const { stdout: want } = await execFileAsync('sha256sum', [join(dir, 'src', 'big'), join(dir, 'src', 'sub', 'deeper', 'file'), join(dir, 'src', 'small')]);
      assert.deepEqual(stdout.split('\n').map((l) => l.split(' ')[0]), want.split('\n').map((l) => l.split(' ')[0]));
      assert.equal(served.server!.state.passthrough, true, served.server!.state.passthroughWhy);
    } finally {
      await execFileAsync('umount', [mnt]);
      await served.closed;
    }
  } finally {
    cleanupDir(dir);
  }
});

test('hostile images: damaged images never crash or hang the server', { skip: SKIP, timeout: 300_000 }, async () => {
  const dir = scratch('fuse-fuzz');
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  const store = join(dir, 'objects');
  mkdirSync(store);
  const bases = generatedBases(0xf0e, 6);
  let served = 0;
  let refused = 0;
  try {
    const rnd = new Rng(0x1234);
    for (let i = 0; i < 60; i++) {
      const base = bases[i % bases.length];
      const { image } = mutate(rnd, base);
      const path = join(dir, `case-${i}.cfs`);
      writeFileSync(path, image);
      let pid = 0;
      try {
        // Its log in this test's directory: damaged images have much to say, and it goes with them.
        pid = (await mountFuse(path, mnt, { basedir: [store], via: 'direct', log: join(dir, 'server.log') })).pid;
      } catch (err) {
        assert.ok(err instanceof Error && err.message.length < 400 && !err.message.includes('\n'), String(err));
        refused++;
        continue;
      }
      try {
        const walk = spawnSync(process.execPath, [manifestJs, mnt], { encoding: 'utf8', timeout: 20_000, maxBuffer: 64 << 20 });
        assert.notEqual(walk.signal, 'SIGTERM', `case ${i}: the walk hung`);
        assert.ok(alive(pid), `case ${i}: the server died`);
        // Still answering: a damaged root is EIO, never a dead connection.
        try {
          statSync(mnt);
        } catch (err) {
          assert.equal((err as NodeJS.ErrnoException).code, 'EIO', `case ${i}`);
        }
        served++;
      } finally {
        unmountFuse(mnt, true);
        assert.ok(await eventually(() => !alive(pid), 5000), `case ${i}: the server did not exit after unmount`);
      }
    }
  } finally {
    cleanupDir(dir);
  }
  assert.ok(served > 10, `${served} served, ${refused} refused`);
});
