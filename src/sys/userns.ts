/**
 * Where this process stands among user namespaces, for a client of the
 * mount service deciding whether to attach a mount itself: whether it is in
 * the initial user namespace (/proc/self/uid_map maps all 2^32 ids onto
 * themselves), and whether its mount namespace belongs to its own user
 * namespace (ioctl NS_GET_USERNS on /proc/self/ns/mnt): only then can
 * CAP_SYS_ADMIN in that user namespace attach a mount there (move_mount
 * checks the capability against the mount namespace's owner).
 */
import { closeSync, fstatSync, openSync, readFileSync, statSync, constants as fsc } from 'node:fs';
import { bindLazily, lastErrno, SysError } from './libc.js';

/** _IO(0xb7, 0x1): the user namespace owning a namespace, as a new descriptor. */
const NS_GET_USERNS = 0xb701;

const c = bindLazily((l) => ({ ioctl: l.func('int ioctl(int fd, unsigned long req, ...)') as (fd: number, req: number) => number }));

/** Whether this process is in the initial user namespace (its uid_map is the identity of all 2^32 ids). */
export function inInitialUserNamespace(): boolean {
  let map: string;
  try {
    map = readFileSync('/proc/self/uid_map', 'utf8');
  } catch {
    return true; // no user namespaces in this kernel
  }
  return map.trim().split(/\s+/).join(' ') === '0 0 4294967295';
}

/**
 * Whether the mount namespace this process is in is owned by the user
 * namespace it is in (as after `unshare -Urm`). False when it belongs to an
 * ancestor (`unshare -Ur` alone keeps the initial mount namespace): the
 * kernel then answers NS_GET_USERNS with EPERM, the owner being out of reach.
 */
export function ownsMountNamespace(): boolean {
  const mnt = openSync('/proc/self/ns/mnt', fsc.O_RDONLY);
  try {
    const owner = c().ioctl(mnt, NS_GET_USERNS);
    if (owner < 0) {
      const errno = lastErrno();
      if (errno === 1 /* EPERM */) return false;
      throw new SysError('ioctl NS_GET_USERNS', errno, '/proc/self/ns/mnt');
    }
    try {
      const a = fstatSync(owner);
      const b = statSync('/proc/self/ns/user');
      return a.ino === b.ino && a.dev === b.dev;
    } finally {
      closeSync(owner);
    }
  } finally {
    closeSync(mnt);
  }
}
