/**
 * The client side of test/service-hostile.test.ts, run as an unprivileged
 * user (setpriv) against a real `cfs serve`: one JSON argument says what to
 * do, one JSON line on stdout says what happened. It speaks to the service
 * with callVarlink (src/service/varlink.ts) and, for the abuses, with raw
 * socket writes (node:net) and raw sendmsg with descriptors (src/sys/socket.ts):
 * nothing of the mount client (src/service/client.ts) is used, so what is
 * tested is the service alone.
 */
import { closeSync, openSync, readFileSync, writeFileSync, constants as fsc } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { callVarlink, VarlinkError } from '../../src/service/varlink.js';
import { connectUnix, receiveWithFds, sendWithFds, closeFds } from '../../src/sys/socket.js';
import { O_PATH } from '../../src/sys/mount.js';
import { generatedBases, mutate, Rng } from '../fuzz-long.js';

const MOUNT = 'io.composefs.Mount.Mount';
const UNMOUNT = 'io.composefs.Mount.Unmount';

export type Request =
  | { action: 'mount'; socket: string; image: string; basedir: string; mountpoint: string; expect?: { file: string; content: string } }
  | { action: 'fuzz'; socket: string; seed: number; count: number; basedir: string; mountpoints: string[]; workdir: string }
  | { action: 'garbage'; socket: string }
  | { action: 'partial'; socket: string }
  | { action: 'oversize'; socket: string }
  | { action: 'fdflood'; socket: string; connections: number; messagesPerConnection: number }
  | { action: 'hangup'; socket: string; image: string; basedir: string; mountpoint: string; stayMs: number }
  | { action: 'parallel'; socket: string; image: string; basedir: string; mountpoints: string[] }
  | { action: 'list-during-mount'; socket: string; image: string; basedir: string; mountpoint: string };

/** How one Mount call ended. */
export type Outcome =
  | { kind: 'mounted'; mountId: unknown; read: boolean | null; unmounted: boolean; unmountError?: string }
  | { kind: 'refused'; error: string; reason: string }
  | { kind: 'failed'; message: string };

function mountinfoHas(mountpoint: string): boolean {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[4] === mountpoint);
}

/** The reason of a refusal, as one string (every parameter, for errors without `reason`). */
function reasonOf(err: VarlinkError): string {
  const p = err.parameters;
  return typeof p.reason === 'string' ? p.reason : JSON.stringify(p);
}

/** Unmount through the service: an O_PATH descriptor of the mount's root, opened now that it is mounted. */
async function unmount(socket: string, mountpoint: string): Promise<{ unmounted: boolean; unmountError?: string }> {
  const root = openSync(mountpoint, O_PATH | fsc.O_DIRECTORY | fsc.O_NOFOLLOW);
  try {
    await callVarlink(socket, UNMOUNT, { mountpoint: 0 }, [root], { timeoutMs: 20_000 });
  } catch (err) {
    return { unmounted: !mountinfoHas(mountpoint), unmountError: err instanceof Error ? err.message : String(err) };
  } finally {
    closeSync(root);
  }
  return { unmounted: !mountinfoHas(mountpoint) };
}

/** One Mount call as a client makes it (it opens everything itself), then a read through the mount and an Unmount. */
async function mountOnce(socket: string, image: string, basedir: string, mountpoint: string, expect?: { file: string; content: string }): Promise<Outcome> {
  const fds: number[] = [];
  try {
    fds.push(openSync(image, fsc.O_RDONLY | fsc.O_NOFOLLOW));
    fds.push(openSync(basedir, O_PATH | fsc.O_DIRECTORY));
    fds.push(openSync(mountpoint, O_PATH | fsc.O_NOFOLLOW));
  } catch (err) {
    closeFds(fds);
    return { kind: 'failed', message: `opening: ${err instanceof Error ? err.message : String(err)}` };
  }
  let reply;
  try {
    reply = await callVarlink(socket, MOUNT, { image: 0, basedirs: [1], mountpoint: 2 }, fds, { timeoutMs: 60_000 });
  } catch (err) {
    if (err instanceof VarlinkError) return { kind: 'refused', error: err.error, reason: reasonOf(err) };
    return { kind: 'failed', message: err instanceof Error ? err.message : String(err) };
  } finally {
    closeFds(fds);
  }
  closeFds(reply.fds);
  let read: boolean | null = null;
  if (expect) {
    try {
      read = readFileSync(join(mountpoint, expect.file), 'utf8') === expect.content;
    } catch {
      read = false;
    }
  }
  return { kind: 'mounted', mountId: reply.parameters.mountId, read, ...(await unmount(socket, mountpoint)) };
}

interface RawResult {
  replies: Array<Record<string, unknown>>;
  closed: boolean;
}

/** Bytes written on a plain connection (no descriptors), then what came back within `waitMs`, or a hang-up of ours. */
function raw(socket: string, chunks: Buffer[], opts: { hangUp?: boolean; waitMs?: number; gapMs?: number } = {}): Promise<RawResult> {
  return new Promise((resolve) => {
    const sock = connect(socket);
    const replies: Array<Record<string, unknown>> = [];
    let pending = Buffer.alloc(0);
    let closed = false;
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      resolve({ replies, closed });
    };
    const timer = setTimeout(finish, opts.waitMs ?? 3000);
    sock.on('error', () => {
      closed = true;
    });
    sock.on('data', (d) => {
      pending = Buffer.concat([pending, d]);
      for (let end = pending.indexOf(0); end >= 0; end = pending.indexOf(0)) {
        try {
          replies.push(JSON.parse(pending.subarray(0, end).toString('utf8')) as Record<string, unknown>);
        } catch {
          replies.push({ unreadable: pending.subarray(0, end).toString('latin1').slice(0, 200) });
        }
        pending = pending.subarray(end + 1);
      }
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
      if (opts.hangUp) {
        sock.end(() => sock.destroy());
        setTimeout(finish, 50);
      }
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A call sent with `fds` over a raw socket, repeated in `messages` sendmsg calls of one byte each with as many descriptors; the reply, if one comes. */
async function flood(socket: string, fds: number[], messages: number): Promise<{ sent: number; fdsSent: number; reply: string | null; closedEarly: boolean }> {
  let fd: number | null = null;
  for (let i = 0; i < 200 && fd === null; i++) {
    fd = connectUnix(socket);
    if (fd === null) await sleep(10);
  }
  if (fd === null) throw new Error('the service\'s backlog stayed full');
  const call = Buffer.from(`${JSON.stringify({ method: MOUNT, parameters: { image: 0, basedirs: [1], mountpoint: 2 } })}\0`);
  let sent = 0;
  let fdsSent = 0;
  let closedEarly = false;
  try {
    for (let m = 0; m < messages; m++) {
      const byte = call.subarray(m % call.length, (m % call.length) + 1);
      let n: number | null = null;
      try {
        for (let tries = 0; tries < 200 && n === null; tries++) {
          n = sendWithFds(fd, byte, fds);
          if (n === null) await sleep(5);
        }
      } catch {
        closedEarly = true; // the service closed the connection (EPIPE, ECONNRESET): it may, after refusing
        break;
      }
      if (n === null) break;
      sent++;
      fdsSent += fds.length;
    }
    // Whatever the service answers within a moment.
    let reply: string | null = null;
    const end = Date.now() + 2000;
    let data = Buffer.alloc(0);
    while (Date.now() < end) {
      let got;
      try {
        got = receiveWithFds(fd, 4);
      } catch {
        break;
      }
      if (got === null) {
        await sleep(10);
        continue;
      }
      closeFds(got.fds);
      if (got.data.length === 0) break;
      data = Buffer.concat([data, got.data]);
      const nul = data.indexOf(0);
      if (nul >= 0) {
        reply = data.subarray(0, nul).toString('utf8');
        break;
      }
    }
    return { sent, fdsSent, reply, closedEarly };
  } finally {
    closeFds([fd]);
  }
}

async function run(req: Request): Promise<unknown> {
  switch (req.action) {
    case 'mount':
      return mountOnce(req.socket, req.image, req.basedir, req.mountpoint, req.expect);

    case 'fuzz': {
      // The reader's fuzz corpus: mutations of valid images, from a fixed seed (test/fuzz-long.ts).
      const rnd = new Rng(req.seed);
      const bases = generatedBases(req.seed, 8);
      const tally = { mounted: 0, refused: {} as Record<string, number>, failed: [] as string[], multiLine: [] as string[], notUnmounted: [] as string[], cases: 0 };
      const lanes = req.mountpoints.length;
      let next = 0;
      const images = Array.from({ length: req.count }, (_, i) => mutate(rnd, bases[i % bases.length]).image);
      await Promise.all(
        req.mountpoints.map(async (mountpoint, lane) => {
          const path = join(req.workdir, `case-${lane}.cfs`);
          for (let i = next++; i < req.count; i = next++) {
            writeFileSync(path, images[i]);
            const o = await mountOnce(req.socket, path, req.basedir, mountpoint);
            tally.cases++;
            if (o.kind === 'mounted') {
              tally.mounted++;
              if (!o.unmounted) tally.notUnmounted.push(`case ${i}: ${o.unmountError ?? 'still mounted'}`);
            } else if (o.kind === 'refused') {
              tally.refused[o.error] = (tally.refused[o.error] ?? 0) + 1;
              if (/[\n\r]/.test(o.reason) || o.reason.length === 0) tally.multiLine.push(`case ${i}: ${JSON.stringify(o.reason)}`);
            } else tally.failed.push(`case ${i}: ${o.message}`);
          }
        }),
      );
      return { ...tally, lanes };
    }

    case 'garbage': {
      const rnd = new Rng(0x6a7ba6e);
      return Promise.all([
        raw(req.socket, [Buffer.concat([rnd.bytes(4096), Buffer.from([0])])]),
        raw(req.socket, [Buffer.from('{"x": 1}\0')]),
        raw(req.socket, [Buffer.from('\0\0\0[1,2,3]\0"just a string"\0')]),
        raw(req.socket, [Buffer.from(`${JSON.stringify({ method: MOUNT, parameters: { image: 0, basedirs: [1], mountpoint: 2 } })}\0`)]), // descriptors named, none sent
        raw(req.socket, [Buffer.from(`${JSON.stringify({ method: MOUNT, parameters: { image: 'x'.repeat(100), basedirs: {}, mountpoint: -1, options: { detached: 'yes' } } })}\0`)]),
        raw(req.socket, [rnd.bytes(30_000)], { hangUp: true }),
      ]);
    }

    case 'partial':
      return Promise.all([
        raw(req.socket, [Buffer.from('{"method":"io.composefs.Mount.Mount","parameters":{"image":0')], { hangUp: true }),
        raw(req.socket, [Buffer.from('{"method":"io.composefs.Mount.Mo'), Buffer.from('unt","param')], { hangUp: true, gapMs: 200 }),
        // A partial message left open: the service's message time limit ends it.
        raw(req.socket, [Buffer.from('{"method":"io.composefs.Mount.List","parameters":{')], { waitMs: 15_000 }),
      ]);

    case 'oversize': {
      const big = Buffer.alloc((1 << 20) + 4096, 0x61);
      return Promise.all([
        raw(req.socket, [big], { waitMs: 5000 }),
        raw(req.socket, [Buffer.from(`{"method":"${MOUNT}","parameters":{"pad":"`), big, Buffer.from('"}}\0')], { waitMs: 5000 }),
      ]);
    }

    case 'fdflood': {
      // As many descriptors as one sendmsg may carry (SCM_MAX_FD, 253), in every message.
      const fds: number[] = [];
      try {
        for (let i = 0; i < 253; i++) fds.push(openSync('/dev/null', fsc.O_RDONLY));
        const results = [];
        for (let c = 0; c < req.connections; c++) results.push(await flood(req.socket, fds, req.messagesPerConnection));
        return results;
      } finally {
        closeFds(fds);
      }
    }

    case 'hangup': {
      // A valid call for a slow rewrite, sent with its descriptors, then the connection closed at once.
      const fds = [openSync(req.image, fsc.O_RDONLY), openSync(req.basedir, O_PATH | fsc.O_DIRECTORY), openSync(req.mountpoint, O_PATH | fsc.O_NOFOLLOW)];
      let fd: number | null = null;
      try {
        fd = connectUnix(req.socket);
        if (fd === null) throw new Error('backlog full');
        const call = Buffer.from(`${JSON.stringify({ method: MOUNT, parameters: { image: 0, basedirs: [1], mountpoint: 2 } })}\0`);
        let n: number | null = null;
        for (let tries = 0; tries < 200 && n === null; tries++) {
          n = sendWithFds(fd, call, fds);
          if (n === null) await sleep(5);
        }
        if (n !== call.length) throw new Error(`sent ${n} of ${call.length} bytes`);
      } finally {
        if (fd !== null) closeFds([fd]);
        closeFds(fds);
      }
      // Alive (its pidfd valid, its namespace there) while the service goes on with the call, or not.
      await sleep(req.stayMs);
      return { sent: true, mountedWhileAlive: mountinfoHas(req.mountpoint) };
    }

    case 'list-during-mount': {
      // List calls, one after another, while a Mount of a large image is under way: how long each waits for its answer.
      let done = false;
      const mount = mountOnce(req.socket, req.image, req.basedir, req.mountpoint).finally(() => (done = true));
      const lists: number[] = [];
      await sleep(20);
      while (!done) {
        const t0 = performance.now();
        await callVarlink(req.socket, 'io.composefs.Mount.List', {}, [], { timeoutMs: 30_000 });
        lists.push(performance.now() - t0);
        await sleep(10);
      }
      return { mount: await mount, lists };
    }

    case 'parallel': {
      const outcomes = await Promise.all(req.mountpoints.map((m) => mountOnce(req.socket, req.image, req.basedir, m)));
      const tally = { mounted: 0, refused: {} as Record<string, number>, failed: [] as string[], multiLine: [] as string[], notUnmounted: [] as string[] };
      for (const o of outcomes) {
        if (o.kind === 'mounted') {
          tally.mounted++;
          if (!o.unmounted) tally.notUnmounted.push(o.unmountError ?? 'still mounted');
        } else if (o.kind === 'refused') {
          tally.refused[o.error] = (tally.refused[o.error] ?? 0) + 1;
          if (/[\n\r]/.test(o.reason)) tally.multiLine.push(JSON.stringify(o.reason));
        } else tally.failed.push(o.message);
      }
      return tally;
    }
  }
}

run(JSON.parse(process.argv[2]) as Request).then(
  (result) => {
    process.stdout.write(`${JSON.stringify(result)}\n`);
    process.exit(0);
  },
  (err: unknown) => {
    process.stdout.write(`${JSON.stringify({ crashed: err instanceof Error ? err.stack : String(err) })}\n`);
    process.exit(1);
  },
);
