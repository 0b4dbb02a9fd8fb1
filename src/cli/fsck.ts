/**
 * `cfs fsck [--basedir=DIR]... [--repair] [--json] IMAGE`: check an image's
 * structure and, with base directories, the objects it refers to.
 *
 * Each problem is printed on its own line as `PATH: message` (or
 * `IMAGE: message` for the image as a whole), then, with `--repair`, one
 * line per object removed, then a summary line. With `--json`, one JSON
 * object instead (see FsckReport).
 *
 * Exit status: 0 all is well, 1 problems were found, 2 usage error, 3 the
 * check could not run (image or base directory unreadable).
 */
import { statSync } from 'node:fs';
import { UserError, describeSystemError } from './errors.js';
import { IoError } from '../errors.js';
import { formatHelp, parseArgs, type OptionSpec } from './args.js';
import { Output, readFileOrFail } from './image-io.js';
import { fsckImage } from '../check/fsck.js';
import { printable } from '../printable.js';

const specs: OptionSpec[] = [
  { name: 'basedir', value: true, repeat: true, arg: 'DIR', help: 'object store to check objects against (repeatable; searched in order)' },
  { name: 'repair', help: 'remove from the base directory each object whose content does not match its name, so the next build writes it again' },
  { name: 'json', help: 'print one JSON object instead of text' },
  { name: 'repo', help: 'check a repository instead (the one given, else the default): every object, image, layer record and name' },
  { name: 'shared', help: 'with --repo: check a repository others own or may write (their files are then not reported as foreign)' },
  { name: 'help', short: 'h', help: 'show this help' },
];

export const EXIT_OK = 0;
export const EXIT_PROBLEMS = 1;
export const EXIT_USAGE = 2;
export const EXIT_CANNOT_CHECK = 3;

export async function run(args: string[], prog: string): Promise<number> {
  const parsed = parseArgs(args, specs);
  if (parsed.options.has('repo') && !parsed.options.has('help')) return fsckRepo(parsed.positional, parsed.options.has('json'), parsed.options.has('shared'));
  if (parsed.options.has('help')) {
    process.stdout.write(
      formatHelp(
        `${prog} [--basedir=DIR]... [--repair] [--json] IMAGE\n       ${prog} --repo [--json] [REPOSITORY]`,
        'Check a composefs image: its structure, that every file refers to an object name, and,\nwith --basedir, that every backing object exists with the size and fs-verity digest the\nimage records and that its name spells. With --repair, objects whose content does not\nmatch their name are removed (a later build into the store writes them again).\nWith --repo, check a repository: every object, image, layer record and name.\n\nExit status: 0 all is well, 1 problems found (repaired or not), 2 usage error, 3 could not check.',
        specs,
      ),
    );
    return EXIT_OK;
  }
  const [imagePath, ...extra] = parsed.positional;
  if (imagePath === undefined) throw new UserError('No image path specified (see --help)', EXIT_USAGE);
  if (extra.length > 0) throw new UserError(`unexpected argument '${extra[0]}' (one image at a time)`, EXIT_USAGE);
  const basedirOpt = parsed.options.get('basedir');
  const basedirs = Array.isArray(basedirOpt) ? basedirOpt : [];
  const repair = parsed.options.has('repair');
  if (repair && basedirs.length === 0) throw new UserError('--repair needs --basedir (the object store to repair)', EXIT_USAGE);
  for (const dir of basedirs) {
    let isDir = false;
    try {
      isDir = statSync(dir).isDirectory();
    } catch (err) {
      throw new UserError(describeSystemError(err, `Can't open basedir '${dir}'`), EXIT_CANNOT_CHECK);
    }
    if (!isDir) throw new UserError(`Can't open basedir '${dir}': Not a directory`, EXIT_CANNOT_CHECK);
  }
  let image: Buffer;
  try {
    image = readFileOrFail(imagePath);
  } catch (err) {
    if (err instanceof IoError) throw new UserError(err.message, EXIT_CANNOT_CHECK);
    throw err;
  }
  const report = fsckImage(image, { basedirs, repair });
  const out = new Output();
  if (parsed.options.has('json')) {
    out.bytes(Buffer.from(`${JSON.stringify({ image: imagePath, ...report })}\n`, 'utf8'));
  } else {
    const shownImage = JSON.stringify(imagePath).slice(1, -1);
    for (const p of report.problems) out.bytes(Buffer.from(`${p.path ?? shownImage}: ${p.message}\n`, 'utf8'));
    for (const file of report.removed ?? []) out.bytes(Buffer.from(`${file}: removed (its content does not match its name)\n`, 'utf8'));
    const removed = report.removed ? `, ${report.removed.length} removed` : '';
    const objects = basedirs.length > 0 ? `, ${report.objects.checked} objects checked (${report.objects.missing} missing, ${report.objects.bad} bad${removed})` : '';
    const summary = report.ok
      ? `${shownImage}: clean, ${report.inodes} inodes${objects}\n`
      : `${shownImage}: ${report.problems.length} problem${report.problems.length === 1 ? '' : 's'} found${report.version !== null ? `, ${report.inodes} inodes` : ''}${objects}\n`;
    out.bytes(Buffer.from(summary, 'utf8'));
  }
  out.flush();
  return report.ok ? EXIT_OK : EXIT_PROBLEMS;
}

async function fsckRepo(positional: string[], json: boolean, shared: boolean): Promise<number> {
  if (positional.length > 1) throw new UserError(`unexpected argument '${positional[1]}' (one repository at a time)`, EXIT_USAGE);
  const [{ Repository }, { fsckRepository }] = await Promise.all([import('../repo/repository.js'), import('../repo/fsck.js')]);
  const repo = Repository.open(positional[0], { create: false, shared });
  const r = await fsckRepository(repo);
  if (json) process.stdout.write(`${JSON.stringify({ repository: repo.root, ...r })}\n`);
  else {
    for (const p of r.problems) process.stdout.write(`${printable(`${p.what}: ${p.message}`)}\n`);
    const c = r.checked;
    process.stdout.write(`${repo.root}: ${r.ok ? 'clean' : `${r.problems.length} problem${r.problems.length === 1 ? '' : 's'} found`}, ${c.objects} objects, ${c.images} images, ${c.layers} layers, ${c.names} names checked\n`);
  }
  return r.ok ? EXIT_OK : EXIT_PROBLEMS;
}
