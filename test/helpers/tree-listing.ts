/**
 * Every entry of a mounted tree as the reader sees it, for comparing one
 * mount of an image with another entry by entry: type and mode bits, owner,
 * size, link count, mtime to the nanosecond, symlink target, every xattr the
 * reader may list (values in hex), and the file's contents (a SHA-256) or the
 * error reading them gave. Runs in this process (`listTree`) or as a program
 * (`node tree-listing.js DIR...`: one JSON listing per DIR on stdout), so a
 * tree can be read by another user or inside another namespace.
 */
import { createHash } from 'node:crypto';
import { lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cPath, readXattrs } from '../../src/sys/fs.js';

export interface ListedEntry {
  type: 'dir' | 'file' | 'symlink' | 'fifo' | 'char' | 'block' | 'socket';
  /** st_mode & 07777. */
  mode: number;
  uid: number;
  gid: number;
  size: number;
  nlink: number;
  /** Nanoseconds since the epoch, as a decimal string. */
  mtime: string;
  target?: string;
  xattrs: Record<string, string>;
  /** SHA-256 of a regular file's contents, or the error code reading it gave. */
  contents?: string;
  /** A directory's entries could not be listed: the error code. */
  listing?: string;
}

/** Path (from the tree's root, '/' first) -> entry. */
export type TreeListing = Record<string, ListedEntry>;

function typeOf(s: import('node:fs').BigIntStats): ListedEntry['type'] {
  if (s.isDirectory()) return 'dir';
  if (s.isFile()) return 'file';
  if (s.isSymbolicLink()) return 'symlink';
  if (s.isFIFO()) return 'fifo';
  if (s.isCharacterDevice()) return 'char';
  if (s.isBlockDevice()) return 'block';
  return 'socket';
}

export function listTree(root: string): TreeListing {
  const out: TreeListing = {};
  const visit = (rel: string) => {
    const path = rel === '/' ? root : join(root, rel);
    const s = lstatSync(path, { bigint: true });
    const xattrs: Record<string, string> = {};
    try {
      for (const x of readXattrs(cPath(path))) xattrs[x.key.toString('latin1')] = x.value.toString('hex');
    } catch (err) {
      xattrs['(error)'] = (err as NodeJS.ErrnoException).code ?? String(err);
    }
    const e: ListedEntry = {
      type: typeOf(s),
      mode: Number(s.mode & 0o7777n),
      uid: Number(s.uid),
      gid: Number(s.gid),
      size: Number(s.size),
      nlink: Number(s.nlink),
      mtime: s.mtimeNs.toString(),
      xattrs,
    };
    if (e.type === 'symlink') e.target = readlinkSync(path);
    if (e.type === 'file') {
      try {
        e.contents = createHash('sha256').update(readFileSync(path)).digest('hex');
      } catch (err) {
        e.contents = (err as NodeJS.ErrnoException).code ?? String(err);
      }
    }
    out[rel] = e;
    if (e.type !== 'dir') return;
    let names: string[];
    try {
      names = readdirSync(path).sort();
    } catch (err) {
      e.listing = (err as NodeJS.ErrnoException).code ?? String(err);
      return;
    }
    for (const n of names) visit(rel === '/' ? `/${n}` : `${rel}/${n}`);
  };
  visit('/');
  return out;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  for (const dir of process.argv.slice(2)) process.stdout.write(`${JSON.stringify(listTree(dir))}\n`);
}
