/**
 * Byte-level escaping shared by the dump-file parser and writer
 * (composefs-dump(5)).
 *
 * Writer side: a byte is printed as itself when it is a graphic ASCII
 * character (0x21..0x7e), except `\` (printed `\\`) and, in xattr fields,
 * `=` (printed `\x3d`). Newline, carriage return and tab use `\n`, `\r`,
 * `\t`; every other byte is `\xHH` with lowercase hex digits. A field whose
 * whole value is a single `-` is printed `\x2d` where `-` would otherwise
 * mean "none".
 *
 * Parser side: `\\`, `\n`, `\r`, `\t` and `\xHH` (either case) are
 * understood; any other escape is an error.
 */

/** Escape `=` too (xattr names and values). */
export const ESCAPE_EQUAL = 1;
/** A value that is exactly `-` is written `\x2d` (optional fields). */
export const ESCAPE_LONE_DASH = 2;
/** Print a space as itself (`composefs-info ls` paths); otherwise it is `\x20`. */
export const ESCAPE_KEEP_SPACE = 4;

const HEX = Buffer.from('0123456789abcdef', 'latin1');

/** Per byte: 0 = printed as is, 1 = escaped, 2 = `=` (escaped with ESCAPE_EQUAL), 3 = space (kept with ESCAPE_KEEP_SPACE). */
const BYTE_CLASS = new Uint8Array(256).fill(1);
for (let c = 0x21; c <= 0x7e; c++) BYTE_CLASS[c] = 0;
BYTE_CLASS[0x5c] = 1;
BYTE_CLASS[0x3d] = 2;
BYTE_CLASS[0x20] = 3;

/**
 * The one growable output buffer of the dump format: the dump writer, the
 * printers that walk an image, and escaping for messages all append here.
 * Appends write byte by byte into `buf` (no temporary views): most of a
 * dump is printed before V8 has optimised anything, where a view costs an
 * allocation.
 */
export class ByteSink {
  buf: Buffer;
  len = 0;

  constructor(initialCapacity = 1 << 16) {
    this.buf = Buffer.allocUnsafe(Math.max(16, initialCapacity));
  }

  /** Make room for `extra` more bytes (callers may then write `buf` directly and advance `len`). */
  ensure(extra: number): void {
    const needed = this.len + extra;
    if (needed <= this.buf.length) return;
    let capacity = this.buf.length * 2;
    while (capacity < needed) capacity *= 2;
    const bigger = Buffer.allocUnsafe(capacity);
    this.buf.copy(bigger, 0, 0, this.len);
    this.buf = bigger;
  }

  byte(value: number): void {
    if (this.len >= this.buf.length) this.ensure(1);
    this.buf[this.len++] = value;
  }

  /** Append an ASCII string (numbers, separators). */
  ascii(text: string): void {
    this.ensure(text.length);
    this.len += this.buf.write(text, this.len, 'latin1');
  }

  bytes(src: Uint8Array, start = 0, end = src.length): void {
    this.ensure(end - start);
    const out = this.buf;
    let at = this.len;
    for (let i = start; i < end; i++) out[at++] = src[i];
    this.len = at;
  }

  /** Append a copy of this sink's own bytes [start, start + length) (a native copy, no view). */
  repeat(start: number, length: number): void {
    this.ensure(length);
    this.buf.copyWithin(this.len, start, start + length);
    this.len += length;
  }

  /** Append `src[start..end)` escaped for a dump-file field (`flags`: ESCAPE_*). */
  escaped(src: Uint8Array, flags: number, start = 0, end = src.length): void {
    if ((flags & ESCAPE_LONE_DASH) !== 0 && end - start === 1 && src[start] === 0x2d) {
      this.ascii('\\x2d');
      return;
    }
    this.ensure(4 * (end - start));
    const keepEqual = (flags & ESCAPE_EQUAL) === 0;
    const keepSpace = (flags & ESCAPE_KEEP_SPACE) !== 0;
    const out = this.buf;
    let at = this.len;
    for (let i = start; i < end; i++) {
      const c = src[i];
      const kind = BYTE_CLASS[c];
      if (kind === 0 || (kind === 2 && keepEqual) || (kind === 3 && keepSpace)) {
        out[at++] = c;
        continue;
      }
      out[at++] = 0x5c;
      if (c === 0x5c) out[at++] = 0x5c;
      else if (c === 0x0a) out[at++] = 0x6e;
      else if (c === 0x0d) out[at++] = 0x72;
      else if (c === 0x09) out[at++] = 0x74;
      else {
        out[at++] = 0x78;
        out[at++] = HEX[c >> 4];
        out[at++] = HEX[c & 15];
      }
    }
    this.len = at;
  }

  /** Hand the written bytes out and start over with a fresh buffer. */
  take(): Buffer {
    const written = this.buf.subarray(0, this.len);
    this.buf = Buffer.allocUnsafe(Math.max(1 << 16, Math.min(this.buf.length, 1 << 20)));
    this.len = 0;
    return written;
  }
}

/** Write lowercase hex of `src` at out[at..] and return the new end. */
export function putHex(out: Buffer, at: number, src: Uint8Array): number {
  for (let i = 0; i < src.length; i++) {
    out[at++] = HEX[src[i] >> 4];
    out[at++] = HEX[src[i] & 15];
  }
  return at;
}

/** One value escaped as the dump writer would (`flags`: ESCAPE_*), as a string: for messages, listings and tests. */
export function escapeField(value: Uint8Array, flags = 0): string {
  const sink = new ByteSink(value.length * 4 + 8);
  sink.escaped(value, flags);
  return sink.buf.toString('latin1', 0, sink.len);
}

/** Value of each byte as a hex digit (either case), or -1: one table for the unescaper and the digest reader. */
export const HEX_DIGIT = new Int8Array(256).fill(-1);
for (let c = 0; c < 10; c++) HEX_DIGIT[0x30 + c] = c;
for (let c = 0; c < 6; c++) HEX_DIGIT[0x61 + c] = HEX_DIGIT[0x41 + c] = 10 + c;

/** Thrown by {@link unescape} and {@link unescapeInPlace}; the parser turns it into a DumpParseError. */
export class UnescapeError extends Error {}

/**
 * Decode the escapes of `src[start..end)`. Without any backslash the result
 * is a view of `src` (no copy); otherwise a new Buffer.
 */
export function unescape(src: Buffer, start: number, end: number): Buffer {
  let i = start;
  while (i < end && src[i] !== 0x5c) i++;
  if (i === end) return src.subarray(start, end);
  const out = Buffer.from(src.subarray(start, end));
  return out.subarray(0, unescapeInPlace(out, 0, out.length));
}

/**
 * Decode the escapes of `buf[start..end)` in place and return where the
 * decoded bytes end: they are `buf[start..result)` (decoding only shrinks, so
 * nothing past `end` is touched; what is left between the result and `end` is
 * unspecified). With `cstring` the result stops at the first NUL, as a C
 * string would, but the whole field is still decoded, so a bad escape after
 * that NUL is still an error. Throws {@link UnescapeError}; the bytes of the
 * offending escape itself are still intact then.
 */
export function unescapeInPlace(buf: Uint8Array, start: number, end: number, cstring = false): number {
  let i = start;
  while (i < end && buf[i] !== 0x5c) i++;
  let o = i;
  while (i < end) {
    const c = buf[i++];
    if (c !== 0x5c) {
      buf[o++] = c;
      continue;
    }
    if (i >= end) throw new UnescapeError('no character after escape \\');
    const e = buf[i++];
    switch (e) {
      case 0x5c:
        buf[o++] = 0x5c;
        break;
      case 0x6e:
        buf[o++] = 0x0a;
        break;
      case 0x72:
        buf[o++] = 0x0d;
        break;
      case 0x74:
        buf[o++] = 0x09;
        break;
      case 0x78: {
        if (i >= end) throw new UnescapeError('no hex digits after escape \\x');
        const h1 = HEX_DIGIT[buf[i++]];
        if (i >= end) throw new UnescapeError('no hex digits after escape \\x');
        const h2 = HEX_DIGIT[buf[i++]];
        if (h1 < 0 || h2 < 0) {
          throw new UnescapeError(`invalid hex digits in escape '\\x${printable(buf.subarray(i - 2, i))}'`);
        }
        buf[o++] = (h1 << 4) | h2;
        break;
      }
      default:
        throw new UnescapeError(`unsupported escape '\\${printable(buf.subarray(i - 1, i))}'`);
    }
  }
  if (cstring) {
    for (let k = start; k < o; k++) if (buf[k] === 0) return k;
  }
  return o;
}

/**
 * A short, single-line, printable rendering of raw field bytes for error
 * messages (escaped like the dump writer does, cut after `max` characters).
 */
export function printable(raw: Uint8Array, max = 80): string {
  const s = escapeField(raw.length > max ? raw.subarray(0, max) : raw, 0);
  return raw.length > max ? `${s}...` : s;
}
