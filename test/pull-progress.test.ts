/**
 * The progress of `cfs pull` (issue 11, item 7): on a terminal each layer's
 * bytes of its size, the total and the rate, then the build; nothing with
 * `--quiet` or off a terminal; `--json` prints one record for programs.
 * The terminal is a real pseudo-terminal: util-linux `script` runs `cfs`
 * on one, its stdout sent to a file so that what the terminal shows is
 * stderr alone.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzip, makeTar, type TarEntry } from './helpers/tar-writer.js';
import { gzLayer, writeLayout } from './helpers/oci-layout.js';
import { cliPath } from './helpers/paths.js';

const T = 1700000000;
const haveScript = spawnSync('sh', ['-c', 'command -v script'], { stdio: 'ignore' }).status === 0;

function noise(n: number, seed: string): Buffer {
  const out = Buffer.alloc(n);
  for (let off = 0, i = 0; off < n; i++) off += createHash('sha512').update(`${seed}:${i}`).digest().copy(out, off);
  return out;
}

const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** `cfs ARGS >stdoutFile` on a pseudo-terminal 200 columns wide: what the terminal got. */
function onTerminal(args: string[], stdoutFile: string): { status: number | null; terminal: string } {
  const cmd = `stty cols 200; ${[cliPath('cfs'), ...args].map(quote).join(' ')} >${quote(stdoutFile)}`;
  const r = spawnSync('script', ['-qfec', cmd, '/dev/null'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  return { status: r.status, terminal: r.stdout };
}

const B = String.raw`[\d.]+ [KMGT]?B`;

test('progress on a terminal: layers, bytes, total, rate, then the build; none with --quiet, off a terminal or with --json', { skip: haveScript ? false : 'no script (util-linux) for a pseudo-terminal' }, () => {
  const tmp = mkdtempSync(join(tmpdir(), 'cfs-progress-'));
  try {
    const layout = join(tmp, 'layout');
    const layer = (seed: string, n: number): TarEntry[] => [
      { path: './', type: 'dir', mtime: T },
      ...Array.from({ length: n }, (_, i) => ({ path: `${seed}${i}`, data: noise(400_000, `${seed}${i}`), mtime: T })),
    ];
    const tars = [makeTar(layer('a', 12)), makeTar(layer('b', 8))];
    writeLayout(layout, 'img', tars.map((t) => gzLayer(t, gzip(t))));
    const out = join(tmp, 'stdout');

    const first = onTerminal(['pull', '--repo', join(tmp, 'r1'), `oci:${layout}:img`, 'img'], out);
    assert.equal(first.status, 0, first.terminal);
    const digest = readFileSync(out, 'utf8');
    assert.match(digest, /^[0-9a-f]{64}\n$/);
    const draws = first.terminal.split('\r\x1b[K');
    assert.equal(draws[0], '', 'every draw rewrites the line');
    assert.equal(draws.at(-1), '', 'the line is cleared at the end');
    const lines = draws.slice(1, -1);
    // Every layer in flight with its bytes of its size, after the total and the rate.
    const fetching = new RegExp(String.raw`^layers [0-2]/2, ${B}/${B}, ${B}/s`);
    assert.ok(lines.some((l) => new RegExp(String.raw`${fetching.source} · #1 ${B}/${B}, #2 ${B}/${B}$`).test(l)), `both layers in flight:\n${lines.join('\n')}`);
    assert.ok(lines.some((l) => /^layers 1\/2, /.test(l)), 'one layer done');
    assert.ok(lines.some((l) => new RegExp(String.raw`^layers 2/2, (${B})/\1, `).test(l)), `all bytes: ${lines.join('\n')}`);
    assert.ok(lines.includes('building the image from 2 layers'), 'then the build');
    const phases = lines.map((l) => (l === 'resolving the image' ? 'r' : fetching.test(l) ? 'f' : l.startsWith('building') ? 'b' : '?')).join('');
    assert.match(phases, /^r*f+b+$/, `resolving, fetching, building, in that order:\n${lines.join('\n')}`);

    // The same image again: its layers are in the repository.
    const again = onTerminal(['pull', '--repo', join(tmp, 'r1'), `oci:${layout}:img`, 'img2'], out);
    assert.equal(again.status, 0, again.terminal);
    assert.match(again.terminal, /layers 2\/2, 0 B\/0 B/);
    assert.match(again.terminal, /building the image from 2 layers/);

    // --quiet on a terminal: nothing but the digest.
    const quiet = onTerminal(['pull', '--quiet', '--repo', join(tmp, 'r2'), `oci:${layout}:img`, 'img'], out);
    assert.equal(quiet.status, 0, quiet.terminal);
    assert.equal(quiet.terminal, '');
    assert.equal(readFileSync(out, 'utf8'), digest);

    // --json on a terminal: one record on stdout, nothing on the terminal.
    const json = onTerminal(['pull', '--json', '--repo', join(tmp, 'r3'), `oci:${layout}:img`, 'img'], out);
    assert.equal(json.status, 0, json.terminal);
    assert.equal(json.terminal, '');
    const text = readFileSync(out, 'utf8');
    assert.equal(text.split('\n').length, 2, 'one line');
    const rec = JSON.parse(text);
    assert.equal(rec.image, digest.trim());
    assert.equal(rec.name, 'img');
    assert.equal(rec.layersImported, 2);
    assert.equal(rec.layers.length, 2);

    // Off a terminal (pipes): no progress on stderr.
    const piped = spawnSync(cliPath('cfs'), ['pull', '--repo', join(tmp, 'r4'), `oci:${layout}:img`, 'img'], { encoding: 'utf8' });
    assert.equal(piped.status, 0, piped.stderr);
    assert.equal(piped.stderr, '');
    assert.equal(piped.stdout, digest);
    const pipedJson = spawnSync(cliPath('cfs'), ['pull', '--json', '--repo', join(tmp, 'r5'), `oci:${layout}:img`, 'img'], { encoding: 'utf8' });
    assert.equal(pipedJson.status, 0, pipedJson.stderr);
    assert.equal(pipedJson.stderr, '');
    assert.equal(JSON.parse(pipedJson.stdout).image, digest.trim());
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});
