/**
 * A verified mount by default (issue 16, item 14): on a kernel without
 * fs-verity, a mount that requires checked objects (`digest=`, `verity`)
 * is served by the FUSE server with verity instead of failing, as root and
 * as an unprivileged user; --explain says why; a changed object reads EIO.
 * What remains when nothing can verify (`--fuse=no`) names `--fuse`, and
 * `tryverity` stays the explicit choice of the unchecked kernel mount.
 * Also `cfs mount --help` (item 15): both the IMAGE and the NAME form.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, openSync, closeSync, readFileSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { cliPath, isRoot } from './helpers/paths.js';
import { alive, cleanupDir, eventually, makeImage, scratch, standardFiles, type Fixture } from './mount-fixtures.js';
import { fsverityDigest, fsverityDigestOfFileSync } from '../src/fsverity/index.js';
import { digestToObjectPath } from '../src/store/layout.js';
import { kernelHasFsverity } from '../src/mount/kernel.js';

const NOBODY = ['/usr/bin/setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all'];
const SKIP = !isRoot
  ? 'needs root (kernel mounts, dropping to nobody)'
  : !existsSync('/dev/fuse')
    ? 'no /dev/fuse'
    : kernelHasFsverity() !== false
      ? 'this kernel may have fs-verity: the kernel rung checks the objects itself'
      : false;
const SKIP_USER = SKIP || (!existsSync('/usr/bin/fusermount3') ? 'no fusermount3 (Debian fuse3)' : !existsSync('/usr/bin/setpriv') ? 'no setpriv' : false);

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function run(cmd: string[], asNobody = false): Run {
  const argv = asNobody ? [...NOBODY, ...cmd] : cmd;
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function cfs(args: string[], asNobody = false): Run {
  return run([process.execPath, cliPath('cfs'), ...args], asNobody);
}

function mountLines(mnt: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l.split(' ')[4] === mnt);
}

/** An object of the fixture's store, by the file's content. */
function objectOf(fx: Fixture, path: string): string {
  return join(fx.basedir, digestToObjectPath(fsverityDigest(fx.files[path])));
}

/** Change one byte of a file in place. */
function tamper(file: string): void {
  const fd = openSync(file, 'r+');
  try {
    writeSync(fd, Buffer.from('X'), 0, 1, 100);
  } finally {
    closeSync(fd);
  }
}

/** A fixture an unprivileged user can reach, a mountpoint and a log directory that user owns, /dev/fuse open to all as udev makes it. */
function forNobody(fx: Fixture): { logDir: string; restore: () => void } {
  spawnSync('chmod', ['-R', 'a+rX', fx.dir]);
  chownSync(fx.mnt, 65534, 65534);
  const logDir = join(fx.dir, 'log');
  mkdirSync(logDir, { mode: 0o700 });
  chownSync(logDir, 65534, 65534);
  const mode = statSync('/dev/fuse').mode & 0o7777;
  chmodSync('/dev/fuse', 0o666);
  return { logDir, restore: () => chmodSync('/dev/fuse', mode) };
}

async function unmounted(mnt: string, pid: number): Promise<void> {
  if (mountLines(mnt).length) spawnSync('umount', ['-l', mnt]);
  if (pid) assert.ok(await eventually(() => !alive(pid), 5000), 'the server exits once unmounted');
}

test('root, no fs-verity: digest= and verity mount through FUSE with verity; --explain says why; a changed object reads EIO', { skip: SKIP }, async () => {
  const dir = scratch('verified-root');
  let pid = 0;
  try {
    const fx = makeImage(dir, standardFiles());
    const digest = fsverityDigestOfFileSync(fx.image).digest.toString('hex');
    for (const [option, tampered] of [
      [`digest=${digest}`, 'big.bin'],
      ['verity', 'sub/dir/nested.txt'],
    ] as const) {
      const asked = option === 'verity' ? 'verity' : 'digest=';
      const m = cfs(['mount', '--explain', '-o', `basedir=${fx.basedir},${option},log=${join(dir, 'server.log')}`, fx.image, fx.mnt]);
      assert.equal(m.status, 0, `${option}: ${m.stderr}`);
      try {
        const lines = m.stdout.split('\n');
        assert.match(lines[0], / through FUSE in /, m.stdout);
        assert.match(
          lines[1],
          new RegExp(`^  fuse: ${asked} requires verified objects and the kernel cannot check them: this kernel lacks fs-verity .*; the FUSE server checks every object against its digest and every block it reads \\(verity\\)$`),
          m.stdout,
        );
        const line = mountLines(fx.mnt);
        assert.equal(line.length, 1);
        assert.match(line[0], / - fuse\.composefs /);
        pid = Number(/server: process (\d+)/.exec(m.stdout)?.[1] ?? 0);
        assert.equal(readFileSync(join(fx.mnt, 'small.txt'), 'utf8'), 'tiny 0\n');
        tamper(objectOf(fx, tampered));
        assert.throws(() => readFileSync(join(fx.mnt, tampered)), /EIO/, `${option}: the changed ${tampered} is refused`);
      } finally {
        const u = cfs(['umount', fx.mnt]);
        assert.equal(u.status, 0, u.stderr);
        await unmounted(fx.mnt, pid);
      }
    }
  } finally {
    cleanupDir(dir);
  }
});

test('nobody, no fs-verity: digest= lands on FUSE with verity, not on the kernel verity error; a changed object reads EIO', { skip: SKIP_USER }, async () => {
  const dir = scratch('verified-user');
  const fx = makeImage(dir, standardFiles());
  const { logDir, restore } = forNobody(fx);
  let pid = 0;
  try {
    const digest = fsverityDigestOfFileSync(fx.image).digest.toString('hex');
    const m = cfs(['mount', '--json', '-o', `basedir=${fx.basedir},digest=${digest},log=${join(logDir, 'server.log')}`, fx.image, fx.mnt], true);
    assert.equal(m.status, 0, m.stderr);
    const r = JSON.parse(m.stdout) as { rung: string; verity: boolean; pid: number; explain: string[] };
    pid = r.pid;
    assert.equal(r.rung, 'fuse');
    assert.equal(r.verity, true);
    assert.match(r.explain[0], /^fuse: digest= requires verified objects and the kernel cannot check them: /);
    const read = (path: string) => run(['cat', join(fx.mnt, path)], true);
    assert.equal(read('small.txt').stdout, 'tiny 0\n');
    assert.deepEqual(Buffer.from(read('sub/dir/nested.txt').stdout), fx.files['sub/dir/nested.txt']);
    tamper(objectOf(fx, 'big.bin'));
    const bad = read('big.bin');
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr, /Input\/output error/);
    const u = cfs(['umount', fx.mnt], true);
    assert.equal(u.status, 0, u.stderr);
  } finally {
    restore();
    await unmounted(fx.mnt, pid);
    cleanupDir(dir);
  }
});

test('--fuse=no with digest= where the kernel cannot verify: one line naming --fuse, nothing mounted (root and nobody)', { skip: SKIP_USER }, async () => {
  const dir = scratch('verified-fuse-no');
  const fx = makeImage(dir, standardFiles());
  const { restore } = forNobody(fx);
  try {
    const digest = fsverityDigestOfFileSync(fx.image).digest.toString('hex');
    for (const asNobody of [false, true]) {
      for (const args of [
        ['mount', '--fuse=no', '-o', `basedir=${fx.basedir},digest=${digest}`, fx.image, fx.mnt],
        ['mount', '-o', `fuse=no,basedir=${fx.basedir},verity`, fx.image, fx.mnt],
      ]) {
        const r = cfs(args, asNobody);
        assert.equal(r.status, 1, r.stderr);
        const lines = r.stderr.trim().split('\n');
        assert.equal(lines.length, 1, r.stderr);
        assert.match(lines[0], /^cfs mount: (digest=|verity): the kernel cannot verify the objects, .*fs-verity.*; the FUSE server verifies them itself \(--fuse\), or add tryverity/);
        assert.deepEqual(mountLines(fx.mnt), []);
      }
    }
  } finally {
    restore();
    cleanupDir(dir);
  }
});

test('tryverity: the kernel mount without checks when asked for; through FUSE it checks, and nothing says unchecked', { skip: SKIP }, async () => {
  const dir = scratch('verified-try');
  let pid = 0;
  try {
    const fx = makeImage(dir, standardFiles());
    const digest = fsverityDigestOfFileSync(fx.image).digest.toString('hex');
    const k = cfs(['mount', '--json', '-o', `basedir=${fx.basedir},digest=${digest},tryverity`, fx.image, fx.mnt]);
    assert.equal(k.status, 0, k.stderr);
    try {
      const r = JSON.parse(k.stdout) as { rung: string; verity: boolean; explain: string[] };
      assert.equal(r.rung, 'kernel');
      assert.equal(r.verity, false);
      assert.ok(r.explain.some((l) => /^verity: off, .*tryverity: going on without/.test(l)), r.explain.join('\n'));
    } finally {
      assert.equal(cfs(['umount', fx.mnt]).status, 0);
    }
    const f = cfs(['mount', '--fuse', '--json', '-o', `basedir=${fx.basedir},tryverity,log=${join(dir, 'server.log')}`, fx.image, fx.mnt]);
    assert.equal(f.status, 0, f.stderr);
    try {
      const r = JSON.parse(f.stdout) as { rung: string; verity: boolean; pid: number; explain: string[] };
      pid = r.pid;
      assert.equal(r.rung, 'fuse');
      assert.equal(r.verity, true);
      assert.doesNotMatch(f.stdout, /unchecked/);
      tamper(objectOf(fx, 'big.bin'));
      assert.throws(() => readFileSync(join(fx.mnt, 'big.bin')), /EIO/);
    } finally {
      assert.equal(cfs(['umount', fx.mnt]).status, 0);
      await unmounted(fx.mnt, pid);
    }
  } finally {
    cleanupDir(dir);
  }
});

test('cfs mount --help: the IMAGE and the NAME form; basedir= required only with IMAGE; tryverity under FUSE is not called unchecked', () => {
  for (const prog of ['cfs', 'mount.composefs']) {
    const r = run([process.execPath, cliPath(prog), ...(prog === 'cfs' ? ['mount'] : []), '--help']);
    assert.equal(r.status, 0, r.stderr);
    const name = prog === 'cfs' ? 'cfs mount' : 'mount.composefs';
    const [first, second] = r.stdout.split('\n');
    assert.match(first, new RegExp(`^Usage: ${name} \\[-o OPTIONS\\] \\[--explain\\] IMAGE MOUNTPOINT`));
    assert.match(second, new RegExp(`^   or: ${name} \\[--repo DIR\\] \\[-o OPTIONS\\] \\[--explain\\] NAME MOUNTPOINT`));
    const basedir = r.stdout.slice(r.stdout.indexOf('  basedir='), r.stdout.indexOf('  digest='));
    assert.match(basedir.replace(/\s+/g, ' '), /\(required with IMAGE; a NAME brings its repository's\)/);
    const tryverity = r.stdout.slice(r.stdout.indexOf('  tryverity'), r.stdout.indexOf('\n  ro, rw'));
    const underFuse = tryverity.slice(tryverity.indexOf('FUSE:'));
    assert.match(underFuse, /^FUSE: the server checks every object/);
    assert.doesNotMatch(underFuse, /unchecked|without/);
  }
});
