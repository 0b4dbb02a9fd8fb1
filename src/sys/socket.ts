/**
 * Unix-domain socket calls Node lacks: socketpair(2), and recvmsg(2) of a
 * file descriptor passed with SCM_RIGHTS (how fusermount3 hands back the
 * /dev/fuse descriptor it opened and mounted). Layouts are Linux x86-64 and
 * arm64 (LP64): struct msghdr is 56 bytes, struct cmsghdr 16.
 */
import { bindLazily, koffi, lastErrno, SysError } from './libc.js';

export const AF_UNIX = 1;
export const SOCK_STREAM = 1;
export const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const MSG_CMSG_CLOEXEC = 0x40000000;

interface Calls {
  socketpair: (domain: number, type: number, protocol: number, sv: Int32Array) => number;
  recvmsg: (fd: number, msg: Buffer, flags: number) => number;
}

const c = bindLazily<Calls>((l) => ({
    socketpair: l.func('int socketpair(int domain, int type, int protocol, _Out_ int *sv)') as unknown as Calls['socketpair'],
    recvmsg: l.func('recvmsg', 'intptr_t', ['int', 'void *', 'int']) as unknown as Calls['recvmsg'],
}));

/** A connected pair of stream sockets (close-on-exec unless `inheritable`). */
export function socketPair(inheritable = false): [number, number] {
  const sv = new Int32Array(2);
  const ok = c().socketpair(AF_UNIX, SOCK_STREAM | (inheritable ? 0 : SOCK_CLOEXEC), 0, sv);
  if (ok < 0) throw new SysError('socketpair', lastErrno());
  return [sv[0], sv[1]];
}

/**
 * Receive one message and the first descriptor passed with it (made
 * close-on-exec). Returns null when the peer closed without sending one.
 * Blocks.
 */
export function receiveFd(sock: number): number | null {
  // Off-heap, unpooled memory: the kernel writes through the addresses taken here.
  const slow = (n: number) => Buffer.allocUnsafeSlow(n).fill(0);
  const data = slow(16);
  const iov = slow(16);
  const control = slow(64);
  const msg = slow(56);
  const addr = (b: Buffer) => BigInt(Number(koffi.address(b)));
  iov.writeBigUInt64LE(addr(data), 0);
  iov.writeBigUInt64LE(BigInt(data.length), 8);
  msg.writeBigUInt64LE(0n, 0); // msg_name
  msg.writeUInt32LE(0, 8); // msg_namelen
  msg.writeBigUInt64LE(addr(iov), 16); // msg_iov
  msg.writeBigUInt64LE(1n, 24); // msg_iovlen
  msg.writeBigUInt64LE(addr(control), 32); // msg_control
  msg.writeBigUInt64LE(BigInt(control.length), 40); // msg_controllen
  let n: number;
  for (;;) {
    n = Number(c().recvmsg(sock, msg, MSG_CMSG_CLOEXEC));
    if (n >= 0) break;
    const e = lastErrno();
    if (e !== 4 /* EINTR */) throw new SysError('recvmsg', e);
  }
  const controlLen = Number(msg.readBigUInt64LE(40));
  for (let off = 0; off + 16 <= controlLen; ) {
    const len = Number(control.readBigUInt64LE(off));
    const level = control.readInt32LE(off + 8);
    const type = control.readInt32LE(off + 12);
    if (len < 16) break;
    if (level === SOL_SOCKET && type === SCM_RIGHTS && len >= 20) return control.readInt32LE(off + 16);
    off += (len + 7) & ~7;
  }
  return null;
}
