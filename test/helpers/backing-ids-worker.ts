/**
 * A worker thread for test/fuse-caches.test.ts: opens and releases inodes in
 * a shared BackingIdTable as a serving thread does (a look-up, then an
 * insert or one more user, under the table's lock), and bumps a plain
 * (non-atomic) counter under the same lock, so lost updates show a lock
 * that does not exclude.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { BackingIdTable } from '../../src/fuse/backing-ids.js';

const { table, counter, thread, rounds, nids } = workerData as { table: SharedArrayBuffer; counter: SharedArrayBuffer; thread: number; rounds: number; nids: number };
const t = new BackingIdTable(table);
const count = new Int32Array(counter);
const opened: number[] = [];
const closed: number[] = [];
const held: number[] = [];
let seed = thread * 7919 + 1;
const random = (n: number) => {
  seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
  return (seed >>> 8) % n;
};

function release(nid: number): void {
  t.lock();
  try {
    const id = t.release(nid);
    if (id > 0) closed.push(id);
  } finally {
    t.unlock();
  }
}

for (let i = 0; i < rounds; i++) {
  const nid = random(nids);
  t.lock();
  try {
    count[0] = count[0] + 1;
    if (t.acquire(nid) === 0) {
      const id = thread * 1_000_000 + i + 1;
      if (!t.insert(nid, id)) throw new Error(`insert of ${nid} refused`);
      opened.push(id);
    }
  } finally {
    t.unlock();
  }
  held.push(nid);
  if (held.length > 3) release(held.splice(random(held.length), 1)[0]);
}
for (const nid of held.splice(0)) release(nid);
parentPort!.postMessage({ opened, closed });
