/**
 * What checking a signature policy adds to a pull (issue #19: at most 50 ms
 * on the bench image). The bench image (bench/pull.ts's `/usr` layout) and a
 * small image are pushed to a local docker-registry by `skopeo copy
 * --sign-by` with a gpg key, their signatures served by an HTTP lookaside
 * (a static server on 127.0.0.1, as a registry's sigstore server is); each is
 * pulled into an empty repository with a `signedBy` policy and with
 * `--insecure-policy`, by turns:
 *  - the bench image, cold caches, $CFS_BENCH_PULL_ROUNDS rounds (default 3):
 *    both walls, and the time the check held the pull once the manifest was
 *    in (`--explain`'s "checked in N ms");
 *  - the small image, 15 pairs: the median of the paired differences, which
 *    is what the check adds to any pull, whatever the image's size.
 * Needs root, docker-registry, skopeo, umoci, gpg.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { median, runOnce, type Row } from './measure.js';
import { benchLayout } from './pull.js';
import { gzLayers, writeLayout } from '../test/helpers/oci-layout.js';
import { haveRegistry, makeCertificates, startRegistry } from '../test/helpers/registry.js';

function gpgKey(home: string): { fingerprint: string; publicKey: string } {
  const env = { ...process.env, GNUPGHOME: home };
  execFileSync('gpg', ['--batch', '--pinentry-mode', 'loopback', '--passphrase', '', '--quick-gen-key', 'Bench <bench@example.com>', 'default', 'default', 'never'], { env, stdio: 'ignore' });
  const colons = execFileSync('gpg', ['--batch', '--with-colons', '--list-keys'], { env, encoding: 'utf8' });
  const fingerprint = colons.split('\n').find((l) => l.startsWith('fpr:'))!.split(':')[9]!;
  const publicKey = join(home, 'bench.gpg');
  execFileSync('gpg', ['--batch', '--output', publicKey, '--export', fingerprint], { env });
  return { fingerprint, publicKey };
}

export async function benchSignature(ctx: { repoRoot: string }): Promise<Row[]> {
  const have = (t: string) => spawnSync('sh', ['-c', `command -v ${t}`], { stdio: 'ignore' }).status === 0;
  if (process.getuid?.() !== 0 || !haveRegistry || !have('gpg')) return [{ task: 'skipped: needs root, docker-registry, skopeo, umoci and gpg', wall: '-' }];
  const work = mkdtempSync(join(tmpdir(), 'cfs-bench-sig-'));
  const gnupg = join(work, 'gnupg');
  mkdirSync(gnupg, { mode: 0o700 });
  const certs = await makeCertificates(join(work, 'certs'));
  const registry = await startRegistry({ auth: { htpasswd: { bench: 'bench' } } }, certs);
  const sigs = join(work, 'sigs');
  // The lookaside is served by a process of its own: the pulls below are timed with spawnSync,
  // which holds this process's event loop.
  const serverScript = join(work, 'lookaside-server.cjs');
  writeFileSync(
    serverScript,
    `const { createServer } = require('node:http'); const { createReadStream, statSync } = require('node:fs'); const { join, normalize } = require('node:path');
const root = process.argv[2];
const server = createServer((req, res) => {
  const path = normalize(join(root, decodeURIComponent((req.url || '/').split('?')[0])));
  let size = -1;
  try { if (path.startsWith(root + '/') && statSync(path).isFile()) size = statSync(path).size; } catch {}
  if (size < 0) { res.statusCode = 404; res.end(); return; }
  res.setHeader('content-length', size);
  createReadStream(path).pipe(res);
});
server.listen(0, '127.0.0.1', () => process.stdout.write(server.address().port + '\\n'));`,
  );
  const server = spawn(process.execPath, [serverScript, sigs], { stdio: ['ignore', 'pipe', 'inherit'] });
  const rows: Row[] = [];
  try {
    const port = await new Promise<number>((resolve, reject) => {
      server.stdout!.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
      server.once('exit', () => reject(new Error('the lookaside server exited')));
    });
    const key = gpgKey(gnupg);
    const staging = join(work, 'registries-staging.d');
    const reading = join(work, 'registries.d');
    mkdirSync(staging);
    mkdirSync(reading);
    writeFileSync(join(staging, 'bench.yaml'), `docker:\n  ${registry.host}:\n    lookaside-staging: file://${sigs}\n`);
    writeFileSync(join(reading, 'bench.yaml'), `docker:\n  ${registry.host}:\n    lookaside: http://127.0.0.1:${port}\n`);
    const small = join(work, 'small');
    writeLayout(small, 'small', gzLayers([{ path: 'usr/', type: 'dir' }, { path: 'usr/hello', data: 'hello\n' }]));
    const pushSigned = (from: string, to: string) =>
      execFileSync('skopeo', ['copy', '--quiet', '--dest-cert-dir', certs.certDir, '--dest-creds', 'bench:bench', '--registries.d', staging, '--sign-by', key.fingerprint, from, `docker://${registry.host}/${to}`], { env: { ...process.env, GNUPGHOME: gnupg } });
    pushSigned(`oci:${benchLayout()}:usr`, 'bench/usr:1');
    pushSigned(`oci:${small}:small`, 'bench/small:1');
    const policy = join(work, 'policy.json');
    writeFileSync(policy, JSON.stringify({ default: [{ type: 'reject' }], transports: { docker: { [`${registry.host}/bench`]: [{ type: 'signedBy', keyType: 'GPGKeys', keyPath: key.publicKey }] } } }));

    const cfs = join(ctx.repoRoot, 'bin', 'cfs.js');
    const common = ['--quiet', '--creds', 'bench:bench', '--cert-dir', certs.certDir, '--registries.d', reading];
    const signed = (repo: string, ref: string) => runOnce(cfs, ['pull', ...common, '--policy', policy, '--explain', '--repo', repo, `docker://${registry.host}/${ref}`]);
    const unchecked = (repo: string, ref: string) => runOnce(cfs, ['pull', ...common, '--insecure-policy', '--repo', repo, `docker://${registry.host}/${ref}`]);
    const checkedMs = (stderr: string) => {
      const m = /checked in (\d+) ms/.exec(stderr);
      if (!m) throw new Error(`no policy line in cfs pull --explain: ${stderr}`);
      return Number(m[1]);
    };
    const settle = () => spawnSync('sh', ['-c', 'sync; echo 3 > /proc/sys/vm/drop_caches'], { stdio: 'ignore' });

    // The small image: what the check adds to any pull (pairs by turns, one not counted).
    const diffs: number[] = [];
    const smallChecks: number[] = [];
    const smallPlain: number[] = [];
    for (let i = -1; i < 15; i++) {
      const d = join(work, `small-${i + 1}`);
      const order = i % 2 === 0;
      const a = order ? signed(join(d, 's'), 'bench/small:1') : null;
      const b = unchecked(join(d, 'u'), 'bench/small:1');
      const s = a ?? signed(join(d, 's'), 'bench/small:1');
      if (i >= 0) {
        diffs.push(s.wallMs - b.wallMs);
        smallChecks.push(checkedMs(s.stderr));
        smallPlain.push(b.wallMs);
      }
    }
    // The bench image, cold caches, by turns.
    const rounds = Math.max(1, Number(process.env.CFS_BENCH_PULL_ROUNDS ?? 3));
    const big: { s: number; u: number; check: number }[] = [];
    for (let i = 0; i < rounds; i++) {
      const d = join(work, `big-${i}`);
      settle();
      const first = i % 2 === 0 ? signed(join(d, 's'), 'bench/usr:1') : unchecked(join(d, 'u'), 'bench/usr:1');
      settle();
      const second = i % 2 === 0 ? unchecked(join(d, 'u'), 'bench/usr:1') : signed(join(d, 's'), 'bench/usr:1');
      const [s, u] = i % 2 === 0 ? [first, second] : [second, first];
      big.push({ s: s.wallMs, u: u.wallMs, check: checkedMs(s.stderr) });
      rmSync(d, { recursive: true, force: true });
    }
    const sec = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
    const ratios = big.map((r) => r.s / r.u).sort((x, y) => x - y);
    rows.push({
      task: `cfs pull of the bench image with a signedBy policy (skopeo --sign-by signature over an HTTP lookaside), empty repository, cold caches; median of ${rounds}`,
      wall: `${sec(median(big.map((r) => r.s)))} (--insecure-policy: ${sec(median(big.map((r) => r.u)))})`,
      ratio: `${median(ratios).toFixed(3)}x (per round ${ratios.map((x) => x.toFixed(3)).join(', ')})`,
      'added by the check': `${median(big.map((r) => r.check))} ms held after the manifest (per round ${big.map((r) => r.check).join(', ')}); goal ≤ 50 ms`,
    });
    rows.push({
      task: 'cfs pull of a one-file image, signedBy against --insecure-policy, 15 pairs by turns',
      wall: `${median(smallPlain).toFixed(0)} ms unchecked`,
      ratio: '',
      'added by the check': `${median(diffs).toFixed(0)} ms median paired difference (${median(smallChecks)} ms held after the manifest); goal ≤ 50 ms`,
    });
  } finally {
    server.kill();
    spawnSync('gpgconf', ['--kill', 'all'], { env: { ...process.env, GNUPGHOME: gnupg } });
    await registry.stop();
    rmSync(work, { recursive: true, force: true });
  }
  return rows;
}

if (process.argv[1]?.endsWith('/bench/signature.js')) {
  const { printTable } = await import('./measure.js');
  const { dirname, resolve } = await import('node:path');
  const { fileURLToPath } = await import('node:url');
  printTable('Signature policy on pull', await benchSignature({ repoRoot: resolve(dirname(fileURLToPath(import.meta.url)), '..', '..') }));
}
