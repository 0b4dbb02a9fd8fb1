/** Byte helpers for the writer's hot paths. */

/**
 * `length` bytes of src from `from` into dst at `at`. A loop for short runs:
 * making a view costs more; small and called often, V8 optimises it early.
 */
export function copyBytes(dst: Uint8Array, at: number, src: Uint8Array, from: number, length: number): void {
  if (length <= 32) for (let i = 0; i < length; i++) dst[at + i] = src[from + i];
  else dst.set(new Uint8Array(src.buffer, src.byteOffset + from, length), at);
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** A byte array with 16- and 32-bit little-endian views of it, indexed by byte offset / 2 and / 4. */
export interface Words {
  b: Uint8Array;
  u16: Uint16Array;
  u32: Uint32Array;
}

/**
 * `bytes` with its word views: one typed-array store per field rather than a
 * call or four byte stores. `bytes` must start its ArrayBuffer at an offset
 * that is a multiple of 4.
 */
export function words(bytes: Uint8Array, forceByteStores = false): Words {
  if (LITTLE_ENDIAN && !forceByteStores) {
    return {
      b: bytes,
      u16: new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.length >>> 1),
      u32: new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length >>> 2),
    };
  }
  // A big-endian host: the same stores, byte by byte through a proxy (slow, but
  // one writer for every host).
  const view = (width: number) =>
    new Proxy(new Uint8Array(0), {
      get(target, key) {
        if (typeof key !== 'string' || !/^\d+$/.test(key)) return Reflect.get(target, key);
        let v = 0;
        for (let i = width - 1; i >= 0; i--) v = v * 256 + bytes[Number(key) * width + i];
        return v;
      },
      set(_target, key, value: number) {
        const at = Number(key) * width;
        for (let i = 0; i < width; i++) bytes[at + i] = Math.floor(value / 2 ** (8 * i)) & 0xff;
        return true;
      },
    });
  return { b: bytes, u16: view(2) as unknown as Uint16Array, u32: view(4) as unknown as Uint32Array };
}

/** A 64-bit little-endian integer from a safe integer (negative values as two's complement). */
export function put64(b: Uint8Array, p: number, v: number): void {
  const lo = v >>> 0;
  const hi = Math.floor(v / 0x100000000) >>> 0;
  for (let i = 0; i < 4; i++) {
    b[p + i] = (lo >>> (8 * i)) & 0xff;
    b[p + 4 + i] = (hi >>> (8 * i)) & 0xff;
  }
}
