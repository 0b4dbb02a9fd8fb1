/**
 * `npm start`: the main job on embedded defaults. Builds an image from the
 * sample tree shipped in the repo, then one (with its object store) from a
 * real tree every Debian has, then, as root, mounts it hidden, reads a file
 * back and shows the footprint. Everything lands in a temporary directory
 * that is removed at the end.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { UserError } from './errors.js';
import { S_IFMT, S_IFREG, type Inode } from '../tree/model.js';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const say = (s: string) => process.stdout.write(`${s}\n`);

function countEntries(root: Inode): number {
  let n = 1;
  for (const d of root.children ?? []) n += d.hardlink || !d.inode.children ? 1 : countEntries(d.inode);
  return n;
}

function human(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let v = bytes;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(u === 0 ? 0 : 1)} ${units[u]}`;
}

/** Mount the image hidden, read a file back through the overlay, show what the mount added, unmount. */
async function showHiddenMount(image: string, basedir: string, work: string, root: Inode): Promise<void> {
  const { mountComposefs, unmountComposefs, markSystem, footprintSince, describeFootprint } = await import('../mount/index.js');
  const mnt = join(work, 'mnt');
  mkdirSync(mnt);
  const marks = markSystem();
  const result = await mountComposefs(image, mnt, { basedir: [basedir] });
  try {
    say(`\nMounted ${image} on ${mnt} in ${result.ms.toFixed(1)} ms (backing: ${result.backing}, layers: ${result.layers}, API: ${result.api})`);
    for (const line of result.explain) say(`  ${line}`);
    const file = findExternalFile(root);
    if (file) {
      const data = readFileSync(join(mnt, file));
      say(`  read back /${file} through the object store: ${data.length} bytes, fs-verity ${(await import('../fsverity/index.js')).fsverityDigest(data).toString('hex').slice(0, 16)}…`);
    }
    say(`  footprint:\n${describeFootprint(footprintSince(marks)).replace(/^/gm, '    ')}`);
  } finally {
    unmountComposefs(mnt);
  }
  say(`Unmounted; footprint now:\n${describeFootprint(footprintSince(marks)).replace(/^/gm, '    ')}`);
}

/** The path of some regular file whose content lives in the object store. */
function findExternalFile(root: Inode, prefix = ''): string | null {
  for (const d of root.children ?? []) {
    const name = prefix + d.name.toString('latin1');
    if (d.inode.children && !d.hardlink) {
      const found = findExternalFile(d.inode, `${name}/`);
      if (found) return found;
    } else if ((d.inode.mode & S_IFMT) === S_IFREG && d.inode.size > 64 && /^[ -~]+$/.test(name)) return name;
  }
  return null;
}

export async function run(args: string[]): Promise<number> {
  if (args.includes('--help')) {
    say('Usage: cfs demo [TREE]\n\nBuild a sample image from samples/demo.dump, then an image and object store from TREE\n(default /usr/share/doc), mount it hidden when run as root, and print what was made.');
    return 0;
  }
  const { parseDump } = await import('../dumpfile/parse.js');
  const { writeImageWithInfo } = await import('../erofs/writer.js');
  const { fsverityDigest } = await import('../fsverity/index.js');
  const work = mkdtempSync(join(tmpdir(), 'cfs-demo-'));
  try {
    // 1. The sample tree shipped in the repo.
    const sample = join(repoRoot, 'samples', 'demo.dump');
    const tree = parseDump(readFileSync(sample));
    const t0 = performance.now();
    const { image, version } = writeImageWithInfo(tree);
    const ms = performance.now() - t0;
    const imagePath = join(work, 'demo.cfs');
    writeFileSync(imagePath, image);
    say(`Built ${imagePath} from samples/demo.dump`);
    say(`  entries: ${countEntries(tree)}, image: ${image.length} bytes, format version ${version}, built in ${ms.toFixed(1)} ms`);
    say(`  fs-verity digest: ${fsverityDigest(image).toString('hex')}`);

    // 2. A real tree with its object store.
    const source = args[0] ?? '/usr/share/doc';
    if (!existsSync(source) || !statSync(source).isDirectory()) {
      say(`\n(${source} is not a directory here: skipping the real-tree build)`);
      return 0;
    }
    const { scanDirectory } = await import('../scan/index.js');
    const store = join(work, 'objects');
    const t1 = performance.now();
    const { root, stats } = await scanDirectory(source, { digestStore: store, progress: process.stderr.isTTY === true });
    const real = writeImageWithInfo(root);
    const realPath = join(work, 'tree.cfs');
    writeFileSync(realPath, real.image);
    const secs = (performance.now() - t1) / 1000;
    say(`\nBuilt ${realPath} from ${source} with object store ${store}`);
    say(`  entries: ${stats.entries}, files: ${stats.files}, objects stored: ${stats.objectsWritten}, bytes stored: ${human(stats.bytesWritten)}`);
    say(`  image: ${human(real.image.length)}, time: ${secs.toFixed(2)} s`);

    // 3. Mounted hidden, when we may.
    if (process.getuid?.() !== 0) {
      say('\n(not root: skipping the hidden mount)');
      return 0;
    }
    await showHiddenMount(realPath, store, work, root);
    return 0;
  } catch (err) {
    if (err instanceof UserError) throw err;
    throw new UserError(`demo failed: ${(err as Error).message}`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
