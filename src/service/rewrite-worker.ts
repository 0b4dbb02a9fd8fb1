/**
 * A thread of image rewrites (rewrite.ts, RewritePool): each message is one
 * image, read with the hardened reader and written again; the answer hands
 * the written image's memory back (transferred, not copied). One rewrite at
 * a time; the pool may keep the thread for the next, its code loaded and
 * compiled (a new thread loads its modules and runs cold code). The parent bounds its heap (resourceLimits) and each
 * rewrite's time (it ends the thread), so a hostile image costs this thread,
 * not the service. rewriteImage keeps nothing between images.
 */
import { parentPort } from 'node:worker_threads';
import { ImageRefusal, rewriteImage, type RewriteAnswer, type RewriteRequest } from './rewrite.js';

// Nothing reaches the service's stdout (where only `listening on` goes) or its log from here.
for (const method of ['log', 'info', 'warn', 'error', 'debug', 'trace', 'dir', 'table'] as const) console[method] = () => {};

parentPort!.on('message', ({ image }: RewriteRequest) => {
  let answer: RewriteAnswer;
  let transfer: ArrayBuffer[] = [];
  try {
    const written = rewriteImage(Buffer.from(image.buffer, image.byteOffset, image.byteLength));
    let out = written.image;
    // Only memory of its own is moved: a view into a shared pool would take the pool along.
    if (out.byteOffset !== 0 || out.byteLength !== out.buffer.byteLength) out = Buffer.from(out);
    answer = { ok: true, image: out.buffer as ArrayBuffer, offset: 0, length: out.length, version: written.version, stripped: written.stripped, digest: written.digest };
    transfer = [out.buffer as ArrayBuffer];
  } catch (err) {
    answer = err instanceof ImageRefusal ? { ok: false, refusal: err.reason } : { ok: false, failure: err instanceof Error ? err.message : String(err) };
  }
  parentPort!.postMessage(answer, transfer);
});
