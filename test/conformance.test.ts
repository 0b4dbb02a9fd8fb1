/**
 * The reference's test vectors: every dump must give the image the reference
 * writes, byte for byte; every image must pass fsck.erofs and mount; every
 * should-fail dump must be refused by the drop-in mkcomposefs.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { parseDump } from '../src/dumpfile/parse.js';
import { writeImage } from '../src/erofs/writer.js';
import { readImage } from '../src/erofs/reader.js';
import { writeDump } from '../src/dumpfile/write.js';
import { conformanceDir, NO_CONFORMANCE, cliPath, isRoot } from './helpers/paths.js';
import { compareMountWithTree } from './helpers/trees.js';

interface Vector {
  name: string;
  dump: Buffer;
  sha256: string;
  version: number | null;
}

function loadVectors(dir: string): Vector[] {
  const vectors: Vector[] = [];
  for (const sub of ['upstream', 'generated']) {
    const base = join(dir, sub);
    for (const f of readdirSync(base).sort()) {
      if (!/\.dump(\.gz)?$/.test(f) || f.startsWith('should-fail')) continue;
      const path = join(base, f);
      if (!existsSync(`${path}.sha256`)) continue;
      const raw = readFileSync(path);
      const version = existsSync(`${path}.version`) ? Number(readFileSync(`${path}.version`, 'utf8').trim()) : null;
      vectors.push({
        name: `${sub}/${f}`,
        dump: f.endsWith('.gz') ? gunzipSync(raw) : raw,
        sha256: readFileSync(`${path}.sha256`, 'utf8').trim().split(/\s+/)[0],
        version,
      });
    }
  }
  return vectors;
}

const versionOpts = (v: Vector) => (v.version === null ? {} : { minVersion: v.version, maxVersion: v.version });

test('every conformance vector reproduces the reference image byte for byte', (t) => {
  const dir = conformanceDir();
  if (!dir) return t.skip(NO_CONFORMANCE);
  const vectors = loadVectors(dir);
  assert.ok(vectors.length >= 30, `found ${vectors.length} vectors`);
  const differing: string[] = [];
  for (const v of vectors) {
    let got: string;
    try {
      got = createHash('sha256').update(writeImage(parseDump(v.dump), versionOpts(v))).digest('hex');
    } catch (err) {
      differing.push(`${v.name}: ${(err as Error).message}`);
      continue;
    }
    if (got !== v.sha256) differing.push(`${v.name}: sha256 ${got} != ${v.sha256}`);
  }
  assert.deepEqual(differing, [], `vectors that differ:\n${differing.join('\n')}`);
});

test('the drop-in mkcomposefs writes the same images and digests as the library', (t) => {
  const dir = conformanceDir();
  if (!dir) return t.skip(NO_CONFORMANCE);
  const tmp = mkdtempSync(join(tmpdir(), 'cfs-conf-'));
  try {
    for (const v of loadVectors(dir).filter((x) => /special|gen-3-120|cs9/.test(x.name))) {
      const dump = join(tmp, 'in.dump');
      writeFileSync(dump, v.dump);
      const out = join(tmp, 'out.img');
      const args = ['--print-digest', '--from-file', dump, out];
      if (v.version !== null) args.unshift(`--min-version=${v.version}`, `--max-version=${v.version}`);
      const r = spawnSync(cliPath('mkcomposefs'), args, { encoding: 'utf8' });
      assert.equal(r.status, 0, `${v.name}: ${r.stderr}`);
      const image = readFileSync(out);
      assert.equal(createHash('sha256').update(image).digest('hex'), v.sha256, v.name);
      const fsv = spawnSync('fsverity', ['digest', out], { encoding: 'utf8' });
      if (fsv.status === 0) assert.equal(`sha256:${r.stdout.trim()}`, fsv.stdout.split(' ')[0], `${v.name}: --print-digest`);
      const only = spawnSync(cliPath('mkcomposefs'), [...args.filter((a) => a !== out && a !== '--print-digest'), '--print-digest-only'], { encoding: 'utf8' });
      assert.equal(only.status, 0, only.stderr);
      assert.equal(only.stdout, r.stdout, `${v.name}: --print-digest-only prints the same digest`);
      const stdin = spawnSync(cliPath('mkcomposefs'), ['--from-file', '-', '-', ...(v.version === null ? [] : [`--min-version=${v.version}`, `--max-version=${v.version}`])], {
        input: v.dump,
        maxBuffer: 1 << 28,
      });
      assert.equal(stdin.status, 0, `${v.name}: dump on stdin, image on stdout: ${stdin.stderr}`);
      assert.ok(Buffer.from(stdin.stdout).equals(image), `${v.name}: stdin/stdout gives the same image`);
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

test('fsck.erofs accepts every conformance image', (t) => {
  const dir = conformanceDir();
  if (!dir) return t.skip(NO_CONFORMANCE);
  if (spawnSync('sh', ['-c', 'command -v fsck.erofs']).status !== 0) return t.skip('fsck.erofs (erofs-utils) is not installed');
  const tmp = mkdtempSync(join(tmpdir(), 'cfs-fsck-'));
  try {
    const failures: string[] = [];
    for (const v of loadVectors(dir)) {
      const img = join(tmp, 'x.img');
      writeFileSync(img, writeImage(parseDump(v.dump), versionOpts(v)));
      const r = spawnSync('fsck.erofs', [img], { encoding: 'utf8' });
      if (r.status !== 0) failures.push(`${v.name}: ${(r.stdout + r.stderr).trim().split('\n').slice(-1)[0]}`);
    }
    assert.deepEqual(failures, []);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

test('the kernel mounts the images of the generated trees and shows what their dumps say', (t) => {
  const dir = conformanceDir();
  if (!dir) return t.skip(NO_CONFORMANCE);
  if (!isRoot) return t.skip('mounting needs root');
  const tmp = mkdtempSync(join(tmpdir(), 'cfs-mnt-'));
  try {
    for (const v of loadVectors(dir).filter((x) => x.name.startsWith('generated/'))) {
      const img = join(tmp, 'x.img');
      const mnt = join(tmp, 'mnt');
      mkdirSync(mnt, { recursive: true });
      const tree = parseDump(v.dump);
      writeFileSync(img, writeImage(tree, versionOpts(v)));
      const version = readFileSync(img).readUInt32LE(12);
      const m = spawnSync('mount', ['-t', 'erofs', '-o', 'ro', img, mnt], { encoding: 'utf8' });
      assert.equal(m.status, 0, `${v.name}: mount: ${m.stderr}`);
      try {
        compareMountWithTree(mnt, tree, version);
      } catch (err) {
        throw new Error(`${v.name}: ${(err as Error).message}`);
      } finally {
        spawnSync('umount', [mnt]);
      }
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

test('mkcomposefs refuses every should-fail dump with status 1, one line, and writes nothing', (t) => {
  const dir = conformanceDir();
  if (!dir) return t.skip(NO_CONFORMANCE);
  const tmp = mkdtempSync(join(tmpdir(), 'cfs-fail-'));
  try {
    const files = readdirSync(join(dir, 'upstream')).filter((f) => f.startsWith('should-fail-'));
    assert.ok(files.length >= 10);
    for (const f of files) {
      const out = join(tmp, 'out.img');
      const r: SpawnSyncReturns<string> = spawnSync(cliPath('mkcomposefs'), ['--from-file', join(dir, 'upstream', f), out], { encoding: 'utf8' });
      // Upstream's test-should-fail.sh checks for status 1 exactly.
      assert.equal(r.status, 1, `${f}: exit status ${r.status} (1 expected)`);
      const lines: string[] = r.stderr.trim().split('\n');
      assert.equal(lines.length, 1, `${f}: expected one line, got:\n${r.stderr}`);
      assert.match(lines[0], /^mkcomposefs: /, f);
      assert.doesNotMatch(r.stderr, /\n\s+at /, `${f}: stack trace`);
      assert.deepEqual(readdirSync(tmp), [], `${f}: left files behind`);
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

test('every vector image -> dump file -> image is byte-identical', (t) => {
  const dir = conformanceDir();
  if (!dir) return t.skip(NO_CONFORMANCE);
  const differing: string[] = [];
  for (const v of loadVectors(dir)) {
    const image = writeImage(parseDump(v.dump), versionOpts(v));
    const { root, version } = readImage(image);
    const again = writeImage(parseDump(writeDump(root)), { minVersion: version, maxVersion: version });
    if (!again.equals(image)) differing.push(v.name);
  }
  assert.deepEqual(differing, []);
});
