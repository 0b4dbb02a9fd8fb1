/** `cfs umount MOUNTPOINT...`: unmount composefs mounts. */
import { formatHelp, parseArgs, type OptionSpec } from './args.js';
import { UserError } from './errors.js';
import { ComposefsError } from '../errors.js';
import { printable } from '../printable.js';

const specs: OptionSpec[] = [
  { name: 'lazy', short: 'l', help: 'detach now, finish when the mount is no longer busy (MNT_DETACH)' },
  { name: 'any', help: 'unmount whatever is mounted there, even if it is not a composefs mount' },
  { name: 'service-socket', value: true, arg: 'PATH', help: 'the mount service asked to unmount, for a user, a mount it made for that user (default $CFS_SERVICE_SOCKET, else /run/composefs/mount.sock)' },
  { name: 'help', short: 'h', help: 'show this help' },
];

export async function run(args: string[], prog: string): Promise<number> {
  const p = parseArgs(args, specs);
  if (p.options.has('help')) {
    process.stdout.write(
      formatHelp(
        `${prog} [--lazy] MOUNTPOINT...`,
        'Unmount composefs mounts (the overlay; its hidden EROFS layer and any loop device go with it). A mount the mount service (cfs serve) made for this user, which the kernel does not let it unmount, the service unmounts.',
        specs,
      ),
    );
    return 0;
  }
  if (p.positional.length === 0) throw new UserError(`no mount point given (usage: ${prog} [--lazy] MOUNTPOINT...)`, 2);
  await Promise.all([import('../fuse/register.js'), import('../service/register.js')]);
  const { unmountComposefsAsUser } = await import('../mount/umount.js');
  const socket = p.options.get('service-socket');
  let failed = 0;
  for (const mp of p.positional) {
    try {
      await unmountComposefsAsUser(mp, { lazy: p.options.has('lazy'), any: p.options.has('any'), serviceSocket: socket === undefined ? undefined : String(socket) });
    } catch (err) {
      if (p.positional.length === 1 || !(err instanceof UserError || err instanceof ComposefsError)) throw err;
      process.stderr.write(`${prog}: ${printable(err.message)}\n`);
      failed++;
    }
  }
  return failed ? 1 : 0;
}
