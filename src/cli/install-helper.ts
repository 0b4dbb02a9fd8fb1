/**
 * `cfs install-helper`: put a `mount.composefs` where mount(8) looks for
 * helpers (/sbin), so `mount -t composefs IMAGE DIR -o basedir=...` works.
 * The helper is a two-line shell script naming this Node and this checkout
 * by absolute path: mount(8) may run helpers with a reduced PATH.
 *
 * `--service`: the systemd units of the mount service (`cfs serve`) instead,
 * into /etc/systemd/system: the socket unit and the service it starts, as
 * service/systemd/ holds them, the service naming this Node and this
 * checkout by absolute path too; service/README.md explains their settings.
 */
import { chmodSync, existsSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatHelp, parseArgs, type OptionSpec } from './args.js';
import { UserError, describeSystemError } from './errors.js';
import { printable } from '../printable.js';

const MARKER = '# installed by `cfs install-helper` (composefs-ts)';

const SERVICE_MARKER = '# installed by `cfs install-helper --service` (composefs-ts)';
export const SOCKET_UNIT = 'composefs-mount.socket';
export const SERVICE_UNIT = 'composefs-mount.service';

const specs: OptionSpec[] = [
  { name: 'service', help: 'install the systemd units of the mount service (cfs serve) instead, into /etc/systemd/system' },
  { name: 'dir', value: true, arg: 'DIR', help: 'install into DIR instead of /sbin (with --service: of /etc/systemd/system)' },
  { name: 'uninstall', help: 'remove a helper this command installed' },
  { name: 'force', help: 'replace a mount.composefs that this command did not install' },
  { name: 'print', help: 'print the helper script instead of installing it' },
  { name: 'help', short: 'h', help: 'show this help' },
];

export function helperScript(): string {
  const entry = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'bin', 'mount.composefs.js');
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  // As the shebang of bin/*.js: Node starts without a CA bundle to parse (the gain: bin/load.js).
  return `#!/bin/sh\n${MARKER}\nunset NODE_EXTRA_CA_CERTS\nexec ${q(process.execPath)} ${q(entry)} "$@"\n`;
}

/**
 * A word of an ExecStart= line: quoted, with what systemd would expand
 * (`%` specifiers, `$` variables, backslash escapes) escaped. A control
 * character has no place in a unit file: refused.
 */
function execWord(word: string): string {
  if (/[\x00-\x1f\x7f]/.test(word)) throw new UserError(`${printable(word)}: a control character in a path a unit file cannot hold`);
  return `"${word.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/%/g, '%%').replace(/\$/g, '$$$$')}"`;
}

/**
 * The mount service's units: the socket systemd listens on, and the service
 * it starts as root on the first connection. They are the files of
 * service/systemd/ (shipped in the package), marked as ours, the service's
 * ExecStart= naming this node and this checkout.
 */
export function serviceUnits(): Record<typeof SOCKET_UNIT | typeof SERVICE_UNIT, string> {
  const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
  const shipped = (name: string) => {
    const path = join(root, 'service', 'systemd', name);
    try {
      return readFileSync(path, 'utf8');
    } catch (err) {
      throw new UserError(describeSystemError(err, path));
    }
  };
  const entry = join(root, 'bin', 'cfs.js');
  const execStart = `ExecStart=${execWord(process.execPath)} ${execWord(entry)} serve`;
  const service = shipped(SERVICE_UNIT).replace(/^ExecStart=.*$/m, () => execStart);
  if (!service.includes(execStart)) throw new UserError(`${join(root, 'service', 'systemd', SERVICE_UNIT)}: no ExecStart= line`);
  return {
    [SOCKET_UNIT]: `${SERVICE_MARKER}\n${shipped(SOCKET_UNIT)}`,
    [SERVICE_UNIT]: `${SERVICE_MARKER}\n${service}`,
  } as Record<typeof SOCKET_UNIT | typeof SERVICE_UNIT, string>;
}

/** Write `content` to `target` through a temporary name beside it. */
function writeInPlace(target: string, content: string, mode: number): void {
  const tmp = `${target}.cfs-${process.pid}`;
  try {
    writeFileSync(tmp, content, { mode });
    chmodSync(tmp, mode);
    renameSync(tmp, target);
  } catch (err) {
    try {
      unlinkSync(tmp);
    } catch {
      /* never written */
    }
    throw new UserError(describeSystemError(err, target));
  }
}

function runService(p: ReturnType<typeof parseArgs>): number {
  const units = serviceUnits();
  if (p.options.has('print')) {
    for (const [name, text] of Object.entries(units)) process.stdout.write(`# ${name}\n${text}\n`);
    return 0;
  }
  const dir = resolve(String(p.options.get('dir') ?? '/etc/systemd/system'));
  const targets = Object.keys(units).map((name) => join(dir, name));
  const ours = (t: string) => existsSync(t) && readFileSync(t, 'utf8').includes(SERVICE_MARKER);
  const force = p.options.has('force');
  if (p.options.has('uninstall')) {
    const present = targets.filter((t) => existsSync(t));
    if (present.length === 0) throw new UserError(`${targets.join(', ')}: not installed`);
    const foreign = present.filter((t) => !ours(t));
    if (foreign.length && !force) throw new UserError(`${foreign[0]}: not installed by cfs install-helper --service (--force removes it anyway)`);
    for (const t of present) {
      try {
        unlinkSync(t);
      } catch (err) {
        throw new UserError(describeSystemError(err, t));
      }
    }
    process.stdout.write(`removed ${present.join(' and ')} (systemctl disable --now ${SOCKET_UNIT} first, if it runs)\n`);
    return 0;
  }
  const foreign = targets.filter((t) => existsSync(t) && !ours(t));
  if (foreign.length && !force) throw new UserError(`${foreign[0]}: exists and was not installed by cfs install-helper --service (--force replaces it)`);
  for (const [name, text] of Object.entries(units)) writeInPlace(join(dir, name), text, 0o644);
  process.stdout.write(`installed ${targets.join(' and ')}: systemctl daemon-reload && systemctl enable --now ${SOCKET_UNIT}\n`);
  return 0;
}

export function run(args: string[], prog: string): number {
  const p = parseArgs(args, specs);
  if (p.options.has('help')) {
    process.stdout.write(
      formatHelp(
        `${prog} [--dir=DIR] [--uninstall] [--force] | --service [--dir=DIR] [--uninstall] [--force]`,
        'Install mount.composefs where mount(8) finds it (/sbin), for `mount -t composefs`;\nwith --service, the systemd units of the mount service instead (composefs-mount.socket and .service).',
        specs,
      ),
    );
    return 0;
  }
  if (p.positional.length) throw new UserError(`unexpected argument '${p.positional[0]}'`, 2);
  if (p.options.has('service')) return runService(p);
  const script = helperScript();
  if (p.options.has('print')) {
    process.stdout.write(script);
    return 0;
  }
  const dir = resolve(String(p.options.get('dir') ?? '/sbin'));
  const target = join(dir, 'mount.composefs');
  const ours = existsSync(target) && readFileSync(target, 'utf8').includes(MARKER);
  if (p.options.has('uninstall')) {
    if (!existsSync(target)) throw new UserError(`${target}: not installed`);
    if (!ours && !p.options.has('force')) throw new UserError(`${target}: not installed by cfs install-helper (--force removes it anyway)`);
    try {
      unlinkSync(target);
    } catch (err) {
      throw new UserError(describeSystemError(err, target));
    }
    process.stdout.write(`removed ${target}\n`);
    return 0;
  }
  if (existsSync(target) && !ours && !p.options.has('force')) {
    throw new UserError(`${target}: exists and was not installed by cfs install-helper (--force replaces it)`);
  }
  writeInPlace(target, script, 0o755);
  process.stdout.write(`installed ${target}: mount -t composefs IMAGE DIR -o basedir=OBJECTS now works\n`);
  return 0;
}
