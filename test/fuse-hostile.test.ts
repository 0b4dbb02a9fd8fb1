/**
 * The FUSE server (run as root, allow_other) against hostile images, stores
 * and temp dirs, with real mounts and reads by another user: redirects
 * that leave the store or meet a symlink, a FIFO where an object should be,
 * damage the shared reader refuses (an over-long symlink target, a NUL in
 * a name, an xattr with an unknown prefix), a log planted in a temp dir,
 * image bytes that would forge log lines, and `cfs status` before a
 * killed or stopped server.
 *
 * Images are built from dump files with `cfs mkcomposefs --from-file`,
 * as an attacker could; every read that could hang runs in a child with a
 * deadline, and what it could wait on is released in `finally`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import {
  chmodSync, chownSync, closeSync, constants as fsc, existsSync, lstatSync, mkdirSync, openSync, readFileSync, rmdirSync, rmSync, statSync, symlinkSync, writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { cliPath, isRoot } from './helpers/paths.js';
import { alive, cleanupDir, eventually, scratch } from './mount-fixtures.js';
import { fsverityDigest } from '../src/fsverity/index.js';
import { digestToObjectPath } from '../src/store/layout.js';
import { mountAt, readMountinfo } from '../src/mount/mountinfo.js';

const hasSetpriv = existsSync('/usr/bin/setpriv');
const SKIP = !isRoot ? 'needs root (a FUSE server with allow_other, reads by another user)' : !existsSync('/dev/fuse') ? 'no /dev/fuse' : !hasSetpriv ? 'no setpriv' : false;
const NOBODY = ['/usr/bin/setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all'];
const SECRET = 'the secret only root may read\n';

function cfs(args: string[], env: NodeJS.ProcessEnv = process.env, timeout = 60_000) {
  return spawnSync(process.execPath, [cliPath('cfs'), ...args], { encoding: 'utf8', timeout, killSignal: 'SIGKILL', env });
}

/** Run as nobody with a deadline (killed at it): a read the server never answers must not hang the test. */
function asNobody(cmd: string[], timeout = 15_000) {
  return spawnSync(NOBODY[0], [...NOBODY.slice(1), ...cmd], { encoding: 'utf8', timeout, killSignal: 'SIGKILL' });
}

/** A scratch dir others can enter, with a store holding one object and a mountpoint. */
function setup(tag: string): { dir: string; store: string; mnt: string; good: { payload: string; digest: string; content: string } } {
  const dir = scratch(tag);
  chmodSync(dir, 0o755);
  const store = join(dir, 'objects');
  mkdirSync(store);
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  const content = 'an honest object, long enough to be stored outside the image\n'.repeat(3);
  const digest = fsverityDigest(Buffer.from(content));
  const payload = digestToObjectPath(digest);
  mkdirSync(join(store, payload.slice(0, 2)), { recursive: true });
  writeFileSync(join(store, payload), content);
  spawnSync('chmod', ['-R', 'a+rX', store]);
  return { dir, store, mnt, good: { payload, digest: digest.toString('hex'), content } };
}

/** `cfs mkcomposefs --from-file` of dump lines (the root line added). */
function build(dir: string, lines: string[], name = 'image.cfs'): string {
  const dump = join(dir, `${name}.dump`);
  writeFileSync(dump, ['/ 4096 40755 2 0 0 0 0.0 - - -', ...lines].join('\n') + '\n');
  const image = join(dir, name);
  const r = cfs(['mkcomposefs', '--from-file', dump, image]);
  assert.equal(r.status, 0, r.stderr);
  chmodSync(image, 0o644);
  return image;
}

/** Mount with --fuse as root; returns the server's pid. */
function mountFuse(image: string, mnt: string, options: string, env?: NodeJS.ProcessEnv): { pid: number; log: string } {
  const m = cfs(['mount', '--fuse', '--json', '-o', options, image, mnt], env);
  assert.equal(m.status, 0, m.stderr);
  const r = JSON.parse(m.stdout) as { pid: number; log: string };
  return r;
}

/** Unmount (lazily), let a stopped server go on, and wait for it to exit. */
async function unmount(mnt: string, pid: number): Promise<void> {
  spawnSync('umount', ['-l', mnt]);
  if (pid && alive(pid)) {
    process.kill(pid, 'SIGCONT');
    if (!(await eventually(() => !alive(pid), 5000))) process.kill(pid, 'SIGKILL');
  }
}

/** The FUSE connection of the mount at `mnt` (/sys/fs/fuse/connections/N), to abort a connection that hangs. */
function abortConnection(mnt: string): void {
  const m = readMountinfo().find((x) => x.mountPoint === mnt && x.fstype === 'fuse.composefs');
  if (!m) return;
  const [major, minor] = m.dev.split(':').map(Number);
  try {
    writeFileSync(`/sys/fs/fuse/connections/${major * 2 ** 20 + minor}/abort`, '1');
  } catch {
    /* no fusectl: the lazy unmount and SIGKILL still end it */
  }
}

function escapedPayload(p: string): string {
  return p.replace(/[^!-~]|\\/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

test('redirects that leave the store or meet a symlink in it are EIO through FUSE: another user cannot read a root-only file', { skip: SKIP }, async () => {
  const { dir, store, mnt, good } = setup('fuse-redirect');
  // A root-only file beside the store, and a link to its directory planted in the store.
  const secretDir = join(dir, 'secret');
  mkdirSync(secretDir, { mode: 0o700 });
  const secret = join(secretDir, 'shadow');
  writeFileSync(secret, SECRET, { mode: 0o600 });
  mkdirSync(join(store, 'ab'));
  symlinkSync(secretDir, join(store, 'ee'));
  const up = '../'.repeat(24);
  const redirects: Record<string, string> = {
    dotdot: `${up}${secret.slice(1)}`,
    absolute: `/${up}${secret.slice(1)}`,
    inside: `ab/${up}${secret.slice(1)}`,
    link: 'ee/shadow',
    linkabs: '/ee/shadow',
  };
  const size = Buffer.byteLength(SECRET);
  const image = build(dir, [
    `/good ${Buffer.byteLength(good.content)} 100644 1 0 0 0 0.0 ${good.payload} - ${good.digest}`,
    ...Object.entries(redirects).map(([name, r]) => `/${name} ${size} 100644 1 0 0 0 0.0 ${escapedPayload(r)} - -`),
  ]);
  const log = join(dir, 'server.log');
  let pid = 0;
  try {
    ({ pid } = mountFuse(image, mnt, `basedir=${store},log=${log}`));
    assert.equal(asNobody(['cat', join(mnt, 'good')]).stdout, good.content);
    for (const name of Object.keys(redirects)) {
      const r = asNobody(['cat', join(mnt, name)]);
      assert.notEqual(r.stdout, SECRET, `${name}: another user read the root-only file through the mount`);
      assert.equal(r.status, 1, `${name}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, /Input\/output error/, name);
      // Root is refused alike: the kernel's own mount of such an image follows none of them.
      assert.throws(() => readFileSync(join(mnt, name)), /EIO/, name);
    }
    assert.ok(alive(pid), 'the server still serves');
    assert.equal(readFileSync(join(mnt, 'good'), 'utf8'), good.content);
    const text = readFileSync(log, 'utf8');
    assert.match(text, /ee\/shadow \(inode \d+\) meets a symlink in /);
    assert.match(text, /is not an object path/);
    assert.equal(readFileSync(secret, 'utf8'), SECRET);
  } finally {
    await unmount(mnt, pid);
    cleanupDir(dir);
  }
});

test('a FIFO (or device) where an object should be is EIO, logged, and hangs neither the reader nor the other files', { skip: SKIP, timeout: 120_000 }, async () => {
  const { dir, store, mnt, good } = setup('fuse-fifo');
  const fifoName = `ff/${'f'.repeat(62)}`;
  mkdirSync(join(store, 'ff'));
  const fifo = join(store, fifoName);
  spawnSync('mkfifo', ['-m', '0644', fifo]);
  assert.ok(lstatSync(fifo).isFIFO());
  const image = build(dir, [
    `/good ${Buffer.byteLength(good.content)} 100644 1 0 0 0 0.0 ${good.payload} - ${good.digest}`,
    `/fifo 4096 100644 1 0 0 0 0.0 ${fifoName} - -`,
    `/null 4096 100644 1 0 0 0 0.0 ee/null - -`,
  ]);
  mkdirSync(join(store, 'ee'));
  spawnSync('mknod', ['-m', '0666', join(store, 'ee', 'null'), 'c', '1', '3']);
  const log = join(dir, 'server.log');
  let pid = 0;
  let releaser = -1;
  try {
    ({ pid } = mountFuse(image, mnt, `basedir=${store},log=${log}`));
    // The reader runs apart: a blocked server must not block this test.
    const reader = spawn(NOBODY[0], [...NOBODY.slice(1), 'cat', join(mnt, 'fifo')], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    reader.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<number | null>((resolve) => reader.on('exit', (code) => resolve(code)));
    const code = await Promise.race([exited, new Promise<'hung'>((resolve) => setTimeout(() => resolve('hung'), 10_000))]);
    if (code === 'hung') {
      // Release the server's blocked open (a writer on the FIFO) so the rest can end.
      releaser = openSync(fifo, fsc.O_RDWR | fsc.O_NONBLOCK);
      abortConnection(mnt);
      reader.kill('SIGKILL');
    }
    assert.notEqual(code, 'hung', 'reading a file whose object is a FIFO hung');
    assert.equal(code, 1);
    assert.match(err, /Input\/output error/);
    const dev = asNobody(['cat', join(mnt, 'null')]);
    assert.equal(dev.status, 1, dev.stdout);
    assert.match(dev.stderr, /Input\/output error/);
    // Every other file still answers, on every serving thread.
    for (let i = 0; i < 4; i++) assert.equal(asNobody(['cat', join(mnt, 'good')], 10_000).stdout, good.content);
    assert.ok(alive(pid));
    const text = readFileSync(log, 'utf8');
    assert.match(text, new RegExp(`${fifoName} \\(inode \\d+\\) in ${store} is not a regular file; EIO`));
    assert.match(text, /ee\/null \(inode \d+\) in .* is not a regular file; EIO/);
  } finally {
    if (releaser >= 0) closeSync(releaser);
    abortConnection(mnt);
    await unmount(mnt, pid);
    cleanupDir(dir);
  }
});

/**
 * An image with what the shared reader refuses, made as an attacker would:
 * a symlink whose inode says 5000 bytes (two blocks with no NUL, the
 * fillers'), an entry name with a NUL, an xattr whose prefix index is 9.
 * Returns the image with all three, and one with the symlink's alone.
 */
function damagedImage(dir: string, good: { payload: string; digest: string; content: string }): { image: string; linkOnly: string } {
  const target = 'x'.repeat(4095);
  const filler = 'y'.repeat(4096);
  const image = build(dir, [
    `/a-long-link 4095 120777 1 0 0 0 0.0 ${target} - -`,
    `/b-filler 4096 100644 1 0 0 0 0.0 - ${filler} -`,
    `/c-filler 4096 100644 1 0 0 0 0.0 - ${filler} -`,
    `/d-nulname 0 100644 1 0 0 0 0.0 - - -`,
    `/e-xattr 0 100644 1 0 0 0 0.0 - - - user.unknownprefix=1`,
    `/good ${Buffer.byteLength(good.content)} 100644 1 0 0 0 0.0 ${good.payload} - ${good.digest}`,
  ]);
  const b = readFileSync(image);
  let from = -1;
  for (let o = 0; o + 5000 <= b.length; o += 4096) {
    if (!b.subarray(o, o + 5000).includes(0)) {
      from = o;
      break;
    }
  }
  assert.ok(from > 0, 'two blocks of filler one after the other');
  const targetAt = b.indexOf(Buffer.from(target));
  assert.equal(targetAt % 4096, 0, 'the target fills a block of its own');
  let inode = -1;
  for (let o = 1024; o + 32 <= b.length; o += 32) {
    if (b.readUInt16LE(o + 4) === 0o120777 && b.readUInt32LE(o + 8) === 4095 && b.readUInt32LE(o + 16) === targetAt / 4096) inode = o;
  }
  assert.ok(inode > 0, 'the symlink inode');
  b.writeUInt32LE(5000, inode + 8);
  b.writeUInt32LE(from / 4096, inode + 16);
  const linkOnly = join(dir, 'link-only.cfs');
  writeFileSync(linkOnly, b);
  const nul = b.indexOf(Buffer.from('d-nulname'));
  assert.equal(b.indexOf(Buffer.from('d-nulname'), nul + 1), -1);
  b[nul + 5] = 0;
  // user.unknownprefix: index 1 (user.) becomes 9, which no prefix has.
  const name = Buffer.from('unknownprefix');
  const at = b.indexOf(name);
  assert.equal(b[at - 4], name.length);
  assert.equal(b[at - 3], 1);
  b[at - 3] = 9;
  writeFileSync(image, b);
  return { image, linkOnly };
}

test('a FIFO named as the image is refused at once by the FUSE mount, not waited on', { skip: SKIP }, () => {
  const { dir, store, mnt } = setup('fuse-fifo-image');
  try {
    const fifo = join(dir, 'image.fifo');
    spawnSync('mkfifo', [fifo]);
    const r = cfs(['mount', '--fuse', '-o', `basedir=${store}`, fifo, mnt], process.env, 20_000);
    assert.equal(r.signal, null, 'the mount waited on the FIFO until killed');
    assert.equal(r.status, 1, r.stdout);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /image\.fifo: not a regular file or block device/);
    assert.equal(mountAt(mnt)?.fstype, undefined);
  } finally {
    cleanupDir(dir);
  }
});

test('the shared reader refuses a symlink target longer than PATH_MAX allows', { skip: SKIP }, () => {
  const { dir, good } = setup('fuse-reader');
  try {
    const { linkOnly } = damagedImage(dir, good);
    const r = cfs(['dump', linkOnly]);
    assert.equal(r.status, 1, r.stdout.slice(0, 200));
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /symlink target of 5000 bytes is too long \(the limit is 4095\)/);
  } finally {
    cleanupDir(dir);
  }
});

test('what the shared reader refuses is EIO through FUSE, and never stops the server: an over-long symlink target, a NUL in a name, an xattr of unknown prefix', { skip: SKIP }, async () => {
  const { dir, store, mnt, good } = setup('fuse-damage');
  const log = join(dir, 'server.log');
  let pid = 0;
  try {
    const { image } = damagedImage(dir, good);
    ({ pid } = mountFuse(image, mnt, `basedir=${store},log=${log}`));
    // The kernel refuses an answer longer than a page: twice ended the server before.
    for (let i = 0; i < 3; i++) {
      const r = asNobody(['readlink', '-v', join(mnt, 'a-long-link')]);
      assert.equal(r.status, 1, r.stdout.slice(0, 100));
      assert.match(r.stderr, /Input\/output error/);
    }
    assert.ok(alive(pid), 'the server survives');
    assert.equal(asNobody(['cat', join(mnt, 'good')]).stdout, good.content);
    const xattr = asNobody(['getfattr', '-d', join(mnt, 'e-xattr')]);
    assert.notEqual(xattr.status, 0, xattr.stdout);
    assert.match(xattr.stderr, /Input\/output error/);
    const ls = asNobody(['ls', '-a', mnt]);
    assert.notEqual(ls.status, 0, ls.stdout);
    assert.match(ls.stderr, /Input\/output error/);
    assert.equal(statSync(join(mnt, 'b-filler')).size, 4096);
    assert.ok(alive(pid));
    const text = readFileSync(log, 'utf8');
    // The reader's reasons: one decoder, one set of rules.
    assert.match(text, /symlink target of 5000 bytes is too long \(the limit is 4095\)/);
    assert.match(text, /entry name '.*' contains '\/' or NUL/);
    assert.match(text, /unsupported xattr name index 9/);
  } finally {
    await unmount(mnt, pid);
    cleanupDir(dir);
  }
});

test('an image whose root is not a directory: the FUSE mount is refused with the reader\'s reason, and nothing is mounted', { skip: SKIP }, () => {
  const { dir, store, mnt } = setup('fuse-root');
  try {
    const image = build(dir, ['/a 0 100644 1 0 0 0 0.0 - - -']);
    const bytes = readFileSync(image);
    const metaStart = bytes.readUInt32LE(1024 + 40) * 4096;
    const rootNid = bytes.readUInt16LE(1024 + 14);
    bytes.writeUInt16LE(0o100644, metaStart + rootNid * 32 + 4); // the compact root inode's mode
    writeFileSync(image, bytes);
    const reason = `/: root inode ${rootNid} is not a directory`;
    const dump = cfs(['dump', image]);
    assert.equal(dump.status, 1);
    assert.equal(dump.stderr.trim().split('\n').length, 1, dump.stderr);
    assert.ok(dump.stderr.includes(reason), dump.stderr);
    const m = cfs(['mount', '--fuse', '-o', `basedir=${store}`, image, mnt]);
    assert.notEqual(m.status, 0, m.stdout);
    assert.equal(m.stderr.trim().split('\n').length, 1, m.stderr);
    assert.ok(m.stderr.includes(reason), m.stderr);
    assert.equal(mountAt(mnt)?.fstype, undefined, 'nothing mounted');
  } finally {
    spawnSync('umount', ['-l', mnt]);
    cleanupDir(dir);
  }
});

test('the server log: never through a link or into a directory someone else made, and one escaped record per line', { skip: SKIP || (!existsSync('/run') ? 'no /run' : false) }, async () => {
  const { dir, store, mnt } = setup('fuse-log');
  const target = join(dir, 'crontab');
  writeFileSync(target, 'root only\n', { mode: 0o600 });
  // A world-writable sticky temp dir, where nobody got there first.
  const tmp = join(dir, 'tmp');
  mkdirSync(tmp);
  chmodSync(tmp, 0o1777);
  const planted = join(tmp, 'composefs-0');
  assert.equal(asNobody(['mkdir', '-m', '0777', planted]).status, 0);
  const mangled = `fuse${mnt.replace(/[^A-Za-z0-9._-]/g, '_')}.log`;
  assert.equal(asNobody(['ln', '-s', target, join(planted, mangled)]).status, 0);
  const runtime = join(dir, 'runtime');
  mkdirSync(runtime, { mode: 0o755 });
  chownSync(runtime, 65534, 65534);
  assert.equal(asNobody(['mkdir', '-m', '0777', join(runtime, 'composefs')]).status, 0);
  assert.equal(asNobody(['ln', '-s', target, join(runtime, 'composefs', mangled)]).status, 0);
  const forged = '* * * * * root touch /owned';
  const image = build(dir, [`/missing 100 100644 1 0 0 0 0.0 ab/x\\n${forged.replace(/ /g, '\\x20')}\\n - -`]);
  const env: NodeJS.ProcessEnv = { ...process.env, TMPDIR: tmp };
  delete env.XDG_RUNTIME_DIR;
  let pid = 0;
  let defaultLog = '';
  const hadRunDir = existsSync('/run/composefs');
  try {
    // The temp dir's planted directory is not root's: root's log is elsewhere, and the read logs nothing through the link.
    const m = mountFuse(image, mnt, `basedir=${store}`, env);
    pid = m.pid;
    defaultLog = m.log;
    assert.equal(asNobody(['cat', join(mnt, 'missing')]).status, 1);
    await unmount(mnt, pid);
    pid = 0;
    assert.equal(readFileSync(target, 'utf8'), 'root only\n');
    assert.ok(!m.log.startsWith(`${tmp}/`), m.log);

    // A runtime directory of someone else's, and a log named that is a link: refused in one line, nothing mounted.
    for (const [why, options, e] of [
      ['runtime', `basedir=${store}`, { ...env, XDG_RUNTIME_DIR: runtime }],
      ['link', `basedir=${store},log=${join(planted, mangled)}`, env],
    ] as const) {
      const r = cfs(['mount', '--fuse', '-o', options, image, mnt], e);
      assert.equal(r.status, 1, `${why}: ${r.stdout}`);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.match(r.stderr, why === 'runtime' ? /log directory .*\/runtime\/composefs: owned by uid 65534, not by uid 0/ : /a symlink \(logs are not written through links\)/);
      assert.equal(mountAt(mnt)?.fstype, undefined, `${why}: nothing mounted`);
      assert.equal(readFileSync(target, 'utf8'), 'root only\n');
    }

    // What the image says reaches the log escaped: the redirect's newlines forge no line.
    const log = join(dir, 'server.log');
    ({ pid } = mountFuse(image, mnt, `basedir=${store},log=${log}`));
    assert.equal(asNobody(['cat', join(mnt, 'missing')]).status, 1);
    const lines = readFileSync(log, 'utf8').split('\n').filter(Boolean);
    assert.equal(lines.length, 1, lines.join('\n'));
    assert.match(lines[0], /object: \/?ab\/x\\n\*\\x20\*.*is in none of the object stores; EIO$/);
    assert.ok(!lines.some((l) => l.startsWith('*')));
    assert.equal((statSync(log).mode & 0o777).toString(8), '600');
    await unmount(mnt, pid);
    pid = 0;

    // Our own log directory left open to others (earlier versions made it 0755): closed to 0700 and used.
    const own = join(dir, 'own-runtime');
    mkdirSync(join(own, 'composefs'), { recursive: true, mode: 0o755 });
    chmodSync(join(own, 'composefs'), 0o755);
    const mounted = mountFuse(image, mnt, `basedir=${store}`, { ...env, XDG_RUNTIME_DIR: own });
    pid = mounted.pid;
    assert.equal(asNobody(['cat', join(mnt, 'missing')]).status, 1);
    assert.equal((statSync(join(own, 'composefs')).mode & 0o777).toString(8), '700');
    assert.equal(mounted.log, join(own, 'composefs', mangled));
    assert.match(readFileSync(mounted.log, 'utf8'), /is in none of the object stores; EIO/);
  } finally {
    await unmount(mnt, pid);
    if (defaultLog.startsWith('/run/composefs/')) {
      rmSync(defaultLog, { force: true });
      try {
        if (!hadRunDir) rmdirSync('/run/composefs');
      } catch {
        /* another mount's log is there */
      }
    }
    cleanupDir(dir);
  }
});

test('cfs status escapes the mountpoints it prints: a user may mount where the name holds terminal escapes', { skip: SKIP }, async () => {
  const { dir, store, good } = setup('fuse-status-escape');
  const mnt = join(dir, 'mnt\x1b]0;owned\x07\x1b[31m');
  mkdirSync(mnt);
  const image = build(dir, [`/good ${Buffer.byteLength(good.content)} 100644 1 0 0 0 0.0 ${good.payload} - ${good.digest}`]);
  let pid = 0;
  try {
    ({ pid } = mountFuse(image, mnt, `basedir=${store},log=${join(dir, 'server.log')}`));
    for (const args of [['status'], ['status', '--json']]) {
      const r = cfs(args);
      assert.equal(r.status, 0, r.stderr);
      assert.ok(!r.stdout.includes('\x1b') && !r.stdout.includes('\x07'), `${args.join(' ')}: raw control characters reached the terminal`);
      assert.ok(r.stdout.includes(args.length === 1 ? 'mnt\\x1b]0;owned\\x07\\x1b[31m' : 'mnt\\u001b]0;owned\\u0007\\u001b[31m'), `${args.join(' ')}: the mountpoint is shown escaped`);
    }
  } finally {
    await unmount(mnt, pid);
    cleanupDir(dir);
  }
});

test('cfs status asks the server itself: a killed one is disconnected and --clean unmounts it; a stopped one makes status wait no more than its deadline', { skip: SKIP, timeout: 120_000 }, async () => {
  const { dir, store, mnt, good } = setup('fuse-status');
  const mnt2 = join(dir, 'mnt2');
  mkdirSync(mnt2);
  const image = build(dir, [`/good ${Buffer.byteLength(good.content)} 100644 1 0 0 0 0.0 ${good.payload} - ${good.digest}`]);
  const log = join(dir, 'server.log');
  const statusOf = (r: ReturnType<typeof cfs>, m: string) =>
    (JSON.parse(r.stdout) as { fuse: Array<{ mountpoint: string; state: string; why: string }> }).fuse.filter((f) => f.mountpoint === m);
  let pid = 0;
  let stopped = 0;
  let loop = '';
  try {
    ({ pid } = mountFuse(image, mnt, `basedir=${store},log=${log}`));
    // Its root's attributes are now in the kernel's cache, for a year.
    assert.ok(statSync(mnt).isDirectory());
    assert.equal(readFileSync(join(mnt, 'good'), 'utf8'), good.content);
    assert.deepEqual(statusOf(cfs(['status', '--json']), mnt).map((f) => f.state), ['serving']);
    process.kill(pid, 'SIGKILL');
    assert.ok(await eventually(() => !alive(pid), 5000));
    pid = 0;
    assert.deepEqual(statusOf(cfs(['status', '--json']), mnt).map((f) => f.state), ['disconnected']);
    const c = cfs(['status', '--clean']);
    assert.equal(c.status, 0, c.stderr);
    assert.match(c.stdout, new RegExp(`cleaned: unmounted ${mnt} \\(FUSE server gone\\)`));
    assert.equal(mountAt(mnt)?.fstype, undefined);

    // A stopped server, whose root was never asked about: status answers within its deadline and --clean leaves it.
    // A loop device over one of its files is not read either (status looks for composefs images on loop devices).
    ({ pid: stopped } = mountFuse(image, mnt2, `basedir=${store},log=${log}`));
    const losetup = spawnSync('losetup', ['--find', '--show', '--read-only', join(mnt2, 'good')], { encoding: 'utf8', timeout: 10_000 });
    assert.equal(losetup.status, 0, losetup.stderr);
    loop = losetup.stdout.trim();
    spawnSync('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches']);
    process.kill(stopped, 'SIGSTOP');
    const t0 = Date.now();
    const s = cfs(['status', '--json'], process.env, 20_000);
    const took = Date.now() - t0;
    assert.equal(s.status, 0, `status did not return (${s.error?.message ?? s.signal})`);
    assert.ok(took < 10_000, `status took ${took} ms`);
    const st = statusOf(s, mnt2);
    assert.deepEqual(st.map((f) => f.state), ['unresponsive']);
    assert.match(st[0].why, /did not answer within/);
    const c2 = cfs(['status', '--clean'], process.env, 20_000);
    assert.equal(c2.status, 0);
    assert.equal(mountAt(mnt2)?.fstype, 'fuse.composefs', 'a server that does not answer is not taken for dead');
  } finally {
    if (stopped) {
      abortConnection(mnt2);
      await unmount(mnt2, stopped);
    }
    if (loop) spawnSync('losetup', ['-d', loop]);
    await unmount(mnt, pid);
    cleanupDir(dir);
  }
});
