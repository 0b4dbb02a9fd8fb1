/** Little-endian stores and byte helpers the writer uses instead of Buffer methods on its hot paths. */

/** src[from..to) into dst at pos, without making a view of src first. */
export function copyBytes(dst: Uint8Array, pos: number, src: Uint8Array, from: number, to: number): void {
  if (from === 0 && to === src.length) dst.set(src, pos);
  else if (to - from <= 64) for (let i = from; i < to; i++) dst[pos++] = src[i];
  else dst.set(new Uint8Array(src.buffer, src.byteOffset + from, to - from), pos);
}

export function put16(b: Uint8Array, p: number, v: number): void {
  b[p] = v & 0xff;
  b[p + 1] = (v >>> 8) & 0xff;
}

export function put32(b: Uint8Array, p: number, v: number): void {
  b[p] = v & 0xff;
  b[p + 1] = (v >>> 8) & 0xff;
  b[p + 2] = (v >>> 16) & 0xff;
  b[p + 3] = (v >>> 24) & 0xff;
}

/** A 64-bit little-endian integer from a safe integer (negative values as two's complement). */
export function put64(b: Uint8Array, p: number, v: number): void {
  put32(b, p, v >>> 0);
  put32(b, p + 4, Math.floor(v / 0x100000000) >>> 0);
}

/** strcmp on names (which hold no NUL). */
export function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = a.length < b.length ? a.length : b.length;
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

export function roundUp(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}
