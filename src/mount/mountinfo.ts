/** /proc/self/mountinfo, parsed. */
import { readFileSync } from 'node:fs';

export interface MountInfo {
  id: number;
  parent: number;
  dev: string;
  root: string;
  mountPoint: string;
  mountOptions: string;
  fstype: string;
  source: string;
  superOptions: string;
  line: string;
}

/** mountinfo escapes space, tab, newline and backslash as \ooo. */
export function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

export function parseMountinfo(text: string): MountInfo[] {
  const out: MountInfo[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const f = line.split(' ');
    const sep = f.indexOf('-', 6);
    if (sep < 0 || f.length < sep + 4) continue;
    out.push({
      id: Number(f[0]),
      parent: Number(f[1]),
      dev: f[2],
      root: unescapeMountinfo(f[3]),
      mountPoint: unescapeMountinfo(f[4]),
      mountOptions: f[5],
      fstype: f[sep + 1],
      source: unescapeMountinfo(f[sep + 2]),
      superOptions: f.slice(sep + 3).join(' '),
      line,
    });
  }
  return out;
}

export function readMountinfo(): MountInfo[] {
  return parseMountinfo(readFileSync('/proc/self/mountinfo', 'utf8'));
}

/**
 * Split overlayfs super options into key/value pairs. The kernel escapes
 * commas in values with a backslash (seq_show_option), so split on
 * unescaped commas only.
 */
export function splitSuperOptions(s: string): Array<[string, string | null]> {
  const out: Array<[string, string | null]> = [];
  let cur = '';
  const flush = () => {
    if (!cur) return;
    const eq = cur.indexOf('=');
    out.push(eq < 0 ? [cur, null] : [cur.slice(0, eq), unescapeMountinfo(cur.slice(eq + 1))]);
    cur = '';
  };
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === '\\' && s[i + 1] === ',') {
      cur += ',';
      i++;
    } else if (c === ',') flush();
    else cur += c;
  }
  flush();
  return out;
}

/** The topmost mount at `path` (already canonical), or null. */
export function mountAt(path: string, mounts = readMountinfo()): MountInfo | null {
  const here = mounts.filter((m) => m.mountPoint === path);
  if (here.length === 0) return null;
  // Stacked mounts: the top one is not the parent of another mount on the same path.
  const parents = new Set(here.map((m) => m.parent));
  return here.find((m) => !parents.has(m.id)) ?? here[here.length - 1];
}
