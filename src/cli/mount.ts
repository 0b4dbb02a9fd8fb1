/**
 * `cfs mount` and the drop-in `mount.composefs` (also what mount(8) runs for
 * `mount -t composefs IMAGE DIR -o ...`): parse, call the mount ladder
 * (`mountImage`: the kernel, else the mount service, else FUSE), print. Loads
 * only the mount code: no image writer, no digest code unless `digest=` is
 * given, no FUSE server unless the FUSE rung mounts, no service client unless
 * the service rung mounts.
 */
import { formatHelp, parseArgs, type OptionSpec } from './args.js';
import { existsSync } from 'node:fs';
import { UserError } from './errors.js';

const specs: OptionSpec[] = [
  { name: 'options', short: 'o', value: true, repeat: true, arg: 'OPTS', help: 'comma-separated mount options (see below); may be repeated' },
  { name: 'explain', help: 'say which path was taken (backing, layers, API) and why' },
  { name: 'json', help: 'print the result as JSON' },
  { name: 'backing', value: true, arg: 'auto|fd|file|loop', help: 'force how EROFS reads the image' },
  { name: 'layers', value: true, arg: 'auto|fd|path', help: 'force how overlayfs gets the EROFS layer' },
  { name: 'api', value: true, arg: 'auto|new|legacy', help: 'force the new mount API or legacy mount(2)' },
  { name: 'types', short: 't', value: true, arg: 'TYPE', help: 'file system type: must be composefs (for mount(8))' },
  { name: 'sloppy', short: 's', help: 'ignore unknown mount options (mount(8) helper protocol)' },
  { name: 'fake', short: 'f', help: 'check everything but do not mount (mount(8) helper protocol)' },
  { name: 'no-mtab', short: 'n', help: 'accepted for mount(8); there is no mtab to write' },
  { name: 'verbose', short: 'v', help: 'same as --explain' },
  { name: 'namespace', short: 'N', value: true, arg: 'NS', help: 'mount(8) helper protocol; not supported' },
  { name: 'repo', value: true, arg: 'DIR', help: 'mount NAMEs of this repository (without it, a NAME is looked up in the default repository when no file of that name exists)' },
  { name: 'shared', help: 'with a name: use the repository even if others own it or may write it' },
  { name: 'fuse', help: 'serve the image with the FUSE server (no root needed); --fuse=auto (the default) only when the kernel path lacks privilege or cannot check objects that must be checked (no fs-verity), --fuse=no never' },
  { name: 'foreground', help: 'with FUSE: keep the server in this process until unmounted (default: it detaches)' },
  {
    name: 'service',
    help: 'mount through the mount service (cfs serve): the kernel mount, made by the service for a user who may not mount; --service=auto (the default) when the kernel path lacks privilege, before FUSE; --service=no never',
  },
  { name: 'service-socket', value: true, arg: 'PATH', help: 'the mount service\'s socket (default $CFS_SERVICE_SOCKET, else /run/composefs/mount.sock)' },
  { name: 'help', short: 'h', help: 'show this help' },
];

const optionHelp = `Mount options (-o), as the reference mount.composefs:
  basedir=PATH[:PATH...]  object store directories (required with IMAGE; a NAME brings
                          its repository's); \\: escapes a colon
  digest=DIGEST           the image's expected fs-verity digest, checked before mounting
                          (measured by the kernel; when it cannot, computed here on a
                          private copy, which is what gets mounted); implies verity
  verity                  every object checked against its digest: overlay verity where
                          the kernel and the basedir's file system have fs-verity, else
                          the FUSE server, which checks every object and every block
                          itself (where FUSE cannot be used: fuse=no, upperdir=,
                          idmap=, several pairs, the mount fails naming --fuse)
  tryverity               kernel: overlay verity when available, else the objects are
                          mounted unchecked (the explicit choice, also with digest=);
                          FUSE: the server checks every object, as with verity
  ro, rw                  read-only or read-write; without upperdir always read-only
  upperdir=DIR,workdir=DIR  a writable overlay upper layer
  idmap=PATH              idmap the image with this user namespace (/proc/PID/ns/user)
  private                 copy the image into an anonymous O_TMPFILE file, verify
                          digest= on the copy and mount that: nobody can change it
  fuse                    the same as --fuse; fuse=auto|no as --fuse=auto|no
  passthrough=auto|off    FUSE: object reads straight from the kernel when it grants it
  allow_other             FUSE: let other users in (the default as root)
  fuse_readers=N          FUSE: outstanding reads of /dev/fuse (default 2)
  log=PATH                FUSE: where the server reports verity failures and missing objects
  foreground              the same as --foreground
  service                 the same as --service; service=auto|no as --service=auto|no
  service_socket=PATH     the same as --service-socket
  With FUSE, verity checks every object's digest in the server and every block read.
  nosuid, nodev, noexec, noatime, relatime, strictatime, nodiratime
  backing=, layers=, api= the same as the long options`;

export async function run(argv: string[], prog: string): Promise<number> {
  // `--fuse=MODE` and `--service=MODE` besides the bare flags (the shared parser has no optional values).
  let fuseFlag: boolean | undefined;
  let serviceFlag: boolean | undefined;
  const args: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') {
      args.push(...argv.slice(i));
      break;
    }
    if (a.startsWith('--fuse=')) {
      const v = a.slice('--fuse='.length);
      if (v !== 'yes' && v !== 'auto' && v !== 'no') throw new UserError(`invalid value for --fuse: '${v}' (expected yes, auto, no)`, 2);
      fuseFlag = v === 'yes' ? true : v === 'no' ? false : undefined;
    } else if (a.startsWith('--service=')) {
      const v = a.slice('--service='.length);
      if (v !== 'yes' && v !== 'auto' && v !== 'no') throw new UserError(`invalid value for --service: '${v}' (expected yes, auto, no)`, 2);
      serviceFlag = v === 'yes' ? true : v === 'no' ? false : undefined;
    } else args.push(a);
  }
  const p = parseArgs(args, specs);
  if (p.options.has('fuse')) fuseFlag = true;
  if (p.options.has('service')) serviceFlag = true;
  // mount(8) hands its helper exactly one pair; `cfs mount` takes several, to pay Node's start-up once.
  const several = prog !== 'mount.composefs';
  const more = (what: string) => (several ? ` [${what} MOUNTPOINT]...` : '');
  const usage = `${prog} [-o OPTIONS] [--explain] IMAGE|NAME MOUNTPOINT${more('IMAGE|NAME')}`;
  if (p.options.has('help')) {
    const forms = `${prog} [-o OPTIONS] [--explain] IMAGE MOUNTPOINT${more('IMAGE')}\n   or: ${prog} [--repo DIR] [-o OPTIONS] [--explain] NAME MOUNTPOINT${more('NAME')}`;
    const what =
      'Mount a composefs image: EROFS for the metadata, overlayfs over the object store, the most hidden way this kernel allows.\n\n' +
      'IMAGE is an image file; -o basedir= names its object store. NAME is an image in a repository (cfs pull): its\n' +
      'recorded image, with the repository\'s objects as the basedir and digest= pinned to the recorded digest, so every\n' +
      'object is checked. A NAME is looked up in --repo DIR, or in the default repository when no file of that name\n' +
      'exists and no basedir= is given.';
    const pairs = several
      ? '\nSeveral pairs are mounted in order with the same options, all or nothing: when one fails, those this call mounted are unmounted again and the error names the failing image.\n'
      : '';
    process.stdout.write(`${formatHelp(forms, what, specs)}${pairs}\n${optionHelp}\n`);
    return 0;
  }
  const type = p.options.get('types');
  if (type !== undefined && type !== 'composefs') throw new UserError(`unsupported file system type '${String(type)}' (only composefs)`, 2);
  if (p.options.has('namespace')) throw new UserError('-N (mount in another namespace) is not supported', 2);
  if (p.positional.length < 1) throw new UserError(`no image given (usage: ${usage})`, 2);
  if (p.positional.length > 2 && !several) throw new UserError(`too many arguments: '${p.positional[2]}' (usage: ${usage})`, 2);
  if (p.positional.length % 2 === 1) throw new UserError(`no mount point given${p.positional.length > 1 ? ` for ${p.positional.at(-1)}` : ''} (usage: ${usage})`, 2);

  const { parseOptionString } = await import('../mount/options.js');
  const raw = (p.options.get('options') as string[] | undefined) ?? [];
  const parsed = parseOptionString(raw.join(','), p.options.has('sloppy'));
  const o = parsed.options;
  // -o fuse=... wins over --fuse, as it did when -o was read last.
  if (!('fuse' in o)) o.fuse = fuseFlag;
  if (!('service' in o)) o.service = serviceFlag;
  const socketFlag = p.options.get('service-socket');
  if (socketFlag !== undefined && o.serviceSocket === undefined) o.serviceSocket = String(socketFlag);
  if (p.options.has('foreground')) o.foreground = true;
  for (const key of ['backing', 'layers', 'api'] as const) {
    const v = p.options.get(key);
    if (v === undefined) continue;
    const allowed = key === 'backing' ? ['auto', 'fd', 'file', 'loop'] : key === 'layers' ? ['auto', 'fd', 'path'] : ['auto', 'new', 'legacy'];
    if (!allowed.includes(String(v))) throw new UserError(`invalid value for --${key}: '${String(v)}' (expected ${allowed.join(', ')})`, 2);
    (o as Record<string, unknown>)[key] = v;
  }
  // Each IMAGE is a file or, with --repo (or when no such file exists and no basedir= is given), a name in
  // a repository: its recorded image, its object store, and digest= pinned to the recorded digest.
  // A name is held against gc by a lease for as long as its mount exists (src/repo/leases.ts): written
  // before mounting, recorded once mounted, removed when the mount fails.
  type Lease = import('../repo/leases.js').Lease;
  const pairs: Array<{ image: string; mountpoint: string; basedir: string[]; digest: string | undefined; lease: Lease | null }> = [];
  const abandonAll = () => {
    for (const pair of pairs) pair.lease?.abandon();
  };
  try {
    for (let i = 0; i < p.positional.length; i += 2) {
      const pair: { image: string; mountpoint: string; basedir: string[] | undefined; digest: string | undefined; lease: Lease | null } = { image: p.positional[i], mountpoint: p.positional[i + 1], basedir: o.basedir, digest: o.digest, lease: null };
      if (p.options.has('repo') || (!o.basedir && !existsSync(pair.image))) {
        const [{ Repository }, { holdForMount }] = await Promise.all([import('../repo/repository.js'), import('../repo/leases.js')]);
        const repoDir = p.options.get('repo');
        const repo = Repository.open(repoDir === undefined ? undefined : String(repoDir), { create: false, shared: p.options.has('shared') });
        const target = await holdForMount(repo, pair.image, pair.mountpoint);
        if (target.warning) process.stderr.write(`${prog}: warning: ${target.warning}\n`);
        pair.image = target.image;
        pair.basedir = o.basedir ?? [target.basedir];
        pair.digest = target.digest;
        pair.lease = target.lease;
      }
      if (!pair.basedir) throw new UserError('no basedir= given: composefs needs the object store directory (-o basedir=PATH)', 2);
      pairs.push({ ...pair, basedir: pair.basedir });
    }
  } catch (err) {
    abandonAll();
    throw err;
  }
  // A FUSE server is one process a mount: several pairs are the kernel's alone.
  if (pairs.length > 1) {
    if (o.fuse === true) {
      abandonAll();
      throw new UserError('the FUSE mount takes one IMAGE MOUNTPOINT pair at a time', 2);
    }
    o.fuse = false;
  }
  if (o.foreground) o.onServerLog = (line) => process.stderr.write(`${prog}: ${line}\n`);

  let mountImage: typeof import('../mount/mount.js').mountImage;
  let isKernelMount: typeof import('../mount/mount.js').isKernelMount;
  try {
    // The FUSE and service rungs alone (not src/fuse/register.ts, whose kind of mount, for umount and
    // status, would load child_process on every kernel mount): the FUSE server, and the service's client,
    // load only when their rung mounts. Their order on the ladder is their own (service, then FUSE).
    const [{ fuseRung }, { serviceRung }, { registerMountRung }] = await Promise.all([import('../fuse/rung.js'), import('../service/rung.js'), import('../mount/ladder.js')]);
    registerMountRung(fuseRung);
    registerMountRung(serviceRung);
    ({ mountImage, isKernelMount } = await import('../mount/mount.js'));
  } catch (err) {
    abandonAll();
    throw err;
  }
  const mounts: Array<Awaited<ReturnType<typeof mountImage>>> = [];
  try {
    for (const pair of pairs) {
      const m = await mountImage(pair.image, pair.mountpoint, { ...o, basedir: pair.basedir, digest: pair.digest, dryRun: p.options.has('fake') });
      mounts.push(m);
      if (m.result.dryRun) pair.lease?.abandon();
      else pair.lease?.mounted();
    }
  } catch (err) {
    abandonAll();
    // All or nothing: undo this call's mounts, newest first (a later pair may sit inside an earlier one).
    await Promise.all([import('../fuse/register.js'), import('../service/register.js')]);
    const { unmountComposefsAsUser } = await import('../mount/umount.js');
    for (const { result } of mounts.reverse()) {
      if (result.dryRun) continue;
      try {
        await unmountComposefsAsUser(result.mountpoint, { lazy: true, serviceSocket: o.serviceSocket });
      } catch {
        /* already gone */
      }
    }
    throw err;
  }
  const results = mounts.map((m) => m.result);
  if (p.options.has('json')) process.stdout.write(`${JSON.stringify(several && results.length > 1 ? results : results[0], null, 2)}\n`);
  else if (p.options.has('explain') || p.options.has('verbose')) {
    const lines: string[] = [];
    for (const [i, result] of results.entries()) {
      const image = pairs[i].image;
      const how = result.rung === 'kernel' ? '' : result.rung === 'fuse' ? ' through FUSE' : result.rung === 'service' ? ' through the mount service' : ` through ${result.rung}`;
      const head = result.dryRun
        ? `would mount ${image} on ${result.mountpoint}${how}`
        : `mounted ${image} on ${result.mountpoint} (${result.readonly ? 'ro' : 'rw'})${how} in ${result.ms.toFixed(1)} ms`;
      lines.push(head, ...result.explain.map((l) => `  ${l}`));
      if (!result.dryRun && isKernelMount(result)) lines.push(`  footprint: ${footprint(result)}`);
    }
    if (parsed.ignored.length) lines.push(`  ignored options: ${parsed.ignored.join(', ')}`);
    process.stdout.write(`${lines.join('\n')}\n`);
  }
  // --foreground: the server serves in this process until the mount goes.
  for (const m of mounts) if (m.closed) await m.closed;
  return 0;
}

function footprint(r: { loop: { device: string } | null; temporaryMount: string | null; layers: string }): string {
  const parts = [r.loop ? `loop device ${r.loop.device} (autoclear)` : 'no loop device'];
  parts.push(r.temporaryMount ? `a temporary mount existed during the call (${r.temporaryMount}, now removed; its path stays in the overlay's options)` : 'no temporary mount');
  parts.push('one mountinfo line: the overlay');
  return parts.join(', ');
}
