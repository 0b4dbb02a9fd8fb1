/**
 * A layer blob's bytes decompressed (tar, tar+gzip or tar+zstd, sniffed from
 * its first bytes), and the error a bad layer gives. Apart from layer.ts so
 * that the inflating thread (inflate-worker.ts) needs nothing of the import.
 */
import { createGunzip } from 'node:zlib';
import { Readable } from 'node:stream';
import { ComposefsError, type ComposefsErrorOptions } from '../errors.js';

export type Compression = 'none' | 'gzip' | 'zstd';

export class LayerError extends ComposefsError {
  constructor(message: string, options?: ComposefsErrorOptions) {
    super(message, 'layer', options);
  }
}

/** Blocks (each at most 128 KiB out) the zstd decoder completes per push: at most 1 MiB held. */
const ZSTD_BLOCKS_PER_PUSH = 8;

/** Sniff the compression from the first bytes. */
export function sniffCompression(head: Buffer): Compression {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 4 && head.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
  return 'none';
}

/** The blob's bytes decompressed, chunk by chunk. Errors name the layer and the format. */
export async function* decompress(blob: AsyncIterable<Buffer>, what: string): AsyncGenerator<Buffer> {
  const it = blob[Symbol.asyncIterator]();
  let first = await it.next();
  while (!first.done && first.value.length < 4) {
    const more = await it.next();
    if (more.done) break;
    first = { done: false, value: Buffer.concat([first.value, more.value]) };
  }
  if (first.done) return;
  const head = first.value;
  const rest: AsyncIterable<Buffer> = {
    [Symbol.asyncIterator]: () => {
      let sentHead = false;
      return {
        next: async () => {
          if (!sentHead) {
            sentHead = true;
            return { done: false, value: head };
          }
          return it.next();
        },
        return: async () => {
          await it.return?.();
          return { done: true, value: undefined };
        },
      };
    },
  };
  const kind = sniffCompression(head);
  if (kind === 'none') {
    yield* rest;
    return;
  }
  if (kind === 'gzip') {
    // 256 KiB output chunks: fewer hand-offs from the thread pool than the default 16 KiB.
    const gunzip = createGunzip({ chunkSize: 256 * 1024 });
    const input = Readable.from(rest);
    input.on('error', (err) => gunzip.destroy(err));
    input.pipe(gunzip);
    try {
      for await (const chunk of gunzip) yield chunk as Buffer;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code?.startsWith('Z_')) throw new LayerError(`${what}: corrupt gzip data: ${(err as Error).message}`, { cause: err });
      throw err;
    } finally {
      input.destroy();
      gunzip.destroy();
    }
    return;
  }
  // Bounded output: the input goes to the decoder in pieces completing at
  // most a few blocks each (zstd-frames.ts), and each piece's blocks are
  // handed on before the next is pushed.
  const [{ Decompress }, { ZstdBlockWalker, ZstdFormatError }] = await Promise.all([import('fzstd'), import('./zstd-frames.js')]);
  const out: Buffer[] = [];
  const d = new Decompress((data: Uint8Array) => {
    out.push(Buffer.from(data.buffer, data.byteOffset, data.length));
  });
  const walker = new ZstdBlockWalker();
  const fail = (err: unknown) => new LayerError(`${what}: ${err instanceof ZstdFormatError ? err.kind : 'corrupt'} zstd data: ${(err as Error).message}`, { cause: err });
  for await (const chunk of rest) {
    let pieces: Uint8Array[];
    try {
      pieces = walker.split(chunk, ZSTD_BLOCKS_PER_PUSH);
    } catch (err) {
      throw fail(err);
    }
    for (const piece of pieces) {
      try {
        d.push(piece);
      } catch (err) {
        throw fail(err);
      }
      while (out.length > 0) yield out.shift()!;
    }
  }
  try {
    walker.end();
    d.push(new Uint8Array(0), true); // throws on a truncated frame
  } catch (err) {
    throw fail(err);
  }
  while (out.length > 0) yield out.shift()!;
}
