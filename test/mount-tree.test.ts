/**
 * End to end: a random tree from gentree.py (no whiteouts), scanned with a
 * digest store, written as an image, mounted hidden: every entry equals the
 * source — type, mode, owner, size, mtime to the nanosecond, device number,
 * symlink target, every xattr, content — hard-link counts aside.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { lstatSync, readFileSync, readdirSync, readlinkSync, writeFileSync, mkdirSync, type BigIntStats } from 'node:fs';
import { join } from 'node:path';
import { conformanceDir, isRoot, NO_CONFORMANCE } from './helpers/paths.js';
import { cleanupDir, leftovers, scratch, snapshot } from './mount-fixtures.js';
import { mountComposefs, unmountComposefs } from '../src/mount/index.js';
import { scanDirectory } from '../src/scan/index.js';
import { writeImage } from '../src/erofs/writer.js';
import { readXattrs } from '../src/sys/fs.js';

const conf = conformanceDir();
const hasPython = spawnSync('python3', ['--version']).status === 0;
const SKIP = !isRoot ? 'needs root (device nodes, trusted xattrs, mounting)' : !conf ? NO_CONFORMANCE : !hasPython ? 'no python3 for gentree.py' : false;

/** What one comparison met, counted per tree so that each tree's "every kind" check stands on its own counts. */
interface Seen {
  xattrs: number;
  overlayXattrs: number;
  devices: number;
  symlinks: number;
  files: number;
}

function xattrsOf(p: Buffer): string[] {
  return readXattrs(Buffer.concat([p, Buffer.from([0])]), false)
    .map((x) => `${x.key.toString('latin1')}=${x.value.toString('hex')}`)
    .sort();
}

/** Compare `src` and `mnt` recursively; returns the number of entries compared. */
function compareTrees(src: Buffer, mnt: Buffer, seen: Seen, rel = '/'): number {
  const a: BigIntStats = lstatSync(src, { bigint: true });
  const b: BigIntStats = lstatSync(mnt, { bigint: true });
  const where = rel;
  assert.equal(b.mode, a.mode, `${where}: mode`);
  assert.equal(b.uid, a.uid, `${where}: uid`);
  assert.equal(b.gid, a.gid, `${where}: gid`);
  assert.equal(b.mtimeNs, a.mtimeNs, `${where}: mtime`);
  const xs = xattrsOf(src);
  assert.deepEqual(xattrsOf(mnt), xs, `${where}: xattrs`);
  seen.xattrs += xs.length;
  seen.overlayXattrs += xs.filter((x) => x.startsWith('trusted.overlay.')).length;
  let n = 1;
  if (a.isDirectory()) {
    const names = (p: Buffer) => (readdirSync(p, { encoding: 'buffer' }) as Buffer[]).sort(Buffer.compare);
    const an = names(src);
    const bn = names(mnt);
    assert.deepEqual(bn.map((x) => x.toString('hex')), an.map((x) => x.toString('hex')), `${where}: entries`);
    for (const name of an) {
      const slash = Buffer.from('/');
      n += compareTrees(Buffer.concat([src, slash, name]), Buffer.concat([mnt, slash, name]), seen, `${rel === '/' ? '' : rel}/${name.toString()}`);
    }
    return n;
  }
  assert.equal(b.size, a.size, `${where}: size`);
  if (a.isSymbolicLink()) seen.symlinks++;
  else if (a.isCharacterDevice() || a.isBlockDevice()) seen.devices++;
  else if (a.isFile()) seen.files++;
  if (a.isSymbolicLink()) assert.deepEqual(readlinkSync(mnt, { encoding: 'buffer' }), readlinkSync(src, { encoding: 'buffer' }), `${where}: target`);
  else if (a.isCharacterDevice() || a.isBlockDevice()) assert.equal(b.rdev, a.rdev, `${where}: rdev`);
  else if (a.isFile()) assert.ok(readFileSync(mnt).equals(readFileSync(src)), `${where}: content`);
  return n;
}

for (const [seed, entries] of [
  [1, 400],
  [7, 1500],
]) {
  test(`gentree seed ${seed}, ${entries} entries: the mounted image equals the source tree`, { skip: SKIP }, async () => {
    const dir = scratch('tree');
    try {
      const src = join(dir, 'src');
      const store = join(dir, 'objects');
      const mnt = join(dir, 'mnt');
      mkdirSync(mnt);
      const g = spawnSync('python3', [join(conf!, 'gentree.py'), src, '--seed', String(seed), '--entries', String(entries), '--no-whiteouts'], { encoding: 'utf8' });
      assert.equal(g.status, 0, g.stderr);
      const { root } = await scanDirectory(src, { digestStore: store });
      const image = join(dir, 'tree.cfs');
      writeFileSync(image, writeImage(root));
      const before = snapshot();
      const r = await mountComposefs(image, mnt, { basedir: [store] });
      try {
        assert.equal(r.layers, 'fd');
        const seen: Seen = { xattrs: 0, overlayXattrs: 0, devices: 0, symlinks: 0, files: 0 };
        const n = compareTrees(Buffer.from(src), Buffer.from(mnt), seen);
        assert.ok(n > entries / 2, `compared ${n} entries`);
        process.stdout.write(`# seed ${seed}: ${n} entries equal (${JSON.stringify(seen)}; backing ${r.backing}, layers ${r.layers})\n`);
        assert.ok(seen.xattrs > 0 && seen.overlayXattrs > 0 && seen.devices > 0 && seen.symlinks > 0 && seen.files > 0, 'the tree has every kind');
      } finally {
        unmountComposefs(mnt);
      }
      assert.deepEqual(leftovers(before), []);
    } finally {
      cleanupDir(dir);
    }
  });
}


