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
 *
 * The parser builds a {@link FlatTree} (src/tree/flat.ts) whose pool is the
 * input buffer itself: escaped fields are decoded in place (decoding only
 * shrinks) and a digest's 64 hex digits become its 32 bytes where they stood,
 * so no byte is copied. {@link parseDumpFlat} therefore takes the input over;
 * {@link parseDump} copies it first and returns the `Inode` tree.
 *
 * Why it is written the way it is: a build from a dump runs mostly before V8
 * has optimised anything (on cs9, 22,010 lines, optimised code for the line
 * parser arrives only after several thousand lines), so the parser allocates
 * no object per line, leaves the scanning for spaces, newlines, slashes and
 * backslashes to the engine's native string search over one latin1 copy of
 * the input, and reads numbers while splitting the line. The common line is
 * taken by fastLine(), which is kept lean and never meets, once optimised, an
 * operation it has not seen before (that would throw the optimised code
 * away). Anything else (escapes, hard links, out-of-order names, odd numbers,
 * inline content, every error) goes to the general parseLine(), which
 * follows the reference step by step; xattrs go to parseXattrs() after either.
 */
import { ComposefsError } from '../errors.js';
import { S_IFBLK, S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, type Inode } from '../tree/model.js';
import { inflate, type FlatTree } from '../tree/flat.js';
import { HEX_DIGIT, printable, unescapeInPlace, UnescapeError } from './escape.js';

export interface ParseOptions {
  /** The reference's `CFS_PARSE_STRICT` checks (see the module comment). */
  strict?: boolean;
}

/** A dump file the reference would refuse; the message is one line: `line N: FIELD: reason`. */
export class DumpParseError extends ComposefsError {
  constructor(
    readonly line: number,
    readonly field: string,
    readonly reason: string,
  ) {
    super(`line ${line}: ${field}: ${reason}`, 'dump-format');
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
/** In `fieldNumber`: the number was not read while splitting; parse the field with parseU64. */
const LATER = -2;

/** The file types an image can hold, as a bit set over `(mode & S_IFMT) >> 12`. */
const VALID_TYPES = (1 << 1) | (1 << 2) | (1 << 4) | (1 << 6) | (1 << 8) | (1 << 10) | (1 << 12);

/**
 * The same numbers for fastLine(), where tsc writes them in as literals
 * (V8 checks a module constant on every use until the code is optimised).
 */
const enum K {
  S_IFMT = 0o170000,
  S_IFDIR = 0o040000,
  S_IFLNK = 0o120000,
  S_IFCHR = 0o020000,
  S_IFBLK = 0o060000,
  VALID_TYPES = (1 << 1) | (1 << 2) | (1 << 4) | (1 << 6) | (1 << 8) | (1 << 10) | (1 << 12),
  NAME_MAX = 255,
  PATH_MAX = 4096,
  XATTR_TEXT_MAX = 0xffff,
}


/**
 * The input is searched as a latin1 string, at most this many bytes of it
 * at a time (V8 strings are limited to about 2^29 characters).
 */
const TEXT_WINDOW = 1 << 28;

/** A parsed number: exact `number` below 2^53, else `bigint` (both modulo 2^64); -1 when invalid. */
type U64 = number | bigint;

/**
 * `strtoull(text, &end, base)` over `d[start..end)`, accepted only when the
 * text is non-empty and fully consumed, as the reference requires.
 */
function parseU64(d: Uint8Array, start: number, end: number, base: number): U64 {
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

function parseU64Slow(d: Uint8Array, start: number, end: number, base: number): U64 {
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

/** Bytewise comparison of `a[as..ae)` and `b[bs..be)`: <0, 0, >0. */
function compareBytes(a: Uint8Array, as: number, ae: number, b: Uint8Array, bs: number, be: number): number {
  const n = Math.min(ae - as, be - bs);
  for (let i = 0; i < n; i++) {
    const d = a[as + i] - b[bs + i];
    if (d !== 0) return d;
  }
  return ae - as - (be - bs);
}

function grownInt32(a: Int32Array, size: number, fill = 0): Int32Array {
  const b = new Int32Array(size);
  b.set(a);
  if (fill !== 0) b.fill(fill, a.length);
  return b;
}

function grownUint32(a: Uint32Array, size: number): Uint32Array {
  const b = new Uint32Array(size);
  b.set(a);
  return b;
}

function grownFloat64(a: Float64Array, size: number): Float64Array {
  const b = new Float64Array(size);
  b.set(a);
  return b;
}

/**
 * The parser's state. Entries are numbered in the order of their lines (the
 * root, which must come first, is 0); every column is indexed by entry.
 */
class FlatParser {
  readonly pool: Uint8Array;
  /** A Buffer over the same bytes, for the few Buffer-only operations. */
  readonly buf: Buffer;
  readonly inputLength: number;
  readonly strict: boolean;
  /** latin1 text of `pool[textBase .. textEnd)` (textLen long), for native searches. */
  text = '';
  textBase = 0;
  textEnd = 0;
  textLen = 0;
  /** Offset of the first NUL byte in the input (n if none). */
  firstNul: number;
  line = 0;
  lineStart = 0;
  /**
   * Cached position of the next space / backslash at or after the last one
   * asked for; `te` if there is none before the end of the text window (so n
   * if none at all; fastLine() may store a `te` short of n, which is no space).
   */
  nextSpace = -1;
  nextBackslash = -1;
  /** The current line's 11 fields: [fieldStart, fieldEnd) each. */
  readonly fieldStart = new Int32Array(N_FIELDS);
  readonly fieldEnd = new Int32Array(N_FIELDS);
  /** Numbers read while splitting (LATER if not). For MTIME, the seconds; `nsec` holds the rest. */
  readonly fieldNumber = new Int32Array(N_FIELDS);
  nsec = 0;
  /** fastLine()'s numbers: SIZE MODE NLINK UID GID RDEV SEC NSEC. */
  readonly fastNumbers = new Float64Array(8);
  /** End of the field `optional()` returned. */
  optionalEnd = 0;
  /** After fastLine(): where the line's xattrs start, and where it ends. */
  rest = 0;
  lineEnd = 0;

  capacity: number;
  count = 0;
  nameStart: Int32Array;
  nameEnd: Int32Array;
  parent: Int32Array;
  /** -1 (the default of this column and of contentStart/End); -2 for a hard-link line until the links are resolved. */
  linkTo: Int32Array;
  mode: Uint32Array;
  nlink: Uint32Array;
  uid: Uint32Array;
  gid: Uint32Array;
  rdev: Float64Array;
  size: Float64Array;
  mtimeSec: Float64Array;
  mtimeNsec: Uint32Array;
  payloadStart: Int32Array;
  payloadEnd: Int32Array;
  contentStart: Int32Array;
  contentEnd: Int32Array;
  digest: Int32Array;
  /** (cap + 1) */
  xattrStart: Int32Array;
  /** Per directory: its last entry so far (0 = none yet; the root is nobody's child). */
  lastChild: Int32Array;
  /** Per directory: how many entries it has. */
  childCount: Int32Array;
  /** Per directory: 1 once its names came out of order (it is sorted at the end). */
  unsortedFlag: Uint8Array;

  xattrCapacity = 64;
  xattrCount = 0;
  xattrKeyStart = new Int32Array(64);
  xattrKeyEnd = new Int32Array(64);
  xattrValueStart = new Int32Array(64);
  xattrValueEnd = new Int32Array(64);

  /**
   * The directories from the root down to the one most recently added or
   * used as a parent (`chainEntry[0 .. chainDepth)`), each with its
   * canonical path (decoded, in latin1; "" for the root) in `chainPath` and
   * that path's length in `chainLen`. Dump files list a directory's entries
   * right after it, so a line's parent is almost always here.
   */
  readonly chainEntry: number[] = [0];
  readonly chainLen: number[] = [0];
  readonly chainPath: string[] = [''];
  chainDepth = 0;

  /** Hard-link entries and their line numbers, in file order. */
  readonly links: number[] = [];
  readonly linkLines: number[] = [];
  /**
   * `parent/name` (name in latin1) -> entry, over all entries; built the
   * first time a name must be looked up while reading (names out of order, a
   * parent not on the chain), then kept up to date.
   */
  index: Map<string, number> | null = null;
  /** Directories whose names came out of order. */
  readonly unsorted: number[] = [];
  /** First regular file too big for an image (the reference refuses it when writing). */
  tooBigLine = 0;
  tooBigSize = '';
  readonly digestBytes = new Uint8Array(32);

  constructor(input: Uint8Array, strict: boolean) {
    this.pool = input;
    this.buf = Buffer.isBuffer(input) ? input : Buffer.from(input.buffer, input.byteOffset, input.length);
    this.inputLength = input.length;
    this.strict = strict;
    this.setWindow(0);
    const nul = this.textLen === this.inputLength ? this.text.indexOf('\0') : this.buf.indexOf(0);
    this.firstNul = nul < 0 ? this.inputLength : nul;
    // Lines are rarely shorter than 64 bytes; the columns grow if they are.
    const cap = Math.max(64, Math.min(this.inputLength >>> 6, 1 << 20));
    this.capacity = cap;
    this.nameStart = new Int32Array(cap);
    this.nameEnd = new Int32Array(cap);
    this.parent = new Int32Array(cap);
    this.linkTo = new Int32Array(cap).fill(-1);
    this.mode = new Uint32Array(cap);
    this.nlink = new Uint32Array(cap);
    this.uid = new Uint32Array(cap);
    this.gid = new Uint32Array(cap);
    this.rdev = new Float64Array(cap);
    this.size = new Float64Array(cap);
    this.mtimeSec = new Float64Array(cap);
    this.mtimeNsec = new Uint32Array(cap);
    this.payloadStart = new Int32Array(cap);
    this.payloadEnd = new Int32Array(cap);
    this.contentStart = new Int32Array(cap).fill(-1);
    this.contentEnd = new Int32Array(cap).fill(-1);
    this.digest = new Int32Array(cap);
    this.xattrStart = new Int32Array(cap + 1);
    this.lastChild = new Int32Array(cap);
    this.childCount = new Int32Array(cap);
    this.unsortedFlag = new Uint8Array(cap);
  }

  grow(): void {
    const cap = this.capacity * 2;
    this.capacity = cap;
    this.nameStart = grownInt32(this.nameStart, cap);
    this.nameEnd = grownInt32(this.nameEnd, cap);
    this.parent = grownInt32(this.parent, cap);
    this.linkTo = grownInt32(this.linkTo, cap, -1);
    this.mode = grownUint32(this.mode, cap);
    this.nlink = grownUint32(this.nlink, cap);
    this.uid = grownUint32(this.uid, cap);
    this.gid = grownUint32(this.gid, cap);
    this.rdev = grownFloat64(this.rdev, cap);
    this.size = grownFloat64(this.size, cap);
    this.mtimeSec = grownFloat64(this.mtimeSec, cap);
    this.mtimeNsec = grownUint32(this.mtimeNsec, cap);
    this.payloadStart = grownInt32(this.payloadStart, cap);
    this.payloadEnd = grownInt32(this.payloadEnd, cap);
    this.contentStart = grownInt32(this.contentStart, cap, -1);
    this.contentEnd = grownInt32(this.contentEnd, cap, -1);
    this.digest = grownInt32(this.digest, cap);
    this.xattrStart = grownInt32(this.xattrStart, cap + 1);
    this.lastChild = grownInt32(this.lastChild, cap);
    this.childCount = grownInt32(this.childCount, cap);
    const flags = new Uint8Array(cap);
    flags.set(this.unsortedFlag);
    this.unsortedFlag = flags;
  }

  growXattrs(): void {
    const cap = this.xattrCapacity * 2;
    this.xattrCapacity = cap;
    this.xattrKeyStart = grownInt32(this.xattrKeyStart, cap);
    this.xattrKeyEnd = grownInt32(this.xattrKeyEnd, cap);
    this.xattrValueStart = grownInt32(this.xattrValueStart, cap);
    this.xattrValueEnd = grownInt32(this.xattrValueEnd, cap);
  }

  setWindow(at: number): void {
    const te = Math.min(this.inputLength, at + TEXT_WINDOW);
    this.textBase = at;
    this.textEnd = te;
    this.textLen = te - at;
    this.text = this.buf.toString('latin1', at, te);
    this.nextSpace = this.nextBackslash = -1;
  }

  /** First `byte` at or after `pos`, or -1; `ch` is the same byte as a string. */
  find(ch: string, byte: number, pos: number): number {
    const r = this.text.indexOf(ch, pos - this.textBase);
    return r >= 0 ? r + this.textBase : this.findSlow(byte, pos);
  }

  /** find() when the text window has no match: past the window, or nowhere. */
  findSlow(byte: number, pos: number): number {
    const textBase = this.textBase;
    const te = textBase + this.text.length;
    if (te === this.inputLength && pos >= textBase) return -1;
    // Move the window up to the current line once that is past its middle;
    // later searches never look before the line's start.
    if (this.lineStart >= textBase + (this.text.length >>> 1) && te < this.inputLength) this.setWindow(this.lineStart);
    return this.buf.indexOf(byte, pos);
  }

  /** End of the field starting at `pos`: the next space, or the line's `end`. */
  endOfField(pos: number, end: number): number {
    let sp = this.nextSpace;
    if (sp < pos || (sp === this.textEnd && sp < this.inputLength)) {
      sp = this.find(' ', 0x20, pos);
      if (sp < 0) sp = this.inputLength;
      this.nextSpace = sp;
    }
    return sp < end ? sp : end;
  }

  /** Whether `pool[start..end)` holds a backslash. */
  hasEscape(start: number, end: number): boolean {
    let bs = this.nextBackslash;
    if (bs < start) {
      bs = this.find('\\', 0x5c, start);
      if (bs < 0) bs = this.inputLength;
      this.nextBackslash = bs;
    }
    return bs < end;
  }

  fail(field: number | string, reason: string): never {
    throw new DumpParseError(this.line, typeof field === 'number' ? FIELD_NAMES[field] : field, reason);
  }

  fieldText(field: number): string {
    return printable(this.pool.subarray(this.fieldStart[field], this.fieldEnd[field]));
  }

  /** Decode `pool[start..end)` in place; returns the decoded end. */
  decode(field: number | string, start: number, end: number, cstring: boolean): number {
    try {
      return unescapeInPlace(this.pool, start, end, cstring);
    } catch (e) {
      if (e instanceof UnescapeError) this.fail(field, e.message);
      throw e;
    }
  }

  /**
   * An optional field: -1 for a lone `-`, else its start, with the end of its
   * decoded bytes in `re`. C-string fields end at a decoded NUL.
   */
  optional(field: number, cstring: boolean): number {
    const s = this.fieldStart[field];
    let e = this.fieldEnd[field];
    if (e - s === 1 && this.pool[s] === 0x2d) return -1;
    if (this.hasEscape(s, e)) e = this.decode(field, s, e, cstring);
    this.optionalEnd = e;
    return s;
  }

  run(): void {
    const inputLength = this.inputLength;
    let pos = 0;
    while (pos < inputLength) {
      this.line++;
      let next = this.fastLine(pos);
      if (next < 0) next = this.parseLine(pos);
      else if (this.rest < this.lineEnd) this.parseXattrs(this.rest, this.lineEnd);
      pos = next;
    }
  }

  /**
   * The common line, the cheap way: a path without escapes whose parent is
   * on the chain and whose name sorts after its last sibling, plain numbers,
   * no CONTENT, DIGEST `-` or 64 hex digits. Returns -1, having changed
   * nothing but the search caches, for any other line (parseLine() takes it
   * then, errors included); else adds the entry and returns where the next
   * line starts, leaving the xattrs (`rest .. lineEnd`) to the caller.
   *
   * It runs unoptimised for the first few thousand lines, so it is kept
   * small. And it computes every comparison it needs on every line, even
   * where `&&` would skip some: V8 optimises code for what it has seen, and
   * an operation first met later, by optimised code, throws that code away.
   */
  fastLine(start: number): number {
    const bytes = this.pool;
    const text = this.text;
    const textBase = this.textBase;
    const textLen = this.textLen;
    let end = text.indexOf('\n', start - textBase);
    if (end < 0 || this.index !== null || this.count === this.capacity || this.count === 0) return -1;
    end += textBase;

    // PATH: up to the first space; no backslash, no NUL.
    let pathEnd = this.nextSpace;
    pathEnd = text.indexOf(' ', (pathEnd < start ? start : pathEnd) - textBase);
    pathEnd = (pathEnd < 0 ? textLen : pathEnd) + textBase;
    let backslash = this.nextBackslash;
    backslash = text.indexOf('\\', (backslash < start ? start : backslash) - textBase);
    backslash = (backslash < 0 ? textLen : backslash) + textBase;
    this.nextSpace = pathEnd;
    this.nextBackslash = backslash;
    if (pathEnd >= end || backslash < pathEnd || this.firstNul < end || bytes[start] !== 0x2f) return -1;

    // The parent: the deepest directory on the chain whose path, and a '/',
    // start the line; the rest is the name, which has no further '/'.
    const chainLen = this.chainLen;
    const chainPath = this.chainPath;
    let depth = this.chainDepth - 1;
    let nameStart = start + chainLen[depth] + 1;
    while (depth > 0 && !(nameStart <= pathEnd && bytes[nameStart - 1] === 0x2f && text.startsWith(chainPath[depth], start - textBase))) {
      depth--;
      nameStart = start + chainLen[depth] + 1;
    }
    const parent = this.chainEntry[depth];
    let slash = text.indexOf('/', nameStart - textBase);
    slash = (slash < 0 ? textLen : slash) + textBase;

    // '.', '..', empty or too long names go to parseLine() too.
    const nameLen = pathEnd - nameStart;
    const empty = nameLen <= 0;
    const long = nameLen > K.NAME_MAX;
    const dot0 = bytes[nameStart] === 0x2e;
    const dot1 = bytes[nameStart + 1] === 0x2e;
    const len1 = nameLen === 1;
    const len2 = nameLen === 2;
    if (slash < pathEnd || empty || long || (dot0 && (len1 || (len2 && dot1)))) return -1;

    // The name must sort after the directory's last one.
    const last = this.lastChild[parent];
    const unsorted = this.unsortedFlag[parent] !== 0;
    let after = true;
    if (last !== 0) {
      const lastStart = this.nameStart[last];
      const lastLength = this.nameEnd[last] - lastStart;
      const common = nameLen < lastLength ? nameLen : lastLength;
      let i = 0;
      while (i < common && bytes[nameStart + i] === bytes[lastStart + i]) i++;
      const byByte = bytes[nameStart + i] - bytes[lastStart + i];
      const byLength = nameLen - lastLength;
      after = (i < common ? byByte : byLength) > 0;
    }
    if (!after || unsorted) return -1;

    // SIZE MODE NLINK UID GID RDEV SEC.NSEC: digits and a space (a dot after
    // SEC) each, at most 9 digits (10 for SEC: it stays below 2^31 until 2038).
    const fastNumbers = this.fastNumbers;
    let pos = pathEnd + 1;
    for (let field = 0; field < 8; field++) {
      const base = field === 1 ? 8 : 10;
      const top = 0x30 + base;
      let digitEnd = pos;
      let byte = bytes[digitEnd];
      let value = 0;
      while (byte >= 0x30 && byte < top) {
        value = value * base + (byte - 0x30);
        byte = bytes[++digitEnd];
      }
      if (digitEnd === pos || digitEnd - pos > (field === 6 ? 10 : 9) || byte !== (field === 6 ? 0x2e : 0x20)) return -1;
      fastNumbers[field] = value;
      pos = digitEnd + 1;
    }
    const size = fastNumbers[0];
    const mode = fastNumbers[1];
    const type = mode & K.S_IFMT;
    const rdev = fastNumbers[5];
    if (((K.VALID_TYPES >>> (type >>> 12)) & 1) === 0) return -1;

    // PAYLOAD: `-` or a field without backslashes; CONTENT: `-`.
    let payloadStart = -1;
    let payloadEnd = -1;
    const noPayload = bytes[pos] === 0x2d && bytes[pos + 1] === 0x20;
    if (noPayload) {
      pos += 2;
    } else {
      let space = text.indexOf(' ', pos - textBase);
      space = (space < 0 ? textLen : space) + textBase;
      if (space >= end || backslash < space) return -1;
      payloadStart = pos;
      payloadEnd = space;
      pos = space + 1;
    }
    if (bytes[pos] !== 0x2d || bytes[pos + 1] !== 0x20) return -1;
    pos += 2;

    // DIGEST: `-` or 64 hex digits, decoded into `digestBytes` for now.
    let digestStart = -1;
    let fieldEnd = pos + 1;
    const dash = bytes[pos] === 0x2d;
    const lastField = fieldEnd === end;
    const spaceAfter = bytes[fieldEnd] === 0x20;
    if (!dash || !(lastField || spaceAfter)) {
      fieldEnd = pos + 64;
      if (fieldEnd > end || (fieldEnd !== end && bytes[fieldEnd] !== 0x20)) return -1;
      const out = this.digestBytes;
      for (let i = 0; i < 32; i++) {
        const hi = HEX_DIGIT[bytes[pos + 2 * i]];
        const lo = HEX_DIGIT[bytes[pos + 2 * i + 1]];
        if ((hi | lo) < 0) return -1;
        out[i] = (hi << 4) | lo;
      }
      digestStart = pos;
    }
    const rest = fieldEnd < end ? fieldEnd + 1 : end;

    // What parseLine() would refuse (or, for symlinks, size differently).
    const payloadLength = payloadEnd - payloadStart;
    const link = type === K.S_IFLNK;
    const device = type === K.S_IFCHR || type === K.S_IFBLK;
    const longPayload = payloadLength >= K.PATH_MAX;
    const badLink = link && (payloadStart < 0 || payloadLength === 0 || (this.strict && size !== payloadLength));
    const badRdev = !device && rdev !== 0 && this.strict;
    if (longPayload || badLink || badRdev || end - rest > K.XATTR_TEXT_MAX) return -1;

    // The line is good: add the entry.
    const entry = this.count++;
    this.nameStart[entry] = nameStart;
    this.nameEnd[entry] = pathEnd;
    this.parent[entry] = parent;
    this.mode[entry] = mode;
    this.nlink[entry] = fastNumbers[2];
    this.uid[entry] = fastNumbers[3];
    this.gid[entry] = fastNumbers[4];
    this.rdev[entry] = device ? rdev : 0;
    this.size[entry] = link ? payloadLength : size;
    this.mtimeSec[entry] = fastNumbers[6];
    this.mtimeNsec[entry] = fastNumbers[7];
    this.payloadStart[entry] = payloadStart;
    this.payloadEnd[entry] = payloadEnd;
    this.digest[entry] = digestStart;
    this.xattrStart[entry] = this.xattrCount;
    this.lastChild[parent] = entry;
    this.childCount[parent]++;
    if (digestStart >= 0) {
      const out = this.digestBytes;
      for (let i = 0; i < 32; i++) bytes[digestStart + i] = out[i];
    }
    if (type === K.S_IFDIR) {
      this.chainEntry[depth + 1] = entry;
      this.chainLen[depth + 1] = pathEnd - start;
      this.chainPath[depth + 1] = text.substring(start - textBase, pathEnd - textBase);
      this.chainDepth = depth + 2;
    }
    // (Only now: the cache must stay right for parseLine() from `start`.)
    this.nextSpace = payloadStart < 0 ? pathEnd : payloadEnd;
    this.rest = rest;
    this.lineEnd = end;
    return end + 1;
  }

  /**
   * Parse the line starting at `start`, whatever it holds; returns where the
   * next one starts.
   */
  parseLine(start: number): number {
    const d = this.pool;
    const fieldStart = this.fieldStart;
    const fieldEnd = this.fieldEnd;
    const fieldNumber = this.fieldNumber;
    this.lineStart = start;
    let end = this.find('\n', 0x0a, start);
    let next = end + 1;
    if (end < 0) {
      if (this.strict) this.fail('line', 'missing newline at the end of the file');
      end = next = this.inputLength;
    }
    if (this.firstNul < end) this.fail('line', `NUL byte at column ${this.firstNul - start + 1}`);

    // Split the 11 fixed fields (missing ones are empty), reading the numbers
    // on the way when they are plain digits followed by a space.
    let pos = start;
    fieldStart[F_PATH] = pos;
    let e = this.endOfField(pos, end);
    fieldEnd[F_PATH] = e;
    pos = e < end ? e + 1 : end;
    for (let f = F_SIZE; f <= F_MTIME; f++) {
      fieldStart[f] = pos;
      let q = pos;
      let base = 10;
      if (f === F_MODE) {
        base = 8;
        if (d[q] === 0x40) q++;
      }
      const top = 0x30 + base;
      const digits = q;
      let v = 0;
      let c = d[q];
      while (c >= 0x30 && c < top) {
        v = v * base + (c - 0x30);
        c = d[++q];
      }
      let ok = q > digits && q - digits <= 9;
      if (f === F_MTIME) {
        // SEC.NSEC
        ok = ok && c === 0x2e;
        const ns = ++q;
        let w = 0;
        c = d[q];
        while (c >= 0x30 && c <= 0x39) {
          w = w * 10 + (c - 0x30);
          c = d[++q];
        }
        ok = ok && q > ns && q - ns <= 9;
        this.nsec = w;
      }
      if (ok && c === 0x20) {
        fieldNumber[f] = v;
        fieldEnd[f] = q;
        pos = q + 1;
      } else {
        fieldNumber[f] = LATER;
        e = this.endOfField(pos, end);
        fieldEnd[f] = e;
        pos = e < end ? e + 1 : end;
      }
    }
    for (let f = F_PAYLOAD; f <= F_DIGEST; f++) {
      fieldStart[f] = pos;
      if (d[pos] === 0x2d && (d[pos + 1] === 0x20 || pos + 1 === end)) {
        fieldEnd[f] = pos + 1;
        pos = pos + 1 < end ? pos + 2 : end;
      } else {
        e = this.endOfField(pos, end);
        fieldEnd[f] = e;
        pos = e < end ? e + 1 : end;
      }
    }
    const rest = pos;

    // Then the fields in the reference's order, which decides which error
    // a bad line gets.
    const ps = fieldStart[F_PATH];
    let pe = fieldEnd[F_PATH];
    if (this.hasEscape(ps, pe)) pe = this.decode(F_PATH, ps, pe, true);
    if (pe === ps) this.fail(F_PATH, 'empty path');

    let hardlink = false;
    if (fieldEnd[F_MODE] > fieldStart[F_MODE] && d[fieldStart[F_MODE]] === 0x40) {
      hardlink = true;
      fieldStart[F_MODE]++;
    }
    const modeValue = fieldNumber[F_MODE] !== LATER ? fieldNumber[F_MODE] : parseU64(d, fieldStart[F_MODE], fieldEnd[F_MODE], 8);
    if (modeValue === -1) this.fail(F_MODE, `invalid number '${this.fieldText(F_MODE)}'`);
    const mode = low32(modeValue);
    const type = mode & S_IFMT;
    if (((VALID_TYPES >>> (type >>> 12)) & 1) === 0) this.fail(F_MODE, `invalid mode ${mode.toString(8)}: no valid file type`);

    const entry = this.addToTree(ps, pe, mode, hardlink);

    if (hardlink) {
      if (type === S_IFDIR) this.fail(F_MODE, 'directories cannot be hard-linked');
      const ts = this.optional(F_PAYLOAD, true);
      this.linkTo[entry] = -2;
      this.payloadStart[entry] = ts;
      this.payloadEnd[entry] = ts < 0 ? -1 : this.optionalEnd;
      this.contentStart[entry] = this.contentEnd[entry] = this.digest[entry] = -1;
      this.links.push(entry);
      this.linkLines.push(this.line);
      return next;
    }

    const size = fieldNumber[F_SIZE] !== LATER ? fieldNumber[F_SIZE] : parseU64(d, fieldStart[F_SIZE], fieldEnd[F_SIZE], 10);
    if (size === -1) this.fail(F_SIZE, `invalid number '${this.fieldText(F_SIZE)}'`);
    const nlink = fieldNumber[F_NLINK] !== LATER ? fieldNumber[F_NLINK] : parseU64(d, fieldStart[F_NLINK], fieldEnd[F_NLINK], 10);
    if (nlink === -1) this.fail(F_NLINK, `invalid number '${this.fieldText(F_NLINK)}'`);
    const uid = fieldNumber[F_UID] !== LATER ? fieldNumber[F_UID] : parseU64(d, fieldStart[F_UID], fieldEnd[F_UID], 10);
    if (uid === -1) this.fail(F_UID, `invalid number '${this.fieldText(F_UID)}'`);
    // The reference tests the wrong variable after reading GID and RDEV: an
    // invalid GID or RDEV is an error only when UID is 0; otherwise it reads as 0.
    let gid = fieldNumber[F_GID] !== LATER ? fieldNumber[F_GID] : parseU64(d, fieldStart[F_GID], fieldEnd[F_GID], 10);
    if (gid === -1) {
      if (uid === 0) this.fail(F_GID, `invalid number '${this.fieldText(F_GID)}'`);
      gid = 0;
    }
    let rdev = fieldNumber[F_RDEV] !== LATER ? fieldNumber[F_RDEV] : parseU64(d, fieldStart[F_RDEV], fieldEnd[F_RDEV], 10);
    if (rdev === -1) {
      if (uid === 0) this.fail(F_RDEV, `invalid number '${this.fieldText(F_RDEV)}'`);
      rdev = 0;
    }

    let sec: U64;
    let nsec: U64;
    if (fieldNumber[F_MTIME] !== LATER) {
      sec = fieldNumber[F_MTIME];
      nsec = this.nsec;
    } else {
      // MTIME is SEC.NSEC, split at the first dot.
      const ms = fieldStart[F_MTIME];
      const me = fieldEnd[F_MTIME];
      let dot = ms;
      while (dot < me && d[dot] !== 0x2e) dot++;
      sec = parseU64(d, ms, dot, 10);
      if (sec === -1) this.fail(F_MTIME, `invalid seconds in '${this.fieldText(F_MTIME)}'`);
      nsec = parseU64(d, dot < me ? dot + 1 : dot, me, 10);
      if (nsec === -1) this.fail(F_MTIME, `invalid nanoseconds in '${this.fieldText(F_MTIME)}'`);
    }

    const payS = this.optional(F_PAYLOAD, true);
    const payE = payS < 0 ? -1 : this.optionalEnd;
    const conS = this.optional(F_CONTENT, false);
    const conE = conS < 0 ? -1 : this.optionalEnd;
    if (conS >= 0 && conE - conS !== size) {
      this.fail(F_CONTENT, `content is ${conE - conS} bytes but size is ${u64Text(size)}`);
    }
    const digS = this.optional(F_DIGEST, true);
    const digE = digS < 0 ? -1 : this.optionalEnd;

    let fileSize = type !== S_IFLNK ? approx(size) : 0;
    let devNumber = 0;
    if (type === S_IFCHR || type === S_IFBLK) {
      devNumber = rdevNumber(rdev);
    } else if (this.strict && rdev !== 0) {
      this.fail(F_RDEV, `device number ${u64Text(rdev)} on a file that is not a device`);
    }

    let inlineStart = -1;
    if (type === S_IFLNK) {
      const len = payE - payS;
      if (payS < 0 || len === 0) this.fail(F_PAYLOAD, 'symlink without a target');
      if (len >= PATH_MAX) this.fail(F_PAYLOAD, `symlink target of ${len} bytes is too long (the limit is ${PATH_MAX - 1})`);
      fileSize = len;
      if (this.strict) {
        if (size !== len) this.fail(F_SIZE, `symlink size ${u64Text(size)} differs from its target's length ${len}`);
        if (conS >= 0 && conE > conS) this.fail(F_CONTENT, 'a symlink cannot have content');
      }
    } else {
      if (payS >= 0 && payE - payS >= PATH_MAX) {
        this.fail(F_PAYLOAD, `payload of ${payE - payS} bytes is too long (the limit is ${PATH_MAX - 1})`);
      }
      if (conS >= 0) {
        const len = conE - conS;
        if (len > INLINE_CONTENT_MAX) this.fail(F_CONTENT, `inline content of ${len} bytes exceeds the maximum of ${INLINE_CONTENT_MAX}`);
        if (len > 0) inlineStart = conS;
        fileSize = len;
      }
    }
    const stub = type === S_IFREG && inlineStart < 0 && size !== 0;
    if (stub && typeof size === 'bigint' && size > BigInt(MAX_FILE_SIZE) && this.tooBigLine === 0) {
      this.tooBigLine = this.line;
      this.tooBigSize = u64Text(size);
    }

    let digest = -1;
    if (digS >= 0) {
      digest = this.decodeDigest(digS, digE);
      // A digest that is not 64 hex digits leaves the reference with
      // uninitialized bytes; that only matters where the image uses it.
      if (digest < 0 && stub) {
        this.fail(F_DIGEST, `invalid fs-verity digest '${printable(d.subarray(digS, digE))}': expected 64 hex digits`);
      }
    }

    this.size[entry] = fileSize;
    this.nlink[entry] = low32(nlink);
    this.uid[entry] = low32(uid);
    this.gid[entry] = low32(gid);
    this.rdev[entry] = devNumber;
    this.mtimeSec[entry] = typeof sec === 'number' ? sec : secondsNumber(sec);
    this.mtimeNsec[entry] = low32(nsec);
    this.payloadStart[entry] = payS;
    this.payloadEnd[entry] = payE;
    this.contentStart[entry] = inlineStart;
    this.contentEnd[entry] = inlineStart < 0 ? -1 : conE;
    this.digest[entry] = digest;

    if (end - rest > XATTR_TEXT_MAX) this.fail('xattrs', `${end - rest} bytes of xattrs on one line exceed the maximum of ${XATTR_TEXT_MAX}`);
    if (rest < end) this.parseXattrs(rest, end);
    return next;
  }

  /**
   * The first 64 characters of `pool[start..end)` as hex, as the reference
   * reads a digest: decoded to 32 bytes at `start` (returned), or -1 if they
   * are not 64 hex digits (then the text is left as it was).
   */
  decodeDigest(start: number, end: number): number {
    if (end - start < 64) return -1;
    const d = this.pool;
    const out = this.digestBytes;
    for (let i = 0; i < 32; i++) {
      const hi = HEX_DIGIT[d[start + 2 * i]];
      const lo = HEX_DIGIT[d[start + 2 * i + 1]];
      if ((hi | lo) < 0) return -1;
      out[i] = (hi << 4) | lo;
    }
    d.set(out, start);
    return start;
  }

  parseXattrs(start: number, end: number): void {
    const d = this.pool;
    const first = this.xattrCount;
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

      // The name is a C string, so it is empty when it starts with an escaped
      // NUL; the message shows the token as written, so keep that first.
      let emptyName = '';
      if (eq === tokenStart || (eq - tokenStart >= 4 && d[tokenStart] === 0x5c && d[tokenStart + 1] === 0x78 && d[tokenStart + 2] === 0x30 && d[tokenStart + 3] === 0x30)) {
        emptyName = printable(d.subarray(tokenStart, tokenEnd));
      }
      const ks = tokenStart;
      const ke = this.hasEscape(ks, eq) ? this.decode('xattr', ks, eq, true) : eq;
      const vs = eq + 1;
      const ve = this.hasEscape(vs, tokenEnd) ? this.decode('xattr', vs, tokenEnd, false) : tokenEnd;
      if (ke === ks) this.fail('xattr', `empty xattr name in '${emptyName}'`);
      if (ke - ks > XATTR_NAME_MAX) this.fail('xattr', `xattr name of ${ke - ks} bytes exceeds the maximum of ${XATTR_NAME_MAX}`);
      if (ve - vs > XATTR_VALUE_MAX) this.fail('xattr', `xattr value of ${ve - vs} bytes exceeds the maximum of ${XATTR_VALUE_MAX}`);

      // Setting a name again drops the old value, moving the last xattr into its slot.
      const keyStart = this.xattrKeyStart;
      const keyEnd = this.xattrKeyEnd;
      const valueStart = this.xattrValueStart;
      const valueEnd = this.xattrValueEnd;
      if (index === null && this.xattrCount - first >= 16) {
        index = new Map();
        for (let k = first; k < this.xattrCount; k++) index.set(this.buf.toString('latin1', keyStart[k], keyEnd[k]), k);
      }
      let old = -1;
      const keyText = index !== null ? this.buf.toString('latin1', ks, ke) : '';
      if (index !== null) {
        old = index.get(keyText) ?? -1;
      } else {
        for (let k = first; k < this.xattrCount; k++) {
          if (compareBytes(d, keyStart[k], keyEnd[k], d, ks, ke) === 0) {
            old = k;
            break;
          }
        }
      }
      if (old >= 0) {
        const removed = XATTR_ENTRY_OVERHEAD + keyEnd[old] - keyStart[old] + valueEnd[old] - valueStart[old];
        const last = this.xattrCount - 1;
        if (old !== last) {
          keyStart[old] = keyStart[last];
          keyEnd[old] = keyEnd[last];
          valueStart[old] = valueStart[last];
          valueEnd[old] = valueEnd[last];
          if (index !== null) index.set(this.buf.toString('latin1', keyStart[old], keyEnd[old]), old);
        }
        this.xattrCount = last;
        if (index !== null) index.delete(keyText);
        space = this.xattrCount > first ? space - removed : 0;
      }
      const need = XATTR_ENTRY_OVERHEAD + (ke - ks) + (ve - vs) + (this.xattrCount === first ? XATTR_HEADER : 0);
      if (space + need > XATTR_SPACE_MAX) {
        this.fail('xattr', `xattrs of this file exceed ${XATTR_SPACE_MAX} bytes (at '${printable(d.subarray(ks, ke))}')`);
      }
      if (this.xattrCount === this.xattrCapacity) this.growXattrs();
      const x = this.xattrCount++;
      this.xattrKeyStart[x] = ks;
      this.xattrKeyEnd[x] = ke;
      this.xattrValueStart[x] = vs;
      this.xattrValueEnd[x] = ve;
      if (index !== null) index.set(keyText, x);
      space += need;
    }
  }

  /** The `index` key of name `pool[start..end)` in directory `dir`. */
  key(dir: number, start: number, end: number): string {
    return `${dir}/${this.buf.toString('latin1', start, end)}`;
  }

  /** The entry named `pool[start..end)` in directory `dir`, or -1 (while reading). */
  findChild(dir: number, start: number, end: number): number {
    let index = this.index;
    if (index === null) {
      index = new Map();
      for (let e = 1; e < this.count; e++) index.set(this.key(this.parent[e], this.nameStart[e], this.nameEnd[e]), e);
      this.index = index;
    }
    return index.get(this.key(dir, start, end)) ?? -1;
  }

  isDir(entry: number): boolean {
    return this.linkTo[entry] === -1 && (this.mode[entry] & S_IFMT) === S_IFDIR;
  }

  /**
   * Put the entry of path `pool[ps..pe)` into the tree as the reference does,
   * or fail as it would. Returns the new entry, with its name, parent, mode
   * and xattr start set.
   */
  addToTree(ps: number, pe: number, mode: number, hardlink: boolean): number {
    const d = this.pool;
    const dir = (mode & S_IFMT) === S_IFDIR && !hardlink;
    if (pe - ps === 1 && d[ps] === 0x2f) {
      if ((mode & S_IFMT) !== S_IFDIR) this.fail(F_PATH, 'the root must be a directory');
      if (this.count > 0) this.fail(F_PATH, 'a second root directory');
      this.newEntry(0, 0, -1, mode);
      this.chainDepth = 1;
      return 0;
    }
    if (this.count === 0) this.fail(F_PATH, `'${printable(d.subarray(ps, pe))}' comes before the root directory '/'`);

    // Fast path: the parent is on the chain (which holds canonical paths only).
    let slash = pe - 1;
    while (slash >= ps && d[slash] !== 0x2f) slash--;
    const rel = slash - ps;
    let parent = -1;
    let depth = -1;
    if (rel >= 0 && slash < pe - 1 && d[ps] === 0x2f) {
      const chainLen = this.chainLen;
      let k = this.chainDepth - 1;
      while (k >= 0 && chainLen[k] > rel) k--;
      if (k >= 0 && chainLen[k] === rel) {
        const chainPath = this.chainPath[k];
        let i = 0;
        while (i < rel && chainPath.charCodeAt(i) === d[ps + i]) i++;
        if (i === rel) {
          parent = this.chainEntry[k];
          depth = k;
        }
      }
    }
    let nameStart = slash + 1;
    if (parent < 0) {
      nameStart = this.walkToParent(ps, pe);
      depth = this.chainDepth - 1;
      parent = this.chainEntry[depth];
    }

    const nameLen = pe - nameStart;
    if (nameLen === 1 && d[nameStart] === 0x2e) this.fail(F_PATH, `invalid name '.' in '${printable(d.subarray(ps, pe))}'`);
    if (nameLen === 2 && d[nameStart] === 0x2e && d[nameStart + 1] === 0x2e) this.fail(F_PATH, `invalid name '..' in '${printable(d.subarray(ps, pe))}'`);
    if (nameLen === 0) this.fail(F_PATH, `empty file name in '${printable(d.subarray(ps, pe))}'`);
    if (nameLen > NAME_MAX) this.fail(F_PATH, `file name of ${nameLen} bytes exceeds the maximum of ${NAME_MAX}`);

    const last = this.lastChild[parent];
    if (last !== 0) {
      if (this.unsortedFlag[parent] === 0) {
        const c = compareBytes(d, nameStart, pe, d, this.nameStart[last], this.nameEnd[last]);
        if (c <= 0) {
          if (c === 0 || this.findChild(parent, nameStart, pe) >= 0) this.fail(F_PATH, `'${printable(d.subarray(ps, pe))}' already exists`);
          this.unsortedFlag[parent] = 1;
          this.unsorted.push(parent);
        }
      } else if (this.findChild(parent, nameStart, pe) >= 0) {
        this.fail(F_PATH, `'${printable(d.subarray(ps, pe))}' already exists`);
      }
    }

    const entry = this.newEntry(nameStart, pe, parent, mode);
    this.lastChild[parent] = entry;
    if (this.index !== null) this.index.set(this.key(parent, nameStart, pe), entry);

    if (dir) {
      // The next lines are most likely this directory's entries.
      this.chainEntry[depth + 1] = entry;
      this.chainLen[depth + 1] = this.chainLen[depth] + 1 + nameLen;
      this.chainPath[depth + 1] = `${this.chainPath[depth]}/${this.buf.toString('latin1', nameStart, pe)}`;
      this.chainDepth = depth + 2;
    }
    return entry;
  }

  newEntry(nameStart: number, nameEnd: number, parent: number, mode: number): number {
    if (this.count === this.capacity) this.grow();
    const e = this.count++;
    if (parent >= 0) this.childCount[parent]++;
    this.nameStart[e] = nameStart;
    this.nameEnd[e] = nameEnd;
    this.parent[e] = parent;
    this.mode[e] = mode;
    this.linkTo[e] = -1;
    this.xattrStart[e] = this.xattrCount;
    return e;
  }

  /**
   * The parent of `pool[ps..pe)` found the way the reference finds it: runs
   * of '/' skipped, every directory on the way must exist. The directories
   * walked become the chain; returns where the name starts (after the last
   * '/', so empty after a trailing one).
   */
  walkToParent(ps: number, pe: number): number {
    const d = this.pool;
    const walked: number[] = [0];
    const parts: number[] = [];
    let node = 0;
    let nonDir = false;
    let s = ps;
    while (s < pe && d[s] === 0x2f) s++;
    let partStart = s;
    for (let i = s; i < pe; i++) {
      if (d[i] !== 0x2f) continue;
      if (i > partStart) {
        const found = nonDir ? -1 : this.findChild(node, partStart, i);
        if (found < 0) this.fail(F_PATH, `parent directory missing for '${printable(d.subarray(ps, pe))}'`);
        if (!this.isDir(found)) {
          nonDir = true;
        } else {
          node = found;
          walked.push(found);
          parts.push(partStart, i);
        }
      }
      partStart = i + 1;
    }
    if (nonDir) this.fail(F_PATH, `parent of '${printable(d.subarray(ps, pe))}' is not a directory`);

    // The walked directories become the chain.
    let path = '';
    for (let k = 0; k < parts.length; k += 2) {
      path = `${path}/${this.buf.toString('latin1', parts[k], parts[k + 1])}`;
      this.chainEntry[1 + k / 2] = walked[1 + k / 2];
      this.chainLen[1 + k / 2] = path.length;
      this.chainPath[1 + k / 2] = path;
    }
    this.chainDepth = walked.length;
    return partStart;
  }

  finish(): FlatTree {
    const count = this.count;
    if (count === 0) {
      throw new DumpParseError(Math.max(this.line, 1), 'path', "no entries: a dump file needs at least the root directory '/'");
    }
    const d = this.pool;
    const parent = this.parent;
    const nameStart = this.nameStart;
    const nameEnd = this.nameEnd;

    // Children in CSR form, placed in line order, which is name order
    // except in the directories whose names came out of order. One pass: a
    // parent comes before its entries, so its start is known when they come;
    // `kids` turns from counts into the next free slot of each directory.
    const childStart = new Int32Array(count + 1);
    const children = new Int32Array(Math.max(count - 1, 1));
    const kids = this.childCount;
    let next = kids[0];
    kids[0] = 0;
    for (let e = 1; e < count; e++) {
      children[kids[parent[e]]++] = e;
      childStart[e] = next;
      const k = kids[e];
      kids[e] = next;
      next += k;
    }
    childStart[count] = next;
    for (const dir of this.unsorted) {
      children.subarray(childStart[dir], childStart[dir + 1]).sort((a, b) => compareBytes(d, nameStart[a], nameEnd[a], d, nameStart[b], nameEnd[b]));
    }

    if (this.links.length > 0) this.resolveLinks(childStart, children);

    // What the reference refuses only when writing the image, after the
    // hard links are found (a cycle among them is found later still).
    if (this.tooBigLine !== 0) {
      this.line = this.tooBigLine;
      this.fail(F_SIZE, `file of ${this.tooBigSize} bytes is too big for an image (the limit is ${MAX_FILE_SIZE})`);
    }
    if (this.links.length > 0) this.followLinks();

    if (this.xattrStart.length < count + 1) this.grow();
    this.xattrStart[count] = this.xattrCount;
    return {
      count,
      pool: d,
      childStart,
      children,
      nameStart,
      nameEnd,
      linkTo: this.linkTo,
      mode: this.mode,
      nlink: this.nlink,
      uid: this.uid,
      gid: this.gid,
      rdev: this.rdev,
      size: this.size,
      mtimeSec: this.mtimeSec,
      mtimeNsec: this.mtimeNsec,
      payloadStart: this.payloadStart,
      payloadEnd: this.payloadEnd,
      contentStart: this.contentStart,
      contentEnd: this.contentEnd,
      digest: this.digest,
      xattrStart: this.xattrStart,
      xattrKeyStart: this.xattrKeyStart,
      xattrKeyEnd: this.xattrKeyEnd,
      xattrValueStart: this.xattrValueStart,
      xattrValueEnd: this.xattrValueEnd,
    };
  }

  /** Hard-link targets found by path, last line first as the reference does; kept in `linkTarget`. */
  linkTarget: Int32Array = new Int32Array(0);

  resolveLinks(childStart: Int32Array, children: Int32Array): void {
    const d = this.pool;
    const links = this.links;
    const target = new Int32Array(links.length);
    for (let k = links.length - 1; k >= 0; k--) {
      const e = links[k];
      this.line = this.linkLines[k];
      const ts = this.payloadStart[e];
      const te = this.payloadEnd[e];
      if (ts < 0) this.fail(F_PAYLOAD, 'hard link without a target path');
      const to = this.lookup(childStart, children, ts, te);
      if (to < 0) this.fail(F_PAYLOAD, `no target at '${printable(d.subarray(ts, te))}' for the hard link`);
      if (to === e) this.fail(F_PAYLOAD, `hard link to itself ('${printable(d.subarray(ts, te))}')`);
      target[k] = to;
    }
    this.linkTarget = target;
  }

  /** Point every hard link at the entry its chain of links ends at, refusing cycles. */
  followLinks(): void {
    const d = this.pool;
    const links = this.links;
    const target = this.linkTarget;
    const linkOf = new Map<number, number>();
    for (let k = 0; k < links.length; k++) linkOf.set(links[k], k);
    // 0 = not yet, 1 = being followed, 2 = done (final in `result`).
    const state = new Uint8Array(links.length);
    const result = new Int32Array(links.length);
    const path: number[] = [];
    for (let start = 0; start < links.length; start++) {
      path.length = 0;
      let k = start;
      let final: number;
      for (;;) {
        if (state[k] === 2) {
          final = result[k];
          break;
        }
        if (state[k] === 1) {
          this.line = this.linkLines[k];
          const e = links[k];
          this.fail(F_PAYLOAD, `hard link cycle through '${printable(d.subarray(this.payloadStart[e], this.payloadEnd[e]))}'`);
        }
        state[k] = 1;
        path.push(k);
        const to = target[k];
        if (this.linkTo[to] === -1) {
          final = to;
          break;
        }
        k = linkOf.get(to)!;
      }
      for (const p of path) {
        state[p] = 2;
        result[p] = final;
      }
    }
    for (let k = 0; k < links.length; k++) {
      const e = links[k];
      this.linkTo[e] = result[k];
      this.payloadStart[e] = this.payloadEnd[e] = -1;
    }
  }

  /** The entry at a hard link's target path (runs of '/' skipped, empty parts ignored), or -1. */
  lookup(childStart: Int32Array, children: Int32Array, start: number, end: number): number {
    const d = this.pool;
    let node = 0;
    let nodeIsDir = true;
    let s = start;
    for (let i = start; i <= end; i++) {
      if (i < end && d[i] !== 0x2f) continue;
      if (i > s) {
        if (!nodeIsDir) return -1;
        let lo = childStart[node];
        let hi = childStart[node + 1];
        let found = -1;
        while (lo < hi) {
          const mid = (lo + hi) >>> 1;
          const c = children[mid];
          const cmp = compareBytes(d, s, i, d, this.nameStart[c], this.nameEnd[c]);
          if (cmp === 0) {
            found = c;
            break;
          }
          if (cmp < 0) hi = mid;
          else lo = mid + 1;
        }
        if (found < 0) return -1;
        node = found;
        nodeIsDir = this.isDir(found);
      }
      s = i + 1;
    }
    return node;
  }
}

/**
 * Parse a dump file into a {@link FlatTree}. Throws {@link DumpParseError}
 * for anything the reference would refuse.
 *
 * The tree's pool is `input` itself, and parsing changes it (escaped fields
 * and digests are decoded in place): the caller hands `input` over and must
 * not use or change it afterwards, except through the tree.
 */
export function parseDumpFlat(input: Uint8Array, opts: ParseOptions = {}): FlatTree {
  const parser = new FlatParser(input, opts.strict === true);
  parser.run();
  return parser.finish();
}

/**
 * Parse a dump file into a tree and return its root directory. Throws
 * {@link DumpParseError} for anything the reference would refuse.
 * `input` is not changed; the tree's byte strings are views into a copy of it.
 */
export function parseDump(input: Uint8Array, opts: ParseOptions = {}): Inode {
  return inflate(parseDumpFlat(Buffer.from(input), opts));
}
