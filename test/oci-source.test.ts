import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { gzipSync } from 'node:zlib';
import { openSource } from '../src/oci/transports.js';
import { parseReference, formatDockerName, parseDockerName } from '../src/oci/reference.js';
import { SourceError } from '../src/oci/source-errors.js';
import type { ImageSource } from '../src/oci/source.js';
import {
  addBlob, addIndexEntry, addPlatformIndex, blobFile, haveSkopeo, haveUmoci, indexEntry, makeUmociImage, skopeo, skopeoManifest,
} from './helpers/oci-images.js';

const NO_TOOLS = 'umoci or skopeo missing (npm test installs them as root on Debian): OCI transport tests skipped';

async function readAll(source: ImageSource, descriptor: Parameters<ImageSource['openBlob']>[0]): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of await source.openBlob(descriptor)) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Warnings about descriptors a FileHandle closed when collected: a source some test did not close (the last test forces a collection). */
const collectedHandles: string[] = [];
process.on('warning', (w) => {
  if (/on garbage collection/.test(w.message)) collectedHandles.push(w.message);
});

/** Open `reference` and resolve it, closing the source whatever happens (an archive source holds its file open). */
async function resolveOnce(reference: string, options?: Parameters<typeof openSource>[1]): Promise<unknown> {
  const source = await openSource(reference, options);
  try {
    return await source.resolve();
  } finally {
    await source.close();
  }
}

async function rejectsWith(promise: Promise<unknown>, code: string, pattern: RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof SourceError, `expected a SourceError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    assert.match(err.message, pattern);
    assert.ok(!err.message.includes('\n'), 'one line');
    return true;
  });
}

test('docker references are normalized as distribution/reference does', () => {
  const cases: [string, string][] = [
    ['alpine', 'docker.io/library/alpine'],
    ['alpine:3.19', 'docker.io/library/alpine:3.19'],
    ['index.docker.io/library/alpine', 'docker.io/library/alpine'],
    ['docker.io/alpine', 'docker.io/library/alpine'],
    ['user/repo', 'docker.io/user/repo'],
    ['localhost/repo', 'localhost/repo'],
    ['localhost:5000/a/b:t', 'localhost:5000/a/b:t'],
    ['127.0.0.1:5000/a', '127.0.0.1:5000/a'],
    ['quay.io/a/b@sha256:' + 'a'.repeat(64), 'quay.io/a/b@sha256:' + 'a'.repeat(64)],
    ['Example/repo', 'Example/repo'],
    ['a__b/c.d-e', 'docker.io/a__b/c.d-e'],
  ];
  for (const [input, want] of cases) assert.equal(formatDockerName(parseDockerName(input)), want, input);
  for (const bad of ['UPPER', 'docker.io/Upper/x', 'a/b:', 'a/b@sha256:12', 'a//b', '-a/b', 'a'.repeat(64), 'a/b@md5:' + 'a'.repeat(32)]) {
    assert.throws(() => parseDockerName(bad), SourceError, bad);
  }
});

test('transport syntax as skopeo has it', () => {
  const d = parseReference('docker://registry.example:5000/ns/app');
  assert.equal(d.transport, 'docker');
  assert.deepEqual(d.transport === 'docker' && d.name, { domain: 'registry.example:5000', path: 'ns/app', tag: 'latest' });
  assert.deepEqual(parseReference('oci:/tmp/x:v1:extra'), { transport: 'oci', text: 'oci:/tmp/x:v1:extra', path: '/tmp/x', ref: 'v1:extra' });
  assert.deepEqual(parseReference('oci:rel/dir'), { transport: 'oci', text: 'oci:rel/dir', path: 'rel/dir' });
  assert.deepEqual(parseReference('oci-archive:/a.tar:t'), { transport: 'oci-archive', text: 'oci-archive:/a.tar:t', path: '/a.tar', ref: 't' });
  const da = parseReference('docker-archive:/a.tar:busybox');
  assert.deepEqual(da.transport === 'docker-archive' && da.name, { domain: 'docker.io', path: 'library/busybox', tag: 'latest' });
  const di = parseReference('docker-archive:/a.tar:@2');
  assert.equal(di.transport === 'docker-archive' && di.index, 2);
  for (const bad of ['docker:alpine', 'ftp://x', 'nocolon', 'docker://a/b:t@sha256:' + 'a'.repeat(64), 'oci::v1', 'oci:/x:-bad', 'docker-archive:/a.tar:@x', 'docker-archive:/a.tar:a@sha256:' + 'a'.repeat(64)]) {
    assert.throws(() => parseReference(bad), (err: unknown) => err instanceof SourceError && err.code === 'invalid-reference' && err.message.includes(bad), bad);
  }
});

test('oci:, oci-archive: and docker-archive: resolve the image skopeo sees and stream its blobs', { skip: !(haveUmoci && haveSkopeo) && NO_TOOLS }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-oci-src-'));
  try {
    const layout = join(dir, 'layout');
    makeUmociImage(layout, 'v1');
    const want = skopeoManifest(`oci:${layout}:v1`);
    assert.equal(want.layers.length, 2);

    for (const ref of [`oci:${layout}:v1`, `oci:${layout}`]) {
      const source = await openSource(ref);
      try {
        const image = await source.resolve();
        assert.equal(image.manifestDigest, indexEntry(layout, 'v1').digest);
        assert.deepEqual(image.manifest, readFileSync(blobFile(layout, image.manifestDigest)));
        assert.deepEqual(image.layers.map((l) => [l.digest, l.size, l.mediaType]), want.layers.map((l) => [l.digest, l.size, l.mediaType]));
        assert.equal(image.configDescriptor.digest, want.config.digest);
        assert.equal(image.defaultName, ref.endsWith(':v1') ? 'layout:v1' : 'layout:latest');
        for (const layer of image.layers) {
          const bytes = await readAll(source, layer);
          assert.deepEqual(bytes, readFileSync(blobFile(layout, layer.digest)));
        }
      } finally {
        await source.close();
      }
    }

    const ociArchive = join(dir, 'image.tar');
    skopeo('copy', '--quiet', `oci:${layout}:v1`, `oci-archive:${ociArchive}:v1`);
    {
      const source = await openSource(`oci-archive:${ociArchive}:v1`);
      try {
        const image = await source.resolve();
        assert.deepEqual(image.layers.map((l) => l.digest), want.layers.map((l) => l.digest));
        for (const layer of image.layers) assert.deepEqual(await readAll(source, layer), readFileSync(blobFile(layout, layer.digest)));
      } finally {
        await source.close();
      }
    }

    const dockerArchive = join(dir, 'docker.tar');
    skopeo('copy', '--quiet', `oci:${layout}:v1`, `docker-archive:${dockerArchive}:example/app:v1`);
    const diffIds: string[] = JSON.parse(skopeo('inspect', '--config', `docker-archive:${dockerArchive}`)).rootfs.diff_ids;
    for (const ref of [`docker-archive:${dockerArchive}`, `docker-archive:${dockerArchive}:example/app:v1`, `docker-archive:${dockerArchive}:@0`]) {
      const source = await openSource(ref);
      try {
        const image = await source.resolve();
        assert.equal(image.defaultName, 'docker.io/example/app:v1');
        assert.deepEqual(image.layers.map((l) => l.digest), diffIds);
        for (const layer of image.layers) {
          const bytes = await readAll(source, layer);
          assert.equal(`sha256:${createHash('sha256').update(bytes).digest('hex')}`, layer.digest);
        }
      } finally {
        await source.close();
      }
    }
    // Docker 25+ `docker save`: an OCI layout with manifest.json naming blobs/sha256/HEX (layers kept compressed here).
    const config = JSON.parse(readFileSync(blobFile(layout, want.config.digest), 'utf8'));
    writeFileSync(join(layout, 'manifest.json'), JSON.stringify([{ Config: `blobs/sha256/${want.config.digest.slice(7)}`, RepoTags: ['new/docker:v2'], Layers: want.layers.map((l) => `blobs/sha256/${l.digest.slice(7)}`) }]));
    assert.equal(config.rootfs.diff_ids.length, 2);
    const newDocker = join(dir, 'new-docker.tar');
    execFileSync('tar', ['-C', layout, '-cf', newDocker, '.']);
    {
      const source = await openSource(`docker-archive:${newDocker}`);
      try {
        const image = await source.resolve();
        assert.equal(image.defaultName, 'docker.io/new/docker:v2');
        assert.deepEqual(image.layers.map((l) => [l.digest, l.mediaType]), want.layers.map((l) => [l.digest, 'application/vnd.docker.image.rootfs.diff.tar.gzip']));
        for (const layer of image.layers) assert.deepEqual(await readAll(source, layer), readFileSync(blobFile(layout, layer.digest)));
      } finally {
        await source.close();
      }
    }
    const archiveBytes = readFileSync(dockerArchive);
    writeFileSync(join(dir, 'cut.tar'), archiveBytes.subarray(0, 1536));
    await rejectsWith(openSource(`docker-archive:${join(dir, 'cut.tar')}`), 'invalid-manifest', /cut\.tar: not a readable tar archive \(truncated/);
    const corrupt = Buffer.from(archiveBytes);
    corrupt[10] ^= 0x20;
    writeFileSync(join(dir, 'corrupt.tar'), corrupt);
    await rejectsWith(openSource(`oci-archive:${join(dir, 'corrupt.tar')}`), 'invalid-manifest', /: bad tar header checksum at byte 0\)$/);
    writeFileSync(join(dir, 'image.tar.gz'), gzipSync(readFileSync(ociArchive)));
    await rejectsWith(openSource(`oci-archive:${join(dir, 'image.tar.gz')}`), 'unsupported', /compressed archives are not supported/);
    await rejectsWith(resolveOnce(`docker-archive:${dockerArchive}:example/other:v1`), 'not-found', /no image tagged docker\.io\/example\/other:v1/);
    await rejectsWith(resolveOnce(`oci:${layout}:v2`), 'not-found', /no image named 'v2'.*'v1'/);
    await rejectsWith(resolveOnce(`oci:${join(dir, 'nothing')}`), 'not-found', /not an OCI image layout/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a tampered or truncated blob fails its stream, naming the blob', { skip: !haveUmoci && NO_TOOLS }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-oci-src-'));
  try {
    const layout = join(dir, 'layout');
    makeUmociImage(layout, 'v1');
    const source = await openSource(`oci:${layout}:v1`);
    try {
      const image = await source.resolve();
      const [base, top] = image.layers;
      const baseFile = blobFile(layout, base.digest);
      const bytes = readFileSync(baseFile);
      bytes[bytes.length >> 1] ^= 0xff;
      writeFileSync(baseFile, bytes);
      await rejectsWith(readAll(source, base), 'digest-mismatch', new RegExp(`blob ${base.digest} of oci:.*digest mismatch`));
      truncateSync(blobFile(layout, top.digest), top.size - 1);
      await rejectsWith(readAll(source, top), 'size-mismatch', new RegExp(`blob ${top.digest} .*truncated`));
      writeFileSync(blobFile(layout, top.digest), Buffer.alloc(top.size + 10));
      await rejectsWith(readAll(source, top), 'size-mismatch', new RegExp(`blob ${top.digest} .*more than the expected ${top.size} bytes`));
    } finally {
      await source.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('an index picks the running platform, or --platform; schema 1 is refused', { skip: !haveUmoci && NO_TOOLS }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cfs-oci-src-'));
  try {
    const layout = join(dir, 'layout');
    makeUmociImage(layout, 'amd', { architecture: 'amd64' });
    makeUmociImage(layout, 'arm', { architecture: 'arm64' });
    const amd = indexEntry(layout, 'amd');
    const arm = indexEntry(layout, 'arm');
    addPlatformIndex(layout, 'multi', [
      { tag: 'amd', platform: { os: 'linux', architecture: 'amd64' } },
      { tag: 'arm', platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
    ]);
    const resolveWith = async (platform?: string) => {
      const source = await openSource(`oci:${layout}:multi`, platform ? { platform } : {});
      try {
        return await source.resolve();
      } finally {
        await source.close();
      }
    };
    if (process.arch === 'x64') assert.equal((await resolveWith()).manifestDigest, amd.digest);
    if (process.arch === 'arm64') assert.equal((await resolveWith()).manifestDigest, arm.digest);
    const chosen = await resolveWith('linux/arm64');
    assert.equal(chosen.manifestDigest, arm.digest);
    assert.deepEqual(chosen.platform, { os: 'linux', architecture: 'arm64', variant: 'v8' });
    assert.equal(JSON.parse(chosen.config.toString()).architecture, 'arm64');
    assert.equal((await resolveWith('linux/arm64/v8')).manifestDigest, arm.digest);
    assert.equal((await resolveWith('linux/amd64')).manifestDigest, amd.digest);
    await rejectsWith(resolveWith('linux/s390x'), 'not-found', /no image for linux\/s390x in the index \(it has linux\/amd64, linux\/arm64\/v8\)/);
    await rejectsWith(resolveWith('linux/amd64/v3'), 'not-found', /no image for linux\/amd64\/v3/);
    await assert.rejects(resolveWith('linux'), /invalid platform 'linux'/);

    const schema1 = Buffer.from(JSON.stringify({ schemaVersion: 1, name: 'x', tag: 'y', architecture: 'amd64', fsLayers: [], history: [] }));
    addIndexEntry(layout, addBlob(layout, schema1, 'application/vnd.docker.distribution.manifest.v1+prettyjws'), 'old');
    await rejectsWith(resolveOnce(`oci:${layout}:old`), 'unsupported', /schema 1 manifests are not supported/);
    await rejectsWith(resolveOnce(`oci:${layout}`), 'invalid-reference', /holds 4 images; name one/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('every source these tests opened was closed: no descriptor is left for the garbage collector to close', async () => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  for (let i = 0; i < 3; i++) {
    gc();
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  assert.deepEqual(collectedHandles, []);
});
