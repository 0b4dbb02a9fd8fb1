/**
 * The one place that loads libc through koffi. Each system-call module in
 * src/sys/ declares its functions on `libc` lazily and throws `SysError`
 * carrying errno, so callers can report "what: reason" like Node's own errors.
 */
import type { LibraryHandle } from 'koffi';
import { getKoffi } from './koffi.js';
import { errnoName, errnoText } from '../errors.js';

const koffi = getKoffi();

let lib: LibraryHandle | null = null;

export function libc(): LibraryHandle {
  if (!lib) lib = koffi.load('libc.so.6');
  return lib;
}

export { koffi };

/**
 * A module's functions bound on first use and kept: koffi declares them only
 * when a call needs them (`const c = bindLazily((l) => ({ f: l.func(...) }))`).
 */
export function bindLazily<T>(bind: (l: LibraryHandle) => T): () => T {
  let calls: T | null = null;
  return () => (calls ??= bind(libc()));
}

export class SysError extends Error {
  readonly code: string;
  constructor(readonly syscall: string, readonly errno: number, readonly path?: string) {
    const code = errnoName(errno);
    super(`${syscall}${path ? ` ${path}` : ''}: ${strerror(errno)}`);
    this.code = code;
    this.name = 'SysError';
  }
}

/** The text of an errno number: the project's one errno-to-text function (src/errors.ts). */
export function strerror(errno: number): string {
  return errnoText(errno);
}

export function lastErrno(): number {
  return koffi.errno();
}

/** Call a libc function returning -1 on error; throw SysError with errno. */
export function check<T extends number | bigint>(syscall: string, result: T, path?: string): T {
  if (Number(result) < 0) throw new SysError(syscall, koffi.errno(), path);
  return result;
}
