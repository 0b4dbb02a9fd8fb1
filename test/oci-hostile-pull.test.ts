/**
 * `cfs pull` of hostile OCI layouts (issue #16): a zstd layer that inflates
 * a thousand times beyond its size must not take the memory with it; paths
 * deeper than any tree walk's stack, or with components longer than a file
 * name can be, end in one line naming the layer; strings of the image that
 * reach a terminal (`cfs images`, `cfs inspect`, error lines) carry no
 * control characters.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hasZstd, makeTar } from './helpers/tar-writer.js';
import { writeLayout } from './helpers/oci-layout.js';
import { cliPath } from './helpers/paths.js';
import { cfs, ok } from './helpers/cli.js';

const T = 1700000000;
const ZSTD = 'application/vnd.oci.image.layer.v1.tar+zstd';
void ok; // TEMP
const haveGnuTime = spawnSync('/usr/bin/time', ['-f', '%M', 'true'], { stdio: 'ignore' }).status === 0;

function withTemp(fn: (dir: string) => Promise<void> | void): () => Promise<void> {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cfs-hostile-'));
    try {
      await fn(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

function oneLineError(r: ReturnType<typeof cfs>, pattern: RegExp): string {
  assert.notEqual(r.status, 0, `should fail; stdout: ${r.stdout}`);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `one line: ${r.stderr.slice(0, 2000)}`);
  assert.match(lines[0], pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at |internal error/);
  return lines[0];
}

/**
 * A tar of one file of `size` zero bytes, through `zstd -3` as it is made
 * (never held whole): the blob and the tar's sha256.
 */
async function zstdOfZeros(size: number): Promise<{ blob: Buffer; diffId: string }> {
  const header = makeTar([{ path: 'zeros', data: '', sizeOverride: size, mtime: T }], { noEnd: true });
  const z = spawn('zstd', ['-3', '-q', '-c'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const out: Buffer[] = [];
  z.stdout.on('data', (c: Buffer) => out.push(c));
  const hash = createHash('sha256');
  const write = async (b: Buffer) => {
    hash.update(b);
    if (!z.stdin.write(b)) await once(z.stdin, 'drain');
  };
  await write(header);
  const zeros = Buffer.alloc(1 << 20);
  // The file's bytes (a multiple of 512: no padding), then the end marker.
  for (let left = size + 1024; left > 0; left -= zeros.length) await write(left >= zeros.length ? zeros : zeros.subarray(0, left));
  z.stdin.end();
  const [code] = await once(z, 'close');
  assert.equal(code, 0, 'zstd');
  return { blob: Buffer.concat(out), diffId: `sha256:${hash.digest('hex')}` };
}

test(
  'a zstd bomb (2 GiB of zeros in 67 KB) is pulled in at most 512 MiB of memory',
  { skip: !hasZstd() ? 'no zstd tool' : !haveGnuTime ? 'no GNU time' : false, timeout: 300_000 },
  withTemp(async (tmp) => {
    const size = 2 ** 31;
    const { blob, diffId } = await zstdOfZeros(size);
    assert.ok(blob.length < 1 << 20, `the bomb is small: ${blob.length} bytes`);
    const layout = join(tmp, 'layout');
    writeLayout(layout, 'bomb', [{ tar: Buffer.alloc(0), blob, mediaType: ZSTD, diffId }]);
    const repo = join(tmp, 'repo');
    const rssFile = join(tmp, 'rss');
    const r = spawnSync('/usr/bin/time', ['-f', '%M', '-o', rssFile, cliPath('cfs'), 'pull', '--repo', repo, '--json', `oci:${layout}:bomb`, 'bomb'], { encoding: 'utf8' });
    assert.equal(r.status, 0, `pull: ${r.stderr}`);
    const record = JSON.parse(r.stdout) as { size: number };
    assert.ok(record.size >= size, `the image holds the file: ${record.size}`);
    const peakKiB = Number(readFileSync(rssFile, 'utf8').trim().split('\n').pop());
    assert.ok(peakKiB > 0, 'GNU time measured');
    assert.ok(peakKiB <= 512 * 1024, `peak RSS ${Math.round(peakKiB / 1024)} MiB, at most 512 MiB`);
  }),
);

test(
  'a zstd frame asking for a window beyond 128 MiB is refused with one line',
  { skip: !haveGnuTime ? 'no GNU time' : false },
  withTemp((tmp) => {
    // Single-segment frame declaring 1.75 GiB of content (the window fzstd would allocate and sweep), then one RLE block of 128 KiB of zeros.
    const content = 1792 << 20;
    const header = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0xa0, 0, 0, 0, 0]);
    header.writeUInt32LE(content, 5);
    const block = Buffer.alloc(4);
    block.writeUIntLE((1 | (1 << 1) | ((128 << 10) << 3)) >>> 0, 0, 3);
    const blob = Buffer.concat([header, block]);
    const tar = Buffer.alloc(128 << 10); // what the block holds: an empty archive
    const layout = join(tmp, 'layout');
    writeLayout(layout, 'wide', [{ tar, blob, mediaType: ZSTD }]);
    const rssFile = join(tmp, 'rss');
    const r = spawnSync('/usr/bin/time', ['-f', '%M', '-o', rssFile, cliPath('cfs'), 'pull', '--repo', join(tmp, 'repo'), `oci:${layout}:wide`, 'wide'], { encoding: 'utf8' });
    oneLineError(r, /: layer sha256:[0-9a-f]{64}: refused zstd data: frame needs a window of 1879048192 bytes, more than 134217728$/);
    const peakKiB = Number(readFileSync(rssFile, 'utf8').trim().split('\n').pop());
    assert.ok(peakKiB <= 512 * 1024, `peak RSS ${Math.round(peakKiB / 1024)} MiB`);
  }),
);
