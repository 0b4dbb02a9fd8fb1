/**
 * Mount options: the types the library takes, and the parser for the
 * comma-separated `-o` string that mount.composefs and mount(8) pass.
 *
 * The option names and meanings follow the reference mount.composefs:
 * `basedir=PATH[:PATH...]`, `digest=DIGEST`, `verity`, `tryverity`, `ro`,
 * `rw`, `upperdir=`, `workdir=`, `idmap=`. We add `private` (mount a private,
 * verified copy of the image), the generic VFS flags mount(8) may hand a
 * helper (nosuid, nodev, noexec, noatime, ...), `backing=`, `layers=`,
 * `api=` to force a mount path, the FUSE rung's own (`fuse[=yes|auto|no]`,
 * `passthrough=`, `allow_other`, `fuse_readers=`, `log=`, `foreground`) and
 * the mount service rung's (`service[=yes|auto|no]`, `service_socket=`),
 * which the kernel rung ignores. A backslash escapes the next character, so
 * `\,` puts a comma and `\:` a colon inside a value.
 */
import { UsageError } from '../errors.js';

/** How EROFS reads the image: given the open file itself, the file by /proc/self/fd path, or a loop device. */
export type Backing = 'fd' | 'file' | 'loop';
/** How overlayfs gets the EROFS layer: as a detached mount's fd, or by the path of a temporary mount. */
export type Layers = 'fd' | 'path';
/** The new mount API (fsopen/fsconfig/fsmount/move_mount) or legacy mount(2). */
export type Api = 'new' | 'legacy';
export type VerityMode = 'off' | 'try' | 'require';

export interface MountOptions {
  /** Object store directories (at least one); data-only lower layers of the overlay. */
  basedir: string[];
  /** Expected fs-verity digest of the image (64 hex digits); checked before mounting. */
  digest?: string;
  /** `require`: overlay verity=require, fail if this kernel cannot; `try`: use it when the kernel can. Default `off` (`try` when `digest` is set). */
  verity?: VerityMode;
  /** Read-only. Without an upperdir the mount is always read-only (`rw` is ignored: nothing could be written); with one the default is read-write. */
  readonly?: boolean;
  upperdir?: string;
  workdir?: string;
  /** A user namespace (path like /proc/PID/ns/user, or an open fd) whose ID mapping the image's files get. */
  idmap?: string | number;
  /** Copy the image into an anonymous O_TMPFILE file first, verify `digest` on the copy, mount the copy. */
  private?: boolean;
  /** Directories to try for the private copy, in order (default: the image's own directory, the temp dir, /var/tmp, /dev/shm). */
  privateDirs?: string[];
  nosuid?: boolean;
  nodev?: boolean;
  noexec?: boolean;
  atime?: 'relatime' | 'noatime' | 'strictatime';
  nodiratime?: boolean;
  /** Force a path instead of the best one found at run time. */
  backing?: Backing | 'auto';
  layers?: Layers | 'auto';
  api?: Api | 'auto';
  /** The overlay's source field in mountinfo (default "composefs", as the reference). */
  source?: string;
  /** The FUSE rung (src/fuse/rung.ts): true mounts through it only (`fuse`, `--fuse`); false never (`fuse=no`); unset, when the kernel path lacks privilege or cannot check objects that must be checked. */
  fuse?: boolean;
  /** The mount service rung (src/service/rung.ts): true mounts through it only (`service`, `--service`); false never (`service=no`); unset, when the kernel path lacks privilege (before FUSE). */
  service?: boolean;
  /** The mount service's socket (default $CFS_SERVICE_SOCKET, else /run/composefs/mount.sock). */
  serviceSocket?: string;
  /** FUSE: object reads straight from the kernel when it grants passthrough ('auto', the default), or never. */
  passthrough?: 'auto' | 'off';
  /** FUSE: let other users in (default: when root; fusermount3 allows it to others only with user_allow_other). */
  allowOther?: boolean;
  /** FUSE: outstanding reads of /dev/fuse, 1..64 (default 2). */
  fuseReaders?: number;
  /** FUSE: where the server reports verity failures and missing objects. */
  log?: string;
  /** FUSE: serve in this process until unmounted, instead of a detached server. */
  foreground?: boolean;
  /** FUSE with `foreground`: also hand the server's messages here. */
  onServerLog?: (line: string) => void;
  /** Check everything (options, places, image, digest, verity) but mount nothing (mount(8)'s -f). */
  dryRun?: boolean;
  /** Called before every step of the mount; tests use it to kill the process at each point. */
  onStep?: (step: string) => void;
}

export interface ParsedOptionString {
  options: Partial<MountOptions>;
  /** Options we accepted but that do nothing here (`defaults`, `x-*`, ...). */
  ignored: string[];
}

/** Split an option string on unescaped commas into raw `key[=value]` items (values still escaped). */
export function splitOptions(s: string): Array<{ key: string; rawValue: string | null }> {
  const out: Array<{ key: string; rawValue: string | null }> = [];
  let i = 0;
  while (i <= s.length) {
    let j = i;
    let eq = -1;
    for (; j < s.length; j++) {
      const c = s[j];
      if (c === '\\' && j + 1 < s.length) j++;
      else if (c === '=' && eq < 0) eq = j;
      else if (c === ',') break;
    }
    const item = s.slice(i, j);
    if (item.length > 0) {
      if (eq >= 0) out.push({ key: s.slice(i, eq), rawValue: s.slice(eq + 1, j) });
      else out.push({ key: item, rawValue: null });
    }
    i = j + 1;
  }
  return out;
}

export function unescape(s: string): string {
  return s.replace(/\\(.)/gs, '$1');
}

/** Split on unescaped `sep`, then unescape each piece; empty pieces are dropped (as the reference's strtok). */
export function splitEscaped(s: string, sep: string): string[] {
  const parts: string[] = [];
  let cur = '';
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === '\\' && i + 1 < s.length) {
      cur += s[++i];
    } else if (c === sep) {
      parts.push(cur);
      cur = '';
    } else cur += c;
  }
  parts.push(cur);
  return parts.filter((p) => p.length > 0);
}

const choice = <T extends string>(key: string, v: string, allowed: readonly T[]): T => {
  if (!(allowed as readonly string[]).includes(v)) throw new UsageError(`invalid value for option ${key}: '${v}' (expected ${allowed.join(', ')})`);
  return v as T;
};

/**
 * Parse a mount(8)-style option string. Later options override earlier ones
 * (`ro,rw` is read-write), as mount(8) does. With `sloppy`, unknown options
 * are ignored instead of rejected.
 */
export function parseOptionString(s: string, sloppy = false): ParsedOptionString {
  const o: Partial<MountOptions> = {};
  const ignored: string[] = [];
  let verity = false;
  let tryverity = false;
  for (const { key, rawValue } of splitOptions(s)) {
    const need = (): string => {
      if (rawValue === null || rawValue === '') throw new UsageError(`no value given for option ${key}`);
      return rawValue;
    };
    const noValue = () => {
      if (rawValue !== null) throw new UsageError(`option ${key} takes no value`);
    };
    switch (key) {
      case 'basedir': {
        const dirs = splitEscaped(need(), ':');
        if (dirs.length === 0) throw new UsageError(`no value given for option basedir`);
        o.basedir = dirs;
        break;
      }
      case 'digest':
        o.digest = unescape(need());
        break;
      case 'verity':
        noValue();
        verity = true;
        break;
      case 'tryverity':
        noValue();
        tryverity = true;
        break;
      case 'noverity':
        noValue();
        verity = tryverity = false;
        o.verity = 'off';
        break;
      case 'upperdir':
        o.upperdir = unescape(need());
        break;
      case 'workdir':
        o.workdir = unescape(need());
        break;
      case 'idmap':
        o.idmap = unescape(need());
        break;
      case 'ro':
        noValue();
        o.readonly = true;
        break;
      case 'rw':
        noValue();
        o.readonly = false;
        break;
      case 'private':
        noValue();
        o.private = true;
        break;
      case 'nosuid':
      case 'nodev':
      case 'noexec':
      case 'nodiratime':
        noValue();
        o[key] = true;
        break;
      case 'suid':
      case 'dev':
      case 'exec':
      case 'diratime':
        noValue();
        o[`no${key}` as 'nosuid' | 'nodev' | 'noexec' | 'nodiratime'] = false;
        break;
      case 'relatime':
      case 'noatime':
      case 'strictatime':
        noValue();
        o.atime = key;
        break;
      case 'backing':
        o.backing = choice(key, unescape(need()), ['auto', 'fd', 'file', 'loop'] as const);
        break;
      case 'layers':
        o.layers = choice(key, unescape(need()), ['auto', 'fd', 'path'] as const);
        break;
      case 'api':
        o.api = choice(key, unescape(need()), ['auto', 'new', 'legacy'] as const);
        break;
      case 'source':
        o.source = unescape(need());
        break;
      // The FUSE rung's (src/fuse/rung.ts); the kernel rung ignores them.
      case 'fuse': {
        const v = rawValue === null ? 'yes' : choice(key, unescape(rawValue), ['yes', 'auto', 'no'] as const);
        o.fuse = v === 'yes' ? true : v === 'no' ? false : undefined;
        break;
      }
      // The mount service rung's (src/service/rung.ts).
      case 'service': {
        const v = rawValue === null ? 'yes' : choice(key, unescape(rawValue), ['yes', 'auto', 'no'] as const);
        o.service = v === 'yes' ? true : v === 'no' ? false : undefined;
        break;
      }
      case 'service_socket':
        o.serviceSocket = unescape(need());
        break;
      case 'passthrough':
        o.passthrough = choice(key, unescape(rawValue ?? ''), ['auto', 'off'] as const);
        break;
      case 'allow_other':
        noValue();
        o.allowOther = true;
        break;
      case 'fuse_readers': {
        const v = unescape(rawValue ?? '');
        if (!/^[0-9]+$/.test(v) || Number(v) < 1 || Number(v) > 64) throw new UsageError(`invalid value for option fuse_readers: '${v}' (expected 1..64)`);
        o.fuseReaders = Number(v);
        break;
      }
      case 'log':
        o.log = unescape(need());
        break;
      case 'foreground':
        noValue();
        o.foreground = true;
        break;
      // Options mount(8) and fstab use that mean nothing to the file system itself.
      case 'defaults':
      case 'auto':
      case 'noauto':
      case 'nofail':
      case '_netdev':
      case 'user':
      case 'nouser':
      case 'users':
      case 'owner':
      case 'group':
      case 'async':
      case 'loud':
      case 'silent':
        ignored.push(key);
        break;
      default:
        if (key.startsWith('x-') || key === 'comment') {
          ignored.push(key);
          break;
        }
        if (sloppy) {
          ignored.push(key);
          break;
        }
        throw new UsageError(`unsupported mount option '${key}'`);
    }
  }
  if (verity) o.verity = 'require';
  else if (tryverity) o.verity = 'try';
  return { options: o, ignored };
}
