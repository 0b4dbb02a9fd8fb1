/**
 * This build against another commit of the project, side by side in one run:
 * `npm run bench -- --vs REV` (or `node dist/bench/versus.js REV`). REV is
 * checked out into a worktree under $CFS_BENCH_VS_DIR (default
 * /var/tmp/cfs-bench-vs), built there with its own scripts, and the same
 * whole-process tasks run with each build's executables, one after the other
 * in every round (the machine is noisy: a round's two runs see the same
 * moment), with cold caches before the tasks that read a tree:
 *  - the cs9 build from its dump (`mkcomposefs --from-file`);
 *  - `/usr` (CFS_BENCH_TREE) digested, then written into an empty store;
 *  - `cfs pull oci:LAYOUT` of the pull bench's 1.16 GB image into an empty repository;
 *  - a FUSE mount (`cfs mount --fuse`) of the `/usr/share` image: a metadata
 *    walk and a read of every file, cold.
 * Medians over $CFS_BENCH_VS_ROUNDS rounds (default 5; 11 for the cs9 build),
 * and the median of each round's ratio. CFS_BENCH_VS_ONLY=build,pull,fuse
 * (any of them) runs only those rows. Needs root for the cold caches and
 * the mounts (the rows that need it are skipped otherwise).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { median, runOnce, type Row } from './measure.js';
import { benchLayout } from './pull.js';

interface Build {
  label: string;
  root: string;
}

function sh(cmd: string, cwd?: string): string {
  const r = spawnSync('sh', ['-c', cmd], { cwd, encoding: 'utf8', maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`${cmd}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** A worktree of `rev`, built, whose node_modules are this checkout's (the dependencies are the same kind). */
function buildOf(repoRoot: string, rev: string): Build {
  const sha = sh(`git rev-parse --verify ${JSON.stringify(`${rev}^{commit}`)}`, repoRoot).trim();
  const base = process.env.CFS_BENCH_VS_DIR ?? '/var/tmp/cfs-bench-vs';
  const root = join(base, sha.slice(0, 12));
  if (!existsSync(join(root, 'package.json'))) {
    mkdirSync(base, { recursive: true });
    rmSync(root, { recursive: true, force: true });
    sh(`git worktree prune && git worktree add --detach ${root} ${sha}`, repoRoot);
    symlinkSync(join(repoRoot, 'node_modules'), join(root, 'node_modules'));
  }
  sh('node scripts/ensure.mjs', root);
  return { label: `${rev} (${sha.slice(0, 7)})`, root };
}

function settle(): void {
  spawnSync('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches']);
}

function seconds(cmd: string): number {
  const t0 = process.hrtime.bigint();
  sh(cmd);
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

interface Task {
  name: string;
  rounds: number;
  /** Run each build once, untimed, before the rounds (the "warm" rows: the page cache holds the tree for both). */
  warmup?: boolean;
  /** One timed run with build b, in seconds; `round` names its scratch space. */
  run(b: Build, round: number): Promise<number> | number;
}

async function sideBySide(tasks: Task[], head: Build, other: Build): Promise<Row[]> {
  const rows: Row[] = [];
  for (const t of tasks) {
    const a: number[] = [];
    const b: number[] = [];
    if (t.warmup) for (const build of [head, other]) await t.run(build, -1);
    for (let round = 0; round < t.rounds; round++) {
      // Alternate which build goes first, so neither always runs on a machine the other just warmed.
      const order = round % 2 === 0 ? [head, other] : [other, head];
      for (const build of order) (build === head ? a : b).push(await t.run(build, round));
    }
    const ratio = median(a.map((x, i) => x / b[i]));
    rows.push({
      task: t.name,
      [head.label]: `${median(a).toFixed(3)} s`,
      [other.label]: `${median(b).toFixed(3)} s`,
      ratio: `${ratio.toFixed(3)}x (rounds ${a.map((x, i) => (x / b[i]).toFixed(2)).join(' ')})`,
    });
    process.stderr.write(`versus: ${t.name}: ${rows[rows.length - 1].ratio}\n`);
  }
  return rows;
}

export async function benchVersus(ctx: { repoRoot: string; conformance: string | null; rev: string }): Promise<Row[]> {
  const head: Build = { label: 'this build', root: ctx.repoRoot };
  const other = buildOf(ctx.repoRoot, ctx.rev);
  const root = process.getuid?.() === 0;
  const rounds = Math.max(1, Number(process.env.CFS_BENCH_VS_ROUNDS ?? 5));
  const work = mkdtempSync('/var/tmp/cfs-bench-vs-run-');
  const tasks: Task[] = [];
  const only = process.env.CFS_BENCH_VS_ONLY?.split(',').filter(Boolean);
  const wanted = (rows: 'build' | 'pull' | 'fuse') => !only || only.includes(rows);
  const mnt = join(work, 'mnt');
  let fuseFixture: { image: string; store: string } | null = null;
  try {
    if (ctx.conformance && wanted('build')) {
      const dump = join(work, 'cs9.dump');
      writeFileSync(dump, gunzipSync(readFileSync(join(ctx.conformance, 'upstream', 'cs9-x86_64-minimal.dump.gz'))));
      tasks.push({
        name: 'mkcomposefs --from-file cs9 (22,010 entries)',
        rounds: 11,
        run: (b) => runOnce(join(b.root, 'bin', 'mkcomposefs.js'), ['--from-file', dump, join(work, 'cs9.img')]).wallMs / 1000,
      });
    }
    const tree = process.env.CFS_BENCH_TREE ?? '/usr';
    if (wanted('build')) tasks.push({
      name: `mkcomposefs --print-digest-only ${tree} (warm)`,
      rounds: Math.min(rounds, 3),
      warmup: true,
      run: (b) => runOnce(join(b.root, 'bin', 'mkcomposefs.js'), ['--print-digest-only', tree]).wallMs / 1000,
    });
    if (wanted('build')) tasks.push({
      name: `mkcomposefs --digest-store=EMPTY ${tree} IMAGE (warm)`,
      rounds: Math.min(rounds, 3),
      warmup: true,
      run: (b, round) => {
        const dir = join(work, `store-${round + 1}-${b === head ? 'a' : 'b'}`);
        mkdirSync(dir);
        return runOnce(join(b.root, 'bin', 'mkcomposefs.js'), [`--digest-store=${join(dir, 'objects')}`, tree, join(dir, 'image.cfs')]).wallMs / 1000;
      },
    });
    if (root && wanted('pull')) {
      const layout = benchLayout();
      tasks.push({
        name: 'cfs pull oci: (1.16 GB /usr image, 3 gzip layers) into an empty repository, cold',
        rounds,
        run: (b, round) => {
          settle();
          return runOnce(join(b.root, 'bin', 'cfs.js'), ['pull', '--quiet', '--repo', join(work, `repo-${round}-${b === head ? 'a' : 'b'}`), `oci:${layout}:usr`]).wallMs / 1000;
        },
      });
    }
    if (root && wanted('fuse')) {
      const share = process.env.CFS_BENCH_FUSE_TREE ?? '/usr/share';
      const fdir = join(work, 'fuse');
      mkdirSync(fdir);
      sh(`${join(ctx.repoRoot, 'bin', 'mkcomposefs.js')} --quiet --digest-store=${join(fdir, 'objects')} ${share} ${join(fdir, 'tree.cfs')}`);
      fuseFixture = { image: join(fdir, 'tree.cfs'), store: join(fdir, 'objects') };
      mkdirSync(mnt);
      const fuseTask = (what: 'walk' | 'read'): Task => ({
        name: `FUSE mount of ${share}: ${what === 'walk' ? "metadata walk (find -printf '%s %m %u')" : 'every file read (find -type f, cat of each)'}, cold`,
        rounds,
        run: (b) => {
          const cfs = join(b.root, 'bin', 'cfs.js');
          sh(`${cfs} mount --fuse -o basedir=${fuseFixture!.store} ${fuseFixture!.image} ${mnt}`);
          try {
            settle();
            return what === 'walk' ? seconds(`find ${mnt} -printf '%s %m %u\\n' > /dev/null`) : seconds(`find ${mnt} -type f -print0 | xargs -0 cat > /dev/null`);
          } finally {
            spawnSync(cfs, ['umount', mnt]);
          }
        },
      });
      tasks.push(fuseTask('walk'), fuseTask('read'));
    }
    const rows = await sideBySide(tasks, head, other);
    if (!root) rows.push({ task: '(not root: the pull and FUSE rows need cold caches and mounts, skipped)', [head.label]: '', [other.label]: '', ratio: '' });
    return rows;
  } finally {
    spawnSync('umount', ['-l', mnt], { stdio: 'ignore' });
    rmSync(work, { recursive: true, force: true });
  }
}

if (process.argv[1]?.endsWith('/bench/versus.js')) {
  const rev = process.argv[2];
  if (!rev) {
    process.stderr.write('usage: node dist/bench/versus.js REV\n');
    process.exit(2);
  }
  const { printTable } = await import('./measure.js');
  const { dirname, resolve } = await import('node:path');
  const { fileURLToPath } = await import('node:url');
  const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
  const conf = join(repoRoot, '..', 'shared', 'conformance');
  printTable(`Against ${rev}`, await benchVersus({ repoRoot, conformance: existsSync(conf) ? conf : null, rev }));
}
