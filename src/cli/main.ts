/**
 * Entry point for every executable. Each command lives in its own module and
 * is imported only when asked for, so `cfs mount` never loads the image writer.
 */
import { reportError } from './errors.js';

type CommandModule = { run(args: string[], prog: string): Promise<number | void> | number | void };

const commands: Record<string, { summary: string; load: () => Promise<CommandModule> }> = {
  mkcomposefs: { summary: 'build a composefs image from a directory or a dump file', load: () => import('./mkcomposefs.js') },
  mount: { summary: 'mount a composefs image, or a repository\'s named image (hidden: no loop device, no temporary mount)', load: () => import('./mount.js') },
  umount: { summary: 'unmount a composefs mount', load: () => import('./umount.js') },
  status: { summary: 'list composefs mounts and what each exposes', load: () => import('./status.js') },
  info: { summary: 'inspect an image: ls, objects, missing-objects, dump, measure-file', load: () => import('./info.js') },
  dump: { summary: 'write an image back out as a dump file (or copy it)', load: () => import('./dump.js') },
  fsck: { summary: 'check an image and, with --basedir, its objects; or, with --repo, a repository', load: () => import('./fsck.js') },
  pull: { summary: 'pull a container image (registry, OCI layout or archive) into the repository', load: () => import('./pull.js') },
  seal: { summary: 'seal an image: its composefs digests in an artifact beside it, or inline in a new manifest', load: () => import('./seal.js') },
  sign: { summary: 'sign an image where it is (simple signing to a lookaside, or a sigstore attachment), as skopeo --sign-by', load: () => import('./sign.js') },
  init: { summary: 'create a repository for sha256 or sha512 objects (cfs init --algorithm sha512)', load: () => import('./repo.js').then((m) => m.init) },
  images: { summary: 'list the repository\'s named images', load: () => import('./repo.js').then((m) => m.images) },
  inspect: { summary: 'show a named image and its OCI config', load: () => import('./repo.js').then((m) => m.inspect) },
  verify: { summary: 'check a named image against its seal again, offline', load: () => import('./verify.js') },
  tag: { summary: 'give a named image another name', load: () => import('./repo.js').then((m) => m.tag) },
  rm: { summary: 'remove names from the repository', load: () => import('./repo.js').then((m) => m.rm) },
  gc: { summary: 'remove what no name in the repository reaches', load: () => import('./repo.js').then((m) => m.gc) },
  serve: { summary: 'serve kernel composefs mounts to users who may not mount (the mount service, as root)', load: () => import('./serve.js') },
  'install-helper': { summary: 'install mount.composefs where mount(8) finds it', load: () => import('./install-helper.js') },
  demo: { summary: 'build a sample image and show what was made (what `npm start` runs)', load: () => import('./demo.js') },
};

/** The drop-in executables map straight onto a command. */
const dropIns: Record<string, string> = {
  mkcomposefs: 'mkcomposefs',
  'mount.composefs': 'mount',
  'composefs-info': 'info',
  'composefs-dump': 'dump',
};

function usage(): string {
  const width = Math.max(...Object.keys(commands).map((c) => c.length));
  const lines = Object.entries(commands).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`);
  return `Usage: cfs COMMAND [OPTIONS] ...\n\nCommands:\n${lines.join('\n')}\n\nRun 'cfs COMMAND --help' for the options of a command.\n`;
}

/** For scripts/train-code-cache.cjs: the signature check, run once on the spot. */
export const trainSignatureCheck = (): Promise<void> => import('./code-cache-training.js').then((m) => m.trainSignatureCheck());

export async function main(prog: string, argv: string[]): Promise<void> {
  let command = dropIns[prog];
  let args = argv;
  let progName = prog;
  if (!command) {
    if (argv.length === 0 || argv[0] === '--help' || argv[0] === '-h') {
      process.stdout.write(usage());
      process.exitCode = argv.length === 0 ? 2 : 0;
      return;
    }
    command = argv[0];
    args = argv.slice(1);
    progName = `cfs ${command}`;
  }
  const entry = commands[command];
  if (!entry) {
    process.stderr.write(`cfs: unknown command '${command}' (see 'cfs --help')\n`);
    process.exitCode = 2;
    return;
  }
  try {
    const mod = await entry.load();
    const code = await mod.run(args, progName);
    if (typeof code === 'number') process.exitCode = code;
  } catch (err) {
    process.exitCode = reportError(progName, err);
  }
}
