/**
 * The tests' one way to get a scratch directory and to get rid of it: made
 * under $CFS_TEST_DIR (default: the system's temp dir), and removed with
 * whatever is still mounted beneath it detached first (deepest first), so a
 * test that fails halfway leaves neither a directory nor a mount behind.
 */
import { mkdtempSync, readFileSync, rmSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

/** A new, empty directory `cfs-TAG-XXXXXX`; `mode` when others (nobody, in setpriv tests) must reach into it. */
export function makeTemp(tag: string, mode?: number): string {
  const dir = mkdtempSync(join(process.env.CFS_TEST_DIR ?? tmpdir(), `cfs-${tag}-`));
  if (mode !== undefined) chmodSync(dir, mode);
  return dir;
}

/** Mountpoints at or beneath `dir`, deepest first. */
function mountsBeneath(dir: string): string[] {
  let lines: string[];
  try {
    lines = readFileSync('/proc/self/mountinfo', 'utf8').split('\n');
  } catch {
    return [];
  }
  const unescape = (p: string) => p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return lines
    .map((l) => unescape(l.split(' ')[4] ?? ''))
    .filter((p) => p === dir || p.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
}

/** Detach what is mounted beneath `dir`, then remove it and everything in it. */
export function removeTemp(dir: string): void {
  for (let round = 0; round < 8; round++) {
    const mounts = mountsBeneath(dir);
    if (mounts.length === 0) break;
    for (const m of mounts) spawnSync('umount', ['-l', m], { stdio: 'ignore', timeout: 10_000 });
  }
  rmSync(dir, { recursive: true, force: true });
}

/**
 * `fn` run in a fresh directory that is removed afterwards, whatever happens;
 * the result has `fn`'s shape (a promise when `fn` returns one).
 */
export function withTemp<T>(tag: string, fn: (dir: string) => T, mode?: number): T {
  const dir = makeTemp(tag, mode);
  let result: T;
  try {
    result = fn(dir);
  } catch (err) {
    removeTemp(dir);
    throw err;
  }
  if (result instanceof Promise) return result.finally(() => removeTemp(dir)) as T;
  removeTemp(dir);
  return result;
}

/** The same as a test body: `test(name, inTemp('tag', async (dir) => { ... }))`. */
export function inTemp(tag: string, fn: (dir: string) => unknown, mode?: number): () => Promise<void> {
  return async () => {
    await withTemp(tag, async (dir) => {
      await fn(dir);
    }, mode);
  };
}
