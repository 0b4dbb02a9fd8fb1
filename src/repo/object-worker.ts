/**
 * Worker thread of the ObjectWriter: writes batches of objects into the
 * store with plain synchronous system calls. A batch is one buffer (handed
 * over, not copied) holding the contents of many files, each with the
 * object name its digest gives; the main thread hashed exactly these bytes.
 * Each object: already there → nothing; else a dot-named temporary file of
 * ours, written whole, closed, and renamed into place with RENAME_NOREPLACE
 * (never replacing what another writer named first). Nothing is fsync'ed
 * per object: the pull asks for one syncfs (here, so that the main thread
 * goes on with other layers meanwhile) before naming anything.
 */
import { parentPort, threadId, workerData } from 'node:worker_threads';
import { closeSync, constants, lstatSync, openSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { renameNoReplace } from '../sys/fs.js';
import { reasonOf } from '../errors.js';
import { syncStore } from '../store/objects.js';

export interface ObjectBatch {
  id: number;
  /** Object names (hex digests), and where each one's bytes are in `data`. */
  names: string[];
  offsets: number[];
  sizes: number[];
  data: ArrayBuffer;
}

/** Make every object written so far (by any thread) durable: one syncfs. */
export interface SyncRequest {
  id: number;
  sync: true;
}

export interface ObjectBatchResult {
  id: number;
  objectsWritten: number;
  bytesWritten: number;
  /** "cannot write object PATH: reason" */
  error?: string;
  errno?: string;
}

const root = (workerData as { root: string }).root;
let counter = 0;
/**
 * Whether to look for an object before writing it: only while the objects
 * met were there already. In an empty repository the lookups only cost
 * (RENAME_NOREPLACE refuses to replace anyway; an object found there then
 * costs one write for nothing). Measured on the /usr image into an empty
 * repository, 5 interleaved rounds: median 11.0 -> 10.5 s, system CPU
 * 7.9 -> 6.9 s (a small gain, near this shared machine's noise).
 */
let look = true;

function exists(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

function writeBatch(b: ObjectBatch): ObjectBatchResult {
  const data = new Uint8Array(b.data);
  let objectsWritten = 0;
  let bytesWritten = 0;
  for (let i = 0; i < b.names.length; i++) {
    const hex = b.names[i];
    const dir = join(root, hex.slice(0, 2));
    const dest = join(dir, hex.slice(2));
    const tmp = join(dir, `.tmp.${process.pid}.${threadId}.${counter++}`);
    let created = false;
    let named = false;
    try {
      if (look && exists(dest)) continue;
      const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
      created = true;
      try {
        // A short write is how a full disk first shows: writing on gets the reason.
        for (let off = b.offsets[i], end = off + b.sizes[i]; off < end; ) off += writeSync(fd, data, off, end - off);
      } finally {
        closeSync(fd);
      }
      try {
        renameNoReplace(tmp, dest);
        named = true;
        look = false;
        objectsWritten++;
        bytesWritten += b.sizes[i];
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        look = true;
      }
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      return { id: b.id, objectsWritten, bytesWritten, error: `cannot write object ${dest}: ${reasonOf(err)}`, errno: typeof code === 'string' ? code : undefined };
    } finally {
      if (created && !named) {
        try {
          unlinkSync(tmp);
        } catch {
          /* gone already */
        }
      }
    }
  }
  return { id: b.id, objectsWritten, bytesWritten };
}

function sync(r: SyncRequest): ObjectBatchResult {
  try {
    syncStore(root);
    return { id: r.id, objectsWritten: 0, bytesWritten: 0 };
  } catch (err) {
    const code = ((err as Error).cause as NodeJS.ErrnoException | undefined)?.code;
    return { id: r.id, objectsWritten: 0, bytesWritten: 0, error: (err as Error).message, errno: typeof code === 'string' ? code : undefined };
  }
}

parentPort!.on('message', (m: ObjectBatch | SyncRequest) => parentPort!.postMessage('sync' in m ? sync(m) : writeBatch(m)));
parentPort!.postMessage({ ready: true });
