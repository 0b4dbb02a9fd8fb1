/**
 * The reader's fuzz corpus (test/fuzz.test.ts: the same seed, bases and
 * mutations) through the FUSE server's image view (src/fuse/image.ts). Each
 * damaged image is walked the way the kernel walks a FUSE mount (readdir,
 * lookup, getattr, xattrs, readlink and the data of every reachable inode)
 * and held to one set of rules with the reader: the reader refuses the image
 * exactly when some request of the walk fails, a failing request fails with
 * the reader's reason, and nothing but a ComposefsError is ever thrown.
 *
 * Two of the reader's refusals are about the tree as a whole rather than one
 * request: a directory reached twice (a loop) and a name twice in a
 * directory. For those the walk must meet the same thing (the kernel, not the
 * server, stops a loop). The reader's work budget bounds a whole walk; a FUSE
 * request is bounded by itself, so an image refused only for exhausting it
 * (structures overlapping far beyond a valid image) is counted, not compared.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { conformanceBases, generatedBases, mutate, Rng, type Base } from './fuzz-long.js';
import { ImageView, type DirEntry, type Ino } from '../src/fuse/image.js';
import { ImageFormatError, readImage } from '../src/erofs/reader.js';
import { ComposefsError } from '../src/errors.js';
import { S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from '../src/tree/model.js';

const CASES = Number(process.env.CFS_FUZZ_CASES ?? 2400);
const SEED = Number(process.env.CFS_FUZZ_SEED ?? 0x5eed);

interface ViewWalk {
  /** The reason of every request that failed. */
  reasons: Set<string>;
  /** A directory reached under a second name (or its own descendant). */
  loop: boolean;
  /** A name listed twice in one directory. */
  duplicate: boolean;
}

/** Every request the kernel would send for a full walk of the mount; the view must throw nothing but ComposefsErrors. */
function walkView(image: Buffer): ViewWalk {
  const walk: ViewWalk = { reasons: new Set(), loop: false, duplicate: false };
  const request = <T>(fn: () => T): T | undefined => {
    try {
      return fn();
    } catch (e) {
      if (!(e instanceof ComposefsError)) throw new Error(`the view threw ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
      walk.reasons.add(e instanceof ImageFormatError ? e.reason : e.message);
      return undefined;
    }
  };
  const view = request(() => new ImageView(image));
  if (view === undefined) return walk;
  const rootIno = request(() => view.inode(view.rootNid));
  if (rootIno === undefined) return walk;
  request(() => view.xattrs(rootIno));
  const dirs = new Set<number>([view.rootNid]);
  const stack: Ino[] = [rootIno];
  while (stack.length > 0) {
    const dir = stack.pop()!;
    const entries: DirEntry[] = [];
    request(() => view.readdir(dir, 0, (e) => entries.push(e) > 0));
    const names = new Set<string>();
    for (const e of entries) {
      const name = view.name(e);
      if (name.length <= 2 && name.every((c) => c === 0x2e)) continue;
      const key = name.toString('latin1');
      if (names.has(key)) walk.duplicate = true;
      names.add(key);
      request(() => view.lookup(dir, name));
      const ino = request(() => view.inode(e.nid));
      if (ino === undefined) continue;
      const whiteout = request(() => view.isWhiteout(ino));
      if (whiteout !== false) continue;
      view.rdev(ino);
      request(() => view.xattrs(ino));
      const type = ino.mode & S_IFMT;
      if (type === S_IFLNK) request(() => view.symlinkTarget(ino));
      else if (type === S_IFREG) request(() => view.data(ino));
      else if (type === S_IFDIR) {
        if (dirs.has(e.nid)) walk.loop = true;
        else {
          dirs.add(e.nid);
          stack.push(ino);
        }
      }
    }
  }
  return walk;
}

/** What disagrees between the reader and the view on one image (null: nothing). */
function compare(image: Buffer): { disagreement: string | null; budgetOnly: boolean; refused: boolean } {
  let refusal: ImageFormatError | null = null;
  try {
    readImage(image);
  } catch (e) {
    if (!(e instanceof ImageFormatError)) throw e;
    refusal = e;
  }
  const walk = walkView(image);
  const seen = [...walk.reasons].map((r) => JSON.stringify(r)).join(', ');
  if (refusal === null) {
    if (walk.reasons.size > 0 || walk.loop || walk.duplicate) {
      return { disagreement: `the reader took the image, the view refused: ${seen}${walk.loop ? ' (loop)' : ''}${walk.duplicate ? ' (duplicate)' : ''}`, budgetOnly: false, refused: false };
    }
    return { disagreement: null, budgetOnly: false, refused: false };
  }
  const code = (refusal as ComposefsError).code;
  if (code === 'overlap') return { disagreement: null, budgetOnly: true, refused: true };
  if (code === 'loop' ? walk.loop : code === 'duplicate' ? walk.duplicate : walk.reasons.has(refusal.reason)) {
    return { disagreement: null, budgetOnly: false, refused: true };
  }
  return { disagreement: `the reader refused (${code}: ${JSON.stringify(refusal.reason)}), the view ${seen ? `refused only ${seen}` : 'refused nothing'}`, budgetOnly: false, refused: true };
}

test(`fuzz through the FUSE view: ${CASES} damaged images refused by the view exactly when the reader refuses them, for the same reason`, { timeout: 600_000 }, async (t) => {
  const small = (await conformanceBases()).filter((b: Base) => b.image.length <= 160 * 1024);
  const bases = [...generatedBases(SEED, 16), ...small];
  // The corpus of test/fuzz.test.ts: same seed, same bases, same mutations in the same order.
  const rnd = new Rng(SEED);
  const failures: string[] = [];
  let refused = 0;
  let budgetOnly = 0;
  for (let i = 0; i < CASES; i++) {
    const base = bases[i % bases.length];
    const { image, what } = mutate(rnd, base);
    try {
      const r = compare(image);
      if (r.refused) refused++;
      if (r.budgetOnly) budgetOnly++;
      if (r.disagreement !== null) failures.push(`case ${i} (${base.name}: ${what}): ${r.disagreement}`);
    } catch (e) {
      failures.push(`case ${i} (${base.name}: ${what}): ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    }
  }
  t.diagnostic(`${CASES} cases: ${refused} refused by the reader (${budgetOnly} for its whole-walk work budget alone), ${failures.length} disagreements`);
  assert.deepEqual(failures.slice(0, 5), []);
  assert.ok(refused > CASES / 20 && refused < CASES - CASES / 20, 'the mutations should produce both readable and refused images');
});
