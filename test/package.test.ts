/**
 * The npm package as a user installs it (issue 16, item 13): a clone with
 * nothing built, installed globally as a folder (npm links it and installs
 * none of its dependencies: its `prepare` must), then packed (`prepack`
 * builds) and the tarball installed globally into a temporary prefix. The
 * commands must run from the prefix's bin, the library must import from its
 * lib/node_modules, and the package must hold what they need and nothing of
 * the tests. Dependencies come from the npm cache (`npm ci` filled it) when
 * they are there (--prefer-offline).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { repoRoot } from './helpers/paths.js';

const hasNpm = spawnSync('npm', ['--version'], { encoding: 'utf8' }).status === 0;

/** The environment of an npm run by this test: the settings of an npm this test may itself run under (`npm test`) left out. */
function npmEnv(): NodeJS.ProcessEnv {
  const outer = /^npm_config_(global|location|prefix|omit|include|production|only|install_links|dry_run)$/i;
  return { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !outer.test(k))), npm_config_prefer_offline: 'true', npm_config_audit: 'false', npm_config_fund: 'false' };
}

function sh(cmd: string, args: string[], cwd: string, timeout = 300_000): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', env: npmEnv(), timeout, maxBuffer: 64 << 20 });
  return { status: r.status, stdout: r.stdout, stderr: `${r.stderr}${r.error ? String(r.error) : ''}` };
}

function succeeds(r: { status: number | null; stdout: string; stderr: string }, what: string): string {
  assert.equal(r.status, 0, `${what}: ${r.stderr.split('\n').slice(-15).join('\n')}`);
  return r.stdout;
}

/** A clone as git gives it: the tracked sources, nothing built, no node_modules. */
function cloneInto(dir: string): void {
  mkdirSync(dir);
  for (const name of ['package.json', 'package-lock.json', 'tsconfig.json', 'README.md', 'bin', 'scripts', 'src', 'samples', 'service']) {
    cpSync(join(repoRoot, name), join(dir, name), { recursive: true });
  }
}

/** Runs `node` code importing the library from a prefix's lib/node_modules, as a program beside it would. */
function importFrom(prefix: string, code: string): string {
  return succeeds(sh(process.execPath, ['--input-type=module', '-e', code], join(prefix, 'lib')), 'import composefs-ts');
}

test('npm install -g of an unbuilt clone, and of the packed tarball: the commands run, the library imports, the package holds dist and no tests', { skip: hasNpm ? false : 'no npm' }, () => {
  const tmp = mkdtempSync(join(tmpdir(), 'cfs-package-'));
  try {
    // A tree to build images of: an inline file and one for the object store.
    const tree = join(tmp, 'tree');
    mkdirSync(join(tree, 'sub'), { recursive: true });
    writeFileSync(join(tree, 'hello.txt'), 'hello\n');
    const big = Buffer.alloc(5000);
    for (let i = 0; i < big.length; i++) big[i] = (i * 31) & 0xff;
    writeFileSync(join(tree, 'sub', 'big.bin'), big);

    // 1. The folder: npm links it and runs its prepare, which installs the dependencies and builds.
    const clone = join(tmp, 'clone');
    cloneInto(clone);
    const linked = join(tmp, 'linked');
    succeeds(sh('npm', ['install', '-g', '--prefix', linked, clone], tmp), 'npm install -g ./clone');
    assert.equal(realpathSync(join(linked, 'lib', 'node_modules', 'composefs-ts')), realpathSync(clone), 'a folder is linked');
    for (const dep of ['koffi', 'fzstd']) assert.ok(existsSync(join(clone, 'node_modules', dep, 'package.json')), `${dep} installed for the linked clone`);
    assert.match(succeeds(sh(join(linked, 'bin', 'cfs'), ['--help'], tmp), 'linked cfs --help'), /^Usage: cfs COMMAND/);
    assert.equal(importFrom(linked, "const m = await import('composefs-ts'); process.stdout.write(typeof m.writeImage);"), 'function');

    // 2. The tarball: prepack builds it from the clone, whatever was built there before.
    const packed = join(tmp, 'packed');
    mkdirSync(packed);
    const name = succeeds(sh('npm', ['pack', '--pack-destination', packed], clone), 'npm pack').trim().split('\n').at(-1)!;
    const tarball = join(packed, name);
    const files = succeeds(sh('tar', ['tzf', tarball], tmp), 'tar tzf').split('\n').filter(Boolean);
    for (const want of ['package/package.json', 'package/README.md', 'package/bin/cfs.js', 'package/bin/load.js', 'package/bin/package.json', 'package/dist/src/index.js', 'package/dist/src/index.d.ts', 'package/dist/src/cli/bundle.cjs', 'package/dist/src/cli/bundle.cache', 'package/dist/src/fuse/daemon.js', 'package/dist/src/service/rewrite-worker.js', 'package/samples/demo.dump', 'package/service/systemd/composefs-mount.service', 'package/service/systemd/composefs-mount.socket']) {
      assert.ok(files.includes(want), `the package holds ${want}`);
    }
    const unwanted = files.filter((f) => /^package\/(src|test|bench|scripts|\.ci|dist\/test|dist\/bench|node_modules)\//.test(f) || f.endsWith('.build-stamp') || f.endsWith('tsconfig.json'));
    assert.deepEqual(unwanted, [], 'no sources, tests, bench, CI or build leftovers');

    const prefix = join(tmp, 'prefix');
    succeeds(sh('npm', ['install', '-g', '--prefix', prefix, tarball], tmp), 'npm install -g TARBALL');
    const pkg = join(prefix, 'lib', 'node_modules', 'composefs-ts');
    for (const cmd of ['cfs', 'mkcomposefs', 'mount.composefs', 'composefs-info', 'composefs-dump']) {
      assert.equal(realpathSync(join(prefix, 'bin', cmd)), realpathSync(join(pkg, 'bin', `${cmd}.js`)), `${cmd} in the prefix's bin`);
    }
    for (const dep of ['koffi', 'fzstd']) assert.ok(existsSync(join(pkg, 'node_modules', dep, 'package.json')), `${dep} installed`);
    assert.ok(!existsSync(join(pkg, 'node_modules', 'typescript')), 'no dev dependencies');

    const help = succeeds(sh(join(prefix, 'bin', 'cfs'), ['--help'], tmp), 'cfs --help');
    assert.match(help, /^Usage: cfs COMMAND/);
    assert.match(help, /mkcomposefs/);

    // mkcomposefs builds an image with an object store; composefs-info reads it back.
    const image = join(tmp, 'tree.cfs');
    const store = join(tmp, 'objects');
    succeeds(sh(join(prefix, 'bin', 'mkcomposefs'), ['--quiet', `--digest-store=${store}`, tree, image], tmp), 'mkcomposefs');
    const listed = succeeds(sh(join(prefix, 'bin', 'composefs-info'), ['ls', image], tmp), 'composefs-info ls').split('\n');
    assert.ok(listed.some((l) => l === '/hello.txt'), listed.join('\n'));
    const bigLine = listed.find((l) => l.startsWith('/sub/big.bin\t'));
    assert.ok(bigLine, listed.join('\n'));
    const object = /@ ([0-9a-f]{2}\/[0-9a-f]{62})$/.exec(bigLine)?.[1];
    assert.ok(object && readFileSync(join(store, object)).equals(big), `the object store holds sub/big.bin as ${object}`);

    // The library, imported by its name from the prefix's lib/node_modules.
    const names = importFrom(
      prefix,
      `const m = await import('composefs-ts');
       const { readFileSync } = await import('node:fs');
       const entries = m.listImage(readFileSync(${JSON.stringify(image)})).toString().split('\\n').filter(Boolean);
       process.stdout.write(JSON.stringify({ mount: typeof m.mountImage, entries }));`,
    );
    const lib = JSON.parse(names) as { mount: string; entries: string[] };
    assert.equal(lib.mount, 'function');
    assert.deepEqual(lib.entries.map((l) => l.split('\t')[0]), ['/hello.txt', '/sub/', '/sub/big.bin'], names);
    assert.ok(lib.entries[2].endsWith(`@ ${object}`), names);

    // The mount service's image rewrite finds its thread's module in the installed package, and writes the image again.
    const rewritten = importFrom(
      prefix,
      `const { rewriteInWorker } = await import(${JSON.stringify(pathToFileURL(join(pkg, 'dist', 'src', 'service', 'rewrite.js')).href)});
       const { readFileSync } = await import('node:fs');
       const image = readFileSync(${JSON.stringify(image)});
       const r = await rewriteInWorker(image);
       process.stdout.write(String(r.image.equals(image)));`,
    );
    assert.equal(rewritten, 'true', 'the rewrite on its thread gives back the writer\'s image');

    // The code cache made at build time is the one the installed bundle uses (npm pack resets every mtime).
    const cache = sh(process.execPath, ['-e', `const { script } = require(${JSON.stringify(join(pkg, 'bin', 'load.js'))}).loadBundle(); process.stdout.write(String(script.cachedDataRejected));`], tmp);
    assert.equal(succeeds(cache, 'load the bundle'), 'false', 'the code cache is accepted');

    // install-helper names the installed helper.
    const helper = succeeds(sh(join(prefix, 'bin', 'cfs'), ['install-helper', '--print'], tmp), 'cfs install-helper --print');
    assert.ok(helper.includes(`'${realpathSync(pkg)}/bin/mount.composefs.js'`) || helper.includes(`'${pkg}/bin/mount.composefs.js'`), helper);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});
