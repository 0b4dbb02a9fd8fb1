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
import { closeSync, fstatSync, openSync } from 'node:fs';
import { ImageFormatError, printablePath, readImage, type ImageProblem } from '../erofs/reader.js';
import { digestToHex, fsverityDigestOfFileSync, objectPathToDigest } from '../fsverity/index.js';
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
  /** Inodes the walk reached (whiteouts included). */
  inodes: number;
  objects: { referenced: number; checked: number; missing: number; bad: number };
  problems: FsckProblem[];
}

export interface FsckOptions {
  /** Object stores, searched in order. Empty: no object checks. */
  basedirs?: string[];
}

interface ObjectResult {
  problems: Array<{ code: string; message: string }>;
  missing: boolean;
}

const toProblem = (p: ImageProblem): FsckProblem => ({ path: p.path ? printablePath(p.path) : null, code: p.code, message: p.message });

export function fsckImage(image: Buffer, opts: FsckOptions = {}): FsckReport {
  const problems: FsckProblem[] = [];
  const report: FsckReport = { ok: false, version: null, inodes: 0, objects: { referenced: 0, checked: 0, missing: 0, bad: 0 }, problems };
  let root: Inode;
  try {
    const res = readImage(image, { onProblem: (p) => problems.push(toProblem(p)) });
    root = res.root;
    report.version = res.version;
    report.inodes = res.inodeCount;
  } catch (err) {
    if (!(err instanceof ImageFormatError)) throw err;
    problems.push({ path: err.path ? printablePath(err.path) : null, code: err.code, message: err.reason });
    report.ok = false;
    return report;
  }
  const basedirs = opts.basedirs ?? [];
  const results = new Map<string, ObjectResult>();
  walkFiles(root, (pathOf, inode) => {
    if (inode.payload === null) return;
    const named = objectPathToDigest(inode.payload.toString('latin1').replace(/^\/+/, ''));
    if (named && inode.digest && !named.equals(inode.digest)) {
      problems.push({ path: printablePath(pathOf()), code: 'digest-name', message: `backing object '${printablePath(inode.payload)}' is named after digest ${digestToHex(named)} but the image records ${digestToHex(inode.digest)}` });
    }
    const key = inode.payload.toString('latin1') + '\0' + String(inode.size) + '\0' + (inode.digest ? digestToHex(inode.digest) : '');
    let res = results.get(key);
    if (!res) {
      res = basedirs.length > 0 ? checkObject(basedirs, inode) : { problems: [], missing: false };
      results.set(key, res);
      if (basedirs.length > 0) {
        report.objects.checked++;
        if (res.missing) report.objects.missing++;
        else if (res.problems.length > 0) report.objects.bad++;
      }
    }
    if (res.problems.length > 0) {
      const path = printablePath(pathOf());
      for (const p of res.problems) problems.push({ path, code: p.code, message: p.message });
    }
  });
  report.objects.referenced = new Set([...results.keys()].map((k) => k.slice(0, k.indexOf('\0')))).size;
  report.ok = problems.length === 0;
  return report;
}

/**
 * Every regular file (primary names only), depth first in name order. Its path
 * is built only when asked for (a problem to report): building every path
 * would cost depth x entries on a deep tree.
 */
function walkFiles(root: Inode, visit: (pathOf: () => Buffer, inode: Inode) => void): void {
  const names: Buffer[] = [];
  const stack: Array<{ dir: Inode; i: number }> = [{ dir: root, i: 0 }];
  const slash = Buffer.from('/');
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
    if ((d.inode.mode & S_IFMT) === S_IFREG) {
      visit(() => Buffer.concat([...names.flatMap((n) => [slash, n]), slash, d.name]), d.inode);
    }
    if (d.inode.children) {
      stack.push({ dir: d.inode, i: 0 });
      names.push(d.name);
    }
  }
}

function checkObject(basedirs: string[], inode: Inode): ObjectResult {
  const payload = inode.payload!;
  const name = payload.toString('latin1');
  const shown = printablePath(payload);
  let start = 0;
  while (start < payload.length && payload[start] === 0x2f) start++;
  const rel = payload.subarray(start);
  const parts = rel.toString('latin1').split('/');
  if (rel.length === 0 || parts.includes('..')) {
    return { missing: false, problems: [{ code: 'object-path', message: `backing object path '${shown}' does not name a file inside the object store` }] };
  }
  let fd = -1;
  let where = '';
  for (const dir of basedirs) {
    try {
      fd = openSync(Buffer.concat([Buffer.from(dir), Buffer.from('/'), rel]), 'r');
      where = dir;
      break;
    } catch {
      /* try the next store */
    }
  }
  if (fd < 0) {
    return { missing: true, problems: [{ code: 'object-missing', message: `backing object '${shown}' is missing from ${basedirs.length === 1 ? `'${basedirs[0]}'` : 'every base directory'}` }] };
  }
  const problems: ObjectResult['problems'] = [];
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) {
      problems.push({ code: 'object-type', message: `backing object '${shown}' in '${where}' is not a regular file` });
      return { missing: false, problems };
    }
    if (st.size !== inode.size) {
      problems.push({ code: 'object-size', message: `backing object '${shown}' has ${st.size} bytes, the image says ${inode.size}` });
      return { missing: false, problems };
    }
    const named = objectPathToDigest(name.replace(/^\/+/, ''));
    if (!inode.digest && !named) return { missing: false, problems };
    let digest: Buffer;
    try {
      digest = fsverityDigestOfFileSync(fd).digest;
    } catch (err) {
      problems.push({ code: 'object-read', message: `backing object '${shown}' cannot be read: ${(err as Error).message}` });
      return { missing: false, problems };
    }
    if (inode.digest && !digest.equals(inode.digest)) {
      problems.push({ code: 'object-digest', message: `backing object '${shown}' has fs-verity digest ${digestToHex(digest)}, the image expects ${digestToHex(inode.digest)}` });
    }
    if (named && !digest.equals(named) && !(inode.digest && named.equals(inode.digest) && !digest.equals(inode.digest))) {
      problems.push({ code: 'object-name', message: `backing object '${shown}' is named after digest ${digestToHex(named)} but its content has digest ${digestToHex(digest)}` });
    }
    return { missing: false, problems };
  } finally {
    closeSync(fd);
  }
}
