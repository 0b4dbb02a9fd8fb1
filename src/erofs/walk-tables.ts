/**
 * The bookkeeping of the reader's walk (src/erofs/reader.ts): the entries of
 * the directories on its path, and what it has met by nid. Typed arrays
 * rather than objects per entry: the walk of a large image allocates almost
 * nothing per entry.
 */
import type { Inode } from '../tree/model.js';

/**
 * The entries of every directory on the walk's path, in one stack of typed
 * arrays: a directory's entries are pushed when it is entered and dropped
 * when it is left, which the depth-first walk does in stack order. One set of
 * arrays for the whole walk instead of four growing arrays per directory.
 */
export class DirentStack {
  /** Where each entry's name is in the image. */
  starts = new Uint32Array(256);
  ends = new Uint32Array(256);
  nids = new Float64Array(256);
  ftypes = new Uint8Array(256);
  top = 0;
  /** What `.` and `..` of the directory read last point at (-1: missing). */
  dot = -1;
  dotdot = -1;

  push(start: number, end: number, nid: number, ftype: number): void {
    const i = this.top;
    if (i === this.starts.length) this.grow();
    this.starts[i] = start;
    this.ends[i] = end;
    this.nids[i] = nid;
    this.ftypes[i] = ftype;
    this.top = i + 1;
  }

  private grow(): void {
    const n = this.starts.length * 2;
    const starts = new Uint32Array(n);
    const ends = new Uint32Array(n);
    const nids = new Float64Array(n);
    const ftypes = new Uint8Array(n);
    starts.set(this.starts);
    ends.set(this.ends);
    nids.set(this.nids);
    ftypes.set(this.ftypes);
    this.starts = starts;
    this.ends = ends;
    this.nids = nids;
    this.ftypes = ftypes;
  }
}

export const NONE = 0;
export const WHITEOUT = -1;
/** Seen, a directory, node not kept. */
export const SEEN_DIR = -2;
/** Seen, not a directory, node not kept (the dump keeps only inodes that may have hard links). */
export const SEEN_FILE = -3;

/** nid -> kept node (index + 1) or a marker; a typed array for images of usual size, a Map beyond. */
export class NidTable {
  private readonly slots: Int32Array | null;
  private readonly map: Map<number, number> | null;
  readonly nodes: Inode[] = [];
  count = 0;
  whiteouts = 0;

  constructor(maxNid: number) {
    if (maxNid < 1 << 22) {
      this.slots = new Int32Array(Math.max(0, maxNid) + 1);
      this.map = null;
    } else {
      this.slots = null;
      this.map = new Map();
    }
  }

  get(nid: number): number {
    if (this.slots) return nid < this.slots.length ? this.slots[nid] : NONE;
    return this.map!.get(nid) ?? NONE;
  }

  private set(nid: number, v: number): void {
    if (this.slots) this.slots[nid] = v;
    else this.map!.set(nid, v);
  }

  add(nid: number, node: Inode, keep: boolean): void {
    this.count++;
    if (keep) {
      this.nodes.push(node);
      this.set(nid, this.nodes.length);
    } else this.set(nid, node.children ? SEEN_DIR : SEEN_FILE);
  }

  node(v: number): Inode {
    return this.nodes[v - 1];
  }

  whiteout(nid: number): void {
    this.whiteouts++;
    this.set(nid, WHITEOUT);
  }
}
