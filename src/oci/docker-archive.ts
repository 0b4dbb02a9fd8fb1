/**
 * The `docker-archive:FILE[:NAME[:TAG]|:@INDEX]` transport: the tar that
 * `docker save` and `podman save` write. Its manifest.json lists, per image,
 * the config file, the layer files (base first) and the RepoTags. Older
 * writers store `HEX/layer.tar` uncompressed (its sha256 is the config's
 * diff_id); Docker 25 and later store an OCI layout beside it and name
 * `blobs/sha256/HEX`. Like containers/image, the source serves a Docker
 * schema 2 manifest it writes from these.
 */
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import type { BlobOptions, Descriptor, ImageSource, ResolvedImage } from './source.js';
import { TarFiles } from './files.js';
import { SourceError } from './source-errors.js';
import { formatDockerName, parseDockerName, type SourceReference } from './reference.js';
import { maxDocumentSize, mediaTypes } from './manifest.js';
import { blobLabel, checkedStream, sha256Of } from './verify.js';

const layerTypes = {
  tar: 'application/vnd.docker.image.rootfs.diff.tar',
  gzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  zstd: 'application/vnd.docker.image.rootfs.diff.tar.zstd',
};

interface ArchiveEntry {
  Config?: unknown;
  RepoTags?: unknown;
  Layers?: unknown;
}

export class DockerArchiveSource implements ImageSource {
  /** Archive member of each blob this source described. */
  private readonly members = new Map<string, string>();

  private constructor(
    private readonly files: TarFiles,
    private readonly ref: Extract<SourceReference, { transport: 'docker-archive' }>,
    private readonly defaultName: string,
  ) {}

  static async open(ref: Extract<SourceReference, { transport: 'docker-archive' }>, defaultName: string): Promise<DockerArchiveSource> {
    return new DockerArchiveSource(await TarFiles.open(ref.path, ref.text), ref, defaultName);
  }

  async resolve(): Promise<ResolvedImage> {
    const what = this.ref.text;
    const listing = await this.files.read('manifest.json', maxDocumentSize, `${what}: manifest.json`);
    let entries: ArchiveEntry[];
    try {
      entries = JSON.parse(listing.toString('utf8')) as ArchiveEntry[];
    } catch (err) {
      throw new SourceError(`${what}: manifest.json is not valid JSON`, 'invalid-manifest', { cause: err });
    }
    if (!Array.isArray(entries)) throw new SourceError(`${what}: manifest.json is not a list of images`, 'invalid-manifest');
    const tagsOf = (e: ArchiveEntry) => (Array.isArray(e.RepoTags) ? e.RepoTags.filter((t): t is string => typeof t === 'string') : []);
    let entry: ArchiveEntry;
    let chosenTag: string | undefined;
    if (this.ref.index !== undefined) {
      if (this.ref.index >= entries.length) throw new SourceError(`${what}: no image @${this.ref.index} (the archive holds ${entries.length})`, 'not-found');
      entry = entries[this.ref.index];
    } else if (this.ref.name) {
      const wanted = formatDockerName(this.ref.name);
      const found = entries.find((e) => tagsOf(e).some((t) => safeName(t) === wanted));
      if (!found) {
        const all = entries.flatMap(tagsOf);
        throw new SourceError(`${what}: no image tagged ${wanted} in the archive (it has ${all.join(', ') || 'no tags'})`, 'not-found');
      }
      entry = found;
      chosenTag = wanted;
    } else {
      if (entries.length !== 1) {
        throw new SourceError(`${what}: the archive holds ${entries.length} images; name one as ${what}:NAME:TAG or ${what}:@INDEX`, entries.length ? 'invalid-reference' : 'not-found');
      }
      entry = entries[0];
    }
    if (typeof entry.Config !== 'string' || !Array.isArray(entry.Layers) || !entry.Layers.every((l) => typeof l === 'string')) {
      throw new SourceError(`${what}: manifest.json entry without Config or Layers`, 'invalid-manifest');
    }
    const config = await this.files.read(entry.Config, maxDocumentSize, `${what}: config ${entry.Config}`);
    const configDescriptor: Descriptor = { mediaType: mediaTypes.dockerConfig, digest: sha256Of(config), size: config.length };
    this.members.set(configDescriptor.digest, entry.Config);
    let diffIds: string[] = [];
    try {
      const parsed = JSON.parse(config.toString('utf8')) as { rootfs?: { diff_ids?: unknown } };
      if (Array.isArray(parsed.rootfs?.diff_ids)) diffIds = parsed.rootfs.diff_ids.filter((d): d is string => typeof d === 'string');
    } catch (err) {
      throw new SourceError(`${what}: config ${entry.Config} is not valid JSON`, 'invalid-manifest', { cause: err });
    }
    const layerFiles = entry.Layers as string[];
    if (diffIds.length !== layerFiles.length) {
      throw new SourceError(`${what}: ${layerFiles.length} layers in manifest.json but ${diffIds.length} diff_ids in the config`, 'invalid-manifest');
    }
    const layers: Descriptor[] = [];
    for (const [i, file] of layerFiles.entries()) {
      layers.push(await this.describeLayer(file, diffIds[i], `${what}: layer ${file}`));
    }
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: mediaTypes.dockerManifest,
        config: configDescriptor,
        layers: layers.map(({ mediaType, digest, size }) => ({ mediaType, digest, size })),
      }),
    );
    const firstTag = tagsOf(entry)[0];
    return {
      reference: what,
      defaultName: chosenTag ?? (firstTag ? safeName(firstTag) ?? this.defaultName : this.defaultName),
      manifestDigest: sha256Of(manifest),
      manifestMediaType: mediaTypes.dockerManifest,
      manifest,
      configDescriptor,
      config,
      layers,
    };
  }

  /** A layer's descriptor: its kind sniffed from its first bytes; the digest from its blob name or diff_id when that is the stored file's, else hashed. */
  private async describeLayer(file: string, diffId: string, what: string): Promise<Descriptor> {
    const size = await this.files.size(file);
    if (size === undefined) throw new SourceError(`${what}: not found in the archive`, 'not-found');
    let magic = Buffer.alloc(0);
    for await (const chunk of this.files.stream(file)) {
      magic = chunk.subarray(0, 4);
      break;
    }
    const mediaType =
      magic[0] === 0x1f && magic[1] === 0x8b ? layerTypes.gzip : magic.length === 4 && magic.readUInt32LE(0) === 0xfd2fb528 ? layerTypes.zstd : layerTypes.tar;
    const named = /^blobs\/sha256\/([0-9a-f]{64})$/.exec(file);
    let digest: string;
    if (named) digest = `sha256:${named[1]}`;
    else if (mediaType === layerTypes.tar && /^sha256:[0-9a-f]{64}$/.test(diffId)) digest = diffId;
    else {
      const hash = createHash('sha256');
      for await (const chunk of this.files.stream(file)) hash.update(chunk);
      digest = `sha256:${hash.digest('hex')}`;
    }
    this.members.set(digest, file);
    return { mediaType, digest, size };
  }

  async openBlob(descriptor: Descriptor, options: BlobOptions = {}): Promise<Readable> {
    const what = blobLabel(descriptor, this.ref.text);
    const member = this.members.get(descriptor.digest);
    if (!member) throw new SourceError(`${what}: not in the archive (resolve the image first)`, 'not-found');
    return checkedStream(this.files.stream(member, options.signal), descriptor, what, options.onBytes);
  }

  async close(): Promise<void> {
    await this.files.close();
  }
}

function safeName(tag: string): string | undefined {
  try {
    const name = parseDockerName(tag);
    if (name.tag === undefined && name.digest === undefined) name.tag = 'latest';
    return formatDockerName(name);
  } catch {
    return undefined;
  }
}
