/**
 * Mounting for real (as root): the default hidden path and its footprint,
 * every forced path, private copies, digests, verity, rw, idmap, bad input,
 * and the CLI (cfs mount/umount/status, mount.composefs, mount -t composefs).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, lstatSync, mkdirSync, openSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync, truncateSync, writeFileSync, writeSync, constants as fsc } from 'node:fs';
import { join } from 'node:path';
import { cliPath, isRoot } from './helpers/paths.js';
import {
  added,
  cleanupDir,
  eventually,
  leftovers,
  makeImage,
  scratch,
  snapshot,
  standardFiles,
  ueventListener,
  type Fixture,
} from './mount-fixtures.js';
import {
  describeFootprint,
  footprintSince,
  kernel,
  markSystem,
  mountComposefs,
  probeKernel,
  systemStatus,
  unmountComposefs,
  type MountOptions,
} from '../src/mount/index.js';
import { ComposefsError } from '../src/errors.js';
import { fsverityDigestOfFileSync } from '../src/fsverity/index.js';
import { parseMountinfo, splitSuperOptions } from '../src/mount/mountinfo.js';
import { parseOptionString } from '../src/mount/options.js';
import { readXattrs, cPath } from '../src/sys/fs.js';

const SKIP = isRoot ? false : 'mounting needs root';

function checkTree(fx: Fixture, mnt = fx.mnt, rootXattr = true): void {
  for (const [path, content] of Object.entries(fx.files)) {
    assert.deepEqual(readFileSync(join(mnt, path)), content, `content of ${path}`);
  }
  assert.equal(readlinkSync(join(mnt, 'link')), 'small.txt');
  assert.equal(statSync(join(mnt, 'big.bin'), { bigint: true }).mtimeNs, 1700000003123456789n, 'mtime to the nanosecond');
  assert.equal(statSync(join(mnt, 'big.bin')).size, fx.files['big.bin'].length);
  if (!rootXattr) return; // with an upper layer the root directory is the upperdir's own
  const xs = readXattrs(cPath(mnt), true);
  assert.ok(xs.some((x) => x.key.toString() === 'user.cfs-test' && x.value.toString() === 'root-xattr'), 'root xattr');
}

async function withFixture(tag: string, fn: (fx: Fixture) => Promise<void> | void): Promise<void> {
  const dir = scratch(tag);
  try {
    await fn(makeImage(dir, standardFiles()));
  } finally {
    cleanupDir(dir);
  }
}

function cli(args: string[], name = 'cfs'): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(cliPath(name), args, { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('option strings parse as mount(8) passes them', () => {
  const p = parseOptionString('ro,basedir=/a\\:b:/c,digest=ab,tryverity,upperdir=/u\\,x,workdir=/w,nosuid,x-systemd.foo,defaults');
  assert.deepEqual(p.options.basedir, ['/a:b', '/c']);
  assert.equal(p.options.upperdir, '/u,x');
  assert.equal(p.options.verity, 'try');
  assert.equal(p.options.readonly, true);
  assert.equal(p.options.nosuid, true);
  assert.deepEqual(p.ignored, ['x-systemd.foo', 'defaults']);
  assert.equal(parseOptionString('verity,tryverity').options.verity, 'require');
  assert.equal(parseOptionString('ro,rw').options.readonly, false);
  assert.throws(() => parseOptionString('bogus'), /unsupported mount option 'bogus'/);
  assert.deepEqual(parseOptionString('bogus', true).ignored, ['bogus']);
  assert.throws(() => parseOptionString('basedir'), /no value given for option basedir/);
  assert.throws(() => parseOptionString('backing=tape'), /invalid value for option backing/);
});

test('mountinfo super options split on unescaped commas', () => {
  const [m] = parseMountinfo('45 27 0:40 / /m\\040x ro,relatime - overlay composefs ro,lowerdir+=/,datadir+=/a\\,b,redirect_dir=on\n');
  assert.equal(m.mountPoint, '/m x');
  assert.deepEqual(splitSuperOptions(m.superOptions), [
    ['ro', null],
    ['lowerdir+', '/'],
    ['datadir+', '/a,b'],
    ['redirect_dir', 'on'],
  ]);
});

test('default path: hidden mount, exactly one mountinfo line, no loop, no /dev node, no temp dir', { skip: SKIP }, async () => {
  await withFixture('default', async (fx) => {
    const before = snapshot();
    const r = await mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir] });
    const during = snapshot();
    try {
      assert.notEqual(r.backing, 'loop', r.explain.join('\n'));
      assert.equal(r.layers, 'fd', r.explain.join('\n'));
      assert.equal(r.api, 'new');
      assert.equal(r.loop, null);
      assert.equal(r.temporaryMount, null);
      assert.equal(r.readonly, true);
      checkTree(fx);

      const newLines = added(before.mountinfo, during.mountinfo);
      assert.equal(newLines.length, 1, `new mountinfo lines:\n${newLines.join('\n')}`);
      const [m] = parseMountinfo(newLines[0]);
      assert.equal(m.fstype, 'overlay');
      assert.equal(m.source, 'composefs');
      assert.equal(m.mountPoint, fx.mnt);
      assert.ok(m.mountOptions.split(',').includes('ro'), `read-only: ${m.mountOptions}`);
      for (const [k, v] of splitSuperOptions(m.superOptions)) {
        if (v !== null && v.startsWith('/')) assert.ok(existsSync(v), `option ${k}=${v} names a path that does not exist`);
      }
      assert.deepEqual(added(before.loops, during.loops), [], 'no loop device bound');
      assert.deepEqual(added(before.tempDirs, during.tempDirs), [], 'no temporary directory');

      const st = systemStatus();
      const mine = st.mounts.find((x) => x.mountpoint === fx.mnt);
      assert.ok(mine, 'status lists the mount');
      assert.equal(mine.layers, 'fd');
      assert.deepEqual(mine.stalePaths, []);
      assert.deepEqual(mine.data, [fx.basedir]);
    } finally {
      unmountComposefs(fx.mnt);
    }
    assert.deepEqual(leftovers(before), []);
    assert.deepEqual(readdirSync(fx.mnt), []);
  });
});

test('default path, system-wide: no new block device, /dev node or uevent but the EROFS backing-dev entry', { skip: SKIP }, async () => {
  // These are global: other work on the machine can add devices or send uevents meanwhile.
  // A leak of ours would show on every attempt; foreign noise does not repeat three times.
  await withFixture('uevents', async (fx) => {
    const problems: string[][] = [];
    for (let attempt = 0; attempt < 3; attempt++) {
      const ev = ueventListener();
      try {
        ev.drain();
        const before = snapshot();
        await mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir] });
        const mountEvents = ev.drain();
        const during = snapshot();
        unmountComposefs(fx.mnt);
        const umountEvents = ev.drain();
        const p: string[] = [];
        for (const d of added(before.dev, during.dev)) p.push(`new /dev node ${d}`);
        for (const d of added(before.sysBlock, during.sysBlock)) p.push(`new block device ${d}`);
        // At most the backing-dev (bdi) entry EROFS registers for its superblock, and its removal.
        if (mountEvents.length > 1) p.push(`uevents on mount: ${mountEvents.join(', ')}`);
        for (const e of mountEvents) if (!/^add@\/devices\/virtual\/bdi\//.test(e)) p.push(`uevent ${e}`);
        for (const e of umountEvents) if (!/^remove@\/devices\/virtual\/bdi\//.test(e)) p.push(`uevent on unmount ${e}`);
        problems.push(p);
        if (p.length === 0) break;
      } finally {
        ev.close();
      }
    }
    assert.deepEqual(problems[problems.length - 1], [], `every attempt: ${JSON.stringify(problems)}`);
  });
});

const forcedPaths: Array<{ name: string; opts: Partial<MountOptions>; expect: { backing: string; layers: string; api: string } }> = [
  { name: 'file + fd layers', opts: { backing: 'file', layers: 'fd' }, expect: { backing: 'file', layers: 'fd', api: 'new' } },
  { name: 'loop + fd layers', opts: { backing: 'loop', layers: 'fd' }, expect: { backing: 'loop', layers: 'fd', api: 'new' } },
  { name: 'file + path layers', opts: { backing: 'file', layers: 'path' }, expect: { backing: 'file', layers: 'path', api: 'new' } },
  { name: 'loop + path layers', opts: { backing: 'loop', layers: 'path' }, expect: { backing: 'loop', layers: 'path', api: 'new' } },
  { name: 'legacy mount(2), file', opts: { api: 'legacy', backing: 'file' }, expect: { backing: 'file', layers: 'path', api: 'legacy' } },
  { name: 'legacy mount(2), loop', opts: { api: 'legacy', backing: 'loop' }, expect: { backing: 'loop', layers: 'path', api: 'legacy' } },
];

for (const p of forcedPaths) {
  test(`forced path: ${p.name} mounts the same tree and leaves nothing`, { skip: SKIP }, async () => {
    await withFixture('forced', async (fx) => {
      const before = snapshot();
      const r = await mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir], ...p.opts });
      try {
        assert.deepEqual({ backing: r.backing, layers: r.layers, api: r.api }, p.expect, r.explain.join('\n'));
        checkTree(fx);
        const now = snapshot();
        assert.equal(added(before.mountinfo, now.mountinfo).length, 1, 'one new mountinfo line');
        assert.deepEqual(added(before.tempDirs, now.tempDirs), [], 'temporary directory removed before returning');
        if (p.expect.backing === 'loop') {
          assert.ok(r.loop, 'loop device reported');
          const bound = added(before.loops, now.loops);
          assert.equal(bound.length, 1, 'one loop device bound');
          const name = r.loop.device.replace('/dev/', '');
          assert.equal(readFileSync(`/sys/block/${name}/loop/autoclear`, 'utf8').trim(), '1');
          assert.equal(readFileSync(`/sys/block/${name}/ro`, 'utf8').trim(), '1');
          assert.equal(r.loop.directIo, readFileSync(`/sys/block/${name}/loop/dio`, 'utf8').trim() === '1');
        } else assert.deepEqual(added(before.loops, now.loops), []);
        if (p.expect.layers === 'path') {
          assert.ok(r.temporaryMount && !existsSync(r.temporaryMount), 'temporary directory gone');
          const st = systemStatus().mounts.find((x) => x.mountpoint === fx.mnt)!;
          assert.equal(st.layers, 'path');
          assert.deepEqual(st.stalePaths, [r.temporaryMount], 'status names the stale option path');
        }
      } finally {
        unmountComposefs(fx.mnt);
      }
      assert.ok(await eventually(() => leftovers(before).length === 0), `left behind: ${leftovers(before).join('; ')}`);
    });
  });
}

test('backing=fd: used when the kernel takes an fd source, else refused with the kernel reason', { skip: SKIP }, async () => {
  await withFixture('fdsrc', async (fx) => {
    const before = snapshot();
    try {
      const r = await mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir], backing: 'fd' });
      assert.equal(r.backing, 'fd');
      checkTree(fx);
      unmountComposefs(fx.mnt);
    } catch (err) {
      assert.ok(err instanceof ComposefsError);
      assert.match(err.message, /^backing=fd: this kernel's EROFS refuses a file-descriptor source/);
      assert.equal(kernel.erofsFdSource?.ok, false);
    }
    assert.deepEqual(leftovers(before), []);
  });
});

test('the library learns once: later mounts skip refused paths', { skip: SKIP }, async () => {
  await withFixture('cache', async (fx) => {
    const r1 = await mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir] });
    unmountComposefs(fx.mnt);
    assert.ok(kernel.newApi?.ok);
    assert.equal(kernel.overlayFdLayers?.ok, true);
    assert.ok(kernel.erofsFdSource !== undefined, 'fd source answer cached');
    const r2 = await mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir] });
    unmountComposefs(fx.mnt);
    assert.equal(r2.backing, r1.backing);
  });
});

test('private: an anonymous verified copy, unaffected by later changes to the image file', { skip: SKIP }, async () => {
  await withFixture('private', async (fx) => {
    const before = snapshot();
    const digest = fsverityDigestOfFileSync(fx.image).digest.toString('hex');
    const r = await mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir], private: true, digest, verity: 'try' });
    try {
      assert.ok(r.privateCopy, 'private copy reported');
      assert.equal(r.digest?.measuredBy, 'userspace');
      // Scribble over the original: the mount reads its own copy.
      const img = readFileSync(fx.image);
      writeFileSync(fx.image, Buffer.alloc(img.length, 0xee));
      checkTree(fx);
      assert.deepEqual(added(before.loops, snapshot().loops), []);
    } finally {
      unmountComposefs(fx.mnt);
    }
    assert.deepEqual(leftovers(before), []);
  });
});

test('private copy on tmpfs falls back to a loop device, still anonymous', { skip: SKIP || (!existsSync('/dev/shm') && 'no /dev/shm') }, async () => {
  await withFixture('private-shm', async (fx) => {
    const before = snapshot();
    const r = await mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir], private: true, privateDirs: ['/dev/shm'] });
    try {
      assert.equal(r.privateCopy?.fsType, 'tmpfs');
      assert.equal(r.backing, 'loop', r.explain.join('\n'));
      assert.match(r.explain.join('\n'), /not available for an image on tmpfs/);
      checkTree(fx);
    } finally {
      unmountComposefs(fx.mnt);
    }
    assert.ok(await eventually(() => leftovers(before).length === 0), leftovers(before).join('; '));
  });
});

test('digest: the right one mounts, a wrong one is refused and nothing is left', { skip: SKIP }, async () => {
  await withFixture('digest', async (fx) => {
    const before = snapshot();
    const digest = fsverityDigestOfFileSync(fx.image).digest.toString('hex');
    const r = await mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir], digest: digest.toUpperCase(), verity: 'try' });
    assert.equal(r.digest?.expected, digest);
    assert.match(r.explain.join('\n'), /digest: matches/);
    unmountComposefs(fx.mnt);
    const wrong = `${digest.slice(0, 63)}${digest[63] === '0' ? '1' : '0'}`;
    await assert.rejects(mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir], digest: wrong }), /wrong fs-verity digest: expected/);
    await assert.rejects(mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir], digest: 'xyz' }), /invalid digest 'xyz'/);
    assert.deepEqual(leftovers(before), []);
  });
});

test('verity: refused with the reason when the kernel lacks fs-verity; tryverity mounts without', { skip: SKIP }, async () => {
  await withFixture('verity', async (fx) => {
    const before = snapshot();
    let required = false;
    try {
      const r = await mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir], verity: 'require' });
      required = r.verity;
      unmountComposefs(fx.mnt);
    } catch (err) {
      assert.ok(err instanceof ComposefsError);
      assert.match(err.message, /^verity: the kernel cannot verify the objects, .*(lacks fs-verity|does not support fs-verity).*; the FUSE server verifies them itself \(--fuse\)/);
    }
    if (!required) {
      const r = await mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir], verity: 'try' });
      assert.equal(r.verity, false);
      assert.match(r.explain.join('\n'), /verity: off, .*tryverity: going on without/);
      checkTree(fx);
      unmountComposefs(fx.mnt);
    }
    assert.deepEqual(leftovers(before), []);
  });
});

test('rw with upperdir and workdir: writes land in the upper directory', { skip: SKIP }, async () => {
  await withFixture('rw', async (fx) => {
    const upper = join(fx.dir, 'upper');
    const work = join(fx.dir, 'work');
    mkdirSync(upper);
    mkdirSync(work);
    const r = await mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir], upperdir: upper, workdir: work });
    try {
      assert.equal(r.readonly, false);
      writeFileSync(join(fx.mnt, 'new.txt'), 'written');
      assert.equal(readFileSync(join(upper, 'new.txt'), 'utf8'), 'written');
      checkTree(fx, fx.mnt, false);
    } finally {
      unmountComposefs(fx.mnt);
    }
    await assert.rejects(mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir], upperdir: upper }), /upperdir and workdir must be given together/);
  });
});

test('read-only mounts refuse writes', { skip: SKIP }, async () => {
  await withFixture('ro', async (fx) => {
    await mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir] });
    try {
      assert.throws(() => writeFileSync(join(fx.mnt, 'x'), 'x'), /EROFS|read-only/i);
    } finally {
      unmountComposefs(fx.mnt);
    }
  });
});

test('idmap: the image files get the user namespace mapping', { skip: SKIP || (!existsSync('/usr/bin/unshare') && 'no unshare(1)') }, async () => {
  await withFixture('idmap', async (fx) => {
    const child = spawn('unshare', ['--user', 'sleep', '30'], { stdio: 'ignore' });
    try {
      const pid = child.pid!;
      assert.ok(await eventually(() => readlinkSync(`/proc/${pid}/ns/user`) !== readlinkSync('/proc/self/ns/user')), 'child in its own user namespace');
      writeFileSync(`/proc/${pid}/uid_map`, '0 1000 1\n');
      writeFileSync(`/proc/${pid}/gid_map`, '0 2000 1\n');
      const r = await mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir], idmap: `/proc/${pid}/ns/user` });
      try {
        assert.match(r.explain.join('\n'), /idmap/);
        const st = lstatSync(join(fx.mnt, 'small.txt'));
        assert.equal(st.uid, 1000);
        assert.equal(st.gid, 2000);
        checkTree(fx);
      } finally {
        unmountComposefs(fx.mnt);
      }
    } finally {
      child.kill('SIGKILL');
    }
  });
});

test('several basedirs: objects are found in any of them', { skip: SKIP }, async () => {
  await withFixture('basedirs', async (fx) => {
    const empty = join(fx.dir, 'empty-objects');
    mkdirSync(empty);
    const r = await mountComposefs(fx.image, fx.mnt, { basedir: [empty, fx.basedir] });
    try {
      checkTree(fx);
      const st = systemStatus().mounts.find((x) => x.mountpoint === fx.mnt)!;
      assert.deepEqual(st.data, [empty, fx.basedir]);
      assert.equal(r.layers, 'fd');
    } finally {
      unmountComposefs(fx.mnt);
    }
  });
});

// ---- bad input, through the CLI: one line, non-zero, nothing left ----------------------

test('bad input: a clear one-line error, a non-zero exit, nothing left behind', { skip: SKIP }, async () => {
  await withFixture('bad', async (fx) => {
    const d = fx.dir;
    const junk = join(d, 'junk.bin');
    writeFileSync(junk, Buffer.alloc(100000, 'not an image'));
    const trunc = join(d, 'trunc.cfs');
    writeFileSync(trunc, readFileSync(fx.image).subarray(0, 5000));
    const empty = join(d, 'empty.cfs');
    writeFileSync(empty, '');
    const feat = join(d, 'feature.cfs');
    const fb = readFileSync(fx.image);
    fb.writeUInt32LE(0x80000000, 1024 + 80); // an incompatible feature no kernel knows
    writeFileSync(feat, fb);
    const rootBad = join(d, 'root.cfs');
    const rb = readFileSync(fx.image);
    rb.writeUInt16LE(60000, 1024 + 14); // root inode number far out
    writeFileSync(rootBad, rb);
    const afile = join(d, 'afile');
    writeFileSync(afile, 'x');
    const digest = fsverityDigestOfFileSync(fx.image).digest.toString('hex');
    const wrong = digest.replace(/^./, (c) => (c === 'a' ? 'b' : 'a'));
    const ok = `basedir=${fx.basedir}`;
    const cases: Array<[string, string[], RegExp]> = [
      ['missing image', ['-o', ok, join(d, 'nope.cfs'), fx.mnt], /nope\.cfs: No such file or directory/],
      ['not an image', ['-o', ok, junk, fx.mnt], /junk\.bin: not a composefs image/],
      ['empty file', ['-o', ok, empty, fx.mnt], /empty\.cfs: empty file, not a composefs image/],
      ['truncated image', ['-o', ok, trunc, fx.mnt], /trunc\.cfs: truncated composefs image/],
      ['unknown feature', ['-o', ok, feat, fx.mnt], /feature\.cfs: the kernel refused the image/],
      ['corrupt root inode', ['-o', ok, rootBad, fx.mnt], /root\.cfs: the kernel refused the image/],
      ['wrong digest', ['-o', `${ok},digest=${wrong}`, fx.image, fx.mnt], /wrong fs-verity digest/],
      ['malformed digest', ['-o', `${ok},digest=12`, fx.image, fx.mnt], /invalid digest '12'/],
      ['missing basedir', ['-o', `basedir=${join(d, 'nobase')}`, fx.image, fx.mnt], /basedir .*nobase: No such file or directory/],
      ['basedir not a dir', ['-o', `basedir=${afile}`, fx.image, fx.mnt], /basedir .*afile: Not a directory/],
      ['no basedir', [fx.image, fx.mnt], /no basedir= given/],
      ['mountpoint not a directory', ['-o', ok, fx.image, afile], /mountpoint .*afile: Not a directory/],
      ['missing mountpoint', ['-o', ok, fx.image, join(d, 'nomnt')], /mountpoint .*nomnt: No such file or directory/],
      ['image is a directory', ['-o', ok, d, fx.mnt], /Is a directory/],
      ['unknown option', ['-o', `${ok},frobnicate`, fx.image, fx.mnt], /unsupported mount option 'frobnicate'/],
      ['verity without fs-verity', ['-o', `${ok},verity`, fx.image, fx.mnt], /verity: .*fs-verity/],
      ['no mountpoint', ['-o', ok, fx.image], /no mount point given/],
      ['bad --backing', ['--backing=tape', '-o', ok, fx.image, fx.mnt], /invalid value for --backing/],
      ['legacy with fd layers', ['--api=legacy', '--layers=fd', '-o', ok, fx.image, fx.mnt], /layers=fd needs the new mount API/],
    ];
    const before = snapshot();
    for (const [what, args, re] of cases) {
      const r = cli(['mount', ...args]);
      if (what === 'verity without fs-verity' && r.status === 0) {
        cli(['umount', fx.mnt]); // a kernel with fs-verity and a verity-capable basedir
        continue;
      }
      assert.notEqual(r.status, 0, `${what}: exit status`);
      const lines = r.stderr.split('\n').filter(Boolean);
      assert.equal(lines.length, 1, `${what}: one line, got:\n${r.stderr}`);
      assert.match(lines[0], /^cfs mount: /, what);
      assert.match(lines[0], re, what);
      assert.doesNotMatch(lines[0], /internal error|at .*\.js:\d+/, what);
      assert.deepEqual(leftovers(before), [], `${what}: left behind`);
      assert.deepEqual(readdirSync(fx.mnt), [], `${what}: mountpoint untouched`);
    }
  });
});

// ---- CLI ---------------------------------------------------------------------------------

test('cfs mount --explain, cfs status, cfs umount', { skip: SKIP }, async () => {
  await withFixture('cli', async (fx) => {
    const before = snapshot();
    const m = cli(['mount', '--explain', '-o', `basedir=${fx.basedir}`, fx.image, fx.mnt]);
    try {
      assert.equal(m.status, 0, m.stderr);
      assert.match(m.stdout, /^mounted .* on .* \(ro\)/);
      assert.match(m.stdout, /backing: (fd|file), /);
      assert.match(m.stdout, /layers: fd, /);
      assert.match(m.stdout, /api: new mount API/);
      assert.match(m.stdout, /footprint: no loop device, no temporary mount/);
      checkTree(fx);
      const s = cli(['status']);
      assert.equal(s.status, 0, s.stderr);
      assert.ok(s.stdout.includes(`${fx.mnt} (ro)`), s.stdout);
      assert.match(s.stdout, /layers=fd: the EROFS layer is a detached mount/);
      const j = JSON.parse(cli(['status', '--json']).stdout) as { mounts: Array<{ mountpoint: string; layers: string }> };
      assert.equal(j.mounts.find((x) => x.mountpoint === fx.mnt)?.layers, 'fd');
      const notCfs = cli(['umount', fx.dir]);
      assert.notEqual(notCfs.status, 0);
      assert.match(notCfs.stderr, /not a mount point|not a composefs mount/);
    } finally {
      const u = cli(['umount', fx.mnt]);
      assert.equal(u.status, 0, u.stderr);
    }
    assert.deepEqual(leftovers(before), []);
    const again = cli(['umount', fx.mnt]);
    assert.equal(again.status, 1);
    assert.match(again.stderr, /^cfs umount: .*: not a mount point\n$/);
    const j = JSON.parse(cli(['mount', '--json', '-o', `basedir=${fx.basedir}`, fx.image, fx.mnt]).stdout) as { layers: string; explain: string[] };
    assert.equal(j.layers, 'fd');
    assert.ok(j.explain.length > 0);
    assert.equal(cli(['umount', '--lazy', fx.mnt]).status, 0);
  });
});

test('mount.composefs drop-in: the mount(8) helper protocol', { skip: SKIP }, async () => {
  await withFixture('dropin', async (fx) => {
    const r = cli([fx.image, fx.mnt, '-n', '-o', `ro,basedir=${fx.basedir}`, '-t', 'composefs'], 'mount.composefs');
    try {
      assert.equal(r.status, 0, r.stderr);
      checkTree(fx);
    } finally {
      cli(['umount', fx.mnt]);
    }
    const fake = cli([fx.image, fx.mnt, '-f', '-v', '-o', `basedir=${fx.basedir}`], 'mount.composefs');
    assert.equal(fake.status, 0, fake.stderr);
    assert.match(fake.stdout, /would mount/);
    assert.deepEqual(readdirSync(fx.mnt), []);
    const t = cli([fx.image, fx.mnt, '-t', 'ext4', '-o', `basedir=${fx.basedir}`], 'mount.composefs');
    assert.equal(t.status, 2);
    assert.match(t.stderr, /^mount\.composefs: unsupported file system type 'ext4'/);
    const sloppy = cli([fx.image, fx.mnt, '-s', '-o', `basedir=${fx.basedir},whatever`], 'mount.composefs');
    assert.equal(sloppy.status, 0, sloppy.stderr);
    cli(['umount', fx.mnt]);
  });
});

test('cfs install-helper writes a helper mount(8) can run', { skip: SKIP }, async () => {
  await withFixture('helper', async (fx) => {
    const dir = join(fx.dir, 'sbin');
    mkdirSync(dir);
    const r = cli(['install-helper', `--dir=${dir}`]);
    assert.equal(r.status, 0, r.stderr);
    const helper = join(dir, 'mount.composefs');
    assert.equal(statSync(helper).mode & 0o777, 0o755);
    const run = spawnSync(helper, [fx.image, fx.mnt, '-o', `basedir=${fx.basedir}`], { encoding: 'utf8', env: { PATH: '/usr/bin:/bin' } });
    try {
      assert.equal(run.status, 0, run.stderr);
      checkTree(fx);
    } finally {
      cli(['umount', fx.mnt]);
    }
    writeFileSync(join(dir, 'other'), '');
    assert.equal(cli(['install-helper', `--dir=${dir}`]).status, 0, 'reinstall over our own helper');
    writeFileSync(helper, '#!/bin/sh\nexit 0\n');
    const refuse = cli(['install-helper', `--dir=${dir}`]);
    assert.equal(refuse.status, 1);
    assert.match(refuse.stderr, /not installed by cfs install-helper/);
    assert.equal(cli(['install-helper', `--dir=${dir}`, '--force']).status, 0);
    assert.equal(cli(['install-helper', `--dir=${dir}`, '--uninstall']).status, 0);
    assert.ok(!existsSync(helper));

    // The real thing, when /sbin has no mount.composefs of its own: mount -t composefs.
    // Several test runs may share this machine: only one at a time touches /sbin.
    const lock = '/run/composefs-ts-test-helper.lock';
    const locked = (() => {
      try {
        const pid = Number(readFileSync(lock, 'utf8'));
        if (existsSync(`/proc/${pid}`)) return false;
        rmSync(lock, { force: true });
      } catch {
        /* no lock */
      }
      try {
        writeFileSync(lock, String(process.pid), { flag: 'wx' });
        return true;
      } catch {
        return false;
      }
    })();
    if (locked && !existsSync('/sbin/mount.composefs') && existsSync('/usr/bin/mount')) {
      assert.equal(cli(['install-helper']).status, 0);
      try {
        const m = spawnSync('mount', ['-t', 'composefs', fx.image, fx.mnt, '-o', `basedir=${fx.basedir}`], { encoding: 'utf8' });
        assert.equal(m.status, 0, m.stderr);
        try {
          checkTree(fx);
          // mount(8) hands the helper "rw" by default: without an upper layer the mount is read-only all the same.
          const line = parseMountinfo(readFileSync('/proc/self/mountinfo', 'utf8')).find((x) => x.mountPoint === fx.mnt)!;
          assert.ok(line.mountOptions.split(',').includes('ro'), line.line);
        } finally {
          spawnSync('umount', [fx.mnt]);
        }
      } finally {
        cli(['install-helper', '--uninstall']);
        rmSync(lock, { force: true });
      }
      assert.ok(!existsSync('/sbin/mount.composefs'));
    } else if (locked) rmSync(lock, { force: true });
  });
});

test('a truncated image never reaches the kernel', { skip: SKIP }, async () => {
  await withFixture('trunc', async (fx) => {
    truncateSync(fx.image, statSync(fx.image).size - 4096);
    await assert.rejects(mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir] }), /truncated composefs image/);
    rmSync(fx.image);
    await assert.rejects(mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir] }), /No such file or directory/);
  });
});

test('an image given as an open fd (an anonymous file just written) mounts; the caller keeps the fd', { skip: SKIP }, async () => {
  await withFixture('fd-image', async (fx) => {
    const bytes = readFileSync(fx.image);
    const fd = openSync(fx.dir, 0o20000000 | fsc.O_DIRECTORY | fsc.O_RDWR, 0o600); // O_TMPFILE: no name anywhere
    try {
      writeSync(fd, bytes); // the offset is now at the end: the mount must not care
      const digest = fsverityDigestOfFileSync(fx.image).digest.toString('hex');
      const r = await mountComposefs(fd, fx.mnt, { basedir: [fx.basedir], digest, verity: 'try' });
      try {
        assert.equal(r.image, `fd ${fd}`);
        checkTree(fx);
      } finally {
        unmountComposefs(fx.mnt);
      }
      writeSync(fd, Buffer.alloc(1)); // still ours and open
    } finally {
      closeSync(fd);
    }
  });
});

test('footprint helpers show what a mount added; probeKernel answers without an image', { skip: SKIP }, async () => {
  await withFixture('footprint', async (fx) => {
    const marks = markSystem();
    await mountComposefs(fx.image, fx.mnt, { basedir: [fx.basedir] });
    try {
      const f = footprintSince(marks);
      assert.ok(f.mountinfoLines.some((l) => l.includes(` ${fx.mnt} `) && l.includes(' - overlay composefs ')), describeFootprint(f));
      assert.ok(!f.loopDevices.some((l) => l.includes(fx.dir)), describeFootprint(f));
      assert.match(describeFootprint(f), /^mountinfo: \d+ new line/);
    } finally {
      unmountComposefs(fx.mnt);
    }
    const probes = probeKernel();
    assert.equal(probes.find((p) => p.what.startsWith('new mount API'))?.ok, true);
    for (const p of probes) assert.ok(typeof p.why === 'string' && p.why.length > 0, p.what);
  });
});
