import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, closeSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import crypto from 'node:crypto';
import {
  FsVerityHasher,
  digestToHex,
  fsverityDigest,
  fsverityDigestOfFile,
  fsverityDigestOfFileSync,
  hexToDigest,
} from '../src/fsverity/index.js';
import { digestToObjectPath, objectPathToDigest } from '../src/store/layout.js';

const FSVERITY = '/usr/bin/fsverity';
const haveTool = existsSync(FSVERITY);

/** What Debian's fsverity-utils says the digest of `path` is. */
function toolDigest(path: string, algorithm: 'sha256' | 'sha512' = 'sha256'): string {
  const out = execFileSync(FSVERITY, ['digest', `--hash-alg=${algorithm}`, path], { encoding: 'utf8' });
  const m = new RegExp(`^${algorithm}:([0-9a-f]{${algorithm === 'sha512' ? 128 : 64}}) `).exec(out);
  assert.ok(m, `unexpected fsverity output: ${out}`);
  return m[1];
}

/** Deterministic, non-repeating content (so block-order mistakes show). */
function content(size: number, seed: number): Buffer {
  const out = Buffer.alloc(size);
  let off = 0;
  let ctr = 0;
  while (off < size) {
    const h = crypto.createHash('sha256').update(`${seed}:${ctr++}`).digest();
    off += h.copy(out, off);
  }
  return out;
}

const SIZES = [0, 1, 4095, 4096, 4097, 8192, 128 * 4096, 128 * 4096 + 1, 1024 * 1024 + 1, 9 * 1024 * 1024 + 123];

test('fs-verity digests match fsverity-utils', { skip: haveTool ? false : 'no /usr/bin/fsverity: fs-verity digest comparison skipped' }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-fsverity-'));
  try {
    for (const [i, size] of SIZES.entries()) {
      const data = content(size, i);
      const path = join(dir, `f${size}`);
      writeFileSync(path, data);
      const want = toolDigest(path);
      assert.equal(digestToHex(fsverityDigest(data)), want, `in-memory digest, size ${size}`);
      assert.equal(digestToHex(fsverityDigestOfFileSync(path).digest), want, `sync file digest, size ${size}`);
      assert.equal(digestToHex(await fsverityDigestOfFile(path)), want, `async file digest, size ${size}`);
      // Odd chunk sizes exercise the partial-block paths of update().
      const h = new FsVerityHasher();
      for (let off = 0, step = 1; off < size; off += step, step = (step * 7 + 3) % 10007 + 1) h.update(data.subarray(off, off + step));
      assert.equal(digestToHex(h.digest()), want, `chunked digest, size ${size}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// 64 * 4096: one full block of SHA-512 hashes (64 to a block, not 128), and one more.
const SHA512_SIZES = [0, 1, 4095, 4096, 4097, 64 * 4096, 64 * 4096 + 1, 65 * 4096, 64 * 64 * 4096 + 5, 9 * 1024 * 1024 + 123];

test('sha512 fs-verity digests match fsverity digest --hash-alg=sha512, through every path', { skip: haveTool ? false : 'no /usr/bin/fsverity: fs-verity digest comparison skipped' }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-fsverity-'));
  try {
    for (const [i, size] of SHA512_SIZES.entries()) {
      const data = content(size, 100 + i);
      const path = join(dir, `f${size}`);
      writeFileSync(path, data);
      const want = toolDigest(path, 'sha512');
      assert.equal(digestToHex(fsverityDigest(data, 'sha512')), want, `in-memory digest, size ${size}`);
      assert.equal(digestToHex(fsverityDigestOfFileSync(path, { algorithm: 'sha512' }).digest), want, `sync file digest, size ${size}`);
      assert.equal(digestToHex(await fsverityDigestOfFile(path, 'sha512')), want, `async file digest, size ${size}`);
      for (const native of [true, false]) {
        const h = new FsVerityHasher({ algorithm: 'sha512', native });
        for (let off = 0, step = 1; off < size; off += step, step = (step * 7 + 3) % 10007 + 1) h.update(data.subarray(off, off + step));
        assert.equal(digestToHex(h.digest()), want, `chunked digest (native ${native}), size ${size}`);
      }
      // The same hasher goes on to the other algorithm's file unchanged.
      assert.equal(digestToHex(fsverityDigestOfFileSync(path).digest), toolDigest(path), `sha256 after sha512, size ${size}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a sparse file digests like its zero-filled content', { skip: haveTool ? false : 'no /usr/bin/fsverity: fs-verity digest comparison skipped' }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-fsverity-'));
  try {
    const path = join(dir, 'sparse');
    const fd = openSync(path, 'w');
    writeSync(fd, Buffer.from('head'), 0, 4, 0);
    writeSync(fd, Buffer.from('tail'), 0, 4, 3 * 1024 * 1024 + 17);
    closeSync(fd);
    const want = toolDigest(path);
    const fd2 = openSync(path, 'r');
    try {
      assert.equal(digestToHex(fsverityDigestOfFileSync(fd2).digest), want);
    } finally {
      closeSync(fd2);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the empty file has the well-known digest', () => {
  // fs-verity digest of an empty file: SHA-256 of the descriptor with size 0 and a zero root.
  assert.equal(digestToHex(fsverityDigest(Buffer.alloc(0))), '3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95');
});

test('hex and object path helpers', () => {
  const d = fsverityDigest(Buffer.from('hello'));
  const hex = digestToHex(d);
  assert.match(hex, /^[0-9a-f]{64}$/);
  assert.deepEqual(hexToDigest(hex), d);
  assert.deepEqual(hexToDigest(hex.toUpperCase()), d);
  assert.throws(() => hexToDigest(hex.slice(1)), /64 or 128 hex digits/);
  assert.throws(() => hexToDigest('g'.repeat(64)), /64 or 128 hex digits/);
  const p = digestToObjectPath(d);
  assert.equal(p, `${hex.slice(0, 2)}/${hex.slice(2)}`);
  assert.deepEqual(objectPathToDigest(p), d);
  assert.equal(objectPathToDigest(hex), null);
  const long = fsverityDigest(Buffer.from('hello'), 'sha512');
  const longHex = digestToHex(long);
  assert.match(longHex, /^[0-9a-f]{128}$/);
  assert.deepEqual(hexToDigest(longHex), long);
  assert.deepEqual(hexToDigest(longHex, 'sha512'), long);
  assert.throws(() => hexToDigest(longHex, 'sha256'), /64 hex digits/);
  assert.throws(() => hexToDigest(hex, 'sha512'), /128 hex digits/);
  assert.throws(() => hexToDigest(longHex.slice(2)), /64 or 128 hex digits/);
  const longPath = digestToObjectPath(long);
  assert.equal(longPath, `${longHex.slice(0, 2)}/${longHex.slice(2)}`);
  assert.deepEqual(objectPathToDigest(longPath), long);
});
