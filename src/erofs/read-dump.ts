/**
 * `dumpImage`: the dump of a composefs image (what `composefs-info dump`
 * prints), printed while the reader walks the image instead of from a tree.
 * The output is byte for byte `writeDump(readImage(image).root)` (the tests
 * and every fuzz case compare the two); building no tree makes it faster and
 * lighter, which is what `cfs info dump` of a big image needs.
 *
 * Only inodes that may be hard-linked (not directories, link count above 1)
 * are kept for the `@` lines; an image whose link counts hide a hard link is
 * dumped through the tree instead.
 */
import { NeedTree, readImage, walkImage, type ReadImageOptions, type Visitor } from './reader.js';
import { writeDump } from '../dumpfile/write.js';
import type { Inode } from '../tree/model.js';

const HEX = Buffer.from('0123456789abcdef', 'latin1');

/** Per byte: 0 printed as is; 1 escaped; 2 `=` (escaped in xattr fields only). */
const CLASS = new Uint8Array(256).fill(1);
for (let c = 0x21; c <= 0x7e; c++) CLASS[c] = 0;
CLASS[0x5c] = 1;
CLASS[0x3d] = 2;

/** Write byte `c` escaped (`\\`, `\n`, `\r`, `\t` or `\xHH`) at b[n..]; returns the new end. */
function escapeByte(b: Buffer, n: number, c: number): number {
  b[n++] = 0x5c;
  if (c === 0x5c) b[n++] = 0x5c;
  else if (c === 0x0a) b[n++] = 0x6e;
  else if (c === 0x0d) b[n++] = 0x72;
  else if (c === 0x09) b[n++] = 0x74;
  else {
    b[n++] = 0x78;
    b[n++] = HEX[c >> 4];
    b[n++] = HEX[c & 15];
  }
  return n;
}

/** A growable byte buffer with the dump format's escaping, written byte by byte (no temporary views). */
class Sink {
  buf: Buffer;
  len = 0;

  constructor(capacity: number) {
    this.buf = Buffer.allocUnsafe(capacity);
  }

  ensure(extra: number): void {
    const need = this.len + extra;
    if (need <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < need) cap *= 2;
    const next = Buffer.allocUnsafe(cap);
    this.buf.copy(next, 0, 0, this.len);
    this.buf = next;
  }

  byte(c: number): void {
    if (this.len >= this.buf.length) this.ensure(1);
    this.buf[this.len++] = c;
  }

  copy(src: Uint8Array, start: number, end: number): void {
    this.ensure(end - start);
    const b = this.buf;
    let n = this.len;
    for (let i = start; i < end; i++) b[n++] = src[i];
    this.len = n;
  }

  /** Append a copy of this buffer's own bytes [start, start + len): copyWithin needs no view. */
  repeat(start: number, len: number): void {
    this.ensure(len);
    this.buf.copyWithin(this.len, start, start + len);
    this.len += len;
  }

  /** A non-negative or negative integer in decimal, or octal. */
  int(v: number, radix = 10): void {
    if (v >= 0 && v < 10) {
      this.byte(0x30 + v);
      return;
    }
    const s = v.toString(radix);
    this.ensure(s.length);
    for (let i = 0; i < s.length; i++) this.buf[this.len++] = s.charCodeAt(i);
  }

  /** src[start..end) escaped; `equal` escapes `=` too; `loneDash` writes a lone `-` as `\x2d`. */
  escaped(src: Uint8Array, start: number, end: number, equal: boolean, loneDash: boolean): void {
    if (loneDash && end - start === 1 && src[start] === 0x2d) {
      this.ensure(4);
      this.put4(0x78, 0x32, 0x64);
      return;
    }
    this.ensure(4 * (end - start));
    const b = this.buf;
    let n = this.len;
    for (let i = start; i < end; i++) {
      const c = src[i];
      const k = CLASS[c];
      if (k === 0 || (k === 2 && !equal)) {
        b[n++] = c;
        continue;
      }
      n = escapeByte(b, n, c);
    }
    this.len = n;
  }

  /** As composefs-info ls prints paths: like escaped() but a space stays a space and `=` is never escaped. */
  escapedKeepSpace(src: Uint8Array, start: number, end: number): void {
    this.ensure(4 * (end - start));
    const b = this.buf;
    let n = this.len;
    for (let i = start; i < end; i++) {
      const c = src[i];
      if (c >= 0x20 && c <= 0x7e && c !== 0x5c) {
        b[n++] = c;
        continue;
      }
      n = escapeByte(b, n, c);
    }
    this.len = n;
  }

  private put4(c1: number, c2: number, c3: number): void {
    const b = this.buf;
    b[this.len++] = 0x5c;
    b[this.len++] = c1;
    b[this.len++] = c2;
    b[this.len++] = c3;
  }

  hex(src: Uint8Array): void {
    this.ensure(src.length * 2);
    const b = this.buf;
    let n = this.len;
    for (let i = 0; i < src.length; i++) {
      b[n++] = HEX[src[i] >> 4];
      b[n++] = HEX[src[i] & 15];
    }
    this.len = n;
  }
}

/** Write a non-negative safe integer (or a negative one, in decimal) at b[n..]; returns the new end. */
function putInt(b: Buffer, n: number, v: number, radix = 10): number {
  if (v >= 0 && v < radix) {
    b[n] = 0x30 + v;
    return n + 1;
  }
  if (v < 0) {
    b[n++] = 0x2d;
    v = -v;
  }
  let digits = 0;
  for (let m = v; m >= 1; m = Math.floor(m / radix)) digits++;
  let o = n + digits;
  const end = o;
  for (let m = v; m >= 1; m = Math.floor(m / radix)) b[--o] = 0x30 + (m % radix);
  return end;
}

/**
 * The rest of a dump line after its path (already in `out`), as writeDump
 * prints it (src/dumpfile/write.ts): the fixed part written in place, with few
 * calls. A hard link's target path is copied from the target's own line.
 */
function printFields(out: Sink, inode: Inode, hardlink: boolean, targets: Map<Inode, number[]>): void {
  out.ensure(8 * 22 + 16);
  let b = out.buf;
  let n = out.len;
  b[n++] = 0x20;
  n = putInt(b, n, inode.size);
  b[n++] = 0x20;
  if (hardlink) b[n++] = 0x40;
  n = putInt(b, n, inode.mode, 8);
  b[n++] = 0x20;
  n = putInt(b, n, inode.nlink);
  b[n++] = 0x20;
  n = putInt(b, n, inode.uid);
  b[n++] = 0x20;
  n = putInt(b, n, inode.gid);
  b[n++] = 0x20;
  n = putInt(b, n, inode.rdev);
  b[n++] = 0x20;
  n = putInt(b, n, inode.mtimeSec);
  b[n++] = 0x2e;
  n = putInt(b, n, inode.mtimeNsec);
  b[n++] = 0x20;
  out.len = n;
  if (hardlink) {
    const target = targets.get(inode);
    if (target === undefined) throw new NeedTree();
    out.repeat(target[0], target[1]);
  } else if (inode.payload === null) out.byte(0x2d);
  else out.escaped(inode.payload, 0, inode.payload.length, false, true);
  out.byte(0x20);
  if (inode.content === null) out.byte(0x2d);
  else out.escaped(inode.content, 0, inode.content.length, false, true);
  out.ensure(2 + 64 + 1);
  b = out.buf;
  n = out.len;
  b[n++] = 0x20;
  const digest = inode.digest;
  if (digest === null) b[n++] = 0x2d;
  else {
    for (let i = 0; i < digest.length; i++) {
      b[n++] = HEX[digest[i] >> 4];
      b[n++] = HEX[digest[i] & 15];
    }
  }
  out.len = n;
  const xattrs = inode.xattrs;
  for (let i = 0; i < xattrs.length; i++) {
    const x = xattrs[i];
    out.byte(0x20);
    out.escaped(x.key, 0, x.key.length, true, false);
    out.byte(0x3d);
    out.escaped(x.value, 0, x.value.length, true, false);
  }
  out.byte(0x0a);
}

/** The dump of an image; throws ImageFormatError as readImage does. */
export function dumpImage(image: Buffer, opts: Pick<ReadImageOptions, 'topLevel'> = {}): Buffer {
  // A dump is about as big as its image: start there and rarely grow (growing copies).
  const out = new Sink(Math.max(1 << 16, image.length + (image.length >> 2)));
  // A path is never built on its own: it is the parent's path, copied from
  // the start of the parent's line (a native copy within one buffer), then
  // the escaped name. `dirStart`/`dirLen` hold the open directories' paths.
  const dirStart: number[] = [0];
  const dirLen: number[] = [0];
  const targets = new Map<Inode, number[]>();
  const visitor: Visitor = {
    transient: true,
    keep: (node) => node.children === null && node.nlink > 1,
    root: (node) => {
      out.byte(0x2f);
      printFields(out, node, false, targets);
    },
    entry: (_parent, start, end, node, hardlink) => {
      const lineStart = out.len;
      const depth = dirStart.length - 1;
      out.repeat(dirStart[depth], dirLen[depth]);
      out.byte(0x2f);
      out.escaped(image, start, end, false, false);
      const pathLen = out.len - lineStart;
      printFields(out, node, hardlink, targets);
      if (hardlink) return;
      if (node.children !== null) {
        dirStart.push(lineStart);
        dirLen.push(pathLen);
      } else if (node.nlink > 1) targets.set(node, [lineStart, pathLen]);
    },
    leave: () => {
      dirStart.pop();
      dirLen.pop();
    },
  };
  try {
    walkImage(image, opts, visitor);
  } catch (err) {
    if (!(err instanceof NeedTree)) throw err;
    return writeDump(readImage(image, opts).root);
  }
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
  const out = new Sink(Math.max(1 << 16, image.length));
  const path = new Sink(4096);
  const marks: number[] = [];
  const line = (tail: () => void) => {
    out.copy(path.buf, 0, path.len);
    tail();
    out.byte(0x0a);
  };
  const visitor: Visitor = {
    transient: true,
    keep: () => false,
    root: () => {},
    entry: (_parent, start, end, node, hardlink) => {
      const mark = path.len;
      path.byte(0x2f);
      path.escapedKeepSpace(image, start, end);
      const type = node.mode & 0o170000;
      if (hardlink) line(() => {});
      else if (type === 0o040000) {
        line(() => {
          out.byte(0x2f);
          out.byte(0x09);
        });
        marks.push(mark);
        return;
      } else if (type === 0o120000) {
        line(() => {
          out.byte(0x09);
          out.byte(0x2d);
          out.byte(0x3e);
          out.byte(0x20);
          if (node.payload) out.escaped(node.payload, 0, node.payload.length, false, false);
        });
      } else if (type === 0o100000 && node.payload !== null) {
        line(() => {
          out.byte(0x09);
          out.byte(0x40);
          out.byte(0x20);
          out.escaped(node.payload!, 0, node.payload!.length, false, false);
        });
      } else line(() => {});
      path.len = mark;
    },
    leave: () => {
      path.len = marks.pop() ?? 0;
    },
  };
  walkImage(image, opts, visitor, true);
  return out.buf.subarray(0, out.len);
}
