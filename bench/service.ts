/**
 * The mount service (issue 20) beside the mounts it stands for, in one run:
 *  - reading one tree (default /usr/share; CFS_BENCH_SERVICE_TREE picks
 *    another) with cold caches (`sync; echo 3 > /proc/sys/vm/drop_caches`
 *    before each run): a metadata walk (`find MNT -printf '%s %m %u\n'`) and
 *    every regular file read once (`find -type f -print0 | xargs -0 cat`),
 *    through the root kernel mount, the service's mount (made for nobody by a
 *    running `cfs serve`) and the FUSE mount (our server, as `cfs mount
 *    --fuse` starts it). Rounds one after another (CFS_BENCH_SERVICE_ROUNDS,
 *    default 3), medians; ratios are medians of each round's ratio.
 *  - the time from the request to the mount, taken inside a client process
 *    after its start-up (bench/service-client.ts: around callVarlink's Mount,
 *    around mountImage, around mountFuse), for the cs9 developer image (64k
 *    entries) and a small one; CFS_BENCH_SERVICE_MOUNTS runs (default 5),
 *    medians. The service's share is broken down with its explain line (the
 *    rewrite's time on its thread) and the image read alone.
 * The cs9 developer dump comes from $CFS_BENCH_CS9_DEVELOPER (a .dump.gz) or
 * the upstream composefs mirror; its regular files' objects need not exist
 * to mount. CFS_BENCH_SERVICE_FIXTURE=DIR keeps the tree's image and objects
 * for the next run. Needs root (drop_caches, the service) and setpriv.
 *
 * Run alone: `node dist/bench/service.js`.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';
import { parseDump } from '../src/dumpfile/index.js';
import { writeImage } from '../src/erofs/writer.js';
import { scanDirectory } from '../src/scan/index.js';
import { RewritePool, rewriteImage } from '../src/service/rewrite.js';
import { newInode, S_IFDIR, S_IFREG, walk } from '../src/tree/model.js';
import { median, printTable } from './measure.js';
import type { ClientRequest } from './service-client.js';

type Row = Record<string, string | number>;

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = join(HERE, '..', '..');
const CFS = join(REPO, 'bin', 'cfs.js');
const CLIENT = join(HERE, 'service-client.js');
const AS_NOBODY = ['--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all'];
const NOBODY = 65534;
const CS9_MIRROR = '/work/.mirror/composefs+composefs/repo';

function dropCaches(): void {
  spawnSync('sync');
  writeFileSync('/proc/sys/vm/drop_caches', '3');
}

/**
 * Seconds `cmd` took. With `denials`, "Permission denied" is no failure but
 * counted: the service's overlay checks the image's own directories with its
 * caller's rights, so a directory only root may enter stays shut to everyone.
 */
function timed(cmd: string, denials?: Set<string>): number {
  const t0 = process.hrtime.bigint();
  const r = spawnSync('sh', ['-c', cmd], { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) {
    const errors = r.stderr.trim().split('\n');
    if (!denials || !errors.every((l) => l.endsWith(': Permission denied'))) throw new Error(`${cmd}: ${r.stderr.trim()}`);
    for (const l of errors) denials.add(l.replace(/^[^:]*: /, '').replace(/: Permission denied$/, '').replace(/^[‘'](.*)[’']$/, '$1'));
  }
  return seconds;
}

function mounted(mountpoint: string): boolean {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[4] === mountpoint);
}

function unmountAll(mountpoint: string): void {
  for (let i = 0; i < 8 && mounted(mountpoint); i++) spawnSync('umount', ['-l', mountpoint], { stdio: 'ignore' });
}

/** One client process (as nobody for the service); its JSON line. */
function client(req: ClientRequest, asNobody: boolean): Record<string, unknown> {
  const cmd = asNobody ? 'setpriv' : process.execPath;
  const args = asNobody ? [...AS_NOBODY, process.execPath, CLIENT, JSON.stringify(req)] : [CLIENT, JSON.stringify(req)];
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 180_000 });
  if (r.status !== 0) throw new Error(`${req.how} client: ${(r.stderr || r.stdout || String(r.error)).trim()}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, unknown>;
}

interface Service {
  socket: string;
  child: ChildProcess;
  stop(): Promise<void>;
}

async function startService(dir: string): Promise<Service> {
  const socket = join(dir, 'run', 'mount.sock');
  const child = spawn(process.execPath, [CFS, 'serve', '--socket', socket], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stderr!.resume();
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error('cfs serve did not listen within 20 s')), 20_000);
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (out.includes('listening on')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`cfs serve exited (${code})`));
    });
  });
  return {
    socket,
    child,
    async stop() {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** The tree's image and objects in `dir` (kept when it is a fixture directory), readable by nobody. */
async function treeFixture(tree: string, dir: string): Promise<{ image: string; store: string; entries: number; bytes: number }> {
  const store = join(dir, 'objects');
  const image = join(dir, 'tree.cfs');
  const facts = join(dir, 'facts.json');
  if (!existsSync(facts)) {
    const { root } = await scanDirectory(tree, { digestStore: store });
    writeFileSync(image, writeImage(root));
    const entries = Number(spawnSync('sh', ['-c', `find ${tree} | wc -l`], { encoding: 'utf8' }).stdout.trim());
    const bytes = Number(spawnSync('sh', ['-c', `find ${tree} -type f -printf '%s\\n' | awk '{s+=$1} END {print s}'`], { encoding: 'utf8' }).stdout.trim());
    writeFileSync(facts, JSON.stringify({ entries, bytes }));
  }
  // The service's overlay reads objects as its caller (nobody).
  spawnSync('chmod', ['-R', 'a+rX', dir]);
  return { image, store, ...(JSON.parse(readFileSync(facts, 'utf8')) as { entries: number; bytes: number }) };
}

/** The cs9 developer dump (64k entries) as an image, redirects made object names (the dump's carry a `.file` suffix); null when there is none. */
function cs9DeveloperImage(dir: string): { image: string; entries: number } | null {
  let gz: Buffer | null = null;
  const fromEnv = process.env.CFS_BENCH_CS9_DEVELOPER;
  if (fromEnv) gz = readFileSync(fromEnv);
  else if (existsSync(CS9_MIRROR)) {
    const r = spawnSync('git', ['--git-dir', CS9_MIRROR, 'show', 'HEAD:tests/assets/cs9-x86_64-developer.dump.gz'], { maxBuffer: 64 << 20 });
    if (r.status === 0) gz = r.stdout;
  }
  if (gz === null) return null;
  const root = parseDump(gunzipSync(gz));
  let entries = 0;
  walk(root, (_path, inode) => {
    entries++;
    if (inode.payload && (inode.mode & 0o170000) === S_IFREG && inode.payload.toString('latin1').endsWith('.file')) inode.payload = inode.payload.subarray(0, inode.payload.length - 5);
  });
  const image = join(dir, 'cs9-developer.cfs');
  writeFileSync(image, writeImage(root));
  return { image, entries };
}

/** A small image: ten files, inline. */
function smallImage(dir: string): string {
  const root = newInode(S_IFDIR | 0o755, { mtimeSec: 1700000000 });
  for (let i = 0; i < 10; i++) {
    const content = Buffer.from(`small file ${i}\n`);
    root.children!.push({ name: Buffer.from(`f${i}`), inode: newInode(S_IFREG | 0o644, { size: content.length, content }), hardlink: false });
  }
  const image = join(dir, 'small.cfs');
  writeFileSync(image, writeImage(root));
  return image;
}

const ms = (x: number) => `${x.toFixed(0)} ms`;

/** A row of `columns` saying `text` in the first. */
function note(columns: string[], text: string): Row {
  return Object.fromEntries(columns.map((c, i) => [c, i === 0 ? text : '']));
}

function precondition(): Row[] | null {
  if (process.getuid?.() !== 0) return [{ what: 'skipped: needs root (drop_caches, the service)' }];
  if (spawnSync('sh', ['-c', 'command -v setpriv']).status !== 0) return [{ what: 'skipped: no setpriv' }];
  return null;
}

/** A work directory others may enter, its two mountpoints (root's, nobody's), the service on a socket in it. */
async function places(parent: string): Promise<{ work: string; mntRoot: string; mntNobody: string; service: Service }> {
  const work = mkdtempSync(join(parent, 'cfs-bench-service-'));
  chmodSync(work, 0o755);
  const mntRoot = join(work, 'mnt-root');
  const mntNobody = join(work, 'mnt-nobody');
  mkdirSync(mntRoot);
  mkdirSync(mntNobody);
  chownSync(mntNobody, NOBODY, NOBODY);
  try {
    return { work, mntRoot, mntNobody, service: await startService(work) };
  } catch (err) {
    rmSync(work, { recursive: true, force: true });
    throw err;
  }
}

async function release(p: { work: string; mntRoot: string; mntNobody: string; service: Service }): Promise<void> {
  for (const m of [p.mntRoot, p.mntNobody]) unmountAll(m);
  await p.service.stop();
  rmSync(p.work, { recursive: true, force: true });
}

/** Reading the tree through the root kernel mount, the service's mount for nobody and the FUSE mount. */
export async function benchServiceRead(): Promise<Row[]> {
  const skip = precondition();
  if (skip) return skip;
  const tree = process.env.CFS_BENCH_SERVICE_TREE ?? '/usr/share';
  const rounds = Math.max(1, Number(process.env.CFS_BENCH_SERVICE_ROUNDS ?? 3));
  const keep = process.env.CFS_BENCH_SERVICE_FIXTURE;
  const dir = keep ?? mkdtempSync('/var/tmp/cfs-bench-service-tree-');
  if (keep) mkdirSync(keep, { recursive: true });
  chmodSync(dir, 0o755);
  const rows: Row[] = [];
  let p: Awaited<ReturnType<typeof places>> | null = null;
  try {
    const { image, store, entries, bytes } = await treeFixture(tree, dir);
    p = await places('/var/tmp');
    const { mntRoot, mntNobody, service } = p;
    const socket = service.socket;
    interface Target {
      name: string;
      mountpoint: string;
      denials?: Set<string>;
      mount(): void;
      unmount(): void;
    }
    const targets: Target[] = [
      { name: 'kernel composefs mount (root)', mountpoint: mntRoot, mount: () => client({ how: 'kernel', image, basedir: store, mountpoint: mntRoot }, false), unmount: () => unmountAll(mntRoot) },
      {
        name: 'service mount (for nobody)',
        mountpoint: mntNobody,
        denials: new Set<string>(),
        mount: () => client({ how: 'service', socket, image, basedir: store, mountpoint: mntNobody }, true),
        unmount: () => {
          client({ how: 'service-unmount', socket, mountpoint: mntNobody }, true);
          unmountAll(mntNobody);
        },
      },
      { name: 'cfs FUSE mount', mountpoint: mntRoot, mount: () => client({ how: 'fuse', image, basedir: store, mountpoint: mntRoot }, false), unmount: () => unmountAll(mntRoot) },
    ];
    const samples = new Map(targets.map((t) => [t.name, { walk: [] as number[], read: [] as number[] }]));
    for (let round = 0; round < rounds; round++) {
      for (const t of targets) {
        t.mount();
        try {
          dropCaches();
          const w = timed(`find ${t.mountpoint} -printf '%s %m %u\\n' > /dev/null`, t.denials);
          dropCaches();
          const r = timed(`find ${t.mountpoint} -type f -print0 | xargs -0 cat > /dev/null`, t.denials);
          samples.get(t.name)!.walk.push(w);
          samples.get(t.name)!.read.push(r);
          if (process.env.CFS_BENCH_SERVICE_VERBOSE) process.stderr.write(`round ${round + 1} ${t.name}: walk ${w.toFixed(2)} s, read ${r.toFixed(2)} s\n`);
        } finally {
          t.unmount();
          await new Promise((r) => setTimeout(r, 200));
        }
      }
    }
    const kernel = samples.get(targets[0].name)!;
    const ratio = (a: number[], b: number[]) => `${median(a.map((x, i) => x / b[i])).toFixed(2)}x`;
    for (const t of targets) {
      const s = samples.get(t.name)!;
      rows.push({
        what: t.name,
        'walk s': median(s.walk).toFixed(2),
        'walk vs kernel': ratio(s.walk, kernel.walk),
        'read s': median(s.read).toFixed(2),
        'read MB/s': (bytes / 1e6 / median(s.read)).toFixed(0),
        'read vs kernel (goal: service ≤ 1.05x)': ratio(s.read, kernel.read),
        'walks s': s.walk.map((x) => x.toFixed(2)).join(' '),
        'reads s': s.read.map((x) => x.toFixed(2)).join(' '),
      });
    }
    const denied = targets[1].denials!;
    rows.push(note(Object.keys(rows[0]), `tree: ${tree}, ${entries} entries, ${(bytes / 1e6).toFixed(0)} MB in regular files; medians of ${rounds} rounds; cold caches before each walk and read; read as root`));
    if (denied.size > 0) rows.push(note(Object.keys(rows[0]), `shut in the service mount (the image's own modes, checked with nobody's rights): ${[...denied].map((d) => d.replace(mntNobody, '')).join(', ')}`));
  } finally {
    if (p) await release(p);
    if (!keep) rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}

/** The time from the request to the mount, in a client after its start-up: the service, the root kernel mount, the FUSE mount. */
export async function benchServiceMount(): Promise<Row[]> {
  const skip = precondition();
  if (skip) return skip;
  const runs = Math.max(1, Number(process.env.CFS_BENCH_SERVICE_MOUNTS ?? 5));
  const columns = [
    'what',
    'kernel (root, mountImage)',
    'service (nobody, Mount call)',
    'service: rewrite on its thread',
    'service: the rest',
    'FUSE (root, mountFuse)',
    'rewrite alone: on the caller\'s thread / a new thread / a kept thread',
  ];
  const rows: Row[] = [];
  const p = await places('/var/tmp');
  try {
    const { work, mntRoot, mntNobody, service } = p;
    const socket = service.socket;
    const noObjects = join(work, 'no-objects');
    mkdirSync(noObjects);
    const images: Array<{ label: string; image: string }> = [];
    const cs9 = cs9DeveloperImage(work);
    if (cs9) images.push({ label: `cs9 developer (${cs9.entries} entries, ${(readFileSync(cs9.image).length / 1e6).toFixed(1)} MB)`, image: cs9.image });
    else rows.push(note(columns, 'cs9 developer: skipped (no $CFS_BENCH_CS9_DEVELOPER and no upstream composefs mirror)'));
    images.push({ label: 'small (10 inline files)', image: smallImage(work) });
    spawnSync('chmod', ['-R', 'a+rX', work]);
    for (const { label, image } of images) {
      const times = { kernel: [] as number[], service: [] as number[], fuse: [] as number[], rewrite: [] as number[] };
      for (let i = 0; i < runs; i++) {
        times.kernel.push(client({ how: 'kernel', image, basedir: noObjects, mountpoint: mntRoot }, false).ms as number);
        unmountAll(mntRoot);
        const s = client({ how: 'service', socket, image, basedir: noObjects, mountpoint: mntNobody }, true);
        times.service.push(s.ms as number);
        const line = (s.explain as string[] | undefined)?.find((l) => /written again on a thread in \d+ ms/.test(l));
        const m = line ? /in (\d+) ms/.exec(line) : null;
        if (m) times.rewrite.push(Number(m[1]));
        client({ how: 'service-unmount', socket, mountpoint: mntNobody }, true);
        unmountAll(mntNobody);
        times.fuse.push(client({ how: 'fuse', image, basedir: noObjects, mountpoint: mntRoot }, false).ms as number);
        unmountAll(mntRoot);
      }
      // The rewrite alone, in this process: on this thread (its code warm), on a new thread as the service runs it,
      // and on a thread kept from the rewrite before (RewritePool's idleMs).
      const bytes = readFileSync(image);
      const inline: number[] = [];
      const threaded: number[] = [];
      const kept: number[] = [];
      const fresh = new RewritePool();
      const warm = new RewritePool({ idleMs: 60_000 });
      await warm.rewrite(bytes);
      for (let i = 0; i < runs; i++) {
        let t0 = performance.now();
        rewriteImage(bytes);
        inline.push(performance.now() - t0);
        t0 = performance.now();
        await fresh.rewrite(bytes);
        threaded.push(performance.now() - t0);
        t0 = performance.now();
        await warm.rewrite(bytes);
        kept.push(performance.now() - t0);
      }
      const total = median(times.service);
      const rewrite = times.rewrite.length === runs ? median(times.rewrite) : null;
      rows.push({
        [columns[0]]: label,
        [columns[1]]: ms(median(times.kernel)),
        [columns[2]]: ms(total),
        [columns[3]]: rewrite === null ? 'not in explain' : ms(rewrite),
        [columns[4]]: rewrite === null ? '' : ms(total - rewrite),
        [columns[5]]: ms(median(times.fuse)),
        [columns[6]]: `${ms(median(inline))} / ${ms(median(threaded))} / ${ms(median(kept))}`,
      });
    }
    rows.push(
      note(
        columns,
        `medians of ${runs} runs, each in a new client process timed after its start-up, the image in the page cache; the rest: receiving the image, checks, the anonymous copy, EROFS + overlay, the attach in the caller's namespace, the reply`,
      ),
    );
  } finally {
    await release(p);
  }
  return rows;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  (async () => {
    printTable('Mount service: reading (cold caches)', await benchServiceRead());
    printTable('Mount service: time to mount', await benchServiceMount());
  })().then(
    () => {},
    (err: unknown) => {
      process.stderr.write(`bench service: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
