/**
 * The library's errors. Every failure a user can cause or fix is a
 * `ComposefsError`: a one-line message naming the thing and the reason, a
 * stable machine-readable `code`, and the underlying error as `cause`.
 * The library only throws; src/cli/errors.ts alone turns errors into output
 * and exit codes.
 *
 * Areas with failures of their own subclass `ComposefsError` next to their
 * code (`ImageFormatError` in src/erofs/, `StoreError` in src/store/, …);
 * the kinds every area shares live here.
 */
import { constants } from 'node:os';
import { getSystemErrorMap } from 'node:util';

export interface ComposefsErrorOptions {
  cause?: unknown;
}

export class ComposefsError extends Error {
  /** Stable, machine-readable kind: 'usage', 'io', 'image-format', 'mount', … */
  readonly code: string;
  constructor(message: string, code: string, options?: ComposefsErrorOptions) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** Wrong arguments or options (the reference tools exit 2 for these). */
export class UsageError extends ComposefsError {
  constructor(message: string, options?: ComposefsErrorOptions) {
    super(message, 'usage', options);
  }
}

/** A file operation or system call failed: "what: reason", `errno` its symbolic code (ENOENT…). */
export class IoError extends ComposefsError {
  readonly errno: string | undefined;
  constructor(message: string, errno?: string, options?: ComposefsErrorOptions) {
    super(message, 'io', options);
    this.errno = errno;
  }
}

/** The input is not what it claims to be, or asks for what cannot be done (bad dump line, bad option value in a file…). */
/**
 * A signature, a signing key or a certificate, or a signed payload that is
 * refused: one line naming what (the signature, the key file, the payload)
 * and why. One class for OpenPGP, sigstore and PKCS#7 signatures alike.
 */
export class SignatureError extends ComposefsError {
  constructor(message: string, options?: ComposefsErrorOptions) {
    super(message, 'signature', options);
  }
}

export class InvalidInputError extends ComposefsError {
  constructor(message: string, options?: ComposefsErrorOptions) {
    super(message, 'invalid-input', options);
  }
}

// glibc's wording, which the reference tools print; libuv's (lower-case, sometimes other words) is the fallback.
const glibcText: Record<string, string> = {
  EPERM: 'Operation not permitted',
  ENOENT: 'No such file or directory',
  EIO: 'Input/output error',
  ENXIO: 'No such device or address',
  EBADF: 'Bad file descriptor',
  EAGAIN: 'Resource temporarily unavailable',
  ENOMEM: 'Cannot allocate memory',
  EACCES: 'Permission denied',
  EBUSY: 'Device or resource busy',
  EEXIST: 'File exists',
  EXDEV: 'Invalid cross-device link',
  ENODEV: 'No such device',
  ENOTDIR: 'Not a directory',
  EISDIR: 'Is a directory',
  EINVAL: 'Invalid argument',
  EMFILE: 'Too many open files',
  ENOTTY: 'Inappropriate ioctl for device',
  ETXTBSY: 'Text file busy',
  EFBIG: 'File too large',
  ENOSPC: 'No space left on device',
  ESPIPE: 'Illegal seek',
  EROFS: 'Read-only file system',
  EMLINK: 'Too many links',
  EPIPE: 'Broken pipe',
  ENAMETOOLONG: 'File name too long',
  ENOSYS: 'Function not implemented',
  ENOTEMPTY: 'Directory not empty',
  ELOOP: 'Too many levels of symbolic links',
  ENODATA: 'No data available',
  EOPNOTSUPP: 'Operation not supported',
  ENOTSUP: 'Operation not supported',
  EDQUOT: 'Disk quota exceeded',
  ENOTBLK: 'Block device required',
  ENOTCONN: 'Transport endpoint is not connected',
  ECONNREFUSED: 'Connection refused',
  ECONNRESET: 'Connection reset by peer',
  ETIMEDOUT: 'Connection timed out',
  EUCLEAN: 'Structure needs cleaning',
  EMSGSIZE: 'Message too long',
  EOVERFLOW: 'Value too large for defined data type',
};

const errnoNames = new Map<number, string>(Object.entries(constants.errno).map(([name, value]) => [value as number, name]));

/** The symbolic name of an errno number (2 → 'ENOENT'). */
export function errnoName(errno: number): string {
  return errnoNames.get(Math.abs(errno)) ?? `E${Math.abs(errno)}`;
}

/** The one errno-to-text function: 'ENOENT' or 2 → 'No such file or directory'. */
export function errnoText(errno: string | number): string {
  const name = typeof errno === 'number' ? errnoName(errno) : errno;
  const known = glibcText[name];
  if (known) return known;
  const number = typeof errno === 'number' ? -Math.abs(errno) : -((constants.errno as Record<string, number>)[name] ?? 0);
  const libuv = number ? getSystemErrorMap().get(number)?.[1] : undefined;
  return libuv ? libuv[0].toUpperCase() + libuv.slice(1) : name;
}

/** The reason part of any error: errno text for system errors, else the message. */
export function reasonOf(err: unknown): string {
  if (err instanceof IoError) return err.errno ? errnoText(err.errno) : err.message;
  const code = (err as NodeJS.ErrnoException | null)?.code;
  if (typeof code === 'string' && /^E[A-Z0-9]+$/.test(code)) return errnoText(code);
  if (err instanceof Error) return err.message;
  return String(err);
}

/** Wrap a Node or system-call error as "what: reason", keeping it as the cause. */
export function ioError(err: unknown, what: string): IoError {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  return new IoError(`${what}: ${reasonOf(err)}`, typeof code === 'string' ? code : undefined, { cause: err });
}
