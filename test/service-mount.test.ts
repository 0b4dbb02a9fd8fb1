/**
 * The mount service from the user's side (issue 20): `cfs serve` started
 * as root on a socket of the test's own, and `cfs mount`, `cfs umount`,
 * `cfs status` run as users who may not mount: nobody and uid 61000 (group
 * 61001) through setpriv, and nobody inside `unshare -Urm`, where the client
 * takes the mount detached and attaches it itself. A service mount is
 * compared with the root kernel mount of the same image entry by entry, and
 * the only differences are the ones the service takes out (setuid/setgid
 * bits, file capabilities); the FUSE mount the same user gets (fusermount3)
 * is compared too. The ladder's choices (service before FUSE, FUSE when the
 * service does not answer, `--service=no`) and every refusal are checked as
 * the commands print them. Nothing stays mounted, no server stays running.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, linkSync, mkdirSync, readFileSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cliPath, isRoot, repoRoot } from './helpers/paths.js';
import { listTree, type TreeListing } from './helpers/tree-listing.js';
import { makeTemp, removeTemp } from './helpers/temp.js';
import { oneLineError } from './helpers/cli.js';
import { climbRungs, planRungs, registeredMountRungs, type MountRung, type RungResult } from '../src/mount/ladder.js';
import { MountError } from '../src/mount/errors.js';
import { parseOptionString, type MountOptions } from '../src/mount/options.js';
import { mountComposefs, unmountComposefs } from '../src/mount/index.js';
import { fuseRung } from '../src/fuse/rung.js';
import { serviceRung } from '../src/service/rung.js';
import { DEFAULT_MOUNT_SOCKET } from '../src/service/mount-interface.js';
import { serviceSocketPath } from '../src/service/client.js';
import { writeImage } from '../src/erofs/writer.js';
import { parseDump } from '../src/dumpfile/index.js';

const CFS = cliPath('cfs');
const LISTER = join(repoRoot, 'dist', 'test', 'helpers', 'tree-listing.js');
const SETPRIV = '/usr/bin/setpriv';
const NOBODY = [SETPRIV, '--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all'];
const USER = [SETPRIV, '--reuid=61000', '--regid=61000', '--groups=61001', '--inh-caps=-all'];
const SKIP = !isRoot
  ? 'needs root (it starts the service, and mounts to compare with)'
  : !existsSync(SETPRIV)
    ? 'no setpriv'
    : !existsSync('/usr/bin/fusermount3') || !existsSync('/dev/fuse')
      ? 'no fusermount3 or /dev/fuse (the FUSE mount compared)'
      : false;

// ---- the ladder, without a service -------------------------------------------------------------

/** A FUSE rung that records its calls instead of mounting: the ladder's choice is what is tested here. */
function recordingFuse(calls: string[], reasons: string[]): MountRung {
  return {
    ...fuseRung,
    why: (reason, o) => {
      reasons.push(reason.asked ? 'asked' : reason.failure);
      return fuseRung.why!(reason, o);
    },
    mount: async (image, mountpoint) => {
      calls.push('fuse');
      const result: RungResult = { rung: 'fuse', image: String(image), mountpoint, readonly: true, verity: false, explain: [], ms: 0 };
      return { result };
    },
  };
}

test('ladder: the service rung stands before FUSE whichever was registered first; service=no and upperdir/idmap leave it out; asked, it is alone', () => {
  const base: MountOptions = { basedir: ['/objects'] };
  for (const rungs of [[fuseRung, serviceRung], [serviceRung, fuseRung]]) {
    assert.deepEqual(planRungs(base, rungs), ['kernel', 'service', 'fuse']);
    assert.deepEqual(planRungs({ ...base, service: false }, rungs), ['kernel', 'fuse']);
    assert.deepEqual(planRungs({ ...base, service: true }, rungs), ['service']);
    assert.deepEqual(planRungs({ ...base, fuse: true }, rungs), ['fuse']);
    assert.deepEqual(planRungs({ ...base, upperdir: '/u', workdir: '/w' }, rungs), ['kernel', 'fuse']);
    assert.deepEqual(planRungs({ ...base, idmap: '/proc/1/ns/user' }, rungs), ['kernel', 'fuse']);
  }
  const parsed = (s: string) => parseOptionString(s).options;
  assert.equal(parsed('service').service, true);
  assert.equal(parsed('service=yes').service, true);
  assert.equal(parsed('service=no').service, false);
  assert.equal(parsed('service=auto').service, undefined);
  assert.equal(parsed('service,service=auto').service, undefined, 'the later option wins');
  assert.equal(parsed('service_socket=/run/x\\,y.sock').serviceSocket, '/run/x,y.sock');
  assert.throws(() => parseOptionString('service=maybe'), /invalid value for option service: 'maybe' \(expected yes, auto, no\)/);
  assert.throws(() => parseOptionString('service_socket'), /no value given for option service_socket/);
  const saved = process.env.CFS_SERVICE_SOCKET;
  try {
    delete process.env.CFS_SERVICE_SOCKET;
    assert.equal(serviceSocketPath(), DEFAULT_MOUNT_SOCKET);
    assert.equal(DEFAULT_MOUNT_SOCKET, '/run/composefs/mount.sock');
    process.env.CFS_SERVICE_SOCKET = '/tmp/elsewhere.sock';
    assert.equal(serviceSocketPath(), '/tmp/elsewhere.sock');
    assert.equal(serviceSocketPath('/tmp/given.sock'), '/tmp/given.sock');
  } finally {
    if (saved === undefined) delete process.env.CFS_SERVICE_SOCKET;
    else process.env.CFS_SERVICE_SOCKET = saved;
  }
});

test('ladder: a service that does not answer hands over to FUSE, which still gives the kernel\'s failure as its reason; --explain has a line for the service', async () => {
  const dir = makeTemp('svc-ladder');
  try {
    const image = join(dir, 'image.cfs');
    writeFileSync(image, writeImage(parseDump(Buffer.from('/ 0 40755 2 0 0 0 0.0 - - -\n'))));
    mkdirSync(join(dir, 'objects'));
    mkdirSync(join(dir, 'mnt'));
    const socket = join(dir, 'no-service.sock');
    const calls: string[] = [];
    const reasons: string[] = [];
    const kernelRefusal = 'mounting image.cfs on mnt: fsopen erofs: Operation not permitted (mounting needs root: CAP_SYS_ADMIN)';
    const kernel = async (): Promise<never> => {
      calls.push('kernel');
      throw new MountError(kernelRefusal, { privilege: true });
    };
    const o: MountOptions = { basedir: [join(dir, 'objects')], serviceSocket: socket };
    const m = await climbRungs(image, join(dir, 'mnt'), o, [recordingFuse(calls, reasons), serviceRung], kernel);
    assert.deepEqual(calls, ['kernel', 'fuse']);
    assert.equal(m.result.rung, 'fuse');
    assert.deepEqual(reasons, [kernelRefusal], 'FUSE is tried for the kernel\'s lack of privilege, not the service\'s absence');
    assert.equal(m.result.explain[0], `service: no mount service at ${socket} (connect: No such file or directory)`);
    assert.match(m.result.explain[1], /^fuse: the kernel path lacks privilege \(mounting image\.cfs on mnt: fsopen erofs: Operation not permitted/);
    assert.deepEqual(
      m.record.map((a) => `${a.rung} ${a.outcome}`),
      ['kernel refused', 'service note', 'fuse used'],
    );
    // With no rung after it (fuse=no), the kernel's refusal is the answer: the absent service only explains why no one else mounted it.
    await assert.rejects(
      climbRungs(image, join(dir, 'mnt'), { ...o, fuse: false }, [recordingFuse(calls, reasons), serviceRung], kernel),
      (err: Error) => err.message === kernelRefusal,
    );
    // Asked for, the same absence is the answer, in one line.
    await assert.rejects(
      climbRungs(image, join(dir, 'mnt'), { ...o, service: true }, [recordingFuse(calls, reasons), serviceRung], kernel),
      (err: Error) => err.message === `mount service ${socket}: not running (connect: No such file or directory)`,
    );
  } finally {
    removeTemp(dir);
  }
});

const blockDevice = ['/dev/loop0', '/dev/loop1', '/dev/vda', '/dev/sda'].find((p) => existsSync(p) && statSync(p).isBlockDevice());
test('ladder: an image that is no file (a block device) is not the service\'s: unasked, FUSE is tried and --explain says why; asked, one line', { skip: !isRoot ? 'opens a block device' : !blockDevice && 'no block device' }, async () => {
  const dir = makeTemp('svc-block');
  try {
    mkdirSync(join(dir, 'objects'));
    mkdirSync(join(dir, 'mnt'));
    const calls: string[] = [];
    const reasons: string[] = [];
    const kernel = async (): Promise<never> => {
      throw new MountError('mounting: Operation not permitted', { privilege: true });
    };
    const o: MountOptions = { basedir: [join(dir, 'objects')], serviceSocket: join(dir, 'none.sock') };
    const m = await climbRungs(blockDevice!, join(dir, 'mnt'), o, [serviceRung, recordingFuse(calls, reasons)], kernel);
    assert.deepEqual(calls, ['fuse']);
    assert.equal(m.result.explain[0], `service: image ${blockDevice}: not a regular file (the mount service takes image files only)`);
    await assert.rejects(climbRungs(blockDevice!, join(dir, 'mnt'), { ...o, service: true }, [serviceRung], kernel), {
      message: `image ${blockDevice}: not a regular file (the mount service takes image files only)`,
    });
  } finally {
    removeTemp(dir);
  }
});

test('the package entry registers the service rung: mountImage with service: true asks it (a dry run opens what it would pass)', async () => {
  const before = registeredMountRungs().map((r) => r.name);
  const dir = makeTemp('svc-entry');
  try {
    const image = join(dir, 'image.cfs');
    writeFileSync(image, writeImage(parseDump(Buffer.from('/ 0 40755 2 0 0 0 0.0 - - -\n'))));
    mkdirSync(join(dir, 'objects'));
    mkdirSync(join(dir, 'mnt'));
    const entry = await import('../src/index.js');
    const m = await entry.mountImage(image, join(dir, 'mnt'), { basedir: [join(dir, 'objects')], service: true, dryRun: true, serviceSocket: join(dir, 'none.sock') });
    assert.equal(m.result.rung, 'service');
    assert.equal(m.result.dryRun, true);
    assert.match(m.result.explain.join('\n'), /service: asked for/);
    assert.ok(!before.includes('service'), `registered before: ${before.join(', ')}`);
    assert.deepEqual(registeredMountRungs().map((r) => r.name).sort(), ['fuse', 'service']);
    // A FIFO is refused before anything is sent: the client opens only regular image files.
    spawnSync('mkfifo', [join(dir, 'fifo')]);
    await assert.rejects(entry.mountImage(join(dir, 'fifo'), join(dir, 'mnt'), { basedir: [join(dir, 'objects')], service: true, serviceSocket: join(dir, 'none.sock') }), {
      message: `image ${join(dir, 'fifo')}: not a regular file (the mount service takes image files only)`,
    });
  } finally {
    removeTemp(dir);
  }
});

// ---- the real service -------------------------------------------------------------------------

/** What `cfs status --json` says of the mount service. */
type StatusJson = { service: { socket: string; running: boolean; limit: number; mounts: Array<{ mountId: number; here: string | null; detached: boolean }> } };

interface Service {
  socket: string;
  process: ChildProcess;
  stderr: () => string;
  stop(): Promise<void>;
}

/** `cfs serve --socket SOCKET` as root, once it says it listens. */
async function startService(socket: string, ...more: string[]): Promise<Service> {
  const child = spawn(process.execPath, [CFS, 'serve', '--socket', socket, ...more], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let deadline: NodeJS.Timeout | undefined;
  let poll: NodeJS.Timeout | undefined;
  const ready = await Promise.race([
    new Promise<boolean>((resolve) => {
      const check = () => (out.includes('listening on') ? resolve(true) : (poll = setTimeout(check, 20)));
      check();
    }),
    exited.then(() => false),
    new Promise<boolean>((resolve) => (deadline = setTimeout(() => resolve(false), 20_000))),
  ]);
  clearTimeout(deadline);
  clearTimeout(poll);
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    let late: NodeJS.Timeout | undefined;
    const code = await Promise.race([exited, new Promise<'late'>((resolve) => (late = setTimeout(() => resolve('late'), 15_000)))]);
    clearTimeout(late);
    if (code === 'late') {
      child.kill('SIGKILL');
      await exited;
      assert.fail(`cfs serve did not end within 15 s of SIGTERM; stderr: ${err}`);
    }
    assert.equal(code, 0, `cfs serve exit status; stderr: ${err}`);
  };
  if (!ready) {
    child.kill('SIGKILL');
    await exited;
    assert.fail(`cfs serve did not say it listens; stdout: ${out}; stderr: ${err}`);
  }
  return { socket, process: child, stderr: () => err, stop };
}

/** Run `node ARGS...` as `who` (setpriv and the rest of a command line), with a deadline. */
function runAs(who: string[], args: string[], timeout = 60_000) {
  const env = { ...process.env };
  delete env.CFS_SERVICE_SOCKET;
  delete env.NODE_TEST_CONTEXT;
  return spawnSync(who[0], [...who.slice(1), process.execPath, ...args], { encoding: 'utf8', timeout, killSignal: 'SIGKILL', maxBuffer: 64 << 20, env, cwd: '/' });
}

function listAs(who: string[], ...dirs: string[]): TreeListing[] {
  const r = runAs(who, [LISTER, ...dirs]);
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.trim().split('\n').map((l) => JSON.parse(l) as TreeListing);
}

function mountinfoAt(path: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l.split(' ')[4] === path);
}

/** A capability set as setcap writes it: VFS_CAP_REVISION_2, effective, CAP_NET_RAW permitted. */
const NET_RAW_CAPABILITY = Buffer.from('0100000200200000000000000000000000000000', 'hex');

interface Images {
  dir: string;
  image: string;
  /** An image with a character device. */
  deviceImage: string;
  /** An image whose one object only group 61001 may read. */
  groupImage: string;
  basedir: string;
  /** Entries of the tree that carry privilege: what the service must take out. */
  setId: string[];
  capability: string[];
}

/** The source tree, made as root with every kind of entry, and its images (mkcomposefs, the digest store). */
function buildImages(dir: string): Images {
  const src = join(dir, 'tree');
  const at = (p: string) => join(src, p);
  mkdirSync(at('sub/deeper'), { recursive: true });
  writeFileSync(at('plain.txt'), 'hello\n');
  writeFileSync(at('empty'), '');
  writeFileSync(at('big.bin'), Buffer.alloc(20000, 'object-store content\n'));
  writeFileSync(at('secret.bin'), Buffer.alloc(9000, 'only uid 1000\n'));
  chmodSync(at('secret.bin'), 0o600);
  chownSync(at('secret.bin'), 1000, 1000);
  writeFileSync(at('setuid-tool'), Buffer.alloc(3000, '#!setuid\n'));
  chmodSync(at('setuid-tool'), 0o4755);
  writeFileSync(at('setgid-tool'), 'setgid, inline\n');
  chownSync(at('setgid-tool'), 0, 61001);
  chmodSync(at('setgid-tool'), 0o2755);
  writeFileSync(at('cap-tool'), Buffer.alloc(2000, '#!cap\n'));
  chmodSync(at('cap-tool'), 0o755);
  assert.equal(spawnSync('setfattr', ['-n', 'security.capability', '-v', `0x${NET_RAW_CAPABILITY.toString('hex')}`, at('cap-tool')]).status, 0);
  writeFileSync(at('sub/deeper/nested.txt'), Buffer.alloc(5000, 'nested\n'));
  chownSync(at('sub'), 1000, 61001);
  chmodSync(at('sub'), 0o2775); // a setgid directory: kept, it grants nothing
  linkSync(at('big.bin'), at('sub/hard-link'));
  symlinkSync('../plain.txt', at('sub/link'));
  symlinkSync('/nowhere/at/all', at('dangling'));
  assert.equal(spawnSync('mkfifo', ['-m', '0640', at('fifo')]).status, 0);
  assert.equal(spawnSync('setfattr', ['-n', 'user.note', '-v', 'on a file', at('plain.txt')]).status, 0);
  assert.equal(spawnSync('setfattr', ['-n', 'user.dir', '-v', 'on a dir', at('sub')]).status, 0);
  assert.equal(spawnSync('setfattr', ['-n', 'trusted.root-only', '-v', 'root sees it', at('big.bin')]).status, 0);
  utimesSync(at('plain.txt'), 1_600_000_000, 1_600_000_000.25);
  utimesSync(at('sub/deeper'), 1_500_000_000, 1_500_000_000);
  const basedir = join(dir, 'objects');
  const mk = (source: string, image: string) => {
    const r = spawnSync(process.execPath, [CFS, 'mkcomposefs', '-q', `--digest-store=${basedir}`, source, image], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
  };
  const image = join(dir, 'image.cfs');
  mk(src, image);

  const devSrc = join(dir, 'devtree');
  mkdirSync(devSrc);
  writeFileSync(join(devSrc, 'ok.txt'), 'fine\n');
  assert.equal(spawnSync('mknod', [join(devSrc, 'null'), 'c', '1', '3']).status, 0);
  const deviceImage = join(dir, 'device.cfs');
  mk(devSrc, deviceImage);

  const groupSrc = join(dir, 'grouptree');
  mkdirSync(groupSrc);
  const groupContent = Buffer.alloc(7000, 'for group 61001\n');
  writeFileSync(join(groupSrc, 'group-only.bin'), groupContent);
  const groupImage = join(dir, 'group.cfs');
  spawnSync('chmod', ['-R', 'a+rX', basedir]);
  mk(groupSrc, groupImage);
  // Its object, once stored: root's, readable by group 61001 alone.
  const objects = spawnSync(process.execPath, [CFS, 'info', 'objects', groupImage], { encoding: 'utf8' }).stdout.trim().split('\n').filter(Boolean);
  assert.equal(objects.length, 1, 'the group image has one object');
  const groupObject = join(basedir, objects[0]);
  chownSync(groupObject, 0, 61001);
  chmodSync(groupObject, 0o640);
  for (const p of [dir, image, deviceImage, groupImage]) chmodSync(p, statSync(p).isDirectory() ? 0o755 : 0o644);
  return { dir, image, deviceImage, groupImage, basedir, setId: ['/setuid-tool', '/setgid-tool'], capability: ['/cap-tool'] };
}

/**
 * What the root kernel mount shows, with what the service takes out taken
 * out: the service mount must show exactly this. `keptFromCreator`: files
 * whose contents the mount's creator may not read by the image's own modes
 * (overlayfs checks the lower file with its creator's credentials), which
 * root reading through a user's mount is refused too.
 */
function withoutPrivilege(kernel: TreeListing, images: Images, keptFromCreator: string[] = []): TreeListing {
  const out: TreeListing = structuredClone(kernel);
  for (const path of keptFromCreator) {
    assert.notEqual(out[path].contents, 'EACCES', `${path} reads through the root mount`);
    out[path].contents = 'EACCES';
  }
  for (const e of Object.values(out)) {
    if (e.type !== 'dir') e.mode &= ~0o6000;
    delete e.xattrs['security.capability'];
  }
  // What was taken out was on the entries that carry it, and only there.
  for (const path of [...images.setId, ...images.capability]) assert.notDeepEqual(out[path], kernel[path], path);
  return out;
}

function mountDir(images: Images, name: string, uid: number): string {
  const mnt = join(images.dir, name);
  mkdirSync(mnt);
  chownSync(mnt, uid, uid);
  return mnt;
}

test('as nobody and as uid 61000, cfs mount goes through the mount service: entry by entry the root kernel mount less setuid/setgid bits and file capabilities; umount, status, refusals', { skip: SKIP, timeout: 300_000 }, async () => {
  const dir = makeTemp('svc-mount', 0o755);
  let service: Service | null = null;
  const fuseMode = statSync('/dev/fuse').mode & 0o7777;
  const mounted: string[] = [];
  try {
    const images = buildImages(dir);
    const socket = join(dir, 'mount.sock');
    service = await startService(socket);
    const sock = ['--service-socket', socket];
    const basedir = `basedir=${images.basedir}`;

    // The root kernel mount of the same image, to compare with.
    const rootMnt = mountDir(images, 'mnt-root', 0);
    await mountComposefs(images.image, rootMnt, { basedir: [images.basedir] });
    mounted.push(rootMnt);
    const kernelView = listTree(rootMnt);
    // The tree carries what the service must take out, and the root mount shows it: the comparison can fail.
    assert.equal(kernelView['/setuid-tool'].mode, 0o4755);
    assert.equal(kernelView['/setgid-tool'].mode, 0o2755);
    assert.equal(kernelView['/sub'].mode, 0o2775);
    assert.equal(kernelView['/cap-tool'].xattrs['security.capability'], NET_RAW_CAPABILITY.toString('hex'));
    assert.equal(kernelView['/big.bin'].xattrs['trusted.root-only'], Buffer.from('root sees it').toString('hex'));
    assert.equal(kernelView['/fifo'].type, 'fifo');
    assert.equal(kernelView['/dangling'].target, '/nowhere/at/all');

    // nobody: the service mounts the kernel's composefs mount, attached on its directory.
    const nobodyMnt = mountDir(images, 'mnt-nobody', 65534);
    const m = runAs(NOBODY, [CFS, 'mount', ...sock, '-o', basedir, images.image, nobodyMnt, '--explain']);
    assert.equal(m.status, 0, m.stderr);
    mounted.push(nobodyMnt);
    assert.match(m.stdout, new RegExp(`^mounted ${images.image} on ${nobodyMnt} \\(ro\\) through the mount service in `));
    assert.match(m.stdout, /\n {2}service: the kernel path lacks privilege \(.*Operation not permitted.*\); the mount service at .* mounts it for this user\n/);
    assert.match(m.stdout, new RegExp(`\\n {2}service: mounted by the mount service at ${socket}, mount id \\d+: the image read and written again by the service \\(fs-verity [0-9a-f]{64}\\), ro,nosuid,nodev\\n`));
    assert.match(m.stdout, /1 setuid\/setgid bits cleared|2 setuid\/setgid bits cleared/, 'the service\'s own explain lines come along');
    assert.doesNotMatch(m.stdout, /fuse:/);
    const line = mountinfoAt(nobodyMnt);
    assert.equal(line.length, 1, 'mounted in our (the initial) mount namespace');
    assert.match(line[0], / - overlay composefs ro,/);
    for (const flag of ['ro', 'nosuid', 'nodev']) assert.ok(line[0].split(' ')[5].split(',').includes(flag), line[0]);

    // Entry by entry, read by root: the root mount less what the service takes out, nothing else
    // (but secret.bin, uid 1000's and 0600, which overlayfs opens as nobody, the mount's creator).
    const serviceView = listTree(nobodyMnt);
    assert.deepEqual(serviceView, withoutPrivilege(kernelView, images, ['/secret.bin']));
    assert.notDeepEqual(serviceView, kernelView);

    // uid 61000 (group 61001): its own service mount, the same tree.
    const userMnt = mountDir(images, 'mnt-61000', 61000);
    const u = runAs(USER, [CFS, 'mount', ...sock, '-o', basedir, images.image, userMnt]);
    assert.equal(u.status, 0, u.stderr);
    mounted.push(userMnt);
    assert.deepEqual(listTree(userMnt), withoutPrivilege(kernelView, images, ['/secret.bin']));

    // Read as the users themselves, and beside the FUSE mount nobody gets (fusermount3): the three agree
    // but for what the service takes out (FUSE serves the tree as it is, nosuid).
    chmodSync('/dev/fuse', 0o666);
    const fuseMnt = mountDir(images, 'mnt-fuse', 65534);
    const f = runAs(NOBODY, [CFS, 'mount', ...sock, '--service=no', '-o', basedir, images.image, fuseMnt, '--explain']);
    assert.equal(f.status, 0, f.stderr);
    mounted.push(fuseMnt);
    assert.match(f.stdout, /through FUSE/);
    assert.doesNotMatch(f.stdout, /service:/, '--service=no: the service is not asked');
    const [kernelAsNobody, serviceAsNobody, fuseAsNobody] = listAs(NOBODY, rootMnt, nobodyMnt, fuseMnt);
    assert.deepEqual(serviceAsNobody, withoutPrivilege(kernelAsNobody, images));
    assert.equal(kernelAsNobody['/secret.bin'].contents, 'EACCES', 'a file nobody may not read is refused alike');
    assert.deepEqual(fuseAsNobody, kernelAsNobody);
    const [kernelAsUser, serviceAsUser] = listAs(USER, rootMnt, userMnt);
    assert.deepEqual(serviceAsUser, withoutPrivilege(kernelAsUser, images));

    // Objects are read with the caller's rights: group 61001's object reads through 61000's mount, not nobody's.
    const groupMntUser = mountDir(images, 'mnt-group-61000', 61000);
    const groupMntNobody = mountDir(images, 'mnt-group-nobody', 65534);
    for (const [who, mnt] of [[USER, groupMntUser], [NOBODY, groupMntNobody]] as const) {
      const g = runAs(who, [CFS, 'mount', '--service', ...sock, '-o', basedir, images.groupImage, mnt]);
      assert.equal(g.status, 0, g.stderr);
      mounted.push(mnt);
    }
    const groupContent = Buffer.alloc(7000, 'for group 61001\n');
    const readAs = (who: string[], path: string) => runAs(who, ['-e', `process.stdout.write(require('fs').readFileSync(${JSON.stringify(path)}, 'latin1'))`]);
    assert.equal(readAs(USER, join(groupMntUser, 'group-only.bin')).stdout, groupContent.toString('latin1'));
    assert.match(readAs(NOBODY, join(groupMntNobody, 'group-only.bin')).stderr, /EACCES/);

    // cfs status as nobody: its service mounts, matched to this namespace's mountinfo by unique mount id.
    const s = runAs(NOBODY, [CFS, 'status', ...sock]);
    assert.equal(s.status, 0, s.stderr);
    assert.match(s.stdout, new RegExp(`^mount service ${socket}: 2 mounts of uid 65534 \\(limit 64\\)$`, 'm'));
    assert.match(s.stdout, new RegExp(`^ {2}${nobodyMnt} \\(mount id \\d+, image [0-9a-f]{64}\\)$`, 'm'));
    assert.match(s.stdout, new RegExp(`^ {2}${groupMntNobody} \\(mount id \\d+, image [0-9a-f]{64}\\)$`, 'm'));
    const section = s.stdout.slice(s.stdout.indexOf('mount service ')).split('\n').filter((l) => l === '' || l.startsWith('mount service ') || l.startsWith('  '));
    assert.equal(section.filter((l) => l.startsWith('  ')).length, 2, section.join('\n'));
    assert.doesNotMatch(section.join('\n'), /mnt-61000/, "another user's mounts are not listed");
    const sj = runAs(NOBODY, [CFS, 'status', '--json', ...sock]);
    assert.equal(sj.status, 0, sj.stderr);
    const json = JSON.parse(sj.stdout) as StatusJson;
    assert.equal(json.service.running, true);
    assert.equal(json.service.socket, socket);
    assert.equal(json.service.limit, 64);
    assert.deepEqual(json.service.mounts.map((x) => x.here).sort(), [groupMntNobody, nobodyMnt].sort());
    const notRunning = runAs(NOBODY, [CFS, 'status', '--service-socket', join(dir, 'none.sock')]);
    assert.equal(notRunning.status, 0, notRunning.stderr);
    assert.match(notRunning.stdout, new RegExp(`^mount service ${join(dir, 'none.sock')}: not running \\(connect: No such file or directory\\)$`, 'm'));

    // umount: another user's service mount is refused in one line, the user's own goes.
    const other = runAs(USER, [CFS, 'umount', ...sock, nobodyMnt]);
    oneLineError(other, /^cfs umount: mount service: mountpoint: mount \d+ was made for another uid, not for uid 61000$/);
    assert.equal(mountinfoAt(nobodyMnt).length, 1, 'still mounted');
    const rootsOwn = runAs(NOBODY, [CFS, 'umount', ...sock, rootMnt]);
    oneLineError(rootsOwn, new RegExp(`^cfs umount: ${rootMnt}: umount ${rootMnt}: Operation not permitted \\(the mount service did not make it: mountpoint: mount \\d+ was not made by the service\\)$`));
    assert.equal(mountinfoAt(rootMnt).length, 1, 'still mounted');
    for (const [who, mnt] of [[NOBODY, nobodyMnt], [NOBODY, groupMntNobody], [USER, userMnt], [USER, groupMntUser], [NOBODY, fuseMnt]] as const) {
      const r = runAs(who, [CFS, 'umount', ...sock, mnt]);
      assert.equal(r.status, 0, `${mnt}: ${r.stderr}`);
      assert.equal(mountinfoAt(mnt).length, 0, `${mnt} unmounted`);
      mounted.splice(mounted.indexOf(mnt), 1);
    }
    const after = JSON.parse(runAs(NOBODY, [CFS, 'status', '--json', ...sock]).stdout) as typeof json;
    assert.deepEqual(after.service.mounts, [], 'the service holds nothing more for nobody');

    // Refusals, each one line: an image with a device node; a mountpoint the user does not own.
    const refusedMnt = mountDir(images, 'mnt-refused', 65534);
    const dev = runAs(NOBODY, [CFS, 'mount', '--service', ...sock, '-o', basedir, images.deviceImage, refusedMnt]);
    oneLineError(dev, /^cfs mount: mount service: image refused: .*\/null: a device node \(character 1:3\)$/);
    const notOwned = runAs(NOBODY, [CFS, 'mount', ...sock, '-o', basedir, images.image, rootMnt.replace('mnt-root', 'tree')]);
    oneLineError(notOwned, /^cfs mount: mount service: mountpoint: not owned by uid 65534 \(owner: uid 0\)$/);
    // Unasked, the device image goes to FUSE, and --explain says why.
    const devFuse = runAs(NOBODY, [CFS, 'mount', ...sock, '-o', basedir, images.deviceImage, refusedMnt, '--explain']);
    assert.equal(devFuse.status, 0, devFuse.stderr);
    mounted.push(refusedMnt);
    assert.match(devFuse.stdout, /through FUSE/);
    assert.match(devFuse.stdout, new RegExp(`\\n {2}service: the mount service at ${socket} refused \\(image refused: .*a device node .*\\)\\n {2}fuse: the kernel path lacks privilege`));
    assert.equal(runAs(NOBODY, [CFS, 'umount', refusedMnt]).status, 0);
    mounted.splice(mounted.indexOf(refusedMnt), 1);

    // No service at the socket: unasked, FUSE with the reason; asked, one line and a non-zero exit.
    const absent = join(dir, 'absent.sock');
    const noService = runAs(NOBODY, [CFS, 'mount', '--service-socket', absent, '-o', basedir, images.image, fuseMnt, '--explain']);
    assert.equal(noService.status, 0, noService.stderr);
    mounted.push(fuseMnt);
    assert.match(noService.stdout, /through FUSE/);
    assert.match(noService.stdout, new RegExp(`\\n {2}service: no mount service at ${absent} \\(connect: No such file or directory\\)\\n {2}fuse: the kernel path lacks privilege \\(`));
    assert.equal(runAs(NOBODY, [CFS, 'umount', fuseMnt]).status, 0);
    mounted.splice(mounted.indexOf(fuseMnt), 1);
    const asked = runAs(NOBODY, [CFS, 'mount', '--service', '--service-socket', absent, '-o', basedir, images.image, fuseMnt]);
    oneLineError(asked, new RegExp(`^cfs mount: mount service ${absent}: not running \\(connect: No such file or directory\\)$`));
    assert.equal(mountinfoAt(fuseMnt).length, 0);

    // nobody inside `unshare -Ur` (the initial mount namespace, not its own): the service attaches as for nobody outside.
    const usernsMnt = mountDir(images, 'mnt-userns-attached', 65534);
    const attached = spawnSync(NOBODY[0], [...NOBODY.slice(1), 'unshare', '-Ur', process.execPath, CFS, 'mount', ...sock, '-o', basedir, images.image, usernsMnt, '--explain'], {
      encoding: 'utf8',
      timeout: 60_000,
      killSignal: 'SIGKILL',
      cwd: '/',
    });
    assert.equal(attached.status, 0, attached.stderr);
    mounted.push(usernsMnt);
    assert.match(attached.stdout, /through the mount service/);
    assert.doesNotMatch(attached.stdout, /move_mount/);
    assert.equal(mountinfoAt(usernsMnt).length, 1);
    assert.deepEqual(listTree(usernsMnt), withoutPrivilege(kernelView, images, ['/secret.bin']));
    const unmountedInNs = spawnSync(NOBODY[0], [...NOBODY.slice(1), 'unshare', '-Ur', process.execPath, CFS, 'umount', ...sock, usernsMnt], { encoding: 'utf8', timeout: 60_000, killSignal: 'SIGKILL', cwd: '/' });
    assert.equal(unmountedInNs.status, 0, unmountedInNs.stderr);
    assert.equal(mountinfoAt(usernsMnt).length, 0);
    mounted.splice(mounted.indexOf(usernsMnt), 1);

  } finally {
    chmodSync('/dev/fuse', fuseMode);
    for (const mnt of mounted.reverse()) {
      try {
        unmountComposefs(mnt, { lazy: true, any: true });
      } catch {
        spawnSync('umount', ['-l', mnt]);
      }
    }
    try {
      await service?.stop();
    } finally {
      if (service) assert.ok(service.process.exitCode !== null || service.process.signalCode !== null, 'no server process left');
      removeTemp(dir);
    }
  }
  const left = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(dir));
  assert.deepEqual(left, [], 'nothing left mounted');
  // No server left: neither the service nor a FUSE server of this test's mounts (they exit once unmounted).
  const servers = () => spawnSync('pgrep', ['-f', `(cfs\\.js serve|fuse/daemon\\.js).*${dir}`], { encoding: 'utf8' }).stdout.trim();
  for (let i = 0; i < 100 && servers() !== ''; i++) await new Promise((r) => setTimeout(r, 50));
  assert.equal(servers(), '', 'no server process left');
});

test(
  'nobody inside `unshare -Urm` gets the mount detached and attaches it itself: the same tree, cfs status finds it, cfs umount there unmounts it',
  {
    skip: SKIP,
    timeout: 120_000,
  },
  async () => {
    const dir = makeTemp('svc-userns', 0o755);
    let service: Service | null = null;
    const mounted: string[] = [];
    try {
      const images = buildImages(dir);
      const socket = join(dir, 'mount.sock');
      service = await startService(socket);
      const sock = ['--service-socket', socket];
      const basedir = `basedir=${images.basedir}`;
      const rootMnt = mountDir(images, 'mnt-root', 0);
      await mountComposefs(images.image, rootMnt, { basedir: [images.basedir] });
      mounted.push(rootMnt);
      // nobody inside `unshare -Urm`: the client asks for the detached mount and attaches it itself, in its namespace.
      const nsMnt = mountDir(images, 'mnt-userns', 65534);
      const nsOut = mountDir(images, 'userns-out', 65534);
      const script = [
        `"${process.execPath}" "${CFS}" mount --service ${sock.join(' ')} -o ${basedir} "${images.image}" "${nsMnt}" --explain >&2 || exit 10`,
        `grep -c " ${nsMnt} " /proc/self/mountinfo >&2`,
        `"${process.execPath}" "${LISTER}" "${nsMnt}" "${rootMnt}" || exit 11`,
        `"${process.execPath}" "${CFS}" status --json ${sock.join(' ')} > "${join(nsOut, 'status.json')}" || exit 13`,
        `"${process.execPath}" "${CFS}" umount "${nsMnt}" >&2 || exit 12`,
      ].join('\n');
      const ns = spawnSync(NOBODY[0], [...NOBODY.slice(1), 'unshare', '-Urm', 'sh', '-c', script], { encoding: 'utf8', timeout: 60_000, killSignal: 'SIGKILL', maxBuffer: 64 << 20, cwd: '/' });
      assert.equal(ns.status, 0, ns.stderr);
      assert.match(ns.stderr, /through the mount service/);
      assert.match(ns.stderr, /attached here with move_mount \(a user namespace of its own\)/);
      const [nsService, nsKernel] = ns.stdout.trim().split('\n').map((l) => JSON.parse(l) as TreeListing);
      assert.deepEqual(nsService, withoutPrivilege(nsKernel, images));
      assert.equal(mountinfoAt(nsMnt).length, 0, 'never attached in our namespace');
      // cfs status in the namespace found it there by its unique mount id, though the service never saw where it went.
      const nsStatus = JSON.parse(readFileSync(join(nsOut, 'status.json'), 'utf8')) as StatusJson;
      assert.deepEqual(nsStatus.service.mounts.map((x) => [x.here, x.detached]), [[nsMnt, true]]);
      const afterNs = JSON.parse(runAs(NOBODY, [CFS, 'status', '--json', ...sock]).stdout) as StatusJson;
      assert.deepEqual(afterNs.service.mounts, [], 'unmounted in the namespace: the service holds nothing for nobody');
    } finally {
      for (const mnt of mounted.reverse()) spawnSync('umount', ['-l', mnt]);
      try {
        await service?.stop();
      } finally {
        removeTemp(dir);
      }
    }
    assert.deepEqual(readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(dir)), [], 'nothing left mounted');
  },
);

test('a user at the service\'s limit: --service fails in one line naming it, plain cfs mount goes to FUSE and --explain says why', { skip: SKIP, timeout: 120_000 }, async () => {
  const dir = makeTemp('svc-limit', 0o755);
  let service: Service | null = null;
  const fuseMode = statSync('/dev/fuse').mode & 0o7777;
  const mounted: string[] = [];
  try {
    const images = buildImages(dir);
    const socket = join(dir, 'mount.sock');
    service = await startService(socket, '--max-mounts-per-user=1');
    const sock = ['--service-socket', socket];
    const basedir = `basedir=${images.basedir}`;
    const first = mountDir(images, 'mnt-first', 65534);
    const second = mountDir(images, 'mnt-second', 65534);
    const m = runAs(NOBODY, [CFS, 'mount', ...sock, '-o', basedir, images.image, first]);
    assert.equal(m.status, 0, m.stderr);
    mounted.push(first);
    oneLineError(runAs(NOBODY, [CFS, 'mount', '--service', ...sock, '-o', basedir, images.image, second]), /^cfs mount: mount service: limit of 1 mount reached$/);
    assert.equal(mountinfoAt(second).length, 0);
    chmodSync('/dev/fuse', 0o666);
    const f = runAs(NOBODY, [CFS, 'mount', ...sock, '-o', basedir, images.image, second, '--explain']);
    assert.equal(f.status, 0, f.stderr);
    mounted.push(second);
    assert.match(f.stdout, /through FUSE/);
    assert.match(f.stdout, new RegExp(`\\n {2}service: the mount service at ${socket} refused \\(limit of 1 mount reached\\)\\n {2}fuse: the kernel path lacks privilege \\(`));
    for (const mnt of [second, first]) {
      assert.equal(runAs(NOBODY, [CFS, 'umount', ...sock, mnt]).status, 0);
      mounted.splice(mounted.indexOf(mnt), 1);
    }
  } finally {
    chmodSync('/dev/fuse', fuseMode);
    for (const mnt of mounted.reverse()) spawnSync('umount', ['-l', mnt]);
    try {
      await service?.stop();
    } finally {
      removeTemp(dir);
    }
  }
  assert.deepEqual(readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(dir)), [], 'nothing left mounted');
});
