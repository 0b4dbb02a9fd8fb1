/**
 * The mount area's failures: `MountError` for anything the kernel or the
 * places involved refuse (one line naming the thing and the reason). Usage
 * mistakes are `UsageError`, failed file operations `IoError` (src/errors.ts).
 */
import { ComposefsError, type ComposefsErrorOptions } from '../errors.js';

/**
 * Why a rung failed in a way another rung of the ladder may not: the kernel
 * refused for lack of privilege (EPERM), or it cannot check the objects a
 * request requires checked (no fs-verity in the kernel or the basedir).
 */
export type Handover = 'privilege' | 'verity';

export interface MountErrorOptions extends ComposefsErrorOptions {
  /** The kernel refused for lack of privilege (EPERM). */
  privilege?: boolean;
  /** The kernel cannot verify the objects the request requires verified: what requires them and why it cannot, for --explain. */
  unverifiable?: string;
  /** An extra chance that was not there (no mount service answers): when nothing else is tried, the failure before it is the answer (src/mount/ladder.ts). */
  secondary?: boolean;
}

export class MountError extends ComposefsError {
  /** Set when another rung of the ladder (FUSE) may still work where this one failed. */
  readonly handover: Handover | null;
  /** The --explain words saying why the next rung was tried: the message itself for privilege, the short reason for verity. */
  readonly handoverReason: string;
  /** See MountErrorOptions.secondary. */
  readonly secondary: boolean;
  constructor(message: string, options?: MountErrorOptions) {
    super(message, 'mount', options);
    this.secondary = options?.secondary === true;
    this.handover = options?.privilege ? 'privilege' : options?.unverifiable !== undefined ? 'verity' : null;
    this.handoverReason = this.handover === 'verity' ? options!.unverifiable! : message;
  }

  /** The kernel refused for lack of privilege (EPERM): another rung of the ladder (FUSE) may still work. */
  get privilege(): boolean {
    return this.handover === 'privilege';
  }
}
