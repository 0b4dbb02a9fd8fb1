/**
 * flock(2), which Node lacks: advisory whole-file locks that the kernel drops
 * when the holder's descriptor closes, so a killed process never leaves a
 * lock behind. Only the non-blocking form: a blocking call would stall the
 * event loop, so callers poll.
 */
import { lastErrno, libc, SysError } from './libc.js';

export const LOCK_SH = 1;
export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const LOCK_UN = 8;

let flockFn: ((fd: number, op: number) => number) | null = null;

/** Try to take (or change) the lock on `fd`: true when held, false when another holder conflicts. */
export function tryFlock(fd: number, exclusive: boolean, what?: string): boolean {
  flockFn ??= libc().func('int flock(int fd, int operation)') as (fd: number, op: number) => number;
  if (flockFn(fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) === 0) return true;
  const e = lastErrno();
  if (e === 11 /* EWOULDBLOCK */) return false;
  throw new SysError('flock', e, what);
}
