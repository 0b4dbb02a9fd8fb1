/**
 * Where the local transports read their files: a directory, or the members
 * of an uncompressed tar read in place (an archive is never unpacked: each
 * member is a byte range of the archive file).
 */
import { createReadStream } from 'node:fs';
import { open, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { ioError } from '../errors.js';
import { SourceError } from './source-errors.js';
import { BLOCK, TarError, applyRecord, decodeHeader, entryLabel, isZeroBlock, noExtensions, readGnuSparseExtension, show } from './tar-header.js';

export interface FileSet {
  /** Size of a member, or undefined when there is none. */
  size(path: string): Promise<number | undefined>;
  /** A member whole; at most `max` bytes (more is an error naming `what`). */
  read(path: string, max: number, what: string): Promise<Buffer>;
  /** A member's bytes as a stream. */
  stream(path: string, signal?: AbortSignal): AsyncIterable<Buffer>;
  close(): Promise<void>;
}

function tooLarge(what: string, size: number, max: number): SourceError {
  return new SourceError(`${what}: too large (${size} bytes, at most ${max} read whole)`, 'invalid-manifest');
}

export class DirectoryFiles implements FileSet {
  constructor(readonly root: string) {}

  async size(path: string): Promise<number | undefined> {
    try {
      const st = await stat(join(this.root, path));
      return st.isFile() ? st.size : undefined;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return undefined;
      throw ioError(err, join(this.root, path));
    }
  }

  async read(path: string, max: number, what: string): Promise<Buffer> {
    const size = await this.size(path);
    if (size === undefined) throw new SourceError(`${what}: not found (${join(this.root, path)})`, 'not-found');
    if (size > max) throw tooLarge(what, size, max);
    let fh: FileHandle | undefined;
    try {
      fh = await open(join(this.root, path), 'r');
      return await fh.readFile();
    } catch (err) {
      throw ioError(err, join(this.root, path));
    } finally {
      await fh?.close();
    }
  }

  stream(path: string, signal?: AbortSignal): AsyncIterable<Buffer> {
    return createReadStream(join(this.root, path), { highWaterMark: 1 << 20, signal });
  }

  async close(): Promise<void> {}
}

interface Member {
  offset: number;
  size: number;
}

/** Largest PAX or GNU long-name record read (as the layer reader's default). */
const MAX_RECORD = 1 << 20;

function normalizeMember(name: string): string {
  return name.replace(/^(?:\.?\/)+/, '').replace(/\/+$/, '');
}

/** An uncompressed tar's regular files, located by one pass over its headers (data is skipped, not read). */
export class TarFiles implements FileSet {
  private constructor(
    readonly file: string,
    private readonly handle: FileHandle,
    private readonly members: Map<string, Member>,
  ) {}

  static async open(file: string, what: string): Promise<TarFiles> {
    let handle: FileHandle;
    try {
      handle = await open(file, 'r');
    } catch (err) {
      throw ioError(err, file);
    }
    try {
      const members = await TarFiles.index(handle, file, what);
      return new TarFiles(file, handle, members);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  private static async index(handle: FileHandle, file: string, what: string): Promise<Map<string, Member>> {
    const members = new Map<string, Member>();
    const total = (await handle.stat()).size;
    const header = Buffer.alloc(BLOCK);
    let offset = 0;
    let ext = noExtensions();
    let ordinal = 0;
    const links = new Map<string, string>();
    const malformed = (reason: string, cause?: unknown) => new SourceError(`${what}: not a readable tar archive (${reason})`, 'invalid-manifest', cause === undefined ? undefined : { cause });
    const readAt = async (buf: Buffer, at: number) => {
      const { bytesRead } = await handle.read(buf, 0, buf.length, at);
      return bytesRead;
    };
    const readBlock = async (at: number) => {
      if ((await readAt(header, at)) < BLOCK) throw malformed(at === 0 ? 'empty file' : `truncated at byte ${at}`);
    };
    if (total >= 2 && (await readAt(header.subarray(0, 2), 0)) === 2 && header[0] === 0x1f && header[1] === 0x8b) {
      throw new SourceError(`${what}: compressed archives are not supported (decompress ${file} first)`, 'unsupported');
    }
    try {
      for (;;) {
        await readBlock(offset);
        if (isZeroBlock(header)) break;
        const decoded = decodeHeader(header, ext, ordinal + 1);
        let dataOffset = offset + BLOCK;
        let size: number;
        if (decoded.kind === 'record') {
          size = decoded.size;
          if (size > MAX_RECORD) throw malformed(`oversized ${decoded.record === 'longname' || decoded.record === 'longlink' ? 'long name' : 'PAX'} record at byte ${offset}`);
          const data = Buffer.alloc(size);
          if ((await readAt(data, dataOffset)) < size) throw malformed(`truncated at byte ${dataOffset}`);
          applyRecord(decoded.record, data, ext, entryLabel(ext, ordinal + 1));
        } else if (decoded.kind === 'skip') {
          size = decoded.size;
        } else {
          ordinal++;
          ext = noExtensions();
          const h = decoded.header;
          size = h.type === 'file' ? decoded.stored : 0;
          if (decoded.sparse?.form === 'gnu' && decoded.sparse.extended) {
            // The map's extension blocks come before the data; only their count matters here.
            do {
              await readBlock(dataOffset);
              dataOffset += BLOCK;
            } while (readGnuSparseExtension(header, [], () => show(h.path)));
          }
          const name = normalizeMember(h.path.toString('utf8'));
          // A sparse member's stored bytes are not its contents: not offered.
          if (h.type === 'file' && !decoded.sparse) members.set(name, { offset: dataOffset, size });
          else if (h.type === 'hardlink' || h.type === 'symlink') {
            // skopeo's docker-archive writes HEX/layer.tar as a symlink to HEX.tar: followed (inside the archive only).
            const target = h.linkname.toString('utf8');
            const parts = h.type === 'hardlink' ? [] : name.split('/').slice(0, -1);
            for (const part of target.split('/')) {
              if (part === '..') parts.pop();
              else if (part !== '.' && part !== '') parts.push(part);
            }
            links.set(name, h.type === 'hardlink' ? normalizeMember(target) : parts.join('/'));
          }
        }
        offset = dataOffset + Math.ceil(size / BLOCK) * BLOCK;
        if (offset > total) throw malformed(`truncated: an entry ends past the end of the file`);
      }
    } catch (err) {
      if (err instanceof TarError) throw malformed(`${err.message} at byte ${offset}`, err);
      throw err;
    }
    for (const [name, target] of links) {
      let resolved = target;
      for (let hops = 0; hops < 8 && !members.has(resolved) && links.has(resolved); hops++) resolved = links.get(resolved)!;
      const member = members.get(resolved);
      if (member && !members.has(name)) members.set(name, member);
    }
    return members;
  }

  async size(path: string): Promise<number | undefined> {
    return this.members.get(normalizeMember(path))?.size;
  }

  async read(path: string, max: number, what: string): Promise<Buffer> {
    const member = this.members.get(normalizeMember(path));
    if (!member) throw new SourceError(`${what}: not found (no ${path} in ${this.file})`, 'not-found');
    if (member.size > max) throw tooLarge(what, member.size, max);
    const buf = Buffer.alloc(member.size);
    const { bytesRead } = await this.handle.read(buf, 0, member.size, member.offset);
    if (bytesRead !== member.size) throw new SourceError(`${what}: truncated in ${this.file}`, 'size-mismatch');
    return buf;
  }

  stream(path: string, signal?: AbortSignal): AsyncIterable<Buffer> {
    const member = this.members.get(normalizeMember(path));
    if (!member) throw new SourceError(`${path}: not found in ${this.file}`, 'not-found');
    if (member.size === 0) return (async function* () {})();
    return createReadStream(this.file, { start: member.offset, end: member.offset + member.size - 1, highWaterMark: 1 << 20, signal });
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}
