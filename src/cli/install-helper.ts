/**
 * `cfs install-helper`: put a `mount.composefs` where mount(8) looks for
 * helpers (/sbin), so `mount -t composefs IMAGE DIR -o basedir=...` works.
 * The helper is a two-line shell script naming this Node and this checkout
 * by absolute path: mount(8) may run helpers with a reduced PATH.
 */
import { chmodSync, existsSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatHelp, parseArgs, type OptionSpec } from './args.js';
import { UserError, describeSystemError } from './errors.js';

const MARKER = '# installed by `cfs install-helper` (composefs-ts)';

const specs: OptionSpec[] = [
  { name: 'dir', value: true, arg: 'DIR', help: 'install into DIR instead of /sbin' },
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

export function run(args: string[], prog: string): number {
  const p = parseArgs(args, specs);
  if (p.options.has('help')) {
    process.stdout.write(formatHelp(`${prog} [--dir=DIR] [--uninstall] [--force]`, 'Install mount.composefs where mount(8) finds it (/sbin), for `mount -t composefs`.', specs));
    return 0;
  }
  if (p.positional.length) throw new UserError(`unexpected argument '${p.positional[0]}'`, 2);
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
  const tmp = `${target}.cfs-${process.pid}`;
  try {
    writeFileSync(tmp, script, { mode: 0o755 });
    chmodSync(tmp, 0o755);
    renameSync(tmp, target);
  } catch (err) {
    try {
      unlinkSync(tmp);
    } catch {
      /* never written */
    }
    throw new UserError(describeSystemError(err, target));
  }
  process.stdout.write(`installed ${target}: mount -t composefs IMAGE DIR -o basedir=OBJECTS now works\n`);
  return 0;
}
