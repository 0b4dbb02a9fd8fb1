/**
 * Writing into an OCI image layout directory (`oci:DIR`): blobs and
 * index.json entries. Every file is written whole to a temporary name
 * beside it (created exclusively, never through a link), synced, then
 * renamed over: a layout is never seen half-written. Inside the directory
 * the user named nothing is reached through a symbolic link.
 */
import { closeSync, constants, fsyncSync, mkdirSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { ComposefsError, ioError } from '../errors.js';
import { mkdirAt, O_NONBLOCK, openAt, openDirAt, renameAt, S_IFMT, S_IFREG, statAt, statFd, typeName, unlinkAt } from '../sys/dirfd.js';
import { SourceError } from './source-errors.js';
import { maxDocumentSize, mediaTypes } from './manifest.js';
import { checkBytes, checkDigestSyntax } from './verify.js';

let tmpCounter = 0;
const tmpName = () => `.cfs-tmp.${process.pid}.${Date.now().toString(36)}.${tmpCounter++}`;

function writeAll(fd: number, buf: Uint8Array): void {
  for (let off = 0; off < buf.length; ) off += writeSync(fd, buf, off, buf.length - off);
}

export interface IndexDocument {
  schemaVersion: number;
  mediaType?: string;
  manifests: Record<string, unknown>[];
  [key: string]: unknown;
}

export class LayoutWriter {
  private blobsFd = -1;

  private constructor(
    readonly path: string,
    private fd: number,
  ) {}

  /**
   * The layout at `path`; with `create`, a missing directory becomes an
   * empty layout. Anything that is not a layout (no oci-layout, another
   * version) is refused with one line.
   */
  static open(path: string, create: boolean): LayoutWriter {
    let fd: number;
    try {
      fd = openSync(path, constants.O_RDONLY | constants.O_DIRECTORY);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || !create) throw ioError(err, `cannot open OCI layout ${path}`);
      try {
        mkdirSync(path, { mode: 0o755 });
        fd = openSync(path, constants.O_RDONLY | constants.O_DIRECTORY);
      } catch (err2) {
        throw ioError(err2, `cannot create OCI layout ${path}`);
      }
    }
    const layout = new LayoutWriter(path, fd);
    try {
      const marker = statAt(fd, 'oci-layout', join(path, 'oci-layout'));
      if (marker === null && create && statAt(fd, 'index.json', join(path, 'index.json')) === null) {
        layout.writeFile(fd, 'oci-layout', Buffer.from('{"imageLayoutVersion":"1.0.0"}'));
        layout.writeFile(fd, 'index.json', Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: mediaTypes.ociIndex, manifests: [] })));
      } else {
        let version: unknown;
        try {
          version = (JSON.parse(layout.readFile('oci-layout', 64 * 1024).toString('utf8')) as { imageLayoutVersion?: unknown }).imageLayoutVersion;
        } catch (err) {
          if (err instanceof ComposefsError && !(err instanceof SourceError)) throw err;
          version = undefined;
        }
        if (typeof version !== 'string' || !version.startsWith('1.')) throw new SourceError(`${path}: not an OCI image layout this version writes (oci-layout version ${JSON.stringify(version)})`, 'unsupported');
      }
    } catch (err) {
      layout.close();
      throw err;
    }
    return layout;
  }

  /** A regular file of the layout's top directory, at most `max` bytes. */
  private readFile(name: string, max: number): Buffer {
    const path = join(this.path, name);
    let fd: number;
    try {
      fd = openAt(this.fd, name, constants.O_RDONLY | O_NONBLOCK, 0, path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new SourceError(`${path}: missing: not an OCI image layout`, 'not-found');
      throw ioError(err, `cannot read ${path}`);
    }
    try {
      const st = statFd(fd, path);
      if ((st.mode & S_IFMT) !== S_IFREG) throw new SourceError(`${path} is ${typeName(st.mode)}, not a regular file`, 'invalid-manifest');
      if (st.size > max) throw new SourceError(`${path}: too large (${st.size} bytes, at most ${max})`, 'invalid-manifest');
      return readFileSync(fd);
    } catch (err) {
      throw err instanceof ComposefsError ? err : ioError(err, `cannot read ${path}`);
    } finally {
      closeSync(fd);
    }
  }

  /** Write `name` in `dirFd` atomically and durably (temporary file, fsync, rename, fsync of the directory). */
  private writeFile(dirFd: number, name: string, data: Buffer | AsyncIterable<Uint8Array>, dirPath = this.path): Promise<void> | void {
    const tmp = tmpName();
    const target = join(dirPath, name);
    let fd = -1;
    const fail = (err: unknown): never => {
      if (fd >= 0) closeSync(fd);
      fd = -1;
      try {
        unlinkAt(dirFd, tmp);
      } catch {
        /* not created, or renamed */
      }
      throw err instanceof ComposefsError ? err : ioError(err, `cannot write ${target}`);
    };
    const finish = () => {
      fsyncSync(fd);
      closeSync(fd);
      fd = -1;
      renameAt(dirFd, tmp, dirFd, name);
      fsyncSync(dirFd);
    };
    try {
      fd = openAt(dirFd, tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644, join(dirPath, tmp));
      if (Buffer.isBuffer(data)) {
        writeAll(fd, data);
        finish();
        return;
      }
    } catch (err) {
      fail(err);
    }
    return (async () => {
      try {
        for await (const chunk of data as AsyncIterable<Uint8Array>) writeAll(fd, chunk);
        finish();
      } catch (err) {
        fail(err);
      }
    })();
  }

  private blobs(): number {
    if (this.blobsFd >= 0) return this.blobsFd;
    const what = join(this.path, 'blobs/sha256');
    try {
      mkdirAt(this.fd, 'blobs', 0o755, join(this.path, 'blobs'));
      const blobs = openDirAt(this.fd, 'blobs', join(this.path, 'blobs'));
      try {
        mkdirAt(blobs, 'sha256', 0o755, what);
        this.blobsFd = openDirAt(blobs, 'sha256', what);
      } finally {
        closeSync(blobs);
      }
    } catch (err) {
      throw ioError(err, `cannot open ${what}`);
    }
    return this.blobsFd;
  }

  /** Whether the layout has a blob of this digest and size (a regular file; its bytes are trusted as skopeo trusts them). */
  hasBlob(descriptor: { digest: string; size: number }): boolean {
    checkDigestSyntax(descriptor.digest, `blob ${descriptor.digest}`);
    const hex = descriptor.digest.slice('sha256:'.length);
    const st = statAt(this.blobs(), hex, join(this.path, 'blobs/sha256', hex));
    return st !== null && (st.mode & S_IFMT) === S_IFREG && st.size === descriptor.size;
  }

  /** Write a blob: bytes (checked here) or a stream that checks its own digest before it ends (a source's openBlob). */
  async writeBlob(descriptor: { digest: string; size: number }, data: Buffer | AsyncIterable<Uint8Array>): Promise<void> {
    checkDigestSyntax(descriptor.digest, `blob ${descriptor.digest}`);
    if (Buffer.isBuffer(data)) checkBytes(data, descriptor, `blob ${descriptor.digest}`);
    await this.writeFile(this.blobs(), descriptor.digest.slice('sha256:'.length), data, join(this.path, 'blobs/sha256'));
  }

  /** index.json, refused in one line unless it is an image index (read before anything is written, so a bad layout gets nothing). */
  readIndex(): IndexDocument {
    const what = join(this.path, 'index.json');
    const bytes = this.readFile('index.json', maxDocumentSize);
    let index: IndexDocument;
    try {
      index = JSON.parse(bytes.toString('utf8')) as IndexDocument;
    } catch {
      throw new SourceError(`${what}: not valid JSON`, 'invalid-manifest');
    }
    if (typeof index !== 'object' || index === null || !Array.isArray(index.manifests) || index.manifests.some((m) => typeof m !== 'object' || m === null)) {
      throw new SourceError(`${what}: not an image index`, 'invalid-manifest');
    }
    return index;
  }

  /** Read index.json, let `change` edit it, write it back atomically. */
  updateIndex(change: (index: IndexDocument) => void): void {
    const index = this.readIndex();
    change(index);
    this.writeFile(this.fd, 'index.json', Buffer.from(JSON.stringify(index)));
  }

  close(): void {
    if (this.blobsFd >= 0) closeSync(this.blobsFd);
    if (this.fd >= 0) closeSync(this.fd);
    this.blobsFd = this.fd = -1;
  }
}
