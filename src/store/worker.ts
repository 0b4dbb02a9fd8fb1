/**
 * The store's worker thread (started by pool.ts's `Threads`), with plain
 * synchronous system calls, for both users of the store:
 *  - `files` (the scan): fs-verity digests of regular files and, with a
 *    store, copies into it; each batch answered with one message (digests
 *    packed in one buffer);
 *  - `objects` (the pull): a buffer of file contents (handed over, not
 *    copied), each hashed and published (ObjectStore.putBytes); the digests
 *    and the buffer go back (the buffer to be filled again);
 *  - `sync`: one syncfs of the store, here so that the main thread goes on
 *    meanwhile.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { closeSync, constants, openSync } from 'node:fs';
import { fsverityDigestOfFileSync, verityDigestSize } from '../fsverity/index.js';
import { fstatx } from '../sys/fs.js';
import { S_IFMT, S_IFREG } from '../tree/model.js';
import { errnoText, reasonOf } from '../errors.js';
import { ObjectStore, StoreError, syncStoreFd } from './objects.js';
import type { BatchRequest, BatchResult, JobResult, WorkerInit } from './pool.js';

const shared = (workerData as WorkerInit).store;
const algorithm = (workerData as WorkerInit).algorithm;
const DIGEST_SIZE = verityDigestSize(algorithm);
/** The store, through the main thread's directory fds (ObjectStore.shared()). */
const store = shared ? new ObjectStore(shared.path, { root: shared.fd, path: shared.path, table: shared.table }, { algorithm }) : null;

/** The pull's batch: many files' contents in one buffer. */
export interface ObjectBatch {
  kind: 'objects';
  id: number;
  /** Where each file's bytes are in `data`. */
  offsets: number[];
  sizes: number[];
  data: ArrayBuffer;
}

/** Make every object written so far (by any thread) durable: one syncfs. */
export interface SyncRequest {
  kind: 'sync';
  id: number;
}

export interface ObjectBatchResult {
  id: number;
  objectsWritten: number;
  bytesWritten: number;
  /** The fs-verity digest of each file of the batch, 32 or 64 bytes each, in order (absent on error). */
  digests?: ArrayBuffer;
  /** The batch's buffer, handed back to be reused. */
  data?: ArrayBuffer;
  /** "cannot write object PATH: reason" */
  error?: string;
  errno?: string;
}

/**
 * Whether to copy a file into the store before hashing it (hashing the copy
 * only) rather than hash the source, look the object up and, when it is new,
 * copy and hash the copy again. Nothing is named before its own bytes are
 * hashed either way (see ObjectStore); the guess only saves work: copy first
 * while the objects met are new (a first build), hash first while they are
 * there already (a rebuild), judged by the last object stored (the README,
 * "What an object store trusts", has the measurement). A ctime check of the
 * source before linking cannot see a write through a mapping or within one
 * timestamp tick, so it only decides whether the build fails.
 */
let copyFirst = true;

/** The reason a source file could not be read, saying when it is the scan's race with a changing tree. */
function describe(err: unknown): string {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  if (code === 'ELOOP' || code === 'EISDIR' || code === 'ENXIO') return 'not a regular file any more (replaced during the scan)';
  if (code === 'ENOENT') return `${errnoText(code)} (it vanished during the scan)`;
  return reasonOf(err);
}

// O_NONBLOCK: should the file have become a fifo since it was listed, open must not hang.
const OPEN_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

let content: Buffer | null = null;
const keepContent = (chunk: Buffer): void => {
  content = content ? Buffer.concat([content, chunk]) : Buffer.from(chunk);
};

/** Bytes read since the last progress report; big files report as they go. */
let unreported = 0;
const PROGRESS_STEP = 64 << 20;
const countBytes = (chunk: Buffer): void => {
  unreported += chunk.length;
  if (unreported >= PROGRESS_STEP) {
    parentPort!.postMessage({ progress: unreported });
    unreported = 0;
  }
};

function processJob(msg: BatchRequest, i: number, digests: Buffer): JobResult {
  const path = Buffer.from(msg.paths[i], 'latin1');
  const size = msg.sizes[i];
  const inline = msg.inline[i] === 1;
  let fd: number;
  try {
    fd = openSync(path, OPEN_FLAGS);
  } catch (err) {
    return { error: `cannot read ${path.toString()}: ${describe(err)}` };
  }
  try {
    content = null;
    let r: { digest: Buffer; size: number };
    let written = 0;
    if (store && !inline && copyFirst) {
      let added: { digest: Buffer; written: number } | null;
      try {
        added = store.addCopy(fd, size, path.toString(), size >= PROGRESS_STEP ? countBytes : undefined);
      } catch (err) {
        if (err instanceof StoreError) return { error: err.message, fatal: true };
        return { error: `cannot copy ${path.toString()}: ${describe(err)}` };
      }
      if (added === null) return { error: `${path.toString()}: file changed during the scan` };
      r = { digest: added.digest, size };
      written = added.written;
      copyFirst = written > 0;
    } else {
      try {
        r = fsverityDigestOfFileSync(fd, { algorithm, knownSize: size, onChunk: inline ? keepContent : size >= PROGRESS_STEP ? countBytes : undefined });
      } catch (err) {
        return { error: `cannot read ${path.toString()}: ${describe(err)}` };
      }
      if (r.size !== size) return { error: `${path.toString()}: file changed during the scan (${size} bytes when listed, ${r.size} when read)` };
      if (store && !inline) {
        let ensured: { written: number } | null;
        try {
          ensured = store.ensure(r.digest, fd, size);
        } catch (err) {
          if (err instanceof StoreError) return { error: err.message, fatal: true };
          return { error: `cannot copy ${path.toString()}: ${describe(err)}` };
        }
        // The copy is not what was hashed: the source changed in between, and nothing was linked.
        if (ensured === null) return { error: `${path.toString()}: file changed during the scan` };
        written = ensured.written;
        copyFirst = written > 0;
      }
    }
    r.digest.copy(digests, i * DIGEST_SIZE);
    // Any write since the scan's lstat moved ctime (or the size): what we read may be torn.
    const st = fstatx(fd);
    if ((st.mode & S_IFMT) !== S_IFREG) return { error: `cannot read ${path.toString()}: not a regular file any more (replaced during the scan)` };
    if (st.size !== size || st.ctimeSec !== msg.ctimeSec[i] || st.ctimeNsec !== msg.ctimeNsec[i]) {
      return { error: `${path.toString()}: file changed during the scan` };
    }
    return { content: inline ? content ?? Buffer.alloc(0) : null, written };
  } finally {
    closeSync(fd);
  }
}

try {
  fstatx(0); // bind the system calls now, not in the middle of a batch
} catch {
  /* fd 0 may be closed: nothing lost */
}
parentPort!.postMessage({ ready: true });

function scanBatch(msg: BatchRequest): void {
  const n = msg.paths.length;
  const digests = Buffer.alloc(DIGEST_SIZE * n);
  const results: JobResult[] = [];
  let bytes = 0;
  for (let i = 0; i < n; i++) {
    const r = processJob(msg, i, digests);
    results.push(r);
    bytes += msg.sizes[i];
    if (r.error) break; // stop at the first failure, as the reference does
  }
  unreported = 0;
  const reply: BatchResult = { id: msg.id, digests, results, bytes };
  parentPort!.postMessage(reply, [digests.buffer as ArrayBuffer]);
}

/** Hash and publish each file of a pull's batch; the first failure ends the batch. */
function objectBatch(b: ObjectBatch): void {
  const data = new Uint8Array(b.data);
  const digests = new Uint8Array(b.offsets.length * DIGEST_SIZE);
  let objectsWritten = 0;
  let bytesWritten = 0;
  for (let i = 0; i < b.offsets.length; i++) {
    try {
      if (!store) throw new StoreError('no object store to write into');
      const r = store.putBytes(data.subarray(b.offsets[i], b.offsets[i] + b.sizes[i]));
      digests.set(r.digest, i * DIGEST_SIZE);
      if (r.written > 0) {
        objectsWritten++;
        bytesWritten += r.written;
      }
    } catch (err) {
      const errno = err instanceof StoreError ? err.errno : undefined;
      const result: ObjectBatchResult = { id: b.id, objectsWritten, bytesWritten, error: err instanceof StoreError ? err.message : `cannot write objects into ${shared?.path}: ${reasonOf(err)}`, errno };
      parentPort!.postMessage(result);
      return;
    }
  }
  const result: ObjectBatchResult = { id: b.id, objectsWritten, bytesWritten, digests: digests.buffer, data: b.data };
  parentPort!.postMessage(result, [digests.buffer, b.data]);
}

function syncBatch(r: SyncRequest): void {
  const result: ObjectBatchResult = { id: r.id, objectsWritten: 0, bytesWritten: 0 };
  try {
    if (shared) syncStoreFd(shared.fd, shared.path);
  } catch (err) {
    result.error = (err as Error).message;
    result.errno = err instanceof StoreError ? err.errno : undefined;
  }
  parentPort!.postMessage(result);
}

parentPort!.on('message', (msg: BatchRequest | ObjectBatch | SyncRequest) => {
  if (msg.kind === 'files') scanBatch(msg);
  else if (msg.kind === 'objects') objectBatch(msg);
  else syncBatch(msg);
});
