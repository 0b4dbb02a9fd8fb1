/**
 * What every step of a kernel mount shares: the open places, the image, the
 * overlay settings, the kernel knowledge, the undo stack and the record of
 * attempts. Built once per mount by src/mount/mount.ts.
 */
import * as sys from '../sys/mount.js';
import { SysError, strerror } from '../sys/libc.js';
import { MountError } from './errors.js';
import type { ImageInfo } from './image.js';
import { learn, type Finding, type KernelKnowledge } from './kernel.js';
import type { Attempt } from './ladder.js';

/** A stack of undo actions run in reverse, whatever happens. */
export class Cleanup {
  private readonly stack: Array<() => void> = [];
  push(fn: () => void): void {
    this.stack.push(fn);
  }
  fd(fd: number): number {
    this.stack.push(() => sys.closeQuiet(fd));
    return fd;
  }
  run(): void {
    while (this.stack.length) {
      try {
        this.stack.pop()!();
      } catch {
        /* keep unwinding */
      }
    }
  }
}

export interface MountContext {
  /** The image as named in messages ("fd N" for a descriptor). */
  image: string;
  imagePath: string | null;
  /** The image (or its private copy) open read-only. */
  imgFd: number;
  /** f_type of the file system holding imgFd. */
  imgFsType: number;
  info: ImageInfo;
  mnt: string;
  mntFd: number;
  basedirs: string[];
  baseFds: number[];
  upper?: string;
  work?: string;
  usernsFd: number;
  /** The overlay's source field. */
  source: string;
  verity: boolean;
  /** Mount attributes for fsmount (new API) and flags for mount(2) (legacy). */
  attr: number;
  msFlags: number;
  knowledge: KernelKnowledge;
  /**
   * Keep the overlay detached: the layers stage hands back its mount fd
   * instead of moving it onto `mnt` (a service attaches it elsewhere).
   */
  keepDetached?: boolean;
  /**
   * Runs the overlay's creation (FSCONFIG_CMD_CREATE). overlayfs keeps the
   * credentials of this call and checks every later access to the layers
   * with them, so a mount made for someone else is created as them.
   */
  asOverlayCreator?: <T>(create: () => T) => T;
  cleanup: Cleanup;
  step: (name: string) => void;
  record: Attempt[];
}

/** The outcome of one rung: what it made, or why the kernel does not support it (then the next rung is tried). */
export type RungResult<T> = { ok: true; value: T } | { ok: false; why: string; finding?: Finding };

export function note(ctx: MountContext, stage: Attempt['stage'], rung: string, text: string): void {
  ctx.record.push({ stage, rung, outcome: 'used', text });
}

export function remember(ctx: MountContext, finding: Finding | undefined): void {
  if (finding) learn(ctx.knowledge, finding);
}

export const EINVAL = 22;
export const ENOTBLK = 15;

export function errnoOf(err: unknown): number {
  return err instanceof SysError ? err.errno : -1;
}

/** The kernel's own words for a refusal (its fs_context log), else the errno text. */
export function kernelSays(err: unknown): string {
  if (err instanceof sys.FsConfigError && err.kernelLog.length) return `kernel: "${err.kernelLog.map((l) => l.replace(/^[ewi] /, '')).join('; ')}"`;
  return err instanceof SysError ? strerror(err.errno) : String(err);
}

/** EINVAL with nothing in the kernel log: how an fs_context says "I do not know this" at create time. */
export function silentEinval(err: unknown): boolean {
  return errnoOf(err) === EINVAL && !(err instanceof sys.FsConfigError && err.kernelLog.length);
}

/** The kernel refused the image itself: say so in one line. */
export function imageMountError(err: unknown, image: string): Error {
  const e = errnoOf(err);
  if (e === EINVAL || e === 117 /* EUCLEAN */ || e === 74 /* EBADMSG */ || e === 5 /* EIO */ || e === 95 /* EOPNOTSUPP */) {
    return new MountError(`${image}: the kernel refused the image (corrupt or unsupported composefs image: ${strerror(e)})`, { cause: err });
  }
  return err instanceof Error ? err : new Error(String(err));
}
