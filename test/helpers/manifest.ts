/**
 * What a mounted tree shows, one line per entry, to compare two mounts of
 * the same image (the kernel's composefs mount and the FUSE server's):
 * type, mode, owner, size, link count, inode number, device number,
 * mtime and ctime to the nanosecond, symlink target, every xattr with its
 * value, and a hash of the content. A failing call is recorded as its error
 * code, so two mounts must also fail alike (a user without access).
 *
 * Run as a program (`node manifest.js DIR`) it prints the lines: tests use
 * that to look at a mount as another user.
 */
import { createHash } from 'node:crypto';
import { lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { cPath, getXattr } from '../../src/sys/fs.js';
import { koffi, libc } from '../../src/sys/libc.js';

let llistxattr: ((p: Buffer, list: Buffer | null, size: number) => number) | null = null;

function xattrNames(p: Buffer): string[] | string {
  llistxattr ??= libc().func('llistxattr', 'intptr_t', ['const void *', 'void *', 'size_t']) as unknown as typeof llistxattr;
  const buf = Buffer.alloc(65536);
  const n = Number(llistxattr!(p, buf, buf.length));
  if (n < 0) return `err=${koffi.errno()}`;
  return buf.subarray(0, n).toString('latin1').split('\0').filter(Boolean).sort();
}

function attempt<T>(fn: () => T): T | string {
  try {
    return fn();
  } catch (e) {
    return `err=${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`;
  }
}

export function manifest(root: string): string[] {
  const out: string[] = [];
  const rootBuf = Buffer.from(root);
  // Paths as bytes: names need not be UTF-8.
  const walk = (relBuf: Buffer) => {
    const rel = relBuf.toString('latin1');
    const path = relBuf.length === 0 ? rootBuf : Buffer.concat([rootBuf, Buffer.from('/'), relBuf]);
    const st = attempt(() => lstatSync(path, { bigint: true }));
    if (typeof st === 'string') {
      out.push(`${rel || '.'} ${st}`);
      return;
    }
    const cp = cPath(path);
    const names = xattrNames(cp);
    const xattrs = typeof names === 'string' ? names : names.map((n) => `${n}=${attempt(() => getXattr(cp, Buffer.from(n, 'latin1')).toString('hex'))}`).join(',');
    let extra = '';
    if (st.isSymbolicLink()) extra = `-> ${attempt(() => readlinkSync(path, { encoding: 'buffer' }).toString('hex'))}`;
    else if (st.isFile()) extra = `sha256=${attempt(() => createHash('sha256').update(readFileSync(path)).digest('hex'))}`;
    out.push(
      `${rel || '.'} mode=${st.mode.toString(8)} uid=${st.uid} gid=${st.gid} size=${st.size} nlink=${st.nlink} ino=${st.ino} rdev=${st.rdev} mtime=${st.mtimeNs} ctime=${st.ctimeNs} xattrs[${xattrs}] ${extra}`,
    );
    if (st.isDirectory()) {
      const entries = attempt(() => (readdirSync(path, { encoding: 'buffer' }) as Buffer[]).sort(Buffer.compare));
      if (typeof entries === 'string') {
        out.push(`${rel || '.'}/ ${entries}`);
        return;
      }
      for (const name of entries) walk(relBuf.length === 0 ? name : Buffer.concat([relBuf, Buffer.from('/'), name]));
    }
  };
  walk(Buffer.alloc(0));
  return out;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  process.stdout.write(`${manifest(process.argv[2]).join('\n')}\n`);
}
