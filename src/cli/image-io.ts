/**
 * Small pieces the image-reading commands (info, dump, fsck) share: loading
 * an image file with one-line errors, printing bytes to stdout without
 * tripping over a closed pipe, and the reference tools' escaping of paths
 * and payloads. (Output files are written by src/output/file.ts.)
 */
import { closeSync, fstatSync, openSync, readFileSync, writeSync, constants as fsc } from 'node:fs';
import { ComposefsError, IoError, ioError } from '../errors.js';
import { ImageFormatError, readImage, type ReadImageOptions, type ReadImageResult } from '../erofs/reader.js';
import { dumpImage, listImage } from '../dumpfile/from-image.js';
import { ESCAPE_EQUAL, ESCAPE_KEEP_SPACE, ESCAPE_LONE_DASH, escapeField } from '../dumpfile/escape.js';

/** An image file that exists but cannot be read as an image: "Failed to load 'PATH': reason". */
export class ImageLoadError extends ComposefsError {
  constructor(path: string, cause: ImageFormatError) {
    super(`Failed to load '${path}': ${cause.message}`, 'image-format', { cause });
  }
}

/**
 * Read a whole file; failures are an IoError "Failed to open 'PATH': reason".
 * Opened without blocking and refused unless a regular file or block device:
 * a FIFO would wait forever for a writer.
 */
export function readFileOrFail(path: string): Buffer {
  let fd: number;
  try {
    fd = openSync(path, fsc.O_RDONLY | fsc.O_NONBLOCK | fsc.O_NOCTTY);
  } catch (err) {
    throw ioError(err, `Failed to open '${path}'`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() && !st.isBlockDevice()) {
      throw new IoError(`Failed to open '${path}': ${st.isDirectory() ? 'Is a directory' : 'not a regular file or block device'}`, st.isDirectory() ? 'EISDIR' : undefined);
    }
    return readFileSync(fd);
  } catch (err) {
    if (err instanceof IoError) throw err;
    throw ioError(err, `Failed to read '${path}'`);
  } finally {
    closeSync(fd);
  }
}

/** What of an image to read: `topLevel` keeps only those entries of the root (and all below them), as composefs-info --filter. */
export type LoadImageOptions = Pick<ReadImageOptions, 'topLevel'>;

/** Read and parse an image file; failures are one line naming the file and the reason. */
export function loadImage(path: string, opts: LoadImageOptions = {}): ReadImageResult & { image: Buffer } {
  const image = readFileOrFail(path);
  try {
    return { ...readImage(image, opts), image };
  } catch (err) {
    if (err instanceof ImageFormatError) throw new ImageLoadError(path, err);
    throw err;
  }
}

/** Read an image file and print it as a dump file, or with `ls` as a listing (without building a tree). */
export function loadImageDump(path: string, ls = false, opts: LoadImageOptions = {}): Buffer {
  const image = readFileOrFail(path);
  try {
    return ls ? listImage(image, opts) : dumpImage(image, opts);
  } catch (err) {
    if (err instanceof ImageFormatError) throw new ImageLoadError(path, err);
    throw err;
  }
}

let pipeHandled = false;

/** A reader that closed our stdout early (`| head`) ends the process quietly, as with C tools. */
export function quietOnClosedStdout(): void {
  if (pipeHandled) return;
  pipeHandled = true;
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw err;
  });
}

/** Collects output as strings and buffers and writes it to stdout in large pieces. */
export class Output {
  private parts: Array<string | Buffer> = [];
  private size = 0;

  /** `sink` receives each flushed piece (default: stdout). */
  constructor(private readonly sink: (buf: Buffer) => void = writeStdout) {}

  text(s: string): void {
    this.parts.push(s);
    this.size += s.length;
    if (this.size > 1 << 22) this.flush();
  }

  bytes(b: Buffer): void {
    this.parts.push(b);
    this.size += b.length;
    if (this.size > 1 << 22) this.flush();
  }

  flush(): void {
    if (this.parts.length === 0) return;
    const buf = Buffer.concat(this.parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'latin1') : p)));
    this.parts = [];
    this.size = 0;
    this.sink(buf);
  }
}

/** Write to fd 1 synchronously (pipes included), so output is complete before the process exits. */
export function writeStdout(buf: Buffer): void {
  quietOnClosedStdout();
  let off = 0;
  while (off < buf.length) {
    try {
      off += writeSync(1, buf, off, buf.length - off);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      if (e.code === 'EAGAIN') continue;
      if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
      throw err;
    }
  }
}

/**
 * The reference tools' escaping (composefs-info's print_escaped), as a
 * string: the dump format's escapes (src/dumpfile/escape.ts), a space kept
 * with `keepSpace`, `=` escaped with `escapeEqual`, a lone `-` as `\\x2d` with
 * `escapeLoneDash`.
 */
export function escapeBytes(b: Uint8Array, opts: { keepSpace?: boolean; escapeEqual?: boolean; escapeLoneDash?: boolean } = {}): string {
  const flags = (opts.keepSpace ? ESCAPE_KEEP_SPACE : 0) | (opts.escapeEqual ? ESCAPE_EQUAL : 0) | (opts.escapeLoneDash ? ESCAPE_LONE_DASH : 0);
  return escapeField(b, flags);
}
