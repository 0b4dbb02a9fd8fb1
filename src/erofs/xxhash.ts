/** xxHash32, as EROFS uses it for the per-inode xattr name bloom filter. */

const P1 = 2654435761;
const P2 = 2246822519;
const P3 = 3266489917;
const P4 = 668265263;
const P5 = 374761393;

const rotl = (x: number, r: number) => ((x << r) | (x >>> (32 - r))) >>> 0;
const mul = (a: number, b: number) => Math.imul(a, b) >>> 0;

function round(acc: number, input: number): number {
  acc = (acc + mul(input, P2)) >>> 0;
  return mul(rotl(acc, 13), P1);
}

export function xxh32(data: Uint8Array, seed: number, start = 0, end = data.length): number {
  let p = start;
  const len = end - start;
  let h: number;
  const u32 = (i: number) => (data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)) >>> 0;
  if (len >= 16) {
    let v1 = (seed + P1 + P2) >>> 0;
    let v2 = (seed + P2) >>> 0;
    let v3 = seed >>> 0;
    let v4 = (seed - P1) >>> 0;
    const limit = end - 16;
    do {
      v1 = round(v1, u32(p));
      v2 = round(v2, u32(p + 4));
      v3 = round(v3, u32(p + 8));
      v4 = round(v4, u32(p + 12));
      p += 16;
    } while (p <= limit);
    h = (rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18)) >>> 0;
  } else {
    h = (seed + P5) >>> 0;
  }
  h = (h + len) >>> 0;
  while (p + 4 <= end) {
    h = (h + mul(u32(p), P3)) >>> 0;
    h = mul(rotl(h, 17), P4);
    p += 4;
  }
  while (p < end) {
    h = (h + mul(data[p], P5)) >>> 0;
    h = mul(rotl(h, 11), P1);
    p++;
  }
  h = (h ^ (h >>> 15)) >>> 0;
  h = mul(h, P2);
  h = (h ^ (h >>> 13)) >>> 0;
  h = mul(h, P3);
  h = (h ^ (h >>> 16)) >>> 0;
  return h;
}
