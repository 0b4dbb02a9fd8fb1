/**
 * Our FUSE mounts in this mount namespace and whether their server still
 * answers: a server that died leaves a mount every access to which fails
 * with ENOTCONN ("Transport endpoint is not connected") until it is
 * unmounted.
 *
 * The question must reach the server and must not wait on it. A stat is
 * answered from the kernel's cache (attributes are valid for a year), so
 * even a dead server's root stats fine; statfs is never cached. And a
 * stopped server leaves the asker in the kernel until it is killed, so the
 * questions are asked by a child process (all mounts at once) that is
 * killed at a deadline: what has not answered by then is reported as not
 * answering, never waited for.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { ServedMountStatus } from '../mount/kinds.js';
import { readMountinfo, type MountInfo } from '../mount/mountinfo.js';
import { FUSE_FSTYPE, unmountFuse } from './unmount.js';

/** disconnected: the server is gone (ENOTCONN); see ServedMountStatus for the other states. */
export type FuseMountStatus = ServedMountStatus;

/** How long the servers get to answer, all together. */
export const PROBE_DEADLINE_MS = 2000;

/**
 * statfs of each mountpoint (argv[1], JSON) on libuv's threads, one line
 * `[index, errno code or f_bsize]` per answer as it comes. A FUSE mount
 * the caller may not use (not allow_other) answers statfs itself with a
 * block size of 0, without asking the server.
 */
const PROBE = `const fs=require('fs');const m=JSON.parse(process.argv[1]);m.forEach((p,i)=>fs.statfs(p,(e,s)=>process.stdout.write(JSON.stringify([i,e?(e.code||String(e)):s.bsize])+'\\n')));`;

/** Requests the kernel holds for the connection of mount device `dev` ("major:minor"), when /sys/fs/fuse/connections tells (root, fusectl mounted). */
function waitingRequests(dev: string): number | null {
  const [major, minor] = dev.split(':').map(Number);
  if (!Number.isInteger(major) || !Number.isInteger(minor)) return null;
  try {
    return Number(readFileSync(`/sys/fs/fuse/connections/${major * 2 ** 20 + minor}/waiting`, 'utf8').trim());
  } catch {
    return null;
  }
}

function probe(mountpoints: string[]): Array<string | number | null> {
  const answers: Array<string | number | null> = mountpoints.map(() => null);
  if (mountpoints.length === 0) return answers;
  const r = spawnSync(process.execPath, ['-e', PROBE, JSON.stringify(mountpoints)], {
    cwd: '/',
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'ignore'],
    timeout: PROBE_DEADLINE_MS,
    killSignal: 'SIGKILL',
    env: { ...process.env, UV_THREADPOOL_SIZE: String(Math.min(128, Math.max(4, mountpoints.length))) },
  });
  for (const line of (r.stdout ?? '').split('\n')) {
    try {
      const [i, v] = JSON.parse(line) as [number, string | number];
      if (Number.isInteger(i) && i >= 0 && i < answers.length) answers[i] = v;
    } catch {
      /* a line cut by the deadline */
    }
  }
  return answers;
}

export function fuseMounts(all: MountInfo[] = readMountinfo()): FuseMountStatus[] {
  const ours = all.filter((m) => m.fstype === FUSE_FSTYPE);
  const answers = probe(ours.map((m) => m.mountPoint));
  return ours.map((m, i): FuseMountStatus => {
    const a = answers[i];
    const at = { mountpoint: m.mountPoint, options: m.superOptions };
    if (typeof a === 'number' && a > 0) return { ...at, state: 'serving', why: 'the server answers' };
    if (a === 0) return { ...at, state: 'unknown', why: 'this user may not ask its server (the mount is not allow_other)' };
    if (a === 'ENOTCONN') return { ...at, state: 'disconnected', why: 'ENOTCONN: the server is gone; `cfs status --clean` unmounts it' };
    if (a === null) {
      const waiting = waitingRequests(m.dev);
      return { ...at, state: 'unresponsive', why: `the server did not answer within ${PROBE_DEADLINE_MS / 1000} s (stopped or stuck${waiting !== null ? `; ${waiting} request(s) waiting` : ''})` };
    }
    return { ...at, state: 'unknown', why: `statfs: ${a}` };
  });
}

/** Unmount the FUSE mounts whose server is gone; returns what was done. */
export function cleanDisconnectedFuseMounts(): string[] {
  const done: string[] = [];
  for (const m of fuseMounts()) {
    if (m.state !== 'disconnected') continue;
    try {
      unmountFuse(m.mountpoint, true);
      done.push(`unmounted ${m.mountpoint} (FUSE server gone)`);
    } catch (err) {
      done.push(`could not unmount ${m.mountpoint}: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  return done;
}
