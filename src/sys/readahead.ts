/**
 * readahead(2): start reading a file's pages into the page cache and return
 * without waiting for them (Node has no fadvise or readahead).
 */
import { libc } from './libc.js';

let fn: ((fd: number, offset: number, count: number) => number) | null = null;

/** Ask the kernel to read [offset, offset+count) of `fd` ahead; failures are ignored (it is only a hint). */
export function readAhead(fd: number, offset: number, count: number): void {
  fn ??= libc().func('int64_t readahead(int fd, int64_t offset, size_t count)') as unknown as typeof fn;
  fn!(fd, offset, count);
}
