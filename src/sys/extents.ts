/**
 * Where a file's data is: lseek(2) with SEEK_DATA / SEEK_HOLE, and the size
 * of anything seekable (SEEK_END: a block device's fstat size is 0). Node
 * has no lseek; copying a sparse file without filling its holes needs one.
 */
import { lastErrno, libc, SysError } from './libc.js';

const SEEK_END = 2;
const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const ENXIO = 6;
const EINVAL = 22;

let lseekFn: ((fd: number, offset: number, whence: number) => number | bigint) | null = null;

function lseek(fd: number, offset: number, whence: number): number {
  lseekFn ??= libc().func('lseek', 'int64_t', ['int', 'int64_t', 'int']) as unknown as typeof lseekFn;
  const r = Number(lseekFn!(fd, offset, whence));
  if (r < 0) throw new SysError('lseek', lastErrno());
  return r;
}

/** Bytes from the start to the end of what `fd` reads (works for block devices). Moves the fd's offset. */
export function seekableSize(fd: number): number {
  return lseek(fd, 0, SEEK_END);
}

/**
 * The data extents of `fd` within [0, end), as [start, end) pairs; holes
 * left out. Where SEEK_DATA is unknown the whole range is data, which is
 * still correct. Moves the fd's offset.
 */
export function dataExtents(fd: number, end: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  let pos = 0;
  while (pos < end) {
    let start: number;
    try {
      start = lseek(fd, pos, SEEK_DATA);
    } catch (err) {
      if (err instanceof SysError && err.errno === ENXIO) break; // only a hole from here on
      // No SEEK_DATA here (a block device, an old file system): all of it is data.
      if (err instanceof SysError && err.errno === EINVAL && pos === 0) return end > 0 ? [[0, end]] : [];
      throw err;
    }
    if (start >= end) break;
    const stop = Math.min(lseek(fd, start, SEEK_HOLE), end);
    out.push([start, stop]);
    pos = stop;
  }
  return out;
}
