import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, symlinkSync, linkSync, truncateSync, utimesSync, writeFileSync, writeSync, appendFileSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { scanDirectory } from '../src/scan/index.js';
import { ComposefsError } from '../src/errors.js';
import { S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK, walk, type Inode } from '../src/tree/model.js';
import { makedev } from '../src/sys/fs.js';
import { digestToHex } from '../src/fsverity/index.js';
import { digestToObjectPath } from '../src/store/layout.js';
import { writeImage } from '../src/erofs/writer.js';
import { fsverityDigest } from '../src/fsverity/index.js';
import { cliPath, conformanceDir, isRoot, NO_CONFORMANCE } from './helpers/paths.js';
import { writeDump } from '../src/dumpfile/write.js';

/* What real tools (GNU find, getfattr, fsverity-utils) say about a tree,
   keyed by path relative to it (latin1 strings: any byte survives). */
interface ToolEntry {
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtimeSec: number;
  mtimeNsec: number;
  links: number;
  target: Buffer | null;
  xattrs: Map<string, Buffer>;
  /** fs-verity digest (hex) of regular files. */
  digest: string | null;
}

const TYPES: Record<string, number> = { f: S_IFREG, d: S_IFDIR, l: S_IFLNK, p: S_IFIFO, s: S_IFSOCK, c: S_IFCHR, b: S_IFBLK };

function splitNul(buf: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let start = 0;
  for (let i = 0; i < buf.length; i++) {
    if (buf[i] === 0) {
      out.push(buf.subarray(start, i));
      start = i + 1;
    }
  }
  return out;
}

/** Undo getfattr's escaping of file names: `\ooo` octal and `\\`. */
function unescapeGetfattr(s: Buffer): Buffer {
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    if (s[i] === 0x5c && i + 1 < s.length) {
      if (s[i + 1] === 0x5c) {
        out.push(0x5c);
        i++;
        continue;
      }
      const oct = s.subarray(i + 1, i + 4).toString('latin1');
      if (/^[0-7]{3}$/.test(oct)) {
        out.push(parseInt(oct, 8));
        i += 3;
        continue;
      }
    }
    out.push(s[i]);
  }
  return Buffer.from(out);
}

function toolView(dir: string): Map<string, ToolEntry> {
  const view = new Map<string, ToolEntry>();
  const found = execFileSync('find', [dir, '-printf', '%P\\0%y\\0%m\\0%U\\0%G\\0%s\\0%T@\\0%l\\0%n\\0'], { maxBuffer: 1 << 28 });
  const f = splitNul(found);
  for (let i = 0; i + 9 <= f.length; i += 9) {
    const rel = f[i].toString('latin1');
    const [whole, frac = ''] = f[i + 6].toString().split('.');
    const type = TYPES[f[i + 1].toString()];
    view.set(rel, {
      mode: type | parseInt(f[i + 2].toString(), 8),
      uid: Number(f[i + 3].toString()),
      gid: Number(f[i + 4].toString()),
      size: Number(f[i + 5].toString()),
      mtimeSec: Number(whole),
      mtimeNsec: Number((frac + '000000000').slice(0, 9)),
      links: Number(f[i + 8].toString()),
      target: type === S_IFLNK ? Buffer.from(f[i + 7]) : null,
      xattrs: new Map(),
      digest: null,
    });
  }
  // All xattrs of every entry, symlinks' own included.
  const attrs = execFileSync('getfattr', ['-R', '-P', '-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', dir], { maxBuffer: 1 << 28 });
  let current: ToolEntry | null = null;
  const prefix = Buffer.from(`# file: ${dir}`);
  for (const line of splitLines(attrs)) {
    if (line.subarray(0, prefix.length).equals(prefix)) {
      let rel = unescapeGetfattr(line.subarray(prefix.length));
      if (rel[0] === 0x2f) rel = rel.subarray(1);
      current = view.get(rel.toString('latin1')) ?? null;
      continue;
    }
    const s = line.toString('latin1');
    const eq = s.indexOf('=');
    if (current && eq > 0) {
      const v = s.slice(eq + 1);
      current.xattrs.set(s.slice(0, eq), v.startsWith('0x') ? Buffer.from(v.slice(2), 'hex') : Buffer.alloc(0));
    } else if (current && s.length > 0 && !s.startsWith('#')) current.xattrs.set(s, Buffer.alloc(0));
  }
  // fs-verity digests, NUL-separated so that any name survives.
  const digests = execFileSync(
    'find',
    [dir, '-type', 'f', '-exec', 'sh', '-c', 'for f; do printf "%s\\0%s\\0" "$(fsverity digest "$f" | head -c 71)" "$f"; done', 'sh', '{}', '+'],
    { maxBuffer: 1 << 28 },
  );
  const d = splitNul(digests);
  const dirPrefix = Buffer.from(dir.endsWith('/') ? dir : `${dir}/`);
  for (let i = 0; i + 2 <= d.length; i += 2) {
    const rel = d[i + 1].subarray(dirPrefix.length).toString('latin1');
    const e = view.get(rel);
    if (e) e.digest = d[i].toString().replace(/^sha256:/, '');
  }
  return view;
}

function splitLines(buf: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let start = 0;
  for (let i = 0; i < buf.length; i++) {
    if (buf[i] === 0x0a) {
      out.push(buf.subarray(start, i));
      start = i + 1;
    }
  }
  if (start < buf.length) out.push(buf.subarray(start));
  return out;
}

/** Major and minor device numbers of `path` (ASCII names only), from stat(1). */
function deviceNumbers(path: string): [number, number] {
  const out = execFileSync('stat', ['--printf', '%t %T', path], { encoding: 'utf8' });
  const [maj, min] = out.split(' ').map((h) => parseInt(h, 16));
  return [maj, min];
}


const b = (s: string) => Buffer.from(s, 'latin1');

/** A tree with every kind of entry this user can make; devices and owners only as root. */
function makeSourceTree(dir: string): void {
  mkdirSync(join(dir, 'sub/deeper'), { recursive: true });
  chmodSync(join(dir, 'sub'), 0o750);
  const sizes: Record<string, number> = { empty: 0, one: 1, s64: 64, s65: 65, page: 4096, big: 1024 * 1024 + 1 };
  for (const [name, size] of Object.entries(sizes)) {
    const data = Buffer.alloc(size);
    for (let i = 0; i < size; i++) data[i] = (i * 7 + size) & 0xff;
    writeFileSync(join(dir, name), data);
  }
  writeFileSync(join(dir, 'sub/deeper/dup-of-s65'), readFileSync(join(dir, 's65')));
  chmodSync(join(dir, 'one'), 0o4755);
  linkSync(join(dir, 'big'), join(dir, 'sub/big-link'));
  linkSync(join(dir, 's64'), join(dir, 's64-link'));
  const fd = openSync(join(dir, 'sparse'), 'w');
  writeSync(fd, Buffer.from('tail'), 0, 4, 5 * 1024 * 1024);
  closeSync(fd);
  symlinkSync('target/../with/dots', join(dir, 'link'));
  symlinkSync('x'.repeat(1000), join(dir, 'sub/longlink'));
  execFileSync('mkfifo', [join(dir, 'fifo')]);
  execFileSync('python3', ['-c', 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', join(dir, 'sock')]);
  // Names with any byte but / and NUL.
  const odd = [Buffer.from([0x66, 0xff, 0xfe]), b('new\nline'), b('sp ace'), b('back\\slash'), b('z'.repeat(255)), Buffer.from('ünï', 'utf8')];
  for (const name of odd) writeFileSync(Buffer.concat([b(dir + '/sub/'), name]), name);
  execFileSync('setfattr', ['-n', 'user.plain', '-v', 'value', join(dir, 's65')]);
  execFileSync('setfattr', ['-n', 'user.bin', '-v', '0x00ff0102', join(dir, 's65')]);
  execFileSync('setfattr', ['-n', 'user.empty', join(dir, 'sub')]);
  execFileSync('setfattr', ['-n', 'user.on-dir', '-v', 'd', dir]);
  if (isRoot) {
    execFileSync('setfattr', ['-n', 'trusted.secret', '-v', 'T', join(dir, 's65')]);
    execFileSync('setfattr', ['-h', '-n', 'trusted.on-link', '-v', 'L', join(dir, 'link')]);
    execFileSync('setfattr', ['-n', 'trusted.overlay.opaque', '-v', 'y', join(dir, 'sub')]);
    execFileSync('mknod', [join(dir, 'chr'), 'c', '1', '3']);
    execFileSync('mknod', [join(dir, 'blk'), 'b', '7', '300']);
    execFileSync('mknod', ['-m', '000', join(dir, 'whiteout'), 'c', '0', '0']);
    execFileSync('chown', ['-h', '12345678:54321', join(dir, 'page'), join(dir, 'link')]);
  }
  // Times with nanoseconds, some before 1970; directories last so they stick.
  execFileSync('touch', ['-h', '-d', '2001-02-03 04:05:06.123456789', join(dir, 'link')]);
  utimesSync(join(dir, 'empty'), -1000.25, -1000.25);
  execFileSync('touch', ['-d', '2020-01-01 00:00:00.000000001', join(dir, 's65'), join(dir, 'sub/deeper'), dir]);
}

function relOf(path: Buffer): string {
  return path.length === 1 ? '' : path.subarray(1).toString('latin1');
}

/** Check every entry of the scanned tree against the tools' view, the reference's rules applied. */
function checkAgainstTools(root: Inode, view: Map<string, ToolEntry>, opts: { useEpoch?: boolean; skipXattrs?: boolean; userXattrs?: boolean; skipDevices?: boolean } = {}): void {
  const seen = new Set<string>();
  walk(root, (path, inode, dirent) => {
    const rel = relOf(path);
    seen.add(rel);
    const t = view.get(rel);
    assert.ok(t, `scanned ${JSON.stringify(rel)} which the tools do not list`);
    assert.equal(inode.mode, t.mode, `${rel}: mode`);
    assert.equal(inode.uid, t.uid, `${rel}: uid`);
    assert.equal(inode.gid, t.gid, `${rel}: gid`);
    if (opts.useEpoch) assert.deepEqual([inode.mtimeSec, inode.mtimeNsec], [0, 0], `${rel}: epoch mtime`);
    else assert.deepEqual([inode.mtimeSec, inode.mtimeNsec], [t.mtimeSec, t.mtimeNsec], `${rel}: mtime`);
    if (dirent) assert.equal(dirent.hardlink, false, `${rel}: the reference never makes hard links from a directory`);
    const type = inode.mode & S_IFMT;
    if (type !== S_IFDIR) assert.equal(inode.nlink, 1, `${rel}: nlink stays 1 as in the reference`);
    // xattrs: all the tools list, or only user.*, or none; sorted by name.
    let want = [...t.xattrs.entries()];
    if (opts.skipXattrs) want = [];
    if (opts.userXattrs) want = want.filter(([k]) => k.startsWith('user.'));
    want.sort(([x], [y]) => Buffer.compare(b(x), b(y)));
    assert.deepEqual(inode.xattrs.map((x) => [x.key.toString('latin1'), x.value.toString('hex')]), want.map(([k, v]) => [k, v.toString('hex')]), `${rel}: xattrs`);
    if (type === S_IFDIR) {
      const names = inode.children!.map((c) => c.name);
      assert.deepEqual(names, [...names].sort(Buffer.compare), `${rel}: children sorted by bytes`);
    } else if (type === S_IFLNK) {
      assert.deepEqual(inode.payload, t.target, `${rel}: symlink target`);
      assert.equal(inode.size, t.target!.length, `${rel}: symlink size`);
    } else if (type === S_IFREG) {
      assert.equal(inode.size, t.size, `${rel}: size`);
      if (t.size === 0) {
        assert.deepEqual([inode.digest, inode.payload, inode.content], [null, null, null], `${rel}: empty file has no digest, payload or content`);
      } else {
        assert.equal(digestToHex(inode.digest!), t.digest, `${rel}: fs-verity digest`);
        assert.equal(inode.payload!.toString(), digestToObjectPath(inode.digest!), `${rel}: payload is the object path`);
        if (t.size <= 64) assert.ok(inode.content && inode.content.length === t.size, `${rel}: inlined`);
        else assert.equal(inode.content, null, `${rel}: not inlined`);
      }
    } else if (type === S_IFCHR || type === S_IFBLK) {
      assert.ok(!opts.skipDevices, `${rel}: devices are skipped`);
    } else {
      assert.ok(type === S_IFIFO || type === S_IFSOCK, `${rel}: type`);
    }
  });
  for (const [rel, t] of view) {
    const type = t.mode & S_IFMT;
    if (opts.skipDevices && (type === S_IFCHR || type === S_IFBLK)) continue;
    assert.ok(seen.has(rel), `the tools list ${JSON.stringify(rel)} but the scan missed it`);
  }
}

function find(root: Inode, rel: string): Inode {
  let node = root;
  for (const part of rel.split('/')) {
    const e = node.children!.find((c) => c.name.toString('latin1') === part);
    assert.ok(e, `no ${rel}`);
    node = e.inode;
  }
  return node;
}

test('scanning a tree gives what lstat, getfattr and fsverity say, by the reference rules', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-scan-'));
  try {
    makeSourceTree(dir);
    const view = toolView(dir);
    const { root, stats } = await scanDirectory(dir, { threads: 2 });
    checkAgainstTools(root, view);
    assert.equal(stats.entries, view.size);
    assert.equal(stats.files, [...view.values()].filter((t) => (t.mode & S_IFMT) === S_IFREG).length);
    // Hard links: separate inodes with nlink 1, same digest, content read once.
    const big = find(root, 'big');
    const bigLink = find(root, 'sub/big-link');
    assert.notEqual(big, bigLink);
    assert.deepEqual(big.digest, bigLink.digest);
    assert.deepEqual(find(root, 's64').content, find(root, 's64-link').content);
    assert.equal(stats.bytesHashed, [...view.values()].filter((t) => (t.mode & S_IFMT) === S_IFREG && t.links === 1).reduce((n, t) => n + t.size, 0) + 64 + 1024 * 1024 + 1);
    // Inlined content is the file's bytes; the sparse file reads as zeros with its tail.
    assert.deepEqual(find(root, 's64').content, readFileSync(join(dir, 's64')));
    assert.equal(find(root, 'sparse').size, 5 * 1024 * 1024 + 4);
    if (isRoot) {
      const chr = find(root, 'chr');
      assert.equal(chr.rdev, makedev(...deviceNumbers(join(dir, 'chr'))));
      assert.equal(find(root, 'blk').rdev, makedev(7, 300));
      const wh = find(root, 'whiteout');
      assert.deepEqual([wh.mode, wh.rdev], [S_IFCHR, 0]);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('--use-epoch, --skip-xattrs, --user-xattrs and --skip-devices mean what they mean for the reference', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-scan-'));
  try {
    makeSourceTree(dir);
    const view = toolView(dir);
    for (const opts of [{ useEpoch: true }, { skipXattrs: true }, { userXattrs: true }, { skipDevices: true }, { useEpoch: true, skipDevices: true, userXattrs: true }]) {
      const { root } = await scanDirectory(dir, { ...opts, threads: 1 });
      checkAgainstTools(root, view, opts);
    }
    await assert.rejects(scanDirectory(dir, { skipXattrs: true, userXattrs: true }), ComposefsError);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a missing or non-directory source is a one-line error naming it', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-scan-'));
  try {
    await assert.rejects(scanDirectory(join(dir, 'nope'), {}), (e: Error) => e instanceof ComposefsError && /^error accessing .*nope: No such file or directory$/.test(e.message));
    writeFileSync(join(dir, 'file'), 'x');
    await assert.rejects(scanDirectory(join(dir, 'file'), {}), (e: Error) => e instanceof ComposefsError && /file: Not a directory$/.test(e.message));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('an unreadable file or directory is a one-line error naming it', async (t) => {
  // As root nothing is unreadable: run the scan as nobody then.
  const asUser = isRoot ? (existsSync('/usr/bin/setpriv') ? ['/usr/bin/setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--'] : null) : [];
  if (!asUser) return t.skip('root without setpriv(1): cannot drop privileges to test permissions');
  const dir = mkdtempSync(join(tmpdir(), 'cfs-scan-'));
  try {
    chmodSync(dir, 0o755);
    const mod = new URL('../src/scan/index.js', import.meta.url).pathname;
    const script = join(dir, 'run.mjs');
    writeFileSync(script, `const { scanDirectory } = await import(${JSON.stringify(mod)});\ntry { await scanDirectory(process.argv[2], {}); console.log('ok'); } catch (e) { console.log(e.name + ': ' + e.message); }\n`);
    const run = (src: string) => execFileSync(asUser[0] ?? process.execPath, [...asUser.slice(1), ...(asUser.length ? [process.execPath] : []), script, src], { encoding: 'utf8' }).trim();
    mkdirSync(join(dir, 'src1/sub'), { recursive: true });
    writeFileSync(join(dir, 'src1/sub/secret'), 'x'.repeat(100));
    chmodSync(join(dir, 'src1/sub/secret'), 0o000);
    assert.equal(run(join(dir, 'src1')), `ScanError: cannot read ${join(dir, 'src1/sub/secret')}: Permission denied`);
    mkdirSync(join(dir, 'src2/locked'), { recursive: true });
    chmodSync(join(dir, 'src2/locked'), 0o000);
    assert.equal(run(join(dir, 'src2')), `ScanError: error accessing ${join(dir, 'src2/locked')}: Permission denied`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/**
 * A tree whose one worker is busy with a big sparse file for a while after
 * the (tiny) scan has listed `sub/victim`: whatever `meddle` does to the
 * victim then happens between the listing and the read.
 */
async function faultDuringScan(meddle: (victim: string) => void): Promise<unknown> {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-scan-'));
  try {
    writeFileSync(join(dir, 'aaa-big'), '');
    truncateSync(join(dir, 'aaa-big'), 1536 * 1024 * 1024); // root files are queued before sub/'s
    mkdirSync(join(dir, 'sub'));
    const victim = join(dir, 'sub', 'victim');
    writeFileSync(victim, 'x'.repeat(1000));
    const scan = scanDirectory(dir, { threads: 1 });
    await new Promise((r) => setTimeout(r, 300));
    meddle(victim);
    try {
      await scan;
      return null;
    } catch (e) {
      return e;
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('a file that vanishes during the scan is a clear error naming it', async () => {
  const err = await faultDuringScan((victim) => unlinkSync(victim));
  assert.ok(err instanceof ComposefsError, `expected a ComposefsError, got ${String(err)}`);
  assert.match((err as Error).message, /sub\/victim: No such file or directory \(it vanished during the scan\)$/);
  assert.doesNotMatch((err as Error).message, /\n/);
});

test('a file that changes during the scan is a clear error naming it', async () => {
  const err = await faultDuringScan((victim) => appendFileSync(victim, 'more'));
  assert.ok(err instanceof ComposefsError, `expected a ComposefsError, got ${String(err)}`);
  assert.match((err as Error).message, /sub\/victim: file changed during the scan/);
  const err2 = await faultDuringScan((victim) => writeFileSync(victim, 'y'.repeat(1000)));
  assert.ok(err2 instanceof ComposefsError, `expected a ComposefsError, got ${String(err2)}`);
  assert.match((err2 as Error).message, /sub\/victim: file changed during the scan/);
});

test('the progress line shows on a terminal, and nothing otherwise', { skip: existsSync('/usr/bin/script') ? false : 'no script(1): no pseudo-terminal to test the progress display' }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-scan-'));
  try {
    writeFileSync(join(dir, 'big'), '');
    truncateSync(join(dir, 'big'), 1024 * 1024 * 1024);
    const mod = new URL('../src/scan/index.js', import.meta.url).pathname;
    const script = join(dir, 'run.mjs');
    writeFileSync(script, `const { scanDirectory } = await import(${JSON.stringify(mod)});\nawait scanDirectory(${JSON.stringify(dir + '/big')}.slice(0, -4), { progress: true, threads: 1 });\n`);
    const run = (args: string[]) =>
      new Promise<string>((resolve, reject) => {
        const p = spawn(args[0], args.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        p.stdout.on('data', (d) => (out += d));
        p.stderr.on('data', (d) => (out += d));
        p.on('error', reject);
        p.on('close', () => resolve(out));
      });
    const node = process.execPath;
    const onTty = await run(['script', '-qec', `${node} ${script}`, '/dev/null']);
    // Files done/total, bytes done/total, a rate, and once the scan is over, the time left.
    assert.match(onTty, /\r\x1b\[K\d+\/2 files, [1-9][\d.]* MB\/1\.1 GB, [1-9][\d.]* [KMG]?B\/s, \d+:\d\d left/);
    assert.ok(onTty.endsWith('\r\x1b[K'), 'the line is erased at the end');
    const offTty = await run([node, script]);
    assert.equal(offTty, '');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('conformance: images of gentree.py trees have the reference digests', async (t) => {
  const conf = conformanceDir();
  if (!conf) return t.skip(NO_CONFORMANCE);
  if (!isRoot) return t.skip('not root: gentree.py trees need devices, whiteouts and trusted.* xattrs');
  const lines = readFileSync(join(conf, 'generated', 'trees.txt'), 'utf8').trim().split('\n');
  for (const line of lines) {
    const [seed, entries, want] = line.split(/\s+/);
    const dir = mkdtempSync(join(tmpdir(), 'cfs-gentree-'));
    try {
      execFileSync(join(conf, 'gentree.py'), [join(dir, 't'), '--seed', seed, '--entries', entries]);
      const { root } = await scanDirectory(join(dir, 't'), {});
      const image = writeImage(root);
      assert.equal(digestToHex(fsverityDigest(image)), want, `gentree seed ${seed}, ${entries} entries`);
      // The drop-in prints the same digest, and our dump of the tree builds the same image.
      const printed = execFileSync(cliPath('cfs'), ['mkcomposefs', '--print-digest-only', join(dir, 't')], { encoding: 'utf8' });
      assert.equal(printed.trim(), want, `cfs mkcomposefs --print-digest-only, seed ${seed}`);
      const fromDump = execFileSync(cliPath('mkcomposefs'), ['--from-file', '-', '-'], { input: writeDump(root), maxBuffer: 1 << 28 });
      assert.ok(fromDump.equals(image), `--from-file of our dump of seed ${seed} gives the same image`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
});
