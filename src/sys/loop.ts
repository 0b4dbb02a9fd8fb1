/**
 * Loop devices, the last-resort backing for an EROFS image: one
 * LOOP_CONFIGURE call binds a file, read-only, with direct I/O and autoclear,
 * so the device unbinds itself when its last opener (our fd, then the EROFS
 * superblock) goes away.
 */
import { closeSync, existsSync, openSync, readFileSync, readdirSync } from 'node:fs';
import { SysError, koffi, libc } from './libc.js';

const LOOP_CTL_GET_FREE = 0x4c82;
const LOOP_CONFIGURE = 0x4c0a;

export const LO_FLAGS_READ_ONLY = 1;
export const LO_FLAGS_AUTOCLEAR = 4;
export const LO_FLAGS_PARTSCAN = 8;
export const LO_FLAGS_DIRECT_IO = 16;

/** struct loop_config: u32 fd, u32 block_size, struct loop_info64 (232 bytes), u64 reserved[8]. */
const LOOP_CONFIG_SIZE = 8 + 232 + 64;
const INFO = 8;
const INFO_FLAGS = INFO + 52;
const INFO_FILE_NAME = INFO + 56;
const LO_NAME_SIZE = 64;

type Ioctl = (fd: number, req: number, arg: Buffer | null) => number;
let ioctlFn: Ioctl | null = null;
function ioctl(): Ioctl {
  return (ioctlFn ??= libc().func('int ioctl(int fd, unsigned long request, void *arg)') as Ioctl);
}

export interface LoopDevice {
  /** Open read-write fd on /dev/loopN; the device stays bound while it (or a mount) is open. */
  fd: number;
  number: number;
  path: string;
  directIo: boolean;
  /** True when LOOP_CTL_GET_FREE had to create the device (a new /dev node and /sys/block entry). */
  created: boolean;
}

export interface AttachOptions {
  /** Name recorded in lo_file_name (shown by losetup); truncated to 63 bytes. */
  name?: string;
  directIo?: boolean;
  blockSize?: number;
}

/** Bind `backingFd` to a free loop device: read-only, autoclear, direct I/O when the backing file allows it. */
export function attachLoop(backingFd: number, opts: AttachOptions = {}): LoopDevice {
  const wantDio = opts.directIo ?? true;
  for (let attempt = 0; ; attempt++) {
    const before = loopDeviceNames();
    const ctl = openDev('/dev/loop-control');
    let n: number;
    try {
      n = ioctl()(ctl, LOOP_CTL_GET_FREE, null);
      if (n < 0) throw new SysError('ioctl LOOP_CTL_GET_FREE', koffi.errno(), '/dev/loop-control');
    } finally {
      closeSync(ctl);
    }
    const path = `/dev/loop${n}`;
    const created = !before.includes(`loop${n}`);
    const fd = openDev(path);
    const cfg = Buffer.alloc(LOOP_CONFIG_SIZE);
    cfg.writeUInt32LE(backingFd, 0);
    cfg.writeUInt32LE(opts.blockSize ?? 4096, 4);
    const name = Buffer.from(opts.name ?? '', 'utf8').subarray(0, LO_NAME_SIZE - 1);
    name.copy(cfg, INFO_FILE_NAME);
    let flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR | (wantDio ? LO_FLAGS_DIRECT_IO : 0);
    cfg.writeUInt32LE(flags, INFO_FLAGS);
    let r = ioctl()(fd, LOOP_CONFIGURE, cfg);
    let errno = r < 0 ? koffi.errno() : 0;
    if (r < 0 && errno === 22 /* EINVAL */ && wantDio) {
      // The backing file cannot do direct I/O (or not at this block size): buffered instead.
      flags &= ~LO_FLAGS_DIRECT_IO;
      cfg.writeUInt32LE(flags, INFO_FLAGS);
      r = ioctl()(fd, LOOP_CONFIGURE, cfg);
      errno = r < 0 ? koffi.errno() : 0;
    }
    if (r < 0) {
      closeSync(fd);
      // EBUSY: another process bound this device between GET_FREE and CONFIGURE; take the next one.
      if (errno === 16 && attempt < 32) continue;
      throw new SysError('ioctl LOOP_CONFIGURE', errno, path);
    }
    return { fd, number: n, path, directIo: (flags & LO_FLAGS_DIRECT_IO) !== 0 && readDio(n), created };
  }
}

function openDev(path: string): number {
  try {
    return openSync(path, 'r+');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new SysError('open', -(e.errno ?? 0) || 2, path);
  }
}

function readDio(n: number): boolean {
  try {
    return readFileSync(`/sys/block/loop${n}/loop/dio`, 'utf8').trim() === '1';
  } catch {
    return true;
  }
}

export interface LoopInfo {
  name: string;
  backingFile: string;
  autoclear: boolean;
  readOnly: boolean;
  directIo: boolean;
}

/** Bound loop devices, from /sys/block. */
export function listLoops(): LoopInfo[] {
  const out: LoopInfo[] = [];
  let names: string[];
  try {
    names = readdirSync('/sys/block').filter((n) => /^loop\d+$/.test(n));
  } catch {
    return out;
  }
  for (const name of names) {
    const dir = `/sys/block/${name}/loop`;
    if (!existsSync(`${dir}/backing_file`)) continue;
    const rd = (f: string) => {
      try {
        return readFileSync(`${dir}/${f}`, 'utf8').trim();
      } catch {
        return '';
      }
    };
    out.push({
      name,
      backingFile: rd('backing_file'),
      autoclear: rd('autoclear') === '1',
      readOnly: readFileSync(`/sys/block/${name}/ro`, 'utf8').trim() === '1',
      directIo: rd('dio') === '1',
    });
  }
  return out;
}

/** Names of the loop block devices that exist (bound or not). */
export function loopDeviceNames(): string[] {
  try {
    return readdirSync('/sys/block').filter((n) => /^loop\d+$/.test(n));
  } catch {
    return [];
  }
}

/** Whether this system has loop devices to hand out (/dev/loop-control). */
export function loopControlExists(): boolean {
  return existsSync('/dev/loop-control');
}
