/**
 * (Over 600 lines on purpose: every rule of the format and every message is
 * written once, in the order the reference checks them, which decides the
 * error a bad line gets; split into files, the fast scanner and the rules
 * would have to share their state through exported fields on the hot path.)
 *
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
 * Every line goes through two stages. {@link LineScanner} cuts it into
 * fields: where each one lies, the value of each number written as plain
 * digits, and, on the rare line with a backslash, the escaped fields decoded
 * in place (an invalid escape is only recorded). {@link FlatParser} then
 * checks the fields in the reference's order (which decides which error a
 * bad line gets), reads the numbers that are not plain with the `strtoull`
 * emulation, and stores the entry: every rule of the format, and every
 * message, is written there once. xattrs are read after the other fields.
 *
 * Why it is written the way it is: a build from a dump runs mostly before V8
 * has optimised anything (on cs9, 22,010 lines, optimised code for the line
 * parser arrives only after several thousand lines), so per line the parser
 * allocates nothing (the scanner fills one reused {@link ScannedLine}), makes
 * few calls (run, scan, storeLine, addToTree), leaves the searching for
 * newlines, spaces, slashes and backslashes to the engine's native string
 * search over one latin1 copy of the input, compares a path with the paths
 * of the directories above it by the same means, and reads plain numbers
 * while cutting the line. What only some lines need (escapes, numbers that
 * are not plain, hard links, errors) is called out of the common path, so
 * optimised code rarely meets an operation it has not seen before (which
 * would throw it away).
 */
import { ComposefsError } from '../errors.js';
import { Limits, Mode, type Inode } from '../tree/model.js';
import { inflate, type FlatTree } from '../tree/flat.js';
import { HEX_DIGIT, printable, unescapeInPlace, UnescapeError } from './escape.js';

export interface ParseOptions {
  /** The reference's `CFS_PARSE_STRICT` checks (see the module comment). */
  strict?: boolean;
  /**
   * Bytes in a digest: 32 (SHA-256, 64 hex digits, the reference's and the
   * default) or 64 (SHA-512, 128 hex digits), one size for the whole file.
   */
  digestSize?: 32 | 64;
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

/**
 * The numbers of the format and of the parser. A `const enum`, so tsc writes
 * them in as literals: V8 checks a module constant on every use until the
 * code is optimised, and most of a build runs before that.
 */
const enum Limit {
  /** Payloads and symlink targets must be shorter than PATH_MAX. */
  PATH_MAX = Limits.PATH_MAX,
  NAME_MAX = Limits.NAME_MAX,
  XATTR_NAME_MAX = 255,
  XATTR_VALUE_MAX = 0xffff,
  /** The xattr part of a line may be at most this long. */
  XATTR_TEXT_MAX = 0xffff,
  /**
   * Space the xattrs of one inode may take, counted as the reference counts
   * it for dump input: 12 bytes of header once, then per xattr 7 bytes plus
   * the name and value lengths.
   */
  XATTR_SPACE_MAX = 0x7fff,
  XATTR_ENTRY_OVERHEAD = 7,
  XATTR_HEADER = 12,
  INLINE_CONTENT_MAX = 5000,
  /** More digits than this are read by parseU64() (they may not fit a double exactly). */
  PLAIN_DIGITS_MAX = 15,
  /**
   * The input is searched as a latin1 string, at most this many bytes of it
   * at a time (V8 strings are limited to about 2^29 characters).
   */
  TEXT_WINDOW = 1 << 28,
}

const enum FileTypes {
  /** The file types an image can hold, as a bit set over `(mode & Mode.TYPE) >> 12`. */
  VALID = (1 << 1) | (1 << 2) | (1 << 4) | (1 << 6) | (1 << 8) | (1 << 10) | (1 << 12),
}

const enum Char {
  NUL = 0x00,
  NEWLINE = 0x0a,
  SPACE = 0x20,
  DASH = 0x2d,
  DOT = 0x2e,
  SLASH = 0x2f,
  ZERO = 0x30,
  NINE = 0x39,
  EQUALS = 0x3d,
  AT = 0x40,
  BACKSLASH = 0x5c,
  X = 0x78,
}

/** The fields of a line, in order; the index into a {@link ScannedLine}'s arrays. */
const enum Field {
  PATH,
  SIZE,
  MODE,
  NLINK,
  UID,
  GID,
  RDEV,
  MTIME,
  PAYLOAD,
  CONTENT,
  DIGEST,
  COUNT,
}

/** How messages name the fields, by {@link Field}. */
const FIELD_NAMES = ['path', 'size', 'mode', 'nlink', 'uid', 'gid', 'rdev', 'mtime', 'payload', 'content', 'digest'];

/**
 * A regular file without inline content is stored as at most 1024 chunks of
 * at most 2^43 bytes, so it can be at most 2^53 bytes long.
 */
const MAX_FILE_SIZE = 2 ** 53;
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
const TWO64 = 1n << 64n;
const U64_MAX = TWO64 - 1n;

/** A parsed number: exact `number` below 2^53, else `bigint` (both modulo 2^64); INVALID when invalid. */
type U64 = number | bigint;
const INVALID = -1;

/**
 * `strtoull(text, &end, base)` over `bytes[start..end)`, accepted only when
 * the text is non-empty and fully consumed, as the reference requires;
 * INVALID otherwise.
 */
function parseU64(bytes: Uint8Array, start: number, end: number, base: number): U64 {
  if (start >= end) return INVALID;
  let at = start;
  while (at < end && (bytes[at] === 0x20 || (bytes[at] >= 0x09 && bytes[at] <= 0x0d))) at++;
  let negative = false;
  if (at < end && (bytes[at] === 0x2b || bytes[at] === 0x2d)) {
    negative = bytes[at] === 0x2d;
    at++;
  }
  const digitsStart = at;
  const bigBase = BigInt(base);
  let value = 0n;
  let overflow = false;
  for (; at < end; at++) {
    const digit = bytes[at] - Char.ZERO;
    if (digit < 0 || digit >= base) break;
    if (!overflow) {
      value = value * bigBase + BigInt(digit);
      if (value > U64_MAX) overflow = true;
    }
  }
  if (at === digitsStart || at !== end) return INVALID;
  const result = overflow ? U64_MAX : negative ? (TWO64 - value) % TWO64 : value;
  return result <= MAX_SAFE ? Number(result) : result;
}

function low32(value: bigint): number {
  return Number(BigInt.asUintN(32, value));
}

/**
 * rdev past 2^53 as a number. It cannot be exact; the image keeps only the
 * low 32 bits (and whether it is zero), so keep those: low 32 bits + 2^52.
 */
function bigDeviceNumber(value: bigint): number {
  return Number(value % 0x100000000n) + 2 ** 52;
}

/** mtime seconds (int64) past 2^53 as a number: rounded, kept inside the int64 range. */
function bigSeconds(value: bigint): number {
  const seconds = Number(BigInt.asIntN(64, value));
  return seconds >= 2 ** 63 ? 2 ** 63 - 1024 : seconds;
}

function u64Text(value: U64): string {
  return typeof value === 'number' ? String(value) : value.toString();
}

/** Bytewise comparison of `a[aStart..aEnd)` and `b[bStart..bEnd)`: <0, 0, >0. */
function compareBytes(a: Uint8Array, aStart: number, aEnd: number, b: Uint8Array, bStart: number, bEnd: number): number {
  const common = Math.min(aEnd - aStart, bEnd - bStart);
  for (let i = 0; i < common; i++) {
    const difference = a[aStart + i] - b[bStart + i];
    if (difference !== 0) return difference;
  }
  return aEnd - aStart - (bEnd - bStart);
}

function grownInt32(array: Int32Array, size: number, fill = 0): Int32Array {
  const grown = new Int32Array(size);
  grown.set(array);
  if (fill !== 0) grown.fill(fill, array.length);
  return grown;
}

function grownUint32(array: Uint32Array, size: number): Uint32Array {
  const grown = new Uint32Array(size);
  grown.set(array);
  return grown;
}

function grownFloat64(array: Float64Array, size: number): Float64Array {
  const grown = new Float64Array(size);
  grown.set(array);
  return grown;
}

/** A field's start and end in a {@link ScannedLine} when the field is a lone `-` (none). */
const ABSENT = -1;
/** A number's value in a {@link ScannedLine} when it is not plain digits: read it with parseU64(). */
const NOT_PLAIN = -2;

/** One line cut into fields by {@link LineScanner.scan}; reused for every line. */
class ScannedLine {
  /**
   * Where the line starts and where it ends: at its newline, or at the end
   * of the input for a last line without one.
   */
  start = 0;
  end = 0;
  /**
   * Field `f` is `[fieldStart[f], fieldEnd[f])`; a missing field is empty.
   * PAYLOAD, CONTENT and DIGEST are ABSENT for `-`. Not kept for a plain
   * number: only its value is ever needed.
   */
  readonly fieldStart = new Int32Array(Field.COUNT);
  readonly fieldEnd = new Int32Array(Field.COUNT);
  /** MODE starts with `@` (then the field starts after it): a hard link. */
  hardLink = false;
  /** The value of each numeric field written as plain digits, else NOT_PLAIN. For MTIME: the seconds. */
  readonly plainNumber = new Float64Array(Field.COUNT);
  /** MTIME's nanoseconds when MTIME is plain `SECONDS.NANOSECONDS`. */
  plainNanoseconds = 0;
  /**
   * A backslash lies in the 11 fields: decodeEscapes() must run before the
   * fields are read (it moves the end of each field it decodes).
   */
  holdsEscapes = false;
  /**
   * The first field whose escapes decodeEscapes() found invalid (then it and
   * the fields after it are not decoded), or -1; and what is wrong. The
   * rules report it when they come to that field, as the reference does.
   */
  badEscapeField = -1;
  badEscapeReason = '';
  /**
   * The decoded PATH as latin1 text: `pathText` from `pathTextStart` on
   * (the scanner's text window itself unless the path held escapes), for
   * native comparisons with the paths of directories.
   */
  pathText = '';
  pathTextStart = 0;
  /** Where the xattrs start (`end` if there are none). */
  xattrsStart = 0;
}

/**
 * Cuts lines into fields. It searches a latin1 copy of (a window of) the
 * input with the engine's native string search, and remembers the next
 * backslash it found: most lines have none at all.
 */
class LineScanner {
  readonly bytes: Uint8Array;
  /** A Buffer over the same bytes, for the few Buffer-only operations. */
  readonly buffer: Buffer;
  readonly inputLength: number;
  /**
   * latin1 text of `bytes[textStart .. textEnd)`, for native searches; never
   * changed by decoding. The window moves up to a line once that is past
   * its middle, so it holds at least 2^27 bytes of every line.
   */
  text = '';
  textStart = 0;
  textEnd = 0;
  /** Offset of the first NUL byte in the input (its length if none). */
  readonly firstNul: number;
  /** The first backslash at or after the last position searched from, or the input's length. */
  nextBackslash = -1;

  constructor(input: Uint8Array) {
    this.bytes = input;
    this.buffer = Buffer.isBuffer(input) ? input : Buffer.from(input.buffer, input.byteOffset, input.length);
    this.inputLength = input.length;
    this.setWindow(0);
    const nul = this.textEnd === this.inputLength ? this.text.indexOf('\0') : this.buffer.indexOf(Char.NUL);
    this.firstNul = nul < 0 ? this.inputLength : nul;
  }

  setWindow(at: number): void {
    this.textStart = at;
    this.textEnd = Math.min(this.inputLength, at + Limit.TEXT_WINDOW);
    this.text = this.buffer.toString('latin1', at, this.textEnd);
  }

  /** The first `byte` at or after `at` that the text window does not hold, or -1 (there is none). */
  findPastWindow(byte: number, at: number): number {
    return this.textEnd === this.inputLength ? -1 : this.buffer.indexOf(byte, Math.max(at, this.textEnd));
  }

  /** The end of the field starting at `at`: the next space, or `lineEnd`. */
  endOfField(at: number, lineEnd: number): number {
    let space = this.text.indexOf(' ', at - this.textStart);
    space = space >= 0 ? space + this.textStart : this.findPastWindow(Char.SPACE, at);
    return space >= 0 && space < lineEnd ? space : lineEnd;
  }

  /** Cut the line starting at `lineStart` into `line`. */
  scan(lineStart: number, line: ScannedLine): void {
    if (lineStart - this.textStart > Limit.TEXT_WINDOW >>> 1 && this.textEnd < this.inputLength) this.setWindow(lineStart);
    const bytes = this.bytes;
    const text = this.text;
    const textStart = this.textStart;
    const fieldStart = line.fieldStart;
    const fieldEnd = line.fieldEnd;
    const plainNumber = line.plainNumber;
    line.start = lineStart;
    let lineEnd = text.indexOf('\n', lineStart - textStart);
    lineEnd = lineEnd >= 0 ? lineEnd + textStart : this.findPastWindow(Char.NEWLINE, lineStart);
    if (lineEnd < 0) lineEnd = this.inputLength;
    line.end = lineEnd;

    // Each field ends at the next space; a missing one is empty, at the line's end.
    let end = text.indexOf(' ', lineStart - textStart) + textStart;
    if (end < textStart || end > lineEnd) end = this.endOfField(lineStart, lineEnd);
    fieldStart[Field.PATH] = lineStart;
    fieldEnd[Field.PATH] = end;
    let at = end < lineEnd ? end + 1 : lineEnd;

    // The numbers are read on the way when they are plain digits followed by
    // a space or the line's end; MODE may start with `@`.
    line.hardLink = false;
    for (let field = Field.SIZE; field <= Field.RDEV; field++) {
      if (field === Field.MODE && bytes[at] === Char.AT && at < lineEnd) {
        line.hardLink = true;
        at++;
      }
      const base = field === Field.MODE ? 8 : 10;
      const digitLimit = Char.ZERO + base;
      let digitsEnd = at;
      let value = 0;
      let byte = bytes[at];
      while (byte >= Char.ZERO && byte < digitLimit) {
        value = value * base + (byte - Char.ZERO);
        byte = bytes[++digitsEnd];
      }
      if (digitsEnd > at && digitsEnd - at <= Limit.PLAIN_DIGITS_MAX && (byte === Char.SPACE || digitsEnd === lineEnd)) {
        plainNumber[field] = value;
        end = digitsEnd;
      } else {
        plainNumber[field] = NOT_PLAIN;
        end = this.endOfField(at, lineEnd);
        fieldStart[field] = at;
        fieldEnd[field] = end;
      }
      at = end < lineEnd ? end + 1 : lineEnd;
    }

    // MTIME: plain when digits, a dot and digits.
    let seconds = 0;
    let secondsEnd = at;
    let byte = bytes[at];
    while (byte >= Char.ZERO && byte <= Char.NINE) {
      seconds = seconds * 10 + (byte - Char.ZERO);
      byte = bytes[++secondsEnd];
    }
    let nanoseconds = 0;
    let nanosecondsEnd = secondsEnd + 1;
    byte = bytes[nanosecondsEnd];
    while (byte >= Char.ZERO && byte <= Char.NINE) {
      nanoseconds = nanoseconds * 10 + (byte - Char.ZERO);
      byte = bytes[++nanosecondsEnd];
    }
    if (
      secondsEnd > at &&
      secondsEnd - at <= Limit.PLAIN_DIGITS_MAX &&
      bytes[secondsEnd] === Char.DOT &&
      nanosecondsEnd > secondsEnd + 1 &&
      nanosecondsEnd - secondsEnd - 1 <= Limit.PLAIN_DIGITS_MAX &&
      (byte === Char.SPACE || nanosecondsEnd === lineEnd)
    ) {
      plainNumber[Field.MTIME] = seconds;
      line.plainNanoseconds = nanoseconds;
      end = nanosecondsEnd;
    } else {
      plainNumber[Field.MTIME] = NOT_PLAIN;
      end = this.endOfField(at, lineEnd);
      fieldStart[Field.MTIME] = at;
      fieldEnd[Field.MTIME] = end;
    }
    at = end < lineEnd ? end + 1 : lineEnd;

    // PAYLOAD, CONTENT, DIGEST: ABSENT when a lone `-`.
    for (let field = Field.PAYLOAD; field <= Field.DIGEST; field++) {
      if (bytes[at] === Char.DASH && (bytes[at + 1] === Char.SPACE || at + 1 === lineEnd)) {
        fieldStart[field] = fieldEnd[field] = ABSENT;
        at = at + 1 < lineEnd ? at + 2 : lineEnd;
      } else {
        end = text.indexOf(' ', at - textStart) + textStart;
        if (end < textStart || end > lineEnd) end = this.endOfField(at, lineEnd);
        fieldStart[field] = at;
        fieldEnd[field] = end;
        at = end < lineEnd ? end + 1 : lineEnd;
      }
    }
    line.xattrsStart = at;

    line.pathText = text;
    line.pathTextStart = lineStart - textStart;
    if (fieldEnd[Field.PATH] > this.textEnd) {
      line.pathText = this.buffer.toString('latin1', lineStart, fieldEnd[Field.PATH]);
      line.pathTextStart = 0;
    }
    let backslash = this.nextBackslash;
    if (backslash < lineStart) backslash = this.findBackslash(lineStart);
    line.holdsEscapes = backslash < at;
    line.badEscapeField = -1;
  }

  /** The first backslash at or after `at` (the input's length if none), remembered in `nextBackslash`. */
  findBackslash(at: number): number {
    let backslash = this.text.indexOf('\\', at - this.textStart);
    backslash = backslash >= 0 ? backslash + this.textStart : this.findPastWindow(Char.BACKSLASH, at);
    if (backslash < 0) backslash = this.inputLength;
    this.nextBackslash = backslash;
    return backslash;
  }

  /** Whether `bytes[start..end)` holds a backslash (as the input had it, before any decoding). */
  hasEscape(start: number, end: number): boolean {
    let backslash = this.nextBackslash;
    if (backslash < start) backslash = this.findBackslash(start);
    return backslash < end;
  }

  /**
   * Decode in place the fields of a line that holds escapes: PATH,
   * PAYLOAD and DIGEST as C strings (they end at a decoded NUL), CONTENT as
   * bytes. Stops at the first invalid escape, which it records for the rules.
   */
  decodeEscapes(line: ScannedLine): void {
    const fieldStart = line.fieldStart;
    const fieldEnd = line.fieldEnd;
    // A hard link's CONTENT and DIGEST are not read at all.
    const lastField = line.hardLink ? Field.PAYLOAD : Field.DIGEST;
    for (const field of [Field.PATH, Field.PAYLOAD, Field.CONTENT, Field.DIGEST]) {
      if (field > lastField) break;
      const start = fieldStart[field];
      if (start === ABSENT || !this.hasEscape(start, fieldEnd[field])) continue;
      try {
        fieldEnd[field] = unescapeInPlace(this.bytes, start, fieldEnd[field], field !== Field.CONTENT);
      } catch (e) {
        if (!(e instanceof UnescapeError)) throw e;
        line.badEscapeField = field;
        line.badEscapeReason = e.message;
        return;
      }
      if (field === Field.PATH) {
        line.pathText = this.buffer.toString('latin1', start, fieldEnd[field]);
        line.pathTextStart = 0;
      }
    }
  }
}

/** The columns of a {@link FlatTree} the parser fills as it reads (declared there, assigned in the constructor). */
type FlatColumns = Pick<
  FlatTree,
  | 'nameStart' | 'nameEnd' | 'linkTo' | 'mode' | 'nlink' | 'uid' | 'gid' | 'rdev' | 'size' | 'mtimeSec' | 'mtimeNsec'
  | 'payloadStart' | 'payloadEnd' | 'contentStart' | 'contentEnd' | 'digest' | 'xattrStart'
>;
interface EntryColumns extends FlatColumns {}

/**
 * The entries read so far, in the columns of a {@link FlatTree} (see there;
 * linkTo may also hold PENDING_LINK for a hard-link line until the links are
 * resolved, and xattrStart has capacity + 1 slots), with what the parser
 * keeps per directory while reading; all grow together.
 */
class EntryColumns {
  capacity: number;
  /** Entries so far, numbered in the order of their lines (the root is 0). */
  count = 0;
  parent: Int32Array;
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

  constructor(capacity: number) {
    // Every column starts empty and is grown to `capacity` by the one resize().
    const i32 = new Int32Array(0);
    const u32 = new Uint32Array(0);
    const f64 = new Float64Array(0);
    this.capacity = 0;
    this.nameStart = this.nameEnd = this.parent = this.linkTo = this.payloadStart = this.payloadEnd = i32;
    this.contentStart = this.contentEnd = this.digest = this.xattrStart = this.lastChild = this.childCount = i32;
    this.mode = this.nlink = this.uid = this.gid = this.mtimeNsec = u32;
    this.rdev = this.size = this.mtimeSec = f64;
    this.unsortedFlag = new Uint8Array(0);
    this.resize(capacity);
  }

  grow(): void {
    this.resize(this.capacity * 2);
  }

  /** Every column at `capacity` entries (xattrStart one more), what it held kept, new room at its default. */
  private resize(capacity: number): void {
    this.capacity = capacity;
    this.nameStart = grownInt32(this.nameStart, capacity);
    this.nameEnd = grownInt32(this.nameEnd, capacity);
    this.parent = grownInt32(this.parent, capacity);
    this.linkTo = grownInt32(this.linkTo, capacity, -1);
    this.mode = grownUint32(this.mode, capacity);
    this.nlink = grownUint32(this.nlink, capacity);
    this.uid = grownUint32(this.uid, capacity);
    this.gid = grownUint32(this.gid, capacity);
    this.rdev = grownFloat64(this.rdev, capacity);
    this.size = grownFloat64(this.size, capacity);
    this.mtimeSec = grownFloat64(this.mtimeSec, capacity);
    this.mtimeNsec = grownUint32(this.mtimeNsec, capacity);
    this.payloadStart = grownInt32(this.payloadStart, capacity);
    this.payloadEnd = grownInt32(this.payloadEnd, capacity);
    this.contentStart = grownInt32(this.contentStart, capacity, -1);
    this.contentEnd = grownInt32(this.contentEnd, capacity, -1);
    this.digest = grownInt32(this.digest, capacity);
    this.xattrStart = grownInt32(this.xattrStart, capacity + 1);
    this.lastChild = grownInt32(this.lastChild, capacity);
    this.childCount = grownInt32(this.childCount, capacity);
    const flags = new Uint8Array(capacity);
    flags.set(this.unsortedFlag);
    this.unsortedFlag = flags;
  }

  growXattrs(): void {
    const capacity = this.xattrCapacity * 2;
    this.xattrCapacity = capacity;
    this.xattrKeyStart = grownInt32(this.xattrKeyStart, capacity);
    this.xattrKeyEnd = grownInt32(this.xattrKeyEnd, capacity);
    this.xattrValueStart = grownInt32(this.xattrValueStart, capacity);
    this.xattrValueEnd = grownInt32(this.xattrValueEnd, capacity);
  }
}

/** `linkTo` of a hard-link entry until the links are resolved (-1 is "not a link"). */
const PENDING_LINK = -2;

/**
 * The rules of the format, and the tree they build. Entries are numbered in
 * the order of their lines (the root, which must come first, is 0); every
 * column is indexed by entry.
 */
class FlatParser {
  readonly pool: Uint8Array;
  /** A Buffer over the same bytes, for the few Buffer-only operations. */
  readonly buffer: Buffer;
  readonly strict: boolean;
  readonly scanner: LineScanner;
  /** The line being read, as the scanner cut it, and its number (from 1). */
  readonly line = new ScannedLine();
  lineNumber = 0;

  /** The tree being built. */
  readonly entries: EntryColumns;

  /**
   * The directories from the root down to the one most recently added or
   * used as a parent (`chainEntry[0 .. chainDepth)`), each with its
   * canonical path (decoded, in latin1; "" for the root) in `chainPath` and
   * that path's length in `chainLength`. Dump files list a directory's
   * entries right after it, so a line's parent is almost always here.
   */
  readonly chainEntry: number[] = [0];
  readonly chainLength: number[] = [0];
  readonly chainPath: string[] = [''];
  chainDepth = 0;

  /** Hard-link entries and their line numbers, in file order. */
  readonly links: number[] = [];
  readonly linkLines: number[] = [];
  /** Per hard link (as in `links`): the entry its target path names; set by resolveLinks(). */
  linkTarget: Int32Array = new Int32Array(0);
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
  /** A digest's bytes while its hex digits are checked. */
  readonly digestBytes = new Uint8Array(64);
  /** Hex digits in a digest: 64, or 128 for SHA-512. */
  readonly digestHex: number;

  constructor(input: Uint8Array, strict: boolean, digestSize: 32 | 64 = 32) {
    this.digestHex = 2 * digestSize;
    this.pool = input;
    this.scanner = new LineScanner(input);
    this.buffer = this.scanner.buffer;
    this.strict = strict;
    // Lines are rarely shorter than 64 bytes; the columns grow if they are.
    this.entries = new EntryColumns(Math.max(64, Math.min(input.length >>> 6, 1 << 20)));
  }

  fail(field: Field | string, reason: string): never {
    throw new DumpParseError(this.lineNumber, typeof field === 'number' ? FIELD_NAMES[field] : field, reason);
  }

  /** The field as written (for messages). */
  fieldText(field: Field): string {
    return printable(this.pool.subarray(this.line.fieldStart[field], this.line.fieldEnd[field]));
  }

  failNumber(field: Field): never {
    this.fail(field, `invalid number '${this.fieldText(field)}'`);
  }

  /** The invalid escape the scanner found in `field`. */
  failEscape(field: Field): never {
    this.fail(field, this.line.badEscapeReason);
  }

  /** Decode `pool[start..end)` (an xattr's name or value) in place; returns the decoded end. */
  decodeXattr(start: number, end: number, cstring: boolean): number {
    try {
      return unescapeInPlace(this.pool, start, end, cstring);
    } catch (e) {
      if (e instanceof UnescapeError) this.fail('xattr', e.message);
      throw e;
    }
  }

  /** A numeric field that is not plain digits, read by the `strtoull` emulation: INVALID if it is no number. */
  readNumber(field: Field, base: number): U64 {
    return parseU64(this.pool, this.line.fieldStart[field], this.line.fieldEnd[field], base);
  }

  /** Read the input line by line: the scanner cuts each line into fields (and decodes escapes), storeLine() checks and stores them. */
  run(): void {
    const scanner = this.scanner;
    const line = this.line;
    const inputLength = this.pool.length;
    let lineStart = 0;
    while (lineStart < inputLength) {
      this.lineNumber++;
      scanner.scan(lineStart, line);
      if (line.holdsEscapes) scanner.decodeEscapes(line);
      this.storeLine();
      lineStart = line.end + 1;
    }
  }

  /** A hard link: its target's path, resolved once the whole file is read. */
  storeHardLink(entry: number): void {
    const entries = this.entries;
    const line = this.line;
    if ((entries.mode[entry] & Mode.TYPE) === Mode.DIR) this.fail(Field.MODE, 'directories cannot be hard-linked');
    if (line.badEscapeField === Field.PAYLOAD) this.failEscape(Field.PAYLOAD);
    entries.linkTo[entry] = PENDING_LINK;
    entries.payloadStart[entry] = line.fieldStart[Field.PAYLOAD];
    entries.payloadEnd[entry] = line.fieldEnd[Field.PAYLOAD];
    entries.contentStart[entry] = entries.contentEnd[entry] = entries.digest[entry] = -1;
    this.links.push(entry);
    this.linkLines.push(this.lineNumber);
  }

  /**
   * Check the scanned line in the reference's order (which decides which
   * error a bad line gets) and store it: first what every line has (its
   * path, its mode, its place in the tree), then either a hard link's
   * target or an inode's fields and xattrs.
   *
   * Numbers are `number` below 2^53 (all plain ones) and `bigint` above, so
   * each use asks `typeof` first and leaves the rest to a helper. The
   * Uint32Array columns keep the low 32 bits of a number themselves.
   */
  storeLine(): void {
    const entries = this.entries;
    const line = this.line;
    const lineEnd = line.end;
    if (lineEnd === this.pool.length && this.strict) this.fail('line', 'missing newline at the end of the file');
    const firstNul = this.scanner.firstNul;
    if (firstNul < lineEnd) this.fail('line', `NUL byte at column ${firstNul - line.start + 1}`);

    const pathStart = line.fieldStart[Field.PATH];
    const pathEnd = line.fieldEnd[Field.PATH];
    if (line.badEscapeField === Field.PATH) this.failEscape(Field.PATH);
    if (pathEnd === pathStart) this.fail(Field.PATH, 'empty path');

    let modeNumber: U64 = line.plainNumber[Field.MODE];
    if (modeNumber === NOT_PLAIN) modeNumber = this.readNumber(Field.MODE, 8);
    if (modeNumber === INVALID) this.failNumber(Field.MODE);
    const mode = typeof modeNumber === 'number' ? modeNumber >>> 0 : low32(modeNumber);
    const type = mode & Mode.TYPE;
    if (((FileTypes.VALID >>> (type >>> 12)) & 1) === 0) this.fail(Field.MODE, `invalid mode ${mode.toString(8)}: no valid file type`);
    const entry = this.addToTree(pathStart, pathEnd, mode, line.hardLink);
    if (line.hardLink) return this.storeHardLink(entry);

    const fieldStart = line.fieldStart;
    const fieldEnd = line.fieldEnd;
    const plainNumber = line.plainNumber;
    let size: U64 = plainNumber[Field.SIZE];
    if (size === NOT_PLAIN) size = this.readNumber(Field.SIZE, 10);
    if (size === INVALID) this.failNumber(Field.SIZE);
    let nlink: U64 = plainNumber[Field.NLINK];
    if (nlink === NOT_PLAIN) nlink = this.readNumber(Field.NLINK, 10);
    if (nlink === INVALID) this.failNumber(Field.NLINK);
    let uid: U64 = plainNumber[Field.UID];
    if (uid === NOT_PLAIN) uid = this.readNumber(Field.UID, 10);
    if (uid === INVALID) this.failNumber(Field.UID);
    // The reference tests the wrong variable after reading GID and RDEV: an
    // invalid GID or RDEV is an error only when UID is 0; otherwise it reads as 0.
    let gid: U64 = plainNumber[Field.GID];
    if (gid === NOT_PLAIN) gid = this.readNumber(Field.GID, 10);
    if (gid === INVALID) {
      if (uid === 0) this.failNumber(Field.GID);
      gid = 0;
    }
    let rdev: U64 = plainNumber[Field.RDEV];
    if (rdev === NOT_PLAIN) rdev = this.readNumber(Field.RDEV, 10);
    if (rdev === INVALID) {
      if (uid === 0) this.failNumber(Field.RDEV);
      rdev = 0;
    }
    let seconds: U64 = plainNumber[Field.MTIME];
    let nanoseconds: U64 = line.plainNanoseconds;
    if (seconds === NOT_PLAIN) {
      // SECONDS.NANOSECONDS, split at the first dot.
      const mtimeStart = fieldStart[Field.MTIME];
      const mtimeEnd = fieldEnd[Field.MTIME];
      let dot = mtimeStart;
      while (dot < mtimeEnd && this.pool[dot] !== Char.DOT) dot++;
      seconds = parseU64(this.pool, mtimeStart, dot, 10);
      if (seconds === INVALID) this.fail(Field.MTIME, `invalid seconds in '${this.fieldText(Field.MTIME)}'`);
      nanoseconds = parseU64(this.pool, dot < mtimeEnd ? dot + 1 : dot, mtimeEnd, 10);
      if (nanoseconds === INVALID) this.fail(Field.MTIME, `invalid nanoseconds in '${this.fieldText(Field.MTIME)}'`);
    }

    // PAYLOAD, CONTENT and DIGEST, decoded by the scanner: start and end ABSENT for `-`.
    const payloadStart = fieldStart[Field.PAYLOAD];
    const payloadEnd = fieldEnd[Field.PAYLOAD];
    if (line.badEscapeField === Field.PAYLOAD) this.failEscape(Field.PAYLOAD);
    const contentStart = fieldStart[Field.CONTENT];
    const contentEnd = fieldEnd[Field.CONTENT];
    if (line.badEscapeField === Field.CONTENT) this.failEscape(Field.CONTENT);
    if (contentStart !== ABSENT && contentEnd - contentStart !== size) {
      this.fail(Field.CONTENT, `content is ${contentEnd - contentStart} bytes but size is ${u64Text(size)}`);
    }
    const digestStart = fieldStart[Field.DIGEST];
    const digestEnd = fieldEnd[Field.DIGEST];
    if (line.badEscapeField === Field.DIGEST) this.failEscape(Field.DIGEST);

    let fileSize = type === Mode.LNK ? 0 : typeof size === 'number' ? size : Number(size);
    let deviceNumber = 0;
    if (type === Mode.CHR || type === Mode.BLK) {
      deviceNumber = typeof rdev === 'number' ? rdev : bigDeviceNumber(rdev);
    } else if (this.strict && rdev !== 0) {
      this.fail(Field.RDEV, `device number ${u64Text(rdev)} on a file that is not a device`);
    }

    let inlineStart = -1;
    if (type === Mode.LNK) {
      const targetLength = payloadEnd - payloadStart;
      if (payloadStart === ABSENT || targetLength === 0) this.fail(Field.PAYLOAD, 'symlink without a target');
      if (targetLength >= Limit.PATH_MAX) {
        this.fail(Field.PAYLOAD, `symlink target of ${targetLength} bytes is too long (the limit is ${Limit.PATH_MAX - 1})`);
      }
      fileSize = targetLength;
      if (this.strict) {
        if (size !== targetLength) this.fail(Field.SIZE, `symlink size ${u64Text(size)} differs from its target's length ${targetLength}`);
        if (contentStart !== ABSENT && contentEnd > contentStart) this.fail(Field.CONTENT, 'a symlink cannot have content');
      }
    } else {
      if (payloadStart !== ABSENT && payloadEnd - payloadStart >= Limit.PATH_MAX) {
        this.fail(Field.PAYLOAD, `payload of ${payloadEnd - payloadStart} bytes is too long (the limit is ${Limit.PATH_MAX - 1})`);
      }
      if (contentStart !== ABSENT) {
        const contentLength = contentEnd - contentStart;
        if (contentLength > Limit.INLINE_CONTENT_MAX) {
          this.fail(Field.CONTENT, `inline content of ${contentLength} bytes exceeds the maximum of ${Limit.INLINE_CONTENT_MAX}`);
        }
        if (contentLength > 0) inlineStart = contentStart;
        fileSize = contentLength;
      }
    }
    // A regular file whose data lies in the object store.
    const external = type === Mode.REG && inlineStart < 0 && size !== 0;
    if (external && typeof size === 'bigint' && size > BigInt(MAX_FILE_SIZE) && this.tooBigLine === 0) {
      this.tooBigLine = this.lineNumber;
      this.tooBigSize = u64Text(size);
    }

    // DIGEST: its first 64 characters (128 for SHA-512) as hex, as the
    // reference reads it, decoded to 32 (64) bytes where they stand (left as
    // they were otherwise).
    let digest = -1;
    if (digestStart !== ABSENT) {
      const bytes = this.pool;
      const digestBytes = this.digestBytes;
      const want = this.digestHex;
      let hexDigits = 0;
      if (digestEnd - digestStart >= want) {
        for (; hexDigits < want; hexDigits += 2) {
          const high = HEX_DIGIT[bytes[digestStart + hexDigits]];
          const low = HEX_DIGIT[bytes[digestStart + hexDigits + 1]];
          if ((high | low) < 0) break;
          digestBytes[hexDigits >>> 1] = (high << 4) | low;
        }
      }
      if (hexDigits === want) {
        bytes.set(want === 64 ? digestBytes.subarray(0, 32) : digestBytes, digestStart);
        digest = digestStart;
      }
      // A digest that is not 64 hex digits leaves the reference with
      // uninitialized bytes; that only matters where the image uses it.
      if (digest < 0 && external) {
        this.fail(Field.DIGEST, `invalid fs-verity digest '${printable(this.pool.subarray(digestStart, digestEnd))}': expected ${want} hex digits`);
      }
    }

    entries.size[entry] = fileSize;
    entries.nlink[entry] = typeof nlink === 'number' ? nlink : low32(nlink);
    entries.uid[entry] = typeof uid === 'number' ? uid : low32(uid);
    entries.gid[entry] = typeof gid === 'number' ? gid : low32(gid);
    entries.rdev[entry] = deviceNumber;
    entries.mtimeSec[entry] = typeof seconds === 'number' ? seconds : bigSeconds(seconds);
    entries.mtimeNsec[entry] = typeof nanoseconds === 'number' ? nanoseconds : low32(nanoseconds);
    entries.payloadStart[entry] = payloadStart;
    entries.payloadEnd[entry] = payloadEnd;
    entries.contentStart[entry] = inlineStart;
    entries.contentEnd[entry] = inlineStart < 0 ? -1 : contentEnd;
    entries.digest[entry] = digest;

    const xattrsLength = line.end - line.xattrsStart;
    if (xattrsLength > Limit.XATTR_TEXT_MAX) {
      this.fail('xattrs', `${xattrsLength} bytes of xattrs on one line exceed the maximum of ${Limit.XATTR_TEXT_MAX}`);
    }
    if (xattrsLength > 0) this.storeXattrs(line.xattrsStart, line.end);
  }

  /** The xattrs `KEY=VALUE ...` of the entry just added, from `pool[start..end)`. */
  storeXattrs(start: number, end: number): void {
    const entries = this.entries;
    const bytes = this.pool;
    const scanner = this.scanner;
    const first = entries.xattrCount;
    /** Space the entry's xattrs take, counted as the reference counts it. */
    let space = 0;
    /** Name (latin1) -> xattr, once the entry has many. */
    let byName: Map<string, number> | null = null;
    let at = start;
    while (at < end) {
      const tokenStart = at;
      let equals = -1;
      let tokenEnd = at;
      for (; tokenEnd < end; tokenEnd++) {
        const byte = bytes[tokenEnd];
        if (byte === Char.SPACE) break;
        if (byte === Char.EQUALS && equals < 0) equals = tokenEnd;
      }
      at = tokenEnd < end ? tokenEnd + 1 : end;
      if (equals < 0) this.fail('xattr', `missing '=' in '${printable(bytes.subarray(tokenStart, tokenEnd))}'`);

      // The name is a C string, so it is empty when it starts with an escaped
      // NUL; the message shows the token as written, so keep that first.
      let emptyNameToken = '';
      if (
        equals === tokenStart ||
        (equals - tokenStart >= 4 && bytes[tokenStart] === Char.BACKSLASH && bytes[tokenStart + 1] === Char.X && bytes[tokenStart + 2] === Char.ZERO && bytes[tokenStart + 3] === Char.ZERO)
      ) {
        emptyNameToken = printable(bytes.subarray(tokenStart, tokenEnd));
      }
      const nameStart = tokenStart;
      const nameEnd = scanner.hasEscape(nameStart, equals) ? this.decodeXattr(nameStart, equals, true) : equals;
      const valueStart = equals + 1;
      const valueEnd = scanner.hasEscape(valueStart, tokenEnd) ? this.decodeXattr(valueStart, tokenEnd, false) : tokenEnd;
      const nameLength = nameEnd - nameStart;
      const valueLength = valueEnd - valueStart;
      if (nameLength === 0) this.fail('xattr', `empty xattr name in '${emptyNameToken}'`);
      if (nameLength > Limit.XATTR_NAME_MAX) this.fail('xattr', `xattr name of ${nameLength} bytes exceeds the maximum of ${Limit.XATTR_NAME_MAX}`);
      if (valueLength > Limit.XATTR_VALUE_MAX) this.fail('xattr', `xattr value of ${valueLength} bytes exceeds the maximum of ${Limit.XATTR_VALUE_MAX}`);

      // Setting a name again drops the old value, moving the last xattr into its slot.
      const keyStart = entries.xattrKeyStart;
      const keyEnd = entries.xattrKeyEnd;
      const valueStarts = entries.xattrValueStart;
      const valueEnds = entries.xattrValueEnd;
      if (byName === null && entries.xattrCount - first >= 16) {
        byName = new Map();
        for (let xattr = first; xattr < entries.xattrCount; xattr++) byName.set(this.buffer.toString('latin1', keyStart[xattr], keyEnd[xattr]), xattr);
      }
      let previous = -1;
      const nameText = byName !== null ? this.buffer.toString('latin1', nameStart, nameEnd) : '';
      if (byName !== null) {
        previous = byName.get(nameText) ?? -1;
      } else {
        for (let xattr = first; xattr < entries.xattrCount; xattr++) {
          if (compareBytes(bytes, keyStart[xattr], keyEnd[xattr], bytes, nameStart, nameEnd) === 0) {
            previous = xattr;
            break;
          }
        }
      }
      if (previous >= 0) {
        const removed = Limit.XATTR_ENTRY_OVERHEAD + keyEnd[previous] - keyStart[previous] + valueEnds[previous] - valueStarts[previous];
        const last = entries.xattrCount - 1;
        if (previous !== last) {
          keyStart[previous] = keyStart[last];
          keyEnd[previous] = keyEnd[last];
          valueStarts[previous] = valueStarts[last];
          valueEnds[previous] = valueEnds[last];
          if (byName !== null) byName.set(this.buffer.toString('latin1', keyStart[previous], keyEnd[previous]), previous);
        }
        entries.xattrCount = last;
        if (byName !== null) byName.delete(nameText);
        space = entries.xattrCount > first ? space - removed : 0;
      }
      const needed = Limit.XATTR_ENTRY_OVERHEAD + nameLength + valueLength + (entries.xattrCount === first ? Limit.XATTR_HEADER : 0);
      if (space + needed > Limit.XATTR_SPACE_MAX) {
        this.fail('xattr', `xattrs of this file exceed ${Limit.XATTR_SPACE_MAX} bytes (at '${printable(bytes.subarray(nameStart, nameEnd))}')`);
      }
      if (entries.xattrCount === entries.xattrCapacity) entries.growXattrs();
      const xattr = entries.xattrCount++;
      entries.xattrKeyStart[xattr] = nameStart;
      entries.xattrKeyEnd[xattr] = nameEnd;
      entries.xattrValueStart[xattr] = valueStart;
      entries.xattrValueEnd[xattr] = valueEnd;
      if (byName !== null) byName.set(nameText, xattr);
      space += needed;
    }
  }

  /** The `index` key of name `pool[start..end)` in directory `dir`. */
  key(dir: number, start: number, end: number): string {
    return `${dir}/${this.buffer.toString('latin1', start, end)}`;
  }

  /** The entry named `pool[start..end)` in directory `dir`, or -1 (while reading). */
  findChild(dir: number, start: number, end: number): number {
    const entries = this.entries;
    let index = this.index;
    if (index === null) {
      index = new Map();
      for (let entry = 1; entry < entries.count; entry++) index.set(this.key(entries.parent[entry], entries.nameStart[entry], entries.nameEnd[entry]), entry);
      this.index = index;
    }
    return index.get(this.key(dir, start, end)) ?? -1;
  }

  isDir(entry: number): boolean {
    const entries = this.entries;
    return entries.linkTo[entry] === -1 && (entries.mode[entry] & Mode.TYPE) === Mode.DIR;
  }

  /**
   * Put the entry of path `pool[pathStart..pathEnd)` into the tree as the
   * reference does, or fail as it would. Returns the new entry, with its
   * name, parent, mode and xattr start set.
   */
  addToTree(pathStart: number, pathEnd: number, mode: number, hardLink: boolean): number {
    const entries = this.entries;
    const bytes = this.pool;
    if (pathEnd - pathStart === 1 && bytes[pathStart] === Char.SLASH) {
      if ((mode & Mode.TYPE) !== Mode.DIR) this.fail(Field.PATH, 'the root must be a directory');
      if (entries.count > 0) this.fail(Field.PATH, 'a second root directory');
      this.newEntry(0, 0, -1, mode);
      this.chainDepth = 1;
      return 0;
    }
    if (entries.count === 0) this.fail(Field.PATH, `'${printable(bytes.subarray(pathStart, pathEnd))}' comes before the root directory '/'`);

    // The parent: the deepest directory on the chain whose path, and a '/',
    // start this path, if the rest (the name) holds no further '/'. Any
    // other path is walked as the reference walks it.
    const chainLength = this.chainLength;
    const chainPath = this.chainPath;
    const pathText = this.line.pathText;
    const textOffset = this.line.pathTextStart - pathStart;
    let depth = this.chainDepth - 1;
    for (; depth >= 0; depth--) {
      const dirEnd = pathStart + chainLength[depth];
      if (dirEnd < pathEnd && bytes[dirEnd] === Char.SLASH && pathText.startsWith(chainPath[depth], pathStart + textOffset)) break;
    }
    let nameStart = pathStart + chainLength[depth < 0 ? 0 : depth] + 1;
    const slash = pathText.indexOf('/', nameStart + textOffset);
    if (slash >= 0 && slash - textOffset < pathEnd) depth = -1;
    const canonical = depth >= 0;
    if (!canonical) {
      nameStart = this.walkToParent(pathStart, pathEnd);
      depth = this.chainDepth - 1;
    }
    const parent = this.chainEntry[depth];

    const nameLength = pathEnd - nameStart;
    if (nameLength === 1 && bytes[nameStart] === Char.DOT) this.fail(Field.PATH, `invalid name '.' in '${printable(bytes.subarray(pathStart, pathEnd))}'`);
    if (nameLength === 2 && bytes[nameStart] === Char.DOT && bytes[nameStart + 1] === Char.DOT) {
      this.fail(Field.PATH, `invalid name '..' in '${printable(bytes.subarray(pathStart, pathEnd))}'`);
    }
    if (nameLength === 0) this.fail(Field.PATH, `empty file name in '${printable(bytes.subarray(pathStart, pathEnd))}'`);
    if (nameLength > Limit.NAME_MAX) this.fail(Field.PATH, `file name of ${nameLength} bytes exceeds the maximum of ${Limit.NAME_MAX}`);

    const lastSibling = entries.lastChild[parent];
    if (lastSibling !== 0) {
      if (entries.unsortedFlag[parent] === 0) {
        // compareBytes() with the name of the last sibling, written out: it runs for nearly every line.
        const siblingStart = entries.nameStart[lastSibling];
        const siblingLength = entries.nameEnd[lastSibling] - siblingStart;
        const common = nameLength < siblingLength ? nameLength : siblingLength;
        let same = 0;
        while (same < common && bytes[nameStart + same] === bytes[siblingStart + same]) same++;
        const order = same < common ? bytes[nameStart + same] - bytes[siblingStart + same] : nameLength - siblingLength;
        if (order <= 0) {
          if (order === 0 || this.findChild(parent, nameStart, pathEnd) >= 0) this.fail(Field.PATH, `'${printable(bytes.subarray(pathStart, pathEnd))}' already exists`);
          entries.unsortedFlag[parent] = 1;
          this.unsorted.push(parent);
        }
      } else if (this.findChild(parent, nameStart, pathEnd) >= 0) {
        this.fail(Field.PATH, `'${printable(bytes.subarray(pathStart, pathEnd))}' already exists`);
      }
    }

    const entry = this.newEntry(nameStart, pathEnd, parent, mode);
    entries.lastChild[parent] = entry;
    if (this.index !== null) this.index.set(this.key(parent, nameStart, pathEnd), entry);

    if ((mode & Mode.TYPE) === Mode.DIR && !hardLink) {
      // The next lines are most likely this directory's entries.
      this.chainEntry[depth + 1] = entry;
      chainLength[depth + 1] = chainLength[depth] + 1 + nameLength;
      chainPath[depth + 1] = canonical
        ? pathText.substring(pathStart + textOffset, pathEnd + textOffset)
        : `${chainPath[depth]}/${pathText.substring(nameStart + textOffset, pathEnd + textOffset)}`;
      this.chainDepth = depth + 2;
    }
    return entry;
  }

  newEntry(nameStart: number, nameEnd: number, parent: number, mode: number): number {
    const entries = this.entries;
    if (entries.count === entries.capacity) entries.grow();
    const entry = entries.count++;
    if (parent >= 0) entries.childCount[parent]++;
    entries.nameStart[entry] = nameStart;
    entries.nameEnd[entry] = nameEnd;
    entries.parent[entry] = parent;
    entries.mode[entry] = mode;
    entries.linkTo[entry] = -1;
    entries.xattrStart[entry] = entries.xattrCount;
    return entry;
  }

  /**
   * The parent of `pool[pathStart..pathEnd)` found the way the reference
   * finds it: runs of '/' skipped, every directory on the way must exist.
   * The directories walked become the chain; returns where the name starts
   * (after the last '/', so empty after a trailing one).
   */
  walkToParent(pathStart: number, pathEnd: number): number {
    const bytes = this.pool;
    const walked: number[] = [0];
    /** Start and end of each name walked through. */
    const names: number[] = [];
    let dir = 0;
    let throughNonDir = false;
    let at = pathStart;
    while (at < pathEnd && bytes[at] === Char.SLASH) at++;
    let partStart = at;
    for (; at < pathEnd; at++) {
      if (bytes[at] !== Char.SLASH) continue;
      if (at > partStart) {
        const found = throughNonDir ? -1 : this.findChild(dir, partStart, at);
        if (found < 0) this.fail(Field.PATH, `parent directory missing for '${printable(bytes.subarray(pathStart, pathEnd))}'`);
        if (!this.isDir(found)) {
          throughNonDir = true;
        } else {
          dir = found;
          walked.push(found);
          names.push(partStart, at);
        }
      }
      partStart = at + 1;
    }
    if (throughNonDir) this.fail(Field.PATH, `parent of '${printable(bytes.subarray(pathStart, pathEnd))}' is not a directory`);

    let path = '';
    for (let depth = 1; depth < walked.length; depth++) {
      path = `${path}/${this.buffer.toString('latin1', names[2 * depth - 2], names[2 * depth - 1])}`;
      this.chainEntry[depth] = walked[depth];
      this.chainLength[depth] = path.length;
      this.chainPath[depth] = path;
    }
    this.chainDepth = walked.length;
    return partStart;
  }

  finish(): FlatTree {
    const entries = this.entries;
    const count = entries.count;
    if (count === 0) {
      throw new DumpParseError(Math.max(this.lineNumber, 1), 'path', "no entries: a dump file needs at least the root directory '/'");
    }
    const bytes = this.pool;
    const parent = entries.parent;
    const nameStart = entries.nameStart;
    const nameEnd = entries.nameEnd;

    // Children in CSR form, placed in line order, which is name order
    // except in the directories whose names came out of order. One pass: a
    // parent comes before its entries, so its start is known when they come;
    // `nextSlot` turns from child counts into the next free slot of each directory.
    const childStart = new Int32Array(count + 1);
    const children = new Int32Array(Math.max(count - 1, 1));
    const nextSlot = entries.childCount;
    let nextStart = nextSlot[0];
    nextSlot[0] = 0;
    for (let entry = 1; entry < count; entry++) {
      children[nextSlot[parent[entry]]++] = entry;
      childStart[entry] = nextStart;
      const childCount = nextSlot[entry];
      nextSlot[entry] = nextStart;
      nextStart += childCount;
    }
    childStart[count] = nextStart;
    for (const dir of this.unsorted) {
      children.subarray(childStart[dir], childStart[dir + 1]).sort((one, other) => compareBytes(bytes, nameStart[one], nameEnd[one], bytes, nameStart[other], nameEnd[other]));
    }

    if (this.links.length > 0) this.resolveLinks(childStart, children);

    // What the reference refuses only when writing the image, after the
    // hard links are found (a cycle among them is found later still).
    if (this.tooBigLine !== 0) {
      this.lineNumber = this.tooBigLine;
      this.fail(Field.SIZE, `file of ${this.tooBigSize} bytes is too big for an image (the limit is ${MAX_FILE_SIZE})`);
    }
    if (this.links.length > 0) this.followLinks();

    if (entries.xattrStart.length < count + 1) entries.grow();
    entries.xattrStart[count] = entries.xattrCount;
    return {
      count,
      pool: bytes,
      childStart,
      children,
      nameStart,
      nameEnd,
      linkTo: entries.linkTo,
      mode: entries.mode,
      nlink: entries.nlink,
      uid: entries.uid,
      gid: entries.gid,
      rdev: entries.rdev,
      size: entries.size,
      mtimeSec: entries.mtimeSec,
      mtimeNsec: entries.mtimeNsec,
      payloadStart: entries.payloadStart,
      payloadEnd: entries.payloadEnd,
      contentStart: entries.contentStart,
      contentEnd: entries.contentEnd,
      digest: entries.digest,
      digestSize: this.digestHex / 2,
      xattrStart: entries.xattrStart,
      xattrKeyStart: entries.xattrKeyStart,
      xattrKeyEnd: entries.xattrKeyEnd,
      xattrValueStart: entries.xattrValueStart,
      xattrValueEnd: entries.xattrValueEnd,
    };
  }

  /** Find each hard link's target by path, last line first as the reference does (into `linkTarget`). */
  resolveLinks(childStart: Int32Array, children: Int32Array): void {
    const entries = this.entries;
    const bytes = this.pool;
    const links = this.links;
    const linkTarget = new Int32Array(links.length);
    for (let link = links.length - 1; link >= 0; link--) {
      const entry = links[link];
      this.lineNumber = this.linkLines[link];
      const pathStart = entries.payloadStart[entry];
      const pathEnd = entries.payloadEnd[entry];
      if (pathStart < 0) this.fail(Field.PAYLOAD, 'hard link without a target path');
      const target = this.lookup(childStart, children, pathStart, pathEnd);
      if (target < 0) this.fail(Field.PAYLOAD, `no target at '${printable(bytes.subarray(pathStart, pathEnd))}' for the hard link`);
      if (target === entry) this.fail(Field.PAYLOAD, `hard link to itself ('${printable(bytes.subarray(pathStart, pathEnd))}')`);
      linkTarget[link] = target;
    }
    this.linkTarget = linkTarget;
  }

  /** Point every hard link at the entry its chain of links ends at, refusing cycles. */
  followLinks(): void {
    const entries = this.entries;
    const bytes = this.pool;
    const links = this.links;
    const linkTarget = this.linkTarget;
    /** Entry -> its index in `links`. */
    const linkOf = new Map<number, number>();
    for (let link = 0; link < links.length; link++) linkOf.set(links[link], link);
    const enum State {
      NOT_YET,
      BEING_FOLLOWED,
      DONE,
    }
    const state = new Uint8Array(links.length);
    /** Per link, once DONE: the entry that is no link where its chain ends. */
    const finalTarget = new Int32Array(links.length);
    const followed: number[] = [];
    for (let first = 0; first < links.length; first++) {
      followed.length = 0;
      let link = first;
      let target: number;
      for (;;) {
        if (state[link] === State.DONE) {
          target = finalTarget[link];
          break;
        }
        if (state[link] === State.BEING_FOLLOWED) {
          this.lineNumber = this.linkLines[link];
          const entry = links[link];
          this.fail(Field.PAYLOAD, `hard link cycle through '${printable(bytes.subarray(entries.payloadStart[entry], entries.payloadEnd[entry]))}'`);
        }
        state[link] = State.BEING_FOLLOWED;
        followed.push(link);
        const next = linkTarget[link];
        if (entries.linkTo[next] === -1) {
          target = next;
          break;
        }
        link = linkOf.get(next)!;
      }
      for (const done of followed) {
        state[done] = State.DONE;
        finalTarget[done] = target;
      }
    }
    for (let link = 0; link < links.length; link++) {
      const entry = links[link];
      entries.linkTo[entry] = finalTarget[link];
      entries.payloadStart[entry] = entries.payloadEnd[entry] = -1;
    }
  }

  /** The entry at a hard link's target path (runs of '/' skipped, empty parts ignored), or -1. */
  lookup(childStart: Int32Array, children: Int32Array, start: number, end: number): number {
    const entries = this.entries;
    const bytes = this.pool;
    let node = 0;
    let nodeIsDir = true;
    let partStart = start;
    for (let at = start; at <= end; at++) {
      if (at < end && bytes[at] !== Char.SLASH) continue;
      if (at > partStart) {
        if (!nodeIsDir) return -1;
        let low = childStart[node];
        let high = childStart[node + 1];
        let found = -1;
        while (low < high) {
          const middle = (low + high) >>> 1;
          const child = children[middle];
          const order = compareBytes(bytes, partStart, at, bytes, entries.nameStart[child], entries.nameEnd[child]);
          if (order === 0) {
            found = child;
            break;
          }
          if (order < 0) high = middle;
          else low = middle + 1;
        }
        if (found < 0) return -1;
        node = found;
        nodeIsDir = this.isDir(found);
      }
      partStart = at + 1;
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
  const parser = new FlatParser(input, opts.strict === true, opts.digestSize);
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
