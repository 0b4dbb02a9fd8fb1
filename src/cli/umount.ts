/** `cfs umount MOUNTPOINT...`: unmount composefs mounts. */
import { formatHelp, parseArgs, type OptionSpec } from './args.js';
import { UserError } from './errors.js';
import { ComposefsError } from '../errors.js';

const specs: OptionSpec[] = [
  { name: 'lazy', short: 'l', help: 'detach now, finish when the mount is no longer busy (MNT_DETACH)' },
  { name: 'any', help: 'unmount whatever is mounted there, even if it is not a composefs mount' },
  { name: 'help', short: 'h', help: 'show this help' },
];

export async function run(args: string[], prog: string): Promise<number> {
  const p = parseArgs(args, specs);
  if (p.options.has('help')) {
    process.stdout.write(formatHelp(`${prog} [--lazy] MOUNTPOINT...`, 'Unmount composefs mounts (the overlay; its hidden EROFS layer and any loop device go with it).', specs));
    return 0;
  }
  if (p.positional.length === 0) throw new UserError(`no mount point given (usage: ${prog} [--lazy] MOUNTPOINT...)`, 2);
  await import('../fuse/register.js');
  const { unmountComposefs } = await import('../mount/umount.js');
  let failed = 0;
  for (const mp of p.positional) {
    try {
      unmountComposefs(mp, { lazy: p.options.has('lazy'), any: p.options.has('any') });
    } catch (err) {
      if (p.positional.length === 1 || !(err instanceof UserError || err instanceof ComposefsError)) throw err;
      process.stderr.write(`${prog}: ${err.message}\n`);
      failed++;
    }
  }
  return failed ? 1 : 0;
}
