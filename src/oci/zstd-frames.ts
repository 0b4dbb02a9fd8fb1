/**
 * The block structure of a zstd stream (RFC 8878), walked ahead of the
 * decoder so that the decoder's output stays bounded whatever the ratio.
 *
 * fzstd's streaming decoder calls back once per block (at most 128 KiB out)
 * but decodes every complete block of the input it is given before it
 * returns: a 1 MiB message of a bomb (a 4-byte RLE block inflates to 128
 * KiB) comes back as gigabytes at once. Here the input is cut into pieces
 * that each complete at most a few blocks, and the caller hands each piece's
 * output on before pushing the next one.
 *
 * The walk also refuses what would make the decoder allocate beyond the
 * bound: a window over 128 MiB (what `zstd -d` accepts without
 * `--memory`; fzstd allocates the window, and for a single-segment frame the
 * whole content size, up front), blocks over the format's 128 KiB, frames
 * needing a dictionary (fzstd has none), and reserved values.
 */

/** Largest window a frame may ask for: zstd's default decoding limit (windowLog 27). */
export const MAX_WINDOW_BYTES = 128 << 20;
const MAX_BLOCK_BYTES = 128 << 10;
const ZSTD_MAGIC = 0xfd2fb528;
const SKIPPABLE_MASK = 0xfffffff0;
const SKIPPABLE_MAGIC = 0x184d2a50;

/** `corrupt`: not valid zstd; `refused`: valid, but beyond what is decoded here. */
export class ZstdFormatError extends Error {
  constructor(
    message: string,
    readonly kind: 'corrupt' | 'refused' = 'corrupt',
  ) {
    super(message);
  }
}

type State = 'magic' | 'descriptor' | 'frame-header' | 'block-header' | 'skippable-size';

export class ZstdBlockWalker {
  private state: State = 'magic';
  /** Header bytes gathered so far (a frame header is at most 14 bytes past its magic and descriptor). */
  private readonly head = new Uint8Array(16);
  private have = 0;
  private need = 4;
  /** Bytes of a block body, checksum or skippable frame still to pass over. */
  private skip = 0;
  /** What ends when `skip` reaches 0. */
  private skipping: 'block' | 'checksum' | 'skippable' = 'block';
  private descriptor = 0;
  private blockMax = 0;
  private lastBlock = false;

  /**
   * `chunk` cut into consecutive pieces, each completing at most `maxBlocks`
   * blocks. Throws ZstdFormatError on what the walk refuses.
   */
  split(chunk: Uint8Array, maxBlocks: number): Uint8Array[] {
    const pieces: Uint8Array[] = [];
    let start = 0;
    let ended = 0;
    let pos = 0;
    const blockEnded = () => {
      if (++ended < maxBlocks) return;
      pieces.push(chunk.subarray(start, pos));
      start = pos;
      ended = 0;
    };
    while (pos < chunk.length) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, chunk.length - pos);
        pos += n;
        this.skip -= n;
        if (this.skip === 0 && this.endSkip()) blockEnded();
        continue;
      }
      this.head[this.have++] = chunk[pos++];
      if (this.have < this.need) continue;
      if (this.header()) blockEnded();
    }
    if (start < chunk.length) pieces.push(chunk.subarray(start));
    return pieces;
  }

  /** Throws unless the stream ended between frames. */
  end(): void {
    if (this.state !== 'magic' || this.have !== 0 || this.skip !== 0) throw new ZstdFormatError('truncated zstd stream');
  }

  private expect(state: State, bytes: number): void {
    this.state = state;
    this.have = 0;
    this.need = bytes;
  }

  /** A skip ended; true when it was a block's body. */
  private endSkip(): boolean {
    if (this.skipping === 'block') {
      this.afterBlock();
      return true;
    }
    this.expect('magic', 4);
    return false;
  }

  private afterBlock(): void {
    if (!this.lastBlock) this.expect('block-header', 3);
    else if (this.descriptor & 4) {
      this.expect('magic', 4);
      this.skipping = 'checksum';
      this.skip = 4;
    } else this.expect('magic', 4);
  }

  /** A complete header in `head`; true when it ended a block (one with nothing after its header). */
  private header(): boolean {
    const h = this.head;
    switch (this.state) {
      case 'magic': {
        const magic = (h[0] | (h[1] << 8) | (h[2] << 16) | (h[3] << 24)) >>> 0;
        if (magic === ZSTD_MAGIC) this.expect('descriptor', 1);
        else if (((magic & SKIPPABLE_MASK) >>> 0) === SKIPPABLE_MAGIC) this.expect('skippable-size', 4);
        else throw new ZstdFormatError('not a zstd frame');
        return false;
      }
      case 'skippable-size': {
        this.skip = (h[0] | (h[1] << 8) | (h[2] << 16) | (h[3] << 24)) >>> 0;
        this.skipping = 'skippable';
        this.expect('magic', 4);
        return false;
      }
      case 'descriptor': {
        const d = h[0];
        if (d & 8) throw new ZstdFormatError('reserved bit set in a frame header');
        this.descriptor = d;
        const singleSegment = (d >> 5) & 1;
        const dictBytes = [0, 1, 2, 4][d & 3];
        const fcsFlag = d >> 6;
        const sizeBytes = fcsFlag === 0 ? singleSegment : 1 << fcsFlag;
        this.expect('frame-header', (singleSegment ? 0 : 1) + dictBytes + sizeBytes);
        return false;
      }
      case 'frame-header': {
        const d = this.descriptor;
        const singleSegment = (d >> 5) & 1;
        const dictBytes = [0, 1, 2, 4][d & 3];
        const fcsFlag = d >> 6;
        let at = 0;
        let window = 0;
        if (!singleSegment) {
          const wd = h[at++];
          const base = 2 ** (10 + (wd >> 3));
          window = base + (base / 8) * (wd & 7);
        }
        let dictionary = 0;
        for (let i = 0; i < dictBytes; i++) dictionary += h[at++] * 2 ** (8 * i);
        if (dictionary !== 0) throw new ZstdFormatError(`frame needs dictionary ${dictionary}`, 'refused');
        if (singleSegment) {
          const sizeBytes = fcsFlag === 0 ? 1 : 1 << fcsFlag;
          let size = 0;
          for (let i = 0; i < sizeBytes; i++) size += h[at++] * 2 ** (8 * i);
          window = fcsFlag === 1 ? size + 256 : size;
        }
        if (window > MAX_WINDOW_BYTES) throw new ZstdFormatError(`frame needs a window of ${window} bytes, more than ${MAX_WINDOW_BYTES}`, 'refused');
        this.blockMax = Math.min(window, MAX_BLOCK_BYTES);
        this.expect('block-header', 3);
        return false;
      }
      case 'block-header': {
        const v = h[0] | (h[1] << 8) | (h[2] << 16);
        this.lastBlock = (v & 1) === 1;
        const type = (v >> 1) & 3;
        const size = v >>> 3;
        if (type === 3) throw new ZstdFormatError('reserved block type');
        if (size > this.blockMax) throw new ZstdFormatError(`block of ${size} bytes, more than the frame's ${this.blockMax}`);
        this.skipping = 'block';
        this.skip = type === 1 ? 1 : size; // an RLE block holds its one byte
        if (this.skip > 0) {
          this.expect('block-header', 3); // the state after the body is set when it ends
          return false;
        }
        this.afterBlock();
        return true;
      }
    }
  }
}
