/**
 * The dump and the listing of a composefs image (what `composefs-info dump`
 * and `ls` print), printed while the reader walks the image instead of from
 * a tree. The dump is byte for byte `writeDump(readImage(image).root)` (the
 * tests and every fuzz case compare the two) and uses the same line printer
 * (src/dumpfile/write.ts); building no tree makes it faster and lighter,
 * which is what `cfs info dump` of a big image needs.
 */
import { walkImage, type ReadImageOptions, type Visitor } from '../erofs/reader.js';
import { ByteSink, ESCAPE_KEEP_SPACE } from './escape.js';
import { printFields } from './write.js';
import { S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from '../tree/model.js';

/** Beyond this many inode slots, line starts are kept in a Map rather than a typed array (see LineStarts). */
const TYPED_SLOTS_MAX = 1 << 22;

/**
 * Where the line of each non-directory inode printed so far starts in the
 * output, by nid: a hard link prints its target's path, which is the start
 * of that line up to the first space (an escaped path has none). One slot
 * per possible nid (an eighth of the image's size) instead of an object per
 * entry; a Map for huge images.
 */
class LineStarts {
  private readonly slots: Uint32Array | null;
  private readonly map: Map<number, number> | null;

  constructor(imageBytes: number) {
    const slots = Math.floor(imageBytes / 32) + 1;
    this.slots = slots <= TYPED_SLOTS_MAX ? new Uint32Array(slots) : null;
    this.map = this.slots === null ? new Map() : null;
  }

  set(nid: number, lineStart: number): void {
    if (this.slots !== null) this.slots[nid] = lineStart + 1;
    else this.map!.set(nid, lineStart);
  }

  /** The line start recorded for `nid`, or -1. */
  get(nid: number): number {
    if (this.slots !== null) return this.slots[nid] - 1;
    return this.map!.get(nid) ?? -1;
  }
}

/** The dump of an image; throws ImageFormatError as readImage does. */
export function dumpImage(image: Buffer, opts: Pick<ReadImageOptions, 'topLevel'> = {}): Buffer {
  // A dump is about as big as its image: start there and rarely grow (growing copies).
  const out = new ByteSink(Math.max(1 << 16, image.length + (image.length >> 2)));
  // A path is never built on its own: it is the parent's path, copied from
  // the start of the parent's line (a native copy within one buffer), then
  // the escaped name. `dirLineStart`/`dirPathLength` hold the open directories' paths.
  const dirLineStart: number[] = [0];
  const dirPathLength: number[] = [0];
  const lineStarts = new LineStarts(image.length);
  let targetLineStart = 0;
  const printTarget = (into: ByteSink): void => {
    if (targetLineStart < 0) return;
    let pathEnd = targetLineStart;
    while (into.buf[pathEnd] !== 0x20) pathEnd++;
    into.repeat(targetLineStart, pathEnd - targetLineStart);
  };
  const visitor: Visitor = {
    transient: true,
    root: (node) => {
      out.byte(0x2f);
      printFields(out, node, null);
    },
    entry: (_parent, nameStart, nameEnd, node, hardlink, nid) => {
      const lineStart = out.len;
      const depth = dirLineStart.length - 1;
      out.repeat(dirLineStart[depth], dirPathLength[depth]);
      out.byte(0x2f);
      out.escaped(image, 0, nameStart, nameEnd);
      const pathLength = out.len - lineStart;
      if (hardlink) {
        targetLineStart = lineStarts.get(nid);
        printFields(out, node, printTarget);
        return;
      }
      printFields(out, node, null);
      if (node.children !== null) {
        dirLineStart.push(lineStart);
        dirPathLength.push(pathLength);
      } else lineStarts.set(nid, lineStart);
    },
    leave: () => {
      dirLineStart.pop();
      dirPathLength.pop();
    },
  };
  walkImage(image, opts, visitor);
  return out.buf.subarray(0, out.len);
}

/**
 * `composefs-info ls` of an image, printed while walking it: every path below
 * the root (escaped, a space kept), `/` and a tab after directories,
 * `<tab>-> TARGET` after symlinks, `<tab>@ OBJECT` after files with a backing
 * object; a hard link's second name is its path alone. Throws ImageFormatError
 * as readImage does.
 */
export function listImage(image: Buffer, opts: Pick<ReadImageOptions, 'topLevel'> = {}): Buffer {
  const out = new ByteSink(Math.max(1 << 16, image.length));
  const path = new ByteSink(4096);
  const dirPathLength: number[] = [];
  const visitor: Visitor = {
    transient: true,
    root: () => {},
    entry: (_parent, nameStart, nameEnd, node, hardlink) => {
      const parentLength = path.len;
      path.byte(0x2f);
      path.escaped(image, ESCAPE_KEEP_SPACE, nameStart, nameEnd);
      out.bytes(path.buf, 0, path.len);
      const type = node.mode & S_IFMT;
      if (hardlink) {
        // The second name of a file: its path alone.
      } else if (type === S_IFDIR) {
        out.ascii('/\t\n');
        dirPathLength.push(parentLength);
        return;
      } else if (type === S_IFLNK) {
        out.ascii('\t-> ');
        if (node.payload !== null) out.escaped(node.payload, 0);
      } else if (type === S_IFREG && node.payload !== null) {
        out.ascii('\t@ ');
        out.escaped(node.payload, 0);
      }
      out.byte(0x0a);
      path.len = parentLength;
    },
    leave: () => {
      path.len = dirPathLength.pop() ?? 0;
    },
  };
  walkImage(image, opts, visitor);
  return out.buf.subarray(0, out.len);
}
