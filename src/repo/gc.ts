/**
 * Garbage collection of a repository (its checks, fsck, are in fsck.ts).
 *
 * gc keeps what a name or a live mount (a lease, see leases.ts) reaches: the
 * image, its manifest and config (and a seal's artifact manifest), its layers' records, and every object
 * those layers' entries refer to (an image's objects all come from its
 * layers). Everything else goes: other images, layer records, blobs,
 * objects, stale leases, and whatever a killed pull left in tmp/ or as a
 * temporary file in the store. It holds the repository lock exclusively, so
 * no pull is in flight meanwhile.
 *
 * Nothing is reached through a link: every directory is opened beneath the
 * repository's fd without following one, and removals are unlinkat in that
 * directory, so a link planted in a shared repository is removed itself,
 * never what it points at. A link (or any non-directory) in place of one of
 * the repository's own directories stops gc before it removes anything.
 */
import { closeSync } from 'node:fs';
import { join } from 'node:path';
import { listFd, openDirAt, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, statAt, unlinkAt, type AtStat } from '../sys/dirfd.js';
import { decodeName, SUBDIRS, type Subdir } from './layout.js';
import { liveLeases } from './leases.js';
import { storedObject } from './layer-record.js';
import { digestHexPattern } from '../fsverity/index.js';
import { hexOf, RepoError, type NameRecord, type Repository } from './repository.js';

export interface GcResult {
  dryRun: boolean;
  removed: { images: number; layers: number; blobs: number; objects: number; temporary: number; leases: number; links: number };
  bytesFreed: number;
  kept: { names: number; mounts: number; images: number; layers: number; objects: number };
}

/** Deep enough for anything a pull leaves; deeper is someone else's tree, not removed. */
const MAX_DEPTH = 16;

/** Remove `name` from `dirFd`, a directory with what it holds, never following a link. */
function removeAt(dirFd: number, name: string, path: string, depth = 0): void {
  let fd: number;
  try {
    fd = openDirAt(dirFd, name, path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return;
    if (code !== 'ELOOP' && code !== 'ENOTDIR') throw err;
    unlinkAt(dirFd, name, false, path);
    return;
  }
  try {
    if (depth >= MAX_DEPTH) throw new RepoError(`${path}: more than ${MAX_DEPTH} levels deep, not removed`);
    for (const f of listFd(fd)) removeAt(fd, f, join(path, f), depth + 1);
  } finally {
    closeSync(fd);
  }
  unlinkAt(dirFd, name, true, path);
}

export async function gcRepository(repo: Repository, opts: { dryRun?: boolean; onWait?: () => void } = {}): Promise<GcResult> {
  const dryRun = opts.dryRun === true;
  const lock = await repo.lock(true, opts.onWait);
  try {
    if (!dryRun) repo.checkWritable();
    // Every directory opened (a link in place of one refused) before anything is removed.
    const dirs = {} as Record<Subdir, number>;
    for (const sub of SUBDIRS) dirs[sub] = repo.dir(sub);
    // Every name must be readable: one that is not would leave its image unprotected.
    const names = repo.list('names').filter((f) => !f.startsWith('.')).map((f) => repo.getName(decodeName(f)));
    let staleLeases = 0;
    const leases = liveLeases(repo, { removeStale: !dryRun, onStale: () => staleLeases++ });
    const holders: Pick<NameRecord, 'image' | 'layers' | 'manifest' | 'config'>[] = [...names, ...leases.map((l) => l.record)];
    const images = new Set(holders.map((n) => n.image));
    const layers = new Set(holders.flatMap((n) => n.layers.map(hexOf)));
    // A sealed name's artifact manifest is kept with its manifest and config (`cfs verify` reads it again).
    const blobs = new Set([...holders.flatMap((n) => [hexOf(n.manifest), hexOf(n.config)]), ...names.flatMap((n) => (n.seal?.artifact ? [hexOf(n.seal.artifact)] : []))]);
    const objects = new Set<string>();
    const objectName = digestHexPattern(repo.algorithm);
    for (const hex of layers) {
      // A lease's layer may be gone (its record removed by hand): nothing of it to keep.
      if (!repo.hasFile('layers', hex)) continue;
      for (const e of repo.readLayer(`sha256:${hex}`)) {
        const object = storedObject(e);
        if (object !== null) objects.add(object);
      }
    }
    const result: GcResult = {
      dryRun,
      removed: { images: 0, layers: 0, blobs: 0, objects: 0, temporary: 0, leases: staleLeases, links: 0 },
      bytesFreed: 0,
      kept: { names: names.length, mounts: leases.length, images: 0, layers: 0, objects: 0 },
    };
    const drop = (dirFd: number, dirPath: string, name: string, kind: keyof GcResult['removed'], st: AtStat | null = statAt(dirFd, name, join(dirPath, name))) => {
      if (st === null) return;
      if ((st.mode & S_IFMT) === S_IFLNK) kind = 'links';
      if ((st.mode & S_IFMT) === S_IFREG) result.bytesFreed += st.size;
      result.removed[kind]++;
      if (!dryRun) removeAt(dirFd, name, join(dirPath, name));
    };
    for (const f of listFd(dirs.images)) {
      if (images.has(f)) result.kept.images++;
      else drop(dirs.images, repo.imagesDir, f, f.startsWith('.') ? 'temporary' : 'images');
    }
    for (const f of listFd(dirs.layers)) {
      if (layers.has(f)) result.kept.layers++;
      else drop(dirs.layers, repo.layersDir, f, f.startsWith('.') ? 'temporary' : 'layers');
    }
    for (const f of listFd(dirs['blobs/sha256'])) if (!blobs.has(f)) drop(dirs['blobs/sha256'], repo.blobsDir, f, f.startsWith('.') ? 'temporary' : 'blobs');
    for (const f of listFd(dirs.names)) if (f.startsWith('.')) drop(dirs.names, repo.namesDir, f, 'temporary');
    for (const f of listFd(dirs.tmp)) drop(dirs.tmp, repo.tmpDir, f, 'temporary');
    for (const d of listFd(dirs.objects)) {
      if (d.startsWith('.tmp.')) {
        drop(dirs.objects, repo.objects, d, 'temporary');
        continue;
      }
      if (!/^[0-9a-f]{2}$/.test(d)) continue;
      const st = statAt(dirs.objects, d, join(repo.objects, d));
      if (st === null) continue;
      // A link (or a file) in place of objects/XX: removed itself, never what it points at.
      if ((st.mode & S_IFMT) !== S_IFDIR) {
        drop(dirs.objects, repo.objects, d, 'links', st);
        continue;
      }
      let fd: number;
      try {
        fd = openDirAt(dirs.objects, d, join(repo.objects, d));
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'ELOOP' && code !== 'ENOTDIR') throw err;
        drop(dirs.objects, repo.objects, d, 'links');
        continue;
      }
      try {
        for (const f of listFd(fd)) {
          const rel = `${d}${f}`;
          if (objects.has(rel)) result.kept.objects++;
          else drop(fd, join(repo.objects, d), f, objectName.test(rel) ? 'objects' : 'temporary');
        }
      } finally {
        closeSync(fd);
      }
    }
    return result;
  } finally {
    lock.release();
  }
}
