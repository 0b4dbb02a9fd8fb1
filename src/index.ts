/**
 * composefs-ts: the library. Everything the CLI does is here, as functions over
 * plain data (the tree model) and bytes.
 *
 * Importing this module loads the format code only; the directory scanner,
 * the object store and the mount code (which load the system-call layer)
 * are re-exported from their own modules and cost nothing until used.
 */
export * from './tree/model.js';
export { inflate, type FlatTree } from './tree/flat.js';
export { parseDump, parseDumpFlat, writeDump, writeDumpChunks, DumpParseError, type ParseOptions } from './dumpfile/index.js';
export { writeImage, writeImageWithInfo, writeFlatImage, ImageWriteError, type WriteOptions, type WriteResult } from './erofs/writer.js';
export { dumpImage, listImage } from './dumpfile/from-image.js';
export {
  readImage,
  readImageHeader,
  checkImageHeader,
  imageVersion,
  ImageFormatError,
  type ReadImageOptions,
  type ReadImageResult,
  type ImageHeader,
  type ImageProblem,
} from './erofs/reader.js';
export {
  FsVerityHasher,
  fsverityDigest,
  fsverityDigestOfFile,
  fsverityDigestOfFileSync,
  digestToHex,
  hexToDigest,
  digestHexPattern,
  isVerityAlgorithm,
  verityDigestSize,
  verityAlgorithmOfSize,
  verityAlgorithmOfId,
  VERITY_ALGORITHMS,
  VERITY_ALGORITHM_IDS,
  type VerityAlgorithm,
  type HasherOptions,
  type FileDigestOptions,
} from './fsverity/index.js';
export { digestToObjectPath, objectPathToDigest } from './store/layout.js';
export { fsckImage, type FsckReport, type FsckProblem, type FsckOptions } from './check/fsck.js';

/** Build the tree of a directory (and fill an object store) as `mkcomposefs SOURCEDIR` does. */
export async function scanDirectory(...args: Parameters<typeof import('./scan/index.js').scanDirectory>) {
  return (await import('./scan/index.js')).scanDirectory(...args);
}

/**
 * The mount library, with FUSE and the mount service registered (their rungs, FUSE's kind of mount,
 * the service's unmount): the mount library itself never imports src/fuse/ or src/service/.
 */
async function mountLibrary(): Promise<typeof import('./mount/index.js')> {
  await Promise.all([import('./fuse/register.js'), import('./service/register.js')]);
  return import('./mount/index.js');
}

/**
 * Mount an image by the ladder: the kernel (EROFS + overlayfs, hidden),
 * else, when the kernel path lacks privilege, the mount service (`cfs serve`,
 * at `serviceSocket`, $CFS_SERVICE_SOCKET or /run/composefs/mount.sock) when
 * it answers, else FUSE; FUSE too when the kernel cannot check objects the
 * request requires checked (no fs-verity). `service: true` or `fuse: true`
 * asks for that rung alone; `service: false`, `fuse: false` never take it.
 * See src/mount/ladder.ts.
 */
export async function mountImage(...args: Parameters<typeof import('./mount/index.js').mountImage>) {
  return (await mountLibrary()).mountImage(...args);
}

/** Mount an image hidden with the kernel alone: see src/mount/ for the paths and their fallbacks. */
export async function mountComposefs(...args: Parameters<typeof import('./mount/index.js').mountComposefs>) {
  return (await mountLibrary()).mountComposefs(...args);
}

/** Unmount a composefs mount, kernel or FUSE; one the mount service made for this user, which the kernel refuses it, through the service. */
export async function unmountComposefs(...args: Parameters<typeof import('./mount/index.js').unmountComposefsAsUser>) {
  return (await mountLibrary()).unmountComposefsAsUser(...args);
}

/** The mounts the mount service made for this user and still holds, and how many it may hold (the service's List). */
export async function listServiceMounts(...args: Parameters<typeof import('./service/client.js').listServiceMounts>) {
  return (await import('./service/client.js')).listServiceMounts(...args);
}

/** The composefs mounts on this system and what they expose (`cfs status`). */
export async function systemStatus(...args: Parameters<typeof import('./mount/index.js').systemStatus>) {
  return (await mountLibrary()).systemStatus(...args);
}

export type { ScanOptions, ScanStats } from './scan/index.js';
export type { MountOptions, MountResult, RungResult, LadderMount, SystemStatus, ServedMountStatus } from './mount/index.js';
export type { ServiceRungResult } from './service/rung.js';
export type { ServiceMountEntry } from './service/client.js';

/** Write an output file as the reference tools do (devices, FIFOs, symlinks), a regular file atomically keeping its mode and owner: see src/output/file.ts. */
export async function writeOutputFile(...args: Parameters<typeof import('./output/file.js').writeOutputFile>) {
  return (await import('./output/file.js')).writeOutputFile(...args);
}

export type { OutputFileOptions, OutputFileWrite, OutputFileError } from './output/file.js';

/** Open (by default create) a composefs repository: images, names, layers, objects. See src/repo/. */
export async function openRepository(...args: Parameters<typeof import('./repo/repository.js').Repository.open>) {
  return (await import('./repo/repository.js')).Repository.open(...args);
}

/** Import one image from an ImageSource into a repository and name it. */
export async function importImage(...args: Parameters<typeof import('./repo/pull.js').pullImage>) {
  return (await import('./repo/pull.js')).pullImage(...args);
}

/** Pull `reference` (docker://…, oci:…, oci-archive:…, docker-archive:…) into `repo`. */
export async function pull(
  repo: import('./repo/repository.js').Repository,
  reference: string,
  options: import('./repo/pull.js').PullOptions & { source?: import('./oci/source.js').SourceOptions } = {},
) {
  const { openSource } = await import('./oci/transports.js');
  const source = await openSource(reference, options.source);
  try {
    return await (await import('./repo/pull.js')).pullImage(repo, source, options);
  } finally {
    await source.close();
  }
}

/**
 * An image's composefs image from its layers' entries (`repository.readLayer`
 * or an import's): the composefs-rs canonical form a seal digests, or the
 * rootfs `umoci raw unpack` writes; 'auto' takes canonical when the image has
 * that form. See src/repo/build.ts.
 */
export async function buildImage(...args: Parameters<typeof import('./repo/build.js').buildImage>) {
  return (await import('./repo/build.js')).buildImage(...args);
}

/** Remove what no name reaches (the repository lock held exclusively). */
export async function gcRepository(...args: Parameters<typeof import('./repo/gc.js').gcRepository>) {
  return (await import('./repo/gc.js')).gcRepository(...args);
}

/** Check every object, image, layer record and name of a repository. */
export async function fsckRepository(...args: Parameters<typeof import('./repo/fsck.js').fsckRepository>) {
  return (await import('./repo/fsck.js')).fsckRepository(...args);
}

/** The seals of an image a source resolved: inline, and composefs artifacts among its referrers (see src/oci/seals.ts). */
export async function findSeals(...args: Parameters<typeof import('./oci/seals.js').findSeals>) {
  return (await import('./oci/seals.js')).findSeals(...args);
}

/** Check a named image against its seal again, offline (`cfs verify`). */
export async function verifyName(...args: Parameters<typeof import('./repo/verify.js').verifyName>) {
  return (await import('./repo/verify.js')).verifyName(...args);
}

export type { Seal, FoundSeal, SealRole } from './oci/seal-format.js';
export type { SealDiscovery, NameSeal, SealCheck } from './oci/seals.js';
export type { VerifyResult, VerifyProblem, VerifyOptions, VerifyCheck } from './repo/verify.js';

/**
 * Seal the image at `reference` (docker://…, oci:…): the fs-verity digests
 * of its canonical composefs image (from `repo`, pulled first if no name
 * holds it) and of its config, pushed as an artifact beside it or, with
 * `inline`, in a new manifest pushed to `dest`.
 */
export async function sealImage(...args: Parameters<typeof import('./repo/seal.js').sealImage>) {
  return (await import('./repo/seal.js')).sealImage(...args);
}

/** The seal of an image from an ImageSource, its merged digest from `repo` (pulled first if no name holds it). */
export async function sealOf(...args: Parameters<typeof import('./repo/seal.js').sealOf>) {
  return (await import('./repo/seal.js')).sealOf(...args);
}

export type { SealOptions, SealImageOptions, SealResult, SealDigests } from './repo/seal.js';

/** Trusted certificates for `trustCertificates` (pull) and `verifyName`: a PEM/DER file or a directory of them. */
export async function loadTrustedCertificates(...args: Parameters<typeof import('./oci/seal-signatures.js').loadTrustedCertificates>) {
  return (await import('./oci/seal-signatures.js')).loadTrustedCertificates(...args);
}

/** A signing key and its certificate for `sealImage`'s `sign`, read and checked. */
export async function loadSigningIdentity(...args: Parameters<typeof import('./oci/seal-signatures.js').loadSigningIdentity>) {
  return (await import('./oci/seal-signatures.js')).loadSigningIdentity(...args);
}

export { formattedDigest, signFsverityDigest, verifyFsverityDigestSignature, parseCertificates, SignatureError, type CertificateInfo, type SigningIdentity, type VerifiedSignature } from './fsverity/pkcs7.js';
export type { RoleSignature } from './oci/seal-signatures.js';

/** The containers-policy.json(5) for `PullOptions.policy`: a file, the user's, the system's, or none (`--insecure-policy`: `insecure`). */
export async function loadPolicy(...args: Parameters<typeof import('./oci/policy-check.js').loadPolicy>) {
  return (await import('./oci/policy-check.js')).loadPolicy(...args);
}

/** Apply a policy to an image a source resolved (what `pullImage` does before reading a layer). */
export async function checkPolicy(...args: Parameters<typeof import('./oci/policy-check.js').checkPolicy>) {
  return (await import('./oci/policy-check.js')).checkPolicy(...args);
}

/** containers-registries.d(5): where an image's signatures are. */
export async function loadRegistriesD(...args: Parameters<typeof import('./oci/registries-d.js').loadRegistriesD>) {
  return (await import('./oci/registries-d.js')).loadRegistriesD(...args);
}

/** Sign an image where it is, as `skopeo copy --sign-by` (`cfs sign`). */
export async function signImage(...args: Parameters<typeof import('./oci/sign.js').signImage>) {
  return (await import('./oci/sign.js')).signImage(...args);
}

export type { PolicyContext, PolicyVerdict } from './oci/policy-check.js';
export type { RegistriesD, SignatureStorage } from './oci/registries-d.js';
export type { SignOptions, SignResult } from './oci/sign.js';
export type { Repository, NameRecord, OpenOptions } from './repo/repository.js';
export { algorithmName, decodeMeta, REPO_FORMAT_VERSION, META_FILE, type RepoMeta, type MetaAccess } from './repo/meta.js';
export type { PullOptions, PullResult, PullEvent } from './repo/pull.js';
export type { BuildLayer, BuildOptions, BuiltImage } from './repo/build.js';
export { CanonicalFormError, IMAGE_FORMS, type ImageForm, type FormChoice } from './repo/form.js';
export type { LayerEntry } from './oci/layer.js';
export type { GcResult } from './repo/gc.js';
export type { RepoFsckResult } from './repo/fsck.js';
