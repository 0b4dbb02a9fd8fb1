/**
 * A userspace reader of composefs EROFS images, independent of the writer.
 *
 * `readImage` parses an image into the project's tree model the way the
 * reference's `lcfs_load_node_from_image` does, so that the tree prints as the
 * reference's `composefs-info dump` and writes back into the identical image:
 *
 *  - this file walks the tree; src/erofs/decoder.ts decodes the structure
 *    (inodes, data, directory entries, xattr entries) with the checks the
 *    FUSE server's view shares; what the overlayfs xattrs composefs adds mean
 *    (payload, digest, escaped names, whiteouts) is src/erofs/overlay.ts,
 *    the header check is src/erofs/header.ts, and fsck's checks are a pass
 *    over the layout facts a checking walk hands over (src/erofs/decoded.ts,
 *    src/erofs/image-checks.ts);
 *  - a real 0:0 character device (the `00`..`ff` whiteouts in the root) is
 *    left out;
 *  - entries are visited depth first in name order; the first name that
 *    reaches an inode is its primary one, later names are hard links to the
 *    same `Inode` object;
 *  - compact inodes take the superblock's build time as their mtime.
 *
 * The image is hostile input. Every offset, length, count and name is checked
 * against the image's bounds before it is used; nothing recurses (a deep tree
 * cannot overflow the stack); a directory reached twice (a loop, or a hard
 * link to a directory) is an error; and the bytes the walk may look at are
 * budgeted, so overlapping structures cannot make the work or the memory grow
 * faster than the image. Every failure is an `ImageFormatError` with a
 * one-line message (and the path in the image where there is one).
 *
 * The returned tree shares memory with the image buffer (names, xattr values
 * and file contents are views into it): do not modify the buffer while the
 * tree is in use.
 */
import { BLOCK_SIZE, DIRENT_SIZE, FEATURE_COMPAT_XATTR_FILTER, LAYOUT_CHUNK_BASED, SLOT_SIZE, XATTR_ENTRY_SIZE } from './format.js';
import { ImageChecker, type ImageProblem } from './image-checks.js';
import { placePath, type DecodeListener, type DirectoryPlace, type EntryPlace } from './decoded.js';
import {
  ENTRY_DOT,
  ENTRY_DOTDOT,
  ImageDecoder,
  ImageEntryError,
  newDirentRecord,
  newInodeRecord,
  type DirentRecord,
  type InodeRecord,
} from './decoder.js';
import { DirentStack, NidTable, SEEN_DIR, SEEN_FILE, WHITEOUT } from './walk-tables.js';

export type { ImageProblem } from './image-checks.js';
import { XattrMeaning, applyXattr, treeXattrName, xattrMeaning } from './overlay.js';
import { ImageFormatError, type ImageHeader } from './header.js';

export { ImageFormatError, printablePath, readImageHeader, imageVersion, checkImageHeader, type ImageHeader } from './header.js';
import { S_IFBLK, S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, type Inode } from '../tree/model.js';

export interface ReadImageOptions {
  /**
   * Check mode (what fsck uses). Every problem is reported here instead of
   * ending the read where the damage can be contained: a broken entry is
   * reported and left out, and the walk goes on. The walk hands the layout
   * it decoded to the checks that do not stop the reference from reading an
   * image (sort order, link counts, `.`/`..`, dirent types, xattr filters,
   * tails crossing blocks, counts in the superblock...: a pass of their own,
   * src/erofs/image-checks.ts), in the order it met what they look at.
   * Image-wide damage (header, superblock, root) still throws, after the
   * problems found before it are reported.
   */
  onProblem?: (problem: ImageProblem) => void;
  /** Called for each inode parsed and each directory entry read (for tests and tools that need the layout). */
  trace?: ReadTrace;
  /**
   * Read only these entries of the root directory, and everything below
   * them (the reference's `toplevel_entries`, composefs-info --filter). The
   * others are skipped unread.
   */
  topLevel?: readonly Buffer[];
}

export interface ReadTrace {
  inode?(nid: number, offset: number, info: { compact: boolean; mode: number; size: number; xattrSize: number; dataOffset: number }): void;
  /** `offset` is where the 12-byte dirent is; `nameOffset` where its name starts. */
  dirent?(dirNid: number, offset: number, nameOffset: number, nid: number, name: Buffer): void;
}

export interface ReadImageResult {
  root: Inode;
  header: ImageHeader;
  /** The composefs format version (same as header.version). */
  version: number;
  /** Distinct inodes met, including the whiteouts left out of the tree. */
  inodeCount: number;
}

/** A shared xattr, parsed once however many inodes refer to it. */
interface SharedXattr {
  index: number;
  nameStart: number;
  nameLen: number;
  meaning: XattrMeaning;
  key: Buffer | null;
  /** The value is image[valueStart..valueEnd). */
  valueStart: number;
  valueEnd: number;
}

/** A directory being walked: its entries are `entries[base, end)`; paths are built only for messages. */
interface Frame extends DirectoryPlace {
  readonly inode: Inode;
  nid: number;
  readonly parent: Frame | null;
  readonly name: Buffer | null;
  base: number;
  end: number;
  /** Visiting order (absolute indices) when the stored entries were not sorted (else null: stored order). */
  order: number[] | null;
  next: number;
  subdirs: number;
}

/** @internal What the walk does with each entry: build a tree, or print a dump. */
export interface Visitor {
  /**
   * Whether entry() is done with a non-directory's node when it returns, so
   * the walk may refill one node for all of them (a printer). A transient
   * visitor gets a hard link's node decoded again from its nid; otherwise
   * every node is kept and a hard link gets the very node of its first name.
   */
  transient?: boolean;
  root(node: Inode): void;
  /**
   * An entry of `parent` (its name at image[nameStart..nameEnd), its inode
   * `nid`), depth first in name order; a directory's entries follow until leave().
   */
  entry(parent: Inode, nameStart: number, nameEnd: number, node: Inode, hardlink: boolean, nid: number): void;
  leave(dir: Inode): void;
}

class Reader {
  readonly d: ImageDecoder;
  readonly b: Buffer;
  private readonly shared = new Map<number, SharedXattr>();
  private readonly filterOn: boolean;
  /** One record, refilled for every inode: its users are done with it before the next. */
  readonly raw: InodeRecord = newInodeRecord();
  private readonly dirent: DirentRecord = newDirentRecord();

  constructor(
    decoder: ImageDecoder,
    /** Who hears the layout a checking walk decoded (null: a plain read). */
    readonly listener: DecodeListener | null,
    readonly trace: ReadTrace | undefined,
  ) {
    this.d = decoder;
    this.b = decoder.buf;
    // A well-formed image stores every directory, xattr area and content once,
    // so their sizes add up to less than the image. Allow generous slack.
    decoder.budget = 4 * this.b.length + (1 << 20);
    this.filterOn = (decoder.header.featureCompat & FEATURE_COMPAT_XATTR_FILTER) !== 0;
    const traceInode = trace?.inode;
    if (traceInode) {
      decoder.onInode = (raw) =>
        traceInode(raw.nid, raw.off, { compact: raw.compact, mode: raw.mode, size: raw.size, xattrSize: raw.xattrSize, dataOffset: raw.u * BLOCK_SIZE });
    }
    if (listener !== null) decoder.onInlineTail = (nid, offset, length) => listener.fact({ kind: 'inline-tail', nid, offset, length });
  }

  inode(nid: number): InodeRecord {
    return this.d.inode(nid, this.raw);
  }

  /** Directory entries (without `.` and `..`) into `sink`, in stored order. */
  dirents(raw: InodeRecord, sink: DirentStack): void {
    sink.dot = -1;
    sink.dotdot = -1;
    const d = this.d;
    const e = this.dirent;
    const nid = raw.nid;
    const blocks = d.dirBlocks(raw);
    for (let k = 0; k < blocks; k++) {
      const start = d.dirBlockStart(k);
      const len = d.dirBlockLength(k);
      const n = d.direntCount(nid, start, len);
      for (let i = 0; i < n; i++) {
        const kind = d.dirent(nid, start, len, n, i, e);
        if (this.trace?.dirent) this.trace.dirent(nid, start + i * DIRENT_SIZE, e.nameStart, e.nid, this.b.subarray(e.nameStart, e.nameEnd));
        if (kind === ENTRY_DOT) sink.dot = e.nid;
        else if (kind === ENTRY_DOTDOT) sink.dotdot = e.nid;
        else sink.push(e.nameStart, e.nameEnd, e.nid, e.ftype);
      }
    }
  }

  private sharedXattr(id: number, nid: number): SharedXattr {
    let x = this.shared.get(id);
    if (x) return x;
    const pos = this.d.sharedXattr(id, nid);
    const b = this.b;
    const total = this.d.xattrEntry(pos, b.length, nid);
    const index = b[pos + 1];
    const nameStart = pos + XATTR_ENTRY_SIZE;
    const nameLen = b[pos];
    const meaning = xattrMeaning(b, index, nameStart, nameLen);
    const key = treeXattrName(b, meaning, index, nameStart, nameLen);
    x = { index, nameStart, nameLen, meaning, key, valueStart: nameStart + nameLen, valueEnd: pos + total };
    this.shared.set(id, x);
    return x;
  }

  /**
   * Inline xattrs first, then shared ones, applied in the reference's order.
   * Returns the overlay flags (HAS_REDIRECT, HAS_METACOPY); with `at`, each
   * xattr is passed to the listener where it lies.
   */
  private xattrs(raw: InodeRecord, node: Inode, at: EntryPlace | null): number {
    const b = this.b;
    const d = this.d;
    const nid = raw.nid;
    const end = d.tailOffset(raw);
    let pos = d.xattrArea(raw);
    const listener = at === null ? null : this.listener;
    const filter = listener !== null && this.filterOn ? d.xattrFilter(raw) : 0;
    let flags = 0;
    while (pos < end) {
      const total = d.xattrEntry(pos, end, nid);
      const nameLen = b[pos];
      const index = b[pos + 1];
      const s = pos + XATTR_ENTRY_SIZE;
      const meaning = xattrMeaning(b, index, s, nameLen);
      const overlayFlags = applyXattr(node, meaning, treeXattrName(b, meaning, index, s, nameLen), b, s + nameLen, pos + total);
      if (listener !== null) {
        listener.fact({ kind: 'xattr', at: at!, nid, filter, nameIndex: index, nameStart: s, nameLength: nameLen, valueStart: s + nameLen, valueEnd: pos + total, overlayFlags });
      }
      flags |= overlayFlags;
      pos += (total + 3) & ~3;
    }
    const sharedCount = d.sharedXattrCount(raw);
    for (let i = 0; i < sharedCount; i++) {
      const x = this.sharedXattr(d.sharedXattrId(raw, i), nid);
      const overlayFlags = applyXattr(node, x.meaning, x.key, b, x.valueStart, x.valueEnd);
      if (listener !== null) {
        listener.fact({ kind: 'xattr', at: at!, nid, filter, nameIndex: x.index, nameStart: x.nameStart, nameLength: x.nameLen, valueStart: x.valueStart, valueEnd: x.valueEnd, overlayFlags });
      }
      flags |= overlayFlags;
    }
    return flags;
  }

  /**
   * Build the tree node of an inode (its xattrs taken apart as the reference
   * does), into `into` when given (a node of a non-directory to refill). With
   * `at` (where the entry is) a checking walk passes the inode's layout on.
   */
  build(raw: InodeRecord, into: Inode | null, at: EntryPlace | null): Inode {
    const type = raw.mode & S_IFMT;
    let node: Inode;
    if (into !== null && type !== S_IFDIR) {
      node = into;
      node.mode = raw.mode;
      node.nlink = raw.nlink;
      node.uid = raw.uid;
      node.gid = raw.gid;
      node.rdev = type === S_IFCHR || type === S_IFBLK ? raw.u : 0;
      node.size = raw.size;
      node.mtimeSec = raw.mtimeSec;
      node.mtimeNsec = raw.mtimeNsec;
      node.payload = null;
      node.content = null;
      node.digest = null;
      node.xattrs.length = 0;
      node.children = null;
    } else {
      node = {
        mode: raw.mode,
        nlink: raw.nlink,
        uid: raw.uid,
        gid: raw.gid,
        rdev: type === S_IFCHR || type === S_IFBLK ? raw.u : 0,
        size: raw.size,
        mtimeSec: raw.mtimeSec,
        mtimeNsec: raw.mtimeNsec,
        payload: null,
        content: null,
        digest: null,
        xattrs: [],
        children: type === S_IFDIR ? [] : null,
      };
    }
    const nid = raw.nid;
    let symlinkLength = -1;
    if (type === S_IFLNK) {
      const target = this.d.symlinkTarget(raw);
      node.payload = target;
      symlinkLength = target.length;
    } else if (type === S_IFREG && raw.size > 0 && raw.layout !== LAYOUT_CHUNK_BASED) {
      node.content = this.d.data(raw);
    }
    const listener = at === null ? null : this.listener;
    if (listener !== null) {
      listener.fact({
        kind: 'inode', at: at!, nid, compact: raw.compact, format: raw.format, layout: raw.layout, mode: raw.mode,
        size: raw.size, union: raw.u, mtimeNsec: raw.mtimeNsec, tailOffset: this.d.tailOffset(raw), symlinkLength,
      });
    }
    const flags = raw.xattrIcount === 0 ? 0 : this.xattrs(raw, node, at);
    if ((node.mode & S_IFMT) === S_IFCHR && type === S_IFREG) {
      // An escaped whiteout: a device node has no data of its own.
      node.payload = null;
      node.content = null;
      node.digest = null;
    }
    if (listener !== null) listener.fact({ kind: 'overlay', at: at!, mode: node.mode, layout: raw.layout, size: raw.size, flags });
    return node;
  }
}

/**
 * Read a composefs image into a tree. Throws `ImageFormatError` on any
 * damage (or, with `onProblem`, reports what it can and leaves damaged entries out).
 */
export function readImage(buf: Buffer, opts: ReadImageOptions = {}): ReadImageResult {
  const visitor: Visitor = {
    root: () => {},
    entry: (parent, start, end, node, hardlink) => {
      parent.children!.push({ name: buf.subarray(start, end), inode: node, hardlink });
    },
    leave: () => {},
  };
  return walkImage(buf, opts, visitor, opts.onProblem === undefined ? null : new ImageChecker(buf, opts.onProblem));
}

/**
 * @internal The walk behind readImage and the printers of
 * src/dumpfile/from-image.ts. With a `listener`, damage confined to one entry
 * is passed on and the entry left out instead of ending the walk, and the
 * listener hears the layout decoded, in decoding order.
 */
export function walkImage(buf: Buffer, opts: Pick<ReadImageOptions, 'trace' | 'topLevel'>, visitor: Visitor, listener: DecodeListener | null = null): ReadImageResult {
  const decoder = new ImageDecoder(buf);
  const header = decoder.header;
  if (listener !== null) listener.header(header);
  const r = new Reader(decoder, listener, opts.trace);
  const damage = (path: Buffer, code: string, message: string) => listener!.fact({ kind: 'damage', path, code, message });

  const table = new NidTable(Math.floor((buf.length - decoder.metaStart) / SLOT_SIZE));
  const stack: Frame[] = [];
  const entries = new DirentStack();
  const cmpAt = (i: number, j: number): number => {
    const si = entries.starts[i];
    const sj = entries.starts[j];
    const li = entries.ends[i] - si;
    const lj = entries.ends[j] - sj;
    const n = li < lj ? li : lj;
    for (let q = 0; q < n; q++) {
      const d = buf[si + q] - buf[sj + q];
      if (d !== 0) return d;
    }
    return li - lj;
  };

  /** Push a directory whose entries were just read into entries[base, top): check `.`/`..` and their order. */
  const enter = (inode: Inode, nid: number, parent: Frame | null, name: Buffer | null, base: number, parentNid: number) => {
    const end = entries.top;
    const frame: Frame = { inode, nid, parent, name, base, end, order: null, next: base, subdirs: 0 };
    // Name order is what the tree model (and the writer) need; the checks hear when the image differs.
    for (let i = base + 1; i < end; i++) {
      if (cmpAt(i - 1, i) >= 0) {
        const order: number[] = [];
        for (let k = base; k < end; k++) order.push(k);
        frame.order = order.sort((a, b) => cmpAt(a, b) || a - b);
        break;
      }
    }
    if (listener !== null) listener.fact({ kind: 'directory', at: frame, nid, parentNid, dot: entries.dot, dotdot: entries.dotdot, sorted: frame.order === null });
    stack.push(frame);
  };

  const scratch: Inode | null = visitor.transient
    ? { mode: 0, nlink: 0, uid: 0, gid: 0, rdev: 0, size: 0, mtimeSec: 0, mtimeNsec: 0, payload: null, content: null, digest: null, xattrs: [], children: null }
    : null;
  let rootNode: Inode | null = null;
  try {
    const rootRaw = decoder.root(r.raw);
    const root = r.build(rootRaw, null, listener !== null ? { directory: null, nameStart: -1, nameEnd: -1 } : null);
    r.dirents(rootRaw, entries);
    table.add(header.rootNid, root, false);
    rootNode = root;
    visitor.root(root);
    enter(root, header.rootNid, null, null, 0, header.rootNid);
  } catch (e) {
    throw decoder.atRoot(e);
  }
  const root = rootNode!;
  const topLevel = opts.topLevel ? new Set(opts.topLevel.map((name) => name.toString('latin1'))) : null;

  while (stack.length > 0) {
    const frame = stack[stack.length - 1];
    if (frame.next >= frame.end) {
      stack.pop();
      entries.top = frame.base;
      if (frame.parent !== null) visitor.leave(frame.inode);
      if (listener !== null) listener.fact({ kind: 'directory-done', at: frame, subdirectories: frame.subdirs });
      continue;
    }
    const pos = frame.next++;
    const k = frame.order === null ? pos : frame.order[pos - frame.base];
    const start = entries.starts[k];
    const end = entries.ends[k];
    const nid = entries.nids[k];
    if (topLevel !== null && frame.parent === null && !topLevel.has(buf.toString('latin1', start, end))) continue;
    if (frame.order !== null && pos > frame.base && cmpAt(frame.order[pos - frame.base - 1], k) === 0) {
      const msg = 'duplicate directory entry';
      if (listener !== null) {
        damage(placePath(frame, buf.subarray(start, end)), 'duplicate', msg);
        continue;
      }
      throw new ImageFormatError(msg, placePath(frame, buf.subarray(start, end)), 'duplicate');
    }
    try {
      const seen = table.get(nid);
      if (seen === SEEN_DIR || (seen > 0 && table.node(seen).children !== null)) {
        throw new ImageEntryError('loop', `entry refers to directory inode ${nid}, which is already in the tree (a directory loop or a hard-linked directory)`);
      }
      if (seen === SEEN_FILE) {
        // A hard link for a transient visitor: its node was not kept, decode it again.
        visitor.entry(frame.inode, start, end, r.build(r.inode(nid), scratch, null), true, nid);
        continue;
      }
      if (seen > 0) {
        const node = table.node(seen);
        if (listener !== null) {
          const at = { directory: frame, nameStart: start, nameEnd: end };
          listener.fact({ kind: 'entry-type', at, direntType: entries.ftypes[k], mode: node.mode, rdev: node.rdev, linked: true });
        }
        visitor.entry(frame.inode, start, end, node, true, nid);
        continue;
      }
      if (seen === WHITEOUT) continue;
      const raw = r.inode(nid);
      if (decoder.isWhiteout(raw)) {
        // An overlayfs whiteout the writer added (the 00..ff in the root): not part of the tree.
        table.whiteout(nid);
        continue;
      }
      const type = raw.mode & S_IFMT;
      let at: EntryPlace | null = null;
      if (listener !== null) {
        at = { directory: frame, nameStart: start, nameEnd: end };
        listener.fact({ kind: 'entry-type', at, direntType: entries.ftypes[k], mode: raw.mode, rdev: raw.u, linked: false });
      }
      const node = r.build(raw, scratch, at);
      if (type === S_IFDIR) {
        const base = entries.top;
        r.dirents(raw, entries);
        table.add(nid, node, false);
        visitor.entry(frame.inode, start, end, node, false, nid);
        frame.subdirs++;
        enter(node, nid, frame, buf.subarray(start, end), base, frame.nid);
      } else {
        table.add(nid, node, scratch === null);
        visitor.entry(frame.inode, start, end, node, false, nid);
      }
    } catch (e) {
      if (!(e instanceof ImageEntryError)) throw e;
      // Entries of a directory that failed half-way through being read.
      entries.top = frame.end;
      const path = placePath(frame, buf.subarray(start, end));
      if (listener !== null) damage(path, e.code, e.message);
      else throw new ImageFormatError(e.message, path, e.code);
    }
  }

  const inodeCount = table.count + table.whiteouts;
  if (listener !== null) listener.completed(inodeCount);
  return { root, header, version: header.version, inodeCount };
}
