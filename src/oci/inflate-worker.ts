/**
 * Worker thread of inflate.ts: decompresses one layer blob (decompress() of
 * layer.ts: gzip, zstd or plain tar), takes the diff_id (sha256) of the
 * uncompressed bytes, and hands them to the main thread through slots of a
 * SharedArrayBuffer. Why a thread and shared slots, not zlib on the main
 * thread: every decompressed chunk there was a new Buffer of the main
 * isolate, and 1.2 GB of them on the /usr image set off a major GC every
 * ~30 MB (55 in a pull, ~1.9 s of CPU marking a heap holding the layers'
 * entries); this isolate's heap is nearly empty, so its GCs cost little, and
 * the main thread's reads of the slots allocate nothing.
 *
 * Messages in: a compressed chunk (Uint8Array), `null` for the end of the
 * blob, or `{ free: slot }` when the main thread is done with a slot. Out:
 * `{ consumed: bytes }` as input is used, `{ slot, length }` per filled
 * slot, then `{ done, diffId, tarBytes }` or `{ error }`.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { createHash } from 'node:crypto';
import { decompress } from './decompress.js';

export interface InflateWorkerData {
  ring: SharedArrayBuffer;
  slots: number;
  slotSize: number;
  what: string;
}

export type InflateIn = Uint8Array | null | { free: number };
export type InflateOut = { consumed: number } | { slot: number; length: number } | { done: true; diffId: string; tarBytes: number } | { error: string };

const { ring, slots, slotSize, what } = workerData as InflateWorkerData;
const ringBytes = new Uint8Array(ring);
const freeSlots: number[] = Array.from({ length: slots }, (_, i) => i);
let slotWaiter: (() => void) | null = null;

const input: (Uint8Array | null)[] = [];
let inputWaiter: (() => void) | null = null;

parentPort!.on('message', (m: InflateIn) => {
  if (m !== null && !(m instanceof Uint8Array)) {
    freeSlots.push(m.free);
    slotWaiter?.();
    slotWaiter = null;
    return;
  }
  input.push(m);
  inputWaiter?.();
  inputWaiter = null;
});

async function* compressed(): AsyncGenerator<Buffer> {
  for (;;) {
    while (input.length === 0) await new Promise<void>((resolve) => (inputWaiter = resolve));
    const chunk = input.shift()!;
    if (chunk === null) return;
    parentPort!.postMessage({ consumed: chunk.length } satisfies InflateOut);
    yield Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length);
  }
}

async function run(): Promise<void> {
  const diff = createHash('sha256');
  let tarBytes = 0;
  for await (const chunk of decompress(compressed(), what)) {
    diff.update(chunk);
    tarBytes += chunk.length;
    for (let off = 0; off < chunk.length; ) {
      while (freeSlots.length === 0) await new Promise<void>((resolve) => (slotWaiter = resolve));
      const slot = freeSlots.shift()!;
      const length = Math.min(slotSize, chunk.length - off);
      ringBytes.set(chunk.subarray(off, off + length), slot * slotSize);
      off += length;
      parentPort!.postMessage({ slot, length } satisfies InflateOut);
    }
  }
  parentPort!.postMessage({ done: true, diffId: `sha256:${diff.digest('hex')}`, tarBytes } satisfies InflateOut);
}

run().catch((err: unknown) => {
  const message = err instanceof Error ? err.message : String(err);
  parentPort!.postMessage({ error: message } satisfies InflateOut);
});
