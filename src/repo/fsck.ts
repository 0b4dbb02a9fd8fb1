/**
 * Checks of a repository: fsck.
 *
 * fsck checks every object's fs-verity digest against its name, every image
 * (its digest, its structure, the presence and digest of its objects),
 * every layer record and every name, and reports every link, file of an
 * unexpected type, and (unless the repository is shared) file owned by
 * someone other than the repository's owner or root. Like gc, it reaches
 * nothing through a link: every directory is opened beneath the
 * repository's fd without following one.
 */
import { createHash } from 'node:crypto';
import { closeSync, constants } from 'node:fs';
import { join } from 'node:path';
import { digestHexPattern, fsverityDigest, fsverityDigestOfFileSync } from '../fsverity/index.js';
import { fsckImage } from '../check/fsck.js';
import { listFd, O_NONBLOCK, openAt, openDirAt, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, statAt, typeName, type AtStat } from '../sys/dirfd.js';
import { decodeName, type Subdir } from './layout.js';
import type { NameRecord, Repository } from './repository.js';
import { storedObject } from './layer-record.js';

export interface RepoProblem {
  what: string;
  message: string;
}

export interface RepoFsckResult {
  ok: boolean;
  problems: RepoProblem[];
  checked: { objects: number; images: number; layers: number; names: number };
}

export async function fsckRepository(repo: Repository, opts: { onWait?: () => void } = {}): Promise<RepoFsckResult> {
  const lock = await repo.lock(false, opts.onWait);
  const problems: RepoProblem[] = [];
  const checked = { objects: 0, images: 0, layers: 0, names: 0 };
  const problem = (what: string, message: string) => problems.push({ what, message });
  /** Objects and images are named by the repository's algorithm's digests. */
  const objectName = digestHexPattern(repo.algorithm);
  const uidOk = (st: AtStat) => repo.shared || st.uid === repo.owner || st.uid === 0;
  /**
   * Report what is wrong with an entry expected to be of `type`: a link, another
   * type, a foreign owner. True when it is of that type (and may be read).
   */
  const entry = (what: string, st: AtStat | null, type: number): boolean => {
    if (st === null) return false;
    if ((st.mode & S_IFMT) === S_IFLNK) {
      problem(what, 'a symbolic link (never followed; gc removes it)');
      return false;
    }
    if ((st.mode & S_IFMT) !== type) {
      problem(what, `${typeName(st.mode)}, not ${typeName(type)}`);
      return false;
    }
    if (!uidOk(st)) problem(what, `owned by uid ${st.uid}, not by the repository's owner (uid ${repo.owner}) or root`);
    return true;
  };
  /** The directory `sub`, reported (and null) when it is anything else. */
  const dir = (sub: Subdir): number | null => {
    const parts = sub.split('/');
    const name = parts.pop()!;
    const parent = parts.length === 0 ? repo.fd : dir(parts.join('/') as Subdir);
    if (parent === null) return null;
    const st = statAt(parent, name, join(repo.root, sub));
    if (st === null) {
      if (sub !== 'leases') problem(`${sub}/`, 'missing');
      return null;
    }
    if (!entry(`${sub}/`, st, S_IFDIR)) return null;
    try {
      return repo.dir(sub);
    } catch (err) {
      problem(`${sub}/`, (err as Error).message);
      return null;
    }
  };
  /** Every entry of a directory holding files: links, other types and foreign owners reported. */
  const files = (sub: Subdir, fd: number, each?: (name: string, st: AtStat) => void) => {
    for (const f of listFd(fd)) {
      const st = statAt(fd, f, join(repo.root, sub, f));
      if (entry(`${sub}/${f}`, st, S_IFREG)) each?.(f, st!);
    }
  };
  /** objects/XX fds, for the layer records' size checks. */
  const objectDirs = new Map<string, number | null>();
  try {
    const lockSt = statAt(repo.fd, 'lock', join(repo.root, 'lock'));
    if (lockSt) entry('lock', lockSt, S_IFREG);
    const objectsFd = dir('objects');
    if (objectsFd !== null) {
      for (const d of listFd(objectsFd)) {
        const st = statAt(objectsFd, d, join(repo.objects, d));
        if (d.startsWith('.tmp.')) {
          entry(`objects/${d}`, st, S_IFREG);
          continue;
        }
        if (!/^[0-9a-f]{2}$/.test(d)) {
          if (st && (st.mode & S_IFMT) === S_IFLNK) entry(`objects/${d}`, st, S_IFDIR);
          continue;
        }
        if (!entry(`objects/${d}`, st, S_IFDIR)) {
          objectDirs.set(d, null);
          continue;
        }
        const fd = openDirAt(objectsFd, d, join(repo.objects, d));
        objectDirs.set(d, fd);
        for (const f of listFd(fd)) {
          const what = `object ${d}/${f}`;
          const ost = statAt(fd, f, join(repo.objects, d, f));
          if (!entry(what, ost, S_IFREG)) continue;
          if (!objectName.test(`${d}${f}`)) continue; // a temporary file (or another algorithm's name); gc's business
          checked.objects++;
          let ofd = -1;
          try {
            ofd = openAt(fd, f, constants.O_RDONLY | O_NONBLOCK, 0, join(repo.objects, d, f));
            const { digest } = fsverityDigestOfFileSync(ofd, { algorithm: repo.algorithm });
            if (digest.toString('hex') !== `${d}${f}`) problem(what, `content has fs-verity digest ${digest.toString('hex')}`);
          } catch (err) {
            problem(what, (err as Error).message);
          } finally {
            if (ofd >= 0) closeSync(ofd);
          }
        }
      }
    }
    const objectSize = (hex: string): number => {
      const d = hex.slice(0, 2);
      if (!objectDirs.has(d) && objectsFd !== null) {
        const st = statAt(objectsFd, d, join(repo.objects, d));
        objectDirs.set(d, st && (st.mode & S_IFMT) === S_IFDIR ? openDirAt(objectsFd, d, join(repo.objects, d)) : null);
      }
      const fd = objectDirs.get(d);
      if (fd === null || fd === undefined) return -1;
      const st = statAt(fd, hex.slice(2), join(repo.objects, d, hex.slice(2)));
      return st && (st.mode & S_IFMT) === S_IFREG ? st.size : -1;
    };
    const imagesFd = dir('images');
    if (imagesFd !== null) {
      files('images', imagesFd, (f) => {
        if (f.startsWith('.')) return;
        checked.images++;
        let image: Buffer;
        try {
          image = repo.readFile('images', f);
        } catch (err) {
          problem(`image ${f}`, (err as Error).message);
          return;
        }
        const hex = fsverityDigest(image, repo.algorithm).toString('hex');
        if (hex !== f) problem(`image ${f}`, `content has fs-verity digest ${hex}`);
        const report = fsckImage(image, { basedirs: [repo.objects] });
        for (const p of report.problems) problem(`image ${f}`, `${p.path ? `${p.path}: ` : ''}${p.message}`);
      });
    }
    const layersFd = dir('layers');
    if (layersFd !== null) {
      files('layers', layersFd, (f) => {
        if (!/^[0-9a-f]{64}$/.test(f)) return;
        const diff = `sha256:${f}`;
        checked.layers++;
        try {
          for (const e of repo.readLayer(diff)) {
            const object = storedObject(e);
            if (object !== null && objectSize(object) !== e.size) {
              problem(`layer ${diff}`, `entry ${e.path}: object ${object} missing or of the wrong size`);
            }
          }
        } catch (err) {
          problem(`layer ${diff}`, (err as Error).message);
        }
      });
    }
    dir('blobs');
    const blobsFd = dir('blobs/sha256');
    if (blobsFd !== null) files('blobs/sha256', blobsFd);
    const tmpFd = dir('tmp');
    if (tmpFd !== null) {
      for (const f of listFd(tmpFd)) {
        const st = statAt(tmpFd, f, join(repo.tmpDir, f));
        if (st && ((st.mode & S_IFMT) === S_IFLNK || !uidOk(st))) entry(`tmp/${f}`, st, st.mode & S_IFMT);
      }
    }
    const leasesFd = dir('leases');
    if (leasesFd !== null) files('leases', leasesFd);
    const namesFd = dir('names');
    if (namesFd !== null) {
      files('names', namesFd, (f) => {
        if (f.startsWith('.')) return;
        checked.names++;
        const name = decodeName(f);
        let rec: NameRecord;
        try {
          rec = repo.getName(name);
        } catch (err) {
          problem(`name ${name}`, (err as Error).message);
          return;
        }
        if (imagesFd === null || typeof rec.image !== 'string' || !objectName.test(rec.image) || !repo.hasFile('images', rec.image)?.size) problem(`name ${name}`, `image ${rec.image} is missing`);
        for (const blob of [rec.manifest, rec.config, ...(rec.seal?.artifact ? [rec.seal.artifact] : [])]) {
          try {
            const data = repo.readBlob(blob);
            const got = `sha256:${createHash('sha256').update(data).digest('hex')}`;
            if (got !== blob) problem(`name ${name}`, `blob ${blob} has digest ${got}`);
          } catch (err) {
            problem(`name ${name}`, (err as Error).message);
          }
        }
        for (const l of rec.layers) {
          try {
            if (!repo.hasLayer(l)) problem(`name ${name}`, `layer record ${l} is missing`);
          } catch (err) {
            problem(`name ${name}`, (err as Error).message);
          }
        }
      });
    }
  } finally {
    for (const fd of objectDirs.values()) if (fd !== null) closeSync(fd);
    lock.release();
  }
  return { ok: problems.length === 0, problems, checked };
}
