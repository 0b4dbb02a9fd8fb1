/**
 * Where signatures live (issue 19, item 2, and the storage side of item 4):
 * registries.d files written here by hand, with the outcomes the
 * containers-registries.d(5) man page and containers/image's lookup give;
 * lookaside storage laid out by hand on disk and served by a real Node HTTP
 * server on 127.0.0.1; the interop checks against real skopeo (signatures it
 * writes with `--sign-by` under `lookaside-staging` are the ones read here,
 * and one written here is where skopeo's `signedBy` check finds it); and
 * sigstore attachments pushed to and read from the real registry, checked
 * with skopeo's raw view of the `.sig` tag.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { builtInLookaside, loadRegistriesD, signatureStorageFor, type RegistriesD } from '../src/oci/registries-d.js';
import { fileURLToPath } from 'node:url';
import { lookasideSignatureUrl, maxLookasideSignatures, readLookasideSignatures, writeLookasideSignature } from '../src/oci/lookaside.js';
import { cosignSignatureAnnotation, cosignSimpleSigningMediaType, pushSigstoreAttachment, readSigstoreAttachments } from '../src/oci/sigstore-attachments.js';
import { parseDockerName, type DockerName } from '../src/oci/reference.js';
import { RegistryTarget } from '../src/oci/registry/push.js';
import { RegistrySource } from '../src/oci/registry/source.js';
import { parseReference } from '../src/oci/reference.js';
import { ComposefsError } from '../src/errors.js';
import { makeTemp, removeTemp } from './helpers/temp.js';
import { haveTool } from './helpers/oci-images.js';
import { gzLayers, writeLayout } from './helpers/oci-layout.js';
import { haveRegistry, NO_REGISTRY, startProxy, startRegistry } from './helpers/registry.js';

const run = promisify(execFile);
const env = { HOME: '/nonexistent-home' };
const digest = `sha256:${'ab'.repeat(32)}`;
const hex = digest.slice(7);

function write(dir: string, files: Record<string, string>): string {
  mkdirSync(dir, { recursive: true });
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return dir;
}

async function refused(promise: Promise<unknown>, pattern: RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof ComposefsError, `not a ComposefsError: ${String(err)}`);
    assert.match(err.message, pattern);
    assert.ok(!err.message.includes('\n'), `more than one line: ${err.message}`);
    return true;
  });
}

const name = (text: string): DockerName => parseDockerName(text);
const builtIn = process.geteuid?.() === 0 ? 'file:///var/lib/containers/sigstore' : 'file:///nonexistent-home/.local/share/containers/sigstore';

// The man page's "Developing and Signing Containers, Staging Signatures" example, verbatim.
const manPageExample = `docker:
    registry.example.com:
        lookaside: https://registry-lookaside.example.com
    registry.example.com/mydepartment:
        lookaside: https://lookaside.mydepartment.example.com
        lookaside-staging: file:///mnt/mydepartment/lookaside-staging
    registry.example.com/mydepartment/myproject:mybranch:
        lookaside: http://localhost:4242/lookaside
        lookaside-staging: file:///home/useraccount/webroot/lookaside
`;

test('registries.d: the most specific namespace, default-docker, the built-in default', async () => {
  const tmp = makeTemp('regd');
  try {
    const dir = write(join(tmp, 'd'), {
      'example.yaml': manPageExample,
      // The man page's "A Global Default" example.
      'global.yaml': 'default-docker:\n    lookaside-staging: file:///mnt/company/common-lookaside-staging\n',
      'ports.yaml': 'docker:\n  registry.example.com:5000/ns:\n    lookaside: https://ns5000.example\n  "*.example.org":\n    lookaside: https://wild.example\n    use-sigstore-attachments: true\n',
      'not-yaml.yml': 'docker: [this file is not read',
    });
    const config = await loadRegistriesD({ dir, env });
    const at = (ref: string) => signatureStorageFor(config, name(ref));

    const branch = at('registry.example.com/mydepartment/myproject:mybranch');
    assert.equal(branch.lookaside, 'http://localhost:4242/lookaside');
    assert.equal(branch.lookasideStaging, 'file:///home/useraccount/webroot/lookaside');
    assert.equal(branch.section, `docker["registry.example.com/mydepartment/myproject:mybranch"] in ${join(dir, 'example.yaml')}`);
    assert.equal(branch.useSigstoreAttachments, false);

    const otherTag = at('registry.example.com/mydepartment/myproject:other');
    assert.equal(otherTag.lookaside, 'https://lookaside.mydepartment.example.com');
    assert.equal(otherTag.lookasideStaging, 'file:///mnt/mydepartment/lookaside-staging');
    assert.equal(otherTag.section, `docker["registry.example.com/mydepartment"] in ${join(dir, 'example.yaml')}`);

    // No staging in the matching section: lookaside is written to.
    const host = at('registry.example.com/elsewhere/app:1');
    assert.equal(host.lookaside, 'https://registry-lookaside.example.com');
    assert.equal(host.lookasideStaging, 'https://registry-lookaside.example.com');

    // Nothing but default-docker's staging: reads from the built-in default, writes to the staging.
    const hub = at('busybox');
    assert.equal(hub.lookaside, builtIn);
    assert.equal(hub.section, 'built-in default');
    assert.equal(hub.lookasideStaging, 'file:///mnt/company/common-lookaside-staging');
    assert.equal(hub.stagingSection, `default-docker in ${join(dir, 'global.yaml')}`);

    // host:port/ns matches; the port-less host is not a parent of host:port.
    assert.equal(at('registry.example.com:5000/ns/app:1').lookaside, 'https://ns5000.example');
    assert.equal(at('registry.example.com:5000/other/app:1').lookaside, builtIn);
    // *.domain wildcards.
    const wild = at('a.b.example.org/x/y:1');
    assert.equal(wild.lookaside, 'https://wild.example');
    assert.equal(wild.useSigstoreAttachments, true);
    assert.equal(wild.sigstoreSection, `docker["*.example.org"] in ${join(dir, 'ports.yaml')}`);
    assert.equal(at('example.org/x:1').lookaside, builtIn);
  } finally {
    removeTemp(tmp);
  }
});

test('registries.d: a section without the key asked for passes to the next one (containers/image code), old key names, booleans', async () => {
  const tmp = makeTemp('regd');
  try {
    const dir = write(join(tmp, 'd'), {
      'a.yaml': [
        'docker:',
        '  example.com:',
        '    sigstore: https://old-name.example',
        '    sigstore-staging: file:///old-staging',
        '    use-sigstore-attachments: yes',
        '  example.com/ns/app:',
        '    use-sigstore-attachments: false',
        '  example.com/ns/app:v2:',
        '    lookaside: https://v2.example',
        '    sigstore: https://ignored-when-lookaside-is-set.example',
        '',
      ].join('\n'),
    });
    const config = await loadRegistriesD({ dir, env });
    const app = signatureStorageFor(config, name('example.com/ns/app:v1'));
    assert.equal(app.useSigstoreAttachments, false);
    assert.equal(app.lookaside, 'https://old-name.example');
    assert.equal(app.lookasideStaging, 'file:///old-staging');
    const v2 = signatureStorageFor(config, name('example.com/ns/app:v2'));
    assert.equal(v2.lookaside, 'https://v2.example');
    assert.equal(v2.lookasideStaging, 'https://v2.example');
    assert.equal(v2.useSigstoreAttachments, false);
    assert.equal(signatureStorageFor(config, name('example.com/other:1')).useSigstoreAttachments, true);
  } finally {
    removeTemp(tmp);
  }
});

test('registries.d: which directory; duplicates across files; bad files named with their line', async () => {
  const tmp = makeTemp('regd');
  try {
    // $HOME/.config/containers/registries.d when it exists.
    const home = join(tmp, 'home');
    write(join(home, '.config/containers/registries.d'), { 'x.yaml': 'default-docker:\n  lookaside: https://home.example\n' });
    const fromHome = await loadRegistriesD({ env: { HOME: home } });
    assert.equal(fromHome.dir, join(home, '.config/containers/registries.d'));
    assert.equal(signatureStorageFor(fromHome, name('busybox')).lookaside, 'https://home.example');
    // Else /etc/containers/registries.d, when it exists (this machine's; not changed by the test).
    const fallback = await loadRegistriesD({ env: { HOME: join(tmp, 'empty-home') } });
    assert.equal(fallback.dir, existsSync('/etc/containers/registries.d') ? '/etc/containers/registries.d' : undefined);
    // An explicit directory must exist.
    await refused(loadRegistriesD({ dir: join(tmp, 'missing'), env }), /registries\.d directory .*missing: No such file or directory/);
    writeFileSync(join(tmp, 'plain'), '');
    await refused(loadRegistriesD({ dir: join(tmp, 'plain'), env }), /plain: not a directory/);

    const bad = async (files: Record<string, string>, pattern: RegExp) => {
      const dir = join(tmp, `case-${Math.random().toString(36).slice(2)}`);
      write(dir, files);
      await refused(loadRegistriesD({ dir, env }), pattern);
    };
    await bad({ 'a.yaml': 'docker:\n  example.com/ns:\n    lookaside: https://a\n', 'b.yaml': 'docker:\n  example.com/ns:\n    lookaside: https://a\n' }, /"docker" namespace "example\.com\/ns" defined both in .*a\.yaml and .*b\.yaml/);
    await bad({ 'a.yaml': 'default-docker:\n  lookaside: https://a\n', 'b.yaml': 'default-docker:\n  lookaside-staging: file:///b\n' }, /"default-docker" defined both in .*a\.yaml and .*b\.yaml/);
    await bad({ 'a.yaml': 'docker:\n  example.com:\n    lookaside: https://a\n  example.com:\n    lookaside: https://b\n' }, /a\.yaml:4: Map keys must be unique/);
    await bad({ 'a.yaml': 'docker:\n  example.com:\n    lookaside: [unclosed\n' }, /a\.yaml:\d+: /);
    await bad({ 'a.yaml': 'docker:\n  - example.com\n' }, /a\.yaml:2: docker must be a mapping/);
    // An alias is named by the line it is used on.
    await bad({ 'a.yaml': 'x:\n  a: &a [1, 2]\ndocker:\n  example.com: *a\n' }, /a\.yaml:4: docker\["example\.com"\] must be a mapping/);
    await bad({ 'a.yaml': 'docker: {}\n---\ndocker: {}\n' }, /a\.yaml:3: more than one YAML document/);
    await bad({ 'a.yaml': '- a\n' }, /a\.yaml:1: the document must be a mapping/);
    await bad({ 'a.yaml': 'docker:\n  example.com:\n    lookaside: 5\n' }, /a\.yaml:3: lookaside must be a string \(a URL\)/);
    await bad({ 'a.yaml': 'docker:\n  example.com:\n    lookaside:\n      nested: x\n' }, /a\.yaml:4: lookaside must be a scalar/);
    await bad({ 'a.yaml': 'docker:\n  example.com:\n    use-sigstore-attachments: maybe\n' }, /a\.yaml:3: use-sigstore-attachments must be true or false/);
    await bad({ 'a.yaml': `# ${'x'.repeat(256 * 1024)}\n` }, /a\.yaml: too large \(\d+ bytes, at most 262144\)/);
    // Five files within the bound of one are more than a directory may hold (1 MiB), read or not.
    const fifth = `# ${'x'.repeat(220 * 1024)}\n`;
    await bad({ 'a.yaml': fifth, 'b.yaml': fifth, 'c.yaml': fifth, 'd.yaml': fifth, 'e.yaml': fifth }, /^registries\.d directory .*: its \.yaml files are larger than 1048576 bytes together$/);
    const anchors = ['a: &a0 [x, x]', ...Array.from({ length: 120 }, (_, i) => `a${i + 1}: &a${i + 1} [*a${i}, *a${i}]`)].join('\n');
    await bad({ 'a.yaml': `x:\n${anchors.replace(/^/gm, '  ')}\ndocker:\n  example.com: *a120\n` }, /a\.yaml:\d+: /);
    await bad({ 'a.yaml': 'default-docker: &d\n  lookaside: https://a\ndocker:\n' + Array.from({ length: 101 }, (_, i) => `  h${i}.example: *d`).join('\n') + '\n' }, /a\.yaml:\d+: more than 100 aliases/);
    mkdirSync(join(tmp, 'fifo'));
    spawnSync('mkfifo', [join(tmp, 'fifo', 'p.yaml')]);
    await refused(loadRegistriesD({ dir: join(tmp, 'fifo'), env }), /p\.yaml: not a regular file/);

    // Keys containers/image does not know are ignored as it ignores them, with a warning naming the line.
    const dir = write(join(tmp, 'unknown'), { 'a.yaml': 'docker:\n  example.com:\n    lookasid: https://typo\n    lookaside: https://ok\nextra: 1\n' });
    const config = await loadRegistriesD({ dir, env });
    assert.equal(signatureStorageFor(config, name('example.com/x:1')).lookaside, 'https://ok');
    assert.deepEqual(config.warnings, [`registries.d file ${join(dir, 'a.yaml')}:3: unknown key "lookasid" ignored`, `registries.d file ${join(dir, 'a.yaml')}:5: unknown key "extra" ignored`]);
    // Aliases within the bound are resolved; an empty file and an empty section are allowed.
    const ok = write(join(tmp, 'ok'), { 'a.yaml': 'default-docker: &d\n  lookaside: https://shared\ndocker:\n  example.com: *d\n  empty.example:\n', 'b.yaml': '' });
    const okConfig = await loadRegistriesD({ dir: ok, env });
    assert.equal(signatureStorageFor(okConfig, name('example.com/x:1')).lookaside, 'https://shared');
    assert.equal(signatureStorageFor(okConfig, name('empty.example/x:1')).lookaside, 'https://shared');
    assert.equal(signatureStorageFor(okConfig, name('empty.example/x:1')).section, `default-docker in ${join(ok, 'a.yaml')}`);
  } finally {
    removeTemp(tmp);
  }
});

test('registries.d: the built-in lookaside of a user whose $HOME has URL syntax in it is beneath that $HOME', async () => {
  const tmp = makeTemp('home-url');
  try {
    for (const home of [join(tmp, 'a#b'), join(tmp, 'c%2Fd'), join(tmp, 'e?f')]) {
      const base = builtInLookaside({ home, euid: 1000 });
      assert.equal(fileURLToPath(base), join(home, '.local/share/containers/sigstore'));
      // Read from there: a signature put in that directory is found.
      const dir = join(home, '.local/share/containers/sigstore', 'ns', `app@sha256=${hex}`);
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, 'signature-1'), 'sig');
      assert.deepEqual((await readLookasideSignatures(base, name('example.com/ns/app:1'), digest, { env })).map(String), ['sig']);
    }
  } finally {
    removeTemp(tmp);
  }
});

test('registries.d: a file of many namespaces is read in time linear in its size; a duplicate key anywhere is still refused', async () => {
  const tmp = makeTemp('regd-big');
  try {
    // 250 KiB of distinct short namespaces (about 30 000): yaml's uniqueKeys compared each with every earlier one (seconds).
    const lines: string[] = ['docker:', '  h7.example.com: {lookaside: "https://sig.example/7"}'];
    for (let i = 0, size = 64; size < 250 * 1024; i++) {
      const line = `  n${i}.io:`;
      lines.push(line);
      size += line.length + 1;
    }
    const dir = write(join(tmp, 'many'), { 'a.yaml': `${lines.join('\n')}\n` });
    await loadRegistriesD({ dir: write(join(tmp, 'warm'), { 'a.yaml': 'docker: {}\n' }), env });
    const started = performance.now();
    const config = await loadRegistriesD({ dir, env });
    const ms = performance.now() - started;
    assert.equal(config.docker.size, lines.length - 1);
    assert.equal(signatureStorageFor(config, name('h7.example.com/some/namespace/app:1')).lookaside, 'https://sig.example/7');
    assert.ok(ms < 1000, `reading ${lines.length - 1} namespaces took ${Math.round(ms)} ms`);
    // Duplicates: in the docker mapping, in a section, in a mapping this code otherwise ignores; same text, another type is no duplicate.
    const dup = async (text: string, pattern: RegExp) => {
      const d = write(join(tmp, `dup-${Math.random().toString(36).slice(2)}`), { 'a.yaml': text });
      await refused(loadRegistriesD({ dir: d, env }), pattern);
    };
    await dup(`${lines.join('\n')}\n  n3.io: {}\n`, new RegExp(`a\\.yaml:${lines.length + 1}: Map keys must be unique \\("n3\\.io"\\)$`));
    await dup('default-docker:\n  lookaside: https://a\n  lookaside: https://b\n', /a\.yaml:3: Map keys must be unique \("lookaside"\)$/);
    await dup('extra:\n  x: 1\n  x: 2\n', /a\.yaml:3: Map keys must be unique \("x"\)$/);
    const typed = await loadRegistriesD({ dir: write(join(tmp, 'typed'), { 'a.yaml': 'extra:\n  1: a\n  "1": b\n' }), env });
    assert.equal(typed.warnings.length, 1);
  } finally {
    removeTemp(tmp);
  }
});

test('lookaside over file://: the layout, a gap stops reading, symbolic links refused, writes appended atomically', async () => {
  const tmp = makeTemp('lookaside');
  try {
    const base = join(tmp, 'sigs');
    const img = name('registry.example.com:5000/ns/app:v1');
    // The layout, by hand: BASE/REPO@sha256=HEX/signature-N (no registry host in the path).
    const sigDir = join(base, 'ns', `app@sha256=${hex}`);
    mkdirSync(sigDir, { recursive: true });
    writeFileSync(join(sigDir, 'signature-1'), 'one');
    writeFileSync(join(sigDir, 'signature-2'), 'two');
    writeFileSync(join(sigDir, 'signature-4'), 'after a gap');
    assert.equal(lookasideSignatureUrl(`file://${base}`, img, digest, 1).href, `file://${base}/ns/app@sha256=${hex}/signature-1`);
    assert.equal(lookasideSignatureUrl('https://sigs.example', img, digest, 3).href, `https://sigs.example/ns/app@sha256=${hex}/signature-3`);
    assert.equal(lookasideSignatureUrl('https://sigs.example/top', img, digest, 3).href, `https://sigs.example/top/ns/app@sha256=${hex}/signature-3`);
    const got = await readLookasideSignatures(`file://${base}`, img, digest, { env });
    assert.deepEqual(got.map(String), ['one', 'two']);
    // Nothing for another digest, nor under a missing base.
    assert.deepEqual(await readLookasideSignatures(`file://${base}`, img, `sha256:${'cd'.repeat(32)}`, { env }), []);
    assert.deepEqual(await readLookasideSignatures(`file://${join(tmp, 'none')}`, img, digest, { env }), []);

    // Writing: the first free index (the gap), written whole; nothing else left in the directory.
    const path = await writeLookasideSignature(`file://${base}`, img, digest, Buffer.from('three'));
    assert.equal(path, join(sigDir, 'signature-3'));
    assert.deepEqual(readdirSync(sigDir).sort(), ['signature-1', 'signature-2', 'signature-3', 'signature-4']);
    assert.deepEqual((await readLookasideSignatures(`file://${base}`, img, digest, { env })).map(String), ['one', 'two', 'three', 'after a gap']);
    // Into a new directory tree.
    const fresh = join(tmp, 'fresh');
    const other = name('example.com/a/b/c@' + digest);
    assert.equal(await writeLookasideSignature(`file://${fresh}`, other, digest, Buffer.from('x')), join(fresh, 'a', 'b', `c@sha256=${hex}`, 'signature-1'));
    assert.equal(await writeLookasideSignature(`file://${fresh}`, other, digest, Buffer.from('y')), join(fresh, 'a', 'b', `c@sha256=${hex}`, 'signature-2'));
    assert.deepEqual(readdirSync(join(fresh, 'a', 'b', `c@sha256=${hex}`)).sort(), ['signature-1', 'signature-2']);
    await refused(writeLookasideSignature('https://sigs.example', img, digest, Buffer.from('x')), /writing directly to a https lookaside is not supported; configure a file:\/\/ lookaside-staging/);

    // Symbolic links: as a signature, as the signature directory, as a parent.
    const linked = join(tmp, 'linked');
    const linkedDir = join(linked, 'ns', `app@sha256=${hex}`);
    mkdirSync(linkedDir, { recursive: true });
    writeFileSync(join(tmp, 'elsewhere'), 'outside');
    writeFileSync(join(linkedDir, 'signature-1'), 'one');
    symlinkSync(join(tmp, 'elsewhere'), join(linkedDir, 'signature-2'));
    await refused(readLookasideSignatures(`file://${linked}`, img, digest, { env }), /signature-2: a symbolic link, refused/);
    const viaDir = join(tmp, 'via-dir');
    mkdirSync(join(viaDir, 'ns'), { recursive: true });
    symlinkSync(sigDir, join(viaDir, 'ns', `app@sha256=${hex}`));
    await refused(readLookasideSignatures(`file://${viaDir}`, img, digest, { env }), /app@sha256=[0-9a-f]+: a symbolic link, refused/);
    await refused(writeLookasideSignature(`file://${viaDir}`, img, digest, Buffer.from('x')), /a symbolic link, refused/);
    const viaParent = join(tmp, 'via-parent');
    mkdirSync(viaParent);
    symlinkSync(join(base, 'ns'), join(viaParent, 'ns'));
    await refused(readLookasideSignatures(`file://${viaParent}`, img, digest, { env }), /via-parent\/ns: a symbolic link, refused/);
    // A directory where a signature should be.
    mkdirSync(join(linkedDir, 'signature-0'));
    const dirSig = join(tmp, 'dirsig', 'ns', `app@sha256=${hex}`);
    mkdirSync(join(dirSig, 'signature-1'), { recursive: true });
    await refused(readLookasideSignatures(`file://${join(tmp, 'dirsig')}`, img, digest, { env }), /signature-1: a directory, not a regular file/);

    // Five signatures within the bound of one are more than one manifest may have together (16 MiB).
    const heavy = join(tmp, 'heavy', 'ns', `app@sha256=${hex}`);
    mkdirSync(heavy, { recursive: true });
    for (let i = 1; i <= 5; i++) writeFileSync(join(heavy, `signature-${i}`), Buffer.alloc(4 * 1024 * 1024, i));
    await refused(readLookasideSignatures(`file://${join(tmp, 'heavy')}`, img, digest, { env }), /app@sha256=[0-9a-f]+: the first 5 signatures are larger than 16777216 bytes together/);

    // 128 signatures are taken for a broken storage, as containers/image takes them.
    const many = join(tmp, 'many', 'ns', `app@sha256=${hex}`);
    mkdirSync(many, { recursive: true });
    for (let i = 1; i < maxLookasideSignatures; i++) writeFileSync(join(many, `signature-${i}`), 's');
    assert.equal((await readLookasideSignatures(`file://${join(tmp, 'many')}`, img, digest, { env })).length, maxLookasideSignatures - 1);
    await refused(writeLookasideSignature(`file://${join(tmp, 'many')}`, img, digest, Buffer.from('x')), /already 127 signatures/);
    assert.equal(readdirSync(many).length, maxLookasideSignatures - 1, 'no temporary file left behind');
    writeFileSync(join(many, `signature-${maxLookasideSignatures}`), 's');
    await refused(readLookasideSignatures(`file://${join(tmp, 'many')}`, img, digest, { env }), /128 signatures or more/);
  } finally {
    removeTemp(tmp);
  }
});

test('lookaside over http: 404 ends the list, 500 is an error, oversized and slow answers refused', async () => {
  const requests: string[] = [];
  let behaviour: (path: string, res: http.ServerResponse) => void = (_, res) => res.writeHead(404).end();
  const server = http.createServer((req, res) => {
    requests.push(req.url ?? '');
    behaviour(req.url ?? '', res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/sigs`;
  const img = name('registry.example.com/ns/app:v1');
  const prefix = `/sigs/ns/app@sha256=${hex}/signature-`;
  try {
    behaviour = (path, res) => {
      if (path === `${prefix}1`) res.writeHead(200, { 'content-type': 'application/octet-stream' }).end('first');
      else if (path === `${prefix}2`) res.writeHead(200).end('second');
      else res.writeHead(404).end('not here');
    };
    assert.deepEqual((await readLookasideSignatures(base, img, digest, { env })).map(String), ['first', 'second']);
    assert.deepEqual(requests, [`${prefix}1`, `${prefix}2`, `${prefix}3`]);

    behaviour = (path, res) => (path === `${prefix}1` ? res.writeHead(200).end('first') : res.writeHead(500).end('oops'));
    await refused(readLookasideSignatures(base, img, digest, { env }), /signature-2: HTTP 500 \(an error, not a missing signature\)/);
    behaviour = (_, res) => res.writeHead(403).end();
    await refused(readLookasideSignatures(base, img, digest, { env }), /signature-1: HTTP 403/);

    behaviour = (_, res) => {
      res.writeHead(200, { 'content-length': String(5 * 1024 * 1024) });
      res.end();
    };
    await refused(readLookasideSignatures(base, img, digest, { env }), /signature-1: too large \(5242880 bytes, at most 4194304\)/);
    behaviour = (_, res) => {
      res.writeHead(200);
      const chunk = Buffer.alloc(64 * 1024, 1);
      let sent = 0;
      const more = () => {
        while (sent < 5 * 1024 * 1024) {
          sent += chunk.length;
          if (!res.write(chunk)) return void res.once('drain', more);
        }
        res.end();
      };
      more();
    };
    await refused(readLookasideSignatures(base, img, digest, { env }), /signature-1: too large \(more than 4194304 bytes\)/);

    // Signatures within the bound of one each, more than 16 MiB together.
    const fourMiB = Buffer.alloc(4 * 1024 * 1024, 1);
    behaviour = (path, res) => (Number(path.slice(prefix.length)) <= 5 ? res.writeHead(200).end(fourMiB) : res.writeHead(404).end());
    await refused(readLookasideSignatures(base, img, digest, { env }), /sigs\/ns\/app@sha256=[0-9a-f]+: the first 5 signatures are larger than 16777216 bytes together/);

    behaviour = () => {
      /* never answers */
    };
    const started = Date.now();
    await refused(readLookasideSignatures(base, img, digest, { env, timeoutMs: 300 }), /signature-1: the signatures not all read within 0\.3 s/);
    assert.ok(Date.now() - started < 5000);
    behaviour = (_, res) => {
      res.writeHead(200);
      res.write('part');
    };
    await refused(readLookasideSignatures(base, img, digest, { env, timeoutMs: 300 }), /the signatures not all read within 0\.3 s/);

    // Each signature in time, not all: the limit is for the whole list (each answering within it took 127 times as long).
    behaviour = (_, res) => void setTimeout(() => res.writeHead(200).end('s'), 50);
    const slowStart = Date.now();
    await refused(readLookasideSignatures(base, img, digest, { env, timeoutMs: 300 }), /signature-\d+: the signatures not all read within 0\.3 s$/);
    assert.ok(Date.now() - slowStart < 2000, `refused after ${Date.now() - slowStart} ms`);

    behaviour = (_, res) => res.writeHead(302, { location: 'file:///etc/passwd' }).end();
    await refused(readLookasideSignatures(base, img, digest, { env }), /redirected to a URL that is not http\(s\)/);
  } finally {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});

const haveGpg = haveTool('gpg') && haveTool('gpgconf');

test('interop with skopeo: its --sign-by signatures are read here; one written here passes its signedBy check', { skip: (!haveRegistry && NO_REGISTRY) || (!haveGpg && 'gpg missing') }, async () => {
  const tmp = makeTemp('skopeo-sign');
  const gnupg = join(tmp, 'gnupg');
  mkdirSync(gnupg, { mode: 0o700 });
  const gpgEnv = { ...process.env, GNUPGHOME: gnupg };
  const registry = await startRegistry({ auth: { htpasswd: { alice: 'secret' } } });
  try {
    await run('gpg', ['--batch', '--pinentry-mode', 'loopback', '--passphrase', '', '--quick-gen-key', 'test@example.com', 'default', 'default', 'never'], { env: gpgEnv });
    const { stdout: listing } = await run('gpg', ['--batch', '--with-colons', '--list-secret-keys'], { env: gpgEnv });
    const fingerprint = /^fpr:+([0-9A-F]{40}):/m.exec(listing)![1];
    const { stdout: publicKey } = await run('gpg', ['--batch', '--export'], { env: gpgEnv, encoding: 'buffer' });
    writeFileSync(join(tmp, 'pub.gpg'), publicKey);

    const layout = join(tmp, 'layout');
    const { manifestDigest } = writeLayout(layout, 'img', gzLayers([{ path: 'hello', data: 'hello\n', mtime: 1700000000 }]));
    const staging = join(tmp, 'staging');
    const regd = write(join(tmp, 'registries.d'), { 'test.yaml': `docker:\n  ${registry.host}:\n    lookaside: file://${staging}\n` });
    const skopeo = (args: string[]) => run('skopeo', args, { env: gpgEnv });
    const creds = ['--dest-creds', 'alice:secret', '--dest-cert-dir', registry.certs.certDir];
    await skopeo(['--insecure-policy', '--registries.d', regd, 'copy', '--quiet', ...creds, '--sign-by', fingerprint, `oci:${layout}:img`, `docker://${registry.host}/test/signed:v1`]);

    // skopeo wrote exactly one file, where the layout says, and it is what is read here.
    const config = await loadRegistriesD({ dir: regd, env });
    const signed = parseDockerName(`${registry.host}/test/signed:v1`);
    const storage = signatureStorageFor(config, signed);
    assert.equal(storage.lookaside, `file://${staging}`);
    const sigDir = join(staging, 'test', `signed@sha256=${manifestDigest.slice(7)}`);
    assert.deepEqual(readdirSync(sigDir), ['signature-1']);
    const read = await readLookasideSignatures(storage.lookaside, signed, manifestDigest, { env });
    assert.equal(read.length, 1);
    assert.ok(read[0].equals(readFileSync(join(sigDir, 'signature-1'))));

    // The other way: a signature made by skopeo standalone-sign for another repository, stored by
    // writeLookasideSignature; skopeo's signedBy check finds it there (and fails without it).
    await skopeo(['--insecure-policy', 'copy', '--quiet', ...creds, `oci:${layout}:img`, `docker://${registry.host}/test/other:v1`]);
    const other = parseDockerName(`${registry.host}/test/other:v1`);
    writeFileSync(join(tmp, 'manifest.json'), readFileSync(join(layout, 'blobs/sha256', manifestDigest.slice(7))));
    await skopeo(['standalone-sign', '--output', join(tmp, 'other.sig'), join(tmp, 'manifest.json'), `${registry.host}/test/other:v1`, fingerprint]);
    const policy = join(tmp, 'policy.json');
    writeFileSync(policy, JSON.stringify({ default: [{ type: 'reject' }], transports: { docker: { [registry.host]: [{ type: 'signedBy', keyType: 'GPGKeys', keyPath: join(tmp, 'pub.gpg') }] } } }));
    const verify = () => skopeo(['--policy', policy, '--registries.d', regd, 'copy', '--quiet', '--src-creds', 'alice:secret', '--src-cert-dir', registry.certs.certDir, `docker://${registry.host}/test/other:v1`, `dir:${join(tmp, `out-${Math.random().toString(36).slice(2)}`)}`]);
    await assert.rejects(verify(), /signature|Source image rejected/i);
    const written = await writeLookasideSignature(storage.lookasideStaging, other, manifestDigest, readFileSync(join(tmp, 'other.sig')));
    assert.equal(written, join(staging, 'test', `other@sha256=${manifestDigest.slice(7)}`, 'signature-1'));
    await verify();
  } finally {
    spawnSync('gpgconf', ['--kill', 'all'], { env: gpgEnv, stdio: 'ignore' });
    await registry.stop();
    removeTemp(tmp);
  }
});

test('sigstore attachments in the real registry: pushed twice is two layers, identical once, read back; malformed refused', { skip: !haveRegistry && NO_REGISTRY }, async () => {
  const tmp = makeTemp('sigstore');
  const registry = await startRegistry({ auth: { htpasswd: { alice: 'secret' } } });
  const options = { creds: 'alice:secret', certDir: registry.certs.certDir, env };
  const imageName = parseDockerName(`${registry.host}/test/app:v1`);
  const target = new RegistryTarget(imageName, `docker://${registry.host}/test/app:v1`, options);
  const ref = parseReference(`docker://${registry.host}/test/app:v1`) as Extract<ReturnType<typeof parseReference>, { transport: 'docker' }>;
  const source = new RegistrySource(ref, 'test/app:v1', {}, options);
  try {
    const layout = join(tmp, 'layout');
    const { manifestDigest } = writeLayout(layout, 'img', gzLayers([{ path: 'hello', data: 'hello\n', mtime: 1700000000 }]));
    await run('skopeo', ['--insecure-policy', 'copy', '--quiet', '--dest-creds', 'alice:secret', '--dest-cert-dir', registry.certs.certDir, `oci:${layout}:img`, `docker://${registry.host}/test/app:v1`]);
    const tag = `sha256-${manifestDigest.slice(7)}.sig`;
    assert.deepEqual(await readSigstoreAttachments(source, manifestDigest), []);

    const payload = (n: number) => Buffer.from(JSON.stringify({ critical: { identity: { 'docker-reference': `${registry.host}/test/app` }, image: { 'docker-manifest-digest': manifestDigest }, type: 'cosign container image signature' }, optional: { n } }));
    const first = { payload: payload(1), mediaType: cosignSimpleSigningMediaType, annotations: { [cosignSignatureAnnotation]: 'MEUCIQ-first' } };
    const second = { payload: payload(2), mediaType: cosignSimpleSigningMediaType, annotations: { [cosignSignatureAnnotation]: 'MEUCIQ-second', 'dev.sigstore.cosign/certificate': 'PEM' } };
    assert.equal((await pushSigstoreAttachment(target, manifestDigest, first)).added, true);
    const pushed = await pushSigstoreAttachment(target, manifestDigest, second);
    assert.deepEqual({ added: pushed.added, attachments: pushed.attachments, tag: pushed.tag }, { added: true, attachments: 2, tag });
    const again = await pushSigstoreAttachment(target, manifestDigest, first);
    assert.deepEqual({ added: again.added, attachments: again.attachments }, { added: false, attachments: 2 });
    // Same payload, other annotations: another layer (containers/image compares the annotations too).
    const third = { ...first, annotations: { [cosignSignatureAnnotation]: 'MEUCIQ-other' } };
    assert.equal((await pushSigstoreAttachment(target, manifestDigest, third)).attachments, 3);

    // skopeo's raw view of the tag (an independent reader).
    const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
    const { stdout } = await run('skopeo', ['inspect', '--raw', '--creds', 'alice:secret', '--cert-dir', registry.certs.certDir, `docker://${registry.host}/test/app:${tag}`]);
    const manifest = JSON.parse(stdout);
    assert.equal(manifest.mediaType, 'application/vnd.oci.image.manifest.v1+json');
    assert.deepEqual(manifest.layers, [
      { mediaType: cosignSimpleSigningMediaType, digest: sha(first.payload), size: first.payload.length, annotations: first.annotations },
      { mediaType: cosignSimpleSigningMediaType, digest: sha(second.payload), size: second.payload.length, annotations: second.annotations },
      { mediaType: cosignSimpleSigningMediaType, digest: sha(first.payload), size: first.payload.length, annotations: third.annotations },
    ]);
    const { stdout: configText } = await run('skopeo', ['inspect', '--config', '--raw', '--creds', 'alice:secret', '--cert-dir', registry.certs.certDir, `docker://${registry.host}/test/app:${tag}`]);
    assert.deepEqual(JSON.parse(configText).rootfs, { type: 'layers', diff_ids: [sha(first.payload), sha(second.payload), sha(first.payload)] });

    const read = await readSigstoreAttachments(source, manifestDigest);
    assert.deepEqual(read, [first, second, third]);

    // Oversized payload: a real 5 MiB blob the registry holds, listed in a .sig manifest put there by hand.
    const putSig = async (doc: unknown) => {
      await target.putManifest(tag, Buffer.from(JSON.stringify(doc)), 'application/vnd.oci.image.manifest.v1+json');
    };
    const config = manifest.config;
    const layer = manifest.layers[0];
    const big = Buffer.alloc(5 * 1024 * 1024, 7);
    await target.ensureBlob({ digest: sha(big), size: big.length }, big);
    await putSig({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config, layers: [{ ...layer, digest: sha(big), size: big.length }] });
    await refused(readSigstoreAttachments(source, manifestDigest), /layers\[0\]: too large \(5242880 bytes, at most 4194304\)/);
    await refused(pushSigstoreAttachment(target, manifestDigest, { ...first, payload: Buffer.alloc(4 * 1024 * 1024 + 1) }), /payload too large/);
    // Five payloads within the bound of one are more than one manifest's attachments may hold together (16 MiB); refused before any is fetched.
    const four = Buffer.alloc(4 * 1024 * 1024, 8);
    await target.ensureBlob({ digest: sha(four), size: four.length }, four);
    await putSig({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config, layers: Array.from({ length: 5 }, () => ({ ...layer, digest: sha(four), size: four.length })) });
    await refused(readSigstoreAttachments(source, manifestDigest), /: 5 attachments of 20971520 bytes together \(at most 16777216\)$/);

    // What the registry itself refuses to store comes from a front that answers the .sig tag (or a blob) itself.
    let served: { status: number; type?: string; body: Buffer } | undefined;
    let blobBody: Buffer | undefined;
    const front = await startProxy(registry, (path) => {
      if (served && path.endsWith(`/manifests/${tag}`)) return { kind: 'respond', status: served.status, headers: served.type ? { 'content-type': served.type } : ({} as Record<string, string>), body: served.body };
      if (blobBody && path.endsWith(`/blobs/${layer.digest}`)) return { kind: 'respond', status: 200, body: blobBody };
      return { kind: 'forward' };
    });
    const frontRef = parseReference(`docker://${front.host}/test/app:v1`) as typeof ref;
    const frontSource = new RegistrySource(frontRef, 'test/app:v1', {}, { ...options, retries: 0 });
    const frontTarget = new RegistryTarget(parseDockerName(`${front.host}/test/app:v1`), `docker://${front.host}/test/app:v1`, options);
    const serve = (doc: unknown, type = 'application/vnd.oci.image.manifest.v1+json') => {
      served = { status: 200, type, body: Buffer.from(JSON.stringify(doc)) };
    };
    try {
      serve({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config, layers: [{ ...layer, annotations: { [cosignSignatureAnnotation]: 5 } }] });
      await refused(readSigstoreAttachments(frontSource, manifestDigest), /layers\[0\]: annotation "dev\.cosignproject\.cosign\/signature" is not a string/);
      await refused(pushSigstoreAttachment(frontTarget, manifestDigest, first), /annotation .* is not a string/);
      serve({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config, layers: Array.from({ length: 129 }, () => layer) });
      await refused(readSigstoreAttachments(frontSource, manifestDigest), /129 attachments \(at most 128\)/);
      serve({ schemaVersion: 2, config, layers: [] }, 'application/vnd.docker.distribution.manifest.v2+json');
      await refused(readSigstoreAttachments(frontSource, manifestDigest), /not an OCI image manifest \(application\/vnd\.docker\.distribution\.manifest\.v2\+json\)/);
      served = { status: 200, type: 'application/vnd.oci.image.manifest.v1+json', body: Buffer.from('{"schemaVersion":2,"layers":[') };
      await refused(readSigstoreAttachments(frontSource, manifestDigest), /not valid JSON/);
      served = { status: 500, body: Buffer.from('oops') };
      await refused(readSigstoreAttachments(frontSource, manifestDigest), /HTTP 500/);
      // A payload whose bytes are not those of its digest.
      served = undefined;
      await putSig(manifest);
      blobBody = Buffer.from(first.payload.toString().replace('1', '9'));
      await refused(readSigstoreAttachments(frontSource, manifestDigest), /digest mismatch/);
    } finally {
      frontTarget.close();
      await frontSource.close();
      await front.close();
    }
  } finally {
    target.close();
    await source.close();
    await registry.stop();
    removeTemp(tmp);
  }
});

// Keeps the type import used when the registry tests are skipped.
export type { RegistriesD };
