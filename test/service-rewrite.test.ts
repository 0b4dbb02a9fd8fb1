/**
 * The mount service's image rewrite on worker threads (src/service/rewrite.ts):
 * the same bytes as the rewrite on the calling thread, the event loop free
 * while it runs, and its bounds: a time limit (the thread ended, the image
 * refused in one line), a heap limit (the thread dies, not the process), a
 * few threads at once and a bounded queue, the image's memory moved rather
 * than copied when the caller gives it up. No mounts: plain threads.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { RewritePool, rewriteImage, rewriteInWorker } from '../src/service/rewrite.js';
import { writeImage } from '../src/erofs/writer.js';
import { fsverityDigest } from '../src/fsverity/index.js';
import { newInode, S_IFCHR, S_IFDIR, S_IFREG } from '../src/tree/model.js';
import { largeImage } from './helpers/large-image.js';

const large = largeImage(64 * 1024);

/** The largest delay of a 1 ms interval timer while `fn` runs: how long the event loop was blocked. */
async function eventLoopBlock<T>(fn: () => Promise<T>): Promise<{ value: T; maxDelayMs: number }> {
  let last = performance.now();
  let maxDelayMs = 0;
  const tick = setInterval(() => {
    const now = performance.now();
    maxDelayMs = Math.max(maxDelayMs, now - last);
    last = now;
  }, 1);
  try {
    await new Promise((resolve) => setTimeout(resolve, 10));
    maxDelayMs = 0;
    last = performance.now();
    const value = await fn();
    // The tick that was due while the loop was blocked runs now.
    await new Promise((resolve) => setTimeout(resolve, 5));
    return { value, maxDelayMs };
  } finally {
    clearInterval(tick);
  }
}

test('rewriteInWorker writes the bytes rewriteImage writes, and the event loop keeps running meanwhile', async (t) => {
  const inline = await eventLoopBlock(async () => rewriteImage(large));
  const threaded = await eventLoopBlock(() => rewriteInWorker(large));
  t.diagnostic(`64k entries, ${large.length} bytes: event loop blocked ${inline.maxDelayMs.toFixed(0)} ms by the rewrite on it, ${threaded.maxDelayMs.toFixed(0)} ms with the rewrite on a thread`);
  assert.ok(threaded.value.image.equals(inline.value.image), 'the same image');
  assert.equal(threaded.value.version, inline.value.version);
  assert.deepEqual(threaded.value.stripped, inline.value.stripped);
  assert.equal(threaded.value.digest, fsverityDigest(threaded.value.image).toString('hex'), 'the digest of the written image, taken on the thread');
  assert.ok(large.length > 0, 'the caller\'s buffer is kept (copied, not moved)');
  assert.ok(inline.maxDelayMs > 100, `the rewrite on the event loop blocks it (${inline.maxDelayMs} ms): the image is large enough to tell`);
  assert.ok(threaded.maxDelayMs < inline.maxDelayMs / 3, `blocked ${threaded.maxDelayMs} ms on a thread, ${inline.maxDelayMs} ms inline`);
});

test('refusals come back as the one line rewriteImage gives, setuid bits stripped as it does', async () => {
  const root = newInode(S_IFDIR | 0o755);
  root.children!.push({ name: Buffer.from('tty'), inode: newInode(S_IFCHR | 0o666, { rdev: (4 << 8) | 1 }), hardlink: false });
  await assert.rejects(rewriteInWorker(writeImage(root)), { message: 'image refused: /tty: a device node (character 4:1)' });
  await assert.rejects(rewriteInWorker(Buffer.from('not an image at all, not even close')), (err: Error) => /^image refused: [^\n]+$/.test(err.message));

  const setuid = newInode(S_IFDIR | 0o755);
  setuid.children!.push({ name: Buffer.from('su'), inode: newInode(S_IFREG | 0o4755, { size: 3, content: Buffer.from('su\n') }), hardlink: false });
  const r = await rewriteInWorker(writeImage(setuid));
  assert.deepEqual(r.stripped, { setId: 1, fileCapabilities: 0 });
});

test('a rewrite over its time limit: the thread is ended and the image refused; the pool goes on', async () => {
  const pool = new RewritePool({ threads: 1, timeLimitMs: 50 });
  const t0 = performance.now();
  await assert.rejects(pool.rewrite(large), { message: 'image refused: the rewrite took longer than 0.05 s' });
  const ms = performance.now() - t0;
  assert.ok(ms < 1000, `refused after ${ms.toFixed(0)} ms (not when the rewrite would have ended)`);
  assert.deepEqual(pool.load, { running: 0, waiting: 0 });
  const small = largeImage(10);
  const ok = new RewritePool({ threads: 1, timeLimitMs: 10_000 });
  assert.ok((await ok.rewrite(small)).image.equals(rewriteImage(small).image));
});

test('an image whose tree does not fit the thread\'s heap is refused; the process lives and the pool goes on', async () => {
  const pool = new RewritePool({ threads: 1, heapMb: 16 });
  await assert.rejects(pool.rewrite(large), { message: 'image refused: the rewrite needs more memory than the service gives it (16 MiB of heap)' });
  const small = largeImage(10);
  assert.ok((await pool.rewrite(small)).image.equals(rewriteImage(small).image));
  assert.deepEqual(pool.load, { running: 0, waiting: 0 });
});

test('a few rewrites at once, a bounded queue behind them; one more is refused at once', async () => {
  const pool = new RewritePool({ threads: 1, waiting: 2 });
  const image = largeImage(8 * 1024);
  let most = 0;
  let mostWaiting = 0;
  const watch = setInterval(() => {
    most = Math.max(most, pool.load.running);
    mostWaiting = Math.max(mostWaiting, pool.load.waiting);
  }, 1);
  const results = await Promise.allSettled([1, 2, 3, 4].map(() => pool.rewrite(image)));
  clearInterval(watch);
  assert.equal(most, 1, 'one thread at a time');
  assert.equal(mostWaiting, 2, 'two waited');
  assert.deepEqual(results.map((r) => r.status), ['fulfilled', 'fulfilled', 'fulfilled', 'rejected']);
  const refusal = (results[3] as PromiseRejectedResult).reason as Error;
  assert.match(refusal.message, /^image refused: the service is busy \(1 rewrites running, 2 waiting with \d+ MiB\); try again later$/);
  assert.deepEqual(pool.load, { running: 0, waiting: 0 });

  const byBytes = new RewritePool({ threads: 1, waiting: 100, waitingBytes: image.length + 1 });
  const bytesResults = await Promise.allSettled([1, 2, 3].map(() => byBytes.rewrite(image)));
  assert.deepEqual(bytesResults.map((r) => r.status), ['fulfilled', 'fulfilled', 'rejected'], 'the queue is bounded in bytes too');
});

test('transfer: the image\'s memory moves into the thread (the caller\'s Buffer is emptied); a view into a larger buffer is copied', async () => {
  const image = largeImage(100);
  const expected = rewriteImage(image).image;
  const own = Buffer.from(image);
  const moved = await rewriteInWorker(own, { transfer: true });
  assert.ok(moved.image.equals(expected));
  assert.equal(own.length, 0, 'its memory went to the thread');

  const big = Buffer.alloc(image.length + 100);
  image.copy(big, 50);
  const view = big.subarray(50, 50 + image.length);
  const copied = await rewriteInWorker(view, { transfer: true });
  assert.ok(copied.image.equals(expected));
  assert.equal(view.length, image.length, 'a view is not taken from its owner');
});

test('a caller that goes away: its rewrite leaves the queue, or its thread is ended; the pool goes on', async () => {
  const pool = new RewritePool({ threads: 1, waiting: 4 });
  const first = new AbortController();
  const second = new AbortController();
  const t0 = performance.now();
  const running = pool.rewrite(large, { signal: first.signal });
  const waiting = pool.rewrite(large, { signal: second.signal });
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(pool.load, { running: 1, waiting: 1 });
  second.abort();
  await assert.rejects(waiting, { message: 'image: the rewrite was abandoned: the caller went away' });
  assert.deepEqual(pool.load, { running: 1, waiting: 0 }, 'it left the queue');
  first.abort();
  await assert.rejects(running, { message: 'image: the rewrite was abandoned: the caller went away' });
  const ms = performance.now() - t0;
  assert.ok(ms < 300, `ended at once (${ms.toFixed(0)} ms), not when the rewrite would have`);
  assert.deepEqual(pool.load, { running: 0, waiting: 0 });
  const small = largeImage(10);
  assert.ok((await pool.rewrite(small)).image.equals(rewriteImage(small).image));
  await assert.rejects(pool.rewrite(small, { signal: AbortSignal.abort() }), { message: 'image: the rewrite was abandoned: the caller went away' });
});

test('with idleMs, a thread that answered is kept, warm, for the next rewrite, and ended once unused for a while; one whose rewrite was abandoned is not kept', async () => {
  const small = largeImage(10);
  const plain = new RewritePool({ threads: 2 });
  await plain.rewrite(small);
  assert.equal(plain.idleThreads, 0, 'by default no thread is kept');
  const pool = new RewritePool({ threads: 2, idleMs: 300 });
  await pool.rewrite(small);
  assert.equal(pool.idleThreads, 1, 'kept after its answer');
  await pool.rewrite(small);
  assert.equal(pool.idleThreads, 1, 'the same thread served again (no second one)');
  await Promise.all([pool.rewrite(small), pool.rewrite(small)]);
  assert.equal(pool.idleThreads, 2, 'two at once: two threads, both kept');
  await new Promise((r) => setTimeout(r, 600));
  assert.equal(pool.idleThreads, 0, 'ended once unused');

  const strict = new RewritePool({ threads: 1, idleMs: 10_000 });
  await strict.rewrite(small);
  assert.equal(strict.idleThreads, 1);
  const gone = new AbortController();
  setTimeout(() => gone.abort(), 30);
  await assert.rejects(strict.rewrite(large, { signal: gone.signal }), /abandoned/);
  assert.equal(strict.idleThreads, 0, 'the thread whose rewrite was abandoned was ended, not kept');
  const again = new RewritePool({ threads: 1 });
  assert.ok((await again.rewrite(small)).image.equals(rewriteImage(small).image));
});

test('a process that used rewriteInWorker with warm threads ends on its own: the waiting thread does not hold it', () => {
  const code = `const { configureRewrites, rewriteInWorker } = await import(${JSON.stringify(new URL('../src/service/rewrite.js', import.meta.url).href)});
    configureRewrites({ idleMs: 30_000 });
    const { writeImage } = await import(${JSON.stringify(new URL('../src/erofs/writer.js', import.meta.url).href)});
    const { newInode } = await import(${JSON.stringify(new URL('../src/tree/model.js', import.meta.url).href)});
    await rewriteInWorker(writeImage(newInode(0o40755)));
    process.stdout.write('done');`;
  const t0 = performance.now();
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8', timeout: 20_000 });
  const ms = performance.now() - t0;
  assert.equal(r.stdout, 'done', r.stderr);
  assert.equal(r.status, 0, r.stderr);
  assert.ok(ms < 5000, `ended in ${ms.toFixed(0)} ms (a waiting thread is ended after 30 s)`);
});
