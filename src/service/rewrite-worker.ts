/**
 * The thread of one image rewrite (rewrite.ts, rewriteInWorker): reads the
 * image it was given with the hardened reader, writes it again, hands the
 * written image's memory back (transferred, not copied), then ends. The
 * parent bounds its heap (resourceLimits) and its time (terminate), so a
 * hostile image costs this thread, not the service.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { ImageRefusal, rewriteImage, type RewriteAnswer, type RewriteWorkerData } from './rewrite.js';

const { image } = workerData as RewriteWorkerData;
let answer: RewriteAnswer;
let transfer: ArrayBuffer[] = [];
try {
  const bytes = Buffer.from(image.buffer, image.byteOffset, image.byteLength);
  const written = rewriteImage(bytes);
  let out = written.image;
  // Only memory of its own is moved: a view into a shared pool would take the pool along.
  if (out.byteOffset !== 0 || out.byteLength !== out.buffer.byteLength) out = Buffer.from(out);
  answer = { ok: true, image: out.buffer as ArrayBuffer, offset: 0, length: out.length, version: written.version, stripped: written.stripped };
  transfer = [out.buffer as ArrayBuffer];
} catch (err) {
  answer = err instanceof ImageRefusal ? { ok: false, refusal: err.reason } : { ok: false, failure: err instanceof Error ? err.message : String(err) };
}
parentPort!.postMessage(answer, transfer);
