/**
 * Shared by the mount tests: composefs images with an object store, system
 * snapshots (mountinfo, loop devices, /dev, temporary directories) to prove
 * nothing was left behind, and a kernel uevent listener.
 */
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeImage } from '../src/erofs/writer.js';
import { fsverityDigest } from '../src/fsverity/index.js';
import { digestToObjectPath } from '../src/store/layout.js';
import { newInode, S_IFDIR, S_IFLNK, S_IFREG, type Inode } from '../src/tree/model.js';
import { koffi, libc } from '../src/sys/libc.js';
import { listLoops } from '../src/sys/loop.js';
import { umount2, MNT_DETACH } from '../src/sys/mount.js';
import { TEMP_PREFIX } from '../src/mount/temp.js';
import { makeTemp, removeTemp } from './helpers/temp.js';

export interface Fixture {
  dir: string;
  image: string;
  basedir: string;
  mnt: string;
  /** What the mounted tree must show: path -> content. */
  files: Record<string, Buffer>;
}

/** A scratch directory on the root file system (ext4 here: file-backed EROFS works there). */
export function scratch(tag: string): string {
  const dir = makeTemp(tag);
  scopes.push(dir);
  return dir;
}

/**
 * Other work may mount and bind loop devices on this machine while the tests
 * run, so snapshots keep only what this test process can have made: mounts
 * under its scratch directories or on a temporary mount directory of this
 * process (or of a dead one: a killed child), loop devices backed by files in
 * its scratch directories or by anonymous files in /dev/shm.
 */
const scopes: string[] = [];
const under = (p: string) => scopes.some((s) => p === s || p.startsWith(`${s}/`));

/** Child processes this test process started (they mount too, and may be killed mid-mount). */
const children = new Set<number>();
export function adoptChild(pid: number | undefined): void {
  if (pid) children.add(pid);
}

function ourTempDir(p: string): boolean {
  const name = p.slice(p.lastIndexOf('/') + 1);
  if (!name.startsWith(TEMP_PREFIX)) return false;
  const pid = Number(name.slice(TEMP_PREFIX.length).split('-')[0]);
  return pid === process.pid || children.has(pid);
}

function relevantMountLine(line: string): boolean {
  const mp = line.split(' ')[4]?.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return !!mp && (under(mp) || ourTempDir(mp));
}

function relevantLoop(backing: string): boolean {
  return under(backing.replace(/ \(deleted\)$/, '')) || /^\/dev\/shm\/#\d+ \(deleted\)$/.test(backing) || scopes.some((s) => backing.startsWith(`${s}/#`));
}

/**
 * Build an image of `files` (path -> content; content over 64 bytes goes to
 * the object store, shorter is inlined) plus a symlink and a directory with
 * an xattr, in `dir`.
 */
export function makeImage(dir: string, files: Record<string, string | Buffer>, name = 'image.cfs'): Fixture {
  const basedir = join(dir, 'objects');
  mkdirSync(basedir, { recursive: true });
  const root = newInode(S_IFDIR | 0o755, { mtimeSec: 1700000000 });
  const byPath: Record<string, Buffer> = {};
  const dirOf = (path: string): Inode => {
    let cur = root;
    const parts = path.split('/').filter(Boolean);
    for (const part of parts.slice(0, -1)) {
      let d = cur.children!.find((c) => c.name.toString() === part);
      if (!d) {
        d = { name: Buffer.from(part), inode: newInode(S_IFDIR | 0o755, { mtimeSec: 1700000001 }), hardlink: false };
        cur.children!.push(d);
        cur.children!.sort((a, b) => Buffer.compare(a.name, b.name));
      }
      cur = d.inode;
    }
    return cur;
  };
  for (const [path, c] of Object.entries(files)) {
    const content = Buffer.isBuffer(c) ? c : Buffer.from(c);
    byPath[path] = content;
    const parent = dirOf(path);
    const leaf = path.split('/').filter(Boolean).pop()!;
    let inode: Inode;
    if (content.length <= 64) {
      inode = newInode(S_IFREG | 0o644, { size: content.length, content: content.length ? content : null, mtimeSec: 1700000002, mtimeNsec: 5 });
    } else {
      const digest = fsverityDigest(content);
      const rel = digestToObjectPath(digest);
      mkdirSync(join(basedir, rel.slice(0, 2)), { recursive: true });
      writeFileSync(join(basedir, rel), content);
      inode = newInode(S_IFREG | 0o644, { size: content.length, payload: Buffer.from(rel), digest, mtimeSec: 1700000003, mtimeNsec: 123456789 });
    }
    parent.children!.push({ name: Buffer.from(leaf), inode, hardlink: false });
    parent.children!.sort((a, b) => Buffer.compare(a.name, b.name));
  }
  const target = Buffer.from('small.txt');
  root.children!.push({ name: Buffer.from('link'), inode: newInode(S_IFLNK | 0o777, { size: target.length, payload: target }), hardlink: false });
  root.children!.sort((a, b) => Buffer.compare(a.name, b.name));
  root.xattrs.push({ key: Buffer.from('user.cfs-test'), value: Buffer.from('root-xattr') });
  const image = join(dir, name);
  writeFileSync(image, writeImage(root));
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt, { recursive: true });
  return { dir, image, basedir, mnt, files: byPath };
}

export function standardFiles(seed = 0): Record<string, string | Buffer> {
  const big = Buffer.alloc(20000 + seed, `object-store content ${seed}\n`);
  return { 'small.txt': `tiny ${seed}\n`, 'big.bin': big, 'sub/dir/nested.txt': Buffer.alloc(5000, `nested ${seed}`) };
}

// ---- what the system looks like --------------------------------------------------------

export interface Snapshot {
  mountinfo: string[];
  loops: string[];
  dev: string[];
  sysBlock: string[];
  tempDirs: string[];
}

function tempDirs(): string[] {
  const out: string[] = [];
  for (const base of new Set(['/run', tmpdir(), '/tmp'])) {
    if (!existsSync(base)) continue;
    for (const n of readdirSync(base)) if (n.startsWith(TEMP_PREFIX)) out.push(join(base, n));
  }
  return out;
}

/** What this test process may have left (see `relevantMountLine`); `dev` and `sysBlock` are system-wide. */
export function snapshot(): Snapshot {
  return {
    mountinfo: readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l && relevantMountLine(l)),
    loops: listLoops()
      .filter((l) => relevantLoop(l.backingFile))
      .map((l) => `${l.name} ${l.backingFile}`),
    dev: readdirSync('/dev'),
    sysBlock: readdirSync('/sys/block'),
    tempDirs: tempDirs().filter(ourTempDir),
  };
}

export function added(before: string[], after: string[]): string[] {
  const b = new Set(before);
  return after.filter((x) => !b.has(x));
}

/** What is in `now` and was not in `base`, per kind; empty when nothing was left behind. */
export function leftovers(base: Snapshot, now = snapshot()): string[] {
  const out: string[] = [];
  for (const l of added(base.mountinfo, now.mountinfo)) out.push(`mount: ${l}`);
  for (const l of added(base.loops, now.loops)) out.push(`loop: ${l}`);
  for (const l of added(base.tempDirs, now.tempDirs)) out.push(`temp dir: ${l}`);
  return out;
}

/** Poll until `cond` holds or `ms` passes (loop autoclear and lazy unmounts finish asynchronously). */
export async function eventually(cond: () => boolean, ms = 2000): Promise<boolean> {
  const end = Date.now() + ms;
  for (;;) {
    if (cond()) return true;
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Whether process `pid` still exists. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Undo whatever a failed test left: unmount new mounts under `dir`, remove temp dirs, remove `dir`. */
export function cleanupDir(dir: string): void {
  for (const t of tempDirs()) {
    // Only ours: this process's or its children's (a killed test child).
    if (!ourTempDir(t)) continue;
    try {
      umount2(t, MNT_DETACH);
    } catch {
      /* not mounted */
    }
    rmSync(t, { recursive: true, force: true });
  }
  removeTemp(dir);
}

// ---- kernel uevents --------------------------------------------------------------------

const AF_NETLINK = 16;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const NETLINK_KOBJECT_UEVENT = 15;

type SocketFn = (d: number, t: number, p: number) => number;
type BindFn = (fd: number, addr: Buffer, len: number) => number;
type RecvFn = (fd: number, buf: Buffer, len: number, flags: number) => number;
let sockFns: { socket: SocketFn; bind: BindFn; recv: RecvFn } | null = null;

/** Listen to kernel uevents (the multicast group udev listens to); `drain()` returns "ACTION@DEVPATH" lines. */
export function ueventListener(): { drain(): string[]; close(): void } {
  const lib = libc();
  sockFns ??= {
    socket: lib.func('int socket(int domain, int type, int protocol)') as SocketFn,
    bind: lib.func('int bind(int fd, void *addr, uint32_t len)') as BindFn,
    recv: lib.func('long recv(int fd, void *buf, size_t len, int flags)') as RecvFn,
  };
  const fd = sockFns.socket(AF_NETLINK, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_KOBJECT_UEVENT);
  if (fd < 0) throw new Error(`netlink socket: errno ${koffi.errno()}`);
  const addr = Buffer.alloc(12);
  addr.writeUInt16LE(AF_NETLINK, 0);
  addr.writeUInt32LE(0, 4); // nl_pid: let the kernel pick
  addr.writeUInt32LE(1, 8); // nl_groups: kernel uevents
  if (sockFns.bind(fd, addr, 12) < 0) throw new Error(`netlink bind: errno ${koffi.errno()}`);
  const buf = Buffer.alloc(16384);
  return {
    drain() {
      const out: string[] = [];
      for (;;) {
        const n = Number(sockFns!.recv(fd, buf, buf.length, 0));
        if (n <= 0) break;
        out.push(buf.toString('utf8', 0, n).split('\0')[0]);
      }
      return out;
    },
    close() {
      const close = lib.func('int close(int fd)') as (fd: number) => number;
      close(fd);
    },
  };
}
