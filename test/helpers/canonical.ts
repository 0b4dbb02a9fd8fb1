/**
 * The reference canonical image, made without our code: an OCI image
 * unpacked by `umoci raw unpack`, the rootfs canonicalized on disk as the
 * composefs-rs canonical generation says (root takes /usr's mode, owner,
 * nanosecond mtime and xattrs; /run emptied and given /usr's mtime; every
 * xattr but security.capability, and user.* when asked, removed) with
 * chmod/chown, touch -d, setfattr and getfattr, then written by the
 * reference C `mkcomposefs --min-version=1` (never our drop-in).
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, chownSync, existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { umociUnpack } from './import-compare.js';

/**
 * The reference C mkcomposefs and composefs-info (composefs/composefs):
 * $CFS_REFERENCE_MKCOMPOSEFS and the composefs-info beside it, or the ones
 * bench/build-reference.sh builds; null unless both are there.
 */
export function referenceTools(): { mkcomposefs: string; info: string } | null {
  const cache = process.env.CFS_BENCH_PULL_DIR ?? '/var/tmp/cfs-bench-pull';
  for (const c of [process.env.CFS_REFERENCE_MKCOMPOSEFS, join(cache, 'composefs-ref', 'build', 'tools', 'mkcomposefs')]) {
    if (c && existsSync(c) && existsSync(join(dirname(c), 'composefs-info'))) return { mkcomposefs: c, info: join(dirname(c), 'composefs-info') };
  }
  return null;
}

export const NO_REFERENCE = 'no reference C mkcomposefs and composefs-info (set CFS_REFERENCE_MKCOMPOSEFS, or run bench/build-reference.sh on a composefs checkout)';

export interface ReferenceImage {
  image: Buffer;
  /** sha256 (hex) of the image bytes. */
  sha256: string;
}

function run(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'latin1', maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** Every xattr on every path under `dir` (symlinks not followed): path → [name, hex value]. */
function allXattrs(dir: string): Map<string, [string, string][]> {
  const out = new Map<string, [string, string][]>();
  const text = run('getfattr', ['-R', '-P', '-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', dir]);
  let path = '';
  for (const line of text.split('\n')) {
    if (line.startsWith('# file: ')) {
      path = line.slice('# file: '.length);
      if (path.includes('\\')) throw new Error(`getfattr escaped the path ${path}: use plain names in canonical tests`);
      out.set(path, []);
    } else if (line.includes('=')) {
      const eq = line.indexOf('=');
      out.get(path)!.push([line.slice(0, eq), line.slice(eq + 1)]);
    }
  }
  return out;
}

/** `touch -h -d @SEC.NSEC`: an exact nanosecond mtime (Node's utimes goes through a double). */
function setMtime(path: string, ns: bigint): void {
  const sec = ns / 1_000_000_000n;
  const nsec = ns % 1_000_000_000n;
  run('touch', ['-h', '-m', '-d', `@${sec}.${String(nsec).padStart(9, '0')}`, path]);
}

/** Canonicalize a rootfs in place, as composefs-rs transform_for_oci does to its tree. */
export function canonicalizeOnDisk(rootfs: string, opts: { keepUserXattrs?: boolean } = {}): void {
  const keep = (name: string) => name === 'security.capability' || (opts.keepUserXattrs === true && name.startsWith('user.'));
  const usr = join(rootfs, 'usr');
  const usrStat = lstatSync(usr, { bigint: true });
  if (!usrStat.isDirectory()) throw new Error('no /usr directory: no canonical form');
  // xattrs: only the allowlist stays, anywhere (the root's are replaced by /usr's below).
  const xattrs = allXattrs(rootfs);
  const seen = new Set<string>();
  for (const [path, list] of xattrs) {
    // A hard-linked file's xattrs are its inode's: removed once, through its first name.
    const st = lstatSync(path);
    if (!st.isDirectory()) {
      if (seen.has(`${st.dev}:${st.ino}`)) continue;
      seen.add(`${st.dev}:${st.ino}`);
    }
    for (const [name] of list) if (!keep(name) || path === rootfs) run('setfattr', ['-h', '-x', name, path]);
  }
  for (const [name, value] of xattrs.get(usr) ?? []) if (keep(name)) run('setfattr', ['-h', '-n', name, '-v', value, rootfs]);
  // /run: emptied, /usr's mtime.
  const runDir = join(rootfs, 'run');
  if (existsSync(runDir)) {
    if (!lstatSync(runDir).isDirectory()) throw new Error('/run is not a directory: no canonical form');
    for (const name of readdirSync(runDir)) rmSync(join(runDir, name), { recursive: true, force: true });
    setMtime(runDir, usrStat.mtimeNs);
  }
  // The root: /usr's mode, owner and mtime (last: nothing under it changes after).
  chmodSync(rootfs, Number(usrStat.mode & 0o7777n));
  chownSync(rootfs, Number(usrStat.uid), Number(usrStat.gid));
  setMtime(rootfs, usrStat.mtimeNs);
}

/** Names of one inode under `rootfs` ('/'-rooted, as a dump writes them), for inodes with more than one. */
function diskLinkGroups(rootfs: string): string[][] {
  const byInode = new Map<string, string[]>();
  const todo = [rootfs];
  while (todo.length > 0) {
    const dir = todo.pop()!;
    for (const d of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, d.name);
      if (d.isDirectory()) {
        todo.push(path);
        continue;
      }
      const st = lstatSync(path);
      if (st.nlink < 2) continue;
      const key = `${st.dev}:${st.ino}`;
      byInode.set(key, [...(byInode.get(key) ?? []), `/${relative(rootfs, path)}`]);
    }
  }
  return [...byInode.values()].filter((g) => g.length > 1);
}

/**
 * The reference `mkcomposefs --min-version=1 --digest-store` of a directory
 * as it is. The C tool makes every name of a hard-linked file an inode of its
 * own when it reads a directory, so when the tree has hard links its image
 * is dumped by the reference composefs-info, each name after an inode's
 * first (in dump order) made a hard link line (`@MODE`, target path) and the
 * first given the inode's link count, and the dump written by the reference
 * `mkcomposefs --from-file`.
 */
export function referenceImageOfTree(rootfs: string, work: string): ReferenceImage {
  const tools = referenceTools();
  if (tools === null) throw new Error(NO_REFERENCE);
  const img = join(work, 'reference.cfs');
  run(tools.mkcomposefs, ['--min-version=1', `--digest-store=${join(work, 'reference-store')}`, rootfs, img]);
  const groups = diskLinkGroups(rootfs);
  if (groups.length > 0) {
    const lines = run(tools.info, ['dump', img]).split('\n');
    const lineOf = new Map<string, number>();
    lines.forEach((line, i) => lineOf.set(line.slice(0, line.indexOf(' ')), i));
    for (const group of groups) {
      for (const p of group) if (!lineOf.has(p)) throw new Error(`${p} not in the reference dump (use plain names in canonical tests)`);
      const [primary, ...links] = group.sort((a, b) => lineOf.get(a)! - lineOf.get(b)!);
      // The C dump reader takes the first name's link count as written, not counting the links it reads.
      const first = lines[lineOf.get(primary)!].split(' ');
      first[3] = String(group.length);
      lines[lineOf.get(primary)!] = first.join(' ');
      for (const p of links) {
        const fields = lines[lineOf.get(p)!].split(' ');
        fields[2] = `@${fields[2]}`;
        fields[8] = primary;
        lines[lineOf.get(p)!] = fields.join(' ');
      }
    }
    writeFileSync(join(work, 'reference.dump'), lines.join('\n'));
    run(tools.mkcomposefs, ['--from-file', '--min-version=1', join(work, 'reference.dump'), img]);
  }
  const image = readFileSync(img);
  return { image, sha256: createHash('sha256').update(image).digest('hex') };
}

/** The reference canonical image of `layoutDir:ref` (umoci raw unpack, canonicalized on disk, reference mkcomposefs). */
export function referenceCanonicalImage(layoutDir: string, ref: string, opts: { keepUserXattrs?: boolean } = {}): ReferenceImage {
  const { dir, rootfs } = umociUnpack(layoutDir, ref);
  try {
    canonicalizeOnDisk(rootfs, opts);
    return referenceImageOfTree(rootfs, dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A fresh work directory for referenceImageOfTree (the caller removes it). */
export function referenceWorkDir(): string {
  return mkdtempSync(join(process.env.CFS_TEST_DIR ?? tmpdir(), 'cfs-canonical-'));
}
