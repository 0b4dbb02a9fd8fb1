/**
 * `cfs serve`: the composefs mount service (issue 20), as root, for anyone
 * who can reach its socket: each request is checked and mounted with the
 * caller's own rights (src/service/mount-service.ts). One line per request
 * on stderr (the journal under systemd); stdout says only `listening on …`
 * once the socket is ready.
 */
import { chmodSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { formatHelp, intOption, parseArgs, type OptionSpec } from './args.js';
import { UserError, describeSystemError } from './errors.js';
import { ComposefsError, reasonOf } from '../errors.js';
import { printable } from '../printable.js';
import { DEFAULT_MOUNT_SOCKET } from '../service/mount-interface.js';
import { DEFAULT_MAX_MOUNTS_PER_USER, startMountService } from '../service/mount-service.js';
import { closeFds, systemdListenFds } from '../sys/socket.js';

const specs: OptionSpec[] = [
  { name: 'socket', value: true, arg: 'PATH', help: `listen on PATH (default ${DEFAULT_MOUNT_SOCKET}; a socket from systemd, LISTEN_FDS, wins)` },
  { name: 'state', value: true, arg: 'PATH', help: 'keep the records of the mounts made in PATH, for a restarted service (default: mounts.json beside the socket; /run/composefs/mounts.json under systemd)' },
  { name: 'max-mounts-per-user', value: true, arg: 'N', help: `service mounts one user may hold at once (default ${DEFAULT_MAX_MOUNTS_PER_USER})` },
  { name: 'help', short: 'h', help: 'show this help' },
];

export async function run(args: string[], prog: string): Promise<number> {
  const p = parseArgs(args, specs);
  if (p.options.has('help')) {
    process.stdout.write(
      formatHelp(
        `${prog} [--socket=PATH] [--state=PATH] [--max-mounts-per-user=N]`,
        'Serve kernel composefs mounts to users who may not mount (as fusermount3 does for FUSE): `cfs mount` as any user\n' +
          'uses it when its socket answers. The service reads each image and writes it again before the kernel sees it,\n' +
          'mounts it read-only, nosuid, nodev with the caller\'s rights, only on a directory the caller owns. Runs as root;\n' +
          'logs one line per request on stderr. SIGTERM or SIGINT: finish the requests under way and exit.\n' +
          'systemd units: `cfs install-helper --service`.',
        specs,
      ),
    );
    return 0;
  }
  if (p.positional.length) throw new UserError(`unexpected argument '${printable(p.positional[0]!)}'`, 2);
  const maxMountsPerUser = intOption(p, 'max-mounts-per-user', DEFAULT_MAX_MOUNTS_PER_USER, 0, 1_000_000);
  if (process.getuid?.() !== 0) throw new UserError('must run as root: the service mounts for other users (start it with systemd: cfs install-helper --service)');

  let listen: string | number;
  let shown: string;
  let stateDir: string;
  let activated: number[];
  try {
    activated = systemdListenFds();
  } catch (err) {
    throw new UserError(`socket activation: ${reasonOf(err)}`);
  }
  if (activated.length > 0) {
    closeFds(activated.slice(1)); // one interface, one socket: any other is not ours to serve
    listen = activated[0]!;
    shown = `fd ${listen} (from systemd)`;
    stateDir = dirname(DEFAULT_MOUNT_SOCKET);
  } else {
    const socketOption = p.options.get('socket');
    const path = resolve(typeof socketOption === 'string' ? socketOption : DEFAULT_MOUNT_SOCKET);
    listen = path;
    shown = path;
    stateDir = dirname(path);
  }
  const stateOption = p.options.get('state');
  const stateFile = typeof stateOption === 'string' ? resolve(stateOption) : join(stateDir, 'mounts.json');
  for (const dir of new Set([typeof listen === 'string' ? dirname(listen) : null, dirname(stateFile)])) {
    if (dir === null) continue;
    try {
      const made = mkdirSync(dir, { recursive: true, mode: 0o755 });
      if (made !== undefined) chmodSync(dir, 0o755); // the umask may have taken bits: anyone must reach the socket
    } catch (err) {
      throw new UserError(describeSystemError(err, printable(dir)));
    }
  }

  const log = (line: string) => process.stderr.write(`${line}\n`);
  let service;
  try {
    service = await startMountService({ listen, maxMountsPerUser, log, stateFile });
  } catch (err) {
    if (err instanceof ComposefsError) throw err;
    throw new UserError(`socket ${printable(shown)}: ${reasonOf(err)}`);
  }
  process.stdout.write(`listening on ${printable(shown)}\n`);

  const signal = await new Promise<NodeJS.Signals>((done) => {
    process.once('SIGTERM', () => done('SIGTERM'));
    process.once('SIGINT', () => done('SIGINT'));
  });
  log(`${signal}: finishing the requests under way, then exiting`);
  await service.close();
  return 0;
}
