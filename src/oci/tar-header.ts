/**
 * The tar header decoder: one 512-byte header block, with what the PAX
 * extended headers and GNU long-name records before it said, into one
 * entry's header. Pure (no I/O, no state kept between calls), so the
 * streaming layer reader (tar.ts) and the archive index of the local
 * transports (files.ts) read headers by the same rules.
 *
 * Formats, as real images carry them: v7; ustar (name prefix) and star
 * (shorter prefix); old GNU and GNU (long names and links 'L'/'K', the old
 * sparse form 'S' with its extension blocks, base-256 numbers); PAX ('x',
 * and global 'g' headers, checked and then ignored as Go's archive/tar and
 * so umoci do) with path, linkpath, size, uid, gid, mtime with fractions,
 * `SCHILY.xattr.*`, `LIBARCHIVE.xattr.*` and the sparse forms 0.0, 0.1, 1.0.
 *
 * Every number is checked: octal or base-256 fields must parse, PAX
 * numbers are decimal digits only, and all must be safe integers (sizes,
 * ids and sparse offsets are never negative; only mtime may be). Anything
 * malformed throws a `TarError` naming the entry and the field.
 */
import { ComposefsError, type ComposefsErrorOptions } from '../errors.js';

export class TarError extends ComposefsError {
  constructor(message: string, options?: ComposefsErrorOptions) {
    super(message, 'tar', options);
  }
}

export const BLOCK = 512;

interface Field {
  readonly offset: number;
  readonly length: number;
}

/** The POSIX ustar header block. v7 headers end at `linkname`. */
export const USTAR = {
  name: { offset: 0, length: 100 },
  mode: { offset: 100, length: 8 },
  uid: { offset: 108, length: 8 },
  gid: { offset: 116, length: 8 },
  size: { offset: 124, length: 12 },
  mtime: { offset: 136, length: 12 },
  checksum: { offset: 148, length: 8 },
  typeflag: { offset: 156, length: 1 },
  linkname: { offset: 157, length: 100 },
  magic: { offset: 257, length: 6 },
  version: { offset: 263, length: 2 },
  uname: { offset: 265, length: 32 },
  gname: { offset: 297, length: 32 },
  devmajor: { offset: 329, length: 8 },
  devminor: { offset: 337, length: 8 },
  prefix: { offset: 345, length: 155 },
} as const satisfies Record<string, Field>;

/** star: a shorter prefix, then times, and "tar\0" in the last bytes of the block. */
export const STAR = {
  prefix: { offset: 345, length: 131 },
  atime: { offset: 476, length: 12 },
  ctime: { offset: 488, length: 12 },
  trailer: { offset: 508, length: 4 },
} as const satisfies Record<string, Field>;

/** Old GNU and GNU (magic "ustar  \0"): their own fields where ustar has the prefix. */
export const GNU = {
  atime: { offset: 345, length: 12 },
  ctime: { offset: 357, length: 12 },
  offset: { offset: 369, length: 12 },
  longnames: { offset: 381, length: 4 },
  /** Four sparse entries (SPARSE_ENTRY), then the flag saying extension blocks follow. */
  sparse: { offset: 386, length: 4 * 24 },
  isextended: { offset: 482, length: 1 },
  realsize: { offset: 483, length: 12 },
} as const satisfies Record<string, Field>;

/** One GNU sparse entry: where a stored segment goes in the file, and its length. */
export const SPARSE_ENTRY = {
  offset: { offset: 0, length: 12 },
  numbytes: { offset: 12, length: 12 },
  size: 24,
} as const;

/** A GNU sparse extension block: 21 more entries, then the continuation flag. */
export const GNU_SPARSE_EXTENSION = {
  sparse: { offset: 0, length: 21 * 24 },
  isextended: { offset: 504, length: 1 },
} as const satisfies Record<string, Field>;

const MAGIC_USTAR = Buffer.from('ustar\0');
const STAR_TRAILER = Buffer.from('tar\0');

export type TarEntryType = 'file' | 'hardlink' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo';

export interface TarXattr {
  key: Buffer;
  value: Buffer;
}

export interface TarHeader {
  /** The entry's path, raw bytes as archived (not normalized). */
  path: Buffer;
  type: TarEntryType;
  /** Permission bits and setuid/setgid/sticky (mode & 07777). */
  mode: number;
  uid: number;
  gid: number;
  /** Size of the contents (a sparse file's real size; 0 for header-only types). */
  size: number;
  mtimeSec: number;
  mtimeNsec: number;
  /** Target of a symlink or hard link (raw bytes). */
  linkname: Buffer;
  devmajor: number;
  devminor: number;
  /** From `SCHILY.xattr.*`, then `LIBARCHIVE.xattr.*` names not already given. */
  xattrs: TarXattr[];
}

export interface TarSparseSegment {
  offset: number;
  length: number;
}

/**
 * What the records before a header said about it: PAX extended headers and
 * GNU long names and links (a later record wins over an earlier one).
 */
export interface TarExtensions {
  path?: Buffer;
  linkpath?: Buffer;
  size?: number;
  uid?: number;
  gid?: number;
  mtime?: [number, number];
  xattrs: TarXattr[];
  libarchiveXattrs: TarXattr[];
  sparseMap?: TarSparseSegment[];
  sparseOffsets?: number[];
  sparseSizes?: number[];
  sparseRealSize?: number;
  sparseName?: Buffer;
  sparseMajor?: number;
  sparseMinor?: number;
}

export function noExtensions(): TarExtensions {
  return { xattrs: [], libarchiveXattrs: [] };
}

/** Records that come before the entry they describe, as data of a header of their own. */
export type TarRecordKind = 'pax' | 'global' | 'longname' | 'longlink';

/** How a sparse entry's stored data maps onto the file. */
export type TarSparse =
  /** Old GNU 'S': map in the header, more in extension blocks after it when `extended`. */
  | { form: 'gnu'; realSize: number; segments: TarSparseSegment[]; extended: boolean }
  /** PAX 0.0 and 0.1: map in the PAX records. */
  | { form: 'pax-map'; realSize: number; segments: TarSparseSegment[] }
  /** PAX 1.0: map at the start of the stored data (decodePaxSparseMap). */
  | { form: 'pax-1.0'; realSize: number };

export type DecodedBlock =
  /** The data that follows (`size` bytes, padded to a block) is a record for the next header. */
  | { kind: 'record'; record: TarRecordKind; size: number }
  /** A volume label: its data is skipped. */
  | { kind: 'skip'; size: number }
  | DecodedEntry;

export interface DecodedEntry {
  kind: 'entry';
  typeflag: number;
  header: TarHeader;
  /** Bytes of data stored after the header (after the extension blocks of a GNU sparse one); read only for files. */
  stored: number;
  /** For files stored sparse; `header.size` is then the real size. */
  sparse: TarSparse | null;
}

/** An entry for messages: its path once known, else its number in the archive. */
export function entryLabel(ext: TarExtensions, ordinal: number): string {
  return ext.path ? show(ext.path) : `#${ordinal}`;
}

/**
 * Decode the header block `b` of the `ordinal`-th entry (counting from 1,
 * for messages), given what the records before it said. A zero block (the
 * end marker) is the caller's to recognise first (isZeroBlock).
 */
export function decodeHeader(b: Buffer, ext: TarExtensions, ordinal: number): DecodedBlock {
  if (!checksumOk(b)) throw new TarError(`entry ${show(cString(b, USTAR.name)) || entryLabel(ext, ordinal)}: bad tar header checksum`);
  const typeflag = b[USTAR.typeflag.offset];
  const size = numberField(b, USTAR.size, 'size', false, () => entryLabel(ext, ordinal));
  switch (typeflag) {
    case 0x78 /* x */:
      return { kind: 'record', record: 'pax', size };
    case 0x67 /* g */:
      return { kind: 'record', record: 'global', size };
    case 0x4c /* L */:
      return { kind: 'record', record: 'longname', size };
    case 0x4b /* K */:
      return { kind: 'record', record: 'longlink', size };
    case 0x56 /* V: volume label */:
      return { kind: 'skip', size };
    case 0x4d /* M */:
    case 0x4e /* N */:
      throw new TarError(`entry ${entryLabel(ext, ordinal)}: unsupported tar entry type '${String.fromCharCode(typeflag)}' (multi-volume or old GNU long names)`);
  }

  const path = ext.path ?? headerPath(b);
  const shown = () => show(path);
  const type = entryType(typeflag, path, shown);
  const mtime = ext.mtime ?? [numberField(b, USTAR.mtime, 'mtime', true, shown), 0];
  const device = type === 'char' || type === 'block';
  const header: TarHeader = {
    path,
    type,
    mode: numberField(b, USTAR.mode, 'mode', false, shown) & 0o7777,
    uid: ext.uid ?? numberField(b, USTAR.uid, 'uid', false, shown),
    gid: ext.gid ?? numberField(b, USTAR.gid, 'gid', false, shown),
    size: 0,
    mtimeSec: mtime[0],
    mtimeNsec: mtime[1],
    linkname: ext.linkpath ?? cString(b, USTAR.linkname),
    devmajor: device ? numberField(b, USTAR.devmajor, 'devmajor', false, shown) : 0,
    devminor: device ? numberField(b, USTAR.devminor, 'devminor', false, shown) : 0,
    xattrs: mergeXattrs(ext.xattrs, ext.libarchiveXattrs),
  };
  const stored = ext.size ?? size;
  // Header-only types: no contents whatever the size field says (Go's archive/tar).
  if (type !== 'file') return { kind: 'entry', typeflag, header, stored, sparse: null };

  let sparse: TarSparse | null = null;
  if (typeflag === 0x53 /* S */) {
    const segments: TarSparseSegment[] = [];
    readSparseEntries(b, GNU.sparse, segments, shown);
    sparse = { form: 'gnu', realSize: numberField(b, GNU.realsize, 'realsize', false, shown), segments, extended: b[GNU.isextended.offset] !== 0 };
  } else if (ext.sparseMajor === 1 && ext.sparseMinor === 0) {
    sparse = { form: 'pax-1.0', realSize: ext.sparseRealSize ?? 0 };
  } else if (ext.sparseMap || ext.sparseOffsets) {
    const segments = ext.sparseMap ?? zipSparse(ext.sparseOffsets!, ext.sparseSizes ?? [], shown);
    sparse = { form: 'pax-map', realSize: ext.sparseRealSize ?? 0, segments };
  }
  if (sparse && sparse.form !== 'gnu' && ext.sparseName) header.path = ext.sparseName;
  header.size = sparse ? sparse.realSize : stored;
  return { kind: 'entry', typeflag, header, stored, sparse };
}

function headerPath(b: Buffer): Buffer {
  const name = cString(b, USTAR.name);
  if (!bytesAt(b, USTAR.magic.offset, MAGIC_USTAR)) return name;
  const star = bytesAt(b, STAR.trailer.offset, STAR_TRAILER);
  const prefix = cString(b, star ? STAR.prefix : USTAR.prefix);
  return prefix.length > 0 ? Buffer.concat([prefix, SLASH, name]) : name;
}

const SLASH = Buffer.from('/');

function bytesAt(b: Buffer, off: number, want: Buffer): boolean {
  for (let i = 0; i < want.length; i++) if (b[off + i] !== want[i]) return false;
  return true;
}

function entryType(typeflag: number, path: Buffer, shown: () => string): TarEntryType {
  switch (typeflag) {
    case 0x30 /* 0 */:
    case 0x37 /* 7: contiguous */:
    case 0x53 /* S: GNU sparse */:
      return 'file';
    case 0x00 /* v7: a directory if the name ends in a slash */:
      return path.length > 0 && path[path.length - 1] === 0x2f ? 'dir' : 'file';
    case 0x31:
      return 'hardlink';
    case 0x32:
      return 'symlink';
    case 0x33:
      return 'char';
    case 0x34:
      return 'block';
    case 0x35:
    case 0x44 /* D: GNU dumpdir */:
      return 'dir';
    case 0x36:
      return 'fifo';
    default:
      throw new TarError(`entry ${shown()}: unsupported tar entry type '${printable(typeflag)}'`);
  }
}

/** The end-of-archive marker is two of these. */
export function isZeroBlock(b: Buffer): boolean {
  for (let i = 0; i < BLOCK; i += 8) if (b.readBigUInt64LE(i) !== 0n) return false;
  return true;
}

/** The stored checksum against the sum of the block's bytes, unsigned or (as some old tars wrote it) signed. */
export function checksumOk(b: Buffer): boolean {
  const stored = parseNumeric(b, USTAR.checksum.offset, USTAR.checksum.length, false);
  if (stored === null) return false;
  // The checksum field itself counts as eight spaces. Two plain loops around
  // it, and the signed sum derived from the count of high bytes, because
  // this runs for every entry of every layer pulled.
  const skipFrom = USTAR.checksum.offset;
  const skipTo = skipFrom + USTAR.checksum.length;
  let unsigned = USTAR.checksum.length * 0x20;
  let high = 0;
  for (let i = 0; i < skipFrom; i++) {
    unsigned += b[i];
    high += b[i] >> 7;
  }
  for (let i = skipTo; i < BLOCK; i++) {
    unsigned += b[i];
    high += b[i] >> 7;
  }
  return stored === unsigned || stored === unsigned - 256 * high;
}

function numberField(b: Buffer, f: Field, name: string, signed: boolean, where: () => string): number {
  const n = parseNumeric(b, f.offset, f.length, signed);
  if (n === null) throw new TarError(`entry ${where()}: malformed ${name} field in tar header`);
  return n;
}

/**
 * A numeric field: octal digits padded with spaces or NULs (an empty field
 * is 0), or GNU base-256 (top bit of the first byte set; the next bit set
 * makes it negative, allowed only when `signed`). Null when malformed or not
 * a safe integer. At most 12 octal digits never leave the safe integers.
 */
export function parseNumeric(b: Buffer, off: number, len: number, signed: boolean): number | null {
  const first = b[off];
  if (first & 0x80) {
    // base-256, big-endian, two's complement: read as the complement when negative (Go's -a-1 == ^a)
    const inv = first & 0x40 ? 0xff : 0;
    let v = 0n;
    for (let i = 0; i < len; i++) {
      let c = b[off + i] ^ inv;
      if (i === 0) c &= 0x7f;
      v = (v << 8n) | BigInt(c);
    }
    if (inv) v = -v - 1n;
    if (v < 0n && !signed) return null;
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < -BigInt(Number.MAX_SAFE_INTEGER)) return null;
    return Number(v);
  }
  let i = off;
  const end = off + len;
  while (i < end && (b[i] === 0x20 || b[i] === 0)) {
    if (b[i] === 0 && i === off) return 0; // empty field
    i++;
  }
  let v = 0;
  for (; i < end; i++) {
    const c = b[i];
    if (c >= 0x30 && c <= 0x37) v = v * 8 + (c - 0x30);
    else if (c === 0x20 || c === 0) break;
    else return null;
  }
  for (; i < end; i++) if (b[i] !== 0x20 && b[i] !== 0) return null;
  return v;
}

/** A NUL-terminated (or field-long) byte string, copied out of the block. */
function cString(b: Buffer, f: Field): Buffer {
  const end = b.indexOf(0, f.offset);
  const stop = end < 0 || end > f.offset + f.length ? f.offset + f.length : end;
  return Buffer.from(b.subarray(f.offset, stop));
}

function readSparseEntries(b: Buffer, f: Field, out: TarSparseSegment[], where: () => string): void {
  for (let at = f.offset; at < f.offset + f.length; at += SPARSE_ENTRY.size) {
    if (b[at] === 0) return;
    out.push({
      offset: numberField(b, { offset: at + SPARSE_ENTRY.offset.offset, length: SPARSE_ENTRY.offset.length }, 'GNU sparse offset', false, where),
      length: numberField(b, { offset: at + SPARSE_ENTRY.numbytes.offset, length: SPARSE_ENTRY.numbytes.length }, 'GNU sparse numbytes', false, where),
    });
  }
}

/** A GNU sparse extension block: its entries appended to `out`; true when another block follows. */
export function readGnuSparseExtension(b: Buffer, out: TarSparseSegment[], where: () => string): boolean {
  readSparseEntries(b, GNU_SPARSE_EXTENSION.sparse, out, where);
  return b[GNU_SPARSE_EXTENSION.isextended.offset] !== 0;
}

function zipSparse(offsets: number[], sizes: number[], where: () => string): TarSparseSegment[] {
  if (offsets.length !== sizes.length) throw new TarError(`entry ${where()}: malformed PAX sparse map`);
  return offsets.map((offset, k) => ({ offset, length: sizes[k] }));
}

/**
 * PAX sparse 1.0: the map at the start of the data, decimal numbers one a
 * line (count, then offset and length pairs). While `text` does not yet hold
 * the whole map: how many complete lines it needs (the caller reads more).
 */
export function decodePaxSparseMap(text: string, where: () => string): { segments: TarSparseSegment[] } | { lines: number } {
  const lines = text.split('\n');
  lines.pop(); // the incomplete tail (or padding)
  if (lines.length === 0) return { lines: 1 };
  const bad = () => new TarError(`entry ${where()}: malformed sparse map`);
  const count = safeDecimal(lines[0]);
  if (count === null) throw bad();
  if (lines.length < 1 + 2 * count) return { lines: 1 + 2 * count };
  const segments: TarSparseSegment[] = [];
  for (let k = 0; k < count; k++) {
    const offset = safeDecimal(lines[1 + 2 * k]);
    const length = safeDecimal(lines[2 + 2 * k]);
    if (offset === null || length === null) throw bad();
    segments.push({ offset, length });
  }
  return { segments };
}

/** Digits only, and a safe integer; else null. */
function safeDecimal(s: string): number | null {
  if (!/^[0-9]+$/.test(s)) return null;
  const n = Number(s);
  return n <= Number.MAX_SAFE_INTEGER ? n : null;
}

function mergeXattrs(schily: TarXattr[], libarchive: TarXattr[]): TarXattr[] {
  if (libarchive.length === 0) return schily;
  const out = [...schily];
  for (const x of libarchive) if (!out.some((y) => y.key.equals(x.key))) out.push(x);
  return out;
}

/** A record's contents into `ext`: GNU long names are NUL-terminated, PAX records parsed, global ones checked and dropped. */
export function applyRecord(kind: TarRecordKind, rec: Buffer, ext: TarExtensions, where: string): void {
  switch (kind) {
    case 'longname':
      ext.path = cString(rec, { offset: 0, length: rec.length });
      return;
    case 'longlink':
      ext.linkpath = cString(rec, { offset: 0, length: rec.length });
      return;
    case 'global':
      parsePax(rec, noExtensions(), where);
      return;
    case 'pax':
      parsePax(rec, ext, where);
      return;
  }
}

const SCHILY = Buffer.from('SCHILY.xattr.');
const LIBARCHIVE = Buffer.from('LIBARCHIVE.xattr.');

/** Parse `LEN KEY=VALUE\n` records into `ext` (later records win, as in Go). */
export function parsePax(rec: Buffer, ext: TarExtensions, where: string): void {
  let off = 0;
  const end = rec.length;
  const bad = () => new TarError(`entry ${where}: malformed PAX record at byte ${off}`);
  while (off < end) {
    if (rec[off] === 0) break; // padding
    const sp = rec.indexOf(0x20, off);
    if (sp < 0 || sp - off > 12) throw bad();
    const recLen = safeDecimal(rec.toString('latin1', off, sp));
    if (recLen === null) throw bad();
    const recEnd = off + recLen;
    if (recLen <= sp - off + 1 || recEnd > end || rec[recEnd - 1] !== 0x0a) throw bad();
    const eq = rec.indexOf(0x3d, sp + 1);
    if (eq < 0 || eq >= recEnd) throw bad();
    applyPax(ext, rec.subarray(sp + 1, eq), Buffer.from(rec.subarray(eq + 1, recEnd - 1)), where);
    off = recEnd;
  }
}

/** A value for a message: quoted, escaped when not printable, cut when long. */
function quoteValue(value: Buffer): string {
  const s = value.subarray(0, 64).toString('latin1');
  const more = value.length > 64 ? '…' : '';
  // eslint-disable-next-line no-control-regex
  return /[^\x20-\x7e]|'/.test(s) ? `${JSON.stringify(s)}${more}` : `'${s}${more}'`;
}

function paxNumber(value: Buffer, key: string, where: string): number {
  const n = safeDecimal(value.toString('latin1'));
  if (n === null) throw new TarError(`entry ${where}: malformed PAX ${key} ${quoteValue(value)} (want digits, at most 2^53-1)`);
  return n;
}

function applyPax(ext: TarExtensions, keyBuf: Buffer, value: Buffer, where: string): void {
  if (keyBuf.subarray(0, SCHILY.length).equals(SCHILY)) {
    const name = keyBuf.subarray(SCHILY.length);
    ext.xattrs = ext.xattrs.filter((x) => !x.key.equals(name));
    ext.xattrs.push({ key: Buffer.from(name), value });
    return;
  }
  if (keyBuf.subarray(0, LIBARCHIVE.length).equals(LIBARCHIVE)) {
    ext.libarchiveXattrs.push({ key: percentDecode(keyBuf.subarray(LIBARCHIVE.length)), value: Buffer.from(value.toString('latin1'), 'base64') });
    return;
  }
  const key = keyBuf.toString('latin1');
  switch (key) {
    case 'path':
      ext.path = value;
      return;
    case 'linkpath':
      ext.linkpath = value;
      return;
    case 'size':
      ext.size = paxNumber(value, key, where);
      return;
    case 'uid':
      ext.uid = paxNumber(value, key, where);
      return;
    case 'gid':
      ext.gid = paxNumber(value, key, where);
      return;
    case 'mtime':
      ext.mtime = parsePaxTime(value, where);
      return;
    case 'GNU.sparse.major':
      ext.sparseMajor = paxNumber(value, key, where);
      return;
    case 'GNU.sparse.minor':
      ext.sparseMinor = paxNumber(value, key, where);
      return;
    case 'GNU.sparse.name':
      ext.sparseName = value;
      return;
    case 'GNU.sparse.size':
    case 'GNU.sparse.realsize':
      ext.sparseRealSize = paxNumber(value, key, where);
      return;
    case 'GNU.sparse.offset':
      (ext.sparseOffsets ??= []).push(paxNumber(value, key, where));
      return;
    case 'GNU.sparse.numbytes':
      (ext.sparseSizes ??= []).push(paxNumber(value, key, where));
      return;
    case 'GNU.sparse.map': {
      const parts = value.toString('latin1').split(',').map(safeDecimal);
      if (parts.length % 2 !== 0 || parts.some((n) => n === null)) throw new TarError(`entry ${where}: malformed PAX GNU.sparse.map ${quoteValue(value)}`);
      const map: TarSparseSegment[] = [];
      for (let k = 0; k + 1 < parts.length; k += 2) map.push({ offset: parts[k]!, length: parts[k + 1]! });
      ext.sparseMap = map;
      return;
    }
    default:
      return; // atime, ctime, uname, gname, comment, charset, …: not part of a composefs tree
  }
}

/**
 * libarchive writes xattr names URL-encoded, byte by byte: %XX is one byte;
 * a '%' not followed by two hex digits stands for itself (as libarchive's
 * url_decode reads it).
 */
function percentDecode(s: Buffer): Buffer {
  if (!s.includes(0x25)) return Buffer.from(s);
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const hi = hexDigit(s[i + 1]);
    const lo = hexDigit(s[i + 2]);
    if (s[i] === 0x25 && hi >= 0 && lo >= 0) {
      out.push(hi * 16 + lo);
      i += 2;
    } else out.push(s[i]);
  }
  return Buffer.from(out);
}

function hexDigit(c: number | undefined): number {
  if (c === undefined) return -1;
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x41 && c <= 0x46) return c - 0x41 + 10;
  if (c >= 0x61 && c <= 0x66) return c - 0x61 + 10;
  return -1;
}

/** `SEC[.FRACTION]`, possibly negative, into whole seconds and nanoseconds (floored, as Go's time.Unix normalises). */
function parsePaxTime(value: Buffer, where: string): [number, number] {
  const m = /^(-?)([0-9]+)(?:\.([0-9]*))?$/.exec(value.toString('latin1'));
  const sec = m ? safeDecimal(m[2]) : null;
  if (!m || sec === null) throw new TarError(`entry ${where}: malformed PAX mtime ${quoteValue(value)} (want [-]SECONDS[.FRACTION])`);
  const nsec = Number(((m[3] ?? '') + '000000000').slice(0, 9));
  if (m[1] !== '-') return [sec, nsec];
  return nsec === 0 ? [-sec, 0] : [-sec - 1, 1e9 - nsec];
}

function printable(c: number): string {
  return c >= 0x20 && c < 0x7f ? String.fromCharCode(c) : `\\x${c.toString(16).padStart(2, '0')}`;
}

/** A path for messages: JSON-escaped when it holds control or non-UTF-8 bytes. */
export function show(path: Buffer): string {
  const s = path.toString('utf8');
  // eslint-disable-next-line no-control-regex
  return /[\u0000-\u001f\u007f\ufffd]/.test(s) ? JSON.stringify(path.toString('latin1')) : s;
}
