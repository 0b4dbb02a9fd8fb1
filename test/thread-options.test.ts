/**
 * Worker threads take the parent's Node options unless told otherwise, and
 * some of those concern the parent's entry point only: a library used from
 * `node --input-type=module -e CODE` had every thread of it fail at its
 * start. Each library path that starts threads, run from such a script.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { threadExecArgv } from '../src/threads.js';

const module = (path: string) => new URL(`../src/${path}`, import.meta.url).href;

/** Run `code` as `node --input-type=module -e code`; its last stdout line, parsed. */
function runEval(code: string): unknown {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8', timeout: 60_000, killSignal: 'SIGKILL', cwd: '/' });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout.trim().split('\n').pop()!);
}

test('threadExecArgv leaves out the options of the entry point (--input-type, -e/-p and their code), keeps the others', () => {
  assert.deepEqual(threadExecArgv(['--input-type=module', '--no-warnings', '-e', 'console.log(1)']), ['--no-warnings']);
  assert.deepEqual(threadExecArgv(['--input-type', 'module', '--print', '1', '--enable-source-maps', '--eval=x', '--max-old-space-size=100']), ['--enable-source-maps', '--max-old-space-size=100']);
});

test('from `node --input-type=module -e`: the service\'s namespace thread answers (not its start failing)', () => {
  const out = runEval(`
    const { unmountInNamespace } = await import(${JSON.stringify(module('service/mount-for-caller.js'))});
    let message = 'no error';
    try { await unmountInNamespace(0, -1); } catch (err) { message = err.message; }
    console.log(JSON.stringify(message));
  `);
  // The thread ran and failed where it must: joining a namespace through no pidfd.
  assert.match(String(out), /^unmounting: cannot join the caller's mount namespace \(.*(EBADF|Bad file descriptor)/);
});

test('from `node --input-type=module -e`: gzip inflated on a thread', () => {
  const text = 'inflated on a thread\n'.repeat(1000);
  const out = runEval(`
    const { gzipSync } = await import('node:zlib');
    const { inflateInWorker } = await import(${JSON.stringify(module('oci/inflate.js'))});
    async function* blob() { yield gzipSync(Buffer.from(${JSON.stringify(text)})); }
    const inflated = inflateInWorker(blob(), 'a layer');
    let bytes = 0;
    for await (const chunk of inflated.chunks) bytes += chunk.length;
    console.log(JSON.stringify({ bytes, ...inflated.result() }));
  `) as { bytes: number; diffId: string };
  assert.equal(out.bytes, text.length);
  assert.equal(out.diffId, `sha256:${createHash('sha256').update(text).digest('hex')}`);
});

test('from `node --input-type=module -e`: a directory scanned with digest threads', () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-thread-options-'));
  try {
    writeFileSync(join(dir, 'a.txt'), 'scanned on a thread\n'.repeat(500));
    const out = runEval(`
      const { scanDirectory } = await import(${JSON.stringify(module('scan/index.js'))});
      const { root } = await scanDirectory(${JSON.stringify(dir)}, { threads: 2 });
      console.log(JSON.stringify(root.children.map((d) => d.name.toString())));
    `);
    assert.deepEqual(out, ['a.txt']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
