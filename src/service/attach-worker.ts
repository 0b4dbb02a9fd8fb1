/**
 * A thread that attaches a detached mount in another process's mount
 * namespace, then ends. The kernel lets a thread join a mount namespace only
 * when it has its root and working directory to itself, so this thread first
 * takes its own copy (unshare CLONE_FS), joins the caller's namespace through
 * the caller's pidfd, and moves the mount onto the mountpoint descriptor the
 * caller opened there. Ending the thread ends its membership: the rest of the
 * process never leaves its own namespace, and nothing is started by path in
 * the caller's namespace (whose files may be anything).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { SysError } from '../sys/libc.js';
import * as sys from '../sys/mount.js';
import { CLONE_FS, CLONE_NEWNS, setns, unshare } from '../sys/namespace.js';

export interface AttachRequest {
  pidfd: number;
  mountFd: number;
  mountpointFd: number;
}

export type AttachAnswer = { ok: true } | { ok: false; step: 'unshare' | 'setns' | 'move_mount'; message: string; code: string };

const { pidfd, mountFd, mountpointFd } = workerData as AttachRequest;
let step: 'unshare' | 'setns' | 'move_mount' = 'unshare';
let answer: AttachAnswer;
try {
  unshare(CLONE_FS);
  step = 'setns';
  setns(pidfd, CLONE_NEWNS);
  step = 'move_mount';
  sys.moveMountTo(mountFd, 'mountpoint', mountpointFd);
  answer = { ok: true };
} catch (err) {
  answer = { ok: false, step, message: err instanceof Error ? err.message : String(err), code: err instanceof SysError ? err.code : '' };
}
parentPort!.postMessage(answer);
