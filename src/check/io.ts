/**
 * Small pieces the image-reading commands (info, dump, fsck) share: loading
 * an image file with one-line errors, printing bytes to stdout without
 * tripping over a closed pipe, writing an output file atomically, and the
 * reference tools' escaping of paths and payloads.
 */
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { ComposefsError, ioError } from '../errors.js';
import { ImageFormatError, readImage, type ReadImageResult } from '../erofs/reader.js';
import { dumpImage, listImage } from '../dumpfile/from-image.js';
import { ESCAPE_EQUAL, ESCAPE_KEEP_SPACE, ESCAPE_LONE_DASH, escapeField } from '../dumpfile/escape.js';

/** An image file that exists but cannot be read as an image: "Failed to load 'PATH': reason". */
export class ImageLoadError extends ComposefsError {
  constructor(path: string, cause: ImageFormatError) {
    super(`Failed to load '${path}': ${cause.message}`, 'image-format', { cause });
  }
}

/** Read a whole file; failures are an IoError "Failed to open 'PATH': reason". */
export function readFileOrFail(path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw ioError(err, `Failed to open '${path}'`);
  }
}

/** Read and parse an image file; failures are one line naming the file and the reason. */
export function loadImage(path: string): ReadImageResult & { image: Buffer } {
  const image = readFileOrFail(path);
  try {
    return { ...readImage(image), image };
  } catch (err) {
    if (err instanceof ImageFormatError) throw new ImageLoadError(path, err);
    throw err;
  }
}

/** Read an image file and print it as a dump file, or with `ls` as a listing (without building a tree). */
export function loadImageDump(path: string, ls = false): Buffer {
  const image = readFileOrFail(path);
  try {
    return ls ? listImage(image) : dumpImage(image);
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
 * Write a file so that readers never see a partial one: into a temporary
 * file beside it, then rename. A destination that exists and is not a regular
 * file (a device, a FIFO) is written in place. `-` means stdout.
 */
export function writeFileAtomic(dest: string, data: Buffer, what = 'write'): void {
  if (dest === '-') {
    writeStdout(data);
    return;
  }
  let special = false;
  try {
    special = !statSync(dest).isFile();
  } catch {
    special = false;
  }
  if (special) {
    let fd: number;
    try {
      fd = openSync(dest, 'w');
    } catch (err) {
      throw ioError(err, `failed to open '${dest}'`);
    }
    try {
      writeAll(fd, data);
    } catch (err) {
      throw ioError(err, `cannot ${what} '${dest}'`);
    } finally {
      closeSync(fd);
    }
    return;
  }
  const tmp = join(dirname(dest), `.${basename(dest)}.${process.pid}.${Date.now().toString(36)}.tmp`);
  let fd: number;
  try {
    fd = openSync(tmp, 'wx', 0o644);
  } catch (err) {
    throw ioError(err, `failed to open '${dest}'`);
  }
  try {
    writeAll(fd, data);
    fsyncSync(fd);
    closeSync(fd);
    renameSync(tmp, dest);
  } catch (err) {
    try {
      closeSync(fd);
    } catch {
      /* already closed */
    }
    try {
      unlinkSync(tmp);
    } catch {
      /* nothing to clean */
    }
    throw ioError(err, `cannot ${what} '${dest}'`);
  }
}

function writeAll(fd: number, data: Buffer): void {
  let off = 0;
  while (off < data.length) off += writeSync(fd, data, off, data.length - off);
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
