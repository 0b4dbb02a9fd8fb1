/**
 * What creating one object file costs, by the way it is named, side by side
 * in each round (the machine is noisy): a dot-named temporary renamed into
 * place (renameat2 RENAME_NOREPLACE), an unnamed O_TMPFILE linked into place
 * (linkat through /proc/self/fd), and the final name created directly (not
 * crash-safe: the baseline). Each: 20,000 files of 12 KiB spread over 256
 * XX/ directories, synchronous calls, in a fresh directory of
 * $CFS_BENCH_DIR (default /var/tmp). `node dist/bench/file-create.js`.
 */
import { closeSync, constants, mkdirSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { execSync } from 'node:child_process';
import { join } from 'node:path';
import { linkFdAt, mkdirAt, openAt, openDirAt, openTmpfileAt, renameAt } from '../src/sys/dirfd.js';

type Way = 'temporary + rename' | 'O_TMPFILE + link' | 'final name directly';
const WAYS: Way[] = ['temporary + rename', 'O_TMPFILE + link', 'final name directly'];
const FILES = 20_000;
const DATA = Buffer.alloc(12 << 10, 7);

/** Microseconds a file. */
function run(way: Way, base: string): number {
  const root = mkdtempSync(join(base, 'cfs-bench-create-'));
  const rootFd = openSync(root, constants.O_RDONLY | constants.O_DIRECTORY);
  const dirs: number[] = [];
  try {
    for (let i = 0; i < 256; i++) {
      const name = i.toString(16).padStart(2, '0');
      mkdirAt(rootFd, name);
      dirs.push(openDirAt(rootFd, name));
    }
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < FILES; i++) {
      const dir = dirs[i & 255];
      const name = `object${i}`;
      if (way === 'temporary + rename') {
        const tmp = `.tmp${i}`;
        const fd = openAt(dir, tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
        writeSync(fd, DATA);
        closeSync(fd);
        renameAt(dir, tmp, dir, name, true);
      } else if (way === 'O_TMPFILE + link') {
        const fd = openTmpfileAt(dir, 0o644);
        writeSync(fd, DATA);
        linkFdAt(fd, dir, name);
        closeSync(fd);
      } else {
        const fd = openAt(dir, name, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o644);
        writeSync(fd, DATA);
        closeSync(fd);
      }
    }
    return Number(process.hrtime.bigint() - t0) / 1e3 / FILES;
  } finally {
    for (const fd of dirs) closeSync(fd);
    closeSync(rootFd);
    rmSync(root, { recursive: true, force: true });
  }
}

const base = process.env.CFS_BENCH_DIR ?? '/var/tmp';
mkdirSync(base, { recursive: true });
const rounds = Number(process.env.CFS_BENCH_ROUNDS ?? 7);
const samples = new Map<Way, number[]>(WAYS.map((w) => [w, []]));
for (let r = 0; r < rounds; r++) {
  for (const way of WAYS) {
    execSync('sync');
    samples.get(way)!.push(run(way, base));
  }
}
for (const way of WAYS) {
  const s = samples.get(way)!;
  const sorted = [...s].sort((a, b) => a - b);
  process.stdout.write(`${way}: median ${sorted[sorted.length >> 1].toFixed(1)} µs a file (rounds ${s.map((x) => x.toFixed(1)).join(' ')})\n`);
}
