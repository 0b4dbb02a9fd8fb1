/**
 * Pull: an image from an ImageSource into a repository, under a name.
 *
 * The layers not yet in the repository are fetched a few at a time; each
 * streams blob → decompressor → tar reader → object store, its entries
 * recorded once its objects are durable. Then the layers' entries are
 * replayed into one tree, in the form asked for (build.ts: the composefs-rs
 * canonical form of canonical.ts, or umoci's rootfs of merge.ts), written as
 * a composefs image, and the name is written last, saying which form it
 * holds. Nothing is unpacked on disk.
 */
import { ComposefsError, InvalidInputError } from '../errors.js';
import { S_IFMT, S_IFREG, walk } from '../tree/model.js';
import { fsverityDigest } from '../fsverity/index.js';
import { importLayer, LayerError, type LayerEntry } from '../oci/layer.js';
import type { Descriptor, ImageSource, ResolvedImage } from '../oci/source.js';
import { checkSeals, findSeals, requireSealed, verifySealSignatures, type SealDiscovery } from '../oci/seals.js';
import type { RoleSignature } from '../oci/seal-signatures.js';
import type { CertificateInfo } from '../fsverity/pkcs7.js';
import type { FoundSeal } from '../oci/seal-format.js';
import type { PolicyContext, PolicyVerdict } from '../oci/policy-check.js';
import { ObjectWriter } from '../store/object-writer.js';
import { buildImage, type BuiltImage } from './build.js';
import { CanonicalFormError, IMAGE_FORMS, type FormChoice, type ImageForm } from './form.js';
import { MergeError } from './merge.js';
import { RepoError, checkName, type ImageVerity, type NameRecord, type Repository } from './repository.js';

export type PullEvent =
  /** The image was accepted by the policy (before anything of it beyond its manifest and config was read). */
  | { type: 'admitted'; verdict: PolicyVerdict; ms: number }
  | { type: 'resolved'; reference: string; layers: { digest: string; size: number; cached: boolean }[] }
  | { type: 'waiting-for-lock' }
  | { type: 'layer-start'; index: number }
  | { type: 'layer-bytes'; index: number; bytes: number }
  /** The layer is read and its objects written (they are made durable, and the layer recorded, before anything is named). */
  | { type: 'layer-done'; index: number; cached: boolean }
  | { type: 'building' }
  /** Seals looked for (inline, and among the referrers `via`), and those checked against the image built. */
  | { type: 'sealed'; via: SealDiscovery['via']; found: FoundSeal[]; checked: NameRecord['seal'] | null; unchecked: FoundSeal[] }
  /** With trusted certificates: every composefs signature verified (in userspace), by role and certificate. */
  | { type: 'signatures'; verified: RoleSignature[] }
  /** The merged image stored with its builtin signature given to FS_IOC_ENABLE_VERITY: what the kernel said. */
  | { type: 'kernel-signature'; verity: ImageVerity }
  /** The image is built: its form, and why it is not canonical when 'auto' fell back to unpacked. */
  | { type: 'built'; form: ImageForm; keepUserXattrs?: boolean; reason?: string }
  | { type: 'done'; record: NameRecord };

export interface PullOptions {
  /** The name to give (default: the source's default name). */
  name?: string;
  /** Layers fetched at once (default 3). */
  parallel?: number;
  onEvent?: (e: PullEvent) => void;
  signal?: AbortSignal;
  /** Refuse an image without a composefs seal (inline or artifact) in the repository's algorithm. */
  requireSeal?: boolean;
  /**
   * An image whose seals are all in another algorithm than the repository's
   * cannot be checked: 'refuse' it (default), or 'allow' it as unsealed (what
   * `cfs seal` does to add a seal in its repository's algorithm beside them).
   */
  sealsInOtherAlgorithms?: 'refuse' | 'allow';
  /**
   * Which image to build (src/repo/build.ts): 'canonical', the composefs-rs
   * canonical form a seal digests (refused when the image has none);
   * 'unpacked', the rootfs `umoci raw unpack` writes; 'auto' (default),
   * canonical when the image has that form, else unpacked.
   */
  form?: FormChoice;
  /** Canonical form: keep `user.*` xattrs as well as `security.capability` (default false). */
  keepUserXattrs?: boolean;
  /**
   * The containers-policy.json(5) to apply (src/oci/policy-check.ts
   * loadPolicy): an image it refuses is not read further. Unset: no policy
   * is applied, and the record says nothing of one.
   */
  policy?: PolicyContext;
  /**
   * Trusted certificates (src/oci/seal-signatures.ts loadTrustedCertificates):
   * the image must carry a composefs signature of its merged EROFS (and its
   * config, and in an artifact its manifest), and every signature must verify
   * against one of them, checked as soon as the seals are found (while the
   * layers come: a refusal stops the fetch) and before anything is named.
   */
  trustCertificates?: readonly CertificateInfo[];
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

/**
 * Import one image from `source` into `repo` and name it. Its seals (see
 * src/oci/seals.ts) are looked for while the layers come; when one is found,
 * the image built and the config must have its digests, or nothing is named.
 */
export async function pullImage(repo: Repository, source: ImageSource, opts: PullOptions = {}): Promise<PullResult> {
  const emit = opts.onEvent ?? (() => {});
  if (opts.name !== undefined) checkName(opts.name);
  if (opts.form !== undefined && !IMAGE_FORMS.includes(opts.form)) throw new InvalidInputError(`unknown image form '${String(opts.form)}' (${IMAGE_FORMS.join(', ')})`);
  // What the policy check needs that depends on no image loads while the manifest is fetched.
  const policyCheck = opts.policy !== undefined ? import('../oci/policy-check.js').then((m) => (m.warmPolicyCheck(opts.policy!), m)) : undefined;
  policyCheck?.catch(() => {});
  const lock = await repo.lock(false, () => emit({ type: 'waiting-for-lock' }));
  try {
    repo.prepareWrite();
    const img = await source.resolve();
    const name = opts.name ?? img.defaultName;
    checkName(name);
    let verdict: PolicyVerdict | undefined;
    if (opts.policy !== undefined) {
      // Before any layer is read: an image the policy refuses is never unpacked.
      const started = performance.now();
      const { checkPolicy } = await policyCheck!;
      verdict = await checkPolicy(opts.policy, source, img, { signal: opts.signal });
      emit({ type: 'admitted', verdict, ms: performance.now() - started });
    }
    const config = parseConfig(img);
    const diffIds = config.rootfs!.diff_ids!;
    const cached = diffIds.map((d) => repo.hasLayer(d));
    emit({ type: 'resolved', reference: img.reference, layers: img.layers.map((l, i) => ({ digest: l.digest, size: l.size, cached: cached[i] })) });

    const algorithm = repo.algorithm;
    let failed: unknown = null;
    // Looked for while the layers come; a failure stops the fetching as a layer's would.
    let verified: Map<FoundSeal, RoleSignature[]> | undefined;
    const discovery = findSeals(source, img, { signal: opts.signal }).then(
      (found) => {
        try {
          if (opts.requireSeal) requireSealed(img.reference, found.seals);
          if (opts.trustCertificates) {
            verified = verifySealSignatures(img.reference, found.seals, opts.trustCertificates, algorithm);
            emit({ type: 'signatures', verified: [...verified.values()].flat() });
          }
        } catch (err) {
          failed ??= err;
        }
        return found;
      },
      (err: unknown) => {
        failed ??= err;
        return null;
      },
    );
    const objects = new ObjectWriter(repo.dir('objects'), repo.objects, algorithm);
    // One import per distinct diff_id, however often the image lists it.
    const todo = new Map<string, number>();
    diffIds.forEach((d, i) => {
      if (!cached[i] && !todo.has(d)) todo.set(d, i);
    });
    for (let i = 0; i < diffIds.length; i++) if (cached[i]) emit({ type: 'layer-done', index: i, cached: true });
    const queue = [...todo.entries()];
    const parallel = Math.max(1, opts.parallel ?? 3);
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
    let built: BuiltImage;
    /** The seals found (null only when looking for them failed, and so the pull). */
    let found: Awaited<typeof discovery> = null;
    try {
      await Promise.all(Array.from({ length: Math.min(parallel, queue.length) }, worker));
      found = await discovery;
      if (failed !== null) throw failed;
      // The image is built and hashed while the last layers' syncfs run on a
      // writer thread (0.3-0.4 s each on the /usr image); only naming waits for them.
      emit({ type: 'building' });
      const layers = diffIds.map((d, i) => ({ name: `layer ${img.layers[i].digest}`, entries: imported.get(d) ?? repo.readLayer(d) }));
      try {
        built = buildImage(layers, { form: opts.form, keepUserXattrs: opts.keepUserXattrs, algorithm });
      } catch (err) {
        if (err instanceof CanonicalFormError) throw new CanonicalFormError(`${img.reference}: no canonical form: ${err.message}`, { cause: err });
        if (err instanceof MergeError) throw new MergeError(`${img.reference}: ${err.message}`, { cause: err });
        throw err;
      }
      const mine = found!.seals.filter((seal) => seal.algorithm === algorithm);
      if (built.form === 'canonical' && opts.keepUserXattrs === undefined && mine.some((seal) => seal.merged !== built.digest)) {
        // composefs-rs builds the canonical form with or without `user.*` xattrs (XattrFiltering), and a
        // seal does not say which: the other variant is tried before a mismatch is reported.
        const other = buildImage(layers, { form: 'canonical', keepUserXattrs: true, algorithm });
        if (other.digest !== built.digest && mine.every((seal) => seal.merged === other.digest)) built = other;
      }
      emit({ type: 'built', form: built.form, ...(built.keepUserXattrs !== undefined ? { keepUserXattrs: built.keepUserXattrs } : {}), ...(built.reason !== undefined ? { reason: built.reason } : {}) });
    } finally {
      // Every layer durable and recorded before anything is named (a failure lands in `failed`).
      await Promise.allSettled(recorded);
      await objects.close();
    }
    if (failed !== null) throw failed;

    const { tree, image, digest: hex } = built;
    const sealed = checkSeals(
      img.reference,
      found!.seals,
      { algorithm, merged: hex, config: fsverityDigest(img.config, algorithm).toString('hex'), manifest: fsverityDigest(img.manifest, algorithm).toString('hex'), form: built.form, ...(built.reason !== undefined ? { formReason: built.reason } : {}) },
      { requireSeal: opts.requireSeal, allowOtherAlgorithms: opts.sealsInOtherAlgorithms === 'allow' && !opts.trustCertificates, ...(verified ? { verified } : {}) },
    );
    if (opts.trustCertificates && !sealed.seal?.signedBy?.some((s) => s.role === 'merged')) {
      throw new RepoError(`${img.reference}: not signed in the repository's algorithm (${algorithm}), and trusted certificates were given`);
    }
    emit({ type: 'sealed', via: found!.via, found: found!.seals, checked: sealed.seal, unchecked: sealed.unchecked });

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
    if (sealed.seal?.artifact) repo.writeBlob(sealed.seal.artifact, found!.artifacts.get(sealed.seal.artifact)!);
    // A verified signature of the merged image goes to the kernel with it (the builtin signature check, where fs-verity has one).
    const mergedSignature = sealed.seal?.signedBy?.some((s) => s.role === 'merged') ? sealed.seal.signatures?.merged : undefined;
    const verity = repo.storeImage(hex, image, mergedSignature !== undefined ? { signature: Buffer.from(mergedSignature, 'base64') } : {});
    if (mergedSignature !== undefined) emit({ type: 'kernel-signature', verity });
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
      form: built.form,
      ...(built.keepUserXattrs !== undefined ? { keepUserXattrs: built.keepUserXattrs } : {}),
      ...(built.reason !== undefined ? { formReason: built.reason } : {}),
      ...(sealed.seal ? { seal: sealed.seal } : {}),
      ...(verdict !== undefined ? { policy: verdict } : {}),
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
