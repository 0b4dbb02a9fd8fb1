/**
 * The mount area's failures: `MountError` for anything the kernel or the
 * places involved refuse (one line naming the thing and the reason). Usage
 * mistakes are `UsageError`, failed file operations `IoError` (src/errors.ts).
 */
import { ComposefsError, type ComposefsErrorOptions } from '../errors.js';

export class MountError extends ComposefsError {
  /** The kernel refused for lack of privilege (EPERM): another rung of the ladder (FUSE) may still work. */
  readonly privilege: boolean;
  constructor(message: string, options?: ComposefsErrorOptions & { privilege?: boolean }) {
    super(message, 'mount', options);
    this.privilege = options?.privilege ?? false;
  }
}
