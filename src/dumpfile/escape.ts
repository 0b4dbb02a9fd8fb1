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

const HEX = '0123456789abcdef';

/**
 * Per byte: 0 = copy as is, 1 = needs escaping, 2 = `=` (escape only with
 * ESCAPE_EQUAL).
 */
const CLASS = new Uint8Array(256);
for (let c = 0; c < 256; c++) {
  if (c === 0x5c) CLASS[c] = 1;
  else if (c === 0x3d) CLASS[c] = 2;
  else if (c >= 0x21 && c <= 0x7e) CLASS[c] = 0;
  else CLASS[c] = 1;
}

/** A growable output buffer of bytes. */
export class ByteSink {
  buf: Buffer;
  len = 0;

  constructor(initial = 1 << 16) {
    this.buf = Buffer.allocUnsafe(initial);
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

  byte(b: number): void {
    if (this.len >= this.buf.length) this.ensure(1);
    this.buf[this.len++] = b;
  }

  /** Append an ASCII string (numbers, separators). */
  ascii(s: string): void {
    this.ensure(s.length);
    this.len += this.buf.write(s, this.len, 'latin1');
  }

  bytes(src: Uint8Array, start = 0, end = src.length): void {
    const n = end - start;
    this.ensure(n);
    const b = this.buf;
    if (n < 24) {
      let o = this.len;
      for (let i = start; i < end; i++) b[o++] = src[i];
    } else {
      b.set(src.subarray(start, end), this.len);
    }
    this.len += n;
  }

  /** Append an integer in `radix` (8 or 10; negative ones only in decimal). */
  int(n: number, radix = 10): void {
    if (!Number.isSafeInteger(n)) {
      // Past 2^53 (or not an integer): let JS format it, in decimal.
      this.ascii(Number.isFinite(n) ? BigInt(Math.trunc(n)).toString() : '0');
      return;
    }
    this.ensure(24);
    const b = this.buf;
    if (n < 0) {
      b[this.len++] = 0x2d;
      n = -n;
    }
    if (n < radix) {
      b[this.len++] = 0x30 + n;
      return;
    }
    let digits = 0;
    for (let m = n; m >= 1; m = Math.floor(m / radix)) digits++;
    let o = this.len + digits;
    this.len = o;
    for (let m = n; m >= 1; m = Math.floor(m / radix)) b[--o] = 0x30 + (m % radix);
  }

  /** Append `src[start..end)` escaped for a dump-file field. */
  escaped(src: Uint8Array, flags: number, start = 0, end = src.length): void {
    if ((flags & ESCAPE_LONE_DASH) !== 0 && end - start === 1 && src[start] === 0x2d) {
      this.ascii('\\x2d');
      return;
    }
    const escapeEqual = (flags & ESCAPE_EQUAL) !== 0;
    let runStart = start;
    for (let i = start; i < end; i++) {
      const c = src[i];
      const k = CLASS[c];
      if (k === 0 || (k === 2 && !escapeEqual)) continue;
      if (i > runStart) this.bytes(src, runStart, i);
      runStart = i + 1;
      this.ensure(4);
      const b = this.buf;
      if (c === 0x5c) {
        b[this.len++] = 0x5c;
        b[this.len++] = 0x5c;
      } else if (c === 0x0a) {
        b[this.len++] = 0x5c;
        b[this.len++] = 0x6e;
      } else if (c === 0x0d) {
        b[this.len++] = 0x5c;
        b[this.len++] = 0x72;
      } else if (c === 0x09) {
        b[this.len++] = 0x5c;
        b[this.len++] = 0x74;
      } else {
        b[this.len++] = 0x5c;
        b[this.len++] = 0x78;
        b[this.len++] = HEX.charCodeAt(c >> 4);
        b[this.len++] = HEX.charCodeAt(c & 15);
      }
    }
    if (end > runStart) this.bytes(src, runStart, end);
  }

  /** Append lowercase hex of `src`. */
  hex(src: Uint8Array): void {
    this.ensure(src.length * 2);
    const b = this.buf;
    for (let i = 0; i < src.length; i++) {
      b[this.len++] = HEX.charCodeAt(src[i] >> 4);
      b[this.len++] = HEX.charCodeAt(src[i] & 15);
    }
  }

  /** Hand the written bytes out and start over with a fresh buffer. */
  take(): Buffer {
    const out = this.buf.subarray(0, this.len);
    this.buf = Buffer.allocUnsafe(Math.max(1 << 16, Math.min(this.buf.length, 1 << 20)));
    this.len = 0;
    return out;
  }
}

/** Escape one value as the dump writer would; mainly for tests and messages. */
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
