import { ComposefsError, UsageError } from '../errors.js';

/**
 * A failure the user caused or can fix: printed as one line, never with a stack.
 * `exitCode` follows the reference tools (1 for most errors, 2 for usage).
 */
export class UserError extends Error {
  constructor(message: string, readonly exitCode = 1) {
    super(message);
    this.name = 'UserError';
  }
}

/** Describe a Node.js system error without its stack: "open /x: No such file or directory". */
export function describeSystemError(err: unknown, what: string): string {
  const e = err as NodeJS.ErrnoException;
  const reasons: Record<string, string> = {
    ENOENT: 'No such file or directory',
    EACCES: 'Permission denied',
    EPERM: 'Operation not permitted',
    EISDIR: 'Is a directory',
    ENOTDIR: 'Not a directory',
    EEXIST: 'File exists',
    ENOSPC: 'No space left on device',
    EROFS: 'Read-only file system',
    EXDEV: 'Invalid cross-device link',
    EINVAL: 'Invalid argument',
    EBUSY: 'Device or resource busy',
    ENOTEMPTY: 'Directory not empty',
    ENAMETOOLONG: 'File name too long',
    EMFILE: 'Too many open files',
  };
  const reason = (e && e.code && reasons[e.code]) || (e && e.message) || String(err);
  return `${what}: ${reason}`;
}

/**
 * The one place errors become output and exit codes: a known error prints
 * its one line (exit 2 for usage, else 1); anything else is a bug and says
 * "internal error" (its stack only with CFS_DEBUG set).
 */
export function reportError(progName: string, err: unknown): number {
  if (err instanceof UserError || err instanceof ComposefsError) {
    process.stderr.write(`${progName}: ${err.message}\n`);
    if (process.env.CFS_DEBUG) process.stderr.write(`${err.stack}\n`);
    if (err instanceof UserError) return err.exitCode;
    return err instanceof UsageError ? 2 : 1;
  }
  const msg = err instanceof Error ? err.message : String(err);
  process.stderr.write(`${progName}: internal error: ${msg}\n`);
  if (process.env.CFS_DEBUG) process.stderr.write(`${(err as Error)?.stack}\n`);
  return 1;
}
