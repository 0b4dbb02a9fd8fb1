/**
 * The one place that loads libc through koffi. Each system-call module in
 * src/sys/ declares its functions on `libc` lazily and throws `SysError`
 * carrying errno, so callers can report "what: reason" like Node's own errors.
 */
import type { LibraryHandle } from 'koffi';
import { constants } from 'node:os';
import { getKoffi } from './koffi.js';

const koffi = getKoffi();

let lib: LibraryHandle | null = null;

export function libc(): LibraryHandle {
  if (!lib) lib = koffi.load('libc.so.6');
  return lib;
}

export { koffi };

const errnoNames = new Map<number, string>(Object.entries(constants.errno).map(([k, v]) => [v as number, k]));

export class SysError extends Error {
  readonly code: string;
  constructor(readonly syscall: string, readonly errno: number, readonly path?: string) {
    const code = errnoNames.get(errno) ?? `E${errno}`;
    super(`${syscall}${path ? ` ${path}` : ''}: ${strerror(errno)}`);
    this.code = code;
    this.name = 'SysError';
  }
}

let strerrorFn: ((n: number) => string) | null = null;
export function strerror(errno: number): string {
  if (!strerrorFn) strerrorFn = libc().func('const char *strerror(int errnum)') as (n: number) => string;
  return strerrorFn(errno);
}

export function lastErrno(): number {
  return koffi.errno();
}

/** Call a libc function returning -1 on error; throw SysError with errno. */
export function check<T extends number | bigint>(syscall: string, result: T, path?: string): T {
  if (Number(result) < 0) throw new SysError(syscall, koffi.errno(), path);
  return result;
}
