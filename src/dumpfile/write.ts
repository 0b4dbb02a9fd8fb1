/**
 * The composefs dump-file writer: prints a tree in the exact form the
 * reference's `composefs-info dump` prints an image.
 *
 * One line per directory entry, depth first in the children's (name) order,
 * the root first as `/`:
 *
 *   PATH SIZE MODE NLINK UID GID RDEV MTIME PAYLOAD CONTENT DIGEST [KEY=VALUE]...
 *
 * - numbers in decimal, MODE in octal, MTIME as `SEC.NSEC` with NSEC not
 *   zero-padded (so `5.7` is 5 s + 7 ns);
 * - PAYLOAD, CONTENT and DIGEST are `-` when absent; a value that is
 *   exactly `-` is written `\x2d`; DIGEST is lowercase hex;
 * - a hard link (a `Dirent` with `hardlink: true`) prints the fields of the
 *   inode it points to, `@` before MODE, and the path of that inode's
 *   primary entry in PAYLOAD; nothing is printed below it;
 * - xattrs in the order the inode holds them, `=` escaped in both key and
 *   value, an empty value printed as nothing after the `=`.
 *
 * The writer prints the tree as it is: it does not sort, fix up nlink or
 * sizes, or drop fields the image could not hold.
 */
import type { Dirent, Inode } from '../tree/model.js';
import { ByteSink, ESCAPE_EQUAL, ESCAPE_LONE_DASH, putHex } from './escape.js';

const FLUSH_AT = 1 << 20;

/**
 * Print the dump of the tree below `root`, handing the output out in chunks
 * of about a megabyte (each chunk is a fresh Buffer the callee may keep).
 */
export function writeDumpChunks(root: Inode, emit: (chunk: Buffer) => void): void {
  const targets = primaryPaths(root);
  const out = new ByteSink(FLUSH_AT + (1 << 16));
  // The escaped path of the entry being printed (escaping works byte by byte,
  // so the escaped names can simply be joined).
  const path = new ByteSink(4096);

  printEntry(out, path, root, false, targets);
  // Depth first, with an explicit stack (trees can be deep).
  const dirs: Dirent[][] = [];
  const next: number[] = [];
  const marks: number[] = [];
  if (root.children) {
    dirs.push(root.children);
    next.push(0);
    marks.push(0);
  }
  while (dirs.length > 0) {
    const top = dirs.length - 1;
    const children = dirs[top];
    const i = next[top];
    if (i === children.length) {
      path.len = marks[top];
      dirs.pop();
      next.pop();
      marks.pop();
      continue;
    }
    next[top] = i + 1;
    const d = children[i];
    path.len = marks[top];
    path.byte(0x2f);
    path.escaped(d.name, 0);
    printEntry(out, path, d.inode, d.hardlink, targets);
    if (out.len >= FLUSH_AT) emit(out.take());
    if (!d.hardlink && d.inode.children) {
      dirs.push(d.inode.children);
      next.push(0);
      marks.push(path.len);
    }
  }
  if (out.len > 0) emit(out.take());
}

/** The dump of the tree below `root`, as one Buffer. */
export function writeDump(root: Inode): Buffer {
  const chunks: Buffer[] = [];
  writeDumpChunks(root, (c) => chunks.push(c));
  return chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
}

/**
 * For every inode that some hard link points to, the escaped path of its
 * primary entry (the one not marked `hardlink`; failing that, its first
 * entry in walk order). Empty when the tree has no hard links.
 */
function primaryPaths(root: Inode): Map<Inode, Buffer> {
  const wanted = new Set<Inode>();
  forEachEntry(root, null, (d) => {
    if (d.hardlink) wanted.add(d.inode);
  });
  const found = new Map<Inode, Buffer>();
  if (wanted.size === 0) return found;

  const fallback = new Map<Inode, Buffer>();
  if (wanted.has(root)) found.set(root, Buffer.alloc(0));
  const path = new ByteSink(4096);
  forEachEntry(root, path, (d) => {
    if (!wanted.has(d.inode)) return;
    const here = Buffer.from(path.buf.subarray(0, path.len));
    if (!d.hardlink) {
      if (!found.has(d.inode)) found.set(d.inode, here);
    } else if (!fallback.has(d.inode)) {
      fallback.set(d.inode, here);
    }
  });
  for (const [inode, p] of fallback) if (!found.has(inode)) found.set(inode, p);
  return found;
}

/** Visit every entry below `root` depth first; with `path`, keep the entry's escaped path in it. */
function forEachEntry(root: Inode, path: ByteSink | null, visit: (d: Dirent) => void): void {
  if (!root.children) return;
  const dirs: Dirent[][] = [root.children];
  const next: number[] = [0];
  const marks: number[] = [0];
  while (dirs.length > 0) {
    const top = dirs.length - 1;
    const i = next[top];
    if (i === dirs[top].length) {
      dirs.pop();
      next.pop();
      marks.pop();
      continue;
    }
    next[top] = i + 1;
    const d = dirs[top][i];
    if (path !== null) {
      path.len = marks[top];
      path.byte(0x2f);
      path.escaped(d.name, 0);
    }
    visit(d);
    if (!d.hardlink && d.inode.children) {
      dirs.push(d.inode.children);
      next.push(0);
      marks.push(path !== null ? path.len : 0);
    }
  }
}

function printEntry(out: ByteSink, path: ByteSink, inode: Inode, hardlink: boolean, targets: Map<Inode, Buffer>): void {
  if (path.len === 0) out.byte(0x2f);
  else out.bytes(path.buf, 0, path.len);
  // The root's path is empty here, as in the reference.
  printFields(out, inode, hardlink ? (into) => into.bytes(targets.get(inode) ?? EMPTY) : null);
}

const EMPTY = Buffer.alloc(0);

/**
 * Write `value` in `radix` at out[at..] (room for 24 bytes is the caller's
 * job) and return the new end. Safe integers are written digit by digit,
 * anything past 2^53 as JS formats it, in decimal.
 */
function putInt(out: Buffer, at: number, value: number, radix = 10): number {
  if (value >= 0 && value < radix) {
    out[at] = 0x30 + value;
    return at + 1;
  }
  // Past 2^31 (rare: sizes, times), make sure the digit loop below is exact.
  if ((value > 0x7fffffff || value < -0x7fffffff) && !Number.isSafeInteger(value)) {
    return at + out.write(Number.isFinite(value) ? BigInt(Math.trunc(value)).toString() : '0', at, 'latin1');
  }
  if (value < 0) {
    out[at++] = 0x2d;
    value = -value;
  }
  let digits = 0;
  for (let rest = value; rest >= 1; rest = Math.floor(rest / radix)) digits++;
  const end = at + digits;
  let pos = end;
  for (let rest = value; rest >= 1; rest = Math.floor(rest / radix)) out[--pos] = 0x30 + (rest % radix);
  return end;
}


/** NLINK UID GID RDEV, each followed by a space, at out[at..]; returns the new end. */
function putNlinkUidGidRdev(out: Buffer, at: number, inode: Inode): number {
  at = putInt(out, at, inode.nlink);
  out[at++] = 0x20;
  at = putInt(out, at, inode.uid);
  out[at++] = 0x20;
  at = putInt(out, at, inode.gid);
  out[at++] = 0x20;
  at = putInt(out, at, inode.rdev);
  out[at++] = 0x20;
  return at;
}

/** Prints a hard link's PAYLOAD: its target's path, already escaped (a path is never a lone `-`). */
export type LinkTargetPrinter = (out: ByteSink) => void;

/**
 * The one dump-line printer, shared by writeDump and the printers that walk
 * an image (src/dumpfile/from-image.ts): everything of a line after its PATH,
 * through the newline. `linkTarget` is given for a hard link. The fixed
 * part is written in place with one bounds check (it is most of the line).
 */
export function printFields(out: ByteSink, inode: Inode, linkTarget: LinkTargetPrinter | null): void {
  out.ensure(8 * 24 + 16);
  let buf = out.buf;
  let at = out.len;
  buf[at++] = 0x20;
  at = putInt(buf, at, inode.size);
  buf[at++] = 0x20;
  if (linkTarget !== null) buf[at++] = 0x40;
  at = putInt(buf, at, inode.mode, 8);
  buf[at++] = 0x20;
  at = putNlinkUidGidRdev(buf, at, inode);
  at = putInt(buf, at, inode.mtimeSec);
  buf[at++] = 0x2e;
  at = putInt(buf, at, inode.mtimeNsec);
  buf[at++] = 0x20;
  out.len = at;

  if (linkTarget !== null) linkTarget(out);
  else if (inode.payload === null) out.byte(0x2d);
  else out.escaped(inode.payload, ESCAPE_LONE_DASH);
  out.byte(0x20);
  if (inode.content === null) out.byte(0x2d);
  else out.escaped(inode.content, ESCAPE_LONE_DASH);

  const digest = inode.digest;
  out.ensure(2 + (digest === null ? 1 : 2 * digest.length));
  buf = out.buf;
  at = out.len;
  buf[at++] = 0x20;
  if (digest === null) buf[at++] = 0x2d;
  else at = putHex(buf, at, digest);
  out.len = at;

  const xattrs = inode.xattrs;
  for (let i = 0; i < xattrs.length; i++) {
    out.byte(0x20);
    out.escaped(xattrs[i].key, ESCAPE_EQUAL);
    out.byte(0x3d);
    out.escaped(xattrs[i].value, ESCAPE_EQUAL);
  }
  out.byte(0x0a);
}
