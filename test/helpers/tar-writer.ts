/**
 * The tests' own tar writer, for the layers real tools rarely make: PAX
 * records (xattrs, long names, fractional mtimes), GNU long names, sparse
 * files in the old GNU and PAX 1.0 forms, devices, hard links, whiteouts,
 * and deliberately broken archives. Independent of src/oci/tar.ts.
 */
import { spawnSync } from 'node:child_process';
import { gzipSync } from 'node:zlib';

export interface TarEntry {
  path: string | Buffer;
  type?: 'file' | 'dir' | 'symlink' | 'hardlink' | 'char' | 'block' | 'fifo';
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  /** PAX mtime with a fraction, e.g. '1700000000.123456789' (overrides mtime in a PAX record). */
  paxMtime?: string;
  data?: Buffer | string;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  /** SCHILY.xattr.* records. */
  xattrs?: Record<string, Buffer | string>;
  /** LIBARCHIVE.xattr.* records. */
  libarchiveXattrs?: Record<string, Buffer | string>;
  /** Force a PAX header for the path even if it fits. */
  pax?: boolean;
  /** Use a GNU 'L' record for a long path instead of PAX. */
  gnuLongName?: boolean;
  /** Sparse file: data segments and the real size; 'gnu' (type S) or 'pax1' (PAX 1.0). */
  sparse?: { form: 'gnu' | 'pax1'; size: number; segments: { offset: number; data: Buffer }[] };
  /** Extra raw PAX records (key → value). */
  paxRecords?: Record<string, Buffer | string>;
  /** Size field to write instead of the data's length (for broken archives). */
  sizeOverride?: number;
}

const BLOCK = 512;

function octal(n: number, width: number): string {
  return n.toString(8).padStart(width - 1, '0') + '\0';
}

/** Octal when it fits, else GNU base-256 (first byte 0x80, big-endian). */
function numeric(b: Buffer, off: number, width: number, n: number): void {
  if (n < 8 ** (width - 1)) {
    b.write(octal(n, width), off, 'latin1');
    return;
  }
  b.fill(0, off, off + width);
  b[off] = 0x80;
  let v = BigInt(n);
  for (let i = width - 1; i > 0; i--) {
    b[off + i] = Number(v & 0xffn);
    v >>= 8n;
  }
}

function header(name: Buffer, opts: { type: string; mode: number; uid: number; gid: number; size: number; mtime: number; linkname?: Buffer; devmajor?: number; devminor?: number; extra?: (b: Buffer) => void }): Buffer {
  const b = Buffer.alloc(BLOCK);
  name.copy(b, 0, 0, Math.min(100, name.length));
  b.write(octal(opts.mode, 8), 100, 'latin1');
  numeric(b, 108, 8, opts.uid);
  numeric(b, 116, 8, opts.gid);
  b.write(octal(opts.size, 12), 124, 'latin1');
  b.write(octal(opts.mtime, 12), 136, 'latin1');
  b.write('        ', 148, 'latin1');
  b.write(opts.type, 156, 'latin1');
  if (opts.linkname) opts.linkname.copy(b, 157, 0, Math.min(100, opts.linkname.length));
  b.write('ustar\0', 257, 'latin1');
  b.write('00', 263, 'latin1');
  b.write(octal(opts.devmajor ?? 0, 8), 329, 'latin1');
  b.write(octal(opts.devminor ?? 0, 8), 337, 'latin1');
  opts.extra?.(b);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += b[i];
  b.write(octal(sum, 7) + ' ', 148, 'latin1');
  return b;
}

function pad(data: Buffer): Buffer[] {
  const r = data.length % BLOCK;
  return r === 0 ? [data] : [data, Buffer.alloc(BLOCK - r)];
}

function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'latin1'), value, Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

const typeChar: Record<string, string> = { file: '0', dir: '5', symlink: '2', hardlink: '1', char: '3', block: '4', fifo: '6' };

/** A tar archive of `entries`, with the end marker unless `noEnd`. */
export function makeTar(entries: TarEntry[], opts: { noEnd?: boolean } = {}): Buffer {
  const out: Buffer[] = [];
  for (const e of entries) {
    const type = e.type ?? 'file';
    const path = typeof e.path === 'string' ? Buffer.from(e.path) : e.path;
    const link = e.linkname !== undefined ? Buffer.from(e.linkname) : undefined;
    const data = e.data === undefined ? Buffer.alloc(0) : typeof e.data === 'string' ? Buffer.from(e.data) : e.data;
    const records: Buffer[] = [];
    let name = path;
    if (path.length > 100 || e.pax) {
      if (e.gnuLongName) {
        const ln = Buffer.concat([path, Buffer.alloc(1)]);
        out.push(header(Buffer.from('././@LongLink'), { type: 'L', mode: 0, uid: 0, gid: 0, size: ln.length, mtime: 0 }), ...pad(ln));
        name = path.subarray(0, 100);
      } else {
        records.push(paxRecord('path', path));
        name = path.subarray(0, 100);
      }
    }
    if (link && link.length > 100) records.push(paxRecord('linkpath', link));
    if (e.paxMtime) records.push(paxRecord('mtime', Buffer.from(e.paxMtime)));
    for (const [k, v] of Object.entries(e.xattrs ?? {})) records.push(paxRecord(`SCHILY.xattr.${k}`, Buffer.from(v)));
    for (const [k, v] of Object.entries(e.libarchiveXattrs ?? {})) records.push(paxRecord(`LIBARCHIVE.xattr.${encodeURIComponent(k)}`, Buffer.from(Buffer.from(v).toString('base64'))));
    for (const [k, v] of Object.entries(e.paxRecords ?? {})) records.push(paxRecord(k, Buffer.from(v)));
    let body = data;
    let tflag = typeChar[type];
    let extra: ((b: Buffer) => void) | undefined;
    if (e.sparse) {
      const stored = Buffer.concat(e.sparse.segments.map((s) => s.data));
      if (e.sparse.form === 'pax1') {
        records.push(paxRecord('GNU.sparse.major', Buffer.from('1')), paxRecord('GNU.sparse.minor', Buffer.from('0')));
        records.push(paxRecord('GNU.sparse.name', path), paxRecord('GNU.sparse.realsize', Buffer.from(String(e.sparse.size))));
        const map = [String(e.sparse.segments.length), ...e.sparse.segments.flatMap((s) => [String(s.offset), String(s.data.length)])].join('\n') + '\n';
        const mapBuf = Buffer.from(map);
        const mapPadded = Buffer.concat(pad(mapBuf));
        body = Buffer.concat([mapPadded, stored]);
        name = Buffer.from(`GNUSparseFile.0/${path.toString().split('/').pop()}`);
      } else {
        tflag = 'S';
        body = stored;
        const segs = e.sparse.segments;
        if (segs.length > 4) throw new Error('test tar writer: at most 4 GNU sparse segments');
        const size = e.sparse.size;
        extra = (b) => {
          b.fill(0, 257, 265);
          b.write('ustar  \0', 257, 'latin1');
          segs.forEach((s, k) => {
            b.write(octal(s.offset, 12), 386 + k * 24, 'latin1');
            b.write(octal(s.data.length, 12), 386 + k * 24 + 12, 'latin1');
          });
          b[482] = 0;
          b.write(octal(size, 12), 483, 'latin1');
        };
      }
    }
    if (records.length > 0) {
      const pax = Buffer.concat(records);
      out.push(header(Buffer.from('PaxHeader'), { type: 'x', mode: 0o644, uid: 0, gid: 0, size: pax.length, mtime: 0 }), ...pad(pax));
    }
    const size = e.sizeOverride ?? (type === 'file' ? body.length : 0);
    out.push(
      header(name, {
        type: tflag,
        mode: e.mode ?? (type === 'dir' ? 0o755 : type === 'symlink' ? 0o777 : 0o644),
        uid: e.uid ?? 0,
        gid: e.gid ?? 0,
        size,
        mtime: e.mtime ?? 1700000000,
        linkname: link,
        devmajor: e.devmajor,
        devminor: e.devminor,
        extra,
      }),
    );
    if (type === 'file' && body.length > 0) out.push(...pad(body));
  }
  if (!opts.noEnd) out.push(Buffer.alloc(BLOCK * 2));
  return Buffer.concat(out);
}

export function gzip(data: Buffer): Buffer {
  return gzipSync(data);
}

/** zstd through the `zstd` tool (fzstd, our decompressor, cannot compress). */
export function zstd(data: Buffer): Buffer {
  const r = spawnSync('zstd', ['-q', '-c', '-3'], { input: data, maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(`zstd failed: ${r.stderr}`);
  return r.stdout;
}

export function hasZstd(): boolean {
  return spawnSync('zstd', ['--version']).status === 0;
}

/** `n` bytes of a repeating pattern that `seed` shifts: content no two tests share by accident, and that no file is inlined for. */
export function patternBytes(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7 + seed) & 0xff;
  return b;
}
