/**
 * One container layer in: a blob (tar, tar+gzip or tar+zstd) streamed
 * through its decompressor and the tar reader; every regular file's contents
 * go straight into the object store, and what remains is the layer's list of
 * entries in archive order (paths normalized, whiteouts recognised, file
 * contents replaced by their fs-verity digest or, up to 64 bytes, inlined).
 * The list is what the repository keeps so that the layer is never
 * downloaded or decompressed again; src/repo/merge.ts replays the lists of
 * an image's layers into one tree.
 *
 * Decompression: gzip through node:zlib, zstd through fzstd (pure
 * JavaScript with a streaming interface and no dependencies; Node 20 has no
 * zstd), fed block by block so that a bomb's output stays bounded
 * (zstd-frames.ts), both on a worker thread of their own (inflate.ts) that
 * also takes the diff_id. The format
 * is taken from the blob's first bytes, the media type only has to be a
 * known layer type (Docker's "tar.gzip" layers are sometimes plain tars).
 *
 * Paths: `./` and `/` prefixes and `.` components dropped, `a/../b`
 * resolved; a path whose `..` would climb above the root is refused (umoci
 * clamps it to the root instead: we would rather say the layer is hostile).
 * Hard link targets are normalized the same way.
 */
import { TarError, TarParser, show, type TarHeader, type TarSink } from './tar.js';
import type { FileSink, ObjectWriter, StoredFile } from '../store/object-writer.js';
import type { Descriptor } from './source.js';
import { inflateInWorker } from './inflate.js';
import { LayerError } from './decompress.js';
import { NAME_MAX, PATH_MAX } from '../tree/model.js';

export { decompress, LayerError, sniffCompression, type Compression } from './decompress.js';

/** Layer media types we accept (OCI and Docker names, distributable or not). */
export const LAYER_MEDIA_TYPES: ReadonlySet<string> = new Set([
  'application/vnd.oci.image.layer.v1.tar',
  'application/vnd.oci.image.layer.v1.tar+gzip',
  'application/vnd.oci.image.layer.v1.tar+zstd',
  'application/vnd.oci.image.layer.nondistributable.v1.tar',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd',
  'application/vnd.docker.image.rootfs.diff.tar',
  'application/vnd.docker.image.rootfs.diff.tar.gzip',
  'application/vnd.docker.image.rootfs.diff.tar.zstd',
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
]);

export type LayerEntryType = 'file' | 'hardlink' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo' | 'whiteout' | 'opaque';

/**
 * One entry of a layer, as kept in the repository (src/repo/layer-record.ts
 * writes and reads it). Byte strings that may not be UTF-8 (paths, link
 * targets, xattr names) are latin1 strings: one char per byte, lossless
 * through JSON.
 */
export interface LayerEntry {
  /** Normalized path without leading slash; '' is the root. For whiteouts: the path whited out (for opaque: the directory). */
  path: string;
  type: LayerEntryType;
  /** Permission bits (07777). */
  mode?: number;
  uid?: number;
  gid?: number;
  mtimeSec?: number;
  mtimeNsec?: number;
  /** Regular file: size, fs-verity digest (hex) when not empty, inline contents (base64) when 1..INLINE_LIMIT bytes. */
  size?: number;
  digest?: string;
  inline?: string;
  /** Symlink target (raw) or hard link target (normalized path). */
  link?: string;
  /** Device major and minor. */
  major?: number;
  minor?: number;
  /** xattrs: [name (latin1), value (base64)]. */
  xattrs?: [string, string][];
}

export interface ImportedLayer {
  /** sha256 of the uncompressed tar (`sha256:…`): the layer's diff_id. */
  diffId: string;
  entries: LayerEntry[];
  /** Uncompressed bytes. */
  tarBytes: number;
}

export interface ImportLayerOptions {
  /** For messages: "layer sha256:…" names it. */
  descriptor: Descriptor;
  objects: ObjectWriter;
  /** The diff_id the image config promises; a mismatch fails the layer. */
  expectedDiffId?: string;
  /** Called with uncompressed bytes as they are read. */
  onTarBytes?: (n: number) => void;
}

/**
 * Linux's NAME_MAX and PATH_MAX (with its NUL). A layer beyond them could be
 * unpacked by no runtime; here it would make a tree deeper than any walk's
 * stack. Refused, naming the layer.
 */

/** Why a normalized path (latin1: one char per byte) is beyond the limits, or null. */
function pathLimitFault(path: string): string | null {
  for (const part of path.split('/')) if (part.length > NAME_MAX) return `a name of ${part.length} bytes, longer than ${NAME_MAX}`;
  if (path.length >= PATH_MAX) return `a path of ${path.length} bytes, longer than ${PATH_MAX - 1}`;
  return null;
}

/** show() of a path cut to its first 100 bytes when longer than 200, with its length. */
export function showLong(path: Buffer): string {
  return path.length <= 200 ? show(path) : `${show(path.subarray(0, 100))}… (${path.length} bytes)`;
}

const WH_PREFIX = '.wh.';
const WH_OPAQUE = '.wh..wh..opq';

/** "a/./b//../c" → "a/c"; null when `..` climbs above the root. */
export function normalizePath(raw: string): string | null {
  const out: string[] = [];
  for (const part of raw.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (out.length === 0) return null;
      out.pop();
    } else out.push(part);
  }
  return out.join('/');
}

function layerName(d: Descriptor): string {
  return `layer ${d.digest}`;
}

/**
 * Read one layer blob into the object store and return its entries. The
 * blob stream must already be checked against its descriptor (ImageSource
 * does that); here the uncompressed bytes are checked against the diff_id.
 */
export async function importLayer(blob: AsyncIterable<Buffer>, opts: ImportLayerOptions): Promise<ImportedLayer> {
  const what = layerName(opts.descriptor);
  if (!LAYER_MEDIA_TYPES.has(opts.descriptor.mediaType)) {
    throw new LayerError(`${what}: unsupported media type ${opts.descriptor.mediaType}`);
  }
  const entries: LayerEntry[] = [];
  let current: FileSink | null = null;

  const onEntry = (h: TarHeader): TarSink | null => {
    const raw = h.path.toString('latin1');
    const path = normalizePath(raw);
    if (path === null) throw new LayerError(`${what}: entry ${showLong(h.path)}: path escapes the image root`);
    const pathFault = pathLimitFault(path);
    if (pathFault !== null) throw new LayerError(`${what}: entry ${showLong(h.path)}: ${pathFault}`);
    const slash = path.lastIndexOf('/');
    const base = path.slice(slash + 1);
    const dir = slash < 0 ? '' : path.slice(0, slash);
    if (base.startsWith(WH_PREFIX)) {
      if (base === WH_OPAQUE) entries.push({ path: dir, type: 'opaque' });
      else {
        const target = base.slice(WH_PREFIX.length);
        if (target === '' || target === '.' || target === '..') throw new LayerError(`${what}: entry ${show(h.path)}: invalid whiteout`);
        entries.push({ path: dir === '' ? target : `${dir}/${target}`, type: 'whiteout' });
      }
      return null;
    }
    if (path === '' && h.type !== 'dir') throw new LayerError(`${what}: entry ${show(h.path)}: refusing to change the type of the root directory`);
    const e: LayerEntry = { path, type: h.type };
    if (h.type === 'hardlink') {
      const target = normalizePath(h.linkname.toString('latin1'));
      if (target === null) throw new LayerError(`${what}: entry ${show(h.path)}: hard link target ${show(h.linkname)} escapes the image root`);
      if (target === '') throw new LayerError(`${what}: entry ${show(h.path)}: hard link to the root directory`);
      const targetFault = pathLimitFault(target);
      if (targetFault !== null) throw new LayerError(`${what}: entry ${show(h.path)}: hard link target ${showLong(h.linkname)}: ${targetFault}`);
      e.link = target;
      entries.push(e);
      return null;
    }
    e.mode = h.mode;
    e.uid = h.uid;
    e.gid = h.gid;
    e.mtimeSec = h.mtimeSec;
    if (h.mtimeNsec) e.mtimeNsec = h.mtimeNsec;
    if (h.xattrs.length > 0) e.xattrs = h.xattrs.map((x) => [x.key.toString('latin1'), x.value.toString('base64')]);
    if (h.type === 'symlink') {
      if (h.linkname.length === 0) throw new LayerError(`${what}: entry ${show(h.path)}: symlink with an empty target`);
      if (h.linkname.length >= PATH_MAX) throw new LayerError(`${what}: entry ${show(h.path)}: symlink target of ${h.linkname.length} bytes, longer than ${PATH_MAX - 1}`);
      e.link = h.linkname.toString('latin1');
    } else if (h.type === 'char' || h.type === 'block') {
      e.major = h.devmajor;
      e.minor = h.devminor;
    }
    entries.push(e);
    if (h.type !== 'file') return null;
    e.size = h.size;
    const sink = opts.objects.file(h.size, (stored: StoredFile) => {
      current = null;
      if (stored.size !== h.size) throw new LayerError(`${what}: entry ${show(h.path)}: ${stored.size} bytes read, ${h.size} expected`);
      if (stored.digest) e.digest = stored.digest.toString('hex');
      if (stored.content) e.inline = stored.content.toString('base64');
    });
    current = sink;
    return sink;
  };

  const parser = new TarParser(onEntry);
  const inflated = inflateInWorker(blob, what);
  try {
    // Each chunk is a shared slot, reused once the next is asked for: the
    // parser and the sinks copy or write what they keep before returning.
    for await (const chunk of inflated.chunks) {
      opts.onTarBytes?.(chunk.length);
      parser.push(chunk);
      if (opts.objects.busy) await opts.objects.drain();
    }
    parser.end();
    await opts.objects.flush();
  } catch (err) {
    (current as FileSink | null)?.abort();
    await opts.objects.flush().catch(() => {}); // no write left running behind the failure
    if (err instanceof TarError) throw new LayerError(`${what}: ${err.message}`, { cause: err });
    throw err;
  }
  const { diffId, tarBytes } = inflated.result();
  if (opts.expectedDiffId !== undefined && opts.expectedDiffId !== diffId) {
    throw new LayerError(`${what}: uncompressed contents have digest ${diffId}, the image config says ${opts.expectedDiffId}`);
  }
  return { diffId, entries, tarBytes };
}
