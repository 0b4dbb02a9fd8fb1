/**
 * A small getopt_long-alike shared by the commands, so every drop-in accepts
 * options the way the reference C tools do: `--name=value`, `--name value`,
 * boolean `--flag`, short `-o value`/`-ovalue`, and `--` to end options.
 */
import { UserError } from './errors.js';
import { printable } from '../printable.js';

export interface OptionSpec {
  /** Long name without dashes. */
  name: string;
  /** Single-letter short form, if any. */
  short?: string;
  /** Whether the option takes a value. */
  value?: boolean;
  /** May be given several times (values collect in an array). */
  repeat?: boolean;
  /** One line for --help. */
  help: string;
  /** Placeholder for the value in --help. */
  arg?: string;
}

export interface Parsed {
  options: Map<string, string | true | string[]>;
  positional: string[];
}

export function parseArgs(argv: string[], specs: OptionSpec[]): Parsed {
  const byLong = new Map(specs.map((s) => [s.name, s]));
  const byShort = new Map(specs.filter((s) => s.short).map((s) => [s.short!, s]));
  const options = new Map<string, string | true | string[]>();
  const positional: string[] = [];
  const set = (spec: OptionSpec, v: string | true) => {
    if (spec.repeat) {
      const prev = options.get(spec.name);
      options.set(spec.name, [...(Array.isArray(prev) ? prev : []), String(v)]);
    } else options.set(spec.name, v);
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') {
      positional.push(...argv.slice(i + 1));
      break;
    }
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = eq >= 0 ? a.slice(2, eq) : a.slice(2);
      const spec = byLong.get(name);
      if (!spec) throw new UserError(`unrecognized option '--${name}'`, 2);
      if (spec.value) {
        let v: string;
        if (eq >= 0) v = a.slice(eq + 1);
        else if (i + 1 < argv.length) v = argv[++i];
        else throw new UserError(`option '--${name}' requires an argument`, 2);
        set(spec, v);
      } else {
        if (eq >= 0) throw new UserError(`option '--${name}' doesn't allow an argument`, 2);
        set(spec, true);
      }
    } else if (a.startsWith('-') && a.length > 1) {
      for (let j = 1; j < a.length; j++) {
        const spec = byShort.get(a[j]);
        if (!spec) throw new UserError(`invalid option -- '${a[j]}'`, 2);
        if (spec.value) {
          let v: string;
          if (j + 1 < a.length) v = a.slice(j + 1);
          else if (i + 1 < argv.length) v = argv[++i];
          else throw new UserError(`option requires an argument -- '${a[j]}'`, 2);
          set(spec, v);
          break;
        }
        set(spec, true);
      }
    } else positional.push(a);
  }
  return { options, positional };
}

export function formatHelp(usage: string, description: string, specs: OptionSpec[]): string {
  const rows = specs.map((s) => {
    const flag = `${s.short ? `-${s.short}, ` : '    '}--${s.name}${s.value ? `=${s.arg ?? 'VALUE'}` : ''}`;
    return [flag, s.help] as const;
  });
  const width = Math.max(0, ...rows.map(([f]) => f.length));
  return `Usage: ${usage}\n\n${description}\n\nOptions:\n${rows.map(([f, h]) => `  ${f.padEnd(width)}  ${h}`).join('\n')}\n`;
}

export function intOption(parsed: Parsed, name: string, fallback: number, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const v = parsed.options.get(name);
  if (v === undefined) return fallback;
  const s = String(v);
  if (!/^[0-9]+$/.test(s)) throw new UserError(`invalid value for --${name}: '${s}' is not a number`, 2);
  const n = Number(s);
  if (n < min || n > max) throw new UserError(`invalid value for --${name}: ${n} is outside ${min}..${max}`, 2);
  return n;
}

/**
 * parseArgs for a drop-in whose reference tool exits 1 on a bad option, as
 * getopt's callers there do (usage(); exit(1)): the same errors, status 1.
 */
export function parseArgsExit1(argv: string[], specs: OptionSpec[]): Parsed {
  try {
    return parseArgs(argv, specs);
  } catch (err) {
    if (err instanceof UserError) throw new UserError(err.message, 1);
    throw err;
  }
}

/** The value of `--algorithm` (an fs-verity hash: sha256 or sha512), undefined when not given; `exitCode` for a bad one. */
export function algorithmOption(parsed: Parsed, exitCode = 2): 'sha256' | 'sha512' | undefined {
  const v = parsed.options.get('algorithm');
  if (v === undefined) return undefined;
  const s = String(v);
  if (s !== 'sha256' && s !== 'sha512') throw new UserError(`invalid value for --algorithm: '${printable(s.length > 64 ? `${s.slice(0, 64)}…` : s)}' (sha256 or sha512)`, exitCode);
  return s;
}
