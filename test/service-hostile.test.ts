/**
 * The real mount service (`cfs serve`, started as root) against a hostile
 * unprivileged caller (issue 20): 600 damaged images (the reader's fuzz
 * corpus), garbage, partial messages and hang-ups, messages over 1 MiB,
 * thousands of descriptors, a hang-up in the middle of a slow rewrite, 100
 * Mount calls at once. The caller is a Node script run as nobody through
 * setpriv (test/helpers/service-hostile-client.ts: callVarlink and raw
 * sockets, none of the mount client's code). After each abuse the service
 * must still be running and serve a valid Mount (read through, then
 * unmounted through the service), hold the descriptors it held before, have
 * left no mount in its namespace or the caller's, and the kernel must have
 * logged no warning for it.
 *
 * The transport's own unit checks (test/varlink.test.ts, fake handlers) are
 * not repeated: here each abuse is one round against the real service.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isRoot } from './helpers/paths.js';
import { largeImage } from './helpers/large-image.js';
import { cleanupDir, makeImage, scratch, standardFiles } from './mount-fixtures.js';
import { MNT_DETACH, umount2 } from '../src/sys/mount.js';
import type { Outcome, Request } from './helpers/service-hostile-client.js';

const hasSetpriv = spawnSync('sh', ['-c', 'command -v setpriv'], { stdio: 'ignore' }).status === 0;
const SKIP = !isRoot ? 'the service runs as root' : !hasSetpriv ? 'no setpriv' : false;
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CFS = join(ROOT, 'bin', 'cfs.js');
const CLIENT = join(ROOT, 'dist', 'test', 'helpers', 'service-hostile-client.js');
const NOBODY = 65534;
const AS_NOBODY = ['--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all'];
const FUZZ_CASES = 600;
const PARALLEL = 100;

// ------------------------------------------------------------ kernel log

/** The kernel log, or null when it cannot be read. */
function kernelLog(): string[] | null {
  const r = spawnSync('dmesg', [], { encoding: 'utf8', maxBuffer: 64 << 20, timeout: 10_000 });
  if (r.status !== 0 || typeof r.stdout !== 'string') return null;
  return r.stdout.split('\n').filter(Boolean);
}

const timestampOf = (line: string): number | null => {
  const m = /^\[\s*(\d+\.\d+)\]/.exec(line);
  return m ? Number(m[1]) : null;
};

/** Lines logged after `before` was read: after its last line (by its timestamp, should the ring have moved on). */
export function newKernelLines(before: string[], after: string[]): string[] {
  if (before.length === 0) return after;
  const last = before[before.length - 1];
  const at = after.lastIndexOf(last);
  if (at >= 0) return after.slice(at + 1);
  const t = timestampOf(last);
  return t === null ? after : after.filter((l) => (timestampOf(l) ?? Infinity) > t);
}

/** What would show the kernel went wrong: a warning, a BUG, an oops, a protection fault, EROFS complaining about an image. */
const SUSPECT = (line: string) => /\bWARNING\b|\bBUG\b|\bOops\b|general protection/.test(line) || /erofs.*\b(error|corrupt|bogus|invalid|unidentified)/i.test(line);

/**
 * The suspect lines among `lines`, split by whose they are. A splat names
 * the task it happened in ("CPU: 1 PID: 123 Comm: node", within the lines
 * after its first): one in a task of ours (the service, its threads, the
 * clients) or in a kernel worker (which may act for any mount) is ours; one
 * naming another task is someone else's and only reported. A line naming no
 * task (EROFS's own messages) is ours: while this test holds the test lock,
 * nothing else mounts EROFS images on purpose broken.
 */
export function kernelComplaints(lines: string[], ours: ReadonlySet<number>): { ours: string[]; others: string[] } {
  const out = { ours: [] as string[], others: [] as string[] };
  for (let i = 0; i < lines.length; i++) {
    if (!SUSPECT(lines[i])) continue;
    let task: { pid: number; comm: string } | null = null;
    for (let j = i; j < Math.min(lines.length, i + 40); j++) {
      const m = /\bPID: (\d+) .*Comm: (\S+)/.exec(lines[j]);
      if (m) {
        task = { pid: Number(m[1]), comm: m[2] };
        break;
      }
    }
    if (task === null || ours.has(task.pid) || /^kworker/.test(task.comm)) out.ours.push(lines[i]);
    else out.others.push(lines[i]);
  }
  return out;
}

test('the kernel log check: a splat in a task of ours, in a kernel worker or naming no task counts; another task\'s is only reported; no false match', () => {
  const lines = [
    '[  10.000001] erofs (device erofs): mounted with root inode @ nid 36.',
    '[  10.000002] debug: nothing to see, no bug here',
    '[  11.000000] ------------[ cut here ]------------',
    '[  11.000001] WARNING: CPU: 1 PID: 4242 at fs/overlayfs/util.c:123 ovl_foo+0x1/0x2',
    '[  11.000002] Modules linked in: overlay erofs',
    '[  11.000003] CPU: 1 PID: 4242 Comm: node Not tainted 6.12.0 #1',
    '[  12.000000] WARNING: CPU: 0 PID: 777 at drivers/gpu/foo.c:1 bar+0x1/0x2',
    '[  12.000001] CPU: 0 PID: 777 Comm: Xorg Tainted: G W 6.12.0 #1',
    '[  13.000000] erofs (device erofs): corrupted compressed extent @ nid 60',
    '[  14.000000] BUG: kernel NULL pointer dereference, address: 0000000000000008',
    '[  14.000001] CPU: 1 UID: 0 PID: 99 Comm: kworker/u8:3 Not tainted 6.12.0 #1',
  ];
  const r = kernelComplaints(lines, new Set([4242]));
  assert.deepEqual(r.ours, [lines[3], lines[8], lines[9]]);
  assert.deepEqual(r.others, [lines[6]]);
  assert.deepEqual(newKernelLines(lines.slice(0, 4), lines), lines.slice(4));
  assert.deepEqual(newKernelLines(['[   10.500000] gone from the ring'], lines), lines.slice(2));
});

// ------------------------------------------------------------ the service

interface Service {
  socket: string;
  pid: number;
  log: string[];
  child: ChildProcess;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

async function startService(socket: string): Promise<Service> {
  const child = spawn(process.execPath, [CFS, 'serve', '--socket', socket], { stdio: ['ignore', 'pipe', 'pipe'] });
  const log: string[] = [];
  let partial = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    partial += d;
    const lines = partial.split('\n');
    partial = lines.pop()!;
    log.push(...lines);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  let stdout = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`cfs serve did not say it listens within 20 s: ${log.join(' | ')}`)), 20_000);
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      if (stdout.includes('listening on')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`cfs serve exited (${code}) before listening: ${log.join(' | ')}`));
    });
  });
  return { socket, pid: child.pid!, log, child, exited };
}

const running = (s: Service) => s.child.exitCode === null && s.child.signalCode === null;

function descriptors(pid: number): string[] {
  return readdirSync(`/proc/${pid}/fd`)
    .map((f) => {
      try {
        return `${f}->${readlinkSync(`/proc/${pid}/fd/${f}`)}`;
      } catch {
        return f;
      }
    })
    .sort();
}

/** Mounts of a namespace (as `pid` sees it) that this test or the service can have made: beneath the scratch directory, naming it, or EROFS. */
function relevantMounts(pid: number | 'self', dir: string): string[] {
  return readFileSync(`/proc/${pid}/mountinfo`, 'utf8')
    .split('\n')
    .filter((l) => l.includes(dir) || / - erofs /.test(l))
    .map((l) => l.split(' ').slice(4).join(' ')) // without the mount ids: a remount elsewhere is not ours
    .sort();
}

function mountedOn(mountpoint: string): boolean {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[4] === mountpoint);
}

async function eventually(check: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}

/** Run the client as nobody; its JSON answer, and its pid (a task of ours for the kernel log). */
async function asNobody(req: Request, pids: Set<number>, timeoutMs = 120_000): Promise<unknown> {
  const child = spawn('setpriv', [...AS_NOBODY, process.execPath, CLIENT, JSON.stringify(req)], { stdio: ['ignore', 'pipe', 'pipe'] });
  if (child.pid) pids.add(child.pid);
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  let timer: NodeJS.Timeout | undefined;
  const ended = await Promise.race([
    new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code))),
    new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), timeoutMs))),
  ]);
  clearTimeout(timer);
  if (ended === 'timeout') {
    child.kill('SIGKILL');
    assert.fail(`the ${req.action} client did not finish in ${timeoutMs} ms: ${err}`);
  }
  const last = out.trim().split('\n').pop() ?? '';
  assert.equal(ended, 0, `the ${req.action} client: exit ${ended}: ${last} ${err}`);
  return JSON.parse(last) as unknown;
}

test('the real service keeps serving whatever one caller sends: 600 damaged images, garbage, partial messages, over 1 MiB, descriptor floods, hang-ups mid-rewrite, 100 calls at once; no crash, no descriptor or mount left, no kernel warning', { skip: SKIP, timeout: 300_000 }, async (t) => {
  const dir = scratch('svc-hostile');
  chmodSync(dir, 0o755);
  let service: Service | null = null;
  const pids = new Set<number>();
  let taskWatch: NodeJS.Timeout | undefined;
  try {
    const fx = makeImage(dir, standardFiles());
    const expect = { file: 'sub/dir/nested.txt', content: Buffer.alloc(5000, 'nested 0').toString() };
    const nobodyDir = (name: string) => {
      const d = join(dir, name);
      mkdirSync(d);
      chownSync(d, NOBODY, NOBODY);
      return d;
    };
    const mnt = nobodyDir('mnt-nobody');
    const work = nobodyDir('work');
    const lanes = [0, 1, 2, 3].map((i) => nobodyDir(`fuzz-mnt-${i}`));
    const parallelMnts = Array.from({ length: PARALLEL }, (_, i) => nobodyDir(`par-mnt-${i}`));
    const large = join(dir, 'large.cfs');
    writeFileSync(large, largeImage(64 * 1024));

    const kernelBefore = kernelLog();
    service = await startService(join(dir, 'run', 'mount.sock'));
    const svc = service;
    pids.add(svc.pid);
    // The service's threads (rewrites, attaches) come and go: their ids, for the kernel log.
    taskWatch = setInterval(() => {
      try {
        for (const tid of readdirSync(`/proc/${svc.pid}/task`)) pids.add(Number(tid));
      } catch {
        /* it ended: checked below */
      }
    }, 20);

    const valid = async (): Promise<void> => {
      const o = (await asNobody({ action: 'mount', socket: svc.socket, image: fx.image, basedir: fx.basedir, mountpoint: mnt, expect }, pids)) as Outcome;
      assert.equal(o.kind, 'mounted', `a valid Mount succeeds: ${JSON.stringify(o)} (log: ${svc.log.slice(-3).join(' | ')})`);
      if (o.kind === 'mounted') {
        assert.equal(o.read, true, 'a file reads through the mount');
        assert.equal(o.unmounted, true, `unmounted through the service: ${o.unmountError ?? ''}`);
      }
    };

    // The baseline: after one valid Mount (the first brings the service's lazily opened descriptors).
    await valid();
    await new Promise((r) => setTimeout(r, 300));
    const fdBaseline = descriptors(svc.pid);
    const serviceMounts = relevantMounts(svc.pid, dir);
    const callerMounts = relevantMounts('self', dir);
    assert.deepEqual(callerMounts, [], 'nothing of ours mounted to begin with');
    t.diagnostic(`service pid ${svc.pid}: ${fdBaseline.length} descriptors after a first valid Mount`);

    const afterAbuse = async (what: string): Promise<void> => {
      assert.ok(running(svc), `the service runs after ${what} (log: ${svc.log.slice(-5).join(' | ')})`);
      await valid();
      const fdsBack = await eventually(() => descriptors(svc.pid).length === fdBaseline.length, 15_000);
      assert.ok(fdsBack, `after ${what}: the service's descriptors return to ${fdBaseline.length}: now ${descriptors(svc.pid).join(' ')}`);
      assert.deepEqual(descriptors(svc.pid), fdBaseline, `after ${what}: the same descriptors`);
      assert.deepEqual(relevantMounts(svc.pid, dir), serviceMounts, `after ${what}: no mount left in the service's namespace`);
      assert.deepEqual(relevantMounts('self', dir), callerMounts, `after ${what}: no mount left in the caller's namespace`);
    };

    await t.test('other callers are answered while a large image is rewritten (64k entries): the rewrite is not on the event loop', async (st) => {
      const r = (await asNobody({ action: 'list-during-mount', socket: svc.socket, image: large, basedir: fx.basedir, mountpoint: mnt }, pids)) as { mount: Outcome; lists: number[] };
      const slowest = Math.max(...r.lists);
      st.diagnostic(`${r.lists.length} List calls answered during the Mount, the slowest in ${slowest.toFixed(0)} ms; the Mount: ${r.mount.kind}`);
      assert.equal(r.mount.kind, 'mounted', JSON.stringify(r.mount));
      assert.ok(r.lists.length >= 3, `List calls were made while the Mount ran (${r.lists.length})`);
      assert.ok(slowest < 150, `no List call waited for the rewrite (the slowest: ${slowest.toFixed(0)} ms)`);
      await afterAbuse('a large image');
    });

    await t.test(`${FUZZ_CASES} damaged images (the reader's fuzz corpus), each refused in one line or mounted and unmounted`, async (st) => {
      const t0 = Date.now();
      const r = (await asNobody({ action: 'fuzz', socket: svc.socket, seed: 0x5e41ce, count: FUZZ_CASES, basedir: fx.basedir, mountpoints: lanes, workdir: work }, pids, 240_000)) as {
        cases: number;
        mounted: number;
        refused: Record<string, number>;
        failed: string[];
        multiLine: string[];
        notUnmounted: string[];
      };
      st.diagnostic(`${r.cases} images in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${r.mounted} mounted and unmounted, refused: ${JSON.stringify(r.refused)}`);
      assert.equal(r.cases, FUZZ_CASES);
      assert.deepEqual(r.failed, [], 'every call answered (no hang-up, no time-out)');
      assert.deepEqual(r.multiLine, [], 'every refusal one line');
      assert.deepEqual(r.notUnmounted, [], 'every mount unmounted through the service');
      assert.ok((r.refused['io.composefs.Mount.ImageRefused'] ?? 0) > FUZZ_CASES / 2, 'most damaged images are refused as images');
      const unexpected = Object.keys(r.refused).filter((e) => !['io.composefs.Mount.ImageRefused', 'io.composefs.Mount.MountFailed'].includes(e));
      assert.deepEqual(unexpected, [], 'refused as an image, or by the kernel');
      assert.equal(r.mounted + Object.values(r.refused).reduce((a, b) => a + b, 0), FUZZ_CASES);
      await afterAbuse('the damaged images');
    });

    await t.test('garbage: random bytes, JSON that is no call, calls naming descriptors not sent or with wrong parameters', async () => {
      const replies = (await asNobody({ action: 'garbage', socket: svc.socket }, pids)) as Array<{ replies: Array<Record<string, unknown>>; closed: boolean }>;
      for (const [i, r] of replies.entries()) {
        for (const reply of r.replies) assert.equal(typeof reply.error, 'string', `garbage ${i}: only error replies: ${JSON.stringify(reply)}`);
      }
      assert.ok(replies.slice(0, 5).every((r) => r.replies.length > 0 || r.closed), 'each gets an error or a close');
      await afterAbuse('garbage');
    });

    await t.test('partial messages, then a hang-up; one left open until the service ends it', async () => {
      const replies = (await asNobody({ action: 'partial', socket: svc.socket }, pids)) as Array<{ replies: unknown[]; closed: boolean }>;
      assert.equal(replies[2].closed, true, 'a message that never ends is ended by the service');
      await afterAbuse('partial messages');
    });

    await t.test('a message over 1 MiB, with and without its NUL', async () => {
      const replies = (await asNobody({ action: 'oversize', socket: svc.socket }, pids)) as Array<{ replies: Array<Record<string, unknown>>; closed: boolean }>;
      for (const r of replies) assert.ok(r.closed, 'the connection is closed');
      await afterAbuse('oversized messages');
    });

    await t.test('thousands of descriptors: 253 (the most one sendmsg carries) with every byte of a call, on 20 connections', async (st) => {
      const results = (await asNobody({ action: 'fdflood', socket: svc.socket, connections: 20, messagesPerConnection: 20 }, pids)) as Array<{ sent: number; fdsSent: number; reply: string | null }>;
      const total = results.reduce((a, r) => a + r.fdsSent, 0);
      st.diagnostic(`${total} descriptors sent in ${results.reduce((a, r) => a + r.sent, 0)} messages`);
      assert.ok(total >= 253 * 20, `thousands sent (${total})`);
      for (const r of results) if (r.reply !== null) assert.match(r.reply, /"error":"io\.composefs\.Mount\.ProtocolError"/);
      await afterAbuse('the descriptor flood');
    });

    /** A Mount of the large image (a slow rewrite) whose caller hangs up at once and lives on `stayMs`; whether a mount was left. */
    const hangUp = async (st: { diagnostic(text: string): void }, stayMs: number): Promise<{ left: boolean; line: string | undefined }> => {
      const logFrom = svc.log.length;
      const r = (await asNobody({ action: 'hangup', socket: svc.socket, image: large, basedir: fx.basedir, mountpoint: mnt, stayMs }, pids)) as { mountedWhileAlive: boolean };
      // The call runs on without its caller until the service ends it (its log line).
      const ended = await eventually(() => svc.log.slice(logFrom).some((l) => l.includes(' Mount') && l.includes(mnt)), 30_000);
      const line = svc.log.slice(logFrom).find((l) => l.includes(' Mount') && l.includes(mnt));
      st.diagnostic(`caller alive ${stayMs} ms after its hang-up: ${r.mountedWhileAlive ? 'a mount appeared' : 'no mount appeared'} while it lived; the service: ${line ?? '(no log line)'}`);
      assert.ok(ended, 'the service ends the call of a caller that hung up');
      const left = mountedOn(mnt);
      // Taken away here, so that the next abuses are judged on their own.
      if (left) umount2(mnt, MNT_DETACH);
      return { left, line };
    };

    await t.test('a client that hangs up during a slow rewrite (64k entries) and exits: nothing mounted, nothing left', async (st) => {
      const { left, line } = await hangUp(st, 0);
      assert.equal(left, false, `nothing is left mounted for a caller gone before its answer (the service: ${line})`);
      await afterAbuse('a hang-up during a rewrite');
    });

    // The service looks at the hang-up (call.signal): the rewrite is abandoned, or a mount attached meanwhile detached again.
    await t.test('a client that hangs up during a slow rewrite (64k entries) and lives on: the mount it never got an answer for is undone', async (st) => {
      const { left, line } = await hangUp(st, 3000);
      assert.equal(left, false, `nothing is left mounted for a caller that hung up before its answer (the service: ${line})`);
      assert.match(line ?? '', /: caller hung up( during the rewrite)?: (nothing mounted|undone) \(\d+ ms\)$/);
    });
    await afterAbuse('a hang-up during a rewrite, the caller alive');

    await t.test(`${PARALLEL} Mount calls at once, each on its own connection`, async (st) => {
      const t0 = Date.now();
      const r = (await asNobody({ action: 'parallel', socket: svc.socket, image: fx.image, basedir: fx.basedir, mountpoints: parallelMnts }, pids)) as {
        mounted: number;
        refused: Record<string, number>;
        failed: string[];
        multiLine: string[];
        notUnmounted: string[];
      };
      st.diagnostic(`${PARALLEL} at once in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${r.mounted} mounted and unmounted, refused: ${JSON.stringify(r.refused)}`);
      assert.deepEqual(r.failed, [], 'every call answered');
      assert.deepEqual(r.multiLine, []);
      assert.deepEqual(r.notUnmounted, []);
      assert.ok(r.mounted > 0, 'some are served');
      await afterAbuse(`${PARALLEL} calls at once`);
    });

    // The log: one printable line per event.
    assert.ok(svc.log.length > FUZZ_CASES, `the service logged each request (${svc.log.length} lines)`);
    // eslint-disable-next-line no-control-regex
    const unprintable = svc.log.filter((l) => /[\u0000-\u001f\u007f-\u009f]/.test(l));
    assert.deepEqual(unprintable, [], 'no control character reaches the log');

    const kernelAfter = kernelLog();
    if (kernelBefore === null || kernelAfter === null) {
      t.diagnostic('dmesg is not readable here: kernel warnings not checked');
    } else {
      const fresh = newKernelLines(kernelBefore, kernelAfter);
      const complaints = kernelComplaints(fresh, pids);
      if (complaints.others.length > 0) t.diagnostic(`kernel warnings of other tasks, not ours: ${complaints.others.join(' | ')}`);
      assert.deepEqual(complaints.ours, [], `no kernel warning (${fresh.length} new kernel log lines)`);
    }
  } finally {
    clearInterval(taskWatch);
    if (service) {
      service.child.kill('SIGTERM');
      let timer: NodeJS.Timeout | undefined;
      const ended = await Promise.race([service.exited, new Promise<'hung'>((r) => (timer = setTimeout(() => r('hung'), 20_000)))]);
      clearTimeout(timer);
      if (ended === 'hung') service.child.kill('SIGKILL');
      cleanupDir(dir);
      assert.notEqual(ended, 'hung', 'the service ends on SIGTERM');
      assert.deepEqual(ended, { code: 0, signal: null }, `the service exits 0 (log: ${service.log.slice(-5).join(' | ')})`);
      assert.equal(existsSync(service.socket), false, 'its socket is removed');
    } else cleanupDir(dir);
  }
});
