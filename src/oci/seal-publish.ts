/**
 * Where a seal goes once computed: a composefs artifact next to its subject
 * (a registry repository, with the referrers tag schema kept where the
 * registry has no referrers API; or an OCI layout's index.json), or an
 * inline-sealed manifest pushed to a destination with the image's blobs
 * reused: nothing copied within one repository, mounted across repositories
 * of one registry, streamed and checked otherwise.
 */
import type { ClientOptions } from './registry/client.js';
import type { DockerName, SourceReference } from './reference.js';
import type { Descriptor, ImageSource, ResolvedImage } from './source.js';
import { SourceError } from './source-errors.js';
import { EMPTY_BLOB, EMPTY_DESCRIPTOR, SEAL_ARTIFACT_TYPE } from './seal-format.js';
import { mediaTypes } from './manifest.js';
import { refNameAnnotation } from './layout.js';
import { sha256Of } from './verify.js';
import type { ReferrersUpdate } from './referrers.js';

export interface PublishOptions extends ClientOptions {
  /** One line per step taken (for --explain). */
  explain?: (line: string) => void;
}

export interface PublishedArtifact {
  digest: string;
  size: number;
  /** Where it was written: `docker://HOST/REPO@DIGEST` or `oci:DIR`. */
  where: string;
  /** How readers find it: the registry's referrers API, the tag schema's index, or the layout's index.json. */
  discovery: { kind: 'referrers-api'; subject: string } | ({ kind: 'tag-schema' } & ReferrersUpdate) | { kind: 'layout-index'; added: boolean };
}

export interface PublishedInline {
  digest: string;
  size: number;
  where: string;
  /** Blobs copied (bytes sent), mounted from another repository, or found already there. */
  blobs: { copied: number; mounted: number; present: number };
}

/** The references seal can write to: a registry repository or an OCI layout directory. */
export type WritableReference = Extract<SourceReference, { transport: 'docker' | 'oci' }>;

export function checkWritable(ref: SourceReference, role: string): WritableReference {
  if (ref.transport !== 'docker' && ref.transport !== 'oci') {
    throw new SourceError(`${ref.text}: ${role} must be docker:// or oci: (cfs seal cannot write into an ${ref.transport} file)`, 'unsupported');
  }
  return ref;
}

/** A blob the artifact's layers name (a signature), pushed before it. */
export interface ArtifactBlob {
  descriptor: { mediaType: string; digest: string; size: number };
  bytes: Buffer;
}

/** Push `artifact` (an artifact manifest whose subject is `subject`) next to its subject, with the `blobs` its layers name. */
export async function publishArtifact(reference: SourceReference, artifact: Buffer, subject: string, options: PublishOptions = {}, blobs: readonly ArtifactBlob[] = []): Promise<PublishedArtifact> {
  const ref = checkWritable(reference, 'SOURCE');
  const digest = sha256Of(artifact);
  const explain = options.explain ?? (() => {});
  if (ref.transport === 'oci') {
    const { LayoutWriter } = await import('./layout-write.js');
    const layout = LayoutWriter.open(ref.path, false);
    try {
      layout.readIndex();
      if (!layout.hasBlob(EMPTY_DESCRIPTOR)) await layout.writeBlob(EMPTY_DESCRIPTOR, EMPTY_BLOB);
      for (const b of blobs) if (!layout.hasBlob(b.descriptor)) await layout.writeBlob(b.descriptor, b.bytes);
      await layout.writeBlob({ digest, size: artifact.length }, artifact);
      let added = false;
      layout.updateIndex((index) => {
        if (index.manifests.some((m) => m.digest === digest)) return;
        index.manifests.push({ mediaType: mediaTypes.ociManifest, digest, size: artifact.length, artifactType: SEAL_ARTIFACT_TYPE });
        added = true;
      });
      explain(added ? `artifact ${digest} written into ${ref.path} (index.json lists it, with no name)` : `artifact ${digest} was already in ${ref.path}`);
      return { digest, size: artifact.length, where: `oci:${ref.path}`, discovery: { kind: 'layout-index', added } };
    } finally {
      layout.close();
    }
  }
  const [{ RegistryTarget }, { addToReferrersTag }] = await Promise.all([import('./registry/push.js'), import('./referrers.js')]);
  const target = new RegistryTarget(ref.name, ref.text, options);
  try {
    const sent = await target.ensureBlob(EMPTY_DESCRIPTOR, EMPTY_BLOB);
    explain(`empty blob ${EMPTY_DESCRIPTOR.digest} ${sent ? 'uploaded to' : 'already in'} ${target.where}`);
    for (const b of blobs) explain(`signature blob ${b.descriptor.digest} (${b.bytes.length} bytes) ${(await target.ensureBlob(b.descriptor, b.bytes)) ? 'uploaded to' : 'already in'} ${target.where}`);
    const pushed = await target.putManifest(digest, artifact, mediaTypes.ociManifest);
    const where = `${target.where}@${digest}`;
    explain(`artifact pushed to ${where}`);
    if (pushed.subject !== undefined) {
      explain(`the registry has the referrers API (OCI-Subject: ${pushed.subject.slice(0, 80)}): no referrers tag to keep`);
      return { digest, size: artifact.length, where, discovery: { kind: 'referrers-api', subject: pushed.subject } };
    }
    const update = await addToReferrersTag(target, subject, { mediaType: mediaTypes.ociManifest, digest, size: artifact.length, artifactType: SEAL_ARTIFACT_TYPE });
    explain(`no referrers API: ${update.added ? 'added to' : 'already in'} the referrers index ${target.where}:${update.tag} (${update.referrers} referrer${update.referrers === 1 ? '' : 's'})`);
    return { digest, size: artifact.length, where, discovery: { kind: 'tag-schema', ...update } };
  } finally {
    target.close();
  }
}

/** The tag or name a destination gives the new manifest. */
function destTag(dest: WritableReference): string | undefined {
  if (dest.transport === 'docker') {
    if (dest.name.digest !== undefined) throw new SourceError(`${dest.text}: DEST names a digest; an inline seal makes a new manifest, so DEST needs a tag`, 'invalid-reference');
    return dest.name.tag;
  }
  return dest.ref;
}

function sameRegistry(a: DockerName, b: DockerName): boolean {
  return a.domain === b.domain;
}

/**
 * Push the inline-sealed `manifest` (the image `img` of `from`, with seal
 * annotations) to `dest`, its config and layers reused.
 */
export async function publishInline(source: ImageSource, img: ResolvedImage, from: SourceReference, destination: SourceReference, manifest: Buffer, options: PublishOptions = {}): Promise<PublishedInline> {
  const dest = checkWritable(destination, 'DEST');
  const tag = destTag(dest);
  const digest = sha256Of(manifest);
  const explain = options.explain ?? (() => {});
  const blobs = { copied: 0, mounted: 0, present: 0 };
  const all: Descriptor[] = [img.configDescriptor, ...img.layers];
  const bodyOf = (d: Descriptor) => (d === img.configDescriptor ? img.config : { size: d.size, open: () => source.openBlob(d) });
  if (dest.transport === 'oci') {
    const { LayoutWriter } = await import('./layout-write.js');
    const layout = LayoutWriter.open(dest.path, true);
    try {
      layout.readIndex();
      for (const d of all) {
        if (layout.hasBlob(d)) {
          blobs.present++;
          continue;
        }
        await layout.writeBlob(d, d === img.configDescriptor ? img.config : await source.openBlob(d));
        blobs.copied++;
      }
      await layout.writeBlob({ digest, size: manifest.length }, manifest);
      layout.updateIndex((index) => {
        index.manifests = index.manifests.filter((m) => tag === undefined || (m.annotations as Record<string, unknown> | undefined)?.[refNameAnnotation] !== tag);
        index.manifests.push({ mediaType: img.manifestMediaType, digest, size: manifest.length, ...(tag !== undefined ? { annotations: { [refNameAnnotation]: tag } } : {}) });
      });
    } finally {
      layout.close();
    }
    const where = `oci:${dest.path}${tag !== undefined ? `:${tag}` : ''}`;
    explain(`inline-sealed manifest ${digest} written to ${where} (blobs: ${blobs.copied} copied, ${blobs.present} already there)`);
    return { digest, size: manifest.length, where, blobs };
  }
  const fromDocker = from.transport === 'docker' ? from.name : undefined;
  const sameRepository = fromDocker !== undefined && sameRegistry(fromDocker, dest.name) && fromDocker.path === dest.name.path;
  const mountable = fromDocker !== undefined && !sameRepository && sameRegistry(fromDocker, dest.name);
  const { RegistryTarget } = await import('./registry/push.js');
  const target = new RegistryTarget(dest.name, dest.text, options, mountable ? [fromDocker.path] : []);
  try {
    if (sameRepository) blobs.present = all.length;
    else {
      for (const d of all) {
        if (mountable && (await target.mountBlob(d.digest, fromDocker.path))) {
          blobs.mounted++;
          continue;
        }
        if (await target.ensureBlob(d, bodyOf(d))) blobs.copied++;
        else blobs.present++;
      }
    }
    await target.putManifest(tag!, manifest, img.manifestMediaType);
    const where = `${target.where}:${tag}`;
    explain(`inline-sealed manifest ${digest} pushed to ${where} (blobs: ${sameRepository ? 'the same repository, none copied' : `${blobs.copied} copied, ${blobs.mounted} mounted from ${fromDocker?.path}, ${blobs.present} already there`})`);
    return { digest, size: manifest.length, where, blobs };
  } finally {
    target.close();
  }
}
