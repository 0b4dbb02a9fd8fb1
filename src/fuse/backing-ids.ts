/**
 * The passthrough backing ids of the inodes open at the moment, shared by
 * every serving thread: the kernel wants one backing id per inode however
 * many times it is open, whichever thread answers the OPEN, and the id is
 * closed when the last RELEASE of that inode comes.
 *
 * An open-addressed hash table (linear probing, deletion by backward shift,
 * so no tombstones pile up) over an Int32Array on a SharedArrayBuffer, with
 * a lock word in front: [lock, (nid + 1, backing id, users) × slots]. A key
 * of 0 marks an empty slot. The caller holds the lock around a look-up and
 * what it decides from it (at most one ioctl).
 */

const LOCK = 0;
const HEADER_WORDS = 1;
const KEY = 0;
const ID = 1;
const USERS = 2;
const SLOT_WORDS = 3;
/** Fibonacci hashing: the top bits of nid × 2^32/φ spread consecutive nids over the table. */
const GOLDEN = 0x9e3779b1;

export class BackingIdTable {
  /** The shared buffer for a table of `slots` (a power of two) entries. */
  static allocate(slots: number): SharedArrayBuffer {
    if (!(slots >= 2 && (slots & (slots - 1)) === 0)) throw new RangeError(`backing table slots must be a power of two, not ${slots}`);
    return new SharedArrayBuffer((HEADER_WORDS + slots * SLOT_WORDS) * 4);
  }

  private readonly w: Int32Array;
  readonly slots: number;
  private readonly shift: number;

  /** A view of a table made by allocate() (in this thread or another). */
  constructor(buffer: SharedArrayBuffer) {
    this.w = new Int32Array(buffer);
    this.slots = (this.w.length - HEADER_WORDS) / SLOT_WORDS;
    this.shift = 32 - Math.log2(this.slots);
  }

  /** The slot where probing for `nid` starts. */
  home(nid: number): number {
    return Math.imul(nid, GOLDEN) >>> this.shift;
  }

  /** Wait for the lock (shared by the threads; held for a look-up and at most one ioctl). */
  lock(): void {
    while (Atomics.compareExchange(this.w, LOCK, 0, 1) !== 0) Atomics.wait(this.w, LOCK, 1, 10);
  }

  unlock(): void {
    Atomics.store(this.w, LOCK, 0);
    Atomics.notify(this.w, LOCK, 1);
  }

  /** The word index of `nid`'s entry, or of the empty slot where it would go; -1 when the table is full. */
  private find(nid: number): number {
    const mask = this.slots - 1;
    let i = this.home(nid);
    for (let n = 0; n < this.slots; n++, i = (i + 1) & mask) {
      const k = this.w[HEADER_WORDS + i * SLOT_WORDS + KEY];
      if (k === 0 || k === nid + 1) return HEADER_WORDS + i * SLOT_WORDS;
    }
    return -1;
  }

  /** The slot `nid` occupies, or -1 (for tests: where an entry went). */
  slotOf(nid: number): number {
    const at = this.find(nid);
    return at >= 0 && this.w[at + KEY] === nid + 1 ? (at - HEADER_WORDS) / SLOT_WORDS : -1;
  }

  /** `nid`'s backing id, or 0 when it has none; nothing changes. */
  idOf(nid: number): number {
    const at = this.find(nid);
    return at >= 0 && this.w[at + KEY] === nid + 1 ? this.w[at + ID] : 0;
  }

  /** How many OPENs of `nid` hold its backing id (0: none). */
  usersOf(nid: number): number {
    const at = this.find(nid);
    return at >= 0 && this.w[at + KEY] === nid + 1 ? this.w[at + USERS] : 0;
  }

  /** One more user of `nid`'s backing id: the id, or 0 when it has none (then nothing changes). */
  acquire(nid: number): number {
    const at = this.find(nid);
    if (at < 0 || this.w[at + KEY] !== nid + 1) return 0;
    this.w[at + USERS]++;
    return this.w[at + ID];
  }

  /** Whether an entry for `nid` could be inserted (it has none and the table is not full). */
  hasRoomFor(nid: number): boolean {
    const at = this.find(nid);
    return at >= 0 && this.w[at + KEY] === 0;
  }

  /** Record `id` (> 0) as `nid`'s backing id with one user; false when the table is full or `nid` has one. */
  insert(nid: number, id: number): boolean {
    const at = this.find(nid);
    if (at < 0 || this.w[at + KEY] !== 0) return false;
    this.w[at + KEY] = nid + 1;
    this.w[at + ID] = id;
    this.w[at + USERS] = 1;
    return true;
  }

  /** One user fewer: the backing id to close when that was the last (the entry is gone), else 0. */
  release(nid: number): number {
    const at = this.find(nid);
    if (at < 0 || this.w[at + KEY] !== nid + 1 || --this.w[at + USERS] > 0) return 0;
    const id = this.w[at + ID];
    this.remove((at - HEADER_WORDS) / SLOT_WORDS);
    return id;
  }

  /** Empty slot i and move back the entries after it that probing would no longer find. */
  private remove(i: number): void {
    const w = this.w;
    const mask = this.slots - 1;
    const key = (slot: number) => HEADER_WORDS + slot * SLOT_WORDS + KEY;
    let hole = i;
    w[key(hole)] = 0;
    // At most once round (a full table whose entries all sit past their homes would otherwise never meet an empty slot).
    for (let j = (hole + 1) & mask, n = 1; n < this.slots && w[key(j)] !== 0; j = (j + 1) & mask, n++) {
      const home = this.home(w[key(j)] - 1);
      // Entry j stays unless its home lies cyclically outside (hole, j].
      const stays = hole <= j ? hole < home && home <= j : hole < home || home <= j;
      if (stays) continue;
      w.copyWithin(key(hole), key(j), key(j) + SLOT_WORDS);
      w[key(j)] = 0;
      hole = j;
    }
  }
}
