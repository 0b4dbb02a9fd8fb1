/**
 * Leases: what a mount by name holds against gc. `cfs mount NAME DIR` writes
 * one file in leases/ naming the image (and the layers and blobs that come
 * with it) before it mounts; gc keeps whatever a live lease names, so a name
 * removed or pointed elsewhere (`cfs rm`, a new pull) does not take the
 * mounted image's files away while the mount exists.
 *
 * A lease is live while:
 * - its mount is in progress: the mounting process holds an exclusive flock
 *   on the lease file from before it appears under its name (it is written
 *   under a dot name, locked, then renamed) until the mount is recorded in
 *   it, so gc never sees a lease half-written or before its mount is known;
 * - or the mount it records (mount id, device and mount point, as
 *   /proc/self/mountinfo shows them) is still there. Whatever rung mounted
 *   (kernel or FUSE), the mount point shows the mount.
 * A lease made in another mount namespace cannot be checked from here and is
 * kept. Any other lease (its mount gone, its mounter killed before mounting)
 * is stale: gc ignores it and removes it.
 *
 * The lease is written under the repository's lock (shared, as a pull), and
 * the name read under the same lock, so a gc (which takes it exclusively)
 * runs either before the name is read or after the lease is there.
 */
import { closeSync, constants, fsyncSync, ftruncateSync, readFileSync, readlinkSync, realpathSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join, resolve } from 'node:path';
import { ioError } from '../errors.js';
import { tryFlock } from '../sys/flock.js';
import { O_NONBLOCK, openAt, renameAt, S_IFMT, S_IFREG, statFd, unlinkAt } from '../sys/dirfd.js';
import { readMountinfo, type MountInfo } from '../mount/mountinfo.js';
import { tmpName, writeAllSync } from './layout.js';
import type { NameRecord, Repository } from './repository.js';

export interface LeaseRecord {
  /** The name mounted (it may since have gone or moved). */
  name: string;
  /** fs-verity digest (hex) of the image mounted. */
  image: string;
  manifest: string;
  config: string;
  layers: string[];
  /** The mount point, resolved. */
  mountpoint: string;
  state: 'mounting' | 'mounted';
  /** Once mounted: the mount's id and device in /proc/self/mountinfo, and the mount namespace. */
  mountId?: number;
  dev?: string;
  mntns?: string;
  pid: number;
  since: string;
}

/** A lease held by this process for a mount in progress. */
export interface Lease {
  readonly file: string;
  /** The mount is up: record it (and release the lock that marked it in progress). */
  mounted(): void;
  /** The mount failed (or was only tried): remove the lease. */
  abandon(): void;
}

const LEASE_RE = /^[0-9a-z]+-[0-9]+-[0-9a-f]{16}$/;
const MAX_LEASE_BYTES = 1 << 16;

function mountNamespace(): string | null {
  try {
    return readlinkSync('/proc/self/ns/mnt');
  } catch {
    return null;
  }
}

/**
 * Write a lease for mounting `record` on `mountpoint`; the caller holds the
 * repository lock (shared). Throws what the file system says (EACCES for a
 * repository the caller may not write).
 */
export function writeLease(repo: Repository, record: NameRecord, mountpoint: string): Lease {
  let mp = resolve(mountpoint);
  try {
    mp = realpathSync(mountpoint);
  } catch {
    /* the mount will say what is wrong with it */
  }
  const dir = repo.dir('leases', true);
  const rec: LeaseRecord = {
    name: record.name,
    image: record.image,
    manifest: record.manifest,
    config: record.config,
    layers: record.layers,
    mountpoint: mp,
    state: 'mounting',
    pid: process.pid,
    since: new Date().toISOString(),
  };
  const tmp = tmpName('lease');
  const file = `${Date.now().toString(36)}-${process.pid}-${randomBytes(8).toString('hex')}`;
  let fd = -1;
  try {
    fd = openAt(dir, tmp, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL, 0o644, join(repo.leasesDir, tmp));
    if (!tryFlock(fd, true, join(repo.leasesDir, tmp))) throw new Error('a new file is locked by another process');
    writeAllSync(fd, Buffer.from(`${JSON.stringify(rec)}\n`));
    renameAt(dir, tmp, dir, file, true, join(repo.leasesDir, file));
  } catch (err) {
    if (fd >= 0) closeSync(fd);
    try {
      unlinkAt(dir, tmp);
    } catch {
      /* not created */
    }
    throw ioError(err, `cannot write a lease in ${repo.leasesDir}`);
  }
  let open = true;
  let removed = false;
  return {
    file,
    mounted() {
      if (!open) return;
      const top = readMountinfo().filter((m) => m.mountPoint === mp).at(-1);
      const ns = mountNamespace();
      const done: LeaseRecord = top ? { ...rec, state: 'mounted', mountId: top.id, dev: top.dev, ...(ns ? { mntns: ns } : {}) } : rec;
      try {
        const buf = Buffer.from(`${JSON.stringify(done)}\n`);
        ftruncateSync(fd, 0);
        let off = 0;
        while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off, off);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
        open = false;
      }
    },
    abandon() {
      if (!removed) {
        removed = true;
        try {
          unlinkAt(dir, file);
        } catch {
          /* gone already */
        }
      }
      if (open) closeSync(fd);
      open = false;
    },
  };
}

function valid(r: unknown): r is LeaseRecord {
  const l = r as LeaseRecord;
  const digest = (d: unknown) => typeof d === 'string' && /^sha256:[0-9a-f]{64}$/.test(d);
  return (
    typeof l === 'object' &&
    l !== null &&
    typeof l.image === 'string' &&
    /^(?:[0-9a-f]{64}){1,2}$/.test(l.image) &&
    digest(l.manifest) &&
    digest(l.config) &&
    Array.isArray(l.layers) &&
    l.layers.every(digest) &&
    typeof l.mountpoint === 'string'
  );
}

export interface LiveLease {
  file: string;
  record: LeaseRecord;
  /** The mount is still being made. */
  inProgress: boolean;
}

/**
 * The live leases. With `removeStale`, stale ones (and dot-named debris of
 * a killed mount) are removed: only under the repository lock held
 * exclusively (gc), so that no lease is being written meanwhile.
 */
export function liveLeases(repo: Repository, opts: { removeStale?: boolean; onStale?: () => void } = {}): LiveLease[] {
  const dirFd = repo.dirIfPresent('leases');
  if (dirFd === null) return [];
  const remove = (f: string) => {
    opts.onStale?.();
    if (!opts.removeStale) return;
    try {
      unlinkAt(dirFd, f, false, join(repo.leasesDir, f));
    } catch {
      /* gone already */
    }
  };
  let mounts: MountInfo[] | null = null;
  const ns = mountNamespace();
  const out: LiveLease[] = [];
  for (const f of repo.list('leases')) {
    if (f.startsWith('.')) {
      remove(f);
      continue;
    }
    if (!LEASE_RE.test(f)) continue; // not ours to judge or remove (fsck reports links and foreign files)
    let fd: number;
    try {
      fd = openAt(dirFd, f, constants.O_RDONLY | O_NONBLOCK, 0, join(repo.leasesDir, f));
    } catch {
      continue;
    }
    try {
      const st = statFd(fd);
      if ((st.mode & S_IFMT) !== S_IFREG) continue;
      const inProgress = !tryFlock(fd, false, join(repo.leasesDir, f));
      let record: unknown = null;
      if (st.size <= MAX_LEASE_BYTES) {
        try {
          record = JSON.parse(readFileSync(fd, 'utf8'));
        } catch {
          /* not a lease */
        }
      }
      if (!valid(record)) {
        if (!inProgress) remove(f);
        continue;
      }
      let live = inProgress;
      if (!live && record.mntns !== undefined && ns !== null && record.mntns !== ns) live = true;
      if (!live) {
        mounts ??= readMountinfo();
        const mp = record.mountpoint;
        live =
          record.state === 'mounted' && typeof record.mountId === 'number'
            ? mounts.some((m) => m.id === record.mountId && m.mountPoint === mp && m.dev === record.dev)
            : mounts.some((m) => m.mountPoint === mp);
      }
      if (live) out.push({ file: f, record, inProgress });
      else remove(f);
    } finally {
      closeSync(fd);
    }
  }
  return out;
}

/**
 * Resolve `name` for a mount and hold its image with a lease, both under the
 * repository's lock. `lease` is null (with `warning` saying why) when the
 * caller cannot write the repository: the mount goes on, unprotected.
 */
export async function holdForMount(repo: Repository, name: string, mountpoint: string): Promise<{ image: string; digest: string; basedir: string; lease: Lease | null; warning?: string }> {
  const lock = await repo.lock(false);
  try {
    const target = repo.resolveMount(name);
    if (repo.readOnlyFeatures !== null) {
      return { ...target, lease: null, warning: `${repo.root} is read-only for this cfs (features it does not know): no lease written, a gc by another tool may remove this image while it is mounted` };
    }
    try {
      return { ...target, lease: writeLease(repo, target.record, mountpoint) };
    } catch (err) {
      const code = (err as { errno?: string }).errno;
      if (code !== 'EACCES' && code !== 'EROFS' && code !== 'EPERM') throw err;
      return { ...target, lease: null, warning: `${(err as Error).message}: a gc of ${repo.root} may remove this image while it is mounted` };
    }
  } finally {
    lock.release();
  }
}
