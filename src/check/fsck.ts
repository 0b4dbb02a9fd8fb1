/**
 * Checking an image and, given object stores, the objects it refers to.
 *
 * The structure is checked by the reader's check mode (every bound, loops,
 * sort order, `.`/`..`, link counts, dirent types, xattr filters, counts in
 * the superblock...). With base directories, every regular file's backing
 * object must exist in one of them (looked up in order, as a mount would),
 * be a regular file of the size the image records, and have the fs-verity
 * digest the image records for it and the digest its name spells (for
 * objects named `ab/cdef...`). Each object is hashed once however many paths
 * refer to it; each problem is reported at every path it affects.
 */
import { closeSync, constants, fstatSync, openSync } from 'node:fs';
import { O_NONBLOCK, openAt, openDirAt, S_IFLNK, statAt, unlinkAt } from '../sys/dirfd.js';
import { reasonOf } from '../errors.js';
import { ImageFormatError, printablePath, readImage, type ImageProblem } from '../erofs/reader.js';
import { digestToHex, fsverityDigestOfFileSync } from '../fsverity/index.js';
import { objectPathToDigest, objectPlaceOf } from '../store/layout.js';
import { S_IFMT, S_IFREG, type Inode } from '../tree/model.js';

export interface FsckProblem {
  /** Path in the image, printable (dump-format escapes), or null for the image as a whole. */
  path: string | null;
  code: string;
  message: string;
}

export interface FsckReport {
  ok: boolean;
  /** The composefs format version, when the header could be read. */
  version: number | null;
  /**
   * Inodes of the tree a mount shows: the root and every entry, hard links
   * once. The 256 whiteouts a version-1 image hides in its root (the
   * superblock counts them) are not counted.
   */
  inodes: number;
  objects: { referenced: number; checked: number; missing: number; bad: number };
  problems: FsckProblem[];
  /** With `repair`: the objects removed, as paths (base directory and object name). */
  removed?: string[];
}

export interface FsckOptions {
  /** Object stores, searched in order. Empty: no object checks. */
  basedirs?: string[];
  /**
   * Remove from its base directory every object the image refers to whose
   * content does not match its name (another fs-verity digest, unreadable,
   * not a regular file), so that the next build into that store writes it
   * again. Needs `basedirs`.
   */
  repair?: boolean;
}

interface ObjectResult {
  problems: Array<{ code: string; message: string }>;
  missing: boolean;
  /** The object's file, when it is there but its content is not what its name spells: what repair removes. */
  /** The object to remove with --repair: its path (for the report), and its name in its XX/ directory's fd. */
  corrupt: { file: Buffer; dir: number; name: string } | null;
}

const toProblem = (p: ImageProblem): FsckProblem => ({ path: p.path ? printablePath(p.path) : null, code: p.code, message: p.message });

/**
 * Where a payload that is not an object name would lead: out of the store
 * (an absolute path, `..`), or to some other file in it. The reference
 * writes `XX/YYYY…` (the redirect `/XX/YYYY…`) and nothing else; the kernel
 * resolves a redirect beneath the data layer, so neither kind ever reaches a
 * verified object.
 */
function notAnObject(payload: Buffer): string {
  const text = payload.toString('latin1');
  const parts = text.split('/');
  if (text.startsWith('/') || parts.includes('..')) return `backing object path '${printablePath(payload)}' leads out of the object store`;
  return `backing object path '${printablePath(payload)}' is not an object name (2 hex digits, '/', 62 hex digits: an fs-verity digest)`;
}

export function fsckImage(image: Buffer, opts: FsckOptions = {}): FsckReport {
  const problems: FsckProblem[] = [];
  const report: FsckReport = { ok: false, version: null, inodes: 0, objects: { referenced: 0, checked: 0, missing: 0, bad: 0 }, problems };
  let root: Inode;
  try {
    const res = readImage(image, { onProblem: (p) => problems.push(toProblem(p)) });
    root = res.root;
    report.version = res.version;
  } catch (err) {
    if (!(err instanceof ImageFormatError)) throw err;
    problems.push({ path: err.path ? printablePath(err.path) : null, code: err.code, message: err.reason });
    report.ok = false;
    return report;
  }
  const basedirs = opts.basedirs ?? [];
  const repair = opts.repair === true && basedirs.length > 0;
  if (repair) report.removed = [];
  const results = new Map<string, ObjectResult>();
  const stores = new StoreDirs();
  try {
  report.inodes = walkTree(root, (pathOf, inode) => {
    if ((inode.mode & S_IFMT) !== S_IFREG || inode.payload === null) return;
    const named = objectPathToDigest(inode.payload.toString('latin1'));
    if (named && inode.digest && !named.equals(inode.digest)) {
      problems.push({ path: printablePath(pathOf()), code: 'digest-name', message: `backing object '${printablePath(inode.payload)}' is named after digest ${digestToHex(named)} but the image records ${digestToHex(inode.digest)}` });
    }
    const key = inode.payload.toString('latin1') + '\0' + String(inode.size) + '\0' + (inode.digest ? digestToHex(inode.digest) : '');
    let res = results.get(key);
    if (!res) {
      if (!named) res = { problems: [{ code: 'object-path', message: notAnObject(inode.payload) }], missing: false, corrupt: null };
      else res = basedirs.length > 0 ? checkObject(stores, basedirs, inode, named, repair) : { problems: [], missing: false, corrupt: null };
      results.set(key, res);
      if (basedirs.length > 0) {
        report.objects.checked++;
        if (res.missing) report.objects.missing++;
        else if (res.problems.length > 0) report.objects.bad++;
      }
      if (repair && res.corrupt) {
        try {
          unlinkAt(res.corrupt.dir, res.corrupt.name);
          report.removed!.push(printablePath(res.corrupt.file));
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') res.problems.push({ code: 'repair', message: `cannot remove '${printablePath(res.corrupt.file)}': ${reasonOf(err)}` });
        }
      }
    }
    if (res.problems.length > 0) {
      const path = printablePath(pathOf());
      for (const p of res.problems) problems.push({ path, code: p.code, message: p.message });
    }
  });
  } finally {
    stores.close();
  }
  report.objects.referenced = new Set([...results.keys()].map((k) => k.slice(0, k.indexOf('\0')))).size;
  report.ok = problems.length === 0;
  return report;
}

/**
 * Every inode of the tree once (primary names only), depth first in name
 * order; returns how many there are, the root included. A path is built only
 * when asked for (a problem to report): building every path would cost
 * depth x entries on a deep tree.
 */
function walkTree(root: Inode, visit: (pathOf: () => Buffer, inode: Inode) => void): number {
  const names: Buffer[] = [];
  const stack: Array<{ dir: Inode; i: number }> = [{ dir: root, i: 0 }];
  const slash = Buffer.from('/');
  let count = 1;
  while (stack.length > 0) {
    const top = stack[stack.length - 1];
    const children = top.dir.children ?? [];
    if (top.i >= children.length) {
      stack.pop();
      names.pop();
      continue;
    }
    const d = children[top.i++];
    if (d.hardlink) continue;
    count++;
    visit(() => Buffer.concat([...names.flatMap((n) => [slash, n]), slash, d.name]), d.inode);
    if (d.inode.children) {
      stack.push({ dir: d.inode, i: 0 });
      names.push(d.name);
    }
  }
  return count;
}

/**
 * The base directories and their `XX/` directories as fds: an object is
 * opened beneath them, and removed by --repair there, never through a link
 * (an `XX` planted as a link to elsewhere would otherwise have --repair
 * remove files outside the store). The base directory itself is the user's
 * path, links and all.
 */
class StoreDirs {
  private readonly bases = new Map<string, number | NodeJS.ErrnoException>();
  private readonly subs = new Map<string, number | NodeJS.ErrnoException>();

  /** The fd of `dir/xx`, or the error opening it (ENOENT, ELOOP for a link, ENOTDIR...). */
  subdir(dir: string, xx: string): number | NodeJS.ErrnoException {
    const key = `${dir}\0${xx}`;
    let sub = this.subs.get(key);
    if (sub !== undefined) return sub;
    let base = this.bases.get(dir);
    if (base === undefined) {
      try {
        base = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
      } catch (err) {
        base = err as NodeJS.ErrnoException;
      }
      this.bases.set(dir, base);
    }
    if (typeof base !== 'number') sub = base;
    else {
      try {
        sub = openDirAt(base, xx, `${dir}/${xx}`);
      } catch (err) {
        sub = err as NodeJS.ErrnoException;
        // open(O_DIRECTORY | O_NOFOLLOW) of a link says ENOTDIR: tell a link from a file.
        if (sub.code === 'ENOTDIR' && ((statAt(base, xx)?.mode ?? 0) & S_IFMT) === S_IFLNK) sub = Object.assign(new Error(`${dir}/${xx}: a symbolic link`), { code: 'ELOOP' });
      }
    }
    this.subs.set(key, sub);
    return sub;
  }

  close(): void {
    for (const fd of [...this.subs.values(), ...this.bases.values()]) if (typeof fd === 'number') closeSync(fd);
    this.subs.clear();
    this.bases.clear();
  }
}

/** The object `XX/YYYY…` (`named` its digest) in the first base directory that has it, checked against the image and its name. */
function checkObject(stores: StoreDirs, basedirs: string[], inode: Inode, named: Buffer, repair: boolean): ObjectResult {
  const payload = inode.payload!;
  const shown = printablePath(payload);
  const place = objectPlaceOf(digestToHex(named));
  let fd = -1;
  let where = '';
  let corrupt: ObjectResult['corrupt'] = null;
  for (const dir of basedirs) {
    const file = Buffer.concat([Buffer.from(dir), Buffer.from('/'), payload]);
    const sub = stores.subdir(dir, place.dir);
    if (typeof sub !== 'number') {
      if (sub.code === 'ENOENT' || sub.code === 'ENOTDIR') continue; // try the next store
      where = dir;
      if (sub.code === 'ELOOP') return { missing: false, corrupt: null, problems: [{ code: 'object-type', message: `backing object '${shown}' in '${dir}': its directory '${place.dir}' is a symbolic link (never followed)` }] };
      return { missing: false, corrupt: null, problems: [{ code: 'object-read', message: `backing object '${shown}' in '${dir}' cannot be opened: ${reasonOf(sub)}` }] };
    }
    corrupt = { file, dir: sub, name: place.name };
    try {
      // No link followed (nor does the kernel follow one in a data layer), and a FIFO cannot block the open.
      fd = openAt(sub, place.name, constants.O_RDONLY | O_NONBLOCK, 0, file.toString());
      where = dir;
      break;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') continue; // try the next store
      where = dir;
      if (code === 'ELOOP') return { missing: false, corrupt, problems: [{ code: 'object-type', message: `backing object '${shown}' in '${dir}' is a symbolic link, not a regular file` }] };
      return { missing: false, corrupt: null, problems: [{ code: 'object-read', message: `backing object '${shown}' in '${dir}' cannot be opened: ${reasonOf(err)}` }] };
    }
  }
  if (fd < 0) {
    return { missing: true, corrupt: null, problems: [{ code: 'object-missing', message: `backing object '${shown}' is missing from ${basedirs.length === 1 ? `'${basedirs[0]}'` : 'every base directory'}` }] };
  }
  const problems: ObjectResult['problems'] = [];
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) {
      problems.push({ code: 'object-type', message: `backing object '${shown}' in '${where}' is not a regular file` });
      return { missing: false, corrupt: st.isDirectory() ? null : corrupt, problems };
    }
    const sizeWrong = st.size !== inode.size;
    if (sizeWrong) problems.push({ code: 'object-size', message: `backing object '${shown}' has ${st.size} bytes, the image says ${inode.size}` });
    // A wrong size says enough unless a repair must know whether the content matches the name.
    if (sizeWrong && !repair) return { missing: false, corrupt: null, problems };
    let digest: Buffer;
    try {
      // Hashed with the algorithm of its name (64 hex digits: SHA-256, 128: SHA-512).
      digest = fsverityDigestOfFileSync(fd, { algorithm: named.length === 64 ? 'sha512' : 'sha256' }).digest;
    } catch (err) {
      problems.push({ code: 'object-read', message: `backing object '${shown}' cannot be read: ${reasonOf(err)}` });
      return { missing: false, corrupt, problems };
    }
    if (!sizeWrong && inode.digest && !digest.equals(inode.digest)) {
      problems.push({ code: 'object-digest', message: `backing object '${shown}' has fs-verity digest ${digestToHex(digest)}, the image expects ${digestToHex(inode.digest)}` });
    }
    const misnamed = !digest.equals(named);
    if (!sizeWrong && misnamed && !(inode.digest && named.equals(inode.digest) && !digest.equals(inode.digest))) {
      problems.push({ code: 'object-name', message: `backing object '${shown}' is named after digest ${digestToHex(named)} but its content has digest ${digestToHex(digest)}` });
    }
    return { missing: false, corrupt: misnamed ? corrupt : null, problems };
  } finally {
    closeSync(fd);
  }
}
