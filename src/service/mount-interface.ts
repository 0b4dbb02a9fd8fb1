/**
 * The mount service's varlink interface, in one place for the TypeScript
 * side: its name, its methods' and errors' full names, and its description
 * (served by org.varlink.service.GetInterfaceDescription). The description
 * is service/io.composefs.Mount.varlink at the repository root, copied here
 * so the built package needs no file beside it; test/varlink.test.ts checks
 * that the two agree, names included.
 */

export const MOUNT_INTERFACE = 'io.composefs.Mount';

export const MountMethod = {
  Mount: 'io.composefs.Mount.Mount',
  Unmount: 'io.composefs.Mount.Unmount',
  List: 'io.composefs.Mount.List',
} as const;

export const MountError = {
  NotOwner: 'io.composefs.Mount.NotOwner',
  LimitReached: 'io.composefs.Mount.LimitReached',
  ImageRefused: 'io.composefs.Mount.ImageRefused',
  BadDescriptor: 'io.composefs.Mount.BadDescriptor',
  NoSuchMount: 'io.composefs.Mount.NoSuchMount',
  MountFailed: 'io.composefs.Mount.MountFailed',
  ProtocolError: 'io.composefs.Mount.ProtocolError',
  InternalError: 'io.composefs.Mount.InternalError',
} as const;

/** The socket `cfs serve` listens on unless told otherwise. */
export const DEFAULT_MOUNT_SOCKET = '/run/composefs/mount.sock';

export const mountInterfaceDescription = [
  '# The composefs mount service (`cfs serve`): gives a user who may not mount',
  '# the kernel\x27s composefs mount of an image, as fusermount3 gives FUSE mounts.',
  '#',
  '# The caller opens everything itself and passes the descriptors with the call',
  '# (SCM_RIGHTS, in one sendmsg with the call\x27s first byte); parameters name a',
  '# descriptor by its index in that list. The service never opens a path for',
  '# the caller. Descriptors the service does not use are closed.',
  'interface io.composefs.Mount',
  '',
  'type MountOptions (',
  '  # Expected fs-verity digest of the image as sent, 64 or 128 hex digits.',
  '  digest: ?string,',
  '  # Check object digests in the kernel: off, try (when the kernel can), require.',
  '  verity: ?(off, try, require),',
  '  noexec: ?bool,',
  '  atime: ?(relatime, noatime, strictatime),',
  '  # Return the mount as a detached mount descriptor instead of attaching it',
  '  # (for a caller in a user namespace it owns; it attaches with move_mount).',
  '  detached: ?bool',
  ')',
  '',
  'type MountEntry (',
  '  # The mount\x27s unique id (statx STATX_MNT_ID_UNIQUE of its root).',
  '  mountId: int,',
  '  # Where the mount was attached, as the service saw it; empty when detached.',
  '  mountpoint: string,',
  '  # The fs-verity digest of the image the service wrote and mounted.',
  '  image: string,',
  '  detached: bool',
  ')',
  '',
  '# Mount the image for the caller: read it, write it again, mount that copy',
  '# read-only, nosuid, nodev, with the caller\x27s credentials, on `mountpoint`',
  '# (an O_PATH descriptor of a directory the caller owns and may write).',
  '# `mount` is the index of the detached mount among the reply\x27s descriptors.',
  'method Mount(',
  '  image: int,',
  '  basedirs: []int,',
  '  mountpoint: ?int,',
  '  options: ?MountOptions',
  ') -> (mountId: int, image: string, explain: []string, mount: ?int)',
  '',
  '# Unmount (detach) a mount the service made for the caller\x27s uid;',
  '# `mountpoint` is an O_PATH descriptor of the mount\x27s root.',
  'method Unmount(mountpoint: int) -> (mountId: int)',
  '',
  '# The mounts the service made for the caller\x27s uid that still exist, and how',
  '# many the caller may hold.',
  'method List() -> (mounts: []MountEntry, limit: int)',
  '',
  '# The mountpoint is not a directory the caller owns and may write, or the',
  '# mount named was not made for the caller.',
  'error NotOwner (reason: string)',
  '',
  '# The caller holds as many service mounts as it may.',
  'error LimitReached (limit: int)',
  '',
  '# The image is refused, and why (not a composefs image, a redirect that is',
  '# not an object name, too large…).',
  'error ImageRefused (reason: string)',
  '',
  '# A descriptor index is missing, or names the wrong kind of file.',
  'error BadDescriptor (parameter: string, reason: string)',
  '',
  '# The descriptor given is not the root of a mount the service made.',
  'error NoSuchMount (reason: string)',
  '',
  '# The kernel refused the mount.',
  'error MountFailed (reason: string)',
  '',
  '# The message broke the protocol: not JSON, not a call, larger than the',
  '# service reads, or carrying more descriptors than it takes.',
  'error ProtocolError (reason: string)',
  '',
  '# The service failed in a way the caller cannot fix.',
  'error InternalError (reason: string)',
].join('\n') + '\n';
