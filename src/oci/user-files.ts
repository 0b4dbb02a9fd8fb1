/**
 * Reading a small file the user named (a policy, a key, a certificate):
 * opened without blocking and refused unless it is a regular file (a FIFO
 * would wait forever for a writer, a device would never end), and refused
 * when larger than the caller's bound rather than read whole.
 */
import { open } from 'node:fs/promises';
import { constants } from 'node:fs';
import { ComposefsError, ioError } from '../errors.js';
import { printable } from '../printable.js';

export class UserFileError extends ComposefsError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, 'user-file', options);
  }
}

/**
 * The bytes of `path`, at most `max`; null when it does not exist and
 * `missingOk`. Errors are one line: "`what` PATH: reason".
 */
export async function readUserFile(path: string, max: number, what: string, missingOk = false): Promise<Buffer | null> {
  let fh;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (err) {
    if (missingOk && (err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw ioError(err, `${what} ${printable(path)}`);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new UserFileError(`${what} ${printable(path)}: ${st.isDirectory() ? 'is a directory' : 'not a regular file'}`);
    if (st.size > max) throw new UserFileError(`${what} ${printable(path)}: larger than ${max} bytes`);
    // Sized by the file, not by the bound: what is returned keeps its whole buffer alive, and a
    // policy may name the same small key file thousands of times (8 MiB each, held until checked).
    let buf = Buffer.alloc(Math.min(max, st.size) + 1);
    let got = 0;
    for (;;) {
      if (got === buf.length) {
        // Grown since fstat (or a file whose size says nothing): more room, still within the bound.
        const bigger = Buffer.alloc(Math.min(max + 1, buf.length * 2));
        buf.copy(bigger, 0, 0, got);
        buf = bigger;
      }
      const { bytesRead } = await fh.read(buf, got, buf.length - got, got);
      if (bytesRead === 0) break;
      got += bytesRead;
      if (got > max) throw new UserFileError(`${what} ${printable(path)}: larger than ${max} bytes`);
    }
    return buf.subarray(0, got);
  } catch (err) {
    if (err instanceof ComposefsError) throw err;
    throw ioError(err, `${what} ${printable(path)}`);
  } finally {
    await fh.close();
  }
}
