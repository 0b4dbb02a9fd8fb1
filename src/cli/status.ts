/** `cfs status`: the composefs mounts on the system and what each exposes. */
import { formatHelp, parseArgs, type OptionSpec } from './args.js';
import { printable, printableJson } from '../printable.js';

const specs: OptionSpec[] = [
  { name: 'json', help: 'print as JSON' },
  { name: 'clean', help: 'detach and remove temporary mounts and directories left by killed processes' },
  { name: 'service-socket', value: true, arg: 'PATH', help: 'the mount service asked for the mounts it holds for this user (default $CFS_SERVICE_SOCKET, else /run/composefs/mount.sock)' },
  { name: 'help', short: 'h', help: 'show this help' },
];

export async function run(args: string[], prog: string): Promise<number> {
  const p = parseArgs(args, specs);
  if (p.options.has('help')) {
    process.stdout.write(
      formatHelp(
        `${prog} [--json] [--clean] [--service-socket PATH]`,
        'List composefs mounts, the path each used, and what they expose (loop devices, temporary mounts, stale paths), and the mounts the mount service (cfs serve) holds for this user.',
        specs,
      ),
    );
    return 0;
  }
  await import('../fuse/register.js');
  const { systemStatus, cleanLeftovers, cleanDisconnectedMounts } = await import('../mount/status.js');
  const { registeredMountKinds } = await import('../mount/kinds.js');
  const { probeKernel } = await import('../mount/kernel.js');
  const cleaned = p.options.has('clean') ? [...cleanLeftovers(), ...cleanDisconnectedMounts()] : [];
  const s = systemStatus();
  const kernel = probeKernel();
  const { serviceStatus } = await import('../service/status.js');
  const socket = p.options.get('service-socket');
  const service = await serviceStatus(socket === undefined ? undefined : String(socket));
  if (p.options.has('json')) {
    // Each kind of served mount under its own key (`fuse`), as the JSON has always had it.
    const { served, ...rest } = s;
    process.stdout.write(`${printableJson({ ...rest, ...served, service, kernel, cleaned }, 2)}\n`);
    return 0;
  }
  const out: string[] = [];
  out.push('this kernel:');
  for (const k of kernel) out.push(`  ${k.what}: ${k.ok === null ? '?' : k.ok ? 'yes' : 'no'}${k.why !== 'yes' ? ` (${k.why})` : ''}`);
  out.push(`composefs mounts: ${s.mounts.length}`);
  for (const m of s.mounts) {
    const how =
      m.layers === 'fd'
        ? 'layers=fd: the EROFS layer is a detached mount, visible nowhere'
        : `layers=path: the EROFS layer was given by path (${m.lower.join(', ')})`;
    out.push(`  ${m.mountpoint} (${m.readonly ? 'ro' : 'rw'}${m.verity ? ', verity' : ''}${m.upper ? `, upper ${m.upper}` : ''})`);
    out.push(`    ${how}`);
    out.push(`    objects: ${m.data.join(', ') || '(none)'}`);
    if (m.attachedTemporaryMounts.length) out.push(`    exposes: temporary EROFS mount still attached at ${m.attachedTemporaryMounts.join(', ')}`);
    if (m.stalePaths.length) out.push(`    options name paths that no longer exist: ${m.stalePaths.join(', ')}`);
  }
  const fileBacked = s.erofs.filter((e) => e.backing === 'file').length;
  const block = s.erofs.filter((e) => e.backing === 'block');
  out.push(
    `EROFS instances (all users): ${s.erofs.length}, file-backed ${fileBacked}, on block devices ${block.length}${block.length ? ` (${block.map((e) => e.name).join(', ')})` : ''}`,
  );
  out.push(`loop devices holding composefs images: ${s.loops.length === 0 ? 'none' : ''}`);
  for (const l of s.loops) out.push(`  ${l.device} <- ${l.backingFile} (${[l.readOnly ? 'ro' : 'rw', l.autoclear ? 'autoclear' : 'no autoclear', l.directIo ? 'direct I/O' : 'buffered'].join(', ')})`);
  out.push(`temporary EROFS mounts: ${s.temporaryMounts.length === 0 ? 'none' : ''}`);
  for (const t of s.temporaryMounts) out.push(`  ${t.mountpoint} (${t.source})`);
  const left = s.leftovers;
  out.push(`temporary directories: ${left.length === 0 ? 'none' : ''}`);
  for (const l of left) out.push(`  ${l.path} (pid ${l.pid} ${l.alive ? 'running: mount in progress' : 'gone: leftover, `cfs status --clean` removes it'}${l.mounted ? ', mounted' : ''})`);
  for (const kind of registeredMountKinds()) {
    const served = s.served[kind.name] ?? [];
    out.push(`${kind.title}: ${served.length === 0 ? 'none' : ''}`);
    for (const f of served) out.push(`  ${f.mountpoint} (${f.state}: ${f.why})`);
  }
  if (!service.running) out.push(`mount service ${service.socket}: ${service.reason}`);
  else {
    const n = service.mounts.length;
    out.push(`mount service ${service.socket}: ${n} mount${n === 1 ? '' : 's'} of uid ${service.uid} (limit ${service.limit})`);
    for (const m of service.mounts) {
      if (m.here) out.push(`  ${m.here} (mount id ${m.mountId}, image ${m.image})`);
      else if (m.detached) out.push(`  mount id ${m.mountId} (image ${m.image}): detached, attached by its caller in a mount namespace of its own`);
      else out.push(`  mount id ${m.mountId} (image ${m.image}): not in this mount namespace (attached at ${m.mountpoint})`);
    }
  }
  for (const c of cleaned) out.push(`cleaned: ${c}`);
  // Mountpoints and paths are anyone's (a user's FUSE mount): escaped before they reach the terminal.
  process.stdout.write(`${out.map(printable).join('\n')}\n`);
  return 0;
}
