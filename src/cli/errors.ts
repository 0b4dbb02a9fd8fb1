import { ComposefsError, UsageError, reasonOf } from '../errors.js';
import { printable } from '../printable.js';

/**
 * The commands' own failure with a chosen exit code (fsck's 3, say): printed
 * as one line, never with a stack. The library throws ComposefsError instead
 * (src/errors.ts); both end in reportError below.
 */
export class UserError extends Error {
  constructor(message: string, readonly exitCode = 1) {
    super(message);
    this.name = 'UserError';
  }
}

/** Describe a Node.js system error without its stack: "open /x: No such file or directory". */
export function describeSystemError(err: unknown, what: string): string {
  return `${what}: ${reasonOf(err)}`;
}

/**
 * The one place errors become output and exit codes: a known error prints
 * its one line (exit 2 for usage, else 1); anything else is a bug and says
 * "internal error" (its stack only with CFS_DEBUG set).
 */
export function reportError(progName: string, err: unknown): number {
  if (err instanceof UserError || err instanceof ComposefsError) {
    // Messages quote images, layers and registries: escaped, and one line.
    process.stderr.write(`${progName}: ${printable(err.message)}\n`);
    if (process.env.CFS_DEBUG) process.stderr.write(`${err.stack}\n`);
    if (err instanceof UserError) return err.exitCode;
    return err instanceof UsageError ? 2 : 1;
  }
  const msg = err instanceof Error ? err.message : String(err);
  process.stderr.write(`${progName}: internal error: ${printable(msg)}\n`);
  if (process.env.CFS_DEBUG) process.stderr.write(`${(err as Error)?.stack}\n`);
  return 1;
}
