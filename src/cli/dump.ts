/**
 * `cfs dump IMAGE [DUMPFILE]`: write an image back out as a dump file (to
 * stdout without DUMPFILE or with `-`); with `--image`, write a copy of the
 * image instead.
 *
 * The drop-in `composefs-dump SRC DEST` does what the reference's does: load
 * the image into a tree and write that tree as an image again, in the same
 * composefs format version, so DEST is byte-identical to a SRC the reference
 * (or this project) wrote.
 *
 * Output files follow src/output/file.ts: a regular file is replaced
 * atomically (keeping its mode and owner), so a failure leaves no partial
 * file behind; a device, FIFO or symlink is written as the reference does.
 */
import { UserError } from './errors.js';
import { formatHelp, parseArgs, parseArgsExit1, type OptionSpec } from './args.js';
import { loadImage, loadImageDump, writeStdout } from './image-io.js';
import { ImageWriteError, writeImage } from '../erofs/writer.js';
import type { Inode } from '../tree/model.js';

const specs: OptionSpec[] = [
  { name: 'image', help: 'write a copy of the image (as composefs-dump does) instead of a dump file' },
  { name: 'help', short: 'h', help: 'show this help' },
];

export async function run(args: string[], prog: string): Promise<number> {
  const dropIn = prog === 'composefs-dump';
  // The drop-in exits 1 on a bad option, as the reference does.
  const parsed = dropIn ? parseArgsExit1(args, specs.filter((s) => s.name === 'help')) : parseArgs(args, specs);
  if (parsed.options.has('help')) {
    process.stdout.write(
      dropIn
        ? formatHelp(`${prog} SRC DEST`, 'Load the composefs image SRC and write it again to DEST (same format version).', specs.filter((s) => s.name === 'help'))
        : formatHelp(`${prog} [--image] IMAGE [DUMPFILE]`, 'Write the composefs image IMAGE as a dump file (to stdout without DUMPFILE or with -),\nor with --image as a copy of the image.', specs),
    );
    return 0;
  }
  const [src, dest, ...extra] = parsed.positional;
  if (src === undefined) throw new UserError(dropIn ? 'No source path specified' : 'No image path specified (see --help)');
  if (extra.length > 0) throw new UserError(`unexpected argument '${extra[0]}'`, dropIn ? 1 : 2);

  if (dropIn || parsed.options.has('image')) {
    if (dest === undefined) throw new UserError('No destination path specified');
    const { root, version } = loadImage(src);
    await writeOutput(dest, copyImage(root, version), 'write image to');
    return 0;
  }
  await writeOutput(dest ?? '-', loadImageDump(src), 'write dump to');
  return 0;
}

/** `-` is stdout; a path goes through the shared output-file rules (src/output/file.ts): devices, FIFOs and symlinks as the reference, regular files replaced atomically. */
async function writeOutput(dest: string, data: Buffer, what: string): Promise<void> {
  if (dest === '-') {
    writeStdout(data);
    return;
  }
  // Loaded only here: it brings in the system-call bindings, which printing to stdout does not need.
  const { writeOutputFile } = await import('../output/file.js');
  writeOutputFile(dest, data, { durable: true, openFailure: `failed to open '${dest}'`, writeFailure: `cannot ${what} '${dest}'` });
}

/** The tree written again as an image of the given format version. */
export function copyImage(root: Inode, version: number): Buffer {
  try {
    return writeImage(root, { minVersion: version, maxVersion: version });
  } catch (err) {
    if (err instanceof ImageWriteError) throw new UserError(`cannot write file: ${err.message}`);
    throw err;
  }
}
