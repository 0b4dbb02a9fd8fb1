/**
 * What a careless or hostile caller can hand the mount (issue 9): an empty
 * mountpoint, an image rewritten while `digest=` is checked, `digest=`
 * without a way to verify objects, a sparse image made private, a FIFO as
 * the image; and several image/mountpoint pairs in one `cfs mount` call.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, statfsSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cliPath, isRoot } from './helpers/paths.js';
import { adoptChild, cleanupDir, eventually, leftovers, makeImage, scratch, snapshot, standardFiles, type Fixture } from './mount-fixtures.js';
import { mountComposefs, unmountComposefs } from '../src/mount/index.js';
import { fsverityDigestOfFileSync } from '../src/fsverity/index.js';
import { umount2, MNT_DETACH } from '../src/sys/mount.js';

const SKIP = isRoot ? false : 'mounting needs root';

function cli(args: string[], name = 'cfs', cwd?: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(cliPath(name), args, { encoding: 'utf8', cwd, timeout: 20000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function mountpointsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((p) => p && (p === dir || p.startsWith(`${dir}/`)));
}

async function withFixture(tag: string, fn: (fx: Fixture) => Promise<void> | void): Promise<void> {
  const dir = scratch(tag);
  try {
    await fn(makeImage(dir, standardFiles()));
  } finally {
    cleanupDir(dir);
  }
}

test("an empty mountpoint is refused (No such file or directory), never taken as '.'", { skip: SKIP }, async () => {
  await withFixture('empty-mnt', async (fx) => {
    const before = snapshot();
    await assert.rejects(mountComposefs(fx.image, '', { basedir: [fx.basedir] }), /mountpoint '': No such file or directory/);
    for (const name of ['cfs', 'mount.composefs']) {
      const args = name === 'cfs' ? ['mount', '-o', `basedir=${fx.basedir}`, fx.image, ''] : ['-o', `basedir=${fx.basedir}`, fx.image, ''];
      const r = cli(args, name, fx.dir);
      assert.equal(r.status, 1, `${name}: ${r.stderr}`);
      assert.match(r.stderr, /^[^\n]*No such file or directory\n$/, name);
    }
    assert.deepEqual(mountpointsUnder(fx.dir), [], 'nothing mounted on the current directory');
    assert.deepEqual(leftovers(before), []);
  });
});

test('digest= needs verified objects: the kernel rung alone refuses naming --fuse where it cannot verify them; cfs mount takes FUSE with verity; tryverity mounts', { skip: SKIP }, async () => {
  await withFixture('digest-verity', async (fx) => {
    const before = snapshot();
    const digest = fsverityDigestOfFileSync(fx.image).digest.toString('hex');
    let verified = false;
    try {
      const r = await mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir], digest });
      verified = r.verity;
      assert.equal(r.verity, true, 'digest= mounted only with overlay verity on');
      unmountComposefs(fx.mnt);
    } catch (err) {
      assert.match((err as Error).message, /^digest=: the kernel cannot verify the objects, .*fs-verity.*; the FUSE server verifies them itself \(--fuse\), or add tryverity to mount them unchecked$/);
    }
    const cliRun = cli(['mount', '--json', '-o', `basedir=${fx.basedir},digest=${digest}`, fx.image, fx.mnt]);
    assert.equal(cliRun.status, 0, cliRun.stderr);
    const mounted = JSON.parse(cliRun.stdout) as { rung: string; verity: boolean };
    try {
      assert.equal(mounted.verity, true);
      assert.equal(mounted.rung, verified ? 'kernel' : 'fuse');
      assert.equal(readFileSync(join(fx.mnt, 'small.txt'), 'utf8'), 'tiny 0\n');
    } finally {
      assert.equal(cli(['umount', fx.mnt]).status, 0);
    }
    // The explicit fail-open choice.
    const r = await mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir], digest, verity: 'try' });
    try {
      assert.equal(readFileSync(join(fx.mnt, 'small.txt'), 'utf8'), 'tiny 0\n');
      if (r.digest?.measuredBy === 'userspace') assert.ok(r.privateCopy, 'a digest computed in userspace is checked on, and mounts, a private copy');
    } finally {
      unmountComposefs(fx.mnt);
    }
    assert.ok(await eventually(() => leftovers(before).length === 0), leftovers(before).join('; '));
  });
});

test('digest= race: with the image rewritten in place during the mounts, what is mounted is always the image checked', { skip: SKIP }, async () => {
  const dir = scratch('digest-race');
  let writer: ReturnType<typeof spawn> | null = null;
  try {
    // Two images of the same tree shape; which.txt is inline in the image, so it tells them apart.
    const a = makeImage(join(dir, 'a'), { 'which.txt': 'image A\n', ...standardFiles(1) });
    const b = makeImage(join(dir, 'b'), { 'which.txt': 'image B\n', ...standardFiles(1) });
    const image = join(dir, 'live.cfs');
    writeFileSync(image, readFileSync(a.image));
    const digestA = fsverityDigestOfFileSync(a.image).digest.toString('hex');
    const mnt = join(dir, 'mnt');
    mkdirSync(mnt);
    writer = spawn(
      process.execPath,
      [
        '-e',
        `const fs = require('fs'); const imgs = [fs.readFileSync(${JSON.stringify(a.image)}), fs.readFileSync(${JSON.stringify(b.image)})];
         for (let i = 0; ; i++) fs.writeFileSync(${JSON.stringify(image)}, imgs[i & 1]);`,
      ],
      { stdio: 'ignore' },
    );
    adoptChild(writer.pid);
    const before = snapshot();
    let mounted = 0;
    let refused = 0;
    for (let i = 0; i < 150; i++) {
      let ok = false;
      try {
        await mountComposefs(image, mnt, { basedir: [a.basedir], digest: digestA, verity: 'try' });
        ok = true;
      } catch (err) {
        assert.match((err as Error).message, /wrong fs-verity digest|not a composefs image|truncated|empty file|corrupt|short read/);
        refused++;
      }
      if (!ok) continue;
      mounted++;
      try {
        assert.equal(readFileSync(join(mnt, 'which.txt'), 'utf8'), 'image A\n', `mount ${i}: the image whose digest was checked`);
        assert.deepEqual(readFileSync(join(mnt, 'big.bin')), a.files['big.bin']);
      } finally {
        unmountComposefs(mnt);
      }
    }
    process.stderr.write(`race: ${mounted} mounted, ${refused} refused\n`);
    assert.equal(mounted + refused, 150);
    assert.ok(mounted > 0, `some mounts must have caught image A (${refused} refused)`);
    writer.kill('SIGKILL');
    assert.ok(await eventually(() => leftovers(before).length === 0), leftovers(before).join('; '));
  } finally {
    writer?.kill('SIGKILL');
    cleanupDir(dir);
  }
});

test('-o private copies only the image out of a large sparse file, holes kept', { skip: SKIP }, async () => {
  const dir = scratch('sparse');
  const fs = join(dir, 'fs');
  mkdirSync(fs);
  // A file system of our own, so its free space moves only with what this test writes.
  assert.equal(spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'cfs-test-sparse', fs]).status, 0);
  try {
    const fx = makeImage(join(dir, 'img'), standardFiles());
    const image = join(fs, 'sparse.cfs');
    const bytes = readFileSync(fx.image);
    writeFileSync(image, bytes);
    truncateSync(image, 8 * 1024 ** 3); // 8 GiB, of which only the image's blocks are data
    const used = () => {
      const s = statfsSync(fs);
      return (s.blocks - s.bfree) * s.bsize;
    };
    const before = snapshot();
    const usedBefore = used();
    const r = await mountComposefs(image, fx.mnt, { basedir: [fx.basedir], private: true, privateDirs: [fs] });
    try {
      const copyCost = used() - usedBefore;
      assert.ok(copyCost <= bytes.length + 64 * 1024, `the private copy takes ${copyCost} bytes for a ${bytes.length}-byte image`);
      assert.equal(r.privateCopy?.dir, fs);
      assert.deepEqual(readFileSync(join(fx.mnt, 'big.bin')), fx.files['big.bin']);
      assert.equal(readFileSync(join(fx.mnt, 'small.txt'), 'utf8'), 'tiny 0\n');
    } finally {
      unmountComposefs(fx.mnt);
    }
    assert.ok(await eventually(() => leftovers(before).length === 0), leftovers(before).join('; '));
    assert.ok(await eventually(() => used() === usedBefore), 'the copy is gone with the mount');
  } finally {
    try {
      umount2(fs, MNT_DETACH);
    } catch {
      /* not mounted */
    }
    cleanupDir(dir);
  }
});

test('a FIFO as the image is refused at once (cfs mount, mount.composefs, cfs info ls); a block device is accepted', { skip: SKIP }, async () => {
  await withFixture('fifo', async (fx) => {
    const fifo = join(fx.dir, 'image.fifo');
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
    await assert.rejects(mountComposefs(fifo, fx.mnt, { basedir: [fx.basedir] }), /image\.fifo: not a regular file or block device/);
    for (const [name, args] of [
      ['cfs', ['mount', '-o', `basedir=${fx.basedir}`, fifo, fx.mnt]],
      ['mount.composefs', ['-o', `basedir=${fx.basedir}`, fifo, fx.mnt]],
      ['cfs', ['info', 'ls', fifo]],
      ['composefs-info', ['ls', fifo]],
    ] as Array<[string, string[]]>) {
      const r = cli(args, name);
      assert.equal(r.status, 1, `${name} ${args.join(' ')}: exit status (null: it hung)`);
      assert.match(r.stderr, /^[^\n]*image\.fifo[^\n]*not a regular file or block device\n$/);
    }
    const loop = spawnSync('losetup', ['--find', '--show', '--read-only', fx.image], { encoding: 'utf8' });
    assert.equal(loop.status, 0, loop.stderr);
    const dev = loop.stdout.trim();
    try {
      const r = await mountComposefs(dev, fx.mnt, { basedir: [fx.basedir] });
      try {
        assert.equal(readFileSync(join(fx.mnt, 'small.txt'), 'utf8'), 'tiny 0\n');
        assert.deepEqual(readFileSync(join(fx.mnt, 'big.bin')), fx.files['big.bin'], r.explain.join('\n'));
      } finally {
        unmountComposefs(fx.mnt);
      }
    } finally {
      spawnSync('losetup', ['-d', dev]);
    }
  });
});

test('cfs mount takes several IMAGE MOUNTPOINT pairs: all mounted, or none when one fails', { skip: SKIP }, async () => {
  await withFixture('pairs', async (fx) => {
    const mnts = [1, 2, 3].map((i) => join(fx.dir, `m${i}`));
    for (const m of mnts) mkdirSync(m);
    const before = snapshot();
    const ok = cli(['mount', '-o', `basedir=${fx.basedir}`, ...mnts.flatMap((m) => [fx.image, m])]);
    assert.equal(ok.status, 0, ok.stderr);
    try {
      for (const m of mnts) assert.deepEqual(readFileSync(join(m, 'big.bin')), fx.files['big.bin'], m);
    } finally {
      const u = cli(['umount', ...mnts]);
      assert.equal(u.status, 0, u.stderr);
    }
    assert.ok(await eventually(() => leftovers(before).length === 0), leftovers(before).join('; '));

    const bad = cli(['mount', '-o', `basedir=${fx.basedir}`, fx.image, mnts[0], fx.image, mnts[1], fx.image, join(fx.dir, 'missing')]);
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /^cfs mount: mountpoint .*missing: No such file or directory\n$/);
    assert.deepEqual(mountpointsUnder(fx.dir), [], 'all or nothing: the pairs mounted before the failure are unmounted');
    assert.ok(await eventually(() => leftovers(before).length === 0), leftovers(before).join('; '));

    const odd = cli(['mount', '-o', `basedir=${fx.basedir}`, fx.image, mnts[0], fx.image]);
    assert.equal(odd.status, 2);
    assert.match(odd.stderr, /no mount point given for /);
    const dropIn = cli(['-o', `basedir=${fx.basedir}`, fx.image, mnts[0], fx.image, mnts[1]], 'mount.composefs');
    assert.equal(dropIn.status, 2, 'mount.composefs keeps the reference: one pair');
    assert.match(dropIn.stderr, /too many arguments/);
    assert.deepEqual(mountpointsUnder(fx.dir), []);
  });
});
