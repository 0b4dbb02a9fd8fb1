/**
 * The repository commands: `cfs images`, `cfs inspect NAME`, `cfs tag NAME
 * NEWNAME`, `cfs rm NAME...`, `cfs gc [--dry-run]`. Each takes `--repo DIR`
 * (default $CFS_REPO, /var/lib/composefs as root, else
 * $XDG_DATA_HOME/composefs) and `--json`.
 */
import type { NameSeal } from '../oci/seals.js';
import { algorithmOption, formatHelp, parseArgs, type OptionSpec, type Parsed } from './args.js';
import { UsageError } from '../errors.js';
import type { Repository } from '../repo/repository.js';
import { humanBytes } from '../units.js';
import { explainForm } from './form.js';
import { printable, printableJson as json } from '../printable.js';

const common: OptionSpec[] = [
  { name: 'repo', value: true, arg: 'DIR', help: 'the repository' },
  { name: 'shared', help: 'use the repository even if others own it or may write it (see README: shared repositories)' },
  { name: 'json', help: 'print JSON' },
  { name: 'help', short: 'h', help: 'show this help' },
];

async function open(p: Parsed, create = false): Promise<Repository> {
  const { Repository } = await import('../repo/repository.js');
  const dir = p.options.get('repo');
  return Repository.open(dir === undefined ? undefined : String(dir), { create, shared: p.options.has('shared') });
}

function out(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
}

/** A human line: what images, configs and the repository hold is escaped for the terminal. */
function show(lines: string[]): void {
  out(lines.map(printable).join('\n'));
}

function table(rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('  ')).join('\n');
}

function helpOr(p: Parsed, usage: string, what: string, specs: OptionSpec[]): boolean {
  if (!p.options.has('help')) return false;
  process.stdout.write(formatHelp(usage, what, specs));
  return true;
}

export const images = {
  async run(args: string[], prog: string): Promise<number> {
    const p = parseArgs(args, common);
    if (helpOr(p, `${prog} [--repo DIR] [--json]`, 'List the named images: name, image digest, size, created, source, and where it is mounted by name;\nthen the images only a mount holds (their name removed or pointed elsewhere since).', common)) return 0;
    if (p.positional.length > 0) throw new UsageError(`unexpected argument '${p.positional[0]}'`);
    const repo = await open(p, true);
    const list = repo.images();
    const { liveLeases } = await import('../repo/leases.js');
    // Where each image is mounted by name (a mount in progress counts).
    const mounted = new Map<string, { name: string; mountpoint: string }[]>();
    for (const l of liveLeases(repo)) {
      const at = mounted.get(l.record.image) ?? [];
      at.push({ name: l.record.name, mountpoint: l.record.mountpoint });
      mounted.set(l.record.image, at);
    }
    const named = new Set(list.map((r) => r.image));
    const held = [...mounted.entries()].filter(([image]) => !named.has(image));
    if (p.options.has('json')) {
      out(json([...list.map((r) => ({ ...r, mounts: (mounted.get(r.image) ?? []).map((m) => m.mountpoint) })), ...held.map(([image, at]) => ({ name: null, image, mounts: at.map((m) => m.mountpoint), mountedAs: [...new Set(at.map((m) => m.name))] }))]));
    } else {
      const rows = [['NAME', 'IMAGE', 'SIZE', 'CREATED', 'SOURCE', 'MOUNTED']];
      const where = (image: string) => (mounted.get(image) ?? []).map((m) => m.mountpoint).join(',') || '-';
      for (const r of list) rows.push([r.name, r.image.slice(0, 16), humanBytes(r.size), r.created ?? '-', r.source, where(r.image)].map(printable));
      for (const [image, at] of held) rows.push([`(was ${[...new Set(at.map((m) => m.name))].join(', ')})`, image.slice(0, 16), '-', '-', '-', where(image)].map(printable));
      out(table(rows));
    }
    return 0;
  },
};

export const inspect = {
  async run(args: string[], prog: string): Promise<number> {
    const p = parseArgs(args, common);
    if (helpOr(p, `${prog} [--repo DIR] [--json] NAME`, 'Show a named image: its digest, its seal (checked at the pull) and the OCI config (env, entrypoint, cmd, labels, layers).', common)) return 0;
    if (p.positional.length !== 1) throw new UsageError(`one name expected (usage: ${prog} NAME)`);
    const repo = await open(p);
    const rec = repo.getName(p.positional[0]);
    const [{ recordForm }, { describeVerdict }] = await Promise.all([import('../repo/repository.js'), import('../oci/policy-check.js')]);
    const config = JSON.parse(repo.readBlob(rec.config).toString('utf8')) as { config?: Record<string, unknown>; architecture?: string; os?: string };
    const manifest = JSON.parse(repo.readBlob(rec.manifest).toString('utf8')) as { layers?: { digest: string; size: number; mediaType: string }[] };
    const c = config.config ?? {};
    const form = recordForm(rec);
    const info = {
      ...rec,
      seal: rec.seal ?? null,
      policy: rec.policy ?? null,
      form,
      algorithm: repo.algorithm,
      imagePath: repo.imagePath(rec.image),
      architecture: config.architecture,
      os: config.os,
      env: c.Env ?? [],
      entrypoint: c.Entrypoint ?? null,
      cmd: c.Cmd ?? null,
      workingDir: c.WorkingDir ?? null,
      user: c.User ?? null,
      labels: c.Labels ?? {},
      layerBlobs: manifest.layers ?? [],
      config,
    };
    if (p.options.has('json')) out(json(info, 2));
    else {
      const lines = [
        `name:        ${rec.name}`,
        `image:       ${rec.image} (fsverity-${repo.algorithm})`,
        `source:      ${rec.source}`,
        `manifest:    ${rec.manifest}`,
        `created:     ${rec.created ?? '-'}`,
        `platform:    ${rec.platform ?? '-'}`,
        `size:        ${humanBytes(rec.size)}`,
        `seal:        ${rec.seal ? `${rec.seal.mode === 'artifact' ? `artifact ${rec.seal.artifact}` : 'inline'}, fsverity-${rec.seal.algorithm}` : 'none (not sealed)'}`,
        ...(rec.seal ? [`  merged:    ${rec.seal.merged}`, `  config:    ${rec.seal.config ?? '-'}`] : []),
        ...(rec.seal?.signatures ? [`  signed:    ${signedLine(rec.seal)}`] : []),
        explainForm(form, rec.keepUserXattrs, rec.formReason).replace(/^form: /, 'form:        '),
        `policy:      ${rec.policy ? describeVerdict(rec.policy) : 'not recorded (pulled without a policy check)'}`,
        `entrypoint:  ${JSON.stringify(info.entrypoint)}`,
        `cmd:         ${JSON.stringify(info.cmd)}`,
        `env:         ${(info.env as string[]).join(' ')}`,
        `labels:      ${JSON.stringify(info.labels)}`,
        'layers:',
        ...(manifest.layers ?? []).map((l, i) => `  ${l.digest}  ${humanBytes(l.size)}  ${l.mediaType}  (diff_id ${rec.layers[i]})`),
      ];
      show(lines);
    }
    return 0;
  },
};

export const tag = {
  async run(args: string[], prog: string): Promise<number> {
    const p = parseArgs(args, common);
    if (helpOr(p, `${prog} [--repo DIR] NAME NEWNAME`, 'Give a named image another name.', common)) return 0;
    if (p.positional.length !== 2) throw new UsageError(`two names expected (usage: ${prog} NAME NEWNAME)`);
    const repo = await open(p);
    const rec = repo.tag(p.positional[0], p.positional[1]);
    if (p.options.has('json')) out(json(rec));
    return 0;
  },
};

export const rm = {
  async run(args: string[], prog: string): Promise<number> {
    const p = parseArgs(args, common);
    if (helpOr(p, `${prog} [--repo DIR] NAME...`, 'Remove names; what no name reaches any more goes at the next gc (an image mounted by name stays until its mount goes).', common)) return 0;
    if (p.positional.length === 0) throw new UsageError(`no name given (usage: ${prog} NAME...)`);
    const repo = await open(p);
    for (const n of p.positional) repo.getName(n); // all exist, or nothing is removed
    for (const n of p.positional) repo.remove(n);
    return 0;
  },
};

const gcSpecs: OptionSpec[] = [{ name: 'dry-run', short: 'n', help: 'count what would go, remove nothing' }, ...common];

export const gc = {
  async run(args: string[], prog: string): Promise<number> {
    const p = parseArgs(args, gcSpecs);
    if (helpOr(p, `${prog} [--repo DIR] [--dry-run] [--json]`, 'Remove images, layers, blobs and objects that no name reaches, and leftovers of killed pulls.', gcSpecs)) return 0;
    if (p.positional.length > 0) throw new UsageError(`unexpected argument '${p.positional[0]}'`);
    const repo = await open(p);
    const { gcRepository } = await import('../repo/gc.js');
    const r = await gcRepository(repo, { dryRun: p.options.has('dry-run'), onWait: () => process.stderr.isTTY && process.stderr.write('waiting for pulls in progress...\n') });
    if (p.options.has('json')) out(json(r));
    else {
      const x = r.removed;
      const extra = [x.links ? `${x.links} symbolic links` : '', x.leases ? `${x.leases} stale leases` : ''].filter((e) => e).map((e) => `, ${e}`).join('');
      const kept = r.kept.mounts ? ` (kept what ${r.kept.mounts} live mount${r.kept.mounts === 1 ? '' : 's'} by name use${r.kept.mounts === 1 ? 's' : ''})` : '';
      out(`${r.dryRun ? 'would remove' : 'removed'} ${x.images} images, ${x.layers} layers, ${x.blobs} blobs, ${x.objects} objects, ${x.temporary} temporary files${extra}: ${humanBytes(r.bytesFreed)} ${r.dryRun ? 'to free' : 'freed'}${kept}`);
    }
    return 0;
  },
};

const initSpecs: OptionSpec[] = [{ name: 'algorithm', value: true, arg: 'ALG', help: 'fs-verity algorithm of its objects and images: sha256 (default) or sha512' }, ...common];

export const init = {
  async run(args: string[], prog: string): Promise<number> {
    const p = parseArgs(args, initSpecs);
    if (
      helpOr(
        p,
        `${prog} [--repo DIR] [--algorithm sha256|sha512] [--json]`,
        'Create a repository (or give an older one its meta.json) holding objects and images named by the\nalgorithm\'s fs-verity digests. An existing repository keeps its algorithm: another is refused.',
        initSpecs,
      )
    ) {
      return 0;
    }
    if (p.positional.length > 0) throw new UsageError(`unexpected argument '${p.positional[0]}'`);
    const { Repository } = await import('../repo/repository.js');
    const dir = p.options.get('repo');
    const repo = Repository.open(dir === undefined ? undefined : String(dir), { create: true, shared: p.options.has('shared'), algorithm: algorithmOption(p) });
    try {
      repo.prepareWrite();
      const { algorithmName } = await import('../repo/meta.js');
      if (p.options.has('json')) out(json({ repository: repo.root, version: repo.meta?.version, algorithm: algorithmName(repo.algorithm) }));
      else show([`${repo.root}: ${algorithmName(repo.algorithm)}`]);
    } finally {
      repo.close();
    }
    return 0;
  },
};

/** `cfs inspect`'s line on a seal's composefs signatures: the roles, and who verified them at the pull. */
function signedLine(seal: NameSeal): string {
  const roles = Object.keys(seal.signatures ?? {}).join(', ');
  const by = Array.isArray(seal.signedBy) ? [...new Set(seal.signedBy.map((v) => String(v?.subject)))] : [];
  return by.length > 0 ? `${roles}; verified at the pull (userspace) against "${by.join('", "')}"` : `${roles}; not verified (pulled without --trust-cert; cfs verify --trust-cert checks them)`;
}
