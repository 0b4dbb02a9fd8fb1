/**
 * The mount planner without root: every combination of kernel facts (new
 * API or not, fd source or not, file-backed EROFS or not, fd layers or not,
 * loop devices or not) under every forced option, against expectations
 * written out by hand, plus the rules every plan must keep. Imports only the
 * pure planner and the ladder; a last test runs this file again as nobody.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { planMount, type Answer, type KernelFacts, type PlanRequest } from '../src/mount/plan.js';
import { KERNEL_RUNG, planRungs, explainRecord, climbRungs, type MountRung, type RungResult } from '../src/mount/ladder.js';
import { MountError } from '../src/mount/errors.js';
import { parseOptionString, type MountOptions } from '../src/mount/options.js';
import { fuseRung, fuseOptionsOf } from '../src/fuse/rung.js';
import { IoError, UsageError } from '../src/errors.js';
import { writeImage } from '../src/erofs/writer.js';
import { parseDump } from '../src/dumpfile/parse.js';

const yes: Answer = { ok: true, why: 'yes' };
const no = (why: string): Answer => ({ ok: false, why });

interface Facts {
  api?: boolean;
  fdSrc?: Answer;
  file?: Answer;
  fdLayers?: Answer;
  loops?: boolean;
}
function facts(f: Facts): KernelFacts {
  return { newApi: f.api ?? true, erofsFdSource: f.fdSrc, fileBacked: f.file, overlayFdLayers: f.fdLayers, loopDevices: f.loops ?? true };
}
function req(r: Partial<PlanRequest>): PlanRequest {
  return { api: 'auto', backing: 'auto', layers: 'auto', idmap: false, ...r };
}
/** A plan in one line: "API: backing,backing | layers,layers(overlay ways)". */
function shape(r: Partial<PlanRequest>, f: Facts): string {
  const p = planMount(req(r), facts(f));
  if (!p.ok) return `refused: ${p.reason}`;
  const layers = p.layers.map((l) => (l.layers === 'path' ? `path(${l.overlayBy.join('+')})` : 'fd'));
  return `${p.api}: ${p.backing.map((b) => b.backing).join(',')} | ${layers.join(',')}`;
}

const cases: Array<[string, Partial<PlanRequest>, Facts, string]> = [
  ['nothing known yet: every rung, best first', {}, {}, 'new: fd,file,loop | fd,path(fsconfig+mount2)'],
  ['all known good', {}, { fdSrc: yes, file: yes, fdLayers: yes }, 'new: fd,file,loop | fd,path(fsconfig+mount2)'],
  ['fd source refused before (Linux 6.18)', {}, { fdSrc: no('Non-string source') }, 'new: file,loop | fd,path(fsconfig+mount2)'],
  ['fd source and file-backed refused (image on tmpfs)', {}, { fdSrc: no('a'), file: no('ENOTBLK') }, 'new: loop | fd,path(fsconfig+mount2)'],
  ['fd layers refused before', {}, { fdLayers: no('EINVAL') }, 'new: fd,file,loop | path(fsconfig+mount2)'],
  ['no loop devices', {}, { loops: false }, 'new: fd,file | fd,path(fsconfig+mount2)'],
  ['no loop devices and no other backing', {}, { fdSrc: no('a'), file: no('b'), loops: false }, 'refused: no way to back EROFS: a; b; no loop devices (/dev/loop-control is missing)'],
  ['no new API: legacy, file then loop, path layers by mount(2)', {}, { api: false }, 'legacy: file,loop | path(mount2)'],
  ['no new API, file-backed refused', {}, { api: false, file: no('ENOTBLK') }, 'legacy: loop | path(mount2)'],
  ['no new API, no loop devices', {}, { api: false, loops: false }, 'legacy: file | path(mount2)'],
  ['no new API, fd facts do not matter', {}, { api: false, fdSrc: yes, fdLayers: yes }, 'legacy: file,loop | path(mount2)'],
  ['backing=fd forced', { backing: 'fd' }, {}, 'new: fd | fd,path(fsconfig+mount2)'],
  ['backing=fd forced although refused before: tried again', { backing: 'fd' }, { fdSrc: no('x') }, 'new: fd | fd,path(fsconfig+mount2)'],
  ['backing=file forced although refused before', { backing: 'file' }, { file: no('ENOTBLK') }, 'new: file | fd,path(fsconfig+mount2)'],
  ['backing=loop forced', { backing: 'loop' }, {}, 'new: loop | fd,path(fsconfig+mount2)'],
  ['backing=loop forced without loop devices', { backing: 'loop' }, { loops: false }, 'refused: no way to back EROFS: no loop devices (/dev/loop-control is missing)'],
  ['layers=fd forced although refused before', { layers: 'fd' }, { fdLayers: no('x') }, 'new: fd,file,loop | fd'],
  ['layers=path forced', { layers: 'path' }, {}, 'new: fd,file,loop | path(fsconfig+mount2)'],
  ['api=legacy forced on a new kernel', { api: 'legacy' }, {}, 'legacy: file,loop | path(mount2)'],
  ['api=legacy with backing=loop', { api: 'legacy', backing: 'loop' }, {}, 'legacy: loop | path(mount2)'],
  ['api=legacy with layers=path', { api: 'legacy', layers: 'path' }, {}, 'legacy: file,loop | path(mount2)'],
  ['api=legacy with backing=fd', { api: 'legacy', backing: 'fd' }, {}, 'refused: backing=fd needs the new mount API (api=legacy given)'],
  ['api=legacy with layers=fd', { api: 'legacy', layers: 'fd' }, {}, 'refused: layers=fd needs the new mount API (api=legacy given)'],
  ['api=legacy with idmap', { api: 'legacy', idmap: true }, {}, 'refused: idmap needs the new mount API (api=legacy given)'],
  ['api=new forced where there is none', { api: 'new' }, { api: false }, 'refused: api=new: this kernel has no new mount API (fsopen: Function not implemented)'],
  ['api=new forced where there is one', { api: 'new' }, {}, 'new: fd,file,loop | fd,path(fsconfig+mount2)'],
  ['backing=fd on a kernel without the new API', { backing: 'fd' }, { api: false }, 'refused: backing=fd needs the new mount API, which this kernel lacks'],
  ['layers=fd on a kernel without the new API', { layers: 'fd' }, { api: false }, 'refused: layers=fd needs the new mount API, which this kernel lacks'],
  ['idmap on a kernel without the new API', { idmap: true }, { api: false }, 'refused: idmap needs the new mount API, which this kernel lacks'],
  ['idmap on a new kernel', { idmap: true }, { fdSrc: no('x') }, 'new: file,loop | fd,path(fsconfig+mount2)'],
];

for (const [what, r, f, expected] of cases) {
  test(`plan: ${what}`, () => {
    assert.equal(shape(r, f), expected);
  });
}

test('plan: the reasons of rungs the kernel refused before are kept for --explain, in rung order', () => {
  const p = planMount(req({}), facts({ fdSrc: no('fd: Non-string source'), file: no('file: ENOTBLK') }));
  assert.ok(p.ok);
  assert.deepEqual(p.skipped, ['fd: Non-string source', 'file: ENOTBLK']);
  const forced = planMount(req({ backing: 'loop' }), facts({ fdSrc: no('x') }));
  assert.ok(forced.ok);
  assert.deepEqual(forced.skipped, [], 'a forced backing mentions nothing skipped');
  assert.deepEqual(
    forced.backing.map((b) => b.forced),
    [true],
  );
});

const answers: Array<Answer | undefined> = [undefined, yes, no('refused')];
const forcings: Array<Partial<PlanRequest>> = [];
for (const api of ['auto', 'new', 'legacy'] as const)
  for (const backing of ['auto', 'fd', 'file', 'loop'] as const)
    for (const layers of ['auto', 'fd', 'path'] as const) for (const idmap of [false, true]) forcings.push({ api, backing, layers, idmap });

test('plan: every combination of facts and forced options keeps the rules', () => {
  let plans = 0;
  let refusals = 0;
  for (const api of [true, false])
    for (const fdSrc of answers)
      for (const file of answers)
        for (const fdLayers of answers)
          for (const loops of [true, false])
            for (const r of forcings) {
              const where = JSON.stringify({ api, fdSrc, file, fdLayers, loops, r });
              const p = planMount(req(r), facts({ api, fdSrc, file, fdLayers, loops }));
              if (!p.ok) {
                refusals++;
                assert.match(p.reason, /^[^\n]+$/, where);
                continue;
              }
              plans++;
              assert.ok(p.backing.length > 0 && p.layers.length > 0, where);
              if (r.api === 'legacy') assert.equal(p.api, 'legacy', where);
              if (!api) assert.equal(p.api, 'legacy', where);
              if (p.api === 'legacy') {
                assert.ok(!p.backing.some((b) => b.backing === 'fd'), `legacy never plans an fd source: ${where}`);
                assert.deepEqual(p.layers, [{ layers: 'path', forced: r.layers === 'path', overlayBy: ['mount2'] }], where);
              }
              if (r.backing && r.backing !== 'auto') assert.deepEqual(p.backing, [{ backing: r.backing, forced: true }], where);
              else {
                if (fdSrc?.ok === false) assert.ok(!p.backing.some((b) => b.backing === 'fd'), where);
                if (file?.ok === false) assert.ok(!p.backing.some((b) => b.backing === 'file'), where);
              }
              if (!loops) assert.ok(!p.backing.some((b) => b.backing === 'loop'), where);
              const order = p.backing.map((b) => ['fd', 'file', 'loop'].indexOf(b.backing));
              assert.deepEqual(order, [...order].sort(), `backings best first: ${where}`);
              if (r.layers === 'fd') assert.deepEqual(p.layers.map((l) => l.layers), ['fd'], where);
              if (r.layers === 'path') assert.deepEqual(p.layers.map((l) => l.layers), ['path'], where);
              if (p.api === 'new' && r.layers !== 'fd') assert.equal(p.layers.at(-1)?.layers, 'path', `path layers are the last resort: ${where}`);
            }
  assert.ok(plans > 1000 && refusals > 100, `${plans} plans, ${refusals} refusals`);
});

test('ladder: the kernel first; an added rung only when asked, or after a privilege failure', () => {
  const fuse = { name: 'fuse', asked: (o: MountOptions) => o.fuse === true, afterPrivilegeFailure: true };
  const other = { name: 'other', asked: () => false, afterPrivilegeFailure: false };
  const o = { basedir: ['/objects'] };
  assert.deepEqual(planRungs(o, []), [KERNEL_RUNG]);
  assert.deepEqual(planRungs(o, [fuse, other]), [KERNEL_RUNG, 'fuse']);
  assert.deepEqual(planRungs({ ...o, fuse: true }, [fuse, other]), ['fuse']);
  assert.deepEqual(
    explainRecord([
      { stage: 'backing', rung: 'fd', outcome: 'refused', text: 'no fd source' },
      { stage: 'backing', rung: 'file', outcome: 'used', text: 'backing: file' },
      { stage: 'check', rung: 'check', outcome: 'note', text: 'verity: off' },
    ]),
    ['backing: file', 'verity: off'],
  );
});

// ---- the rung runner: the real FUSE rung's decisions, rungs that mount nothing ------------

const EPERM_LINE = 'mounting img on mnt: fsopen erofs: Operation not permitted (mounting needs root: CAP_SYS_ADMIN)';
/** A ladder whose rungs note each call and then succeed or fail as told; the FUSE rung keeps its real asked/afterPrivilegeFailure/why. */
function ladder(kernelOutcome: 'ok' | Error, others: Array<{ rung: MountRung; outcome: 'ok' | Error }>) {
  const calls: string[] = [];
  const result = (rung: string): RungResult => ({ rung, image: 'img', mountpoint: 'mnt', readonly: true, verity: false, explain: [`${rung}: its own line`], ms: 1 });
  const kernel = async () => {
    calls.push(KERNEL_RUNG);
    if (kernelOutcome !== 'ok') throw kernelOutcome;
    return result(KERNEL_RUNG);
  };
  const rungs = others.map(({ rung, outcome }): MountRung => ({
    ...rung,
    mount: async () => {
      calls.push(rung.name);
      if (outcome !== 'ok') throw outcome;
      return { result: result(rung.name) };
    },
  }));
  return { calls, climb: (o: MountOptions) => climbRungs('img', 'mnt', o, rungs, kernel) };
}
const base: MountOptions = { basedir: ['/objects'] };
const eperm = () => new MountError(EPERM_LINE, { privilege: true });

test('ladder: plans with the real FUSE rung (auto, asked, fuse=no) and several rungs in registration order', () => {
  const fuse = fuseRung;
  const always = { name: 'always', asked: () => false, afterPrivilegeFailure: true };
  const never = { name: 'never', asked: () => false, afterPrivilegeFailure: false };
  const named = { name: 'named', asked: (o: MountOptions) => o.source === 'named', afterPrivilegeFailure: (o: MountOptions) => o.fuse !== false };
  const cases: Array<[string, MountOptions, Array<Pick<MountRung, 'name' | 'asked' | 'afterPrivilegeFailure'>>, string[]]> = [
    ['auto: the kernel, then FUSE', base, [fuse], ['kernel', 'fuse']],
    ['asked for: FUSE alone', { ...base, fuse: true }, [fuse], ['fuse']],
    ['fuse=no: the kernel alone', { ...base, fuse: false }, [fuse], ['kernel']],
    ['fuse=no with -o fuse options: still the kernel alone', { ...base, fuse: false, passthrough: 'off', foreground: true }, [fuse], ['kernel']],
    ['several takers, in registration order', base, [always, fuse, never, named], ['kernel', 'always', 'fuse', 'named']],
    ['registration order the other way', base, [named, never, fuse, always], ['kernel', 'named', 'fuse', 'always']],
    ['fuse=no leaves the rungs that do not ask', { ...base, fuse: false }, [always, fuse, named], ['kernel', 'always']],
    ['two asked for: both, nothing else', { ...base, fuse: true, source: 'named' }, [always, fuse, named], ['fuse', 'named']],
    ['another asked for: FUSE not tried', { ...base, source: 'named' }, [always, fuse, named], ['named']],
  ];
  for (const [what, o, rungs, want] of cases) assert.deepEqual(planRungs(o, rungs), want, what);
});

test('ladder: the kernel mounts and FUSE is never tried; the record says the kernel', async () => {
  const l = ladder('ok', [{ rung: fuseRung, outcome: 'ok' }]);
  const m = await l.climb(base);
  assert.deepEqual(l.calls, ['kernel']);
  assert.equal(m.result.rung, 'kernel');
  assert.deepEqual(m.record.map((a) => [a.stage, a.rung, a.outcome]), [['rung', 'kernel', 'used']]);
  assert.match(m.result.explain[0], /^kernel: /);
  assert.equal(m.result.explain[1], 'kernel: its own line');
  assert.equal(m.closed, null);
});

test('ladder: after EPERM from the kernel, FUSE; --explain says why from the record', async () => {
  const l = ladder(eperm(), [{ rung: fuseRung, outcome: 'ok' }]);
  const m = await l.climb(base);
  assert.deepEqual(l.calls, ['kernel', 'fuse']);
  assert.equal(m.result.rung, 'fuse');
  assert.deepEqual(m.record, [
    { stage: 'rung', rung: 'kernel', outcome: 'refused', text: EPERM_LINE },
    { stage: 'rung', rung: 'fuse', outcome: 'used', text: `fuse: the kernel path lacks privilege (${EPERM_LINE}); FUSE needs none` },
  ]);
  assert.deepEqual(m.result.explain, [`fuse: the kernel path lacks privilege (${EPERM_LINE}); FUSE needs none`, 'fuse: its own line']);
});

const UNVERIFIABLE = 'digest= requires verified objects and the kernel cannot check them: this kernel lacks fs-verity (built without CONFIG_FS_VERITY)';
const unverifiable = () =>
  new MountError('digest=: the kernel cannot verify the objects, this kernel lacks fs-verity; the FUSE server verifies them itself (--fuse), or add tryverity to mount them unchecked', {
    unverifiable: UNVERIFIABLE,
  });

test('ladder: the kernel cannot verify objects the request requires verified: FUSE (with verity), and --explain says why', async () => {
  const l = ladder(unverifiable(), [{ rung: fuseRung, outcome: 'ok' }]);
  const o = { ...base, digest: 'ab'.repeat(32) };
  const m = await l.climb(o);
  assert.deepEqual(l.calls, ['kernel', 'fuse']);
  assert.equal(m.result.rung, 'fuse');
  assert.deepEqual(m.result.explain, [
    `fuse: ${UNVERIFIABLE}; the FUSE server checks every object against its digest and every block it reads (verity)`,
    'fuse: its own line',
  ]);
  assert.equal(fuseOptionsOf(o).verity, true, 'the server the ladder takes checks every object');
  assert.equal(fuseOptionsOf({ ...base, verity: 'require' }).verity, true);
});

test('ladder: a verity failure is the answer with fuse=no, and where FUSE cannot serve the request (upperdir, idmap)', async () => {
  for (const o of [
    { ...base, fuse: false },
    { ...base, upperdir: '/u', workdir: '/w' },
    { ...base, idmap: '/proc/1/ns/user' },
  ] as MountOptions[]) {
    const err = unverifiable();
    const l = ladder(err, [{ rung: fuseRung, outcome: 'ok' }]);
    await assert.rejects(l.climb(o), (e) => e === err, JSON.stringify(o));
    assert.deepEqual(l.calls, ['kernel'], JSON.stringify(o));
  }
  assert.match(unverifiable().message, /--fuse/, 'the error that remains names the way to a verified mount');
});

test('ladder: a verity failure passes by the rungs that take over only after a privilege failure', async () => {
  const privilegeOnly: MountRung = { name: 'privilege-only', asked: () => false, afterPrivilegeFailure: true, mount: async () => assert.fail('replaced') };
  const verityOnly: MountRung = { name: 'verity-only', asked: () => false, afterPrivilegeFailure: false, afterVerityFailure: true, mount: async () => assert.fail('replaced') };
  assert.deepEqual(planRungs(base, [privilegeOnly, verityOnly]), ['kernel', 'privilege-only', 'verity-only']);
  const l = ladder(unverifiable(), [
    { rung: privilegeOnly, outcome: 'ok' },
    { rung: verityOnly, outcome: 'ok' },
  ]);
  const m = await l.climb(base);
  assert.deepEqual(l.calls, ['kernel', 'verity-only']);
  assert.equal(m.result.explain[0], `verity-only: ${UNVERIFIABLE}`);
  // And the other way: EPERM passes by the rung that takes over only from a verity failure.
  const p = ladder(eperm(), [
    { rung: verityOnly, outcome: 'ok' },
    { rung: privilegeOnly, outcome: 'ok' },
  ]);
  await p.climb(base);
  assert.deepEqual(p.calls, ['kernel', 'privilege-only']);
  // No rung takes a verity failure over: the kernel's error is thrown as it is.
  const err = unverifiable();
  const alone = ladder(err, [{ rung: privilegeOnly, outcome: 'ok' }]);
  await assert.rejects(alone.climb(base), (e) => e === err);
  assert.deepEqual(alone.calls, ['kernel']);
});

test('ladder: fuse asked for: the kernel is not tried', async () => {
  const l = ladder(new Error('the kernel must not be called'), [{ rung: fuseRung, outcome: 'ok' }]);
  const m = await l.climb({ ...base, fuse: true });
  assert.deepEqual(l.calls, ['fuse']);
  assert.deepEqual(m.result.explain, ['fuse: asked for (--fuse)', 'fuse: its own line']);
});

test('ladder: fuse=no: the kernel\'s privilege error is the answer, as it is', async () => {
  const err = eperm();
  const l = ladder(err, [{ rung: fuseRung, outcome: 'ok' }]);
  await assert.rejects(l.climb({ ...base, fuse: false }), (e) => e === err);
  assert.deepEqual(l.calls, ['kernel']);
});

test('ladder: a failure that is not for lack of privilege is thrown, FUSE not tried', async () => {
  const failures: Error[] = [
    new MountError('img: wrong fs-verity digest: expected 00, the image has 11'),
    new MountError('mounting img on mnt: Invalid argument'),
    new IoError('basedir /objects: Permission denied', 'EACCES'),
    new UsageError('upperdir and workdir must be given together'),
    // The word alone does not count: only the kernel rung's EPERM flag does.
    new MountError('mnt: Operation not permitted'),
  ];
  for (const err of failures) {
    const l = ladder(err, [{ rung: fuseRung, outcome: 'ok' }]);
    await assert.rejects(l.climb(base), (e) => e === err, err.message);
    assert.deepEqual(l.calls, ['kernel'], err.message);
  }
});

test('ladder: when FUSE fails too its own error is thrown; with several takers each privilege failure hands on', async () => {
  const fuseFails = new MountError('mounting on mnt with fusermount3: mount failed: Permission denied');
  const l = ladder(eperm(), [{ rung: fuseRung, outcome: fuseFails }]);
  await assert.rejects(l.climb(base), (e) => e === fuseFails);
  assert.deepEqual(l.calls, ['kernel', 'fuse']);

  const other: MountRung = { name: 'other', asked: () => false, afterPrivilegeFailure: true, mount: async () => assert.fail('replaced') };
  const handsOn = ladder(eperm(), [
    { rung: fuseRung, outcome: new MountError('fuse: EPERM too', { privilege: true }) },
    { rung: other, outcome: 'ok' },
  ]);
  const m = await handsOn.climb(base);
  assert.deepEqual(handsOn.calls, ['kernel', 'fuse', 'other']);
  assert.deepEqual(m.record.map((a) => `${a.rung} ${a.outcome}`), ['kernel refused', 'fuse refused', 'other used']);
  assert.equal(m.result.explain[0], 'other: the kernel path lacks privilege (fuse: EPERM too)');

  const stops = ladder(eperm(), [
    { rung: fuseRung, outcome: fuseFails },
    { rung: other, outcome: 'ok' },
  ]);
  await assert.rejects(stops.climb(base), (e) => e === fuseFails);
  assert.deepEqual(stops.calls, ['kernel', 'fuse']);
});

test('ladder: a server serving in this process (foreground) hands its end back', async () => {
  let end!: () => void;
  const closed = new Promise<void>((resolve) => (end = resolve));
  const rung: MountRung = {
    ...fuseRung,
    mount: async () => ({ result: { rung: 'fuse', image: 'img', mountpoint: 'mnt', readonly: true, verity: false, explain: [], ms: 1 }, closed }),
  };
  const m = await climbRungs('img', 'mnt', { ...base, fuse: true, foreground: true }, [rung], async () => assert.fail('not the kernel'));
  assert.equal(m.closed, closed);
  assert.ok(!('closed' in m.result));
  end();
  await m.closed;
});

test('FUSE options: parsed with the others; the request mapped to the server; what FUSE cannot do refused', () => {
  assert.equal(parseOptionString('fuse').options.fuse, true);
  assert.equal(parseOptionString('fuse=yes').options.fuse, true);
  assert.equal(parseOptionString('fuse=no').options.fuse, false);
  const auto = parseOptionString('fuse,fuse=auto').options;
  assert.ok('fuse' in auto && auto.fuse === undefined, 'fuse=auto: set, and neither yes nor no');
  assert.deepEqual(parseOptionString('passthrough=off,allow_other,fuse_readers=4,log=/tmp/l\\,x,foreground').options, {
    passthrough: 'off',
    allowOther: true,
    fuseReaders: 4,
    log: '/tmp/l,x',
    foreground: true,
  });
  assert.throws(() => parseOptionString('fuse=maybe'), /^UsageError: invalid value for option fuse: 'maybe' \(expected yes, auto, no\)$/);
  assert.throws(() => parseOptionString('passthrough=on'), /invalid value for option passthrough: 'on' \(expected auto, off\)/);
  assert.throws(() => parseOptionString('fuse_readers=0'), /invalid value for option fuse_readers: '0' \(expected 1\.\.64\)/);
  assert.throws(() => parseOptionString('fuse_readers=65'), /expected 1\.\.64/);
  assert.throws(() => parseOptionString('log'), /no value given for option log/);

  assert.equal(fuseOptionsOf(base).verity, false);
  assert.equal(fuseOptionsOf({ ...base, verity: 'require' }).verity, true);
  assert.equal(fuseOptionsOf({ ...base, verity: 'try' }).verity, true, 'tryverity: the server can always check');
  assert.equal(fuseOptionsOf({ ...base, digest: 'ab'.repeat(32) }).verity, true, 'digest= implies verity, as on the kernel path');
  assert.equal(fuseOptionsOf({ ...base, digest: 'ab'.repeat(32), verity: 'off' }).verity, false, 'noverity keeps it off');
  assert.deepEqual(
    fuseOptionsOf({ ...base, passthrough: 'off', allowOther: true, fuseReaders: 3, log: '/l', foreground: true, dryRun: true }),
    { basedir: ['/objects'], digest: undefined, verity: false, passthrough: 'off', allowOther: true, readers: 3, log: '/l', foreground: true, dryRun: true },
  );
  assert.throws(() => fuseOptionsOf({ ...base, upperdir: '/u', workdir: '/w' }), /^UsageError: upperdir=\/workdir= are not supported with FUSE/);
  assert.throws(() => fuseOptionsOf({ ...base, idmap: '/proc/1/ns/user' }), /^UsageError: idmap= is not supported with FUSE$/);
});

const self = fileURLToPath(import.meta.url);
const setpriv = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => existsSync(p));
test(
  'the planner tests pass as an unprivileged user (nobody)',
  { skip: process.env.CFS_PLAN_UNPRIVILEGED ? 'this is that run' : process.getuid?.() !== 0 ? 'already not root' : !setpriv && 'no setpriv' },
  () => {
    const r = spawnSync(setpriv!, ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '--test', self], {
      encoding: 'utf8',
      // Without NODE_TEST_CONTEXT the child reports in TAP on its stdout instead of to this runner.
      env: { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'NODE_TEST_CONTEXT')), CFS_PLAN_UNPRIVILEGED: '1' },
    });
    assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /# fail 0/);
    assert.match(r.stdout, /# pass [1-9]/);
  },
);

// ---- who registers FUSE: the entry points, never the mount library -------------------------

test('the mount library alone has the kernel rung only; the package entry registers the FUSE and mount service rungs and the FUSE kind of mount', async () => {
  const { registeredMountRungs } = await import('../src/mount/ladder.js');
  const { registeredMountKinds } = await import('../src/mount/kinds.js');
  const { mountImage: libraryMount } = await import('../src/mount/mount.js');
  const dir = mkdtempSync(join(tmpdir(), 'cfs-register-'));
  try {
    const image = join(dir, 'image.cfs');
    writeFileSync(image, writeImage(parseDump(Buffer.from('/ 0 40755 2 0 0 0 0.0 - - -\n'))));
    mkdirSync(join(dir, 'mnt'));
    mkdirSync(join(dir, 'objects'));
    const request = { basedir: [join(dir, 'objects')], fuse: true, dryRun: true };
    assert.deepEqual(registeredMountRungs().map((r) => r.name), []);
    assert.deepEqual(registeredMountKinds().map((k) => k.name), []);
    await assert.rejects(libraryMount(image, join(dir, 'mnt'), request), /^MountError: fuse: no FUSE mount path is registered/);
    const entry = await import('../src/index.js');
    const m = await entry.mountImage(image, join(dir, 'mnt'), request);
    assert.equal(m.result.rung, 'fuse');
    assert.equal(m.result.dryRun, true);
    assert.deepEqual(registeredMountRungs().map((r) => r.name).sort(), ['fuse', 'service'], 'registered in either order: each rung has its place on the ladder');
    assert.deepEqual(registeredMountKinds().map((k) => [k.name, k.fstype]), [['fuse', 'fuse.composefs']]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
