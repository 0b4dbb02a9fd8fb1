/**
 * A thread that acts in another process's mount namespace, then ends: it
 * attaches a detached mount there, or detaches (unmounts) a mount there.
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
  | { op: 'unmount'; pidfd: number; mountpointFd: number };

export type AttachStep = 'open' | 'unshare' | 'setns' | 'move_mount' | 'fchdir' | 'umount' | 'statmount';

export type AttachAnswer =
  | {
      ok: true;
      /** After an attach with `mountId`: the id of the mount namespace the mount is now in, as a decimal string; null when statmount cannot say. */
      mountNsId?: string | null;
    }
  | { ok: false; step: AttachStep; message: string; code: string };

const request = workerData as AttachRequest;
let step: AttachStep = 'open';
let answer: AttachAnswer;
let procFdDir = -1;
try {
  if (request.op === 'unmount') {
    // Before joining: this process's own view of its descriptors.
    procFdDir = openSync('/proc/thread-self/fd', fsc.O_RDONLY | fsc.O_DIRECTORY | fsc.O_NOFOLLOW);
  }
  step = 'unshare';
  unshare(CLONE_FS);
  step = 'setns';
  setns(request.pidfd, CLONE_NEWNS);
  if (request.op === 'unmount') {
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
  answer = { ok: false, step, message: err instanceof Error ? err.message : String(err), code: err instanceof SysError ? err.code : '' };
} finally {
  if (procFdDir >= 0) closeSync(procFdDir);
}
parentPort!.postMessage(answer);
