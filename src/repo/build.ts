/**
 * An image's composefs image from its layers' entries, in one of two forms:
 *
 * - canonical (canonical.ts): what composefs-rs builds and the OCI sealing
 *   specification digests, written as format version 1 (`mkcomposefs
 *   --min-version=1`);
 * - unpacked (merge.ts): the rootfs `umoci raw unpack` writes, as format
 *   version 0 unless the tree needs 1 (`mkcomposefs` of that rootfs).
 *
 * 'auto' builds the canonical form when the image has one, else the
 * unpacked form, saying why.
 */
import { writeImageWithInfo } from '../erofs/writer.js';
import { fsverityDigest, type VerityAlgorithm } from '../fsverity/index.js';
import type { Inode } from '../tree/model.js';
import type { LayerEntry } from '../oci/layer.js';
import { CanonicalTreeBuilder } from './canonical.js';
import { TreeBuilder } from './merge.js';
import { CANONICAL_FORMAT_VERSION, CanonicalFormError, type FormChoice, type ImageForm } from './form.js';

export { CANONICAL_FORMAT_VERSION, CanonicalFormError, IMAGE_FORMS, type FormChoice, type ImageForm } from './form.js';

export interface BuildLayer {
  /** Labels the layer in messages ("layer sha256:…"). */
  name: string;
  entries: readonly LayerEntry[];
}

export interface BuildOptions {
  /** Default 'auto': canonical when the image has that form, else unpacked. */
  form?: FormChoice;
  /** Canonical form: keep `user.*` xattrs too (default false, as composefs-rs). */
  keepUserXattrs?: boolean;
  /** The image digest's fs-verity hash (default sha256). */
  algorithm?: VerityAlgorithm;
}

export interface BuiltImage {
  form: ImageForm;
  /** Set for the canonical form. */
  keepUserXattrs?: boolean;
  /** Why the image was built unpacked when 'auto' asked for canonical first. */
  reason?: string;
  tree: Inode;
  image: Buffer;
  /** fs-verity digest of `image` (hex). */
  digest: string;
}

/**
 * Build the image of `layers` (base first). With form 'canonical', an image
 * that has no canonical form fails with a CanonicalFormError saying why.
 */
export function buildImage(layers: readonly BuildLayer[], opts: BuildOptions = {}): BuiltImage {
  const form = opts.form ?? 'auto';
  const algorithm = opts.algorithm ?? 'sha256';
  let reason: string | undefined;
  if (form !== 'unpacked') {
    const keepUserXattrs = opts.keepUserXattrs ?? false;
    try {
      const tree = canonicalTree(layers, keepUserXattrs);
      const image = writeImageWithInfo(tree, { minVersion: CANONICAL_FORMAT_VERSION, maxVersion: CANONICAL_FORMAT_VERSION }).image;
      return { form: 'canonical', keepUserXattrs, tree, image, digest: fsverityDigest(image, algorithm).toString('hex') };
    } catch (err) {
      if (!(err instanceof CanonicalFormError) || form === 'canonical') throw err;
      reason = err.message;
    }
  }
  const builder = new TreeBuilder();
  for (const l of layers) builder.applyLayer(l.name, l.entries);
  const tree = builder.toInode();
  const image = writeImageWithInfo(tree).image;
  return { form: 'unpacked', ...(reason !== undefined ? { reason } : {}), tree, image, digest: fsverityDigest(image, algorithm).toString('hex') };
}

/** The canonical tree of `layers`, or a CanonicalFormError. */
export function canonicalTree(layers: readonly BuildLayer[], keepUserXattrs = false): Inode {
  const builder = new CanonicalTreeBuilder({ keepUserXattrs });
  for (const l of layers) builder.applyLayer(l.name, l.entries);
  builder.finish();
  return builder.toInode();
}
