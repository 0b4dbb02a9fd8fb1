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
import type { Inode } from '../tree/model.js';
import { ByteSink, ESCAPE_EQUAL, ESCAPE_LONE_DASH } from './escape.js';

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
  const walk = (dir: Inode): void => {
    const children = dir.children!;
    for (let i = 0; i < children.length; i++) {
      const d = children[i];
      const mark = path.len;
      path.byte(0x2f);
      path.escaped(d.name, 0);
      printEntry(out, path, d.inode, d.hardlink, targets);
      if (out.len >= FLUSH_AT) emit(out.take());
      if (!d.hardlink && d.inode.children) walk(d.inode);
      path.len = mark;
    }
  };
  if (root.children) walk(root);
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
  const findLinks = (dir: Inode): void => {
    for (const d of dir.children ?? []) {
      if (d.hardlink) wanted.add(d.inode);
      else if (d.inode.children) findLinks(d.inode);
    }
  };
  findLinks(root);
  const found = new Map<Inode, Buffer>();
  if (wanted.size === 0) return found;

  const fallback = new Map<Inode, Buffer>();
  if (wanted.has(root)) found.set(root, Buffer.alloc(0));
  const path = new ByteSink(4096);
  const walk = (dir: Inode): void => {
    for (const d of dir.children ?? []) {
      const mark = path.len;
      path.byte(0x2f);
      path.escaped(d.name, 0);
      if (wanted.has(d.inode)) {
        const here = Buffer.from(path.buf.subarray(0, path.len));
        if (!d.hardlink) {
          if (!found.has(d.inode)) found.set(d.inode, here);
        } else if (!fallback.has(d.inode)) {
          fallback.set(d.inode, here);
        }
      }
      if (!d.hardlink && d.inode.children) walk(d.inode);
      path.len = mark;
    }
  };
  walk(root);
  for (const [inode, p] of fallback) if (!found.has(inode)) found.set(inode, p);
  return found;
}

function printEntry(out: ByteSink, path: ByteSink, inode: Inode, hardlink: boolean, targets: Map<Inode, Buffer>): void {
  if (path.len === 0) out.byte(0x2f);
  else out.bytes(path.buf, 0, path.len);
  out.byte(0x20);
  out.int(inode.size);
  out.byte(0x20);
  if (hardlink) out.byte(0x40);
  out.int(inode.mode, 8);
  out.byte(0x20);
  out.int(inode.nlink);
  out.byte(0x20);
  out.int(inode.uid);
  out.byte(0x20);
  out.int(inode.gid);
  out.byte(0x20);
  out.int(inode.rdev);
  out.byte(0x20);
  out.int(inode.mtimeSec);
  out.byte(0x2e);
  out.int(inode.mtimeNsec);
  out.byte(0x20);

  if (hardlink) {
    // The target's path, already escaped (a path is never a lone '-'); the
    // root's path is empty here, as in the reference.
    const target = targets.get(inode);
    if (target !== undefined) out.bytes(target);
  } else if (inode.payload === null) {
    out.byte(0x2d);
  } else {
    out.escaped(inode.payload, ESCAPE_LONE_DASH);
  }
  out.byte(0x20);

  if (inode.content === null) out.byte(0x2d);
  else out.escaped(inode.content, ESCAPE_LONE_DASH);
  out.byte(0x20);

  if (inode.digest === null) out.byte(0x2d);
  else out.hex(inode.digest);

  const xattrs = inode.xattrs;
  for (let i = 0; i < xattrs.length; i++) {
    out.byte(0x20);
    out.escaped(xattrs[i].key, ESCAPE_EQUAL);
    out.byte(0x3d);
    out.escaped(xattrs[i].value, ESCAPE_EQUAL);
  }
  out.byte(0x0a);
}
