/**
 * A small DER reader and writer: enough ASN.1 for PKCS#7 signatures over
 * fs-verity digests and the X.509 fields their checks need. The reader
 * takes hostile bytes: every length is checked against its parent's end,
 * only definite lengths in their shortest form and one-byte tags are
 * accepted (DER, what `fsverity sign` and openssl write), and the walk is
 * driven by the caller's expected structure, so its depth is the
 * structure's, never the input's. Errors name the offset.
 */
import { ComposefsError, type ComposefsErrorOptions } from '../errors.js';

export class DerError extends ComposefsError {
  constructor(message: string, options?: ComposefsErrorOptions) {
    super(message, 'der', options);
  }
}

/** Universal tags this code reads or writes. */
export const Tag = {
  boolean: 0x01,
  integer: 0x02,
  bitString: 0x03,
  octetString: 0x04,
  null: 0x05,
  oid: 0x06,
  utcTime: 0x17,
  generalizedTime: 0x18,
  sequence: 0x30,
  set: 0x31,
} as const;

/** Context-specific tag `[n]`, constructed or primitive. */
export function contextTag(n: number, constructed: boolean): number {
  return 0x80 | (constructed ? 0x20 : 0) | n;
}

/** More elements than this in one constructed value is refused (a signature has a handful). */
export const MAX_CHILDREN = 4096;

export interface DerNode {
  /** The identifier octet. */
  tag: number;
  /** Offset of the identifier octet. */
  start: number;
  /** Offset of the first content octet. */
  contentStart: number;
  /** Offset just past the content. */
  end: number;
  /** The input the node lies in. */
  input: Buffer;
}

export function content(node: DerNode): Buffer {
  return node.input.subarray(node.contentStart, node.end);
}

/** The whole encoding (identifier, length, content). */
export function encoding(node: DerNode): Buffer {
  return node.input.subarray(node.start, node.end);
}

function tagName(tag: number): string {
  const names: Record<number, string> = { 0x01: 'BOOLEAN', 0x02: 'INTEGER', 0x03: 'BIT STRING', 0x04: 'OCTET STRING', 0x05: 'NULL', 0x06: 'OBJECT IDENTIFIER', 0x30: 'SEQUENCE', 0x31: 'SET', 0x17: 'UTCTime', 0x18: 'GeneralizedTime' };
  if (names[tag]) return names[tag];
  if ((tag & 0xc0) === 0x80) return `[${tag & 0x1f}]`;
  return `tag 0x${tag.toString(16).padStart(2, '0')}`;
}

/** Read the node at `offset`, which must end by `limit`. */
export function readNode(input: Buffer, offset: number, limit: number = input.length): DerNode {
  if (offset >= limit) throw new DerError(`truncated DER at offset ${offset} (a value was expected)`);
  const tag = input[offset];
  if ((tag & 0x1f) === 0x1f) throw new DerError(`multi-byte DER tag at offset ${offset} (not used by these structures)`);
  if (offset + 1 >= limit) throw new DerError(`truncated DER at offset ${offset + 1} (length missing)`);
  const first = input[offset + 1];
  let length: number;
  let contentStart: number;
  if (first < 0x80) {
    length = first;
    contentStart = offset + 2;
  } else if (first === 0x80) {
    throw new DerError(`indefinite length at offset ${offset + 1} (BER, not DER)`);
  } else {
    const n = first & 0x7f;
    if (n > 4) throw new DerError(`DER length of ${n} bytes at offset ${offset + 1} (at most 4)`);
    if (offset + 2 + n > limit) throw new DerError(`truncated DER at offset ${offset + 2} (length bytes missing)`);
    length = 0;
    for (let i = 0; i < n; i++) length = length * 256 + input[offset + 2 + i];
    if (input[offset + 2] === 0 || length < 0x80) throw new DerError(`DER length at offset ${offset + 1} is not in its shortest form`);
    contentStart = offset + 2 + n;
  }
  const end = contentStart + length;
  if (end > limit) throw new DerError(`truncated DER at offset ${contentStart}: ${tagName(tag)} of ${length} bytes, ${limit - contentStart} left`);
  return { tag, start: offset, contentStart, end, input };
}

/** Read the one value that fills `input` exactly. */
export function readRoot(input: Buffer): DerNode {
  const node = readNode(input, 0, input.length);
  if (node.end !== input.length) throw new DerError(`${input.length - node.end} bytes after the DER value at offset ${node.end}`);
  return node;
}

/** Check a node's tag. */
export function expect(node: DerNode, tag: number, what: string): DerNode {
  if (node.tag !== tag) throw new DerError(`${what}: ${tagName(node.tag)} at offset ${node.start}, expected ${tagName(tag)}`);
  return node;
}

/** The elements of a constructed node. */
export function children(node: DerNode, what: string): DerNode[] {
  if ((node.tag & 0x20) === 0) throw new DerError(`${what}: ${tagName(node.tag)} at offset ${node.start} is not constructed`);
  const out: DerNode[] = [];
  let at = node.contentStart;
  while (at < node.end) {
    if (out.length >= MAX_CHILDREN) throw new DerError(`${what}: more than ${MAX_CHILDREN} elements at offset ${node.start}`);
    const child = readNode(node.input, at, node.end);
    out.push(child);
    at = child.end;
  }
  return out;
}

/** A SEQUENCE (or other constructed tag) read as its elements, with a count check. */
export function elements(node: DerNode, tag: number, what: string, min: number, max: number = MAX_CHILDREN): DerNode[] {
  const list = children(expect(node, tag, what), what);
  if (list.length < min || list.length > max) {
    throw new DerError(`${what}: ${list.length} elements at offset ${node.start} (${min === max ? min : `${min} to ${max}`} expected)`);
  }
  return list;
}

export function readOid(node: DerNode, what: string): string {
  const bytes = content(expect(node, Tag.oid, what));
  if (bytes.length === 0 || bytes.length > 64) throw new DerError(`${what}: object identifier of ${bytes.length} bytes at offset ${node.start}`);
  const arcs: number[] = [];
  let value = 0;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i];
    if (value === 0 && b === 0x80) throw new DerError(`${what}: object identifier at offset ${node.start} is not in its shortest form`);
    value = value * 128 + (b & 0x7f);
    if (value > Number.MAX_SAFE_INTEGER / 128) throw new DerError(`${what}: object identifier arc too large at offset ${node.start}`);
    if ((b & 0x80) === 0) {
      arcs.push(value);
      value = 0;
    } else if (i === bytes.length - 1) throw new DerError(`${what}: truncated object identifier at offset ${node.start}`);
  }
  const first = arcs[0] < 40 ? 0 : arcs[0] < 80 ? 1 : 2;
  return [first, arcs[0] - first * 40, ...arcs.slice(1)].join('.');
}

/** A small non-negative INTEGER (a version). */
export function readSmallInteger(node: DerNode, what: string): number {
  const bytes = content(expect(node, Tag.integer, what));
  if (bytes.length === 0 || bytes.length > 4 || (bytes[0] & 0x80) !== 0) throw new DerError(`${what}: not a small non-negative INTEGER at offset ${node.start}`);
  return bytes.reduce((v, b) => v * 256 + b, 0);
}

/** UTCTime or GeneralizedTime (the forms X.509 allows: seconds, `Z`). */
export function readTime(node: DerNode, what: string): Date {
  const text = content(node).toString('latin1');
  let m: RegExpExecArray | null;
  let year: number;
  if (node.tag === Tag.utcTime && (m = /^(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)Z$/.exec(text))) {
    year = Number(m[1]);
    year += year >= 50 ? 1900 : 2000;
  } else if (node.tag === Tag.generalizedTime && (m = /^(\d{4})(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)Z$/.exec(text))) {
    year = Number(m[1]);
  } else throw new DerError(`${what}: not a UTCTime or GeneralizedTime at offset ${node.start}`);
  return new Date(Date.UTC(year, Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6])));
}

// --- writer -------------------------------------------------------------------

function lengthBytes(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

/** Encode one value from its tag and content parts. */
export function der(tag: number, ...parts: Buffer[]): Buffer {
  const body = Buffer.concat(parts);
  return Buffer.concat([Buffer.from([tag]), lengthBytes(body.length), body]);
}

export function derOid(oid: string): Buffer {
  const arcs = oid.split('.').map(Number);
  const out: number[] = [];
  for (const arc of [arcs[0] * 40 + arcs[1], ...arcs.slice(2)]) {
    const bytes = [arc & 0x7f];
    for (let v = Math.floor(arc / 128); v > 0; v = Math.floor(v / 128)) bytes.unshift(0x80 | (v & 0x7f));
    out.push(...bytes);
  }
  return der(Tag.oid, Buffer.from(out));
}

export function derSmallInteger(n: number): Buffer {
  return der(Tag.integer, Buffer.from([n]));
}

export const DER_NULL = Buffer.from([Tag.null, 0]);
