/**
 * Where the commands write their output file (mkcomposefs IMAGE, composefs-dump
 * DEST, cfs dump [--image] IMAGE FILE), as the reference's fopen(PATH, "w")
 * writes it: into a device or FIFO, through a symlink, keeping an existing
 * file's mode and owner; and, unlike the reference, a regular file is never
 * seen half-written, even when the writer is killed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseDump } from '../src/dumpfile/parse.js';
import { writeImage } from '../src/erofs/writer.js';
import { cliPath, isRoot } from './helpers/paths.js';
import { inTemp } from './helpers/temp.js';

const DUMP = `/ 4096 40755 2 0 0 0 1700000000.0 - - - user.a=1
/file 5 100644 1 0 0 0 1700000000.0 - hello - user.a=1
/big 100000 100644 1 0 0 0 1700000000.0 ab/cdef - -
/link 4 120777 1 0 0 0 1700000000.0 file - -
`;

interface Writer {
  name: string;
  tool: string;
  args: (out: string) => string[];
}

/** Every command that writes an output file, given the inputs in `dir`. */
function writers(dir: string): Writer[] {
  const dump = join(dir, 'in.dump');
  const image = join(dir, 'in.cfs');
  writeFileSync(dump, DUMP);
  writeFileSync(image, writeImage(parseDump(Buffer.from(DUMP))));
  return [
    { name: 'mkcomposefs', tool: 'mkcomposefs', args: (out) => ['--from-file', dump, out] },
    { name: 'composefs-dump', tool: 'composefs-dump', args: (out) => [image, out] },
    { name: 'cfs dump --image', tool: 'cfs', args: (out) => ['dump', '--image', image, out] },
    { name: 'cfs dump', tool: 'cfs', args: (out) => ['dump', image, out] },
  ];
}

function run(w: Writer, out: string) {
  return spawnSync(cliPath(w.tool), w.args(out), { encoding: 'utf8' });
}

/** What the writer puts in a new regular file: what every other kind of output must receive. */
function regularBuild(w: Writer, dir: string): Buffer {
  const out = join(dir, `regular-${w.name.replace(/\W+/g, '-')}`);
  const r = run(w, out);
  assert.equal(r.status, 0, `${w.name}: ${r.stderr}`);
  const bytes = readFileSync(out);
  rmSync(out);
  assert.ok(bytes.length > 0);
  return bytes;
}

const withTemp = (fn: (dir: string) => void | Promise<void>): Promise<void> => inTemp('out', fn)();

test('a character device is written in place: a full device gives ENOSPC and stays a device', (t) =>
  withTemp((dir) => {
    if (!isRoot) return t.skip('mknod needs root');
    for (const w of writers(dir)) {
      const dev = join(dir, 'full');
      // A private /dev/full: the same device (1:7), without touching the system's node.
      assert.equal(spawnSync('mknod', [dev, 'c', '1', '7']).status, 0);
      const r = run(w, dev);
      assert.equal(r.status, 1, `${w.name}: exit status (stderr: ${r.stderr})`);
      assert.match(r.stderr, /^[^\n]*No space left on device\n$/, w.name);
      const st = lstatSync(dev);
      assert.ok(st.isCharacterDevice(), `${w.name}: still a character device`);
      assert.equal(st.rdev, (1 << 8) | 7, `${w.name}: still 1:7`);
      rmSync(dev);
      // /dev/null takes everything: success, and still a device.
      assert.equal(spawnSync('mknod', [dev, 'c', '1', '3']).status, 0);
      assert.equal(run(w, dev).status, 0, w.name);
      assert.ok(lstatSync(dev).isCharacterDevice(), `${w.name}: /dev/null copy still a device`);
      rmSync(dev);
    }
    const real = statSync('/dev/full');
    assert.ok(real.isCharacterDevice() && real.rdev === ((1 << 8) | 7), 'the system /dev/full is untouched');
  }));

test('a FIFO is written in place: its reader gets exactly the bytes a regular-file build holds', (t) =>
  withTemp((dir) => {
    if (spawnSync('mkfifo', ['--version']).status !== 0) return t.skip('no mkfifo');
    for (const w of writers(dir)) {
      const expected = regularBuild(w, dir);
      const fifo = join(dir, 'fifo');
      const got = join(dir, 'got');
      assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
      // The writer in the background, the reader in the foreground: a writer that replaced the FIFO would leave cat waiting (the timeout).
      const cmd = `"$0" "$@" & w=$!; cat "${fifo}" > "${got}"; wait $w`;
      const r = spawnSync('sh', ['-c', cmd, cliPath(w.tool), ...w.args(fifo)], { encoding: 'utf8', timeout: 30_000 });
      assert.equal(r.status, 0, `${w.name}: ${r.stderr} ${r.error ?? ''}`);
      assert.ok(lstatSync(fifo).isFIFO(), `${w.name}: still a FIFO`);
      assert.ok(readFileSync(got).equals(expected), `${w.name}: the reader got the image`);
      rmSync(fifo);
      rmSync(got);
    }
  }));

test('a symlink is followed: its target is written and the link stays a link', () =>
  withTemp((dir) => {
    for (const w of writers(dir)) {
      const expected = regularBuild(w, dir);
      mkdirSync(join(dir, 'sub'));
      // link -> sub/chain -> ../target (relative to sub/), an existing file
      writeFileSync(join(dir, 'target'), 'old');
      symlinkSync('sub/chain', join(dir, 'link'));
      symlinkSync('../target', join(dir, 'sub', 'chain'));
      const r = run(w, join(dir, 'link'));
      assert.equal(r.status, 0, `${w.name}: ${r.stderr}`);
      assert.equal(readlinkSync(join(dir, 'link')), 'sub/chain', `${w.name}: link kept`);
      assert.equal(readlinkSync(join(dir, 'sub', 'chain')), '../target', `${w.name}: chain kept`);
      assert.ok(readFileSync(join(dir, 'target')).equals(expected), `${w.name}: target written`);
      // A dangling link: the file it names is created, as open(O_CREAT) does.
      rmSync(join(dir, 'target'));
      const r2 = run(w, join(dir, 'link'));
      assert.equal(r2.status, 0, `${w.name}: ${r2.stderr}`);
      assert.ok(lstatSync(join(dir, 'link')).isSymbolicLink());
      assert.ok(readFileSync(join(dir, 'target')).equals(expected), `${w.name}: dangling target created`);
      for (const f of ['link', 'target', 'sub']) rmSync(join(dir, f), { recursive: true });
      assert.deepEqual(readdirSync(dir).sort(), ['in.cfs', 'in.dump'], `${w.name}: nothing else left`);
    }
  }));

test('an existing regular file is replaced atomically and keeps its mode and owner', (t) =>
  withTemp((dir) => {
    for (const w of writers(dir)) {
      const expected = regularBuild(w, dir);
      const out = join(dir, 'out');
      writeFileSync(out, 'old contents');
      chmodSync(out, 0o600);
      if (isRoot) chownSync(out, 1000, 1000);
      const before = lstatSync(out);
      const r = run(w, out);
      assert.equal(r.status, 0, `${w.name}: ${r.stderr}`);
      const after = lstatSync(out);
      assert.ok(readFileSync(out).equals(expected), `${w.name}: new contents`);
      assert.equal(after.mode, before.mode, `${w.name}: mode kept (${after.mode.toString(8)})`);
      assert.equal(after.uid, before.uid, `${w.name}: owner kept`);
      assert.equal(after.gid, before.gid, `${w.name}: group kept`);
      // Replaced by a rename, not rewritten in place: a reader holding the old file keeps the old bytes.
      assert.notEqual(after.ino, before.ino, `${w.name}: a new inode took the name`);
      rmSync(out);
      // A new file: 0666 less the umask, as fopen creates it (the test runs with its own umask).
      const r2 = spawnSync('sh', ['-c', 'umask 027; exec "$0" "$@"', cliPath(w.tool), ...w.args(out)], { encoding: 'utf8' });
      assert.equal(r2.status, 0, r2.stderr);
      assert.equal(lstatSync(out).mode & 0o777, 0o640, `${w.name}: new file mode`);
      rmSync(out);
      assert.deepEqual(readdirSync(dir).sort(), ['in.cfs', 'in.dump'], `${w.name}: no temporary file left`);
    }
    if (!isRoot) t.diagnostic('not root: the owner part ran with the test user as owner');
  }));

test('a directory as output is refused with one line, as open(2) refuses it', () =>
  withTemp((dir) => {
    for (const w of writers(dir)) {
      mkdirSync(join(dir, 'd'));
      const r = run(w, join(dir, 'd'));
      assert.equal(r.status, 1, w.name);
      assert.match(r.stderr, /^[^\n]*Is a directory\n$/, w.name);
      rmSync(join(dir, 'd'), { recursive: true });
    }
  }));

/** Poll the child's open files until it holds an output file in `dir` open for writing (a temporary, named or not). */
function waitForOutputOpen(pid: number, dir: string, deadline: number): boolean {
  while (Date.now() < deadline) {
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      return false; // exited
    }
    for (const fd of fds) {
      let target: string;
      try {
        target = readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        continue;
      }
      if (target.startsWith(`${dir}/`) && (target.endsWith(' (deleted)') || target.endsWith('.tmp'))) return true;
    }
  }
  return false;
}

test('a writer killed while writing leaves the old file whole and no other file', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-out-kill-'));
  const inputs = mkdtempSync(join(tmpdir(), 'cfs-out-kill-in-'));
  try {
    // ~100 MB of inline content: an image that takes tens of milliseconds to write.
    const lines = ['/ 4096 40755 2 0 0 0 0.0 - - -'];
    const content = 'a'.repeat(4000);
    for (let i = 0; i < 25000; i++) lines.push(`/f${String(i).padStart(6, '0')} 4000 100644 1 0 0 0 0.0 - ${content} -`);
    const dump = join(inputs, 'big.dump');
    writeFileSync(dump, `${lines.join('\n')}\n`);
    const image = join(inputs, 'big.cfs');
    writeFileSync(image, writeImage(parseDump(readFileSync(dump))));
    const runs: Array<[string, string[]]> = [
      ['mkcomposefs', ['--from-file', dump]],
      ['composefs-dump', [image]],
    ];
    for (const [tool, args] of runs) {
      const out = join(dir, 'out.cfs');
      writeFileSync(out, 'the previous image');
      let caught = 0;
      for (let attempt = 0; attempt < 5; attempt++) {
        const child = spawn(cliPath(tool), [...args, out], { stdio: 'ignore' });
        const exited = new Promise<void>((r) => child.on('exit', () => r()));
        const writing = waitForOutputOpen(child.pid!, dir, Date.now() + 60_000);
        if (writing) {
          child.kill('SIGKILL');
          caught++;
        }
        await exited;
        assert.deepEqual(readdirSync(dir), ['out.cfs'], `${tool}: no temporary file left`);
        if (writing) assert.equal(readFileSync(out, 'utf8'), 'the previous image', `${tool}: killed mid-write, the old file is whole`);
        else {
          assert.ok(readFileSync(out).equals(readFileSync(image)), `${tool}: finished, the new image is whole`);
          writeFileSync(out, 'the previous image');
        }
      }
      assert.ok(caught > 0, `${tool}: killed during the write at least once in 5 tries`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
    rmSync(inputs, { recursive: true, force: true });
  }
});

test('as a user who cannot keep the owner or use the directory, the file is written in place as the reference does; a file the user may not write is refused', (t) => {
  if (!isRoot) return t.skip('needs root to run the writer as another user');
  if (spawnSync('setpriv', ['--version']).status !== 0) return t.skip('no setpriv');
  // The writer runs as uid 1000 (setpriv); its inputs and directories must be reachable for that user.
  const dir = mkdtempSync(join(tmpdir(), 'cfs-out-user-'));
  try {
    chmodSync(dir, 0o755);
    const dump = join(dir, 'in.dump');
    writeFileSync(dump, DUMP, { mode: 0o644 });
    const expected = writeImage(parseDump(Buffer.from(DUMP)));
    const asUser = (out: string) =>
      spawnSync('setpriv', ['--reuid=1000', '--regid=1000', '--clear-groups', cliPath('mkcomposefs'), '--from-file', dump, out], { encoding: 'utf8' });
    const cases: Array<{ name: string; dirMode: number; fileMode: number; ok: boolean }> = [
      { name: 'directory not writable, file writable', dirMode: 0o755, fileMode: 0o666, ok: true },
      { name: 'directory writable, file owned by root', dirMode: 0o777, fileMode: 0o666, ok: true },
      { name: 'file not writable', dirMode: 0o777, fileMode: 0o644, ok: false },
    ];
    for (const c of cases) {
      const sub = join(dir, c.name.replace(/\W+/g, '-'));
      mkdirSync(sub);
      chmodSync(sub, c.dirMode);
      const out = join(sub, 'out.cfs');
      writeFileSync(out, 'old');
      chmodSync(out, c.fileMode);
      const before = lstatSync(out);
      const r = asUser(out);
      const after = lstatSync(out);
      if (c.ok) {
        assert.equal(r.status, 0, `${c.name}: ${r.stderr}`);
        assert.ok(readFileSync(out).equals(expected), `${c.name}: written`);
        assert.equal(after.ino, before.ino, `${c.name}: in place`);
      } else {
        assert.equal(r.status, 1, c.name);
        assert.match(r.stderr, /^mkcomposefs: failed to open output file .*: Permission denied\n$/, c.name);
        assert.equal(readFileSync(out, 'utf8'), 'old', `${c.name}: untouched`);
      }
      assert.equal(after.uid, 0, `${c.name}: owner kept`);
      assert.equal(after.mode, before.mode, `${c.name}: mode kept`);
      assert.deepEqual(readdirSync(sub), ['out.cfs'], `${c.name}: nothing else left`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
