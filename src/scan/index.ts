/**
 * Build the tree of a real directory the way the reference
 * `mkcomposefs SOURCEDIR` does (lcfs_build, then its threaded digest pass),
 * so the image written from it is byte-identical.
 *
 * What the reference does, and so do we:
 * - every entry is lstat'ed; mode, uid, gid, rdev and size come from it, the
 *   mtime too unless `useEpoch` (then 0.0); nlink is left at 1 for every
 *   non-directory (the writer computes directory link counts);
 * - hard links are NOT merged: each name is its own inode with nlink 1,
 *   holding the same content (we digest and copy the shared inode once);
 * - symlinks: the target is the payload, its length the size;
 * - regular files of at least one byte get their fs-verity digest, and the
 *   payload `XX/YYYY…` (the object path) whether or not there is a store;
 *   files of 1 to 64 bytes also get their content inlined (the writer then
 *   ignores payload and digest, and the store skips them); empty files get
 *   neither digest nor payload;
 * - xattrs: every name llistxattr reports (trusted.* needs root), only
 *   `user.*` with `userXattrs`, none with `skipXattrs`;
 * - `skipDevices` drops character and block devices, whiteouts (0/0)
 *   included; fifos and sockets stay.
 *
 * Regular files go to a pool of worker threads for digests and store copies
 * while the scan goes on. With a store, every object is durable (one syncfs)
 * before the promise resolves.
 */
import type { VerityAlgorithm } from '../fsverity/index.js';
import { readdirSync, readlinkSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { ComposefsError, InvalidInputError, reasonOf as errorReason, type ComposefsErrorOptions } from '../errors.js';
import { S_IFBLK, S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, compareNames, type Dirent, type Inode, type Xattr } from '../tree/model.js';
import { cPath, lstatx, readXattrs, SysError, type StatInfo } from '../sys/fs.js';
import { DigestPool, PoolJobError, type FileDone } from '../store/pool.js';
import { INLINE_LIMIT, ObjectStore, StoreError, syncStore } from '../store/objects.js';
import { digestToObjectPath } from '../store/layout.js';
import { Progress } from './progress.js';

export interface ScanOptions {
  useEpoch?: boolean;
  skipDevices?: boolean;
  skipXattrs?: boolean;
  userXattrs?: boolean;
  /** Copy every non-inlined regular file into this object store. */
  digestStore?: string;
  /** The fs-verity algorithm of the digests (and the store's object names); default sha256. */
  algorithm?: VerityAlgorithm;
  /** Compute digests and use `XX/YYYY…` payloads (default true, as the reference). False: payload = path relative to the source. */
  computeDigest?: boolean;
  /** Worker threads for digests and copies (default: one per core). */
  threads?: number;
  /** Draw a progress line on stderr (only if it is a terminal). */
  progress?: boolean;
}

export interface ScanStats {
  /** Entries in the tree, the root included. */
  entries: number;
  /** Regular files (each name of a hard link counts). */
  files: number;
  /** Objects this build added to the store. */
  objectsWritten: number;
  /** Bytes of those objects. */
  bytesWritten: number;
  /** Bytes read to compute digests (hard-linked content once). */
  bytesHashed: number;
}

/** lcfs_node_set_xattr refuses longer values. */
const XATTR_VALUE_MAX = 0xffff;

const SLASH = Buffer.from('/');
const YIELD_EVERY = 256;

/** A source tree that cannot be read or stored: "error accessing PATH: reason", as the reference says it. */
export class ScanError extends ComposefsError {
  constructor(message: string, options?: ComposefsErrorOptions) {
    super(message, 'scan', options);
  }
}

function reasonOf(err: unknown): string {
  // A SysError's message is "syscall path: reason": keep the reason only, the caller names the path.
  if (err instanceof SysError) return err.message.replace(/^.*?: (?=[^:]*$)/, '');
  return errorReason(err);
}

function accessError(path: Buffer | string, err: unknown): ScanError {
  return new ScanError(`error accessing ${path.toString()}: ${reasonOf(err)}`, { cause: err });
}

/** `dir/name` followed by a NUL, in one allocation. */
function childCPath(dir: Buffer, name: Buffer): Buffer {
  const atRoot = dir.length === 1 && dir[0] === 0x2f;
  const len = (atRoot ? 0 : dir.length) + 1 + name.length;
  const out = Buffer.allocUnsafe(len + 1);
  let off = atRoot ? 0 : dir.copy(out, 0);
  out[off++] = 0x2f;
  name.copy(out, off);
  out[len] = 0;
  return out;
}

export async function scanDirectory(source: string, opts: ScanOptions = {}): Promise<{ root: Inode; stats: ScanStats }> {
  if (opts.skipXattrs && opts.userXattrs) throw new InvalidInputError('--skip-xattrs and --user-xattrs conflict');
  const sourcePath = Buffer.from(source.length > 1 ? source.replace(/\/+$/, '') || '/' : source);
  const useEpoch = opts.useEpoch === true;
  const computeDigest = opts.computeDigest !== false || opts.digestStore !== undefined;
  const threads = Math.max(1, Math.floor(opts.threads ?? availableParallelism()));

  const stats: ScanStats = { entries: 0, files: 0, objectsWritten: 0, bytesWritten: 0, bytesHashed: 0 };

  const loadXattrs = (path: Buffer, cpath: Buffer): Xattr[] => {
    if (opts.skipXattrs) return [];
    let xs: Xattr[];
    try {
      xs = readXattrs(cpath, opts.userXattrs === true);
    } catch (err) {
      throw accessError(path, err);
    }
    for (const x of xs) {
      if (x.value.length > XATTR_VALUE_MAX) throw new ScanError(`error accessing ${path.toString()}: xattr ${x.key.toString()} is ${x.value.length} bytes, more than composefs can store (${XATTR_VALUE_MAX})`);
    }
    if (xs.length > 1) xs.sort((a, b) => compareNames(a.key, b.key));
    return xs;
  };

  /** `cpath` is `path` plus a NUL; `path` is a view of it. */
  const makeInode = (path: Buffer, cpath: Buffer, st: StatInfo): Inode => {
    const mode = st.mode;
    const inode: Inode = {
      mode,
      nlink: 1,
      uid: st.uid,
      gid: st.gid,
      rdev: st.rdev,
      size: st.size,
      mtimeSec: useEpoch ? 0 : st.mtimeSec,
      mtimeNsec: useEpoch ? 0 : st.mtimeNsec,
      payload: null,
      content: null,
      digest: null,
      xattrs: [],
      children: (mode & S_IFMT) === S_IFDIR ? [] : null,
    };
    if ((mode & S_IFMT) === S_IFLNK) {
      let target: Buffer;
      try {
        target = readlinkSync(path, { encoding: 'buffer' });
      } catch (err) {
        throw accessError(path, err);
      }
      if (target.length === 0) throw new ScanError(`error accessing ${path.toString()}: empty symlink target`);
      inode.payload = target;
      inode.size = target.length;
    }
    inode.xattrs = loadXattrs(path, cpath);
    return inode;
  };

  const rootCPath = cPath(sourcePath);
  let rootStat: StatInfo;
  try {
    rootStat = lstatx(rootCPath);
  } catch (err) {
    throw accessError(source, err);
  }
  if ((rootStat.mode & S_IFMT) !== S_IFDIR) throw new ScanError(`error accessing ${source}: Not a directory`);

  let store: ObjectStore | null = null;
  if (opts.digestStore !== undefined) {
    store = new ObjectStore(opts.digestStore, null, { algorithm: opts.algorithm });
    try {
      store.prepare();
    } catch (err) {
      store.close();
      throw new ScanError((err as Error).message, { cause: err });
    }
  }

  // Regular files waiting for their digest, by tag: the first inode found,
  // plus any other names of the same (hard-linked) inode.
  const first: Inode[] = [];
  const extra = new Map<number, Inode[]>();
  const done: boolean[] = [];
  const relPaths: Buffer[] = [];
  const byInode = new Map<string, number>();
  let filesQueued = 0;
  let bytesQueued = 0;

  const fill = (inode: Inode, tag: number, r: FileDone): void => {
    if (computeDigest) {
      inode.digest = r.digest;
      inode.payload = Buffer.from(digestToObjectPath(r.digest));
    } else inode.payload = relPaths[tag];
    if (r.content) inode.content = r.content;
  };
  const onDone = (tag: number, r: FileDone): void => {
    fill(first[tag], tag, r);
    for (const other of extra.get(tag) ?? []) copyResult(other, first[tag]);
    extra.delete(tag);
    done[tag] = true;
  };

  const pool = new DigestPool(threads, store ? { path: store.root, dirs: store.shared() } : null, onDone, opts.algorithm);
  const progress = opts.progress && process.stderr.isTTY
    ? new Progress(() => ({
        entries: stats.entries,
        scanDone,
        filesTotal: filesQueued,
        filesDone: pool.filesDone,
        bytesTotal: bytesQueued,
        bytesDone: pool.bytesProgress,
      }))
    : null;
  let scanDone = false;
  progress?.begin();

  try {
    const root = makeInode(sourcePath, rootCPath, rootStat);
    stats.entries = 1;
    const stack: { inode: Inode; path: Buffer; rel: Buffer }[] = [{ inode: root, path: sourcePath, rel: Buffer.alloc(0) }];
    let sinceYield = 0;
    scan: while (stack.length > 0) {
      const { inode: dir, path: dirPath, rel: dirRel } = stack.pop()!;
      let names: Buffer[];
      try {
        names = readdirSync(dirPath, { encoding: 'buffer' });
      } catch (err) {
        throw accessError(dirPath, err);
      }
      const children: Dirent[] = [];
      for (const name of names) {
        // Let worker results in now and then, huge directories included, so the workers never starve.
        if (++sinceYield >= YIELD_EVERY) {
          sinceYield = 0;
          pool.flush();
          await new Promise<void>((res) => setImmediate(res));
          if (pool.error) break scan; // drain() below reports it
        }
        const cpath = childCPath(dirPath, name);
        const path = cpath.subarray(0, cpath.length - 1);
        let st: StatInfo;
        try {
          st = lstatx(cpath);
        } catch (err) {
          throw accessError(path, err);
        }
        const type = st.mode & S_IFMT;
        if (opts.skipDevices && (type === S_IFCHR || type === S_IFBLK)) continue;
        const inode = makeInode(path, cpath, st);
        const rel = computeDigest ? EMPTY : dirRel.length === 0 ? name : Buffer.concat([dirRel, SLASH, name]);
        children.push({ name, inode, hardlink: false });
        stats.entries++;
        if (type === S_IFDIR) {
          stack.push({ inode, path, rel });
        } else if (type === S_IFREG) {
          stats.files++;
          if (inode.size === 0) continue;
          if (st.nlink > 1) {
            const key = `${st.dev}:${st.ino}`;
            const seen = byInode.get(key);
            if (seen !== undefined) {
              if (done[seen]) copyResult(inode, first[seen]);
              else extra.set(seen, [...(extra.get(seen) ?? []), inode]);
              continue;
            }
            byInode.set(key, first.length);
          }
          const tag = first.length;
          first.push(inode);
          done.push(false);
          relPaths.push(rel);
          filesQueued++;
          bytesQueued += inode.size;
          pool.add(path, inode.size, inode.size <= INLINE_LIMIT, st.ctimeSec, st.ctimeNsec, tag);
        }
      }
      children.sort((a, b) => compareNames(a.name, b.name));
      dir.children = children;
    }
    scanDone = true;
    await pool.drain();
    stats.objectsWritten = pool.objectsWritten;
    stats.bytesWritten = pool.bytesWritten;
    stats.bytesHashed = pool.bytesDone;
    if (store) {
      try {
        syncStore(store.root);
      } catch (err) {
        throw new ScanError((err as Error).message, { cause: err });
      }
    }
    return { root, stats };
  } catch (err) {
    if (err instanceof PoolJobError || err instanceof StoreError) throw new ScanError(err.message, { cause: err });
    throw err;
  } finally {
    progress?.end();
    await pool.close();
    store?.close();
  }
}

const EMPTY = Buffer.alloc(0);

function copyResult(to: Inode, from: Inode): void {
  to.digest = from.digest;
  to.payload = from.payload;
  to.content = from.content;
}
