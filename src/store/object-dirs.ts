/**
 * The object store's 256 `XX/` directories as fds, shared by the threads of a pull or a build
 * (an fd is the process's, whichever thread opened it): each is
 * created and opened on first use, never through a link, so an `objects/XX`
 * planted as a link to elsewhere fails the pull instead of receiving its
 * objects. The table lives in a SharedArrayBuffer; a thread that loses the
 * race to publish an fd closes its own.
 */
import { closeSync } from 'node:fs';
import { join } from 'node:path';
import { mkdirAt, openDirAt, statAt, typeName } from '../sys/dirfd.js';
import { IoError, ioError } from '../errors.js';
import { objectPlaceOf } from './layout.js';

export interface ObjectDirs {
  /** The objects/ directory. */
  root: number;
  /** Its path, for messages. */
  path: string;
  /** 256 fds (-1: not opened yet), indexed by the object name's first byte. */
  table: Int32Array;
}

export function makeObjectDirs(root: number, path: string): ObjectDirs {
  const table = new Int32Array(new SharedArrayBuffer(256 * 4));
  table.fill(-1);
  return { root, path, table };
}

/** The fd of `objects/XX` for the object `hex` (created when missing). */
export function objectDir(dirs: ObjectDirs, hex: string): number {
  const name = objectPlaceOf(hex).dir;
  const i = parseInt(name, 16);
  const have = Atomics.load(dirs.table, i);
  if (have >= 0) return have;
  const path = join(dirs.path, name);
  let fd: number;
  try {
    mkdirAt(dirs.root, name, 0o755, path);
    fd = openDirAt(dirs.root, name, path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ELOOP' || code === 'ENOTDIR') {
      const st = statAt(dirs.root, name, path);
      throw new IoError(`cannot write objects into ${path}: it is ${st ? typeName(st.mode) : 'gone'}, not a directory (never followed)`, code);
    }
    throw ioError(err, `cannot create ${path}`);
  }
  const prev = Atomics.compareExchange(dirs.table, i, -1, fd);
  if (prev !== -1) {
    closeSync(fd);
    return prev;
  }
  return fd;
}

/** Close the fds opened (once no thread uses them any more). */
export function closeObjectDirs(dirs: ObjectDirs): void {
  for (let i = 0; i < 256; i++) {
    const fd = Atomics.exchange(dirs.table, i, -1);
    if (fd >= 0) closeSync(fd);
  }
}
