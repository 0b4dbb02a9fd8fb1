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
import { chmodSync, chownSync, existsSync, mkdirSync, openSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { isRoot } from './helpers/paths.js';
import { fsverityDigest } from '../src/fsverity/index.js';
import { digestToObjectPath } from '../src/store/layout.js';
import { cleanupDir, makeImage, scratch, standardFiles, type Fixture } from './mount-fixtures.js';
import { mountIdOf } from '../src/sys/mountid.js';
import { MNT_DETACH, O_PATH, closeQuiet, umount2 } from '../src/sys/mount.js';

const hasSetpriv = spawnSync('sh', ['-c', 'command -v setpriv'], { stdio: 'ignore' }).status === 0;
const SKIP = !isRoot ? 'the service runs as root' : !hasSetpriv ? 'no setpriv' : false;
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CFS = join(ROOT, 'bin', 'cfs.js');
const VARLINK = join(ROOT, 'dist', 'src', 'service', 'varlink.js');
const NOBODY = 65534;
const USER = 61000;
const GROUP = 61001;

const asNobody = ['--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all'];
const asUser = (groups: boolean) => [`--reuid=${USER}`, `--regid=${USER}`, ...(groups ? [`--groups=${GROUP}`] : ['--clear-groups']), '--inh-caps=-all'];

/** The client: opens what it is told (image, basedirs, mountpoint; O_PATH where the protocol wants it), calls, prints the answer as JSON. */
const CLIENT = `
import { openSync, fstatSync, closeSync, constants as c } from 'node:fs';
const { callVarlink } = await import(process.env.VARLINK_MODULE);
const [socket, method, json] = process.argv.slice(2);
const spec = JSON.parse(json);
const O_PATH = 0o10000000;
const fds = (spec.open ?? []).map(([path, how]) => openSync(path, how === 'read' ? c.O_RDONLY : how === 'dir' ? O_PATH | c.O_DIRECTORY : O_PATH | c.O_NOFOLLOW));
try {
  const r = await callVarlink(socket, method, spec.parameters ?? {}, fds);
  const replyFds = r.fds.map((fd) => ({ ino: fstatSync(fd).ino }));
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
  replyFds?: Array<{ ino: number }>;
}

interface Service {
  socket: string;
  log: string[];
  child: ChildProcess;
  /** SIGTERM, then its exit: code 0, socket gone. */
  stop(): Promise<void>;
}

async function startService(dir: string, extra: string[] = []): Promise<Service> {
  const socket = join(dir, 'run', 'mount.sock');
  const child = spawn(process.execPath, [CFS, 'serve', '--socket', socket, ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
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
    async stop() {
      if (stopped) return;
      stopped = true;
      child.kill('SIGTERM');
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

/** Run the client as `who` (setpriv options); its answer. */
function client(who: string[], service: Service, dir: string, method: string, spec: { open?: Array<[string, 'read' | 'dir' | 'path']>; parameters?: Record<string, unknown> }): Answer {
  const script = join(dir, 'client.mjs');
  if (!existsSync(script)) writeFileSync(script, CLIENT, { mode: 0o644 });
  const r = spawnSync('setpriv', [...who, process.execPath, script, service.socket, method, JSON.stringify(spec)], {
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...process.env, VARLINK_MODULE: VARLINK },
  });
  assert.equal(r.status, 0, `client ran: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as Answer;
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
