/**
 * The composefs dump-file parser (composefs-dump(5)), with the semantics of
 * the reference's `mkcomposefs --from-file`: it accepts what the reference
 * accepts, builds the tree the reference builds, and rejects what the
 * reference rejects, either while reading the file or when writing the image
 * (a regular file too big for an image, a hard-link cycle).
 *
 * Each line holds 11 space-separated fields and then any number of xattrs:
 *
 *   PATH SIZE MODE NLINK UID GID RDEV MTIME PAYLOAD CONTENT DIGEST [KEY=VALUE]...
 *
 * Behaviour worth knowing (all of it the reference's):
 * - Numbers are read like C `strtoull` (leading blanks, `+`/`-`, wrap-around
 *   modulo 2^64, saturation on overflow), MODE in octal, the rest in decimal;
 *   mode, nlink, uid, gid and mtime nanoseconds then keep their low 32 bits.
 * - PATH, PAYLOAD, DIGEST and xattr names are C strings: an escaped `\x00`
 *   ends them. CONTENT and xattr values are binary.
 * - A line whose MODE starts with `@` is a hard link: only PATH, MODE (which
 *   must be a valid non-directory mode) and PAYLOAD (the target's path) are
 *   read; the targets are resolved once the whole file is read. The target's
 *   nlink stays what its own line says.
 * - A symlink's size is its target's length whatever SIZE says; CONTENT on a
 *   symlink is ignored. On other files non-empty CONTENT is inline data and
 *   must be as long as SIZE says (at most 5000 bytes).
 * - xattrs keep their order; setting a name twice removes the first one by
 *   moving the last xattr into its slot, then appends the new one.
 * - With `strict`, like `CFS_PARSE_STRICT=1`: the last line must end in a
 *   newline, RDEV must be 0 on anything but a device, a symlink's SIZE must
 *   equal its target's length and a symlink may not have CONTENT.
 */
import { UserError } from '../cli/errors.js';
import { type Dirent, type Inode, type Xattr, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK } from '../tree/model.js';
import { hexValue, printable, unescape, UnescapeError } from './escape.js';

export interface ParseOptions {
  /** The reference's `CFS_PARSE_STRICT` checks (see the module comment). */
  strict?: boolean;
}

/** A dump file the reference would refuse; the message is one line: `line N: FIELD: reason`. */
export class DumpParseError extends UserError {
  constructor(
    readonly line: number,
    readonly field: string,
    readonly reason: string,
  ) {
    super(`line ${line}: ${field}: ${reason}`);
    this.name = 'DumpParseError';
  }
}

/** Payloads and symlink targets must be shorter than PATH_MAX. */
const PATH_MAX = 4096;
const NAME_MAX = 255;
const XATTR_NAME_MAX = 255;
const XATTR_VALUE_MAX = 0xffff;
/** The xattr part of a line may be at most this long. */
const XATTR_TEXT_MAX = 0xffff;
/**
 * Space the xattrs of one inode may take, counted as the reference counts it
 * for dump input: 12 bytes of header once, then per xattr 7 bytes plus the
 * name and value lengths.
 */
const XATTR_SPACE_MAX = 0x7fff;
const XATTR_ENTRY_OVERHEAD = 7;
const XATTR_HEADER = 12;
const INLINE_CONTENT_MAX = 5000;
/**
 * A regular file without inline content is stored as at most 1024 chunks of
 * at most 2^43 bytes, so it can be at most 2^53 bytes long.
 */
const MAX_FILE_SIZE = 2 ** 53;
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
const TWO64 = 1n << 64n;
const U64_MAX = TWO64 - 1n;

const FIELD_NAMES = ['path', 'size', 'mode', 'nlink', 'uid', 'gid', 'rdev', 'mtime', 'payload', 'content', 'digest'];
const F_PATH = 0;
const F_SIZE = 1;
const F_MODE = 2;
const F_NLINK = 3;
const F_UID = 4;
const F_GID = 5;
const F_RDEV = 6;
const F_MTIME = 7;
const F_PAYLOAD = 8;
const F_CONTENT = 9;
const F_DIGEST = 10;
const N_FIELDS = 11;

/** A parsed number: exact `number` below 2^53, else `bigint` (both modulo 2^64); -1 when invalid. */
type U64 = number | bigint;

/**
 * `strtoull(text, &end, base)` over `d[start..end)`, accepted only when the
 * text is non-empty and fully consumed, as the reference requires.
 */
function parseU64(d: Buffer, start: number, end: number, base: number): U64 {
  if (end - start > 0 && end - start <= 15) {
    const top = 0x30 + base;
    let v = 0;
    let i = start;
    for (; i < end; i++) {
      const c = d[i];
      if (c < 0x30 || c >= top) break;
      v = v * base + (c - 0x30);
    }
    if (i === end) return v;
  }
  return parseU64Slow(d, start, end, base);
}

function parseU64Slow(d: Buffer, start: number, end: number, base: number): U64 {
  if (start >= end) return -1;
  let i = start;
  while (i < end && (d[i] === 0x20 || (d[i] >= 0x09 && d[i] <= 0x0d))) i++;
  let negative = false;
  if (i < end && (d[i] === 0x2b || d[i] === 0x2d)) {
    negative = d[i] === 0x2d;
    i++;
  }
  const digits = i;
  const b = BigInt(base);
  let v = 0n;
  let overflow = false;
  for (; i < end; i++) {
    const digit = d[i] - 0x30;
    if (digit < 0 || digit >= base) break;
    if (!overflow) {
      v = v * b + BigInt(digit);
      if (v > U64_MAX) overflow = true;
    }
  }
  if (i === digits || i !== end) return -1;
  const r = overflow ? U64_MAX : negative ? (TWO64 - v) % TWO64 : v;
  return r <= MAX_SAFE ? Number(r) : r;
}

function low32(v: U64): number {
  return typeof v === 'number' ? v >>> 0 : Number(BigInt.asUintN(32, v));
}

/** A 64-bit value as a JS number (values past 2^53 are rounded). */
function approx(v: U64): number {
  return typeof v === 'number' ? v : Number(v);
}

/**
 * rdev as a number. Past 2^53 it cannot be exact; the image keeps only the
 * low 32 bits (and whether it is zero), so keep those: low 32 bits + 2^52.
 */
function rdevNumber(v: U64): number {
  return typeof v === 'number' ? v : Number(v % 0x100000000n) + 2 ** 52;
}

/** mtime seconds (int64) as a number: rounded past 2^53, kept inside the int64 range. */
function secondsNumber(v: bigint): number {
  const n = Number(BigInt.asIntN(64, v));
  return n >= 2 ** 63 ? 2 ** 63 - 1024 : n;
}

function u64Text(v: U64): string {
  return typeof v === 'number' ? String(v) : v.toString();
}

function validType(mode: number): boolean {
  switch (mode & S_IFMT) {
    case S_IFREG:
    case S_IFDIR:
    case S_IFLNK:
    case S_IFBLK:
    case S_IFCHR:
    case S_IFSOCK:
    case S_IFIFO:
      return true;
    default:
      return false;
  }
}

/** Bookkeeping for a directory being filled. */
interface Dir {
  inode: Inode;
  /** Whether names arrived in increasing order so far (then `inode.children` is sorted). */
  sorted: boolean;
  /** Directories that got names out of order: name (latin1) -> entry. */
  index: Map<string, Dirent> | null;
}

/** A hard-link line, resolved once the whole file is read. */
interface Fixup {
  line: number;
  dirent: Dirent;
  /** The stand-in inode the entry holds until then. */
  placeholder: Inode;
  target: Buffer | null;
  /** The inode at the target path (filled in when resolving). */
  to: Inode | null;
  /** 0 = unresolved, 1 = resolving, 2 = resolved. */
  state: number;
  final: Inode | null;
}

/** Bytewise comparison of `a[as..ae)` and `b[bs..be)`: <0, 0, >0. */
function compareBytes(a: Uint8Array, as: number, ae: number, b: Uint8Array, bs: number, be: number): number {
  const n = Math.min(ae - as, be - bs);
  for (let i = 0; i < n; i++) {
    const d = a[as + i] - b[bs + i];
    if (d !== 0) return d;
  }
  return ae - as - (be - bs);
}

/** The entry named `src[s..e)` in `dir`, if any. */
function findChild(dir: Dir, src: Buffer, s: number, e: number): Dirent | undefined {
  if (dir.index !== null) return dir.index.get(src.toString('latin1', s, e));
  const kids = dir.inode.children!;
  let lo = 0;
  let hi = kids.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const name = kids[mid].name;
    const c = compareBytes(src, s, e, name, 0, name.length);
    if (c === 0) return kids[mid];
    if (c < 0) hi = mid;
    else lo = mid + 1;
  }
  return undefined;
}

function nameKey(name: Buffer): string {
  return name.toString('latin1', 0, name.length);
}

class Parser {
  readonly data: Buffer;
  readonly strict: boolean;
  readonly fs = new Int32Array(N_FIELDS);
  readonly fe = new Int32Array(N_FIELDS);
  readonly fixups: Fixup[] = [];
  /** Directory inode -> its bookkeeping. */
  readonly dirs = new Map<Inode, Dir>();
  /** Stand-in inode of a hard-link line -> the link. */
  readonly links = new Map<Inode, Fixup>();
  readonly unsorted: Dir[] = [];
  root: Dir | null = null;
  line = 0;
  /** Whether the last unescapeField() had to decode (so made a copy). */
  copied = false;
  /** Position of the next backslash / space at or after the last field looked at (data.length if none). */
  nextBackslash = -1;
  nextSpace = -1;
  /**
   * The directories from the root down to the one most recently added or
   * used as a parent, with the canonical path of the deepest in `chainPath`
   * and each one's path length in `chainLen`. Dump files list a directory's
   * entries right after it, so a line's parent is almost always here.
   */
  chain: Dir[] = [];
  chainLen: number[] = [];
  chainPath: Buffer = Buffer.allocUnsafe(4096);
  /** First regular file too big for an image (the reference refuses it when writing). */
  tooBig: { line: number; size: string } | null = null;

  constructor(data: Buffer, strict: boolean) {
    this.data = data;
    this.strict = strict;
  }

  fail(field: number | string, reason: string): never {
    throw new DumpParseError(this.line, typeof field === 'number' ? FIELD_NAMES[field] : field, reason);
  }

  text(field: number): string {
    return printable(this.data.subarray(this.fs[field], this.fe[field]));
  }

  /** Unescape `data[start..end)`; a view when there is nothing to decode. */
  unescapeField(field: number | string, start: number, end: number): Buffer {
    const d = this.data;
    let bs = this.nextBackslash;
    if (bs < start) {
      bs = d.indexOf(0x5c, start);
      this.nextBackslash = bs = bs < 0 ? d.length : bs;
    }
    if (bs >= end) {
      this.copied = false;
      return d.subarray(start, end);
    }
    this.copied = true;
    try {
      return unescape(d, start, end);
    } catch (e) {
      if (e instanceof UnescapeError) this.fail(field, e.message);
      throw e;
    }
  }

  /** Unescape a C-string field: a decoded NUL ends it. */
  cstring(field: number | string, start: number, end: number): Buffer {
    const b = this.unescapeField(field, start, end);
    if (this.copied) {
      const nul = b.indexOf(0);
      if (nul >= 0) return b.subarray(0, nul);
    }
    return b;
  }

  /** An optional field: a lone `-` means none. */
  optional(field: number, cstr: boolean): Buffer | null {
    const s = this.fs[field];
    const e = this.fe[field];
    if (e - s === 1 && this.data[s] === 0x2d) return null;
    return cstr ? this.cstring(field, s, e) : this.unescapeField(field, s, e);
  }

  number(field: number, base: number): U64 {
    return parseU64(this.data, this.fs[field], this.fe[field], base);
  }

  parseLine(start: number, end: number): void {
    const d = this.data;
    const fs = this.fs;
    const fe = this.fe;

    // Split the 11 fixed fields; missing ones are empty. (Native searches
    // keep this fast before the JIT has warmed up; the cached position of the
    // next space keeps it linear when a line has none.)
    let pos = start;
    let sp = this.nextSpace;
    for (let f = 0; f < N_FIELDS; f++) {
      fs[f] = pos;
      if (sp < pos) {
        sp = d.indexOf(0x20, pos);
        if (sp < 0) sp = d.length;
      }
      if (sp < end) {
        fe[f] = sp;
        pos = sp + 1;
      } else {
        fe[f] = end;
        pos = end;
      }
    }
    this.nextSpace = sp;
    const rest = pos;

    const path = this.cstring(F_PATH, fs[F_PATH], fe[F_PATH]);
    if (path.length === 0) this.fail(F_PATH, 'empty path');

    let hardlink = false;
    if (fe[F_MODE] > fs[F_MODE] && d[fs[F_MODE]] === 0x40) {
      hardlink = true;
      fs[F_MODE]++;
    }
    const modeValue = this.number(F_MODE, 8);
    if (modeValue === -1) this.fail(F_MODE, `invalid number '${this.text(F_MODE)}'`);
    const mode = low32(modeValue);
    if (!validType(mode)) this.fail(F_MODE, `invalid mode ${mode.toString(8)}: no valid file type`);
    const type = mode & S_IFMT;

    const inode: Inode = {
      mode,
      nlink: 1,
      uid: 0,
      gid: 0,
      rdev: 0,
      size: 0,
      mtimeSec: 0,
      mtimeNsec: 0,
      payload: null,
      content: null,
      digest: null,
      xattrs: [],
      children: type === S_IFDIR && !hardlink ? [] : null,
    };
    const dirent = this.addToTree(path, inode, hardlink);

    if (hardlink) {
      if (type === S_IFDIR) this.fail(F_MODE, 'directories cannot be hard-linked');
      const target = this.optional(F_PAYLOAD, true);
      const fixup: Fixup = { line: this.line, dirent: dirent!, placeholder: inode, target, to: null, state: 0, final: null };
      this.links.set(inode, fixup);
      this.fixups.push(fixup);
      return;
    }

    const size = this.number(F_SIZE, 10);
    if (size === -1) this.fail(F_SIZE, `invalid number '${this.text(F_SIZE)}'`);
    const nlink = this.number(F_NLINK, 10);
    if (nlink === -1) this.fail(F_NLINK, `invalid number '${this.text(F_NLINK)}'`);
    const uid = this.number(F_UID, 10);
    if (uid === -1) this.fail(F_UID, `invalid number '${this.text(F_UID)}'`);
    // The reference tests the wrong variable after reading GID and RDEV: an
    // invalid GID or RDEV is an error only when UID is 0; otherwise it reads as 0.
    let gid = this.number(F_GID, 10);
    if (gid === -1) {
      if (uid === 0) this.fail(F_GID, `invalid number '${this.text(F_GID)}'`);
      gid = 0;
    }
    let rdev = this.number(F_RDEV, 10);
    if (rdev === -1) {
      if (uid === 0) this.fail(F_RDEV, `invalid number '${this.text(F_RDEV)}'`);
      rdev = 0;
    }

    // MTIME is SEC.NSEC, split at the first dot.
    let dot = fs[F_MTIME];
    while (dot < fe[F_MTIME] && d[dot] !== 0x2e) dot++;
    const sec = parseU64(d, fs[F_MTIME], dot, 10);
    if (sec === -1) this.fail(F_MTIME, `invalid seconds in '${this.text(F_MTIME)}'`);
    const nsecStart = dot < fe[F_MTIME] ? dot + 1 : dot;
    const nsec = parseU64(d, nsecStart, fe[F_MTIME], 10);
    if (nsec === -1) this.fail(F_MTIME, `invalid nanoseconds in '${this.text(F_MTIME)}'`);

    const payload = this.optional(F_PAYLOAD, true);
    const content = this.optional(F_CONTENT, false);
    if (content !== null && content.length !== size) {
      this.fail(F_CONTENT, `content is ${content.length} bytes but size is ${u64Text(size)}`);
    }
    const digestText = this.optional(F_DIGEST, true);

    if (type !== S_IFLNK) inode.size = approx(size);
    inode.nlink = low32(nlink);
    inode.uid = low32(uid);
    inode.gid = low32(gid);
    if (type === S_IFCHR || type === S_IFBLK) {
      inode.rdev = rdevNumber(rdev);
    } else if (this.strict && rdev !== 0) {
      this.fail(F_RDEV, `device number ${u64Text(rdev)} on a file that is not a device`);
    }
    inode.mtimeSec = typeof sec === 'number' ? sec : secondsNumber(sec);
    inode.mtimeNsec = low32(nsec);

    if (type === S_IFLNK) {
      if (payload === null || payload.length === 0) this.fail(F_PAYLOAD, 'symlink without a target');
      if (payload.length >= PATH_MAX) this.fail(F_PAYLOAD, `symlink target of ${payload.length} bytes is too long (the limit is ${PATH_MAX - 1})`);
      inode.payload = payload;
      inode.size = payload.length;
      if (this.strict) {
        if (size !== payload.length) this.fail(F_SIZE, `symlink size ${u64Text(size)} differs from its target's length ${payload.length}`);
        if (content !== null && content.length > 0) this.fail(F_CONTENT, 'a symlink cannot have content');
      }
    } else {
      if (payload !== null && payload.length >= PATH_MAX) {
        this.fail(F_PAYLOAD, `payload of ${payload.length} bytes is too long (the limit is ${PATH_MAX - 1})`);
      }
      inode.payload = payload;
      if (content !== null) {
        if (content.length > INLINE_CONTENT_MAX) {
          this.fail(F_CONTENT, `inline content of ${content.length} bytes exceeds the maximum of ${INLINE_CONTENT_MAX}`);
        }
        if (content.length > 0) inode.content = content;
        inode.size = content.length;
      }
    }
    const stub = type === S_IFREG && inode.content === null && size !== 0;
    if (stub && typeof size === 'bigint' && size > BigInt(MAX_FILE_SIZE) && this.tooBig === null) {
      this.tooBig = { line: this.line, size: u64Text(size) };
    }

    if (digestText !== null) {
      const digest = decodeDigest(digestText);
      // A digest that is not 64 hex digits leaves the reference with
      // uninitialized bytes; that only matters where the image uses it.
      if (digest === null && stub) {
        this.fail(F_DIGEST, `invalid fs-verity digest '${printable(digestText)}': expected 64 hex digits`);
      }
      inode.digest = digest;
    }

    if (end - rest > XATTR_TEXT_MAX) this.fail('xattrs', `${end - rest} bytes of xattrs on one line exceed the maximum of ${XATTR_TEXT_MAX}`);
    if (rest < end) this.parseXattrs(inode, rest, end);
  }

  parseXattrs(inode: Inode, start: number, end: number): void {
    const d = this.data;
    const xattrs = inode.xattrs;
    let space = 0;
    let index: Map<string, number> | null = null;
    let pos = start;
    while (pos < end) {
      const tokenStart = pos;
      let eq = -1;
      let i = pos;
      for (; i < end; i++) {
        const c = d[i];
        if (c === 0x20) break;
        if (c === 0x3d && eq < 0) eq = i;
      }
      const tokenEnd = i;
      pos = i < end ? i + 1 : end;
      if (eq < 0) this.fail('xattr', `missing '=' in '${printable(d.subarray(tokenStart, tokenEnd))}'`);

      const key = this.cstring('xattr', tokenStart, eq);
      const value = this.unescapeField('xattr', eq + 1, tokenEnd);
      if (key.length === 0) this.fail('xattr', `empty xattr name in '${printable(d.subarray(tokenStart, tokenEnd))}'`);
      if (key.length > XATTR_NAME_MAX) this.fail('xattr', `xattr name of ${key.length} bytes exceeds the maximum of ${XATTR_NAME_MAX}`);
      if (value.length > XATTR_VALUE_MAX) this.fail('xattr', `xattr value of ${value.length} bytes exceeds the maximum of ${XATTR_VALUE_MAX}`);

      // Setting a name again drops the old value, moving the last xattr into its slot.
      if (index === null && xattrs.length >= 16) {
        index = new Map();
        for (let k = 0; k < xattrs.length; k++) index.set(nameKey(xattrs[k].key), k);
      }
      let old = -1;
      const keyText = index !== null ? nameKey(key) : '';
      if (index !== null) {
        old = index.get(keyText) ?? -1;
      } else {
        for (let k = 0; k < xattrs.length; k++) {
          const other = xattrs[k].key;
          if (compareBytes(other, 0, other.length, key, 0, key.length) === 0) {
            old = k;
            break;
          }
        }
      }
      if (old >= 0) {
        const removed = xattrs[old];
        const last = xattrs.length - 1;
        if (old !== last) {
          xattrs[old] = xattrs[last];
          if (index !== null) index.set(nameKey(xattrs[old].key), old);
        }
        xattrs.pop();
        if (index !== null) index.delete(keyText);
        space = xattrs.length > 0 ? space - (XATTR_ENTRY_OVERHEAD + removed.key.length + removed.value.length) : 0;
      }
      const need = XATTR_ENTRY_OVERHEAD + key.length + value.length + (xattrs.length === 0 ? XATTR_HEADER : 0);
      if (space + need > XATTR_SPACE_MAX) {
        this.fail('xattr', `xattrs of this file exceed ${XATTR_SPACE_MAX} bytes (at '${printable(key)}')`);
      }
      const x: Xattr = { key, value };
      if (index !== null) index.set(keyText, xattrs.length);
      xattrs.push(x);
      space += need;
    }
  }

  newDir(inode: Inode): Dir {
    const dir: Dir = { inode, sorted: true, index: null };
    this.dirs.set(inode, dir);
    return dir;
  }

  /** Put `inode` at `path` as the reference does, or fail as it would. Returns its entry (null for the root). */
  addToTree(path: Buffer, inode: Inode, hardlink: boolean): Dirent | null {
    const isDir = inode.children !== null;
    if (path.length === 1 && path[0] === 0x2f) {
      if ((inode.mode & S_IFMT) !== S_IFDIR) this.fail(F_PATH, 'the root must be a directory');
      if (this.root !== null) this.fail(F_PATH, 'a second root directory');
      if (!isDir) inode.children = [];
      const root = this.newDir(inode);
      this.root = root;
      this.chain = [root];
      this.chainLen = [0];
      return null;
    }
    const root = this.root;
    if (root === null) this.fail(F_PATH, `'${printable(path)}' comes before the root directory '/'`);

    // Fast path: the parent is on the chain (which holds canonical paths only).
    const slash = path.lastIndexOf(0x2f);
    let parent: Dir | undefined;
    let depth = -1;
    if (slash >= 0 && slash < path.length - 1 && path[0] === 0x2f) {
      const chainLen = this.chainLen;
      for (let k = chainLen.length - 1; k >= 0; k--) {
        const len = chainLen[k];
        if (len < slash) break;
        if (len === slash && this.chainPath.compare(path, 0, slash, 0, slash) === 0) {
          parent = this.chain[k];
          depth = k;
          break;
        }
      }
    }
    let nameStart = slash + 1;
    if (parent === undefined) {
      // The reference skips runs of '/' and takes what follows the last one
      // as the name (empty after a trailing '/'); each directory on the way
      // must exist.
      const walked: Dir[] = [root];
      const ends: number[] = [0];
      const parts: number[] = [];
      let node: Dir = root;
      let nonDir = false;
      let s = 0;
      while (s < path.length && path[s] === 0x2f) s++;
      let partStart = s;
      for (let i = s; i < path.length; i++) {
        if (path[i] !== 0x2f) continue;
        if (i > partStart) {
          const found = nonDir ? undefined : findChild(node, path, partStart, i);
          if (found === undefined) this.fail(F_PATH, `parent directory missing for '${printable(path)}'`);
          const dir = this.dirs.get(found.inode);
          if (dir === undefined) {
            nonDir = true;
          } else {
            node = dir;
            walked.push(dir);
            parts.push(partStart, i);
          }
        }
        partStart = i + 1;
      }
      if (nonDir) this.fail(F_PATH, `parent of '${printable(path)}' is not a directory`);
      nameStart = partStart;
      parent = node;
      // The walked directories become the chain.
      let len = 0;
      for (let k = 0; k < parts.length; k += 2) len += 1 + parts[k + 1] - parts[k];
      this.ensureChainPath(len);
      let o = 0;
      for (let k = 0; k < parts.length; k += 2) {
        this.chainPath[o++] = 0x2f;
        o += path.copy(this.chainPath, o, parts[k], parts[k + 1]);
        ends.push(o);
      }
      this.chain = walked;
      this.chainLen = ends;
      depth = walked.length - 1;
    }

    const nameLen = path.length - nameStart;
    if (nameLen === 1 && path[nameStart] === 0x2e) this.fail(F_PATH, `invalid name '.' in '${printable(path)}'`);
    if (nameLen === 2 && path[nameStart] === 0x2e && path[nameStart + 1] === 0x2e) this.fail(F_PATH, `invalid name '..' in '${printable(path)}'`);
    if (nameLen === 0) this.fail(F_PATH, `empty file name in '${printable(path)}'`);
    if (nameLen > NAME_MAX) this.fail(F_PATH, `file name of ${nameLen} bytes exceeds the maximum of ${NAME_MAX}`);

    const children = parent.inode.children!;
    if (children.length > 0) {
      if (parent.sorted) {
        const lastName = children[children.length - 1].name;
        const c = compareBytes(path, nameStart, path.length, lastName, 0, lastName.length);
        if (c <= 0) {
          if (c === 0 || findChild(parent, path, nameStart, path.length) !== undefined) this.fail(F_PATH, `'${printable(path)}' already exists`);
          parent.sorted = false;
          const index = new Map<string, Dirent>();
          for (const k of children) index.set(nameKey(k.name), k);
          parent.index = index;
          this.unsorted.push(parent);
        }
      } else if (parent.index!.has(path.toString('latin1', nameStart, path.length))) {
        this.fail(F_PATH, `'${printable(path)}' already exists`);
      }
    }

    const name = path.subarray(nameStart);
    const dirent: Dirent = { name, inode, hardlink };
    children.push(dirent);
    if (parent.index !== null) parent.index.set(nameKey(name), dirent);

    if (isDir) {
      // The next lines are most likely this directory's entries.
      const dir = this.newDir(inode);
      const base = this.chainLen[depth];
      this.chain.length = depth + 1;
      this.chainLen.length = depth + 1;
      this.ensureChainPath(base + 1 + nameLen);
      this.chainPath[base] = 0x2f;
      name.copy(this.chainPath, base + 1);
      this.chain.push(dir);
      this.chainLen.push(base + 1 + nameLen);
    }
    return dirent;
  }

  ensureChainPath(len: number): void {
    if (len <= this.chainPath.length) return;
    const next = Buffer.allocUnsafe(Math.max(len, this.chainPath.length * 2));
    this.chainPath.copy(next);
    this.chainPath = next;
  }

  /** The inode at a hard link's target path: runs of '/' skipped, empty parts ignored. */
  lookup(target: Buffer): Inode | undefined {
    let node: Dir | undefined = this.root!;
    let found: Inode = node.inode;
    let start = 0;
    for (let i = 0; i <= target.length; i++) {
      if (i === target.length || target[i] === 0x2f) {
        if (i > start) {
          if (node === undefined) return undefined;
          const d = findChild(node, target, start, i);
          if (d === undefined) return undefined;
          found = d.inode;
          node = this.dirs.get(found);
        }
        start = i + 1;
      }
    }
    return found;
  }

  finish(): Inode {
    if (this.root === null) {
      throw new DumpParseError(Math.max(this.line, 1), 'path', "no entries: a dump file needs at least the root directory '/'");
    }

    // Hard links, last line first as the reference resolves them.
    for (let k = this.fixups.length - 1; k >= 0; k--) {
      const f = this.fixups[k];
      this.line = f.line;
      if (f.target === null) this.fail(F_PAYLOAD, 'hard link without a target path');
      const to = this.lookup(f.target);
      if (to === undefined) this.fail(F_PAYLOAD, `no target at '${printable(f.target)}' for the hard link`);
      if (to === f.placeholder) this.fail(F_PAYLOAD, `hard link to itself ('${printable(f.target)}')`);
      f.to = to;
    }

    // What the reference refuses only when writing the image.
    if (this.tooBig !== null) {
      this.line = this.tooBig.line;
      this.fail(F_SIZE, `file of ${this.tooBig.size} bytes is too big for an image (the limit is ${MAX_FILE_SIZE})`);
    }
    for (const f of this.fixups) f.dirent.inode = this.resolve(f);

    for (const dir of this.unsorted) dir.inode.children!.sort((a, b) => compareBytes(a.name, 0, a.name.length, b.name, 0, b.name.length));
    return this.root.inode;
  }

  /** The inode a hard link ends at, following links to links. */
  resolve(start: Fixup): Inode {
    // Follow the chain of links (iteratively: chains can be long).
    const path: Fixup[] = [];
    let f: Fixup = start;
    let final: Inode;
    for (;;) {
      if (f.state === 2) {
        final = f.final!;
        break;
      }
      if (f.state === 1) {
        this.line = f.line;
        this.fail(F_PAYLOAD, `hard link cycle through '${printable(f.target!)}'`);
      }
      f.state = 1;
      path.push(f);
      const next = this.links.get(f.to!);
      if (next === undefined) {
        final = f.to!;
        break;
      }
      f = next;
    }
    for (const p of path) {
      p.state = 2;
      p.final = final;
    }
    return final;
  }
}

/** The first 64 characters as hex, as the reference reads a digest; null if they are not. */
function decodeDigest(text: Buffer): Buffer | null {
  if (text.length < 64) return null;
  const out = Buffer.allocUnsafe(32);
  for (let i = 0; i < 32; i++) {
    const hi = hexValue(text[2 * i]);
    const lo = hexValue(text[2 * i + 1]);
    if (hi < 0 || lo < 0) return null;
    out[i] = (hi << 4) | lo;
  }
  return out;
}

/**
 * Parse a dump file into a tree and return its root directory. Throws
 * {@link DumpParseError} for anything the reference would refuse.
 *
 * Names, payloads, content and xattrs without escapes are views into
 * `input`, so `input` must not be changed while the tree is in use.
 */
export function parseDump(input: Uint8Array, opts: ParseOptions = {}): Inode {
  const data = Buffer.isBuffer(input) ? input : Buffer.from(input.buffer, input.byteOffset, input.length);
  const parser = new Parser(data, opts.strict === true);
  const firstNul = data.indexOf(0);
  const n = data.length;
  let pos = 0;
  while (pos < n) {
    parser.line++;
    let end = data.indexOf(0x0a, pos);
    if (end < 0) {
      if (parser.strict) parser.fail('line', 'missing newline at the end of the file');
      end = n;
    }
    if (firstNul >= pos && firstNul < end) parser.fail('line', `NUL byte at column ${firstNul - pos + 1}`);
    parser.parseLine(pos, end);
    pos = end + 1;
  }
  return parser.finish();
}
