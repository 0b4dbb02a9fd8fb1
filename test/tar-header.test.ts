/**
 * The tar header decoder (src/oci/tar-header.ts) on headers written by GNU
 * tar and Python's tarfile in each format they write, and the two readers
 * built on it (the layer stream of src/oci/tar.ts, the archive index of
 * src/oci/files.ts). Expected values are what the tools were given: the
 * files' names, sizes, modes and contents, the ids and times passed on the
 * command line or to tarfile.TarInfo.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, closeSync, existsSync, linkSync, lstatSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, symlinkSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  BLOCK, TarError, USTAR, STAR, applyRecord, checksumOk, decodeHeader, decodePaxSparseMap, isZeroBlock, noExtensions, parseNumeric, readGnuSparseExtension,
  type DecodedEntry, type TarSparseSegment,
} from '../src/oci/tar-header.js';
import { TarParser, type TarHeader } from '../src/oci/tar.js';
import { TarFiles } from '../src/oci/files.js';
import { SourceError } from '../src/oci/source-errors.js';

let tmp = '';
before(() => {
  tmp = mkdtempSync(join(tmpdir(), 'cfs-tar-header-'));
});
after(() => rmSync(tmp, { recursive: true, force: true }));

interface Walked {
  entry: DecodedEntry;
  /** Where the entry's stored data starts in the archive. */
  dataOffset: number;
}

/** The archive's entries, block by block through the decoder alone (records applied, GNU sparse extension blocks read). */
function walk(archive: Buffer): Walked[] {
  const out: Walked[] = [];
  let ext = noExtensions();
  let off = 0;
  while (off + BLOCK <= archive.length) {
    const block = archive.subarray(off, off + BLOCK);
    if (isZeroBlock(block)) break;
    const decoded = decodeHeader(block, ext, out.length + 1);
    off += BLOCK;
    let size: number;
    if (decoded.kind === 'record') {
      applyRecord(decoded.record, archive.subarray(off, off + decoded.size), ext, 'walk');
      size = decoded.size;
    } else if (decoded.kind === 'skip') {
      size = decoded.size;
    } else {
      ext = noExtensions();
      const sparse = decoded.sparse;
      if (sparse?.form === 'gnu' && sparse.extended) {
        let more: boolean;
        do {
          more = readGnuSparseExtension(archive.subarray(off, off + BLOCK), sparse.segments, () => 'walk');
          off += BLOCK;
        } while (more);
      }
      out.push({ entry: decoded, dataOffset: off });
      size = decoded.header.type === 'file' ? decoded.stored : 0;
    }
    off += Math.ceil(size / BLOCK) * BLOCK;
  }
  return out;
}

function byPath(walked: Walked[]): Map<string, Walked> {
  return new Map(walked.map((w) => [w.entry.header.path.toString(), w]));
}

/** Every entry through the streaming reader, with its contents. */
function parseAll(archive: Buffer, chunk = 4096): { header: TarHeader; data: Buffer }[] {
  const out: { header: TarHeader; data: Buffer }[] = [];
  const parser = new TarParser((header) => {
    const chunks: Buffer[] = [];
    return {
      write: (c) => chunks.push(Buffer.from(c)),
      end: () => out.push({ header, data: Buffer.concat(chunks) }),
    };
  });
  for (let i = 0; i < archive.length; i += chunk) parser.push(archive.subarray(i, i + chunk));
  parser.end();
  return out;
}

/** Run a Python script with tarfile imported; what it writes to stdout. */
function python(script: string, input?: Buffer): Buffer {
  return execFileSync('python3', ['-c', `import sys, tarfile, io\n${script}`], { maxBuffer: 64 << 20, input });
}

/** Set the checksum field of a header block to `sum` (octal, as tar writes it). */
function setChecksum(block: Buffer, sum: number): void {
  block.write(sum.toString(8).padStart(6, '0') + '\0 ', USTAR.checksum.offset, 'latin1');
}

/** The unsigned and the signed sum of a block with its checksum field taken as spaces (POSIX; old tars used the signed one). */
function sums(block: Buffer): { unsigned: number; signed: number } {
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const c = i >= USTAR.checksum.offset && i < USTAR.checksum.offset + USTAR.checksum.length ? 0x20 : block[i];
    unsigned += c;
    signed += c >= 128 ? c - 256 : c;
  }
  return { unsigned, signed };
}

const UID = 1234;
const GID = 5678;
const MTIME = 1700000000;
const LONG_DIR = `${'d'.repeat(60)}/${'e'.repeat(60)}`;
const LONG = `${LONG_DIR}/long-file-name`;

function gnuTarSources(): string {
  const src = join(tmp, 'src');
  if (existsSync(src)) return src;
  mkdirSync(join(src, LONG_DIR), { recursive: true });
  writeFileSync(join(src, 'file'), Buffer.alloc(1000, 'x'));
  chmodSync(join(src, 'file'), 0o4751);
  mkdirSync(join(src, 'dir'));
  chmodSync(join(src, 'dir'), 0o1750);
  symlinkSync('file', join(src, 'link'));
  linkSync(join(src, 'file'), join(src, 'hard'));
  execFileSync('mkfifo', ['-m', '0600', join(src, 'fifo')]);
  writeFileSync(join(src, LONG), 'abc');
  chmodSync(join(src, LONG), 0o644);
  return src;
}


for (const format of ['v7', 'oldgnu', 'gnu', 'ustar', 'pax'] as const) {
  test(`GNU tar --format=${format}: names, types, modes, ids, times, sizes and link targets`, () => {
    const src = gnuTarSources();
    // v7 has neither FIFOs nor names over 100 bytes.
    const members = format === 'v7' ? ['file', 'dir', 'link', 'hard'] : ['file', 'dir', 'link', 'hard', 'fifo', LONG];
    const archive = execFileSync('tar', [`--format=${format}`, `--owner=alice:${UID}`, `--group=staff:${GID}`, `--mtime=@${MTIME}`, '--no-recursion', '-C', src, '-cf', '-', ...members]);
    const entries = byPath(walk(archive));
    const expectType = { file: 'file', dir: 'dir', link: 'symlink', hard: 'hardlink', fifo: 'fifo', [LONG]: 'file' } as Record<string, string>;
    for (const m of members) {
      const name = m === 'dir' ? 'dir/' : m;
      const w = entries.get(name);
      assert.ok(w, `${format}: ${name} among ${[...entries.keys()].join(', ')}`);
      const h = w.entry.header;
      const st = lstatSync(join(src, m));
      assert.equal(h.type, expectType[m], `${format} ${m} type`);
      assert.equal(h.mode, st.mode & 0o7777, `${format} ${m} mode`);
      assert.equal(h.uid, UID, `${format} ${m} uid`);
      assert.equal(h.gid, GID, `${format} ${m} gid`);
      assert.equal(h.mtimeSec, MTIME, `${format} ${m} mtime`);
      assert.equal(h.mtimeNsec, 0);
      assert.equal(h.size, m === 'file' || m === LONG ? st.size : 0, `${format} ${m} size`);
      if (m === 'link') assert.equal(h.linkname.toString(), 'file');
      if (m === 'hard') assert.equal(h.linkname.toString(), 'file');
      if (h.type === 'file') assert.deepEqual(archive.subarray(w.dataOffset, w.dataOffset + h.size), readFileSync(join(src, m)));
    }
    assert.equal(entries.size, members.length);
  });
}

test('GNU tar: long link targets (GNU K record, PAX linkpath) and nanosecond mtimes (PAX)', () => {
  const dir = join(tmp, 'longlink');
  mkdirSync(dir);
  const target = `${'t'.repeat(90)}/${'u'.repeat(90)}`;
  symlinkSync(target, join(dir, 'sym'));
  writeFileSync(join(dir, 'ns'), 'n');
  // touch keeps the nanoseconds it is given; GNU tar's pax format carries them.
  execFileSync('touch', ['-d', '@1700000000.123456789', join(dir, 'ns')]);
  for (const format of ['gnu', 'pax']) {
    const entries = byPath(walk(execFileSync('tar', [`--format=${format}`, '-C', dir, '-cf', '-', 'sym', 'ns'])));
    assert.equal(entries.get('sym')?.entry.header.linkname.toString(), target, format);
    const ns = entries.get('ns')!.entry.header;
    assert.equal(ns.mtimeSec, 1700000000, format);
    assert.equal(ns.mtimeNsec, format === 'pax' ? 123456789 : 0, format);
  }
});

test('Python tarfile GNU format: base-256 size, uid and negative mtime', () => {
  const size = 9 * 2 ** 30; // over the 8 GiB that 11 octal digits hold
  const uid = 2 ** 21 + 5; // over the 7 octal digits of the uid field
  const block = python(`
ti = tarfile.TarInfo('huge')
ti.size = ${size}
ti.uid = ${uid}
ti.gid = 7
ti.mtime = -1000
ti.mode = 0o600
sys.stdout.buffer.write(ti.tobuf(tarfile.GNU_FORMAT, 'utf-8', 'surrogateescape'))`);
  assert.equal(block.length, BLOCK);
  assert.equal(block[USTAR.size.offset] & 0x80, 0x80, 'tarfile wrote the size in base-256');
  const d = decodeHeader(block, noExtensions(), 1);
  assert.equal(d.kind, 'entry');
  const { header, stored } = d as DecodedEntry;
  assert.equal(header.path.toString(), 'huge');
  assert.equal(stored, size);
  assert.equal(header.size, size);
  assert.equal(header.uid, uid);
  assert.equal(header.gid, 7);
  assert.equal(header.mtimeSec, -1000);
  assert.equal(header.mode, 0o600);
});

test('Python tarfile PAX format: size, uid, path and fractional mtime from the records override the header', () => {
  const size = 9 * 2 ** 30;
  const path = `${'p'.repeat(150)}/${'q'.repeat(150)}`;
  const blocks = python(`
ti = tarfile.TarInfo(${JSON.stringify(path)})
ti.size = ${size}
ti.uid = 3000000
ti.gid = 9
ti.mtime = 5
ti.pax_headers = {'mtime': '1700000000.987654321'}
sys.stdout.buffer.write(ti.tobuf(tarfile.PAX_FORMAT, 'utf-8', 'surrogateescape'))`);
  const first = decodeHeader(blocks.subarray(0, BLOCK), noExtensions(), 1);
  assert.deepEqual(first, { kind: 'record', record: 'pax', size: first.kind === 'record' ? first.size : -1 });
  const ext = noExtensions();
  applyRecord('pax', blocks.subarray(BLOCK, BLOCK + (first as { size: number }).size), ext, 'test');
  const headerAt = BLOCK + Math.ceil((first as { size: number }).size / BLOCK) * BLOCK;
  const d = decodeHeader(blocks.subarray(headerAt, headerAt + BLOCK), ext, 1) as DecodedEntry;
  assert.equal(d.header.path.toString(), path);
  assert.equal(d.stored, size);
  assert.equal(d.header.uid, 3000000);
  assert.equal(d.header.gid, 9);
  assert.equal(d.header.mtimeSec, 1700000000);
  assert.equal(d.header.mtimeNsec, 987654321);
});

test('Python tarfile: negative fractional PAX mtime floors to whole seconds and nanoseconds', () => {
  const blocks = python(`
ti = tarfile.TarInfo('old')
ti.pax_headers = {'mtime': '-1.25'}
sys.stdout.buffer.write(ti.tobuf(tarfile.PAX_FORMAT, 'utf-8', 'surrogateescape'))`);
  const [entry] = walk(Buffer.concat([blocks, Buffer.alloc(2 * BLOCK)]));
  // -1.25 s is 2 s before the epoch plus 0.75 s.
  assert.equal(entry.entry.header.mtimeSec, -2);
  assert.equal(entry.entry.header.mtimeNsec, 750000000);
});

test('Python tarfile ustar: devices, and a long name split into prefix and name', () => {
  const path = `${'a'.repeat(120)}/${'b'.repeat(30)}`;
  const archive = python(`
out = io.BytesIO()
with tarfile.open(fileobj=out, mode='w', format=tarfile.USTAR_FORMAT) as t:
    ti = tarfile.TarInfo('tty'); ti.type = tarfile.CHRTYPE; ti.devmajor = 4; ti.devminor = 64; t.addfile(ti)
    ti = tarfile.TarInfo('sda'); ti.type = tarfile.BLKTYPE; ti.devmajor = 8; ti.devminor = 1; t.addfile(ti)
    ti = tarfile.TarInfo(${JSON.stringify(path)}); ti.size = 2; t.addfile(ti, io.BytesIO(b'hi'))
sys.stdout.buffer.write(out.getvalue())`);
  const entries = byPath(walk(archive));
  assert.deepEqual([entries.get('tty')?.entry.header.type, entries.get('tty')?.entry.header.devmajor, entries.get('tty')?.entry.header.devminor], ['char', 4, 64]);
  assert.deepEqual([entries.get('sda')?.entry.header.type, entries.get('sda')?.entry.header.devmajor, entries.get('sda')?.entry.header.devminor], ['block', 8, 1]);
  const long = entries.get(path);
  assert.ok(long, [...entries.keys()].join(', '));
  assert.equal(archive.subarray(long.dataOffset, long.dataOffset + 2).toString(), 'hi');
});

test('star headers: a 131-byte prefix, then access and change times', () => {
  const block = python(`
ti = tarfile.TarInfo('file')
sys.stdout.buffer.write(ti.tobuf(tarfile.USTAR_FORMAT, 'utf-8', 'surrogateescape'))`);
  const prefix = 'p'.repeat(STAR.prefix.length); // fills the field: no NUL before the times
  block.write(prefix, STAR.prefix.offset, 'latin1');
  block.write('14000000000\0', STAR.atime.offset, 'latin1');
  block.write('14000000000\0', STAR.ctime.offset, 'latin1');
  block.write('tar\0', STAR.trailer.offset, 'latin1');
  setChecksum(block, sums(block).unsigned);
  const d = decodeHeader(block, noExtensions(), 1) as DecodedEntry;
  assert.equal(d.header.path.toString(), `${prefix}/file`);
});

const SPARSE_CHUNKS = 30; // more than the 4 + 21 entries of a GNU header and one extension block
const SPARSE_SIZE = SPARSE_CHUNKS * 65536 + 12345;

function sparseFile(): { path: string; chunks: TarSparseSegment[] } {
  const path = join(tmp, 'sparse-src', 'sparse');
  const chunks: TarSparseSegment[] = [];
  for (let k = 0; k < SPARSE_CHUNKS; k++) chunks.push({ offset: k * 65536, length: 4096 });
  if (!existsSync(path)) {
    mkdirSync(join(tmp, 'sparse-src'));
    writeFileSync(path, '');
    truncateSync(path, SPARSE_SIZE);
    const fd = openSync(path, 'r+');
    try {
      for (const [k, c] of chunks.entries()) writeSync(fd, Buffer.alloc(c.length, 0x41 + (k % 26)), 0, c.length, c.offset);
    } finally {
      closeSync(fd);
    }
  }
  return { path, chunks };
}

for (const [label, args] of [
  ['old GNU (S, extension blocks)', ['--format=gnu']],
  ['PAX 0.0', ['--format=pax', '--sparse-version=0.0']],
  ['PAX 0.1', ['--format=pax', '--sparse-version=0.1']],
  ['PAX 1.0', ['--format=pax', '--sparse-version=1.0']],
] as const) {
  test(`GNU tar --sparse, ${label}: real size, map and contents`, () => {
    const { path, chunks } = sparseFile();
    const archive = execFileSync('tar', ['--sparse', ...args, '-C', join(tmp, 'sparse-src'), '-cf', '-', 'sparse']);
    const [w, ...rest] = walk(archive);
    assert.equal(rest.length, 0);
    const { header, sparse, stored } = w.entry;
    assert.equal(header.path.toString(), 'sparse');
    assert.equal(header.type, 'file');
    assert.equal(header.size, SPARSE_SIZE);
    assert.ok(sparse, 'a sparse entry');
    let map: TarSparseSegment[];
    if (sparse.form === 'pax-1.0') {
      const mapped = decodePaxSparseMap(archive.toString('latin1', w.dataOffset, w.dataOffset + stored), () => 'walk');
      assert.ok('segments' in mapped);
      map = mapped.segments;
    } else map = sparse.segments;
    assert.equal(sparse.form, label.startsWith('old GNU') ? 'gnu' : label === 'PAX 1.0' ? 'pax-1.0' : 'pax-map');
    assert.deepEqual(map.filter((s) => s.length > 0), chunks);

    const [parsed, ...others] = parseAll(archive, 1000);
    assert.equal(others.length, 0);
    assert.equal(parsed.header.path.toString(), 'sparse');
    assert.equal(parsed.header.size, SPARSE_SIZE);
    assert.ok(parsed.data.equals(readFileSync(path)), 'contents with the holes filled');
  });
}

test('sparse maps are bounded: GNU extension blocks by the record limit, a PAX 1.0 map in linear time', { timeout: 60_000 }, () => {
  sparseFile();
  // 30 segments: the header's 4, then two extension blocks (1024 bytes).
  const gnu = execFileSync('tar', ['--sparse', '--format=gnu', '-C', join(tmp, 'sparse-src'), '-cf', '-', 'sparse']);
  const read = (maxRecord: number) => {
    const parser = new TarParser(() => null, { maxRecord });
    parser.push(gnu);
    parser.end();
  };
  read(1024);
  assert.throws(() => read(512), (err: unknown) => err instanceof TarError && err.message === 'entry sparse: GNU sparse map exceeds the limit of 512 bytes');

  // A PAX 1.0 map that announces more pairs than the entry holds, just under the 1 MiB limit:
  // refused as truncated once its data runs out, after reading it once, not once a block.
  const map = Buffer.concat([Buffer.from('9999999\n'), Buffer.alloc(1040000, '0\n')]);
  const archive = python(`
data = sys.stdin.buffer.read()
out = io.BytesIO()
with tarfile.open(fileobj=out, mode='w', format=tarfile.PAX_FORMAT) as t:
    ti = tarfile.TarInfo('s'); ti.size = len(data)
    ti.pax_headers = {'GNU.sparse.major': '1', 'GNU.sparse.minor': '0', 'GNU.sparse.realsize': '10'}
    t.addfile(ti, io.BytesIO(data))
sys.stdout.buffer.write(out.getvalue())`, map);
  const start = process.hrtime.bigint();
  assert.throws(() => parseAll(archive, 1 << 20), (err: unknown) => err instanceof TarError && err.message === 'entry s: truncated sparse map');
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  assert.ok(ms < 2000, `${ms.toFixed(0)} ms for a 1 MiB sparse map`);
});

test('numeric fields: octal padded with spaces or NULs, base-256 with its sign, refused when malformed or past 2^53-1', () => {
  const field = (bytes: number[] | string) => (typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : Buffer.from(bytes));
  const n = (bytes: number[] | string, signed = false) => parseNumeric(field(bytes), 0, field(bytes).length, signed);
  assert.equal(n('0000644\0'), 0o644);
  assert.equal(n('   644 \0'), 0o644);
  assert.equal(n('644\0\0\0\0\0'), 0o644);
  assert.equal(n('\0\0\0\0\0\0\0\0'), 0, 'an empty field');
  assert.equal(n('        '), 0, 'all spaces');
  assert.equal(n('77777777777\0'), 8 ** 11 - 1);
  assert.equal(n('0000648\0'), null, 'an 8 is no octal digit');
  assert.equal(n('64 4\0\0\0\0'), null, 'digits after the padding');
  assert.equal(n('+644\0\0\0\0'), null);
  // base-256: 0x80 then big-endian; 0xff... is -1 (two's complement).
  assert.equal(n([0x80, 0, 0, 0, 0, 0, 0, 2, 0x40, 0, 0, 0]), 9 * 2 ** 30);
  assert.equal(n([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], true), -1);
  assert.equal(n([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), null, 'negative where only sizes and ids go');
  assert.equal(n([0x80, 0, 0, 0, 0, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), Number.MAX_SAFE_INTEGER);
  assert.equal(n([0x80, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0]), null, '2^53');
  assert.equal(n([0xff, 0xff, 0xff, 0xff, 0xff, 0xe0, 0, 0, 0, 0, 0, 0], true), null, '-2^53');
});

test('bad checksums are refused; the signed sum of old tars is accepted', () => {
  const archive = execFileSync('tar', ['--format=ustar', '-C', gnuTarSources(), '-cf', '-', 'file']);
  const block = Buffer.from(archive.subarray(0, BLOCK));
  assert.equal(checksumOk(block), true);
  const flipped = Buffer.from(block);
  flipped[0] ^= 1;
  assert.throws(() => decodeHeader(flipped, noExtensions(), 1), (err: unknown) => err instanceof TarError && /: bad tar header checksum$/.test(err.message));

  // A name byte over 127 makes the signed and unsigned sums differ.
  const high = Buffer.from(block);
  high[1] = 0xe9;
  const { unsigned, signed } = sums(high);
  assert.notEqual(unsigned, signed);
  setChecksum(high, signed);
  assert.equal(checksumOk(high), true, 'signed sum');
  setChecksum(high, unsigned);
  assert.equal(checksumOk(high), true, 'unsigned sum');
  setChecksum(high, unsigned + 1);
  assert.equal(checksumOk(high), false);
  assert.throws(() => decodeHeader(high, noExtensions(), 1), /bad tar header checksum/);
  // The whole archive through the streaming reader: refused with the entry named.
  assert.throws(() => parseAll(Buffer.concat([flipped, archive.subarray(BLOCK)])), (err: unknown) => err instanceof TarError && /^entry .*: bad tar header checksum$/.test(err.message));
});

/** A PAX archive from tarfile: one 5-byte file `f` whose extended header carries `records` as given. */
function paxArchive(records: Record<string, string>): Buffer {
  return python(`
out = io.BytesIO()
with tarfile.open(fileobj=out, mode='w', format=tarfile.PAX_FORMAT) as t:
    ti = tarfile.TarInfo('f'); ti.size = 5; ti.pax_headers = ${JSON.stringify(records)}
    t.addfile(ti, io.BytesIO(b'12345'))
sys.stdout.buffer.write(out.getvalue())`);
}

const BAD_PAX: [string, string][] = [
  ['size', '1e3'],
  ['size', '-1'],
  ['size', '99999999999999999999'],
  ['size', ' 5'],
  ['size', '0x10'],
  ['uid', '1.5'],
  ['gid', '9007199254740993'],
  ['mtime', 'abc'],
  ['mtime', '1e9'],
  ['mtime', '99999999999999999999'],
  ['GNU.sparse.size', '-5'],
  ['GNU.sparse.map', '0,99999999999999999999'],
];

test('PAX numbers are checked: each reader refuses a bad one, naming the field', async () => {
  const good = paxArchive({ size: '5', uid: '12', mtime: '1700000000.5' });
  assert.equal(parseAll(good)[0].data.toString(), '12345');
  for (const [key, value] of BAD_PAX) {
    const archive = paxArchive({ [key]: value });
    const field = new RegExp(`malformed PAX ${key.replace(/\./g, '\\.')}`);
    assert.throws(() => walk(archive), (err: unknown) => err instanceof TarError && field.test(err.message), `${key}=${value}: decoder`);
    assert.throws(() => parseAll(archive), (err: unknown) => err instanceof TarError && field.test(err.message) && err.message.includes(value.slice(0, 20)), `${key}=${value}: stream reader`);
    const file = join(tmp, 'bad-pax.tar');
    writeFileSync(file, archive);
    await assert.rejects(TarFiles.open(file, 'docker-archive bad-pax.tar'), (err: unknown) => {
      assert.ok(err instanceof SourceError, `${key}=${value}: archive index: ${String(err)}`);
      assert.equal(err.code, 'invalid-manifest');
      assert.match(err.message, /^docker-archive bad-pax\.tar: not a readable tar archive \(/);
      assert.match(err.message, field);
      assert.ok(!err.message.includes('\n'));
      return true;
    });
  }
});

test('the archive index steps over GNU sparse extension blocks, offers plain members (long names too), not sparse ones', async () => {
  const file = join(tmp, 'index.tar');
  const long = `${'m'.repeat(120)}/manifest.json`;
  sparseFile();
  writeFileSync(join(tmp, 'sparse-src', 'plain'), 'plain contents');
  execFileSync('tar', ['--sparse', '--format=gnu', '-C', join(tmp, 'sparse-src'), '-cf', file, 'sparse', 'plain']);
  const files = await TarFiles.open(file, 'test archive');
  try {
    assert.equal(await files.size('sparse'), undefined);
    assert.equal((await files.read('plain', 100, 'plain')).toString(), 'plain contents');
  } finally {
    await files.close();
  }
  const gnu = join(tmp, 'gnu-long.tar');
  writeFileSync(gnu, python(`
out = io.BytesIO()
with tarfile.open(fileobj=out, mode='w', format=tarfile.GNU_FORMAT) as t:
    ti = tarfile.TarInfo(${JSON.stringify(long)}); ti.size = 2; t.addfile(ti, io.BytesIO(b'{}'))
sys.stdout.buffer.write(out.getvalue())`));
  const index = await TarFiles.open(gnu, 'gnu archive');
  try {
    assert.equal((await index.read(long, 100, 'manifest')).toString(), '{}');
  } finally {
    await index.close();
  }
});

test('PAX global headers are checked, then ignored', () => {
  const write = (globals: Record<string, string>) =>
    python(`
out = io.BytesIO()
with tarfile.open(fileobj=out, mode='w', format=tarfile.PAX_FORMAT, pax_headers=${JSON.stringify(globals)}) as t:
    ti = tarfile.TarInfo('f'); ti.uid = 42; ti.mtime = 99
    t.addfile(ti)
sys.stdout.buffer.write(out.getvalue())`);
  const archive = write({ uid: '77', mtime: '5', comment: 'global' });
  assert.equal(archive[USTAR.typeflag.offset], 'g'.charCodeAt(0), 'tarfile wrote a global header first');
  const [w] = walk(archive);
  assert.equal(w.entry.header.uid, 42);
  assert.equal(w.entry.header.mtimeSec, 99);
  assert.equal(parseAll(archive)[0].header.uid, 42);
  assert.throws(() => parseAll(write({ uid: '-77' })), /malformed PAX uid '-77'/);
});

test('LIBARCHIVE.xattr names are percent-decoded byte by byte', () => {
  // libarchive writes each byte of a name outside [A-Za-z0-9._-] as %XX; a '%' without two hex digits stands for itself.
  const archive = paxArchive({ 'LIBARCHIVE.xattr.user.%C3%A9t%C3%A9': Buffer.from('one').toString('base64'), 'LIBARCHIVE.xattr.user.100%zz': Buffer.from('two').toString('base64') });
  const [w] = walk(archive);
  const [parsed] = parseAll(archive);
  assert.deepEqual(parsed.header.xattrs, w.entry.header.xattrs);
  const xattrs = w.entry.header.xattrs.map((x) => [x.key.toString('latin1'), x.value.toString()]);
  assert.deepEqual(xattrs, [
    [Buffer.from('user.été', 'utf8').toString('latin1'), 'one'],
    ['user.100%zz', 'two'],
  ]);
});
