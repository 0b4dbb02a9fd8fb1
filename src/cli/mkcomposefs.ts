/**
 * `cfs mkcomposefs` and the drop-in `mkcomposefs`: the reference tool's
 * options, arguments and exit codes (1 for every failure), so scripts written
 * for it run unchanged. `cfs mkcomposefs` alone also takes `--algorithm`
 * (sha512 digests, objects and metacopy xattrs); the drop-in stays the
 * reference's, SHA-256 only.
 */
import { fstatSync, lstatSync, readFileSync, writeSync } from 'node:fs';
import { availableParallelism, constants as osConstants } from 'node:os';
import { algorithmOption, formatHelp, parseArgsExit1, type OptionSpec } from './args.js';
import { describeSystemError, UserError } from './errors.js';
import type { Inode } from '../tree/model.js';
import type { FlatTree } from '../tree/flat.js';
import type { VerityAlgorithm } from '../fsverity/index.js';

const specs: OptionSpec[] = [
  { name: 'digest-store', value: true, arg: 'PATH', help: 'Copy each file into this content-addressed object store (XX/YYYY... named by fs-verity digest)' },
  { name: 'use-epoch', help: 'Make all mtimes zero' },
  { name: 'skip-devices', help: "Don't store device nodes" },
  { name: 'skip-xattrs', help: "Don't store file xattrs" },
  { name: 'user-xattrs', help: 'Only store user.* xattrs' },
  { name: 'print-digest', help: 'Print the fs-verity digest of the image' },
  { name: 'print-digest-only', help: "Print the digest of the image, don't write the image" },
  { name: 'from-file', help: 'SOURCE is a dump file (composefs-dump(5)), or - for standard input' },
  { name: 'min-version', value: true, arg: 'N', help: 'Lowest format version to write (default 0)' },
  { name: 'max-version', value: true, arg: 'N', help: 'Highest format version to upgrade to when the tree needs it (default 1)' },
  { name: 'threads', value: true, arg: 'N', help: `Threads for digests and copies (default: one per core, here ${availableParallelism()})` },
  { name: 'quiet', short: 'q', help: 'No progress display' },
  { name: 'help', short: 'h', help: 'Show this help' },
];

/** What `cfs mkcomposefs` takes beyond the reference's options. */
const cfsSpecs: OptionSpec[] = [
  ...specs.slice(0, -2),
  { name: 'algorithm', value: true, arg: 'ALG', help: 'fs-verity algorithm of the digests, object names and the image itself: sha256 (default) or sha512' },
  ...specs.slice(-2),
];

/** The drop-in is the reference's tool; `cfs mkcomposefs` is invoked as `cfs mkcomposefs`. */
function specsOf(prog: string): OptionSpec[] {
  return prog === 'mkcomposefs' ? specs : cfsSpecs;
}

function usage(prog: string): string {
  return formatHelp(
    `${prog} [OPTIONS] SOURCE IMAGE`,
    'Build a composefs image from a directory tree or, with --from-file, a dump file.\n' +
      'IMAGE may be - for standard output. With --print-digest-only, IMAGE is omitted.',
    specsOf(prog),
  );
}


function versionOption(value: string | true | string[] | undefined, which: string): number | undefined {
  if (value === undefined) return undefined;
  const s = String(value);
  if (!/^-?[0-9]+$/.test(s)) throw new UserError(`Invalid ${which} version ${s}`);
  return Number(s);
}

/** A dump is parsed straight into columns (no Inode objects); a directory scan gives an Inode tree. */
async function readSource(source: string, fromFile: boolean, opts: Map<string, string | true | string[]>, algorithm: VerityAlgorithm): Promise<{ flat: FlatTree } | { root: Inode }> {
  if (fromFile) {
    let data: Buffer;
    try {
      data = source === '-' ? readFileSync(0) : readFileSync(source);
    } catch (err) {
      throw new UserError(describeSystemError(err, `open \`${source}\``));
    }
    const { parseDumpFlat } = await import('../dumpfile/parse.js');
    return { flat: parseDumpFlat(data, { strict: Boolean(process.env.CFS_PARSE_STRICT), digestSize: algorithm === 'sha512' ? 64 : 32 }) };
  }
  let st;
  try {
    // Like the reference, the source itself is not followed if it is a symlink.
    st = lstatSync(source);
  } catch (err) {
    throw new UserError(describeSystemError(err, `error accessing ${source}`));
  }
  if (!st.isDirectory()) throw new UserError(`error accessing ${source}: Not a directory (use --from-file for a dump file)`);
  const threads = opts.get('threads');
  let threadCount: number | undefined;
  if (threads !== undefined) {
    const s = String(threads);
    threadCount = /^[0-9]+$/.test(s) ? Number(s) : NaN;
    if (!(threadCount > 0)) throw new UserError(`Invalid threads count ${s}`);
  }
  const { scanDirectory } = await import('../scan/index.js');
  const { root } = await scanDirectory(source, {
    useEpoch: opts.has('use-epoch'),
    skipDevices: opts.has('skip-devices'),
    skipXattrs: opts.has('skip-xattrs'),
    userXattrs: opts.has('user-xattrs'),
    digestStore: opts.has('digest-store') ? String(opts.get('digest-store')) : undefined,
    computeDigest: true,
    algorithm,
    threads: threadCount,
    progress: !opts.has('quiet') && process.stderr.isTTY === true,
  });
  return { root };
}

/**
 * Write IMAGE through the shared output-file rules (src/output/file.ts): a
 * device, FIFO or symlink is written as the reference writes it, a regular
 * file is replaced atomically keeping its mode and owner. Signal listeners
 * are in place before the write, so an interrupt or a TERM is acted on once
 * the file has been renamed or dropped.
 *
 * There is no fsync, as in the reference (which writes IMAGE in place) and
 * in mkfs tools: it costs ~4 ms of a 0.14 s dump build here, and a
 * caller that needs the image on disk now syncs it. With --digest-store the
 * objects are made durable (syncfs) before the rename, so an image never
 * names objects a crash could lose.
 */
async function writeImageFile(path: string, data: Buffer): Promise<void> {
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => process.exit(128 + (osConstants.signals[sig] ?? 0)));
  }
  const { writeOutputFile } = await import('../output/file.js');
  writeOutputFile(path, data, { openFailure: `failed to open output file '${path}'`, writeFailure: `cannot write file '${path}'` });
}

function writeToStdout(data: Buffer): void {
  if (fstatSync(1).isCharacterDevice() && process.stdout.isTTY) throw new UserError('stdout is a tty.  Refusing to use it');
  let off = 0;
  while (off < data.length) {
    try {
      off += writeSync(1, data, off, data.length - off);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EAGAIN') continue;
      throw new UserError(describeSystemError(err, 'cannot write standard output'));
    }
  }
}

export async function run(argv: string[], prog: string): Promise<number> {
  // The reference exits 1 for usage errors too.
  const parsed = parseArgsExit1(argv, specsOf(prog));
  const { options, positional } = parsed;
  if (options.has('help')) {
    process.stdout.write(usage(prog));
    return 0;
  }
  const printDigestOnly = options.has('print-digest-only');
  const printDigest = printDigestOnly || options.has('print-digest');
  if (options.has('skip-xattrs') && options.has('user-xattrs')) throw new UserError('--skip-xattrs and --user-xattrs conflict');
  const algorithm = algorithmOption(parsed, 1) ?? 'sha256';

  const minSet = versionOption(options.get('min-version'), 'min');
  const maxSet = versionOption(options.get('max-version'), 'max');
  // Like the reference: naming either version makes the other default to 0.
  const versionSet = minSet !== undefined || maxSet !== undefined;
  const minVersion = versionSet ? (minSet ?? 0) : 0;
  const maxVersion = versionSet ? (maxSet ?? 0) : 1;

  if (positional.length < 1) throw new UserError('No source path specified');
  const source = positional[0];
  if (source === '') throw new UserError('Empty source path specified');
  if (positional.length > 2) throw new UserError('Too many arguments');
  let out: string | null = null;
  if (positional.length === 1) {
    if (!printDigestOnly) throw new UserError('No destination path specified');
  } else if (printDigestOnly) {
    throw new UserError('Cannot specify destination path with --print-digest-only');
  } else out = positional[1];
  if (out === '-' && process.stdout.isTTY) throw new UserError('stdout is a tty.  Refusing to use it');

  const tree = await readSource(source, options.has('from-file'), options, algorithm);

  const { writeFlatImage, writeImageWithInfo, ImageWriteError } = await import('../erofs/writer.js');
  let image: Buffer;
  try {
    const versions = { minVersion, maxVersion };
    image = ('flat' in tree ? writeFlatImage(tree.flat, versions) : writeImageWithInfo(tree.root, versions)).image;
  } catch (err) {
    if (err instanceof ImageWriteError) throw new UserError(`cannot write file: ${err.message}`);
    throw err;
  }

  if (out === '-') writeToStdout(image);
  else if (out !== null) await writeImageFile(out, image);

  if (printDigest) {
    const { fsverityDigest } = await import('../fsverity/index.js');
    process.stdout.write(`${fsverityDigest(image, algorithm).toString('hex')}\n`);
  }
  return 0;
}
