/**
 * The object store API itself (src/store/objects.ts), the one way both the
 * scan and the pull publish an object: publish, the rule for a name that
 * exists (right size trusted, wrong size replaced, content checked when
 * asked), concurrent publishers, fs-verity where the file system has it (and
 * "not enabled", never an error, where it has not), links refused. Expected
 * names come from fsverity-utils, never from the code under test.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { closeSync, constants, existsSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import crypto from 'node:crypto';
import { ObjectStore, StoreError, INLINE_LIMIT } from '../src/store/objects.js';
import { gzip, makeTar, type TarEntry } from './helpers/tar-writer.js';
import { gzLayer, writeLayout } from './helpers/oci-layout.js';
import { cliPath } from './helpers/paths.js';
import { ok } from './helpers/cli.js';
import { inTemp } from './helpers/temp.js';

const haveFsverity = existsSync('/usr/bin/fsverity');
const skipNoTool = haveFsverity ? false : 'no /usr/bin/fsverity: expected names come from it';
const objectsModule = new URL('../src/store/objects.js', import.meta.url).pathname;

function bytes(size: number, seed: string): Buffer {
  const key = crypto.createHash('sha256').update(seed).digest().subarray(0, 16);
  return crypto.createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(size));
}

/** The fs-verity digests of `contents`, by fsverity-utils (written to files under `dir` for it). */
function digestsByTool(dir: string, contents: Buffer[]): string[] {
  mkdirSync(dir, { recursive: true });
  const files = contents.map((c, i) => {
    const f = join(dir, `c${i}`);
    writeFileSync(f, c);
    return f;
  });
  const out = execFileSync('fsverity', ['digest', '--compact', ...files], { encoding: 'utf8', maxBuffer: 1 << 26 });
  return out.trim().split('\n');
}

function objectPath(store: string, hex: string): string {
  return join(store, hex.slice(0, 2), hex.slice(2));
}

/** Every entry of the store: XX/ directories holding only 62-hex names (no temporaries left). */
function storeEntries(store: string): string[] {
  const out: string[] = [];
  for (const d of readdirSync(store)) {
    assert.match(d, /^[0-9a-f]{2}$/, `unexpected entry ${d} in the store`);
    for (const f of readdirSync(join(store, d))) {
      assert.match(f, /^[0-9a-f]{62}$/, `unexpected entry ${d}/${f} in the store`);
      out.push(d + f);
    }
  }
  return out.sort();
}

/** Whether fs-verity is on for `file`, by fsverity-utils. */
function verityOn(file: string): boolean {
  return spawnSync('fsverity', ['measure', file], { encoding: 'utf8' }).status === 0;
}

const withTemp = (fn: (dir: string) => Promise<void> | void) => inTemp('objstore', fn);

test(
  'publish: bytes, a stream and a file copy each land under the digest fsverity-utils gives, mode 0644, fs-verity on or reported not enabled',
  { skip: skipNoTool },
  withTemp((dir) => {
    const root = join(dir, 'objects');
    const store = new ObjectStore(root);
    store.prepare();
    try {
      const contents = [bytes(INLINE_LIMIT + 1, 'a'), bytes(4096, 'b'), bytes(3 << 20, 'c')];
      const [ha, hb, hc] = digestsByTool(join(dir, 'src'), contents);
      const a = store.putBytes(contents[0]);
      assert.equal(a.digest.toString('hex'), ha);
      assert.equal(a.written, contents[0].length);
      const d = store.draft('stream');
      for (let off = 0; off < contents[1].length; off += 1000) d.write(contents[1].subarray(off, off + 1000));
      const b = d.commit();
      assert.equal(b.digest.toString('hex'), hb);
      const fd = openSync(join(dir, 'src', 'c2'), constants.O_RDONLY);
      let c;
      try {
        c = store.addCopy(fd, contents[2].length, 'c2');
      } finally {
        closeSync(fd);
      }
      assert.ok(c);
      assert.equal(c.digest.toString('hex'), hc);
      for (const [hex, content, r] of [[ha, contents[0], a], [hb, contents[1], b], [hc, contents[2], c]] as const) {
        const p = objectPath(root, hex);
        assert.deepEqual(readFileSync(p), content);
        assert.equal(statSync(p).mode & 0o7777, 0o644);
        // What the store says of fs-verity is what the kernel holds: on where the file system can, else "not enabled" and no error.
        assert.equal(r.verity, verityOn(p), `${hex}: reported verity ${r.verity}`);
      }
      assert.deepEqual(storeEntries(root), [ha, hb, hc].sort());
      // Published again: nothing written, nothing new.
      assert.equal(store.putBytes(contents[0]).written, 0);
      assert.deepEqual(storeEntries(root), [ha, hb, hc].sort());
    } finally {
      store.close();
    }
  }),
);

test(
  'an existing name: the right size is trusted, a wrong size is replaced, and with existing: content a wrong content is replaced',
  { skip: skipNoTool },
  withTemp((dir) => {
    const root = join(dir, 'objects');
    const contents = [bytes(5000, 'x'), bytes(6000, 'y'), bytes(7000, 'z'), bytes(2 << 20, 'w')];
    const [hx, hy, hz, hw] = digestsByTool(join(dir, 'src'), contents);
    for (const h of [hx, hy, hz, hw]) mkdirSync(join(root, h.slice(0, 2)), { recursive: true });
    const sameSizeWrong = bytes(5000, 'not x');
    writeFileSync(objectPath(root, hx), sameSizeWrong);
    writeFileSync(objectPath(root, hy), contents[1].subarray(0, 100)); // crash debris
    writeFileSync(objectPath(root, hz), bytes(7000, 'not z'));
    writeFileSync(objectPath(root, hw), contents[3].subarray(0, 4096)); // debris of a large, streamed object
    const store = new ObjectStore(root);
    try {
      assert.equal(store.putBytes(contents[0]).written, 0, 'right size: trusted');
      assert.deepEqual(readFileSync(objectPath(root, hx)), sameSizeWrong);
      assert.equal(store.putBytes(contents[1]).written, 6000, 'wrong size: replaced');
      assert.deepEqual(readFileSync(objectPath(root, hy)), contents[1]);
      const d = store.draft('stream');
      d.write(contents[3]);
      assert.equal(d.commit().written, 2 << 20, 'wrong size, streamed: replaced');
      assert.deepEqual(readFileSync(objectPath(root, hw)), contents[3]);
    } finally {
      store.close();
    }
    const repairing = new ObjectStore(root, null, { existing: 'content' });
    try {
      assert.equal(repairing.putBytes(contents[2]).written, 7000, 'wrong content of the right size: replaced when asked');
      assert.deepEqual(readFileSync(objectPath(root, hz)), contents[2]);
      assert.equal(repairing.putBytes(contents[2]).written, 0, 'the right content: kept');
    } finally {
      repairing.close();
    }
    assert.deepEqual(storeEntries(root), [hx, hy, hz, hw].sort());
  }),
);

test(
  'concurrent publishers of the same objects, in four processes, all succeed and leave one correct object each and no temporary',
  { skip: skipNoTool },
  withTemp(async (dir) => {
    const root = join(dir, 'objects');
    mkdirSync(root);
    const count = 300;
    const script = join(dir, 'publish.mjs');
    writeFileSync(
      script,
      `const { ObjectStore } = await import(${JSON.stringify(objectsModule)});
const crypto = await import('node:crypto');
const seed = Number(process.argv[2]);
function bytes(size, s) {
  const key = crypto.createHash('sha256').update(s).digest().subarray(0, 16);
  return crypto.createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(size));
}
const order = Array.from({ length: ${count} }, (_, i) => i).sort((a, b) => ((a * 7919 + seed * 104729) % ${count}) - ((b * 7919 + seed * 104729) % ${count}));
const store = new ObjectStore(process.argv[3]);
let written = 0;
for (const i of order) {
  const c = bytes(65 + i * 97, 'obj' + i);
  if (i % 5 === 0) { const d = store.draft('o' + i); d.write(c.subarray(0, 50)); d.write(c.subarray(50)); written += d.commit().written > 0 ? 1 : 0; }
  else written += store.putBytes(c).written > 0 ? 1 : 0;
}
store.close();
process.stdout.write(String(written));
`,
    );
    const runs = await Promise.all(
      [1, 2, 3, 4].map(
        (seed) =>
          new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
            const p = spawn(process.execPath, [script, String(seed), root], { stdio: ['ignore', 'pipe', 'pipe'] });
            let out = '';
            let err = '';
            p.stdout.on('data', (d) => (out += d));
            p.stderr.on('data', (d) => (err += d));
            const timer = setTimeout(() => p.kill('SIGKILL'), 60_000);
            p.on('close', (code) => {
              clearTimeout(timer);
              resolve({ code, out, err });
            });
          }),
      ),
    );
    for (const r of runs) assert.equal(r.code, 0, r.err);
    // Each object was linked by exactly one of them.
    assert.equal(runs.reduce((n, r) => n + Number(r.out), 0), count);
    const contents = Array.from({ length: count }, (_, i) => bytes(65 + i * 97, `obj${i}`));
    const want = digestsByTool(join(dir, 'src'), contents);
    assert.deepEqual(storeEntries(root), [...want].sort());
    for (let i = 0; i < count; i += 37) assert.deepEqual(readFileSync(objectPath(root, want[i])), contents[i]);
  }),
);

test(
  'links refused: an XX/ planted as a link to elsewhere fails the publish naming it, and an object name planted as a link is replaced, never written through',
  withTemp((dir) => {
    const root = join(dir, 'objects');
    const outside = join(dir, 'outside');
    mkdirSync(root);
    mkdirSync(outside);
    const content = bytes(9000, 'link');
    const probe = new ObjectStore(join(dir, 'probe'));
    probe.prepare();
    const hex = probe.putBytes(content).digest.toString('hex');
    probe.close();
    symlinkSync(outside, join(root, hex.slice(0, 2)));
    const store = new ObjectStore(root);
    try {
      assert.throws(
        () => store.putBytes(content),
        (err: unknown) => err instanceof StoreError && /objects\/[0-9a-f]{2}: it is a symbolic link, not a directory/.test(err.message),
      );
      const d = store.draft('stream');
      d.write(content);
      assert.throws(() => d.commit(), StoreError);
      assert.deepEqual(readdirSync(outside), [], 'nothing written through the link');
      // Now the name itself is a link to a file outside, of the right size even.
      rmSync(join(root, hex.slice(0, 2)));
      mkdirSync(join(root, hex.slice(0, 2)));
      const victim = join(outside, 'victim');
      writeFileSync(victim, bytes(9000, 'victim'));
      symlinkSync(victim, objectPath(root, hex));
      assert.equal(store.putBytes(content).written, 9000);
      assert.ok(lstatSync(objectPath(root, hex)).isFile(), 'the link was replaced by the object');
      assert.deepEqual(readFileSync(objectPath(root, hex)), content);
      assert.deepEqual(readFileSync(victim), bytes(9000, 'victim'), 'its target untouched');
      assert.deepEqual(readdirSync(outside), ['victim']);
    } finally {
      store.close();
    }
  }),
);

const T = 1700000000;

test(
  'cfs pull applies the same rule: objects of the wrong size or planted links under the names it needs are replaced, not trusted',
  { skip: skipNoTool },
  withTemp((dir) => {
    const small = bytes(3000, 'pull-small');
    const large = bytes(3 << 20, 'pull-large'); // streamed, not buffered
    const linked = bytes(5000, 'pull-linked');
    const [hs, hl, hk] = digestsByTool(join(dir, 'src'), [small, large, linked]);
    const entries: TarEntry[] = [
      { path: './', type: 'dir', mtime: T },
      { path: 'small', data: small, mtime: T },
      { path: 'large', data: large, mtime: T },
      { path: 'linked', data: linked, mtime: T },
    ];
    const tar = makeTar(entries);
    const layout = join(dir, 'layout');
    writeLayout(layout, 'img', [gzLayer(tar, gzip(tar))]);
    const repo = join(dir, 'repo');
    const objects = join(repo, 'objects');
    // A first pull makes the repository; the image and its objects then go, and debris is planted in their place.
    ok(spawnSync(cliPath('cfs'), ['pull', '--quiet', '--repo', repo, `oci:${layout}:img`, 'first'], { encoding: 'utf8' }));
    ok(spawnSync(cliPath('cfs'), ['rm', '--repo', repo, 'first'], { encoding: 'utf8' }));
    ok(spawnSync(cliPath('cfs'), ['gc', '--repo', repo], { encoding: 'utf8' }));
    const victim = join(dir, 'victim');
    writeFileSync(victim, bytes(5000, 'victim'));
    for (const h of [hs, hl, hk]) mkdirSync(join(objects, h.slice(0, 2)), { recursive: true });
    writeFileSync(objectPath(objects, hs), small.subarray(0, 10));
    writeFileSync(objectPath(objects, hl), large.subarray(0, 4096));
    symlinkSync(victim, objectPath(objects, hk));
    ok(spawnSync(cliPath('cfs'), ['pull', '--quiet', '--repo', repo, `oci:${layout}:img`, 'second'], { encoding: 'utf8' }));
    assert.deepEqual(readFileSync(objectPath(objects, hs)), small);
    assert.deepEqual(readFileSync(objectPath(objects, hl)), large);
    assert.ok(lstatSync(objectPath(objects, hk)).isFile());
    assert.deepEqual(readFileSync(objectPath(objects, hk)), linked);
    assert.deepEqual(readFileSync(victim), bytes(5000, 'victim'));
    const fsck = spawnSync(cliPath('cfs'), ['fsck', '--repo', repo], { encoding: 'utf8' });
    assert.equal(fsck.status, 0, fsck.stdout + fsck.stderr);
  }),
);
