/**
 * A layer blob decompressed on a worker thread (inflate-worker.ts), its
 * uncompressed bytes read from shared slots and its diff_id taken there.
 *
 * Measured on the /usr image (three gzip layers, 1.16 GB of tar), pulled
 * from an oci: layout into an empty repository, 5 interleaved rounds against
 * node:zlib on the main thread: median 6.17 -> 5.87 s; the main isolate's
 * major GCs 55 -> 17 (what remains comes from the blob's own chunks).
 */
import { Worker } from 'node:worker_threads';
import { LayerError } from './decompress.js';
import type { InflateIn, InflateOut, InflateWorkerData } from './inflate-worker.js';
import { threadExecArgv } from '../threads.js';

/** Slots of uncompressed bytes between the threads, and their size. */
const INFLATE_SLOTS = 8;
const SLOT_SIZE = 1 << 20;
/** Compressed bytes handed to the thread and not yet taken by its decompressor. */
const MAX_INPUT_IN_FLIGHT = 4 << 20;
/**
 * Compressed chunks are gathered into messages of at least this size: an
 * HTTP body arrives in chunks of 16-64 KiB, and a message per chunk (with its
 * acknowledgement) woke the threads 25,000 times a pull.
 */
const INPUT_MESSAGE_BYTES = 1 << 20;

export interface Inflated {
  /**
   * The uncompressed bytes. Each chunk is a view of a shared slot, valid
   * only until the next one is asked for: use it (or copy it) before that.
   */
  chunks: AsyncGenerator<Buffer>;
  /** Once `chunks` has ended: the sha256 (`sha256:…`) and the size of the uncompressed bytes. */
  result(): InflateResult;
}

interface InflateResult {
  diffId: string;
  tarBytes: number;
}

export function inflateInWorker(blob: AsyncIterable<Buffer>, what: string): Inflated {
  const ended: { result: InflateResult | null } = { result: null };
  return {
    chunks: chunksOf(blob, what, ended),
    result: () => {
      if (ended.result === null) throw new Error('inflateInWorker: result() before the end of the chunks');
      return ended.result;
    },
  };
}

async function* chunksOf(blob: AsyncIterable<Buffer>, what: string, ended: { result: InflateResult | null }): AsyncGenerator<Buffer> {
  const ring = new SharedArrayBuffer(INFLATE_SLOTS * SLOT_SIZE);
  const data: InflateWorkerData = { ring, slots: INFLATE_SLOTS, slotSize: SLOT_SIZE, what };
  // Spelled from the parent folder so the path also holds from the CLI bundle in dist/src/cli/.
  const worker = new Worker(new URL('../oci/inflate-worker.js', import.meta.url), { workerData: data, execArgv: threadExecArgv() });
  const send = (m: InflateIn) => worker.postMessage(m);

  const out: InflateOut[] = [];
  let failure: unknown = null;
  let wake: (() => void) | null = null;
  const signal = () => {
    wake?.();
    wake = null;
  };
  let inFlight = 0;
  let creditWaiter = null as (() => void) | null;
  worker.on('message', (m: InflateOut) => {
    if ('consumed' in m) {
      inFlight -= m.consumed;
      creditWaiter?.();
      creditWaiter = null;
      return;
    }
    out.push(m);
    signal();
  });
  worker.on('error', (err) => {
    failure ??= new LayerError(`${what}: the decompression thread failed: ${err.message}`, { cause: err });
    signal();
  });
  worker.on('exit', (code) => {
    if (ended.result === null) failure ??= new LayerError(`${what}: the decompression thread exited with code ${code}`);
    signal();
  });

  // The blob goes to the thread as it arrives, a bounded amount ahead of its decompressor.
  let stopFeeding = false;
  void (async () => {
    let gathered: Buffer[] = [];
    let gatheredBytes = 0;
    const flush = async () => {
      while (inFlight >= MAX_INPUT_IN_FLIGHT && !stopFeeding) await new Promise<void>((resolve) => (creditWaiter = resolve));
      if (stopFeeding || gatheredBytes === 0) return;
      const message = gathered.length === 1 ? gathered[0] : Buffer.concat(gathered, gatheredBytes);
      inFlight += message.length;
      gathered = [];
      gatheredBytes = 0;
      // A buffer of its own is handed over (moved, not copied); a view into a larger one is copied.
      const own = message.byteOffset === 0 && message.byteLength === message.buffer.byteLength && !(message.buffer instanceof SharedArrayBuffer);
      if (own) worker.postMessage(message, [message.buffer as ArrayBuffer]);
      else send(message);
    };
    for await (const chunk of blob) {
      if (stopFeeding) return;
      gathered.push(chunk);
      gatheredBytes += chunk.length;
      if (gatheredBytes >= INPUT_MESSAGE_BYTES) await flush();
    }
    await flush();
    if (!stopFeeding) send(null);
  })().catch((err: unknown) => {
    failure ??= err;
    signal();
  });

  let lastSlot = -1;
  try {
    for (;;) {
      if (lastSlot >= 0) {
        send({ free: lastSlot });
        lastSlot = -1;
      }
      while (out.length === 0 && failure === null) await new Promise<void>((resolve) => (wake = resolve));
      if (failure !== null) throw failure;
      const m = out.shift()!;
      if ('error' in m) throw new LayerError(m.error);
      if ('done' in m) {
        ended.result = { diffId: m.diffId, tarBytes: m.tarBytes };
        return;
      }
      if ('slot' in m) {
        lastSlot = m.slot;
        yield Buffer.from(ring, m.slot * SLOT_SIZE, m.length);
      }
    }
  } finally {
    // Not waiting for the feeding to stop: it may be waiting for the blob, which its owner destroys.
    stopFeeding = true;
    creditWaiter?.();
    await worker.terminate();
  }
}
