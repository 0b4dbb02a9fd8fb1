/**
 * OCI images for the transport tests, made by the real tools: `umoci` builds
 * layouts (two layers, the second deleting a file, so a real whiteout) and
 * `skopeo copy` turns them into archives or pushes them to a registry.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const haveTool = (tool: string) => spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status === 0;
export const haveUmoci = haveTool('umoci');
export const haveSkopeo = haveTool('skopeo');

export function sha256File(path: string): string {
  return `sha256:${createHash('sha256').update(readFileSync(path)).digest('hex')}`;
}

export function blobFile(layout: string, digest: string): string {
  return join(layout, 'blobs', 'sha256', digest.slice('sha256:'.length));
}

/** A layout with image `tag`: base layer with files, a second one deleting `d/x`; `architecture` set in the config. */
export function makeUmociImage(layout: string, tag: string, options: { architecture?: string; content?: string } = {}): void {
  const run = (...args: string[]) => execFileSync('umoci', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  try {
    readFileSync(join(layout, 'oci-layout'));
  } catch {
    run('init', '--layout', layout);
  }
  run('new', '--image', `${layout}:${tag}`);
  if (options.architecture) run('config', '--image', `${layout}:${tag}`, '--architecture', options.architecture);
  const bundle = `${layout}.bundle-${tag}`;
  rmSync(bundle, { recursive: true, force: true });
  run('unpack', '--image', `${layout}:${tag}`, bundle);
  mkdirSync(join(bundle, 'rootfs/d'), { recursive: true });
  writeFileSync(join(bundle, 'rootfs/hello'), options.content ?? `hello from ${tag}\n`);
  writeFileSync(join(bundle, 'rootfs/big'), Buffer.alloc(3 << 20, tag));
  writeFileSync(join(bundle, 'rootfs/d/x'), 'x\n');
  run('repack', '--image', `${layout}:${tag}`, bundle);
  rmSync(bundle, { recursive: true, force: true });
  run('unpack', '--image', `${layout}:${tag}`, bundle);
  rmSync(join(bundle, 'rootfs/d/x'));
  run('repack', '--image', `${layout}:${tag}`, bundle);
  rmSync(bundle, { recursive: true, force: true });
  run('gc', '--layout', layout);
}

export function skopeo(...args: string[]): string {
  return execFileSync('skopeo', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** The manifest of an image as skopeo reads it (an independent reader). */
export function skopeoManifest(ref: string, ...flags: string[]): { config: { digest: string; size: number }; layers: { digest: string; size: number; mediaType: string }[] } {
  return JSON.parse(skopeo('inspect', ...flags, '--raw', ref));
}

/** Add a blob to a layout; returns its descriptor. */
export function addBlob(layout: string, bytes: Buffer, mediaType: string): { mediaType: string; digest: string; size: number } {
  const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  writeFileSync(blobFile(layout, digest), bytes);
  return { mediaType, digest, size: bytes.length };
}

/** Add an entry to the layout's index.json named `ref`. */
export function addIndexEntry(layout: string, descriptor: object, ref: string): void {
  const index = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8'));
  index.manifests.push({ ...descriptor, annotations: { 'org.opencontainers.image.ref.name': ref } });
  writeFileSync(join(layout, 'index.json'), JSON.stringify(index));
}

/** Name `ref` an image index over manifests already tagged in the layout, each with its platform (a multi-arch image). */
export function addPlatformIndex(layout: string, ref: string, entries: Array<{ tag: string; platform: { os: string; architecture: string; variant?: string } }>): void {
  const manifests = entries.map(({ tag, platform }) => {
    const { mediaType, digest, size } = indexEntry(layout, tag);
    return { mediaType, digest, size, platform };
  });
  const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests }));
  addIndexEntry(layout, addBlob(layout, index, 'application/vnd.oci.image.index.v1+json'), ref);
}

export function indexEntry(layout: string, ref: string): { mediaType: string; digest: string; size: number } {
  const index = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8'));
  const found = index.manifests.find((m: { annotations?: Record<string, string> }) => m.annotations?.['org.opencontainers.image.ref.name'] === ref);
  if (!found) throw new Error(`no ${ref} in ${layout}`);
  return found;
}
