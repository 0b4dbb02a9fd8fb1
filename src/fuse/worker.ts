/**
 * One serving thread of the FUSE server (server.ts): the image and the
 * server's shared state come as SharedArrayBuffers, requests are read from
 * /dev/fuse with blocking reads and answered here until the mount goes.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { ImageView } from './image.js';
import { FuseServer, type ServerOptions, type SharedState, type WorkerMessage } from './server.js';

const { fd, shared, opts, thread } = workerData as { fd: number; shared: SharedState; opts: ServerOptions; thread: number };
const post = (m: WorkerMessage) => parentPort!.postMessage(m);
const server = new FuseServer(fd, new ImageView(Buffer.from(shared.image)), opts, { shared, post, thread });
const err = server.serveHere();
post({ type: 'stopped', error: err?.message });
