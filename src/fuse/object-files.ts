/**
 * The object files a serving thread keeps open for READs (they are opened
 * on the first READ when OPEN is skipped, and reading ahead opens them
 * early): opened on first use, kept in order of last use, and when full the
 * least recently used half is closed, so a walk over more files than the
 * limit closes in batches rather than on every open.
 */
import type { VerityAlgorithm } from '../fsverity/index.js';
import { closeFd } from '../sys/openat2.js';

export interface ObjectFile {
  fd: number;
  size: number;
  /** Verity: the object's Merkle leaves once measured and matching, or the errno every READ of it gets. */
  verified: Buffer | number | null;
  /** The hash of the leaves (the algorithm of the digest the image records). */
  algorithm: VerityAlgorithm;
}

export class ObjectFiles {
  /** By inode nid; a Map iterates in insertion order, so re-inserting on use keeps the least recent first. */
  private readonly files = new Map<number, ObjectFile>();

  constructor(
    readonly capacity: number,
    private readonly close: (fd: number) => void = closeFd,
  ) {}

  get size(): number {
    return this.files.size;
  }

  has(nid: number): boolean {
    return this.files.has(nid);
  }

  /** The object file of `nid`, made the most recently used; opened with `open` (and kept) if it is not open yet. */
  use(nid: number, open: () => ObjectFile): ObjectFile {
    const have = this.files.get(nid);
    if (have) {
      this.files.delete(nid);
      this.files.set(nid, have);
      return have;
    }
    const file = open();
    this.evict();
    this.files.set(nid, file);
    return file;
  }

  /** The nids open, least recently used first. */
  order(): number[] {
    return [...this.files.keys()];
  }

  /** Close every file (the thread is ending). */
  closeAll(): void {
    for (const f of this.files.values()) this.close(f.fd);
    this.files.clear();
  }

  /** At the limit: close the least recently used down to half of it. */
  private evict(): void {
    if (this.files.size < this.capacity) return;
    let drop = this.files.size - Math.floor(this.capacity / 2);
    for (const [nid, f] of this.files) {
      if (drop-- <= 0) break;
      this.files.delete(nid);
      this.close(f.fd);
    }
  }
}
