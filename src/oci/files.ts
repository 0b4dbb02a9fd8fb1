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

const block = 512;

function field(header: Buffer, start: number, length: number): string {
  const slice = header.subarray(start, start + length);
  const nul = slice.indexOf(0);
  return slice.subarray(0, nul < 0 ? length : nul).toString('utf8');
}

function numeric(header: Buffer, start: number, length: number): number {
  if (header[start] & 0x80) {
    // GNU base-256: big-endian, top bit set.
    let value = header[start] & 0x7f;
    for (let i = start + 1; i < start + length; i++) value = value * 256 + header[i];
    return value;
  }
  const text = field(header, start, length).trim();
  return text === '' ? 0 : parseInt(text, 8);
}

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
    const header = Buffer.alloc(block);
    let offset = 0;
    let longName: string | undefined;
    let paxPath: string | undefined;
    let paxSize: number | undefined;
    let longLink: string | undefined;
    let paxLink: string | undefined;
    const links = new Map<string, string>();
    const malformed = (reason: string) => new SourceError(`${what}: not a readable tar archive (${reason})`, 'invalid-manifest');
    const readAt = async (buf: Buffer, at: number) => {
      const { bytesRead } = await handle.read(buf, 0, buf.length, at);
      return bytesRead;
    };
    if (total >= 2 && (await readAt(header.subarray(0, 2), 0)) === 2 && header[0] === 0x1f && header[1] === 0x8b) {
      throw new SourceError(`${what}: compressed archives are not supported (decompress ${file} first)`, 'unsupported');
    }
    for (;;) {
      if ((await readAt(header, offset)) < block) throw malformed(offset === 0 ? 'empty file' : `truncated at byte ${offset}`);
      if (header.every((b) => b === 0)) break;
      let sum = 0;
      for (let i = 0; i < block; i++) sum += i >= 148 && i < 156 ? 32 : header[i];
      if (numeric(header, 148, 8) !== sum) throw malformed(`bad header checksum at byte ${offset}`);
      const type = String.fromCharCode(header[156] || 0x30);
      let size = numeric(header, 124, 12);
      const dataOffset = offset + block;
      if (type === 'L' || type === 'K' || type === 'x') {
        if (size > 1 << 20) throw malformed(`oversized ${type === 'L' ? 'long name' : 'PAX'} record at byte ${offset}`);
        const data = Buffer.alloc(size);
        if ((await readAt(data, dataOffset)) < size) throw malformed(`truncated at byte ${dataOffset}`);
        if (type === 'L') longName = data.toString('utf8').replace(/\0+$/, '');
        else if (type === 'K') longLink = data.toString('utf8').replace(/\0+$/, '');
        else {
          let at = 0;
          while (at < data.length) {
            const space = data.indexOf(0x20, at);
            const length = space < 0 ? NaN : parseInt(data.subarray(at, space).toString('ascii'), 10);
            if (!(length > 0) || at + length > data.length) throw malformed(`bad PAX record at byte ${dataOffset + at}`);
            const record = data.subarray(space + 1, at + length - 1).toString('utf8');
            const eq = record.indexOf('=');
            const key = record.slice(0, eq);
            const value = record.slice(eq + 1);
            if (key === 'path') paxPath = value;
            else if (key === 'size') paxSize = Number(value);
            else if (key === 'linkpath') paxLink = value;
            at += length;
          }
        }
      } else {
        if (paxSize !== undefined) size = paxSize;
        const magic = header.subarray(257, 263).toString('latin1');
        const prefix = magic.startsWith('ustar') && magic !== 'ustar ' ? field(header, 345, 155) : '';
        const name = paxPath ?? longName ?? (prefix ? `${prefix}/${field(header, 0, 100)}` : field(header, 0, 100));
        if (type === '0' || type === '7') members.set(normalizeMember(name), { offset: dataOffset, size });
        else if (type === '1' || type === '2') {
          // skopeo's docker-archive writes HEX/layer.tar as a symlink to HEX.tar: followed (inside the archive only).
          const target = paxLink ?? longLink ?? field(header, 157, 100);
          const base = normalizeMember(name).split('/').slice(0, -1);
          const parts = type === '1' ? [] : base;
          for (const part of target.split('/')) {
            if (part === '..') parts.pop();
            else if (part !== '.' && part !== '') parts.push(part);
          }
          links.set(normalizeMember(name), type === '1' ? normalizeMember(target) : parts.join('/'));
        }
        longName = paxPath = paxSize = longLink = paxLink = undefined;
      }
      if (type === 'g') paxPath = paxSize = undefined;
      offset = dataOffset + Math.ceil(size / block) * block;
      if (offset > total) throw malformed(`truncated: an entry ends past the end of the file`);
    }
    void file;
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
