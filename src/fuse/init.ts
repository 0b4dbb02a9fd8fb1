/**
 * The INIT handshake: which protocol features the server takes of those the
 * kernel offers, and whether object reads may go through FUSE passthrough.
 */
import { readFileSync } from 'node:fs';
import * as P from './protocol.js';
import type { SharedServerState } from './shared.js';

/** Largest READ we let the kernel send (FUSE_MAX_PAGES pages of 4 KiB): 1 MiB. */
export const MAX_PAGES = 256;
export const MAX_READ = MAX_PAGES * 4096;

const CAP_SYS_ADMIN = 21n;

function hasCapSysAdminInInitNs(): { ok: boolean; why: string } {
  try {
    const status = readFileSync('/proc/self/status', 'utf8');
    const capEff = /CapEff:\s*([0-9a-f]+)/.exec(status)?.[1];
    const effective = capEff ? (BigInt(`0x${capEff}`) >> CAP_SYS_ADMIN) & 1n : 0n;
    if (effective !== 1n) return { ok: false, why: 'the server lacks CAP_SYS_ADMIN, which FUSE_DEV_IOC_BACKING_OPEN requires' };
    const uidMap = readFileSync('/proc/self/uid_map', 'utf8').trim().split(/\s+/);
    if (!(uidMap[0] === '0' && uidMap[1] === '0' && uidMap[2] === '4294967295')) {
      return { ok: false, why: 'the server runs in a user namespace: FUSE_DEV_IOC_BACKING_OPEN requires CAP_SYS_ADMIN in the initial one' };
    }
    return { ok: true, why: 'granted' };
  } catch {
    return { ok: false, why: 'could not read /proc/self/status' };
  }
}

/**
 * Answer the INIT request in `request` into reply[BODY..]: returns the body
 * length. What it settles goes into `state` before the answer is sent (the
 * kernel sends nothing else to any thread until it has the answer).
 */
export function negotiate(request: Buffer, reply: Buffer, state: SharedServerState, o: { wantPassthrough: boolean; verity: boolean }): number {
  const body = P.IN_HEADER_SIZE;
  const major = request.readUInt32LE(body + P.InitIn.major);
  const minor = request.readUInt32LE(body + P.InitIn.minor);
  // Another major: tell the kernel ours; it retries or gives up.
  if (major !== P.FUSE_KERNEL_VERSION) return P.encodeInitVersionOnly(reply, P.BODY);
  const kflags = request.readUInt32LE(body + P.InitIn.flags);
  const kflags2 = kflags & P.Init.INIT_EXT ? request.readUInt32LE(body + P.InitIn.flags2) : 0;
  let want =
    P.Init.ASYNC_READ | P.Init.PARALLEL_DIROPS | P.Init.DO_READDIRPLUS | P.Init.CACHE_SYMLINKS | P.Init.MAX_PAGES | P.Init.POSIX_ACL | P.Init.INIT_EXT;
  let want2 = 0;
  let passthroughWhy = '';
  if (!o.wantPassthrough) passthroughWhy = o.verity ? 'off: -o verity checks every block in the server' : 'off: not wanted (passthrough=off)';
  else if (!(kflags2 & P.Init.PASSTHROUGH_HI)) passthroughWhy = 'off: this kernel does not offer FUSE passthrough';
  else {
    const cap = hasCapSysAdminInInitNs();
    if (cap.ok) want2 |= P.Init.PASSTHROUGH_HI;
    else passthroughWhy = `off: ${cap.why}`;
  }
  want &= kflags;
  want2 &= kflags2;
  const passthrough = (want2 & P.Init.PASSTHROUGH_HI) !== 0;
  state.passthrough = passthrough ? null : false;
  state.passthroughWhy = passthrough ? 'negotiated; on once the first object is opened' : passthroughWhy;
  state.settle(minor, (kflags & P.Init.NO_OPEN_SUPPORT) !== 0 && !passthrough);
  return P.encodeInitOut(reply, P.BODY, {
    minor: Math.min(minor, P.FUSE_OUR_MINOR),
    maxReadahead: request.readUInt32LE(body + P.InitIn.maxReadahead),
    flags: want,
    flags2: want2,
    maxBackground: 64,
    congestionThreshold: 48,
    maxWrite: 4096, // nothing is ever written
    timeGran: 1,
    maxPages: MAX_PAGES,
    maxStackDepth: passthrough ? P.MAX_STACK_DEPTH : 0,
  });
}
