/**
 * `cfs info` and the drop-in `composefs-info`: look into images without
 * mounting them. The commands and their output follow the reference tool:
 *
 *   ls               every path below the root; directories end in `/` and a
 *                    tab, symlinks add `<tab>-> TARGET`, files with a backing
 *                    object `<tab>@ OBJECT` (hard links: the path alone)
 *   dump             the image as a dump file (what mkcomposefs reads)
 *   objects          the backing objects the images refer to, sorted, once each
 *   missing-objects  those of them not found under --basedir
 *   measure-file     the fs-verity digest of each FILE (not an image)
 *
 * All images are read before anything is printed, so a damaged image
 * produces an error and no partial listing.
 */
import { closeSync, openSync, statSync } from 'node:fs';
import { UserError, describeSystemError } from './errors.js';
import { algorithmOption, formatHelp, parseArgs, parseArgsExit1, type OptionSpec } from './args.js';
import { Output, escapeBytes, loadImage, loadImageDump } from './image-io.js';
import { S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, type Inode } from '../tree/model.js';

const specs: OptionSpec[] = [
  { name: 'basedir', value: true, arg: 'DIR', help: 'object store to look objects up in (missing-objects)' },
  { name: 'filter', value: true, repeat: true, arg: 'NAME', help: 'read only this entry of the root and what lies under it (repeatable)' },
  { name: 'help', short: 'h', help: 'show this help' },
];

/** `cfs info` also takes --algorithm (measure-file); the drop-in keeps the reference's options. */
const cfsSpecs: OptionSpec[] = [
  ...specs.slice(0, -1),
  { name: 'algorithm', value: true, arg: 'ALG', help: 'measure-file: the fs-verity hash, sha256 (default) or sha512' },
  ...specs.slice(-1),
];

const COMMANDS = ['ls', 'objects', 'dump', 'missing-objects', 'measure-file'];

function help(prog: string): string {
  return formatHelp(
    `${prog} [--basedir=DIR] [--filter=NAME]... [ls|objects|dump|missing-objects|measure-file] IMAGES...`,
    [
      'Show what composefs images hold, without mounting them.',
      '',
      '  ls               list every path (dirs end in /, symlinks -> TARGET, files @ OBJECT)',
      '  dump             print the image as a dump file (the format mkcomposefs --from-file reads)',
      '  objects          list the backing objects the images refer to',
      '  missing-objects  list the backing objects not present under --basedir',
      '  measure-file     print the fs-verity digest of each FILE given instead of images',
    ].join('\n'),
    prog === 'composefs-info' ? specs : cfsSpecs,
  );
}

export async function run(args: string[], prog: string): Promise<number> {
  // The drop-in exits 1 on a bad option, as the reference does; `cfs info` keeps the usage status 2.
  const parsed = prog === 'composefs-info' ? parseArgsExit1(args, specs) : parseArgs(args, cfsSpecs);
  if (parsed.options.has('help')) {
    process.stdout.write(help(prog));
    return 0;
  }
  const filters = (parsed.options.get('filter') as string[] | undefined) ?? [];
  for (const name of filters) {
    // The reference's message; it also accepts an empty name (matching nothing).
    if (name.includes('/')) throw new UserError(`Filter must be a single name: ${name}`);
  }
  const load = { topLevel: filters.length > 0 ? filters.map((name) => Buffer.from(name)) : undefined };
  const [command, ...paths] = parsed.positional;
  if (command === undefined) throw new UserError(`No command specified (one of ${COMMANDS.join(', ')}; see --help)`);
  if (!COMMANDS.includes(command)) throw new UserError(`Unknown command '${command}'`);
  const algorithm = algorithmOption(parsed) ?? 'sha256';
  if (command === 'measure-file') return measureFiles(paths, algorithm);

  const basedirOpt = parsed.options.get('basedir');
  const basedir = typeof basedirOpt === 'string' ? basedirOpt : null;
  if (basedir !== null) {
    let isDir = false;
    try {
      isDir = statSync(basedir).isDirectory();
    } catch (err) {
      throw new UserError(describeSystemError(err, `Can't open basedir \`${basedir}\``));
    }
    if (!isDir) throw new UserError(`Can't open basedir \`${basedir}\`: Not a directory`);
  }
  if (paths.length === 0) throw new UserError('No image path specified');

  const out = new Output();
  if (command === 'dump' || command === 'ls') {
    // Printed straight from each image; all are read before anything is printed.
    const dumps = paths.map((p) => loadImageDump(p, command === 'ls', load));
    for (const d of dumps) out.bytes(d);
    out.flush();
    return 0;
  }
  // objects, missing-objects: one sorted list over all the images.
  const roots = paths.map((p) => loadImage(p, load).root);
  const objects = new Map<string, Buffer>();
  for (const root of roots) collectObjects(root, objects);
  let list = [...objects.values()];
  if (command === 'missing-objects') list = list.filter((o) => !objectExists(basedir, o));
  list.sort(Buffer.compare);
  for (const o of list) {
    out.bytes(o);
    out.text('\n');
  }
  out.flush();
  return 0;
}

/** composefs-info ls of a tree: depth first in name order, the root itself not listed (listImage prints the same from an image). */
export function listTree(root: Inode, out: Output): void {
  const stack: Array<{ dir: Inode; prefix: string; i: number }> = [{ dir: root, prefix: '', i: 0 }];
  while (stack.length > 0) {
    const top = stack[stack.length - 1];
    const children = top.dir.children ?? [];
    if (top.i >= children.length) {
      stack.pop();
      continue;
    }
    const d = children[top.i++];
    const path = `${top.prefix}/${escapeBytes(d.name, { keepSpace: true })}`;
    if (d.hardlink) {
      // The reference's hard-link nodes carry no mode of their own: the path alone.
      out.text(`${path}\n`);
      continue;
    }
    const type = d.inode.mode & S_IFMT;
    if (type === S_IFDIR) out.text(`${path}/\t\n`);
    else if (type === S_IFLNK) out.text(`${path}\t-> ${escapeBytes(d.inode.payload ?? Buffer.alloc(0))}\n`);
    else if (type === S_IFREG && d.inode.payload !== null) out.text(`${path}\t@ ${escapeBytes(d.inode.payload)}\n`);
    else out.text(`${path}\n`);
    if (d.inode.children) stack.push({ dir: d.inode, prefix: path, i: 0 });
  }
}

/** Payloads of regular files (primary names only), keyed by their bytes. */
export function collectObjects(root: Inode, into: Map<string, Buffer>): void {
  const stack: Inode[] = [root];
  while (stack.length > 0) {
    const dir = stack.pop()!;
    for (const d of dir.children ?? []) {
      if (d.hardlink) continue;
      const n = d.inode;
      if ((n.mode & S_IFMT) === S_IFREG && n.payload !== null) {
        const key = n.payload.toString('latin1');
        if (!into.has(key)) into.set(key, n.payload);
      }
      if (n.children) stack.push(n);
    }
  }
}

/**
 * As the reference: stat BASEDIR/OBJECT (leading slashes dropped); without a
 * basedir nothing exists. Unlike the reference, a path with a `..` component
 * is never looked up: it would name a file outside the store (the kernel
 * never resolves a redirect out of the data layer), so it is missing.
 */
function objectExists(basedir: string | null, object: Buffer): boolean {
  if (basedir === null) return false;
  let start = 0;
  while (start < object.length && object[start] === 0x2f) start++;
  const rel = object.subarray(start);
  if (rel.toString('latin1').split('/').includes('..')) return false;
  const path = rel.length === 0 ? Buffer.from(basedir) : Buffer.concat([Buffer.from(basedir), Buffer.from('/'), rel]);
  try {
    statSync(path);
    return true;
  } catch {
    return false;
  }
}

async function measureFiles(paths: string[], algorithm: 'sha256' | 'sha512'): Promise<number> {
  if (paths.length === 0) throw new UserError('No files specified');
  // Loaded only here: the hashing module brings in native code the other commands do not need.
  const { digestToHex, fsverityDigestOfFileSync } = await import('../fsverity/index.js');
  const out = new Output();
  for (const path of paths) {
    let fd: number;
    try {
      // Open first so a missing file reads "Failed to open", as in the reference.
      fd = openSync(path, 'r');
    } catch (err) {
      throw new UserError(describeSystemError(err, `Failed to open '${path}'`));
    }
    try {
      const { digest } = fsverityDigestOfFileSync(fd, { algorithm });
      out.text(`${digestToHex(digest)}\n`);
    } catch (err) {
      throw new UserError(describeSystemError(err, `failed to measure '${path}'`));
    } finally {
      closeSync(fd);
    }
  }
  out.flush();
  return 0;
}

