/**
 * The faithfulness check of the OCI importer: the same OCI layout unpacked
 * by `umoci raw unpack` (a real rootfs on disk) and imported by us, compared
 * entry by entry, hard-link groups by the rootfs's inode numbers.
 */
import { spawnSync } from 'node:child_process';
import { lstatSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readImage } from '../../src/erofs/reader.js';
import { walk, type Inode } from '../../src/tree/model.js';
import { cliPath } from './paths.js';

export function hasTool(name: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${name}`]).status === 0;
}

/** `umoci raw unpack` of DIR:REF into a fresh directory (the caller removes `dir`). */
export function umociUnpack(layout: string, ref: string): { dir: string; rootfs: string } {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-umoci-'));
  const rootfs = join(dir, 'rootfs');
  const r = spawnSync('umoci', ['raw', 'unpack', '--image', `${layout}:${ref}`, rootfs], { encoding: 'utf8' });
  if (r.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`umoci raw unpack failed: ${r.stderr}`);
  }
  return { dir, rootfs };
}

/** Our mkcomposefs --digest-store over a directory: the image bytes. */
export function mkcomposefsOf(rootfs: string, work: string): Buffer {
  const img = join(work, 'rootfs.cfs');
  const r = spawnSync(cliPath('mkcomposefs'), ['--digest-store', join(work, 'store'), rootfs, img], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`mkcomposefs failed: ${r.stderr}`);
  return readFileSync(img);
}

/** Path → everything a rootfs entry has that a composefs image keeps (nlink left out). */
export function records(image: Buffer): Map<string, string> {
  const { root } = readImage(image);
  const out = new Map<string, string>();
  walk(root, (path, inode: Inode) => {
    out.set(
      path.toString('latin1'),
      JSON.stringify({
        mode: inode.mode.toString(8),
        uid: inode.uid,
        gid: inode.gid,
        rdev: inode.rdev,
        size: (inode.mode & 0o170000) === 0o040000 ? 0 : inode.size,
        mtime: `${inode.mtimeSec}.${inode.mtimeNsec}`,
        payload: inode.payload?.toString('latin1') ?? null,
        content: inode.content?.toString('hex') ?? null,
        xattrs: inode.xattrs.map((x) => `${x.key.toString('latin1')}=${x.value.toString('hex')}`).sort(),
      }),
    );
  });
  return out;
}

/** Groups of paths naming one inode (only groups of two or more), as sorted lists. */
export function imageLinkGroups(image: Buffer): string[][] {
  const { root } = readImage(image);
  const byInode = new Map<Inode, string[]>();
  walk(root, (path, inode) => {
    if (inode.children) return;
    byInode.set(inode, [...(byInode.get(inode) ?? []), path.toString('latin1')]);
  });
  return normalizeGroups([...byInode.values()]);
}

export function rootfsLinkGroups(rootfs: string, paths: Iterable<string>): string[][] {
  const byIno = new Map<number, string[]>();
  for (const p of paths) {
    const st = lstatSync(join(rootfs, p));
    if (st.isDirectory()) continue;
    byIno.set(st.ino, [...(byIno.get(st.ino) ?? []), p]);
  }
  return normalizeGroups([...byIno.values()]);
}

function normalizeGroups(groups: string[][]): string[][] {
  return groups
    .filter((g) => g.length > 1)
    .map((g) => g.sort())
    .sort((a, b) => (a[0] < b[0] ? -1 : 1));
}
