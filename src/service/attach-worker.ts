/**
 * A thread that acts in another process's mount namespace, then ends: it
 * attaches a detached mount there, detaches (unmounts) a mount there, or
 * clones mounts of descriptors the caller sent (open_tree OPEN_TREE_CLONE:
 * overlayfs takes a layer only from the creator's own mount namespace or
 * from the root of an anonymous one, which such a clone is; the kernel
 * clones a mount only in the namespace it belongs to).
 * The kernel lets a thread join a mount namespace only when it has its root
 * and working directory to itself, so this thread first takes its own copy
 * (unshare CLONE_FS), then joins the caller's namespace through the caller's
 * pidfd. Ending the thread ends its membership: the rest of the process
 * never leaves its own namespace.
 *
 * Nothing is looked up by path in the caller's namespace (whose files may be
 * anything): an attach moves the mount onto the mountpoint descriptor the
 * caller opened; an unmount needs a path (umount2 takes nothing else), so it
 * names the caller's descriptor through this process's own /proc fd
 * directory, opened before joining: `N` relative to that directory is a
 * magic link that lands on the very mount and directory the descriptor
 * holds, whatever the caller's namespace contains.
 */
import { openSync, closeSync, constants as fsc } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { SysError } from '../sys/libc.js';
import * as sys from '../sys/mount.js';
import { statMount } from '../sys/mountid.js';
import { CLONE_FS, CLONE_NEWNS, fchdir, setns, unshare } from '../sys/namespace.js';

export type AttachRequest =
  | { op?: 'attach'; pidfd: number; mountFd: number; mountpointFd: number; mountId?: bigint }
  | { op: 'unmount'; pidfd: number; mountpointFd: number }
  /** Each of `fds` (directories on mounts of the caller's namespace) cloned, without the mounts beneath (see cloneBasedirs). */
  | { op: 'clone'; pidfd: number; fds: number[] };

export type AttachStep = 'open' | 'unshare' | 'setns' | 'move_mount' | 'fchdir' | 'umount' | 'statmount' | 'open_tree';

export type AttachAnswer =
  | {
      ok: true;
      /** After an attach with `mountId`: the id of the mount namespace the mount is now in, as a decimal string; null when statmount cannot say. */
      mountNsId?: string | null;
      /** After a clone: the detached clones, in the order of `fds` (descriptors of the process: the receiver closes them). */
      clones?: number[];
    }
  /** `index`: after a clone, which of `fds` failed (the clones made before it are closed). */
  | { ok: false; step: AttachStep; message: string; code: string; index?: number };

const request = workerData as AttachRequest;
let step: AttachStep = 'open';
let answer: AttachAnswer;
let procFdDir = -1;
const clones: number[] = [];
let index: number | undefined;
try {
  if (request.op === 'unmount') {
    // Before joining: this process's own view of its descriptors.
    procFdDir = openSync('/proc/thread-self/fd', fsc.O_RDONLY | fsc.O_DIRECTORY | fsc.O_NOFOLLOW);
  }
  step = 'unshare';
  unshare(CLONE_FS);
  step = 'setns';
  setns(request.pidfd, CLONE_NEWNS);
  if (request.op === 'clone') {
    step = 'open_tree';
    for (const [i, fd] of request.fds.entries()) {
      index = i;
      clones.push(sys.openTree(fd, '', sys.OPEN_TREE_CLONE | sys.OPEN_TREE_CLOEXEC | sys.AT_EMPTY_PATH));
    }
    index = undefined;
    answer = { ok: true, clones: [...clones] };
    clones.length = 0;
  } else if (request.op === 'unmount') {
    step = 'fchdir';
    fchdir(procFdDir);
    step = 'umount';
    // UMOUNT_NOFOLLOW is not given: the last component is the magic link to follow.
    sys.umount2(String(request.mountpointFd), sys.MNT_DETACH);
    answer = { ok: true };
  } else {
    step = 'move_mount';
    sys.moveMountTo(request.mountFd, 'mountpoint', request.mountpointFd);
    let mountNsId: string | null = null;
    if (request.mountId !== undefined) {
      step = 'statmount';
      try {
        mountNsId = statMount(request.mountId)?.mountNsId.toString() ?? null;
      } catch {
        // A kernel without statmount: the caller counts the mount by other means.
      }
    }
    answer = { ok: true, mountNsId };
  }
} catch (err) {
  answer = { ok: false, step, message: err instanceof Error ? err.message : String(err), code: err instanceof SysError ? err.code : '', index };
} finally {
  if (procFdDir >= 0) closeSync(procFdDir);
  // Clones not handed over (a later one failed): closed here, not left to the process.
  for (const fd of clones) sys.closeQuiet(fd);
}
parentPort!.postMessage(answer);
