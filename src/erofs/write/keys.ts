/** Xattr names as EROFS stores them: each distinct name once, with its prefix index, suffix and filter bit. */
import { XATTR_FILTER_BITS, XATTR_FILTER_SEED, XATTR_PREFIXES } from '../format.js';
import { xxh32 } from '../xxhash.js';
import { compareBytes } from './bytes.js';

export class KeyTable {
  /** Names as latin1 strings: one char per byte, so string order is byte order. */
  readonly name: string[] = [];
  /** EROFS name index of the prefix (0: none, the whole name is stored). */
  readonly index: number[] = [];
  /** The name without its prefix, as stored in the image. */
  readonly suffix: Buffer[] = [];
  /** The name's bit in the per-inode xattr bloom filter. */
  readonly filterBit: number[] = [];
  private readonly ids = new Map<string, number>();
  private readonly decoded = new Map<number, Array<[Buffer, string]>>();

  /** The id of a name, adding it on first sight. */
  id(name: string): number {
    let id = this.ids.get(name);
    if (id !== undefined) return id;
    id = this.name.length;
    let index = 0;
    let prefixLength = 0;
    for (const [prefix, i] of XATTR_PREFIXES) {
      if (name.startsWith(prefix)) {
        index = i;
        prefixLength = prefix.length;
        break;
      }
    }
    const suffix = Buffer.from(name.slice(prefixLength), 'latin1');
    this.name.push(name);
    this.index.push(index);
    this.suffix.push(suffix);
    this.filterBit.push(xxh32(suffix, (XATTR_FILTER_SEED + index) >>> 0) & (XATTR_FILTER_BITS - 1));
    this.ids.set(name, id);
    return id;
  }

  /** A name given as bytes, decoded once per distinct name. */
  nameOf(bytes: Buffer): string {
    let h = 0x811c9dc5;
    for (let i = 0; i < bytes.length; i++) h = Math.imul(h ^ bytes[i], 0x01000193);
    let bucket = this.decoded.get(h);
    if (bucket) {
      for (let i = 0; i < bucket.length; i++) if (compareBytes(bucket[i][0], bytes) === 0) return bucket[i][1];
    } else this.decoded.set(h, (bucket = []));
    const name = bytes.toString('latin1');
    bucket.push([bytes, name]);
    return name;
  }
}
