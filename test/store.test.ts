import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, linkSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import crypto from 'node:crypto';
import { scanDirectory } from '../src/scan/index.js';
import { ComposefsError } from '../src/errors.js';
import { S_IFMT, S_IFREG, walk, type Inode } from '../src/tree/model.js';
import { digestToHex } from '../src/fsverity/index.js';
import { cliPath, isRoot } from './helpers/paths.js';

const haveFsverity = existsSync('/usr/bin/fsverity');
const scanModule = new URL('../src/scan/index.js', import.meta.url).pathname;

/** Deterministic pseudo-random bytes (AES-CTR keystream of the seed: fast). */
function bytes(size: number, seed: string): Buffer {
  const key = crypto.createHash('sha256').update(seed).digest().subarray(0, 16);
  return crypto.createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(size));
}

/** Files of many sizes, duplicate content, a hard link; returns the distinct stored contents. */
function makeTree(dir: string, files = 40, fileSize = 100_000): void {
  mkdirSync(join(dir, 'a/b'), { recursive: true });
  writeFileSync(join(dir, 'empty'), '');
  writeFileSync(join(dir, 'tiny'), 'tiny');
  writeFileSync(join(dir, 'inline64'), bytes(64, 'i64'));
  writeFileSync(join(dir, 'just-over'), bytes(65, 'j65'));
  writeFileSync(join(dir, 'page'), bytes(4096, 'page'));
  writeFileSync(join(dir, 'a/big'), bytes(3 * 1024 * 1024 + 5, 'big'));
  writeFileSync(join(dir, 'a/b/same-as-page'), bytes(4096, 'page'));
  writeFileSync(join(dir, 'a/b/same-as-page-too'), bytes(4096, 'page'));
  linkSync(join(dir, 'a/big'), join(dir, 'big-link'));
  for (let i = 0; i < files; i++) writeFileSync(join(dir, 'a', `f${i}`), bytes(fileSize + i, `f${i}`));
}

/** Every regular file of the tree that must be in the store: payload -> size. */
function expectedObjects(root: Inode): Map<string, number> {
  const want = new Map<string, number>();
  walk(root, (_p, inode) => {
    if ((inode.mode & S_IFMT) === S_IFREG && inode.size > 0 && !inode.content) want.set(inode.payload!.toString(), inode.size);
  });
  return want;
}

/** The store's files as relative paths; asserts nothing else (no temporaries, no odd names) is there. */
function storeFiles(store: string): string[] {
  const out: string[] = [];
  for (const d of readdirSync(store)) {
    assert.match(d, /^[0-9a-f]{2}$/, `unexpected entry ${d} in the store`);
    const st = statSync(join(store, d));
    assert.ok(st.isDirectory());
    for (const f of readdirSync(join(store, d))) {
      assert.match(f, /^[0-9a-f]{62}$/, `unexpected entry ${d}/${f} in the store`);
      out.push(`${d}/${f}`);
    }
  }
  return out.sort();
}

/** Each object's fs-verity digest, by fsverity-utils, is its name: no torn or wrong object. */
function verifyObjects(store: string, files: string[]): void {
  if (files.length === 0) return;
  const out = execFileSync('fsverity', ['digest', ...files.map((f) => join(store, f))], { encoding: 'utf8', maxBuffer: 1 << 26 });
  const lines = out.trim().split('\n');
  assert.equal(lines.length, files.length);
  for (const line of lines) {
    const m = /^sha256:([0-9a-f]{64}) (.*)$/.exec(line);
    assert.ok(m, line);
    const rel = m[2].slice(store.length + 1);
    assert.equal(rel.replace('/', ''), m[1], `object ${rel} holds content of digest ${m[1]}`);
  }
}

function runScript(dir: string, name: string, code: string): string {
  const script = join(dir, name);
  writeFileSync(script, `const { scanDirectory } = await import(${JSON.stringify(scanModule)});\n${code}\n`);
  return script;
}

test('the store holds one object per distinct non-inlined content, named by fs-verity digest', { skip: haveFsverity ? false : 'no /usr/bin/fsverity: object checks skipped' }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-store-'));
  try {
    makeTree(join(dir, 'src'));
    const store = join(dir, 'store');
    const { root, stats } = await scanDirectory(join(dir, 'src'), { digestStore: store, threads: 2 });
    const want = expectedObjects(root);
    const files = storeFiles(store);
    assert.deepEqual(files, [...want.keys()].sort(), 'exactly the non-empty, non-inlined contents, each once');
    verifyObjects(store, files);
    assert.equal(stats.objectsWritten, want.size);
    assert.equal(stats.bytesWritten, [...want.values()].reduce((a, b) => a + b, 0));
    for (const f of files) {
      assert.equal(statSync(join(store, f)).mode & 0o7777, 0o644, `${f} readable by all, as the reference makes them`);
    }
    // The payload of every regular file finds its content in the store.
    walk(root, (p, inode) => {
      if ((inode.mode & S_IFMT) !== S_IFREG || inode.size === 0 || inode.content) return;
      assert.deepEqual(readFileSync(join(store, inode.payload!.toString())), readFileSync(join(dir, 'src', p.toString())));
    });
    // A second build finds everything there and writes nothing.
    const again = await scanDirectory(join(dir, 'src'), { digestStore: store });
    assert.deepEqual([again.stats.objectsWritten, again.stats.bytesWritten], [0, 0]);
    assert.deepEqual(storeFiles(store), files);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('objects are made durable with one syncfs, not an fsync each', { skip: existsSync('/usr/bin/strace') ? false : 'no strace: system call count skipped' }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-store-'));
  try {
    makeTree(join(dir, 'src'), 30, 5000);
    const script = runScript(dir, 'build.mjs', `await scanDirectory(${JSON.stringify(join(dir, 'src'))}, { digestStore: ${JSON.stringify(join(dir, 'store'))} });`);
    const r = spawnSync('strace', ['-f', '-c', '-e', 'trace=syncfs,fsync,fdatasync,sync,linkat', '-o', join(dir, 'trace'), process.execPath, script], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const trace = readFileSync(join(dir, 'trace'), 'utf8');
    // strace -c rows: % time, seconds, usecs/call, calls, [errors,] syscall. Successful calls only
    // (Node itself tries fsync on its stdio pipes at exit, which fails).
    const calls = (name: string) => {
      for (const line of trace.split('\n')) {
        const col = line.trim().split(/\s+/);
        if (col[col.length - 1] === name) return Number(col[3]) - (col.length === 6 ? Number(col[4]) : 0);
      }
      return 0;
    };
    assert.equal(calls('syncfs'), 1, trace);
    assert.equal(calls('fsync') + calls('fdatasync') + calls('sync'), 0, trace);
    assert.ok(calls('linkat') >= 30, `objects are linked into place\n${trace}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('two builders filling the same store at once both succeed and leave a correct store', { skip: haveFsverity ? false : 'no /usr/bin/fsverity: object checks skipped' }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-store-'));
  try {
    makeTree(join(dir, 'src'), 200, 50_000);
    const store = join(dir, 'store');
    const script = runScript(dir, 'build.mjs', `const r = await scanDirectory(${JSON.stringify(join(dir, 'src'))}, { digestStore: ${JSON.stringify(store)} });\nconsole.log(JSON.stringify(r.stats));`);
    const run = () =>
      new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
        const p = spawn(process.execPath, [script], { stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        let err = '';
        p.stdout.on('data', (d) => (out += d));
        p.stderr.on('data', (d) => (err += d));
        p.on('close', (code) => resolve({ code, out, err }));
      });
    const [a, b] = await Promise.all([run(), run()]);
    assert.equal(a.code, 0, a.err);
    assert.equal(b.code, 0, b.err);
    const { root } = await scanDirectory(join(dir, 'src'), {});
    const want = expectedObjects(root);
    const files = storeFiles(store);
    assert.deepEqual(files, [...want.keys()].sort());
    verifyObjects(store, files);
    // Between them, each object was written once or twice (a race lost is not an error), never more.
    const written = JSON.parse(a.out).objectsWritten + JSON.parse(b.out).objectsWritten;
    assert.ok(written >= want.size && written <= 2 * want.size, `${written} objects written for ${want.size}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a build killed mid-way leaves no torn object, and a rerun completes the store', { skip: haveFsverity ? false : 'no /usr/bin/fsverity: object checks skipped' }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-store-'));
  try {
    makeTree(join(dir, 'src'), 60, 4 * 1024 * 1024);
    const store = join(dir, 'store');
    const script = runScript(dir, 'build.mjs', `await scanDirectory(${JSON.stringify(join(dir, 'src'))}, { digestStore: ${JSON.stringify(store)}, threads: 2 });`);
    const child = spawn(process.execPath, [script], { stdio: 'ignore' });
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_c, sig) => resolve(sig)));
    // Kill it once a few objects are in, while others are being copied.
    const deadline = Date.now() + 60_000;
    for (;;) {
      const n = existsSync(store) ? readdirSync(store).length : 0;
      if (n >= 3 || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    child.kill('SIGKILL');
    assert.equal(await exited, 'SIGKILL', 'the build was killed before it finished');
    const partial = storeFiles(store);
    verifyObjects(store, partial);
    const { root } = await scanDirectory(join(dir, 'src'), { digestStore: store });
    const want = expectedObjects(root);
    assert.ok(partial.length < want.size, 'the killed build had not finished');
    const files = storeFiles(store);
    assert.deepEqual(files, [...want.keys()].sort());
    verifyObjects(store, files);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('an object of the wrong size (crash debris) is replaced on the next build', { skip: haveFsverity ? false : 'no /usr/bin/fsverity: object checks skipped' }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-store-'));
  try {
    makeTree(join(dir, 'src'), 3, 10_000);
    const store = join(dir, 'store');
    const { root } = await scanDirectory(join(dir, 'src'), {});
    const victim = [...expectedObjects(root).keys()][0];
    mkdirSync(join(store, victim.slice(0, 2)), { recursive: true });
    writeFileSync(join(store, victim), ''); // what a crash before syncfs can leave
    const { stats } = await scanDirectory(join(dir, 'src'), { digestStore: store });
    assert.equal(stats.objectsWritten, expectedObjects(root).size);
    verifyObjects(store, storeFiles(store));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** Mount a file system for the test (root only); null with the reason if impossible. */
function tryMount(args: string[]): string | null {
  const r = spawnSync('mount', args, { encoding: 'utf8' });
  return r.status === 0 ? null : r.stderr.trim() || `mount exited ${r.status}`;
}

test('a read-only store is a one-line error naming it, before any work', async (t) => {
  if (!isRoot) return t.skip('not root: cannot make a read-only bind mount');
  const dir = mkdtempSync(join(tmpdir(), 'cfs-store-'));
  const store = join(dir, 'store');
  let mounted = false;
  try {
    makeTree(join(dir, 'src'), 3, 1000);
    mkdirSync(store);
    const why = tryMount(['--bind', store, store]) ?? tryMount(['-o', 'remount,bind,ro', store]);
    mounted = true;
    if (why) return t.skip(`cannot make a read-only bind mount: ${why}`);
    await assert.rejects(scanDirectory(join(dir, 'src'), { digestStore: store }), (e: Error) => {
      assert.ok(e instanceof ComposefsError, String(e));
      assert.equal(e.message, `cannot write to object store ${store}: Read-only file system`);
      return true;
    });
  } finally {
    if (mounted) spawnSync('umount', [store]);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a store that fills up is a one-line error naming the object, and leaves no partial object', async (t) => {
  if (!isRoot) return t.skip('not root: cannot mount a small tmpfs');
  const dir = mkdtempSync(join(tmpdir(), 'cfs-store-'));
  const store = join(dir, 'store');
  mkdirSync(store);
  let mounted = false;
  try {
    const why = tryMount(['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', store]);
    if (why) return t.skip(`cannot mount a tmpfs: ${why}`);
    mounted = true;
    mkdirSync(join(dir, 'src'));
    writeFileSync(join(dir, 'src', 'small'), bytes(100_000, 'small'));
    writeFileSync(join(dir, 'src', 'huge'), bytes(3 * 1024 * 1024, 'huge'));
    const err = await scanDirectory(join(dir, 'src'), { digestStore: store, threads: 1 }).then(
      () => null,
      (e: Error) => e,
    );
    assert.ok(err instanceof ComposefsError, String(err));
    const hex = digestToHex((await scanDirectory(join(dir, 'src'), {})).root.children!.find((c) => c.name.toString() === 'huge')!.inode.digest!);
    // The object is named when its digest is known already, else the file being copied.
    assert.ok(
      [`cannot write object ${store}/${hex.slice(0, 2)}/${hex.slice(2)}: No space left on device`, `cannot copy ${join(dir, 'src', 'huge')} into object store ${store}: No space left on device`].includes(err.message),
      err.message,
    );
    // Only complete objects are visible: the small one at most.
    const files = storeFiles(store);
    assert.ok(files.length <= 1);
    if (haveFsverity) verifyObjects(store, files);
  } finally {
    if (mounted) spawnSync('umount', [store]);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a store on another file system (tmpfs) is filled the same way', async (t) => {
  if (!isRoot) return t.skip('not root: cannot mount a tmpfs');
  const dir = mkdtempSync(join(tmpdir(), 'cfs-store-'));
  const store = join(dir, 'store');
  mkdirSync(store);
  let mounted = false;
  try {
    const why = tryMount(['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', store]);
    if (why) return t.skip(`cannot mount a tmpfs: ${why}`);
    mounted = true;
    makeTree(join(dir, 'src'), 20, 30_000);
    const { root, stats } = await scanDirectory(join(dir, 'src'), { digestStore: store });
    const want = expectedObjects(root);
    const files = storeFiles(store);
    assert.deepEqual(files, [...want.keys()].sort());
    assert.equal(stats.objectsWritten, want.size);
    if (haveFsverity) verifyObjects(store, files);
  } finally {
    if (mounted) spawnSync('umount', [store]);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a store path that cannot be a directory is a one-line error', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-store-'));
  try {
    makeTree(join(dir, 'src'), 1, 100);
    writeFileSync(join(dir, 'file'), '');
    await assert.rejects(scanDirectory(join(dir, 'src'), { digestStore: join(dir, 'file', 'store') }), (e: Error) => {
      assert.ok(e instanceof ComposefsError, String(e));
      assert.equal(e.message, `cannot create object store ${join(dir, 'file', 'store')}: Not a directory`);
      return true;
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a file rewritten while it is stored never leaves an object whose content is not its name; a later clean build mounts the right bytes', { skip: haveFsverity ? false : 'no /usr/bin/fsverity: object checks skipped' }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-store-'));
  const src = join(dir, 'src');
  const store = join(dir, 'store');
  const mnt = join(dir, 'mnt');
  const size = 24 * 1024 * 1024;
  let writer: ReturnType<typeof spawn> | null = null;
  let mounted = false;
  try {
    mkdirSync(src);
    mkdirSync(mnt);
    writeFileSync(join(src, 'steady'), bytes(200_000, 'steady'));
    writeFileSync(join(src, 'victim'), bytes(size, 'A'));
    // Rewrites the file in place, 1 MiB at a time, alternately with two contents: never the same size change, always new bytes.
    const rewrite = join(dir, 'rewrite.mjs');
    writeFileSync(
      rewrite,
      `import { openSync, writeSync } from 'node:fs';
import crypto from 'node:crypto';
const gen = (seed) => { const key = crypto.createHash('sha256').update(seed).digest().subarray(0, 16); return crypto.createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(${size})); };
const contents = [gen('A'), gen('B')];
const fd = openSync(${JSON.stringify(join(src, 'victim'))}, 'r+');
process.stdout.write('ready\\n');
for (let round = 1; ; round++) {
  const c = contents[round % 2];
  for (let off = 0; off < c.length; off += 1 << 20) writeSync(fd, c, off, 1 << 20, off);
}
`,
    );
    writer = spawn(process.execPath, [rewrite], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      writer!.stdout!.once('data', () => resolve());
      writer!.once('exit', (code) => reject(new Error(`rewriter exited with ${code}`)));
    });
    const image = join(dir, 'img.cfs');
    for (let i = 0; i < 4; i++) {
      const r = spawnSync(cliPath('mkcomposefs'), [`--digest-store=${store}`, src, image], { encoding: 'utf8' });
      if (r.status !== 0) assert.match(r.stderr, /^mkcomposefs: .*victim: file changed during the scan\n$/, 'a failed build says why, on one line');
    }
    writer.kill('SIGKILL');
    await new Promise((resolve) => writer!.once('exit', resolve));
    writer = null;
    // Every object's content has the digest its name spells (fsverity-utils computes it).
    verifyObjects(store, storeFiles(store));
    // A clean build into the same store now succeeds, and the mounted file is the source.
    const r = spawnSync(cliPath('mkcomposefs'), [`--digest-store=${store}`, src, image], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    verifyObjects(store, storeFiles(store));
    if (!isRoot) return t.skip('not root: the mounted content is not checked');
    const m = spawnSync(cliPath('cfs'), ['mount', '-o', `basedir=${store}`, image, mnt], { encoding: 'utf8' });
    assert.equal(m.status, 0, m.stderr);
    mounted = true;
    assert.ok(readFileSync(join(mnt, 'victim')).equals(readFileSync(join(src, 'victim'))), 'the mounted file is the source file');
    assert.ok(readFileSync(join(mnt, 'steady')).equals(readFileSync(join(src, 'steady'))));
  } finally {
    writer?.kill('SIGKILL');
    if (mounted) spawnSync(cliPath('cfs'), ['umount', mnt]);
    rmSync(dir, { recursive: true, force: true });
  }
});
