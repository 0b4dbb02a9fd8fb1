/**
 * The reference canonical image, made without the code under test: an OCI
 * image unpacked by `umoci raw unpack`, the rootfs canonicalized on disk as
 * the composefs-rs canonical generation says (root takes /usr's mode, owner,
 * nanosecond mtime and xattrs; /run emptied and given /usr's mtime; every
 * xattr but security.capability, and user.* when asked, removed) with
 * chmod/chown, touch -d, setfattr and getfattr, then written by
 * `mkcomposefs --min-version=1`: the reference C one when it is on this
 * machine, else our drop-in (bin/mkcomposefs.js), which conformance.test.ts
 * holds byte-identical to the C one. What is under test here is the canonical
 * tree transform (src/repo/canonical.ts), not the writer; where both writers
 * are present each reference image is written by both and must be the same.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { umociUnpack } from './import-compare.js';
import { cliPath } from './paths.js';
import { fsverityOf } from './seal-publish.js';

/** A mkcomposefs and the composefs-info that dumps its images. */
export interface ReferenceTools {
  mkcomposefs: string;
  info: string;
  /** 'c': composefs/composefs's tools; 'drop-in': ours (bin/). */
  kind: 'c' | 'drop-in';
}

/**
 * The reference C mkcomposefs and composefs-info (composefs/composefs):
 * $CFS_REFERENCE_MKCOMPOSEFS and the composefs-info beside it, or the ones
 * bench/build-reference.sh builds under $CFS_BENCH_PULL_DIR
 * (/var/tmp/cfs-bench-pull); null unless both are there.
 */
export function cReferenceTools(): ReferenceTools | null {
  const cache = process.env.CFS_BENCH_PULL_DIR ?? '/var/tmp/cfs-bench-pull';
  for (const c of [process.env.CFS_REFERENCE_MKCOMPOSEFS, join(cache, 'composefs-ref', 'build', 'tools', 'mkcomposefs')]) {
    if (c && existsSync(c) && existsSync(join(dirname(c), 'composefs-info'))) return { mkcomposefs: c, info: join(dirname(c), 'composefs-info'), kind: 'c' };
  }
  return null;
}

/** Our drop-in mkcomposefs and composefs-info (they read a directory and dumps as the C ones do). */
export function dropInTools(): ReferenceTools {
  return { mkcomposefs: cliPath('mkcomposefs'), info: cliPath('composefs-info'), kind: 'drop-in' };
}

/** The writer of reference images: the C tools when present, else the drop-ins. */
export function referenceTools(): ReferenceTools {
  return cReferenceTools() ?? dropInTools();
}

/** One line for a test's output: which writer made the reference images. */
export function referenceWriterNote(): string {
  const c = cReferenceTools();
  return c !== null
    ? `reference images written by the C mkcomposefs ${c.mkcomposefs} (and checked equal to our drop-in's)`
    : 'reference images written by our drop-in mkcomposefs (no C reference: set CFS_REFERENCE_MKCOMPOSEFS, or run bench/build-reference.sh)';
}

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
 * `mkcomposefs --min-version=1 --digest-store` of a directory as it is, by
 * `tools`, into `work` (a directory of its own per writer). Both writers make
 * every name of a hard-linked file an inode of its own when they read a
 * directory, so when the tree has hard links the image is dumped by that
 * writer's composefs-info, each name after an inode's first (in dump order)
 * made a hard link line (`@MODE`, target path) and the first given the
 * inode's link count, and the dump written by `mkcomposefs --from-file`.
 */
function imageOfTree(tools: ReferenceTools, rootfs: string, groups: string[][], work: string): Buffer {
  mkdirSync(work, { recursive: true });
  const img = join(work, 'reference.cfs');
  run(tools.mkcomposefs, ['--min-version=1', `--digest-store=${join(work, 'reference-store')}`, rootfs, img]);
  if (groups.length > 0) {
    const lines = run(tools.info, ['dump', img]).split('\n');
    const lineOf = new Map<string, number>();
    lines.forEach((line, i) => lineOf.set(line.slice(0, line.indexOf(' ')), i));
    for (const group of groups) {
      for (const p of group) if (!lineOf.has(p)) throw new Error(`${p} not in the reference dump (use plain names in canonical tests)`);
      const [primary, ...links] = [...group].sort((a, b) => lineOf.get(a)! - lineOf.get(b)!);
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
  return readFileSync(img);
}

/**
 * The reference `mkcomposefs --min-version=1` image of a directory as it is
 * (hard links kept as one inode), written by the C tools when present (and
 * then by the drop-ins too, which must agree), else by the drop-ins.
 */
export function referenceImageOfTree(rootfs: string, work: string): ReferenceImage {
  const groups = diskLinkGroups(rootfs);
  const c = cReferenceTools();
  const image = imageOfTree(c ?? dropInTools(), rootfs, groups, join(work, c !== null ? 'c' : 'drop-in'));
  const sha256 = createHash('sha256').update(image).digest('hex');
  if (c !== null) {
    const ours = imageOfTree(dropInTools(), rootfs, groups, join(work, 'drop-in'));
    const oursSha256 = createHash('sha256').update(ours).digest('hex');
    if (oursSha256 !== sha256) throw new Error(`the drop-in mkcomposefs path writes ${oursSha256}, the C reference ${sha256}: the fallback used without the C tools is not the reference`);
  }
  return { image, sha256 };
}

/** The reference canonical image of `layoutDir:ref` (umoci raw unpack, canonicalized on disk, mkcomposefs --min-version=1). */
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

/**
 * The fs-verity digest (hex) of the reference canonical image of
 * `layoutDir:ref`, by the `fsverity digest` tool over the image in a file:
 * the merged digest a seal of a sha256 repository's image must carry.
 */
export function referenceMergedDigest(layoutDir: string, ref: string, opts: { keepUserXattrs?: boolean } = {}): { digest: string; image: Buffer } {
  const { image } = referenceCanonicalImage(layoutDir, ref, opts);
  const work = referenceWorkDir();
  try {
    const file = join(work, 'merged.cfs');
    writeFileSync(file, image);
    return { digest: fsverityOf(file), image };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
