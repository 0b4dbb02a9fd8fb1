/**
 * One serving thread of the FUSE server (server.ts): the image and the
 * server's shared state come as SharedArrayBuffers, requests are read from
 * /dev/fuse with blocking reads and answered here (dispatch.ts) until the
 * mount goes.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { ImageView } from './image.js';
import { ServingThread } from './dispatch.js';
import { Control, type ServerOptions, type SharedState, type WorkerMessage } from './shared.js';

const { fd, shared, opts, thread } = workerData as { fd: number; shared: SharedState; opts: ServerOptions; thread: number };
const post = (m: WorkerMessage) => parentPort!.postMessage(m);
const control = new Int32Array(shared.control);

/**
 * A log line is written by the main thread; this thread waits until it is
 * (at most a second), so the line is there before the answer that it
 * explains reaches the kernel.
 */
function log(line: string): void {
  Atomics.store(control, Control.logAck + thread, 0);
  post({ type: 'log', line, thread });
  Atomics.wait(control, Control.logAck + thread, 0, 1000);
}

const err = new ServingThread(fd, new ImageView(Buffer.from(shared.image)), opts, shared, post, log).serve();
post({ type: 'stopped', error: err?.message });
