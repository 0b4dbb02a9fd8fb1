/**
 * The object files behind an image's regular files, for one serving thread:
 * found through the redirect the image records, opened beneath the object
 * stores, measured when the server checks verity, and kept open (in an
 * ObjectFiles) for the READs that follow.
 */
import { constants as fsc, fstatSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { objectPath, type Data, type Ino } from './image.js';
import { ObjectFiles, type ObjectFile } from './object-files.js';
import { ReplyError } from './protocol.js';
import { measureSync } from './verity.js';
import { verityAlgorithmOfSize } from '../fsverity/index.js';
import { closeFd, openBeneath } from '../sys/openat2.js';
import { printableBytes } from '../printable.js';

const E = osConstants.errno;
/** Object files kept open by each thread. */
const OPEN_OBJECTS = 512;
/** Non-blocking, so a FIFO or device planted in a store cannot hold a serving thread; the type is checked after. */
const OBJECT_OPEN = fsc.O_RDONLY | fsc.O_NONBLOCK | fsc.O_NOCTTY;

/** Bytes from an image or a store as one printable word for a log line (the dump format's escapes). */
export const shown = printableBytes;

/** The name of the object behind `ino` for a log line: its redirect, else its inode number. */
export function objectName(data: Data, ino: Ino): string {
  return data.kind === 'object' && data.redirect ? shown(data.redirect.subarray(data.redirect[0] === 0x2f ? 1 : 0)) : `inode ${ino.nid}`;
}

export class ObjectSource {
  private readonly open = new ObjectFiles(OPEN_OBJECTS);

  /**
   * `basedirFds` are the stores opened O_PATH (named `basedirs` in log
   * lines); with `verity` an object is measured when first opened and its
   * READs get EIO unless its digest is the one the image records.
   */
  constructor(
    private readonly basedirs: string[],
    private readonly basedirFds: number[],
    private readonly verity: boolean,
    private readonly log: (line: string) => void,
  ) {}

  isOpen(nid: number): boolean {
    return this.open.has(nid);
  }

  /**
   * The object behind a regular file, opened (and with verity measured) on
   * first use and kept; ReplyError(EIO) when there is none to serve (logged
   * unless `quiet`).
   */
  file(ino: Ino, data: Data, quiet = false): ObjectFile {
    return this.open.use(ino.nid, () => {
      if (data.kind !== 'object') throw new ReplyError(E.EIO);
      if (!data.redirect || data.redirect.length === 0) {
        if (!quiet) this.log(`object: inode ${ino.nid} has trusted.overlay.metacopy but no redirect; EIO`);
        throw new ReplyError(E.EIO);
      }
      const fd = this.openObject(ino, data.redirect, quiet);
      const obj: ObjectFile = { fd, size: ino.size, verified: null, algorithm: verityAlgorithmOfSize(data.digest?.length ?? 32) ?? 'sha256' };
      if (this.verity) obj.verified = this.measure(ino, obj, objectName(data, ino), data.digest);
      return obj;
    });
  }

  closeAll(): void {
    this.open.closeAll();
  }

  /**
   * The object a redirect names, opened from the first store that has it:
   * a regular file, opened beneath the store as overlayfs follows a redirect
   * into a data-only layer (no `..` out, no symlink, no other mount: see
   * openBeneath), non-blocking (a FIFO or device in a store must not hold a
   * serving thread) and then checked to be a regular file. Anything
   * else is EIO, logged unless `quiet`: a redirect that is not an object path,
   * one that leaves the store or meets a symlink, a FIFO or device.
   */
  openObject(ino: Ino, redirect: Buffer, quiet: boolean): number {
    const fail = (why: string): never => {
      if (!quiet) this.log(`object: ${shown(redirect)} (inode ${ino.nid}) ${why}; EIO`);
      throw new ReplyError(E.EIO);
    };
    const rel = objectPath(redirect);
    if (rel === null) return fail('is not an object path (a relative path of plain names)');
    for (let i = 0; i < this.basedirFds.length; i++) {
      let fd: number;
      try {
        fd = openBeneath(this.basedirFds[i], rel, OBJECT_OPEN);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOENT' || code === 'ENOTDIR') continue; // not in this store: try the next
        if (code === 'ELOOP') return fail(`meets a symlink in ${this.basedirs[i]}`);
        if (code === 'EXDEV') return fail(`leaves ${this.basedirs[i]}`);
        return fail(`in ${this.basedirs[i]}: ${code ?? String(e)}`);
      }
      let regular = false;
      try {
        regular = fstatSync(fd).isFile();
      } catch {
        /* reported below */
      }
      if (!regular) {
        closeFd(fd);
        return fail(`in ${this.basedirs[i]} is not a regular file`);
      }
      return fd;
    }
    return fail('is in none of the object stores');
  }

  /** The object's leaves when its digest is the one recorded, else the errno its READs get (logged once). */
  private measure(ino: Ino, obj: ObjectFile, rel: string, want: Buffer | null): Buffer | number {
    const fail = (why: string): number => {
      this.log(`verity: ${rel} (inode ${ino.nid}): ${why}; EIO`);
      return E.EIO;
    };
    if (!want) return fail('the image records no digest for it');
    let m: ReturnType<typeof measureSync>;
    try {
      m = measureSync(obj.fd, ino.size, obj.algorithm);
    } catch (e) {
      return fail(e instanceof Error ? e.message : String(e));
    }
    if (m.read !== ino.size) return fail(`object has ${m.read} bytes, the image says ${ino.size}`);
    if (!m.digest.equals(want)) return fail(`fs-verity digest ${m.digest.toString('hex')} is not the ${want.toString('hex')} the image records`);
    return m.leaves;
  }
}
