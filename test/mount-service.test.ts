/**
 * The mount service as users meet it (issue 20): `cfs serve` started as root
 * in the background on a socket of the test's own, clients run as nobody and
 * as a uid made for the test (61000, with and without its supplementary
 * group 61001) through setpriv, each a small Node script that opens its
 * descriptors and calls the service with callVarlink. The real kernel
 * mounts; nothing is left mounted, and the service exits 0 on SIGTERM,
 * removing its socket.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { isRoot, repoRoot } from './helpers/paths.js';
import { DEFAULT_MOUNT_SOCKET, MountError } from '../src/service/mount-interface.js';
import { fsverityDigest } from '../src/fsverity/index.js';
import { digestToObjectPath } from '../src/store/layout.js';
import { cleanupDir, makeImage, scratch, standardFiles, type Fixture } from './mount-fixtures.js';
import { mountIdOf } from '../src/sys/mountid.js';
import { MNT_DETACH, MS_NODEV, MS_NOSUID, O_PATH, closeQuiet, mount, umount2 } from '../src/sys/mount.js';

const hasSetpriv = spawnSync('sh', ['-c', 'command -v setpriv'], { stdio: 'ignore' }).status === 0;
const SKIP = !isRoot ? 'the service runs as root' : !hasSetpriv ? 'no setpriv' : false;
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CFS = join(ROOT, 'bin', 'cfs.js');
const VARLINK = join(ROOT, 'dist', 'src', 'service', 'varlink.js');
const MOUNTID = join(ROOT, 'dist', 'src', 'sys', 'mountid.js');
const NOBODY = 65534;
const USER = 61000;
const GROUP = 61001;

const asNobody = ['--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all'];
const asUser = (groups: boolean) => [`--reuid=${USER}`, `--regid=${USER}`, ...(groups ? [`--groups=${GROUP}`] : ['--clear-groups']), '--inh-caps=-all'];

/** The client: opens what it is told (image, basedirs, mountpoint; O_PATH where the protocol wants it), calls, prints the answer as JSON. */
const CLIENT = `
import { openSync, fstatSync, closeSync, constants as c } from 'node:fs';
const { callVarlink } = await import(process.env.VARLINK_MODULE);
const { mountIdOf } = await import(process.env.MOUNTID_MODULE);
const [socket, method, json] = process.argv.slice(2);
const spec = JSON.parse(json);
const O_PATH = 0o10000000;
const fds = (spec.open ?? []).map(([path, how]) => openSync(path, how === 'read' ? c.O_RDONLY : how === 'dir' ? O_PATH | c.O_DIRECTORY : O_PATH | c.O_NOFOLLOW));
try {
  const r = await callVarlink(socket, method, spec.parameters ?? {}, fds);
  const replyFds = r.fds.map((fd) => ({ ino: fstatSync(fd).ino, mountId: Number(mountIdOf(fd).mountId) }));
  r.fds.forEach((fd) => closeSync(fd));
  console.log(JSON.stringify({ ok: true, parameters: r.parameters, replyFds }));
} catch (err) {
  console.log(JSON.stringify({ ok: false, error: err.error ?? null, parameters: err.parameters ?? null, message: err.message }));
}
`;

interface Answer {
  ok: boolean;
  parameters: Record<string, unknown> | null;
  error?: string | null;
  message?: string;
  replyFds?: Array<{ ino: number; mountId: number }>;
}

interface Service {
  socket: string;
  log: string[];
  child: ChildProcess;
  /** SIGTERM (or `signal`), then its exit: code 0, socket gone. */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/** Start `cfs serve` on a socket in `dir` (`wrap`: a command to start it through, e.g. setpriv); `listening on` waited for. */
async function startService(dir: string, extra: string[] = [], wrap: string[] = []): Promise<Service> {
  const socket = join(dir, 'run', 'mount.sock');
  const argv = [...wrap, process.execPath, CFS, 'serve', '--socket', socket, ...extra];
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  const log: string[] = [];
  let stdout = '';
  let partial = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    partial += d;
    const lines = partial.split('\n');
    partial = lines.pop()!;
    log.push(...lines);
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`cfs serve did not say it listens within 15 s: ${stdout} ${log.join('\n')}`)), 15_000);
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      if (stdout.includes('\n')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`cfs serve exited (${code}) before listening: ${log.join('\n')} ${partial}`));
    });
  });
  assert.equal(stdout, `listening on ${socket}\n`);
  assert.equal(statSync(socket).mode & 0o777, 0o666);
  assert.equal(statSync(dirname(socket)).mode & 0o777, 0o755);
  let stopped = false;
  return {
    socket,
    log,
    child,
    async stop(signal = 'SIGTERM') {
      if (stopped) return;
      stopped = true;
      child.kill(signal);
      let timer: NodeJS.Timeout | undefined;
      const code = await Promise.race([exited, new Promise<'hung'>((r) => (timer = setTimeout(() => r('hung'), 15_000)))]);
      clearTimeout(timer);
      if (code === 'hung') child.kill('SIGKILL');
      assert.equal(code, 0, `cfs serve exits 0 on SIGTERM (log: ${log.join(' | ')})`);
      assert.equal(existsSync(socket), false, 'the socket is removed');
    },
  };
}

/** The first line of the service's log matching `re`, waited for (stderr comes through a pipe), or undefined after 5 s. */
async function logLine(service: Service, re: RegExp): Promise<string | undefined> {
  for (let i = 0; i < 250; i++) {
    const found = service.log.find((l) => re.test(l));
    if (found !== undefined) return found;
    await new Promise((r) => setTimeout(r, 20));
  }
  return undefined;
}

type CallSpec = { open?: Array<[string, 'read' | 'dir' | 'path']>; parameters?: Record<string, unknown> };

function clientArgs(who: string[], service: Service, dir: string, method: string, spec: CallSpec): string[] {
  const script = join(dir, 'client.mjs');
  if (!existsSync(script)) writeFileSync(script, CLIENT, { mode: 0o644 });
  return [...who, process.execPath, script, service.socket, method, JSON.stringify(spec)];
}
const clientEnv = () => ({ ...process.env, VARLINK_MODULE: VARLINK, MOUNTID_MODULE: MOUNTID });

/** Run the client as `who` (setpriv options); its answer. */
function client(who: string[], service: Service, dir: string, method: string, spec: CallSpec): Answer {
  const r = spawnSync('setpriv', clientArgs(who, service, dir, method, spec), { encoding: 'utf8', timeout: 60_000, env: clientEnv() });
  assert.equal(r.status, 0, `client ran: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as Answer;
}

/** The same, without waiting: for clients that call at the same time. */
function clientAsync(who: string[], service: Service, dir: string, method: string, spec: CallSpec): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const child = spawn('setpriv', clientArgs(who, service, dir, method, spec), { env: clientEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      if (code !== 0) reject(new Error(`client exited ${code}: ${err}`));
      else resolve(JSON.parse(out.trim().split('\n').pop()!) as Answer);
    });
  });
}

const mountCall = (fx: Fixture, mnt: string, options: Record<string, unknown> = {}) => ({
  open: [
    [fx.image, 'read'],
    [fx.basedir, 'dir'],
    [mnt, 'path'],
  ] as Array<[string, 'read' | 'dir' | 'path']>,
  parameters: { image: 0, basedirs: [1], mountpoint: 2, options },
});
const unmountCall = (mnt: string) => ({ open: [[mnt, 'path']] as Array<[string, 'path']>, parameters: { mountpoint: 0 } });

function mountinfoLine(mnt: string): string | undefined {
  const unescape = (p: string) => p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .find((l) => unescape(l.split(' ')[4] ?? '') === mnt);
}

/** Mount lines beneath `dir` (what must be gone at the end). */
function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => (l.split(' ')[4] ?? '').startsWith(dir));
}

function mountIdAt(path: string): number {
  const fd = openSync(path, O_PATH);
  try {
    return Number(mountIdOf(fd).mountId);
  } finally {
    closeQuiet(fd);
  }
}

function unmountQuietly(mnt: string): void {
  try {
    umount2(mnt, MNT_DETACH);
  } catch {
    /* not mounted */
  }
}

/** A scratch directory others can reach, an image with objects in it, and a mountpoint owned by `owner`. */
function setUp(tag: string): { dir: string; fx: Fixture; mountpoint(name: string, owner: number): string } {
  const dir = scratch(tag);
  chmodSync(dir, 0o755);
  const fx = makeImage(dir, standardFiles());
  return {
    dir,
    fx,
    mountpoint(name, owner) {
      const p = join(dir, name);
      mkdirSync(p);
      chownSync(p, owner, owner);
      return p;
    },
  };
}

test('cfs serve: nobody mounts through the service (ro,nosuid,nodev, the reply names the mount and the image written), List shows it, its owner unmounts it; one log line per request', { skip: SKIP, timeout: 120_000 }, async () => {
  const { dir, fx, mountpoint } = setUp('svc-basic');
  const mnt = mountpoint('mnt-nobody', NOBODY);
  const before = mountsUnder(dir);
  const service = await startService(dir);
  try {
    const r = client(asNobody, service, dir, 'io.composefs.Mount.Mount', mountCall(fx, mnt));
    assert.equal(r.ok, true, JSON.stringify(r));
    try {
      const line = mountinfoLine(mnt);
      assert.ok(line, 'mounted on the mountpoint');
      const flags = line.split(' ')[5]!.split(',');
      for (const f of ['ro', 'nosuid', 'nodev']) assert.ok(flags.includes(f), `${f} in ${flags}`);
      assert.match(line.split(' - ')[1]!, /^overlay composefs ro,/);
      assert.deepEqual(readFileSync(join(mnt, 'big.bin')), fx.files['big.bin']);
      const p = r.parameters!;
      assert.equal(p.mountId, mountIdAt(mnt), 'mountId is the unique id statx reports for the mountpoint');
      assert.match(String(p.image), /^[0-9a-f]{64}$/);
      assert.ok(Array.isArray(p.explain) && p.explain.length > 0);
      assert.equal(p.mount, undefined, 'no descriptor unless detached');

      const list = client(asNobody, service, dir, 'io.composefs.Mount.List', {});
      assert.deepEqual(list.parameters, { mounts: [{ mountId: p.mountId, mountpoint: mnt, image: p.image, detached: false }], limit: 64 });

      const u = client(asNobody, service, dir, 'io.composefs.Mount.Unmount', unmountCall(mnt));
      assert.deepEqual(u, { ok: true, parameters: { mountId: p.mountId }, replyFds: [] });
      assert.equal(mountinfoLine(mnt), undefined, 'unmounted');
      const after = client(asNobody, service, dir, 'io.composefs.Mount.List', {});
      assert.deepEqual(after.parameters, { mounts: [], limit: 64 });

      assert.ok(await logLine(service, new RegExp(`^uid ${NOBODY} pid \\d+ Mount image sha256:${p.image} on ${mnt}: mounted \\(id ${p.mountId}\\) in \\d+ ms$`)), service.log.join('\n'));
      assert.ok(await logLine(service, new RegExp(`^uid ${NOBODY} pid \\d+ Unmount image sha256:${p.image} on ${mnt}: unmounted \\(id ${p.mountId}\\) in \\d+ ms$`)), service.log.join('\n'));
      assert.ok(await logLine(service, new RegExp(`^uid ${NOBODY} pid \\d+ List: 0 mounts in \\d+ ms$`)), service.log.join('\n'));
    } finally {
      unmountQuietly(mnt);
    }
  } finally {
    await service.stop();
    assert.deepEqual(mountsUnder(dir), before, 'nothing left mounted');
    cleanupDir(dir);
  }
});

test("cfs serve: the caller's groups come from the transport: an object only group 61001 may read is read through the mount of uid 61000 run with that group, not without it", { skip: SKIP, timeout: 120_000 }, async () => {
  const { dir, fx, mountpoint } = setUp('svc-groups');
  const object = join(fx.basedir, digestToObjectPath(fsverityDigest(fx.files['big.bin']!)));
  chownSync(object, 0, GROUP);
  chmodSync(object, 0o640);
  const mnt = mountpoint('mnt-user', USER);
  const before = mountsUnder(dir);
  const service = await startService(dir);
  try {
    for (const withGroup of [true, false]) {
      const r = client(asUser(withGroup), service, dir, 'io.composefs.Mount.Mount', mountCall(fx, mnt));
      assert.equal(r.ok, true, JSON.stringify(r));
      try {
        // Root reads through the mount, yet overlayfs opens the object with the creator's (the caller's) credentials.
        if (withGroup) assert.deepEqual(readFileSync(join(mnt, 'big.bin')), fx.files['big.bin']);
        else assert.throws(() => readFileSync(join(mnt, 'big.bin')), { code: 'EACCES' });
        assert.equal(readFileSync(join(mnt, 'small.txt'), 'utf8'), 'tiny 0\n');
      } finally {
        const u = client(asUser(withGroup), service, dir, 'io.composefs.Mount.Unmount', unmountCall(mnt));
        assert.equal(u.ok, true, JSON.stringify(u));
        unmountQuietly(mnt);
      }
    }
  } finally {
    await service.stop();
    assert.deepEqual(mountsUnder(dir), before, 'nothing left mounted');
    cleanupDir(dir);
  }
});

test('cfs serve: the per-uid limit counts live mounts and requests under way: 4 parallel requests with a limit of 2 mount 2, the others get LimitReached; a mount gone behind the service stops counting', { skip: SKIP, timeout: 120_000 }, async () => {
  const { dir, fx, mountpoint } = setUp('svc-limit');
  const mnts = [0, 1, 2, 3, 4].map((i) => mountpoint(`mnt-${i}`, NOBODY));
  const before = mountsUnder(dir);
  const service = await startService(dir, ['--max-mounts-per-user', '2']);
  try {
    const answers = await Promise.all(mnts.slice(0, 4).map((m) => clientAsync(asNobody, service, dir, 'io.composefs.Mount.Mount', mountCall(fx, m))));
    const mounted = mnts.slice(0, 4).filter((m, i) => answers[i]!.ok && mountinfoLine(m) !== undefined);
    assert.equal(answers.filter((a) => a.ok).length, 2, JSON.stringify(answers));
    assert.equal(mounted.length, 2, 'two mounted');
    for (const a of answers.filter((x) => !x.ok)) {
      assert.equal(a.error, MountError.LimitReached);
      assert.deepEqual(a.parameters, { limit: 2 });
    }
    for (const [i, a] of answers.entries()) if (!a.ok) assert.equal(mountinfoLine(mnts[i]!), undefined, 'nothing mounted on a refusal');
    const refusedLine = await logLine(service, /Mount on .*: refused: limit reached: uid 65534 holds 2 service mounts or requests \(limit 2\)/);
    assert.ok(refusedLine && !refusedLine.includes('\n'), service.log.join('\n'));
    // A caller may unmount a service mount itself (here root does, as fusermount3 -u would): it stops counting at once.
    umount2(mounted[0]!, MNT_DETACH);
    const again = client(asNobody, service, dir, 'io.composefs.Mount.Mount', mountCall(fx, mnts[4]!));
    assert.equal(again.ok, true, JSON.stringify(again));
    const list = client(asNobody, service, dir, 'io.composefs.Mount.List', {});
    const listed = (list.parameters!.mounts as Array<{ mountpoint: string }>).map((m) => m.mountpoint).sort();
    assert.deepEqual(listed, [mounted[1]!, mnts[4]!].sort());
    assert.equal(list.parameters!.limit, 2);
    for (const m of listed) assert.equal(client(asNobody, service, dir, 'io.composefs.Mount.Unmount', unmountCall(m)).ok, true);
    assert.deepEqual(mountsUnder(dir), before);
  } finally {
    for (const m of mnts) unmountQuietly(m);
    await service.stop('SIGINT');
    assert.deepEqual(mountsUnder(dir), before, 'nothing left mounted');
    cleanupDir(dir);
  }
});

test("cfs serve: Unmount by another uid is refused (NotOwner), List shows each uid only its own, a directory that is no service mount is NoSuchMount; a mountpoint the caller does not own is NotOwner, logged in one escaped line", { skip: SKIP, timeout: 120_000 }, async () => {
  const { dir, fx, mountpoint } = setUp('svc-owner');
  const mnt = mountpoint('mnt-\x1b[31mred', NOBODY);
  const rootOwned = mountpoint('mnt-root\x07', 0);
  const before = mountsUnder(dir);
  const service = await startService(dir);
  try {
    const r = client(asNobody, service, dir, 'io.composefs.Mount.Mount', mountCall(fx, mnt));
    assert.equal(r.ok, true, JSON.stringify(r));
    try {
      const other = client(asUser(true), service, dir, 'io.composefs.Mount.Unmount', unmountCall(mnt));
      assert.equal(other.error, MountError.NotOwner, JSON.stringify(other));
      assert.ok(mountinfoLine(mnt), 'still mounted');
      assert.deepEqual(client(asUser(true), service, dir, 'io.composefs.Mount.List', {}).parameters, { mounts: [], limit: 64 });
      assert.equal((client(asNobody, service, dir, 'io.composefs.Mount.List', {}).parameters!.mounts as unknown[]).length, 1);
      const notMount = client(asNobody, service, dir, 'io.composefs.Mount.Unmount', unmountCall(dir));
      assert.equal(notMount.error, MountError.NoSuchMount, JSON.stringify(notMount));
      const rootMount = client(asNobody, service, dir, 'io.composefs.Mount.Unmount', unmountCall('/'));
      assert.equal(rootMount.error, MountError.NoSuchMount, JSON.stringify(rootMount));
      assert.equal(client(asNobody, service, dir, 'io.composefs.Mount.Unmount', unmountCall(mnt)).ok, true);
    } finally {
      unmountQuietly(mnt);
    }
    const refused = client(asNobody, service, dir, 'io.composefs.Mount.Mount', mountCall(fx, rootOwned));
    assert.deepEqual(refused, { ok: false, error: MountError.NotOwner, parameters: { reason: 'mountpoint: not owned by uid 65534 (owner: uid 0)' }, message: `${MountError.NotOwner}: mountpoint: not owned by uid 65534 (owner: uid 0)` });
    assert.equal(mountinfoLine(rootOwned), undefined);
    const shownMnt = mnt.replace('\x1b', '\\x1b');
    assert.ok(await logLine(service, new RegExp(`^uid ${NOBODY} pid \\d+ Mount image sha256:[0-9a-f]{64} on ${shownMnt.replace(/[\\[\]]/g, '\\$&')}: mounted \\(id \\d+\\) in \\d+ ms$`)), service.log.join('\n'));
    const shownRoot = rootOwned.replace('\x07', '\\x07');
    assert.ok(await logLine(service, new RegExp(`^uid ${NOBODY} pid \\d+ Mount on ${shownRoot.replace(/\\/g, '\\\\')}: refused: mountpoint: not owned by uid 65534 \\(owner: uid 0\\) \\(\\d+ ms\\)$`)), service.log.join('\n'));
    assert.ok(await logLine(service, new RegExp(`^uid ${USER} pid \\d+ Unmount on .*: refused: mountpoint: mount \\d+ was made for another uid, not for uid ${USER} \\(\\d+ ms\\)$`)), service.log.join('\n'));
    for (const l of service.log) assert.doesNotMatch(l, /[\x00-\x1f\x7f]/, 'no control character reaches the log');
  } finally {
    await service.stop();
    assert.deepEqual(mountsUnder(dir), before, 'nothing left mounted');
    cleanupDir(dir);
  }
});

test('cfs serve: options: digest checked on the bytes received (ImageRefused on a mismatch), verity=require refused where the kernel cannot check objects (MountFailed), noexec and noatime, detached hands over the mount; 16 basedirs (18 descriptors in one message) mount, 17 are refused; bad descriptors are BadDescriptor', { skip: SKIP, timeout: 120_000 }, async () => {
  const { dir, fx, mountpoint } = setUp('svc-options');
  const mnt = mountpoint('mnt-options', NOBODY);
  const before = mountsUnder(dir);
  const service = await startService(dir);
  try {
    const digest = fsverityDigest(readFileSync(fx.image)).toString('hex');
    const serviceFds = () => readdirSync(`/proc/${service.child.pid}/fd`).length;
    // A first request loads what stays loaded (the watcher, the worker's module): count after it.
    client(asNobody, service, dir, 'io.composefs.Mount.List', {});
    const fdsBefore = serviceFds();
    const wrong = client(asNobody, service, dir, 'io.composefs.Mount.Mount', mountCall(fx, mnt, { digest: 'ab'.repeat(32) }));
    assert.equal(wrong.error, MountError.ImageRefused, JSON.stringify(wrong));
    assert.match(String(wrong.parameters!.reason), new RegExp(`^image: wrong fs-verity digest: expected ${'ab'.repeat(32)}, the image has ${digest}$`));
    const verity = client(asNobody, service, dir, 'io.composefs.Mount.Mount', mountCall(fx, mnt, { verity: 'require' }));
    assert.equal(verity.error, MountError.MountFailed, JSON.stringify(verity));
    assert.match(String(verity.parameters!.reason), /^verity: required, and the kernel cannot check the objects: /);
    assert.equal(mountinfoLine(mnt), undefined, 'nothing mounted on a refusal');

    const ok = client(asNobody, service, dir, 'io.composefs.Mount.Mount', mountCall(fx, mnt, { digest, verity: 'try', noexec: true, atime: 'noatime' }));
    assert.equal(ok.ok, true, JSON.stringify(ok));
    try {
      const flags = mountinfoLine(mnt)!.split(' ')[5]!.split(',');
      for (const f of ['ro', 'nosuid', 'nodev', 'noexec', 'noatime']) assert.ok(flags.includes(f), `${f} in ${flags}`);
      const explain = ok.parameters!.explain as string[];
      assert.ok(explain.some((l) => /digest: matches/.test(l)) && explain.some((l) => /verity: off, /.test(l)), explain.join('\n'));
    } finally {
      assert.equal(client(asNobody, service, dir, 'io.composefs.Mount.Unmount', unmountCall(mnt)).ok, true);
      unmountQuietly(mnt);
    }

    const detached = client(asNobody, service, dir, 'io.composefs.Mount.Mount', { open: [[fx.image, 'read'], [fx.basedir, 'dir']], parameters: { image: 0, basedirs: [1], options: { detached: true } } });
    assert.equal(detached.ok, true, JSON.stringify(detached));
    assert.equal(detached.parameters!.mount, 0);
    assert.equal(detached.replyFds!.length, 1);
    assert.equal(detached.replyFds![0]!.mountId, detached.parameters!.mountId, 'the descriptor is the mount named');
    // The client closed it unattached and exited: the mount is gone, and so is its record.
    assert.deepEqual(client(asNobody, service, dir, 'io.composefs.Mount.List', {}).parameters, { mounts: [], limit: 64 });

    const badIndex = client(asNobody, service, dir, 'io.composefs.Mount.Mount', { ...mountCall(fx, mnt), parameters: { image: 5, basedirs: [1], mountpoint: 2 } });
    assert.equal(badIndex.error, MountError.BadDescriptor);
    assert.equal(badIndex.parameters!.parameter, 'image');
    const dirAsImage = client(asNobody, service, dir, 'io.composefs.Mount.Mount', { open: [[fx.basedir, 'read'], [fx.basedir, 'dir'], [mnt, 'path']], parameters: { image: 0, basedirs: [1], mountpoint: 2 } });
    assert.deepEqual([dirAsImage.error, dirAsImage.parameters], [MountError.BadDescriptor, { parameter: 'image', reason: 'image: not a regular file' }]);
    const noBasedir = client(asNobody, service, dir, 'io.composefs.Mount.Mount', { ...mountCall(fx, mnt), parameters: { image: 0, basedirs: [], mountpoint: 2 } });
    assert.deepEqual([noBasedir.error, noBasedir.parameters], ['org.varlink.service.InvalidParameter', { parameter: 'basedirs' }]);
    // The most basedirs the interface takes (16), with the image and the mountpoint: 18 descriptors in one message.
    // The objects are in the last basedir only: a file read through the mount proves every layer was taken.
    const empties = Array.from({ length: 15 }, (_, i) => {
      const d = join(dir, `empty-basedir-${i}`);
      mkdirSync(d, { recursive: true });
      return d;
    });
    const sixteen = {
      open: [[fx.image, 'read'], ...[...empties, fx.basedir].map((d) => [d, 'dir']), [mnt, 'path']] as Array<[string, 'read' | 'dir' | 'path']>,
      parameters: { image: 0, basedirs: Array.from({ length: 16 }, (_, i) => i + 1), mountpoint: 17 },
    };
    const many = client(asNobody, service, dir, 'io.composefs.Mount.Mount', sixteen);
    assert.equal(many.ok, true, JSON.stringify(many));
    try {
      assert.deepEqual(readFileSync(join(mnt, 'big.bin')), fx.files['big.bin']);
    } finally {
      assert.equal(client(asNobody, service, dir, 'io.composefs.Mount.Unmount', unmountCall(mnt)).ok, true);
      unmountQuietly(mnt);
    }
    // More than 16 is refused by the parameter's bound, before any descriptor is looked at.
    const seventeen = client(asNobody, service, dir, 'io.composefs.Mount.Mount', { ...mountCall(fx, mnt), parameters: { image: 0, basedirs: Array(17).fill(1), mountpoint: 2 } });
    assert.deepEqual([seventeen.error, seventeen.parameters], ['org.varlink.service.InvalidParameter', { parameter: 'basedirs' }]);
    const unknownOption = client(asNobody, service, dir, 'io.composefs.Mount.Mount', mountCall(fx, mnt, { upperdir: 1 }));
    assert.deepEqual([unknownOption.error, unknownOption.parameters], ['org.varlink.service.InvalidParameter', { parameter: 'options.upperdir' }]);
    assert.equal(mountinfoLine(mnt), undefined);
    for (let i = 0; i < 100 && serviceFds() !== fdsBefore; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(serviceFds(), fdsBefore, 'every descriptor the service took or opened is closed again');
  } finally {
    unmountQuietly(mnt);
    await service.stop();
    assert.deepEqual(mountsUnder(dir), before, 'nothing left mounted');
    cleanupDir(dir);
  }
});

test('cfs install-helper --service writes the socket and service units (systemd-analyze verify accepts them), reinstalls its own, refuses a foreign file, uninstalls; the service runs with only the capabilities its unit keeps', { skip: SKIP, timeout: 120_000 }, async () => {
  const { dir, fx, mountpoint } = setUp('svc-units');
  const units = join(dir, 'units');
  mkdirSync(units);
  const cli = (args: string[]) => spawnSync(process.execPath, [CFS, 'install-helper', ...args], { encoding: 'utf8', timeout: 30_000 });
  const r = cli(['--service', `--dir=${units}`]);
  assert.equal(r.status, 0, r.stderr);
  const socketUnit = readFileSync(join(units, 'composefs-mount.socket'), 'utf8');
  const serviceUnit = readFileSync(join(units, 'composefs-mount.service'), 'utf8');
  assert.match(socketUnit, /^ListenStream=\/run\/composefs\/mount\.sock$/m);
  assert.match(socketUnit, /^SocketMode=0666$/m);
  assert.match(socketUnit, /^WantedBy=sockets\.target$/m);
  assert.ok(serviceUnit.split('\n').includes(`ExecStart="${process.execPath}" "${CFS}" serve`), serviceUnit);
  // What is installed is what the repository ships in service/systemd/, but for the marker and the ExecStart= line.
  const shipped = (name: string) => readFileSync(join(repoRoot, 'service', 'systemd', name), 'utf8');
  const unmarked = (text: string) => text.split('\n').filter((l) => !l.startsWith('# installed by') && !l.startsWith('ExecStart=')).join('\n');
  assert.equal(unmarked(socketUnit), unmarked(shipped('composefs-mount.socket')));
  assert.equal(unmarked(serviceUnit), unmarked(shipped('composefs-mount.service')));
  assert.match(shipped('composefs-mount.service'), /^ExecStart=cfs serve$/m);
  assert.match(shipped('composefs-mount.socket'), new RegExp(`^ListenStream=${DEFAULT_MOUNT_SOCKET}$`, 'm'));
  for (const isolating of ['PrivateMounts', 'PrivateTmp', 'ProtectSystem', 'ProtectHome', 'MemoryDenyWriteExecute']) assert.doesNotMatch(serviceUnit, new RegExp(`^${isolating}=`, 'm'));
  if (spawnSync('sh', ['-c', 'command -v systemd-analyze'], { stdio: 'ignore' }).status === 0) {
    const verify = spawnSync('systemd-analyze', ['verify', join(units, 'composefs-mount.socket'), join(units, 'composefs-mount.service')], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(verify.status, 0, verify.stderr);
    assert.equal(verify.stderr.trim(), '', 'no warning (an unknown key is only a warning)');
  } else {
    console.log('# systemd-analyze not found: unit verification skipped');
  }
  assert.equal(cli(['--service', `--dir=${units}`]).status, 0, 'reinstall over its own');
  writeFileSync(join(units, 'composefs-mount.service'), '[Service]\nExecStart=/bin/true\n');
  const refuse = cli(['--service', `--dir=${units}`]);
  assert.equal(refuse.status, 1);
  assert.match(refuse.stderr, /composefs-mount\.service: exists and was not installed by cfs install-helper --service \(--force replaces it\)\n$/);
  assert.equal(cli(['--service', `--dir=${units}`, '--force']).status, 0);
  assert.equal(cli(['--service', `--dir=${units}`, '--uninstall']).status, 0);
  assert.deepEqual([existsSync(join(units, 'composefs-mount.socket')), existsSync(join(units, 'composefs-mount.service'))], [false, false]);

  // The capability bounding set and no_new_privs of the unit, as setpriv gives them: mounting, listing, unmounting work.
  const caps = /^CapabilityBoundingSet=(.*)$/m.exec(serviceUnit)![1]!.split(' ').map((c) => `+${c.replace(/^CAP_/, '').toLowerCase()}`);
  const mnt = mountpoint('mnt-caps', NOBODY);
  const before = mountsUnder(dir);
  const service = await startService(dir, [], ['setpriv', `--bounding-set=-all,${caps.join(',')}`, '--no-new-privs', '--inh-caps=-all']);
  try {
    const status = readFileSync(`/proc/${service.child.pid}/status`, 'utf8');
    assert.match(status, /^NoNewPrivs:\s+1$/m);
    assert.notEqual(/^CapBnd:\s+(\w+)$/m.exec(status)![1], /^CapBnd:\s+(\w+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))![1], 'a smaller bounding set');
    const m = client(asNobody, service, dir, 'io.composefs.Mount.Mount', mountCall(fx, mnt));
    assert.equal(m.ok, true, JSON.stringify(m));
    try {
      assert.deepEqual(readFileSync(join(mnt, 'big.bin')), fx.files['big.bin']);
      assert.equal((client(asNobody, service, dir, 'io.composefs.Mount.List', {}).parameters!.mounts as unknown[]).length, 1);
      assert.equal(client(asNobody, service, dir, 'io.composefs.Mount.Unmount', unmountCall(mnt)).ok, true);
    } finally {
      unmountQuietly(mnt);
    }
  } finally {
    await service.stop();
    assert.deepEqual(mountsUnder(dir), before, 'nothing left mounted');
    cleanupDir(dir);
  }
});

test('cfs serve under socket activation (systemd-socket-activate: LISTEN_FDS) serves the socket systemd passed, and exits 0 on SIGTERM', { skip: SKIP || (spawnSync('sh', ['-c', 'command -v systemd-socket-activate'], { stdio: 'ignore' }).status !== 0 && 'no systemd-socket-activate'), timeout: 120_000 }, async () => {
  const { dir, fx, mountpoint } = setUp('svc-activate');
  const mnt = mountpoint('mnt-activated', NOBODY);
  const socket = join(dir, 'activated.sock');
  const before = mountsUnder(dir);
  // systemd-socket-activate listens, and execs the service (same pid) on the first connection.
  const child = spawn('systemd-socket-activate', ['-l', socket, process.execPath, CFS, 'serve', '--socket', join(dir, 'not-this.sock'), '--state', join(dir, 'state.json')], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  const log: string[] = [];
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => log.push(...d.split('\n').filter(Boolean)));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const service: Service = { socket, log, child, stop: async () => {} };
  try {
    for (let i = 0; i < 250 && !existsSync(socket); i++) await new Promise((r) => setTimeout(r, 20));
    chmodSync(socket, 0o666); // as SocketMode=0666 of the unit
    const m = client(asNobody, service, dir, 'io.composefs.Mount.Mount', mountCall(fx, mnt));
    assert.equal(m.ok, true, JSON.stringify(m) + log.join('\n'));
    try {
      for (let i = 0; i < 250 && !stdout.includes('\n'); i++) await new Promise((r) => setTimeout(r, 20));
      assert.equal(stdout, 'listening on fd 3 (from systemd)\n');
      assert.equal(existsSync(join(dir, 'not-this.sock')), false, '--socket is not used when systemd passes one');
      assert.equal(client(asNobody, service, dir, 'io.composefs.Mount.Unmount', unmountCall(mnt)).ok, true);
    } finally {
      unmountQuietly(mnt);
    }
    child.kill('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    const code = await Promise.race([exited, new Promise<'hung'>((r) => (timer = setTimeout(() => r('hung'), 15_000)))]);
    clearTimeout(timer);
    assert.equal(code, 0, log.join('\n'));
  } finally {
    child.kill('SIGKILL');
    assert.deepEqual(mountsUnder(dir), before, 'nothing left mounted');
    cleanupDir(dir);
  }
});

test('cfs serve: not as root, a bad option, a socket it cannot make: one line, non-zero exit', { skip: SKIP, timeout: 60_000 }, () => {
  const dir = scratch('svc-cli');
  try {
    const asUserRun = spawnSync('setpriv', [...asNobody, process.execPath, CFS, 'serve', '--socket', join(dir, 's.sock')], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(asUserRun.status, 1);
    assert.equal(asUserRun.stdout, '');
    assert.match(asUserRun.stderr, /^cfs serve: must run as root: [^\n]*\n$/);
    const bad = spawnSync(process.execPath, [CFS, 'serve', '--max-mounts-per-user', 'many'], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(bad.status, 2);
    assert.equal(bad.stderr, "cfs serve: invalid value for --max-mounts-per-user: 'many' is not a number\n");
    writeFileSync(join(dir, 'file'), '');
    const noDir = spawnSync(process.execPath, [CFS, 'serve', '--socket', join(dir, 'file', 's.sock')], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(noDir.status, 1);
    assert.match(noDir.stderr, /^cfs serve: [^\n]*file: [^\n]*\n$/);
    assert.equal(noDir.stdout, '');
    const help = spawnSync(process.execPath, [CFS, 'serve', '--help'], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(help.status, 0);
    assert.match(help.stdout, /--max-mounts-per-user=N/);
  } finally {
    cleanupDir(dir);
  }
});

test('cfs serve: a basedir or mountpoint on a FUSE file system whose daemon never answers is refused at once, and the service goes on serving', { skip: SKIP || (!existsSync('/dev/fuse') && 'no /dev/fuse'), timeout: 120_000 }, async () => {
  const { dir, fx, mountpoint } = setUp('svc-fuse');
  const mnt = mountpoint('mnt-nobody', NOBODY);
  const stalled = mountpoint('fuse', NOBODY);
  // A FUSE mount whose daemon (this test) never reads its requests: each one waits until /dev/fuse is closed.
  const devFuse = openSync('/dev/fuse', 'r+');
  let mounted = false;
  const service = await startService(dir);
  try {
    mount('cfs-test-stall', stalled, 'fuse', MS_NOSUID | MS_NODEV, `fd=${devFuse},rootmode=40755,user_id=${NOBODY},group_id=${NOBODY},allow_other`);
    mounted = true;
    const timed = (p: Promise<Answer>) => Promise.race([p, new Promise<'stalled'>((r) => setTimeout(() => r('stalled'), 10_000).unref())]);
    const basedir = await timed(clientAsync(asNobody, service, dir, 'io.composefs.Mount.Mount', { open: [[fx.image, 'read'], [stalled, 'dir'], [mnt, 'path']], parameters: { image: 0, basedirs: [1], mountpoint: 2 } }));
    assert.notEqual(basedir, 'stalled', 'the service answers');
    assert.deepEqual(basedir !== 'stalled' && [basedir.error, basedir.parameters], [MountError.BadDescriptor, { parameter: 'basedirs', reason: 'basedir 1: on a FUSE file system (its answers could stall the service)' }]);
    const onFuse = await timed(clientAsync(asNobody, service, dir, 'io.composefs.Mount.Mount', mountCall(fx, stalled)));
    assert.notEqual(onFuse, 'stalled', 'the service answers');
    assert.deepEqual(onFuse !== 'stalled' && [onFuse.error, onFuse.parameters], [MountError.NotOwner, { reason: 'mountpoint: on a FUSE file system (its answers could stall the service)' }]);
    const ok = client(asNobody, service, dir, 'io.composefs.Mount.Mount', mountCall(fx, mnt));
    assert.equal(ok.ok, true, JSON.stringify(ok));
    assert.equal(client(asNobody, service, dir, 'io.composefs.Mount.Unmount', unmountCall(mnt)).ok, true);
  } finally {
    closeQuiet(devFuse); // aborts the connection: whatever waits on it fails now
    if (mounted) unmountQuietly(stalled);
    unmountQuietly(mnt);
    await service.stop();
    cleanupDir(dir);
  }
});

test('cfs serve keeps its records across a restart (root-only state file): the restarted service lists and unmounts the mount; a state file another user could have written is ignored', { skip: SKIP, timeout: 120_000 }, async () => {
  const { dir, fx, mountpoint } = setUp('svc-restart');
  const mnt = mountpoint('mnt-nobody', NOBODY);
  const state = join(dir, 'run', 'mounts.json');
  const before = mountsUnder(dir);
  let service = await startService(dir);
  try {
    const m = client(asNobody, service, dir, 'io.composefs.Mount.Mount', mountCall(fx, mnt));
    assert.equal(m.ok, true, JSON.stringify(m));
    await service.stop();
    assert.equal(statSync(state).mode & 0o777, 0o600);
    assert.equal(statSync(state).uid, 0);

    // The next service finds the record: it lists the mount and unmounts it for its owner.
    service = await startService(dir);
    const list = client(asNobody, service, dir, 'io.composefs.Mount.List', {});
    assert.deepEqual(list.parameters, { mounts: [{ mountId: m.parameters!.mountId, mountpoint: mnt, image: m.parameters!.image, detached: false }], limit: 64 });
    assert.equal(client(asNobody, service, dir, 'io.composefs.Mount.Unmount', unmountCall(mnt)).ok, true);
    assert.equal(mountinfoLine(mnt), undefined);
    assert.equal(client(asNobody, service, dir, 'io.composefs.Mount.Mount', mountCall(fx, mnt)).ok, true);
    await service.stop();

    // Handed to nobody, the file could be anyone's words: ignored, and rewritten from what the service knows.
    chownSync(state, NOBODY, NOBODY);
    service = await startService(dir);
    assert.deepEqual(client(asNobody, service, dir, 'io.composefs.Mount.List', {}).parameters, { mounts: [], limit: 64 });
    assert.ok(await logLine(service, /^state .*mounts\.json: ignored: not a regular file of root's that only root may write$/), service.log.join('\n'));
    assert.equal(client(asNobody, service, dir, 'io.composefs.Mount.Unmount', unmountCall(mnt)).error, MountError.NoSuchMount);
    await service.stop();
    assert.equal(statSync(state).uid, 0, 'rewritten by the service');
  } finally {
    unmountQuietly(mnt);
    await service.stop();
    assert.deepEqual(mountsUnder(dir), before, 'nothing left mounted');
    cleanupDir(dir);
  }
});
