/**
 * A streaming tar reader for container layers: bytes go in as they arrive
 * (`push`), entries come out as headers plus their contents in chunks, and
 * nothing but one header block and the current PAX or long-name record is
 * ever held, so memory stays bounded whatever the archive or file sizes.
 *
 * Headers are decoded by tar-header.ts (formats, PAX records, numbers);
 * this file is the stream around it: records collected for the next
 * header, contents handed on in chunks, sparse files with their holes
 * filled with zeros (old GNU 'S' with extension blocks, PAX 0.0, 0.1 and
 * 1.0). Header-only types (links, devices, directories, FIFOs) have no
 * contents whatever their size field says, as in Go's reader.
 *
 * Anything malformed throws a `TarError` naming the entry: a bad checksum, a
 * truncated archive, an oversized PAX record, an absurd size.
 */
import {
  BLOCK,
  TarError,
  applyRecord,
  decodeHeader,
  decodePaxSparseMap,
  entryLabel,
  isZeroBlock,
  noExtensions,
  readGnuSparseExtension,
  show,
  type TarExtensions,
  type TarHeader,
  type TarRecordKind,
  type TarSparseSegment,
} from './tar-header.js';

export { TarError, show, type TarEntryType, type TarHeader, type TarXattr } from './tar-header.js';

/** Where an entry's contents go: `write` gets chunks in order (views: copy what you keep), `end` once. */
export interface TarSink {
  write(chunk: Buffer): void;
  end(): void;
}

export interface TarLimits {
  /** Largest PAX extended header or GNU long name/link record (default 1 MiB). */
  maxRecord?: number;
  /** Largest file size accepted, sparse real sizes included (default 2^40, 1 TiB). */
  maxFileSize?: number;
}

const DEFAULT_MAX_RECORD = 1 << 20;
const DEFAULT_MAX_FILE = 2 ** 40;
const ZEROS = Buffer.alloc(64 * 1024);

const enum State {
  Header,
  Record,
  Data,
  SparseMap,
  Skip,
  Eof,
}

type RecordKind = TarRecordKind | 'gnusparse';
type Segment = TarSparseSegment;

export class TarParser {
  private state = State.Header;
  private readonly block = Buffer.alloc(BLOCK);
  private blockFill = 0;
  /** Record being collected (PAX, long name, sparse map blocks). */
  private record: Buffer | null = null;
  private recordFill = 0;
  private recordKind: RecordKind = 'pax';
  private pending: TarExtensions = noExtensions();
  /** Bytes of stored data left in the current entry, and padding after it. */
  private remaining = 0;
  private padding = 0;
  private sink: TarSink | null = null;
  private header: TarHeader | null = null;
  /** Sparse: segments of the current entry, the one being filled, and the logical position. */
  private segments: Segment[] | null = null;
  private segIndex = 0;
  private segLeft = 0;
  private logical = 0;
  private zeroBlocks = 0;
  private readonly maxRecord: number;
  private readonly maxFileSize: number;
  /** Entries seen, for messages about entries without a usable name. */
  private entries = 0;
  /** Stored-data size and map so far of a GNU 'S' entry, whose extension blocks come first. */
  private gnuSparse: { stored: number; segments: Segment[]; blocks: number } | null = null;

  constructor(
    private readonly onEntry: (header: TarHeader) => TarSink | null,
    limits: TarLimits = {},
  ) {
    this.maxRecord = limits.maxRecord ?? DEFAULT_MAX_RECORD;
    this.maxFileSize = limits.maxFileSize ?? DEFAULT_MAX_FILE;
  }

  /** True once the end-of-archive marker (two zero blocks) was read. */
  get finished(): boolean {
    return this.state === State.Eof;
  }

  push(chunk: Buffer): void {
    let off = 0;
    const len = chunk.length;
    while (off < len) {
      switch (this.state) {
        case State.Eof:
          return; // trailing bytes after the end marker are ignored, as GNU tar pads
        case State.Header: {
          if (this.blockFill === 0 && len - off >= BLOCK) {
            this.onHeaderBlock(chunk.subarray(off, off + BLOCK));
            off += BLOCK;
          } else {
            const take = Math.min(BLOCK - this.blockFill, len - off);
            chunk.copy(this.block, this.blockFill, off, off + take);
            this.blockFill += take;
            off += take;
            if (this.blockFill === BLOCK) {
              this.blockFill = 0;
              this.onHeaderBlock(this.block);
            }
          }
          break;
        }
        case State.Record:
        case State.SparseMap: {
          const rec = this.record!;
          const take = Math.min(rec.length - this.recordFill, len - off);
          chunk.copy(rec, this.recordFill, off, off + take);
          this.recordFill += take;
          off += take;
          if (this.recordFill === rec.length) {
            if (this.state === State.Record) this.onRecord();
            else this.onSparseMapBlock();
          }
          break;
        }
        case State.Data: {
          const take = Math.min(this.remaining, len - off);
          if (take > 0) this.emit(chunk.subarray(off, off + take));
          this.remaining -= take;
          off += take;
          if (this.remaining === 0) this.finishEntry();
          break;
        }
        case State.Skip: {
          const take = Math.min(this.padding, len - off);
          this.padding -= take;
          off += take;
          if (this.padding === 0) this.state = State.Header;
          break;
        }
      }
    }
  }

  /** The stream ended: anything but a complete archive is an error. A missing end marker is tolerated after a complete entry, as Go's reader does. */
  end(): void {
    if (this.state === State.Eof) return;
    if (this.state === State.Header && this.blockFill === 0 && this.zeroBlocks <= 1) {
      this.state = State.Eof;
      return;
    }
    const what = this.header ? `entry ${show(this.header.path)}` : `the archive after ${this.entries} entries`;
    throw new TarError(`${what}: truncated tar archive`);
  }

  private onHeaderBlock(b: Buffer): void {
    if (isZeroBlock(b)) {
      this.zeroBlocks++;
      if (this.zeroBlocks === 2) this.state = State.Eof;
      return;
    }
    if (this.zeroBlocks === 1) this.zeroBlocks = 0; // one lone zero block: go on, as GNU tar does
    const decoded = decodeHeader(b, this.pending, this.entries + 1);
    if (decoded.kind === 'record') {
      const { record, size } = decoded;
      if (size > this.maxRecord) throw new TarError(`entry ${entryLabel(this.pending, this.entries + 1)}: ${record === 'longname' || record === 'longlink' ? 'GNU long name' : 'PAX'} record of ${size} bytes exceeds the limit of ${this.maxRecord}`);
      this.recordKind = record;
      this.startRecord(size);
      return;
    }
    if (decoded.kind === 'skip') {
      this.skipData(decoded.size);
      return;
    }
    const { header, stored, sparse } = decoded;
    this.entries++;
    if (stored > this.maxFileSize) throw new TarError(`entry ${show(header.path)}: absurd size ${stored} (limit ${this.maxFileSize})`);
    this.pending = noExtensions();
    this.header = header;

    if (header.type !== 'file') {
      this.sink = this.onEntry(header);
      this.sink?.end();
      this.sink = null;
      this.header = null;
      return;
    }
    if (!sparse) {
      this.beginData(stored, null);
      return;
    }
    if (sparse.realSize > this.maxFileSize) throw new TarError(`entry ${show(header.path)}: absurd sparse size ${sparse.realSize} (limit ${this.maxFileSize})`);
    switch (sparse.form) {
      case 'gnu':
        this.gnuSparse = { stored, segments: sparse.segments, blocks: 0 };
        if (sparse.extended) {
          this.recordKind = 'gnusparse';
          this.startRecord(BLOCK);
        } else this.beginData(stored, sparse.segments);
        return;
      case 'pax-1.0':
        // The map is at the start of the data, in 512-byte blocks.
        this.remaining = stored;
        this.padding = pad(stored);
        this.record = Buffer.alloc(BLOCK);
        this.recordFill = 0;
        this.sparseText = [];
        this.sparseLines = 0;
        this.sparseLinesNeeded = 1;
        this.sink = null;
        this.state = State.SparseMap;
        return;
      case 'pax-map':
        this.beginData(stored, sparse.segments);
        return;
    }
  }

  /** PAX 1.0: the map's blocks so far, their complete lines, and how many lines the map needs (known once its count is). */
  private sparseText: Buffer[] = [];
  private sparseLines = 0;
  private sparseLinesNeeded = 1;

  private beginData(stored: number, segments: Segment[] | null): void {
    const header = this.header!;
    if (segments) this.checkSegments(segments, stored, header);
    this.segments = segments;
    this.segIndex = 0;
    this.segLeft = 0;
    this.logical = 0;
    this.remaining = stored;
    this.padding = pad(stored);
    this.sink = this.onEntry(header);
    if (stored === 0) this.finishEntry();
    else this.state = State.Data;
  }

  private checkSegments(segments: Segment[], stored: number, header: TarHeader): void {
    let end = 0;
    let total = 0;
    for (const s of segments) {
      if (s.offset < end || s.offset + s.length > header.size) throw new TarError(`entry ${show(header.path)}: malformed sparse map`);
      end = s.offset + s.length;
      total += s.length;
    }
    if (total !== stored) throw new TarError(`entry ${show(header.path)}: sparse map holds ${total} bytes but the entry stores ${stored}`);
  }

  private emit(data: Buffer): void {
    const sink = this.sink;
    if (!this.segments) {
      sink?.write(data);
      return;
    }
    let off = 0;
    while (off < data.length) {
      if (this.segLeft === 0) {
        const seg = this.segments[this.segIndex++];
        this.fillZeros(seg.offset - this.logical);
        this.segLeft = seg.length;
        if (this.segLeft === 0) continue;
      }
      const take = Math.min(this.segLeft, data.length - off);
      sink?.write(data.subarray(off, off + take));
      this.segLeft -= take;
      this.logical += take;
      off += take;
    }
  }

  private fillZeros(n: number): void {
    while (n > 0) {
      const take = Math.min(n, ZEROS.length);
      this.sink?.write(ZEROS.subarray(0, take));
      this.logical += take;
      n -= take;
    }
  }

  private finishEntry(): void {
    if (this.segments) {
      this.fillZeros(this.header!.size - this.logical);
      this.segments = null;
    }
    this.sink?.end();
    this.sink = null;
    this.header = null;
    this.state = this.padding > 0 ? State.Skip : State.Header;
  }

  private skipData(size: number): void {
    this.padding = size + pad(size);
    this.state = this.padding > 0 ? State.Skip : State.Header;
  }

  private startRecord(size: number): void {
    this.record = Buffer.alloc(size + pad(size));
    this.recordFill = 0;
    this.state = State.Record;
    if (this.record.length === 0) this.onRecord();
  }

  private onRecord(): void {
    const rec = this.record!;
    this.record = null;
    this.state = State.Header;
    if (this.recordKind !== 'gnusparse') {
      applyRecord(this.recordKind, rec, this.pending, entryLabel(this.pending, this.entries + 1));
      return;
    }
    const g = this.gnuSparse!;
    if (++g.blocks * BLOCK > this.maxRecord) throw new TarError(`entry ${show(this.header!.path)}: GNU sparse map exceeds the limit of ${this.maxRecord} bytes`);
    if (readGnuSparseExtension(rec, g.segments, () => show(this.header!.path))) {
      this.startRecord(BLOCK);
      return;
    }
    this.gnuSparse = null;
    this.beginData(g.stored, g.segments);
  }

  /** PAX sparse 1.0: the map's blocks are collected until it is whole; the data follows it. */
  private onSparseMapBlock(): void {
    const header = this.header!;
    this.remaining -= BLOCK;
    if (this.remaining < 0) throw new TarError(`entry ${show(header.path)}: truncated sparse map`);
    const block = this.record!;
    this.sparseText.push(block);
    if (this.sparseText.length * BLOCK > this.maxRecord) throw new TarError(`entry ${show(header.path)}: sparse map exceeds the limit of ${this.maxRecord} bytes`);
    for (let i = block.indexOf(0x0a); i >= 0; i = block.indexOf(0x0a, i + 1)) this.sparseLines++;
    // Decoded only when it can be whole: once for its count, once for the map, whatever its length.
    let decoded = this.sparseLines >= this.sparseLinesNeeded ? decodePaxSparseMap(Buffer.concat(this.sparseText).toString('latin1'), () => show(header.path)) : null;
    if (decoded && 'lines' in decoded) {
      this.sparseLinesNeeded = decoded.lines;
      decoded = null;
    }
    if (!decoded) {
      this.record = Buffer.alloc(BLOCK);
      this.recordFill = 0;
      return;
    }
    const { segments } = decoded;
    this.record = null;
    this.sparseText = [];
    const padding = this.padding;
    this.beginData(this.remaining, segments);
    this.padding = padding;
    if (this.state !== State.Data && this.state !== State.Eof) this.state = padding > 0 ? State.Skip : State.Header;
  }
}

function pad(n: number): number {
  const r = n % BLOCK;
  return r === 0 ? 0 : BLOCK - r;
}
