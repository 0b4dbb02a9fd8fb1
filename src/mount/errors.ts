/**
 * The mount area's failures: `MountError` for anything the kernel or the
 * places involved refuse (one line naming the thing and the reason). Usage
 * mistakes are `UsageError`, failed file operations `IoError` (src/errors.ts).
 */
import { ComposefsError, type ComposefsErrorOptions } from '../errors.js';

export class MountError extends ComposefsError {
  constructor(message: string, options?: ComposefsErrorOptions) {
    super(message, 'mount', options);
  }
}
