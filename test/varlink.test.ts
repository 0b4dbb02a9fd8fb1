/**
 * The mount service's transport (src/service/varlink.ts) on a real unix
 * socket, against real clients: Node's own net sockets (which cannot pass
 * descriptors, so they speak the framing independently of our client),
 * Python's socket.send_fds/recv_fds (an independent SCM_RIGHTS
 * implementation), systemd-socket-activate for LISTEN_FDS, varlinkctl when
 * installed, and our callVarlink. Hostile clients (garbage, oversize
 * messages, descriptor floods, hang-ups, stalls, a hundred at once) must
 * each get their own failure and nothing else: after each test the server
 * still answers, holds no connection, and this process holds exactly the
 * descriptors it held before.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, fstatSync, openSync, readdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { repoRoot } from './helpers/paths.js';
import { makeTemp, removeTemp } from './helpers/temp.js';
import { callVarlink, declaredErrors, Parameters, parseMessage, declaredInterface, declaredMethods, serveVarlink, VarlinkError, type VarlinkServer } from '../src/service/varlink.js';
import { MOUNT_INTERFACE, MountError, MountMethod, mountInterfaceDescription } from '../src/service/mount-interface.js';

const hasPython = spawnSync('python3', ['-c', 'import socket; socket.send_fds'], { stdio: 'ignore' }).status === 0;
const hasVarlinkctl = spawnSync('sh', ['-c', 'command -v varlinkctl'], { stdio: 'ignore' }).status === 0;
const hasSetpriv = spawnSync('sh', ['-c', 'command -v setpriv'], { stdio: 'ignore' }).status === 0;
const hasPrlimit = spawnSync('sh', ['-c', 'command -v prlimit'], { stdio: 'ignore' }).status === 0;
const hasSocketActivate = spawnSync('sh', ['-c', 'command -v systemd-socket-activate'], { stdio: 'ignore' }).status === 0;

const MAX_FDS = 16;
const MESSAGE_TIMEOUT_MS = 400;
const IDLE_TIMEOUT_MS = 3000;

let dir: string;
let socketPath: string;
let server: VarlinkServer;
let baseline: number;
const logLines: string[] = [];
/** What the handlers saw, for the tests to compare with what they sent. */
const seen = { fdStats: [] as Array<{ dev: number; ino: number }>, aborted: 0, slowStarted: 0 };

const openFds = () => readdirSync('/proc/self/fd').length;

function describeFds(): string {
  return readdirSync('/proc/self/fd')
    .map((f) => {
      try {
        return `${f}->${readlinkSync(`/proc/self/fd/${f}`)}`;
      } catch {
        return f;
      }
    })
    .join(' ');
}

async function eventually(what: string, check: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The state every test must leave: no connection open, no descriptor more or less, and the server answering. */
async function assertServerClean(): Promise<void> {
  await eventually('the server to drop its connections', () => server.connections === 0);
  await eventually(`the descriptor count to return to ${baseline} (now: ${describeFds()})`, () => openFds() === baseline);
  const info = await callVarlink(socketPath, 'org.varlink.service.GetInfo', {}, [], { timeoutMs: 5000 });
  assert.deepEqual(info.parameters.interfaces, ['org.varlink.service', MOUNT_INTERFACE, 'io.composefs.Test']);
  await eventually('the check call to be closed', () => server.connections === 0 && openFds() === baseline);
}

interface RawResult {
  replies: Array<Record<string, unknown>>;
  /** The server closed the connection. */
  closed: boolean;
}

/**
 * Node's net socket as a client: write `chunks` (a delay between them), then
 * collect NUL-ended replies until `want` arrive or the server closes, within
 * a deadline (then the socket is destroyed and what arrived is returned).
 */
function rawClient(chunks: Array<string | Buffer>, opts: { want?: number; gapMs?: number; deadlineMs?: number; hangUpAfterWrite?: boolean } = {}): Promise<RawResult> {
  return new Promise((resolve, reject) => {
    const sock = connect(socketPath);
    const replies: Array<Record<string, unknown>> = [];
    let pending = Buffer.alloc(0);
    let closed = false;
    const finish = () => {
      clearTimeout(timer);
      sock.destroy();
      resolve({ replies, closed });
    };
    const timer = setTimeout(finish, opts.deadlineMs ?? 5000);
    sock.on('error', (err: NodeJS.ErrnoException) => {
      // The server may close while we still write (EPIPE/ECONNRESET): that is a close.
      if (err.code === 'EPIPE' || err.code === 'ECONNRESET') closed = true;
      else {
        clearTimeout(timer);
        reject(err);
      }
    });
    sock.on('data', (d) => {
      pending = Buffer.concat([pending, d]);
      for (let end = pending.indexOf(0); end >= 0; end = pending.indexOf(0)) {
        replies.push(JSON.parse(pending.subarray(0, end).toString('utf8')) as Record<string, unknown>);
        pending = pending.subarray(end + 1);
      }
      if (opts.want !== undefined && replies.length >= opts.want) finish();
    });
    sock.on('close', () => {
      closed = true;
      finish();
    });
    sock.on('connect', async () => {
      for (const c of chunks) {
        if (sock.destroyed) return;
        sock.write(c);
        if (opts.gapMs) await new Promise((r) => setTimeout(r, opts.gapMs));
      }
      if (opts.hangUpAfterWrite) sock.end(() => sock.destroy());
    });
  });
}

const call = (method: string, parameters: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) => `${JSON.stringify({ method, parameters, ...extra })}\0`;

/**
 * A client written in Python (its own SCM_RIGHTS code): sends `message`
 * split into `parts` sendmsg calls, each carrying `fdsPerPart` descriptors of
 * `file` (or the files in `files`, with the first part), then prints the
 * reply and the (dev, ino) of each descriptor the reply carried, as JSON.
 */
function pythonClient(message: string, opts: { files?: string[]; file?: string; fdsPerPart?: number; parts?: number; stayMs?: number; as?: string[] }): Promise<{ reply: Record<string, unknown> | null; replyFds: Array<[number, number]>; pid: number }> {
  const script = `
import json, os, socket, sys, time
path, message, files, file, per, parts, stay = sys.argv[1], sys.argv[2].encode() + b'\\0', json.loads(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
size = -(-len(message) // parts)
for i in range(parts):
    fds = [os.open(f, os.O_RDONLY) for f in files] if i == 0 else []
    fds += [os.open(file, os.O_RDONLY) for _ in range(per)] if file else []
    socket.send_fds(s, [message[i * size:(i + 1) * size]], fds)
    for fd in fds: os.close(fd)
time.sleep(stay / 1000)
data, got = b'', []
s.settimeout(10)
while b'\\0' not in data:
    chunk, fds, flags, addr = socket.recv_fds(s, 65536, 64)
    got += fds
    if not chunk: break
    data += chunk
reply = json.loads(data[:data.index(b'\\0')]) if b'\\0' in data else None
print(json.dumps({'reply': reply, 'replyFds': [[os.fstat(fd).st_dev, os.fstat(fd).st_ino] for fd in got], 'pid': os.getpid()}))
`;
  return new Promise((resolve, reject) => {
    // As another user, the system's python: a per-user install (pyenv under /root) is out of its reach.
    const command = opts.as ? [...opts.as, '/usr/bin/python3'] : ['python3'];
    const child = spawn(
      command[0]!,
      [...command.slice(1), '-c', script, socketPath, message, JSON.stringify(opts.files ?? []), opts.file ?? '', String(opts.fdsPerPart ?? 0), String(opts.parts ?? 1), String(opts.stayMs ?? 0)],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code !== 0) return reject(new Error(`python client exited ${code}: ${err}`));
      resolve(JSON.parse(out) as { reply: Record<string, unknown> | null; replyFds: Array<[number, number]>; pid: number });
    });
  });
}

before(async () => {
  // Others may reach the socket (0666 inside): the nobody test connects as another user.
  dir = makeTemp('varlink', 0o755);
  socketPath = join(dir, 'mount.sock');
  writeFileSync(join(dir, 'a'), 'a');
  writeFileSync(join(dir, 'b'), 'b');
  server = serveVarlink(
    socketPath,
    {
      vendor: 'composefs-ts',
      product: 'cfs serve (test)',
      version: '0',
      url: 'https://example.invalid',
      interfaces: [
        {
          name: MOUNT_INTERFACE,
          description: mountInterfaceDescription,
          methods: {
            // Mount: reports the (dev, ino) of each descriptor it was given, keeps none.
            Mount: (parameters, c) => {
              const stats = [];
              for (let i = 0; i < c.fds.count; i++) {
                const st = fstatSync(c.fds.peek(i, `fd ${i}`));
                stats.push({ dev: st.dev, ino: st.ino });
              }
              seen.fdStats = stats;
              if (parameters.get('replyWith') === 'fds') {
                return { parameters: { id: 'x' }, fds: [openSync(join(dir, 'a'), 'r'), openSync(join(dir, 'b'), 'r')] };
              }
              if (parameters.get('pidfd') === true) {
                const { pidfd, exact } = c.openPeerPidfd();
                try {
                  const pid = Number(/^Pid:\s*(\d+)/m.exec(readFileSync(`/proc/self/fdinfo/${pidfd}`, 'utf8'))?.[1]);
                  return { parameters: { id: 'x', pid, exact, uid: c.peer.uid, peerPid: c.peer.pid } };
                } finally {
                  closeSync(pidfd);
                }
              }
              return { parameters: { id: 'x', count: c.fds.count } };
            },
            // List: with "more", one reply per mount and the last without "continues".
            List: (_parameters, c) => {
              if (c.more) {
                c.reply({ mounts: [{ id: 'm1', mountpoint: '/a', image: 'x' }] });
                c.reply({ mounts: [{ id: 'm2', mountpoint: '/b', image: 'y' }] });
              }
              return { parameters: { mounts: [] } };
            },
            // Unmount: throws (an ordinary error, then a named one) or waits, as asked.
            Unmount: async (parameters, c) => {
              const id = parameters.get('id');
              if (id === 'throw') throw new TypeError('the handler broke');
              if (id === 'notowner') throw new VarlinkError(MountError.NotOwner, { reason: 'not yours' });
              if (id === 'slow') {
                seen.slowStarted++;
                await new Promise<void>((resolve) => {
                  const t = setTimeout(resolve, 2000);
                  c.signal.addEventListener('abort', () => {
                    seen.aborted++;
                    clearTimeout(t);
                    resolve();
                  });
                });
              }
              if (id === 'wait') await new Promise((r) => setTimeout(r, 200));
              return {};
            },
          },
        },
        { name: 'io.composefs.Test', description: 'interface io.composefs.Test\n\nmethod Unimplemented() -> ()\n', methods: {} },
      ],
    },
    { idleTimeoutMs: IDLE_TIMEOUT_MS, maxFdsPerMessage: MAX_FDS, messageTimeoutMs: MESSAGE_TIMEOUT_MS, maxConnectionsPerUid: 150, maxConnections: 150, log: (l) => logLines.push(l) },
  );
  // The first call loads what stays loaded (the watcher's epoll set and eventfd): count after it.
  await callVarlink(socketPath, 'org.varlink.service.GetInfo');
  await eventually('the warm-up connection to close', () => server.connections === 0);
  baseline = openFds();
});

after(async () => {
  await server?.close();
  if (dir) removeTemp(dir);
});

test('varlink: the interface file and src/service/mount-interface.ts agree, text and names', () => {
  const file = readFileSync(join(repoRoot, 'service', 'io.composefs.Mount.varlink'), 'utf8');
  assert.equal(mountInterfaceDescription, file);
  assert.equal(declaredInterface(file), MOUNT_INTERFACE);
  assert.deepEqual(declaredMethods(file).map((m) => `${MOUNT_INTERFACE}.${m}`).sort(), Object.values(MountMethod).sort());
  assert.deepEqual(declaredErrors(file).map((e) => `${MOUNT_INTERFACE}.${e}`).sort(), Object.values(MountError).sort());
});

test('varlink: the socket is created with the mode asked, atomically in place', () => {
  assert.equal(statSync(socketPath).mode & 0o7777, 0o666);
  assert.ok(statSync(socketPath).isSocket());
  assert.deepEqual(readdirSync(dir).sort(), ['a', 'b', 'mount.sock']);
  // A second server on the same path refuses: the first is listening.
  assert.throws(() => serveVarlink(socketPath, { vendor: '', product: '', version: '', url: '', interfaces: [] }), /another service is listening/);
});

test('varlink: GetInfo and GetInterfaceDescription answer a plain Node socket', { timeout: 60_000 }, async () => {
  const r = await rawClient(
    [
      call('org.varlink.service.GetInfo'),
      call('org.varlink.service.GetInterfaceDescription', { interface: MOUNT_INTERFACE }),
      call('org.varlink.service.GetInterfaceDescription', { interface: 'org.varlink.service' }),
      call('org.varlink.service.GetInterfaceDescription', { interface: 'no.such.Iface' }),
      call('io.composefs.Mount.NoSuchMethod'),
      call('io.composefs.Test.Unimplemented'),
    ],
    { want: 6 },
  );
  const [info, desc, own, noIface, noMethod, notImpl] = r.replies;
  assert.deepEqual(info, { parameters: { vendor: 'composefs-ts', product: 'cfs serve (test)', version: '0', url: 'https://example.invalid', interfaces: ['org.varlink.service', MOUNT_INTERFACE, 'io.composefs.Test'] } });
  assert.equal((desc!.parameters as { description: string }).description, readFileSync(join(repoRoot, 'service', 'io.composefs.Mount.varlink'), 'utf8'));
  assert.match((own!.parameters as { description: string }).description, /^interface org\.varlink\.service$/m);
  assert.deepEqual(noIface, { error: 'org.varlink.service.InterfaceNotFound', parameters: { interface: 'no.such.Iface' } });
  assert.deepEqual(noMethod, { error: 'org.varlink.service.MethodNotFound', parameters: { method: 'io.composefs.Mount.NoSuchMethod' } });
  assert.deepEqual(notImpl, { error: 'org.varlink.service.MethodNotImplemented', parameters: { method: 'io.composefs.Test.Unimplemented' } });
  await assertServerClean();
});

test('varlink: three descriptors sent by Python reach the handler as the files sent, and two come back to callVarlink', { timeout: 60_000, skip: !hasPython && 'no python3 with socket.send_fds' }, async () => {
  const files = [join(dir, 'a'), join(dir, 'b'), dir];
  const r = await pythonClient(call(MountMethod.Mount, { image: 0, basedirs: [1], mountpoint: 2 }).slice(0, -1), { files });
  assert.deepEqual(r.reply, { parameters: { id: 'x', count: 3 } });
  assert.deepEqual(seen.fdStats, files.map((f) => ({ dev: statSync(f).dev, ino: statSync(f).ino })));

  // Our own client, both ways: three sent, two replied.
  const sent = files.map((f) => openSync(f, 'r'));
  try {
    const got = await callVarlink(socketPath, MountMethod.Mount, { image: 0, basedirs: [1], mountpoint: 2, replyWith: 'fds' }, sent);
    assert.deepEqual(seen.fdStats, files.map((f) => ({ dev: statSync(f).dev, ino: statSync(f).ino })));
    assert.equal(got.fds.length, 2);
    assert.deepEqual(got.fds.map((fd) => fstatSync(fd).ino), [statSync(join(dir, 'a')).ino, statSync(join(dir, 'b')).ino]);
    for (const fd of got.fds) closeSync(fd);
    // The caller's descriptors stay the caller's.
    for (const fd of sent) assert.ok(fstatSync(fd).ino > 0);
  } finally {
    for (const fd of sent) closeSync(fd);
  }
  await assertServerClean();
});

test('varlink: the handler learns who called: SO_PEERCRED and a pidfd of the very process', { timeout: 60_000, skip: !hasPython && 'no python3 with socket.send_fds' }, async () => {
  const r = await pythonClient(call(MountMethod.Mount, { image: 0, basedirs: [], pidfd: true }).slice(0, -1), {});
  const p = r.reply!.parameters as { pid: number; exact: boolean; uid: number; peerPid: number };
  assert.equal(p.peerPid, r.pid);
  assert.equal(p.pid, r.pid);
  assert.equal(p.uid, process.getuid!());
  assert.equal(p.exact, true, 'SO_PEERPIDFD is in Linux 6.5 and later');
  await assertServerClean();
});

test('varlink: garbage gets a ProtocolError reply and its connection closes; others go on', { timeout: 60_000 }, async () => {
  const cases: Array<[string, string | Buffer]> = [
    ['not JSON', Buffer.from('\x16\x03\x01 hello\0')],
    ['not UTF-8', Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d, 0])],
    ['not an object', '[1,2,3]\0'],
    ['no method', '{"parameters":{}}\0'],
    ['a duplicate key', '{"method":"org.varlink.service.GetInfo","method":"x.y.Z"}\0'],
    ['parameters not an object', '{"method":"org.varlink.service.GetInfo","parameters":[]}\0'],
    ['an unknown field', '{"method":"org.varlink.service.GetInfo","evil":1}\0'],
    ['a bad method name', '{"method":"../../etc/passwd"}\0'],
    ['nested too deep', `${'['.repeat(100_000)}\0`],
    ['an empty message', '\0'],
  ];
  for (const [what, bytes] of cases) {
    const r = await rawClient([bytes, call('org.varlink.service.GetInfo')]);
    assert.equal(r.replies.length, 1, `${what}: one reply, then the server closes`);
    assert.equal(r.replies[0]!.error, MountError.ProtocolError, what);
    assert.equal(typeof (r.replies[0]!.parameters as { reason: unknown }).reason, 'string', what);
    assert.ok(r.closed, `${what}: the connection is closed`);
  }
  await assertServerClean();
});

test('varlink: a message over 1 MiB is refused with a reply and a close, with or without its NUL', { timeout: 60_000 }, async () => {
  const big = `{"method":"org.varlink.service.GetInfo","parameters":{"pad":"${'x'.repeat(1024 * 1024)}"}}`;
  for (const bytes of [big, `${big}\0`]) {
    const r = await rawClient([bytes], { deadlineMs: 10_000 });
    assert.deepEqual(r.replies, [{ error: MountError.ProtocolError, parameters: { reason: 'a message is larger than 1048576 bytes' } }]);
    assert.ok(r.closed);
  }
  // Just under the limit is read and answered.
  const pad = 1024 * 1024 - `{"method":"org.varlink.service.GetInfo","parameters":{"pad":""}}`.length;
  const fits = await rawClient([`{"method":"org.varlink.service.GetInfo","parameters":{"pad":"${'x'.repeat(pad)}"}}\0`], { want: 1, deadlineMs: 10_000 });
  assert.ok(fits.replies[0]?.parameters, JSON.stringify(fits.replies[0]).slice(0, 200));
  await assertServerClean();
});

test('varlink: descriptor floods fail their own call and are all closed: 253 in one sendmsg, 300 over two, 17 of 16', { timeout: 60_000, skip: !hasPython && 'no python3 with socket.send_fds' }, async () => {
  const msg = call(MountMethod.Mount, { image: 0, basedirs: [] }).slice(0, -1);
  const refused = { error: MountError.ProtocolError, parameters: { reason: `more than ${MAX_FDS} descriptors in one message` } };
  // 253 is the kernel's most per sendmsg (SCM_MAX_FD): the server's control buffer takes 16, the kernel sets MSG_CTRUNC.
  assert.deepEqual((await pythonClient(msg, { file: '/dev/null', fdsPerPart: 253 })).reply, refused);
  assert.deepEqual((await pythonClient(msg, { file: '/dev/null', fdsPerPart: 150, parts: 2 })).reply, refused);
  // Under the limit in each sendmsg, over it for the message.
  assert.deepEqual((await pythonClient(msg, { file: '/dev/null', fdsPerPart: 9, parts: 2 })).reply, refused);
  assert.deepEqual((await pythonClient(msg, { file: '/dev/null', fdsPerPart: 17 })).reply, refused);
  assert.deepEqual((await pythonClient(msg, { file: '/dev/null', fdsPerPart: 16 })).reply, { parameters: { id: 'x', count: 16 } });
  await assertServerClean();
});

test('varlink: after a refused descriptor flood the same connection serves the next call', { timeout: 60_000 }, async () => {
  // Our client on the same path: 17 descriptors are refused as a whole, nothing is kept.
  const fds = Array.from({ length: MAX_FDS + 1 }, () => openSync('/dev/null', 'r'));
  try {
    await assert.rejects(callVarlink(socketPath, MountMethod.Mount, { image: 0, basedirs: [] }, fds), (err: VarlinkError) => err.error === MountError.ProtocolError);
  } finally {
    for (const fd of fds) closeSync(fd);
  }
  await assertServerClean();
});

test('varlink: a client that hangs up mid-message, or while its call runs, costs nothing', { timeout: 60_000 }, async () => {
  const r = await rawClient(['{"method":"org.varlink.service.Get'], { hangUpAfterWrite: true });
  assert.deepEqual(r.replies, []);
  await eventually('the hang-up to be logged', () => logLines.some((l) => l.includes('hung up mid-message')));
  // Hang up while the handler runs: it sees the abort, its descriptors are closed, nothing is written.
  const aborted = seen.aborted;
  const started = seen.slowStarted;
  const sock = connect(socketPath);
  sock.on('error', () => {});
  sock.write(call(MountMethod.Unmount, { id: 'slow' }));
  await eventually('the slow handler to start', () => seen.slowStarted > started);
  sock.destroy();
  await eventually('the handler to see the caller leave', () => seen.aborted > aborted);
  await assertServerClean();
});

test('varlink: a half-sent message that stalls is closed after the message timeout, while others are answered', { timeout: 60_000 }, async () => {
  const t0 = Date.now();
  const stalled = rawClient(['{"method":"org.varlink.service.GetInfo"'], { deadlineMs: 10_000 });
  // While it stalls, another caller is served at once.
  const other = await callVarlink(socketPath, 'org.varlink.service.GetInfo', {}, [], { timeoutMs: 2000 });
  assert.ok(other.parameters.interfaces);
  assert.ok(Date.now() - t0 < MESSAGE_TIMEOUT_MS, 'answered before the stalled one timed out');
  const r = await stalled;
  assert.ok(r.closed);
  const waited = Date.now() - t0;
  assert.ok(waited >= MESSAGE_TIMEOUT_MS - 50 && waited < MESSAGE_TIMEOUT_MS + 3000, `closed after ${waited} ms`);
  // Trickling bytes does not extend the deadline: it runs from the message's first byte.
  const t1 = Date.now();
  const trickle = await rawClient(Array.from({ length: 40 }, () => ' '), { gapMs: 50, deadlineMs: 10_000 });
  assert.ok(trickle.closed);
  assert.ok(Date.now() - t1 < MESSAGE_TIMEOUT_MS + 1500, `trickler closed after ${Date.now() - t1} ms`);
  await assertServerClean();
});

test('varlink: 100 parallel callers are all answered, concurrently', { timeout: 60_000 }, async () => {
  const t0 = Date.now();
  const calls = Array.from({ length: 100 }, (_, i) =>
    i % 2 === 0
      ? callVarlink(socketPath, MountMethod.Unmount, { id: 'wait' }, [], { timeoutMs: 20_000 }).then((r) => r.parameters)
      : rawClient([call(MountMethod.Unmount, { id: 'wait' })], { want: 1, deadlineMs: 20_000 }).then((r) => r.replies[0]?.parameters),
  );
  const results = await Promise.all(calls);
  assert.equal(results.filter((p) => p !== undefined && Object.keys(p as object).length === 0).length, 100);
  // Each handler waits 200 ms: served one after another they would take 20 s.
  assert.ok(Date.now() - t0 < 5000, `100 calls took ${Date.now() - t0} ms`);
  await assertServerClean();
});

test('varlink: connections beyond the limit are closed at once, and the others still served', { timeout: 60_000 }, async () => {
  const held: Array<ReturnType<typeof connect>> = [];
  try {
    // In batches: 150 connects at once would overflow the listen backlog (128) before the server's first accept.
    for (let batch = 0; batch < 3; batch++) {
      held.push(
        ...(await Promise.all(
          Array.from({ length: 50 }, () => new Promise<ReturnType<typeof connect>>((resolve, reject) => {
            const s = connect(socketPath, () => resolve(s));
            s.on('error', reject);
          })),
        )),
      );
    }
    for (const s of held) s.on('error', () => {});
    await eventually('150 connections open', () => server.connections === 150);
    const extra = await rawClient([call('org.varlink.service.GetInfo')], { deadlineMs: 5000 });
    assert.ok(extra.closed);
    assert.deepEqual(extra.replies, []);
    // A held one still answers.
    const answered = new Promise<string>((resolve) => held[0]!.once('data', (d) => resolve(d.toString())));
    held[0]!.write(call('org.varlink.service.GetInfo'));
    assert.match(await answered, /"interfaces"/);
  } finally {
    for (const s of held) s.destroy();
  }
  await assertServerClean();
});

test('varlink: a handler that throws gets an error reply, and the same connection goes on', { timeout: 60_000 }, async () => {
  const r = await rawClient([call(MountMethod.Unmount, { id: 'throw' }), call(MountMethod.Unmount, { id: 'notowner' }), call(MountMethod.Unmount, { id: 'fine' }), call(MountMethod.Unmount, { id: 'x' }, { oneway: true }), call('org.varlink.service.GetInfo')], { want: 4 });
  assert.deepEqual(r.replies.slice(0, 3), [
    { error: MountError.InternalError, parameters: { reason: 'the handler broke' } },
    { error: MountError.NotOwner, parameters: { reason: 'not yours' } },
    { parameters: {} },
  ]);
  assert.ok(r.replies[3]!.parameters, 'the oneway call got no reply; the next call did');
  assert.ok(logLines.some((l) => /Unmount: failed: the handler broke/.test(l)));
  await assert.rejects(callVarlink(socketPath, MountMethod.Unmount, { id: 'notowner' }), (err: VarlinkError) => err instanceof VarlinkError && err.error === MountError.NotOwner && err.message === `${MountError.NotOwner}: not yours`);
  await assertServerClean();
});

test('varlink: the client names the socket when no service answers, and gives up at its deadline', { timeout: 60_000 }, async () => {
  await assert.rejects(callVarlink(join(dir, 'none.sock'), 'org.varlink.service.GetInfo'), /mount service .*none\.sock: No such file or directory/);
  // A listener that never answers: a Python process that accepts and sleeps.
  const silent = join(dir, 'silent.sock');
  const child = spawn('python3', ['-c', `import socket,time\ns=socket.socket(socket.AF_UNIX)\ns.bind(${JSON.stringify(silent)})\ns.listen()\nc=s.accept()\nprint('x',flush=True)\ntime.sleep(30)`], { stdio: ['ignore', 'pipe', 'ignore'] });
  try {
    await eventually('the silent listener', () => {
      try {
        return statSync(silent).isSocket();
      } catch {
        return false;
      }
    });
    const t0 = Date.now();
    await assert.rejects(callVarlink(silent, 'org.varlink.service.GetInfo', {}, [], { timeoutMs: 300 }), /no reply within 300 ms/);
    assert.ok(Date.now() - t0 < 2000);
  } finally {
    child.kill('SIGKILL');
  }
  await assertServerClean();
});

test('varlink: socket activation: a server started by systemd-socket-activate serves LISTEN_FDS fd 3', { timeout: 60_000, skip: !hasSocketActivate && 'no systemd-socket-activate' }, async () => {
  const activated = join(dir, 'activated.sock');
  const script = join(dir, 'activated.mjs');
  writeFileSync(
    script,
    `import { serveVarlink } from ${JSON.stringify(join(repoRoot, 'dist', 'src', 'service', 'varlink.js'))};
import { systemdListenFds } from ${JSON.stringify(join(repoRoot, 'dist', 'src', 'sys', 'socket.js'))};
const fds = systemdListenFds();
if (fds.length !== 1 || process.env.LISTEN_FDS !== undefined) { console.error('fds', fds); process.exit(3); }
serveVarlink(fds[0], { vendor: 'activated', product: 'p', version: '1', url: 'u', interfaces: [] });
`,
  );
  const child = spawn('systemd-socket-activate', ['-l', activated, process.execPath, script], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  try {
    await eventually('the activation socket', () => {
      try {
        return statSync(activated).isSocket();
      } catch {
        return false;
      }
    });
    const info = await callVarlink(activated, 'org.varlink.service.GetInfo', {}, [], { timeoutMs: 10_000 });
    assert.equal(info.parameters.vendor, 'activated', stderr);
  } finally {
    child.kill('SIGKILL');
  }
  await assertServerClean();
});

test('varlink: varlinkctl (systemd) calls GetInfo and the interface', { timeout: 60_000, skip: !hasVarlinkctl && 'varlinkctl is not installed on this machine' }, async () => {
  const info = spawnSync('varlinkctl', ['--json=short', 'call', socketPath, 'org.varlink.service.GetInfo', '{}'], { encoding: 'utf8', timeout: 10_000 });
  assert.equal(info.status, 0, info.stderr);
  assert.deepEqual(JSON.parse(info.stdout).interfaces, ['org.varlink.service', MOUNT_INTERFACE, 'io.composefs.Test']);
  const introspect = spawnSync('varlinkctl', ['introspect', socketPath, MOUNT_INTERFACE], { encoding: 'utf8', timeout: 10_000 });
  assert.equal(introspect.status, 0, introspect.stderr);
  assert.match(introspect.stdout, /method Mount/);
  await assertServerClean();
});

test('varlink: a call with "more" gets every reply, all but the last marked "continues"; without it, one', { timeout: 60_000 }, async () => {
  const r = await rawClient([call(MountMethod.List, {}, { more: true }), call(MountMethod.List)], { want: 4 });
  assert.deepEqual(r.replies, [
    { parameters: { mounts: [{ id: 'm1', mountpoint: '/a', image: 'x' }] }, continues: true },
    { parameters: { mounts: [{ id: 'm2', mountpoint: '/b', image: 'y' }] }, continues: true },
    { parameters: { mounts: [] } },
    { parameters: { mounts: [] } },
  ]);
  // "oneway" and "more" together is not a call.
  const both = await rawClient([call(MountMethod.List, {}, { more: true, oneway: true })]);
  assert.equal(both.replies[0]?.error, MountError.ProtocolError);
  await assertServerClean();
});

test('varlink: a connection that sends nothing is closed after the idle timeout', { timeout: 60_000 }, async () => {
  const t0 = Date.now();
  const r = await rawClient([], { deadlineMs: IDLE_TIMEOUT_MS + 5000 });
  const waited = Date.now() - t0;
  assert.ok(r.closed);
  assert.ok(waited >= IDLE_TIMEOUT_MS - 50 && waited < IDLE_TIMEOUT_MS + 2000, `closed after ${waited} ms`);
  await assertServerClean();
});

test('varlink: a socket path that cannot be made is one line naming it', { timeout: 60_000 }, () => {
  assert.throws(
    () => serveVarlink(join(dir, 'missing', 'x.sock'), { vendor: '', product: '', version: '', url: '', interfaces: [] }),
    (err: Error) => err.message === `socket ${join(dir, 'missing', 'x.sock')}: No such file or directory` && !err.message.includes('\n'),
  );
  writeFileSync(join(dir, 'plain'), '');
  assert.throws(() => serveVarlink(join(dir, 'plain'), { vendor: '', product: '', version: '', url: '', interfaces: [] }), /plain: exists and is not a socket/);
});

test('varlink: another user (nobody) is served, and the handler sees its uid and its own pid', { timeout: 60_000, skip: (!existsSync('/usr/bin/python3') && 'no /usr/bin/python3') || (!hasSetpriv && 'no setpriv') || (process.getuid!() !== 0 && 'needs root to become nobody') }, async () => {
  const r = await pythonClient(call(MountMethod.Mount, { image: 0, basedirs: [], pidfd: true }).slice(0, -1), { as: ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'] });
  const p = r.reply!.parameters as { pid: number; uid: number; peerPid: number };
  assert.deepEqual([p.uid, p.peerPid, p.pid], [65534, r.pid, r.pid]);
  await assertServerClean();
});

test('varlink: out of descriptors (RLIMIT_NOFILE), the server pauses accepting and serves every waiting caller once it has room', { timeout: 60_000, skip: (!hasPython && 'no python3') || (!hasPrlimit && 'no prlimit') }, async () => {
  // The callers live in a Python process, so the only descriptors that count against our limit are the server's.
  const child = spawn('python3', ['-c', `import socket,sys
sys.stdin.readline()
held = []
for i in range(30):
    s = socket.socket(socket.AF_UNIX); s.connect(${JSON.stringify(socketPath)}); held.append(s)
print('connected', flush=True)
sys.stdin.readline()
for s in held:
    s.sendall(b'{"method":"org.varlink.service.GetInfo"}\\0')
got = 0
for s in held:
    s.settimeout(10)
    data = b''
    while b'\\0' not in data:
        chunk = s.recv(65536)
        if not chunk: break
        data += chunk
    got += b'"interfaces"' in data
print('answered', got, flush=True)
`], { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  const before = spawnSync('prlimit', ['--pid', String(process.pid), '--nofile', '--raw', '--noheadings', '--output', 'SOFT,HARD'], { encoding: 'utf8' }).stdout.trim().split(/\s+/);
  const [soft, hard] = before;
  try {
    const room = openFds() + 10;
    assert.equal(spawnSync('prlimit', ['--pid', String(process.pid), `--nofile=${room}:${hard}`]).status, 0);
    child.stdin.write('go\n');
    await eventually('the 30 connects', () => out.includes('connected'), 10_000);
    await eventually('the server to pause accepting', () => logLines.some((l) => l.startsWith('accept paused: Too many open files')), 10_000);
    assert.ok(server.connections < 30, `all ${server.connections} connections accepted with room for about 10`);
    // CPU spent while paused: a server spinning on a readable listening socket would burn a core.
    const cpu0 = process.cpuUsage();
    await new Promise((r) => setTimeout(r, 500));
    const cpu = process.cpuUsage(cpu0);
    assert.ok(cpu.user + cpu.system < 250_000, `the paused server used ${(cpu.user + cpu.system) / 1000} ms of CPU in 500 ms`);
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  } finally {
    spawnSync('prlimit', ['--pid', String(process.pid), `--nofile=${soft}:${hard}`]);
  }
  try {
    // At once: connections accepted before the pause must not reach the idle timeout.
    child.stdin.end('send\n');
    await eventually('the 30 answers', () => /answered \d+/.test(out), 15_000);
    assert.match(out, /answered 30/);
  } finally {
    child.kill('SIGKILL');
  }
  await assertServerClean();
});

test('varlink: Parameters reads typed values and names the one that is wrong, nested ones by their path', () => {
  const read = (json: string) => new Parameters(parseMessage(Buffer.from(json)));
  const ok = read('{"image":0,"basedirs":[1,2],"mountpoint":null,"options":{"verity":"try","noexec":true}}');
  assert.equal(ok.int('image'), 0);
  assert.deepEqual(ok.intArray('basedirs'), [1, 2]);
  assert.equal(ok.optionalInt('mountpoint'), undefined);
  const options = ok.object('options');
  assert.equal(options.optionalEnum('verity', ['off', 'try', 'require'] as const), 'try');
  assert.equal(options.optionalBool('noexec'), true);
  assert.equal(options.optionalString('digest'), undefined);
  ok.done();
  options.done();
  const refused = (f: () => unknown, parameter: string) =>
    assert.throws(f, (err: VarlinkError) => err.error === 'org.varlink.service.InvalidParameter' && (err.parameters as { parameter: string }).parameter === parameter);
  refused(() => read('{"image":"0"}').int('image'), 'image');
  refused(() => read('{"image":1.5}').int('image'), 'image');
  refused(() => read('{}').int('image'), 'image');
  refused(() => read('{"basedirs":[1,"x"]}').intArray('basedirs'), 'basedirs');
  refused(() => read(`{"basedirs":[${Array(65).fill(0).join(',')}]}`).intArray('basedirs'), 'basedirs');
  refused(() => read('{"options":{"verity":"maybe"}}').object('options').optionalEnum('verity', ['off', 'try'] as const), 'options.verity');
  refused(() => read('{"options":[]}').object('options'), 'options');
  refused(() => {
    const p = read('{"image":0,"upperdir":3}');
    p.int('image');
    p.done();
  }, 'upperdir');
});
