/**
 * The object store's layout, the one place that knows it: an object of
 * fs-verity digest `abcdef…` (64 hex digits; 128 for SHA-512) is the file
 * `cdef…` (62 hex digits; 126) in the directory `ab` of the store, the layout the reference's
 * `mkcomposefs --digest-store` writes and `mount -t composefs -o basedir=`
 * reads; an image's redirect to it is `ab/cdef…`. No I/O here.
 */
import { digestToHex, type VerityAlgorithm } from '../fsverity/index.js';

/** Where the object of digest `hex` (64 or 128 lowercase hex digits) is in a store: its directory and its name there. */
export function objectPlaceOf(hex: string): { dir: string; name: string } {
  return { dir: hex.slice(0, 2), name: hex.slice(2) };
}

/** The object store path of a digest: `ab/cdef…` (2 hex digits, slash, 62 hex digits; 126 for SHA-512). */
export function digestToObjectPath(digest: Uint8Array): string {
  const { dir, name } = objectPlaceOf(digestToHex(digest));
  return `${dir}/${name}`;
}

/** Inverse of digestToObjectPath; null if `path` is not of the form `ab/cdef…` (62 or 126 digits after the slash). */
export function objectPathToDigest(path: string): Buffer | null {
  const m = /^([0-9a-f]{2})\/([0-9a-f]{62}|[0-9a-f]{126})$/.exec(path);
  return m ? Buffer.from(m[1] + m[2], 'hex') : null;
}

/** Whether `name` is an object directory's name (`ab`): anything else in a store is not an object's. */
export function isObjectDirName(name: string): boolean {
  return /^[0-9a-f]{2}$/.test(name);
}

/**
 * Whether `name` is an object's name in its directory (62 hex digits, or 126
 * for SHA-512; only `algorithm`'s when given): anything else there is a
 * temporary or debris.
 */
export function isObjectFileName(name: string, algorithm?: VerityAlgorithm): boolean {
  if (algorithm === 'sha256') return /^[0-9a-f]{62}$/.test(name);
  if (algorithm === 'sha512') return /^[0-9a-f]{126}$/.test(name);
  return /^(?:[0-9a-f]{62}|[0-9a-f]{126})$/.test(name);
}
