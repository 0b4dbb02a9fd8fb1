/**
 * Reading ahead in image order: when objects are opened in the order the
 * image stores their inodes (a directory's files one after another, as a
 * walk that reads every file goes), the next `depth` objects are worth
 * opening and asking the disk for now, so their reads overlap instead of
 * queueing behind one another. Objects opened in any other order start
 * nothing.
 *
 * Two words of shared memory make the threads agree: the object expected
 * next (the one after the last opened), and the last object already read
 * ahead, so the window slides by what is new rather than asking again for
 * what it asked for before.
 */

const EXPECTED = 0;
const READ_AHEAD_TO = 1;
/** The words a ReadAhead uses, from its `at`. */
export const READ_AHEAD_WORDS = 2;

export class ReadAhead<T extends { nid: number }> {
  /**
   * `words[at]` and `words[at + 1]` (shared, zero at first) hold the state;
   * `next` gives the object after one in image order, or null.
   */
  constructor(
    private readonly words: Int32Array,
    private readonly at: number,
    readonly depth: number,
    private readonly next: (after: T) => T | null,
  ) {}

  /**
   * `from` has just begun to be read. If it is the object after the one
   * begun before, the objects to read ahead now: up to `depth` after it,
   * without those already read ahead. Else none.
   */
  after(from: T): T[] {
    const w = this.words;
    const expected = Atomics.exchange(w, this.at + EXPECTED, 0) - 1;
    let next = this.next(from);
    Atomics.store(w, this.at + EXPECTED, next ? next.nid + 1 : 0);
    if (from.nid !== expected) return [];
    const before = Atomics.load(w, this.at + READ_AHEAD_TO) - 1;
    const window: T[] = [];
    for (let i = 0; i < this.depth && next; i++, next = this.next(next)) {
      window.push(next);
      // Everything up to the last object read ahead was asked for before.
      if (next.nid === before) window.length = 0;
    }
    if (window.length > 0) Atomics.store(w, this.at + READ_AHEAD_TO, window[window.length - 1].nid + 1);
    return window;
  }
}
