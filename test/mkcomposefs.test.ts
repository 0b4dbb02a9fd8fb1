/**
 * The mkcomposefs drop-in as a script sees it: arguments, exit codes, one-line
 * errors and never a partial image. Uses only dumps the test writes itself.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseDump } from '../src/dumpfile/parse.js';
import { writeImage } from '../src/erofs/writer.js';
import { fsverityDigest } from '../src/fsverity/index.js';
import { cliPath, isRoot } from './helpers/paths.js';
import { withTemp } from './helpers/temp.js';

const DUMP = `/ 4096 40755 2 0 0 0 1700000000.0 - - - user.a=1
/file 5 100644 1 0 0 0 1700000000.0 - hello - user.a=1
/big 100000 100644 1 0 0 0 1700000000.0 ab/cdef - -
`;

function run(args: string[], input?: string) {
  return spawnSync(cliPath('mkcomposefs'), args, { encoding: 'utf8', input });
}


function assertOneLineError(r: ReturnType<typeof run>, pattern: RegExp): void {
  assert.equal(r.status, 1, `exit status, stderr: ${r.stderr}`);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `one line: ${r.stderr}`);
  assert.match(lines[0], pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
}

test('a dump file becomes the same image as the library writes, and --print-digest prints its fs-verity digest', () => {
  withTemp('mk', (dir) => {
    const dump = join(dir, 'tree.dump');
    writeFileSync(dump, DUMP);
    const out = join(dir, 'tree.cfs');
    const r = run(['--print-digest', '--from-file', dump, out]);
    assert.equal(r.status, 0, r.stderr);
    const expected = writeImage(parseDump(Buffer.from(DUMP)));
    assert.ok(readFileSync(out).equals(expected));
    assert.equal(r.stdout, `${fsverityDigest(expected).toString('hex')}\n`);
    assert.deepEqual(readdirSync(dir).sort(), ['tree.cfs', 'tree.dump'], 'no temporary file left');
  });
});

test('usage errors exit 1 with one line, as the reference', () => {
  assertOneLineError(run(['--no-such-option', 'a', 'b']), /unrecognized option '--no-such-option'/);
  assertOneLineError(run([]), /No source path specified/);
  assertOneLineError(run(['--from-file', 'x']), /No destination path specified/);
  assertOneLineError(run(['--print-digest-only', '--from-file', 'x', 'y']), /Cannot specify destination path with --print-digest-only/);
  assertOneLineError(run(['--min-version=x', 'a', 'b']), /Invalid min version x/);
  assertOneLineError(run(['--threads=0', '/', '/tmp/never']), /Invalid threads count 0/);
  assertOneLineError(run(['a', 'b', 'c']), /Too many arguments/);
  assertOneLineError(run(['--max-version=7', '--from-file', '-', '/tmp/never'], DUMP), /unsupported format version 7/);
  const help = run(['--help']);
  assert.equal(help.status, 0);
  for (const option of ['--digest-store', '--from-file', '--print-digest-only', '--min-version', '--max-version', '--threads', '--use-epoch', '--skip-xattrs', '--user-xattrs', '--skip-devices']) {
    assert.match(help.stdout, new RegExp(option), `--help explains ${option}`);
  }
});

test('missing inputs and unwritable outputs are one-line errors and leave no file', (t) => {
  withTemp('mk', (dir) => {
    assertOneLineError(run(['--from-file', join(dir, 'missing.dump'), join(dir, 'out.cfs')]), /missing\.dump.*No such file or directory/);
    assertOneLineError(run([join(dir, 'missing-dir'), join(dir, 'out.cfs')]), /missing-dir.*No such file or directory/);
    const dump = join(dir, 'tree.dump');
    writeFileSync(dump, DUMP);
    assertOneLineError(run(['--from-file', dump, join(dir, 'no', 'such', 'dir', 'out.cfs')]), /failed to open output file .*out\.cfs.: No such file or directory/);
    writeFileSync(join(dir, 'bad.dump'), DUMP.replace('100644 1 0 0 0 1700000000.0 - hello', '10x644 1 0 0 0 1700000000.0 - hello'));
    assertOneLineError(run(['--from-file', join(dir, 'bad.dump'), join(dir, 'out.cfs')]), /line 2: mode/);
    assert.deepEqual(readdirSync(dir).sort(), ['bad.dump', 'tree.dump']);
    if (!isRoot) {
      const ro = join(dir, 'ro');
      mkdirSync(ro);
      chmodSync(ro, 0o500);
      assertOneLineError(run(['--from-file', dump, join(ro, 'out.cfs')]), /Permission denied/);
    } else t.diagnostic('running as root: the permission-denied case is covered by the read-only store tests');
  });
});

test('a failed build keeps the previous image in place', () => {
  withTemp('mk', (dir) => {
    const dump = join(dir, 'tree.dump');
    writeFileSync(dump, DUMP);
    const out = join(dir, 'tree.cfs');
    assert.equal(run(['--from-file', dump, out]).status, 0);
    const before = readFileSync(out);
    writeFileSync(dump, `${DUMP}/broken 1 1 1 1 1\n`);
    assertOneLineError(run(['--from-file', dump, out]), /line 4/);
    assert.ok(readFileSync(out).equals(before));
  });
});

/**
 * Runs mkcomposefs and sends `signal` the moment it holds the new image open in `dir` (an unnamed
 * O_TMPFILE file, or a named temporary). Returns whether that moment was seen before the child ended.
 */
async function signalWhileWriting(dir: string, args: string[], signal: NodeJS.Signals): Promise<boolean> {
  const child = spawn(cliPath('mkcomposefs'), args, { stdio: 'ignore' });
  const exited = new Promise((resolve) => child.on('exit', resolve));
  let signalled = false;
  const poll = setInterval(() => {
    if (signalled) return;
    let fds: string[] = [];
    try {
      fds = readdirSync(`/proc/${child.pid}/fd`);
    } catch {
      return;
    }
    for (const fd of fds) {
      let target = '';
      try {
        target = readlinkSync(`/proc/${child.pid}/fd/${fd}`);
      } catch {
        continue;
      }
      if (target.startsWith(`${dir}/`) && (target.endsWith(' (deleted)') || target.endsWith('.tmp'))) {
        signalled = true;
        child.kill(signal);
        return;
      }
    }
  }, 0);
  await exited;
  clearInterval(poll);
  return signalled;
}

test('a signal while the image is being written leaves the whole image, never a temporary file', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-mk-int-'));
  try {
    // A dump whose image takes a few milliseconds to write and sync.
    const lines = ['/ 4096 40755 2 0 0 0 1700000000.0 - - -'];
    for (let i = 0; i < 20000; i++) lines.push(`/f${i} 100000 100644 1 0 0 0 1700000000.${i} ab/${String(i).padStart(62, '0')} - - user.n=${i}`);
    const dump = join(dir, 'big.dump');
    writeFileSync(dump, `${lines.join('\n')}\n`);
    const expected = writeImage(parseDump(readFileSync(dump)));
    for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
      const out = join(dir, 'out.cfs');
      // The poll can miss a write of a few milliseconds on a busy machine (CI did once), so a run in
      // which it was not seen is tried again rather than counted as a failure.
      let signalled = false;
      for (let attempt = 0; attempt < 20 && !signalled; attempt++) {
        rmSync(out, { force: true });
        signalled = await signalWhileWriting(dir, ['--from-file', dump, out], signal);
      }
      assert.ok(signalled, `${signal}: the image was seen being written (20 tries)`);
      const left = readdirSync(dir).filter((f) => f !== 'big.dump');
      assert.deepEqual(left, ['out.cfs'], `${signal}: only the whole image is left`);
      assert.ok(readFileSync(out).equals(expected), `${signal}: the image is whole`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
