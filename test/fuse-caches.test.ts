/**
 * The FUSE server's caches on their own: the passthrough backing id table
 * (open addressing over shared memory: collisions, wraparound, deletion by
 * backward shift, and its lock used from several worker threads at once),
 * the object-file LRU (real files: opened on first use, evicted least
 * recently used first, closed when evicted) and the read-ahead window over
 * a made-up image order.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fstatSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { BackingIdTable } from '../src/fuse/backing-ids.js';
import { ObjectFiles, type ObjectFile } from '../src/fuse/object-files.js';
import { ReadAhead } from '../src/fuse/read-ahead.js';

/** The first `count` nids from 1 up whose probing starts at slot `home`. */
function nidsHomedAt(t: BackingIdTable, home: number, count: number): number[] {
  const out: number[] = [];
  for (let nid = 1; out.length < count; nid++) if (t.home(nid) === home) out.push(nid);
  return out;
}

test('backing ids: insert, look up, count users, release the last user', () => {
  const t = new BackingIdTable(BackingIdTable.allocate(16));
  assert.equal(t.idOf(5), 0);
  assert.equal(t.acquire(5), 0, 'no entry: acquire changes nothing');
  assert.equal(t.insert(5, 77), true);
  assert.equal(t.insert(5, 78), false, 'one entry per nid');
  assert.equal(t.idOf(5), 77);
  assert.equal(t.acquire(5), 77);
  assert.equal(t.usersOf(5), 2);
  assert.equal(t.release(5), 0, 'one user left: nothing to close');
  assert.equal(t.release(5), 77, 'the last user: the id to close');
  assert.equal(t.idOf(5), 0);
  assert.equal(t.release(5), 0, 'a release of what is not there');
  assert.equal(t.insert(0, 9), true, 'nid 0 is a key like any other (stored as nid + 1)');
  assert.equal(t.idOf(0), 9);
  assert.throws(() => BackingIdTable.allocate(12), /power of two/);
});

test('backing ids: colliding nids probe to the next slots, and a removal shifts back only the entries probing would lose', () => {
  const t = new BackingIdTable(BackingIdTable.allocate(8));
  const [a, c] = nidsHomedAt(t, 2, 2);
  const [b] = nidsHomedAt(t, 3, 1);
  assert.ok(t.insert(a, 1) && t.insert(b, 2) && t.insert(c, 3));
  assert.deepEqual([t.slotOf(a), t.slotOf(b), t.slotOf(c)], [2, 3, 4]);
  assert.equal(t.release(a), 1);
  // b's home is 3, inside (hole 2, slot 3]: it stays; c's home 2 is not: it moves into the hole.
  assert.deepEqual([t.slotOf(b), t.slotOf(c)], [3, 2]);
  assert.deepEqual([t.idOf(a), t.idOf(b), t.idOf(c)], [0, 2, 3]);
});

test('backing ids: probing wraps from the last slot to the first, and so does the backward shift', () => {
  const t = new BackingIdTable(BackingIdTable.allocate(8));
  const [x, y, z] = nidsHomedAt(t, 7, 3);
  const [w] = nidsHomedAt(t, 0, 1);
  assert.ok(t.insert(x, 10) && t.insert(y, 11) && t.insert(z, 12) && t.insert(w, 13));
  assert.deepEqual([x, y, z, w].map((n) => t.slotOf(n)), [7, 0, 1, 2]);
  assert.equal(t.release(x), 10);
  // y and z (home 7) move back across the end; w (home 0) follows into slot 1.
  assert.deepEqual([y, z, w].map((n) => t.slotOf(n)), [7, 0, 1]);
  assert.equal(t.release(z), 12);
  assert.deepEqual([y, w].map((n) => t.slotOf(n)), [7, 0]);
  assert.deepEqual([t.idOf(y), t.idOf(w), t.idOf(x), t.idOf(z)], [11, 13, 0, 0]);
});

test('backing ids: a full table refuses an insert and still answers look-ups', () => {
  const t = new BackingIdTable(BackingIdTable.allocate(4));
  for (let nid = 100; nid < 104; nid++) assert.ok(t.insert(nid, nid - 99));
  assert.equal(t.hasRoomFor(200), false);
  assert.equal(t.insert(200, 9), false);
  assert.equal(t.idOf(200), 0);
  assert.equal(t.idOf(103), 4);
  assert.equal(t.release(101), 2);
  assert.equal(t.hasRoomFor(200), true);
  assert.ok(t.insert(200, 9));
  for (const [nid, id] of [[100, 1], [102, 3], [103, 4], [200, 9]]) assert.equal(t.idOf(nid), id);
});

test('backing ids: random inserts and releases in a small table agree with a Map after every step', () => {
  const t = new BackingIdTable(BackingIdTable.allocate(32));
  const model = new Map<number, { id: number; users: number }>();
  let seed = 42;
  const random = (n: number) => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return (seed >>> 8) % n;
  };
  for (let step = 0; step < 20_000; step++) {
    const nid = random(200);
    const have = model.get(nid);
    if (random(2) === 0 && model.size < 28) {
      if (have) {
        assert.equal(t.acquire(nid), have.id);
        have.users++;
      } else {
        assert.ok(t.insert(nid, step + 1));
        model.set(nid, { id: step + 1, users: 1 });
      }
    } else {
      const closed = t.release(nid);
      if (have && --have.users === 0) {
        assert.equal(closed, have.id);
        model.delete(nid);
      } else assert.equal(closed, 0);
    }
    for (let n = 0; n < 200; n++) assert.equal(t.idOf(n), model.get(n)?.id ?? 0, `step ${step}: nid ${n}`);
  }
});

test('backing ids: worker threads opening and releasing the same inodes under the lock lose nothing', async () => {
  const threads = 4;
  const rounds = 20_000;
  const table = BackingIdTable.allocate(64);
  const counter = new SharedArrayBuffer(4);
  const results = await Promise.all(
    Array.from({ length: threads }, (_, thread) => new Promise<{ opened: number[]; closed: number[] }>((resolve, reject) => {
      const w = new Worker(new URL('./helpers/backing-ids-worker.js', import.meta.url), { workerData: { table, counter, thread, rounds, nids: 24 } });
      const timer = setTimeout(() => void w.terminate().then(() => reject(new Error('a worker took over 60 s (a lock never released?)'))), 60_000);
      w.once('message', (m) => {
        clearTimeout(timer);
        resolve(m);
      });
      w.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    })),
  );
  assert.equal(new Int32Array(counter)[0], threads * rounds, 'every update made under the lock is there');
  const opened = results.flatMap((r) => r.opened).sort((p, q) => p - q);
  const closed = results.flatMap((r) => r.closed).sort((p, q) => p - q);
  assert.ok(opened.length > threads, 'the threads shared entries and made new ones');
  assert.deepEqual(closed, opened, 'every backing id inserted was given back for closing exactly once');
  const t = new BackingIdTable(table);
  for (let nid = 0; nid < 24; nid++) assert.equal(t.idOf(nid), 0, `nid ${nid} left in the table`);
});

function withFiles(count: number): { paths: string[]; done: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-fuse-caches-'));
  const paths = Array.from({ length: count }, (_, i) => join(dir, `object-${i}`));
  paths.forEach((p, i) => writeFileSync(p, `content ${i}\n`));
  return { paths, done: () => rmSync(dir, { recursive: true, force: true }) };
}

function isOpen(fd: number): boolean {
  try {
    fstatSync(fd);
    return true;
  } catch (e) {
    assert.equal((e as NodeJS.ErrnoException).code, 'EBADF');
    return false;
  }
}

test('object files: opened on first use only, the least recently used half closed when full, all closed at the end', (t) => {
  const { paths, done } = withFiles(6);
  t.after(done);
  const opens: number[] = [];
  const files = new ObjectFiles(4);
  const use = (nid: number): ObjectFile =>
    files.use(nid, () => {
      opens.push(nid);
      return { fd: openSync(paths[nid], 'r'), size: 0, verified: null, algorithm: 'sha256' };
    });
  const fds = [0, 1, 2, 3].map((nid) => use(nid).fd);
  assert.equal(use(0).fd, fds[0], 'a second use: the same open file');
  assert.deepEqual(opens, [0, 1, 2, 3]);
  assert.deepEqual(files.order(), [1, 2, 3, 0], 'least recently used first');
  const fd4 = use(4).fd;
  // Full at 4: down to half, the two least recently used (1 and 2) closed.
  assert.deepEqual(files.order(), [3, 0, 4]);
  assert.deepEqual([fds[1], fds[2]].map(isOpen), [false, false]);
  assert.deepEqual([fds[0], fds[3], fd4].map(isOpen), [true, true, true]);
  use(1);
  assert.deepEqual(opens, [0, 1, 2, 3, 4, 1], 'an evicted file is opened again on its next use');
  assert.throws(() => files.use(5, () => {
    throw new Error('no such object');
  }), /no such object/);
  assert.equal(files.has(5), false, 'a failed open keeps nothing');
  const open = files.order().map((nid) => use(nid).fd);
  files.closeAll();
  assert.equal(files.size, 0);
  assert.deepEqual(open.map(isOpen), open.map(() => false));
});

/** A made-up image order: objects are the items with an even nid, in nid order up to `end`. */
function evenOrder(end: number): (after: { nid: number }) => { nid: number } | null {
  return (after) => {
    const nid = after.nid + (after.nid % 2 === 0 ? 2 : 1);
    return nid < end ? { nid } : null;
  };
}

const nids = (items: Array<{ nid: number }>) => items.map((i) => i.nid);

test('read-ahead: starts after two objects in image order, then slides by one object per open; other orders start nothing', () => {
  const words = new Int32Array(new SharedArrayBuffer(8 * 4));
  const r = new ReadAhead(words, 3, 4, evenOrder(40));
  assert.deepEqual(nids(r.after({ nid: 0 })), [], 'the first open: nothing expected yet');
  assert.deepEqual(nids(r.after({ nid: 2 })), [4, 6, 8, 10], 'the one after the last: the next 4');
  assert.deepEqual(nids(r.after({ nid: 4 })), [12], 'the window slides: only what is new');
  assert.deepEqual(nids(r.after({ nid: 6 })), [14]);
  assert.deepEqual(nids(r.after({ nid: 20 })), [], 'a jump: nothing');
  assert.deepEqual(nids(r.after({ nid: 22 })), [24, 26, 28, 30], 'in order again from there');
  assert.deepEqual(nids(r.after({ nid: 8 })), [], 'backwards: nothing');
  assert.deepEqual(nids(r.after({ nid: 34 })), []);
  assert.deepEqual(nids(r.after({ nid: 36 })), [38], 'the end of the image ends the window');
  assert.deepEqual(nids(r.after({ nid: 38 })), []);
  assert.deepEqual([words[0], words[1], words[2], words[5], words[6], words[7]], [0, 0, 0, 0, 0, 0], 'only its two words are used');
});

test('read-ahead: two threads sharing the words continue one window', () => {
  const words = new Int32Array(new SharedArrayBuffer(2 * 4));
  const first = new ReadAhead(words, 0, 3, evenOrder(100));
  const second = new ReadAhead(words, 0, 3, evenOrder(100));
  first.after({ nid: 10 });
  assert.deepEqual(nids(second.after({ nid: 12 })), [14, 16, 18]);
  assert.deepEqual(nids(first.after({ nid: 14 })), [20]);
  assert.deepEqual(nids(second.after({ nid: 16 })), [22]);
});
