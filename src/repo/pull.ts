/**
 * Pull: an image from an ImageSource into a repository, under a name.
 *
 * The layers not yet in the repository are fetched a few at a time; each
 * streams blob → decompressor → tar reader → object store, its entries
 * recorded once its objects are durable. Then the layers' entries are
 * replayed into one tree (merge.ts), written as a composefs image, and the
 * name is written last. Nothing is unpacked on disk.
 */
import { ComposefsError } from '../errors.js';
import { writeImageWithInfo } from '../erofs/writer.js';
import { fsverityDigest } from '../fsverity/index.js';
import { S_IFMT, S_IFREG, walk, type Inode } from '../tree/model.js';
import { importLayer, LayerError, type LayerEntry } from '../oci/layer.js';
import type { Descriptor, ImageSource, ResolvedImage } from '../oci/source.js';
import { ObjectWriter } from '../store/object-writer.js';
import { TreeBuilder } from './merge.js';
import { RepoError, checkName, type NameRecord, type Repository } from './repository.js';

export type PullEvent =
  | { type: 'resolved'; reference: string; layers: { digest: string; size: number; cached: boolean }[] }
  | { type: 'waiting-for-lock' }
  | { type: 'layer-start'; index: number }
  | { type: 'layer-bytes'; index: number; bytes: number }
  /** The layer is read and its objects written (they are made durable, and the layer recorded, before anything is named). */
  | { type: 'layer-done'; index: number; cached: boolean }
  | { type: 'building' }
  | { type: 'done'; record: NameRecord };

export interface PullOptions {
  /** The name to give (default: the source's default name). */
  name?: string;
  /** Layers fetched at once (default 3). */
  parallel?: number;
  onEvent?: (e: PullEvent) => void;
  signal?: AbortSignal;
}

export interface PullResult {
  record: NameRecord;
  /** Layers fetched and imported now (the rest were in the repository). */
  layersImported: number;
  objectsWritten: number;
  bytesWritten: number;
}

interface ImageConfig {
  created?: string;
  architecture?: string;
  os?: string;
  variant?: string;
  rootfs?: { type?: string; diff_ids?: string[] };
}

function parseConfig(img: ResolvedImage): ImageConfig {
  let config: ImageConfig;
  try {
    config = JSON.parse(img.config.toString('utf8')) as ImageConfig;
  } catch {
    throw new RepoError(`${img.reference}: image config ${img.configDescriptor.digest} is not valid JSON`);
  }
  const ids = config.rootfs?.diff_ids;
  if (!Array.isArray(ids) || ids.length !== img.layers.length || ids.some((d) => typeof d !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(d))) {
    throw new RepoError(`${img.reference}: image config lists ${Array.isArray(ids) ? ids.length : 'no'} diff_ids for ${img.layers.length} layers`);
  }
  return config;
}

/** Import one image from `source` into `repo` and name it. */
export async function pullImage(repo: Repository, source: ImageSource, opts: PullOptions = {}): Promise<PullResult> {
  const emit = opts.onEvent ?? (() => {});
  if (opts.name !== undefined) checkName(opts.name);
  const lock = await repo.lock(false, () => emit({ type: 'waiting-for-lock' }));
  try {
    repo.prepareWrite();
    const img = await source.resolve();
    const name = opts.name ?? img.defaultName;
    checkName(name);
    const config = parseConfig(img);
    const diffIds = config.rootfs!.diff_ids!;
    const cached = diffIds.map((d) => repo.hasLayer(d));
    emit({ type: 'resolved', reference: img.reference, layers: img.layers.map((l, i) => ({ digest: l.digest, size: l.size, cached: cached[i] })) });

    const objects = new ObjectWriter(repo.dir('objects'), repo.objects, repo.algorithm);
    // One import per distinct diff_id, however often the image lists it.
    const todo = new Map<string, number>();
    diffIds.forEach((d, i) => {
      if (!cached[i] && !todo.has(d)) todo.set(d, i);
    });
    for (let i = 0; i < diffIds.length; i++) if (cached[i]) emit({ type: 'layer-done', index: i, cached: true });
    const queue = [...todo.entries()];
    const parallel = Math.max(1, opts.parallel ?? 3);
    let failed: unknown = null;
    /** The entries of the layers imported now, kept for the build rather than read back. */
    const imported = new Map<string, LayerEntry[]>();
    /** Per imported layer: its objects made durable, then its record written. */
    const recorded: Promise<void>[] = [];
    const worker = async () => {
      while (queue.length > 0 && failed === null) {
        const [diffId, index] = queue.shift()!;
        try {
          const entries = await fetchLayer(source, img.reference, img.layers[index], diffId, index, objects, emit, opts.signal);
          imported.set(diffId, entries);
          emit({ type: 'layer-done', index, cached: false });
          const record = recordLayer(repo, diffId, entries, objects);
          record.catch((err: unknown) => {
            failed ??= err;
          });
          recorded.push(record);
        } catch (err) {
          failed ??= err;
        }
      }
    };
    let tree: Inode;
    let image: Buffer;
    let hex: string;
    try {
      await Promise.all(Array.from({ length: Math.min(parallel, queue.length) }, worker));
      if (failed !== null) throw failed;
      // The image is built and hashed while the last layers' syncfs run on a
      // writer thread (0.3-0.4 s each on the /usr image); only naming waits for them.
      emit({ type: 'building' });
      const builder = new TreeBuilder();
      for (let i = 0; i < diffIds.length; i++) builder.applyLayer(`${img.reference}: layer ${img.layers[i].digest}`, imported.get(diffIds[i]) ?? repo.readLayer(diffIds[i]));
      tree = builder.toInode();
      image = writeImageWithInfo(tree).image;
      hex = fsverityDigest(image, repo.algorithm).toString('hex');
    } finally {
      // Every layer durable and recorded before anything is named (a failure lands in `failed`).
      await Promise.allSettled(recorded);
      await objects.close();
    }
    if (failed !== null) throw failed;

    let size = 0;
    const seen = new Set<object>();
    walk(tree, (_p, inode) => {
      if ((inode.mode & S_IFMT) === S_IFREG && !seen.has(inode)) {
        seen.add(inode);
        size += inode.size;
      }
    });
    repo.writeBlob(img.manifestDigest, img.manifest);
    repo.writeBlob(img.configDescriptor.digest, img.config);
    repo.storeImage(hex, image);
    const platform = config.os ? `${config.os}/${config.architecture ?? ''}${config.variant ? `/${config.variant}` : ''}` : undefined;
    const record: NameRecord = {
      name,
      image: hex,
      manifest: img.manifestDigest,
      config: img.configDescriptor.digest,
      layers: diffIds,
      source: img.reference,
      created: typeof config.created === 'string' ? config.created : null,
      pulled: new Date().toISOString(),
      size,
      ...(platform ? { platform } : {}),
    };
    repo.writeName(record);
    emit({ type: 'done', record });
    return { record, layersImported: todo.size, objectsWritten: objects.stats.objectsWritten, bytesWritten: objects.stats.bytesWritten };
  } finally {
    lock.release();
  }
}

/** Make the layer's objects durable (one syncfs), then record its entries: never a record before its objects. */
async function recordLayer(repo: Repository, diffId: string, entries: LayerEntry[], objects: ObjectWriter): Promise<void> {
  await objects.sync();
  repo.writeLayer(diffId, entries);
}

async function fetchLayer(
  source: ImageSource,
  reference: string,
  desc: Descriptor,
  diffId: string,
  index: number,
  objects: ObjectWriter,
  emit: (e: PullEvent) => void,
  signal?: AbortSignal,
): Promise<LayerEntry[]> {
  emit({ type: 'layer-start', index });
  const blob = await source.openBlob(desc, { signal, onBytes: (bytes) => emit({ type: 'layer-bytes', index, bytes }) });
  try {
    const layer = await importLayer(blob as AsyncIterable<Buffer>, { descriptor: desc, objects, expectedDiffId: diffId });
    return layer.entries;
  } catch (err) {
    if (err instanceof LayerError) throw new LayerError(`${reference}: ${err.message}`, { cause: err });
    if (err instanceof ComposefsError) throw err;
    const msg = (err as Error)?.message ?? String(err);
    throw new LayerError(`${reference}: ${msg.includes(desc.digest) ? msg : `layer ${desc.digest}: ${msg}`}`, { cause: err });
  } finally {
    blob.destroy();
  }
}
