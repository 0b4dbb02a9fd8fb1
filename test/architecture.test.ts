/**
 * The architecture of src/ (docs: the developer guide), checked on the
 * sources themselves: every import (static `import … from`, `export … from`,
 * side-effect `import '…'`, dynamic and type `import('…')`) of every
 * src/**\/*.ts, read by TypeScript's own import scanner (comments and
 * strings are not imports), and the constants that must be defined once.
 * Each failure names the offending edges or files.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join, posix, relative } from 'node:path';
import ts from 'typescript';
import { repoRoot } from './helpers/paths.js';

/**
 * Import cycles other changes are removing, each tolerated only as it is:
 * the exact set of folders (a folder-level cycle) or files (a file-level
 * one) making it up. A cycle that grows, or any other, fails; so does an
 * entry whose cycle is gone (remove the entry then).
 */
const KNOWN_CYCLES_BEING_REMOVED: ReadonlyArray<{ nodes: readonly string[]; why: string }> = [];

/** The pure core: no I/O folder may be reached from it. */
const CORE = ['src/tree', 'src/dumpfile', 'src/erofs', 'src/fsverity'];
const IO = ['src/scan', 'src/store', 'src/repo', 'src/oci', 'src/mount', 'src/fuse', 'src/service', 'src/cli', 'src/output'];


const srcDir = join(repoRoot, 'src');

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...sourceFiles(p));
    else if (e.isFile() && e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

interface Edge {
  from: string;
  to: string;
}

/** Every import between files of src/, as repository-relative paths. */
function importGraph(): { files: string[]; edges: Edge[] } {
  const files = sourceFiles(srcDir).map((f) => relative(repoRoot, f).split('\\').join('/'));
  const known = new Set(files);
  const edges: Edge[] = [];
  for (const from of files) {
    const text = readFileSync(join(repoRoot, from), 'utf8');
    for (const { fileName } of ts.preProcessFile(text, true, true).importedFiles) {
      if (!fileName.startsWith('.')) continue; // node:, packages
      const target = posix.normalize(posix.join(posix.dirname(from), fileName)).replace(/\.js$/, '.ts');
      assert.ok(known.has(target), `${from} imports ${fileName}, which is not a file of src/`);
      if (!edges.some((e) => e.from === from && e.to === target)) edges.push({ from, to: target });
    }
  }
  return { files, edges };
}

/** The unit a file belongs to for folder-level rules: its first folder under src/ (src/oci/registry/x.ts: src/oci), or the file itself at the top. */
function folderOf(file: string): string {
  const parts = file.split('/');
  return parts.length > 2 ? `${parts[0]}/${parts[1]}` : file;
}

/** Strongly connected components with more than one node or a self-loop (Tarjan). */
function cycles(nodes: string[], edges: Edge[]): string[][] {
  const out = new Map<string, string[]>();
  for (const e of edges) out.set(e.from, [...(out.get(e.from) ?? []), e.to]);
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  let next = 0;
  const visit = (v: string) => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of out.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const scc: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1 || (out.get(v) ?? []).includes(v)) found.push(scc.sort());
    }
  };
  for (const v of nodes) if (!index.has(v)) visit(v);
  return found;
}

function describeCycle(scc: string[], edges: Edge[]): string {
  const inside = new Set(scc);
  return `${scc.join(', ')}:\n${edges
    .filter((e) => inside.has(e.from) && inside.has(e.to))
    .map((e) => `    ${e.from} -> ${e.to}`)
    .join('\n')}`;
}

function folderEdges(edges: Edge[]): Edge[] {
  const out: Edge[] = [];
  for (const e of edges) {
    const from = folderOf(e.from);
    const to = folderOf(e.to);
    if (from !== to && !out.some((x) => x.from === from && x.to === to)) out.push({ from, to });
  }
  return out;
}

const sameSet = (a: readonly string[], b: readonly string[]) => a.length === b.length && [...a].sort().every((x, i) => x === [...b].sort()[i]);

/** Whether a cycle (its files or folders) is exactly one of those being removed. */
function known(scc: string[]): boolean {
  return KNOWN_CYCLES_BEING_REMOVED.some((k) => sameSet(k.nodes, scc));
}

function fileCycles(): string[][] {
  const { files, edges } = importGraph();
  return cycles(files, edges);
}

function folderCycles(): string[][] {
  const { files, edges } = importGraph();
  return cycles([...new Set(files.map(folderOf))], folderEdges(edges));
}

const within = (file: string, folder: string) => file.startsWith(`${folder}/`);
const show = (edges: Edge[]) => edges.map((e) => `  ${e.from} -> ${e.to}`).join('\n');

test('architecture: the import scanner sees every form of import, and only imports', () => {
  const text = [
    "import a from './a.js';",
    "import type { B } from './b.js';",
    "export * from './c.js';",
    "export { d } from './d.js';",
    "import './e.js';",
    "const f = await import('./f.js');",
    "type G = import('./g.js').G;",
    'import {\n  h,\n} from "./h.js";',
    "// import x from './comment.js';",
    "const s = \"import('./string.js')\";",
  ].join('\n');
  const found = ts.preProcessFile(text, true, true).importedFiles.map((f) => f.fileName);
  assert.deepEqual(found, ['./a.js', './b.js', './c.js', './d.js', './e.js', './f.js', './g.js', './h.js']);
});

test('architecture: no import cycle between files of src/', () => {
  const { files, edges } = importGraph();
  assert.ok(files.length > 50 && edges.length > 100, `the scan found ${files.length} files and ${edges.length} imports`);
  const bad = fileCycles().filter((c) => !known(c));
  assert.equal(bad.length, 0, `file-level import cycles:\n${bad.map((c) => `  ${describeCycle(c, edges)}`).join('\n')}`);
});

test('architecture: no import cycle between folders of src/', () => {
  const { edges } = importGraph();
  const bad = folderCycles().filter((c) => !known(c));
  const explain = (scc: string[]) => {
    const inside = new Set(scc);
    return `  ${scc.join(' <-> ')}, through:\n${show(edges.filter((e) => inside.has(folderOf(e.from)) && inside.has(folderOf(e.to)) && folderOf(e.from) !== folderOf(e.to)))}`;
  };
  assert.equal(bad.length, 0, `folder-level import cycles:\n${bad.map(explain).join('\n')}`);
});

test('architecture: every cycle tolerated as being removed still exists (else its entry goes)', () => {
  const all = [...fileCycles(), ...folderCycles()];
  const gone = KNOWN_CYCLES_BEING_REMOVED.filter((k) => !all.some((c) => sameSet(k.nodes, c)));
  assert.deepEqual(gone.map((k) => k.nodes.join(' <-> ')), [], 'remove these from KNOWN_CYCLES_BEING_REMOVED');
});

test('architecture: nothing outside src/cli imports src/cli', () => {
  const bad = importGraph().edges.filter((e) => within(e.to, 'src/cli') && !within(e.from, 'src/cli'));
  assert.equal(bad.length, 0, `imports of the CLI from the library:\n${show(bad)}`);
});

test('architecture: src/mount imports nothing of src/fuse (FUSE is registered by the entry points)', () => {
  const bad = importGraph().edges.filter((e) => within(e.from, 'src/mount') && within(e.to, 'src/fuse'));
  assert.equal(bad.length, 0, `src/mount -> src/fuse:\n${show(bad)}`);
});

test('architecture: the pure core (tree, dumpfile, erofs, fsverity) imports no I/O folder', () => {
  const bad = importGraph().edges.filter((e) => CORE.some((c) => within(e.from, c)) && IO.some((d) => within(e.to, d)));
  assert.equal(bad.length, 0, `core -> I/O:\n${show(bad)}`);
});

test('architecture: the file-type bits and the EROFS magic are defined once (src/tree/model.ts, src/erofs/format.ts)', () => {
  const rules = [
    { what: 'S_IFMT and the other S_IF* constants', home: 'src/tree/model.ts', pattern: /\bS_IF[A-Z]+\s*=(?!=)|0o170000\b|\b0170000\b|0xf000\b/i },
    { what: 'the EROFS super block magic', home: 'src/erofs/format.ts', pattern: /0xe0f5e1e2\b/i },
  ];
  const files = sourceFiles(srcDir).map((f) => relative(repoRoot, f).split('\\').join('/'));
  const bad: string[] = [];
  for (const rule of rules) {
    let home = 0;
    for (const f of files) {
      const lines = readFileSync(join(repoRoot, f), 'utf8').split('\n');
      for (const [i, line] of lines.entries()) {
        if (!rule.pattern.test(line)) continue;
        if (f === rule.home) home++;
        else bad.push(`  ${f}:${i + 1}: ${rule.what} again: ${line.trim()}`);
      }
    }
    assert.ok(home > 0, `${rule.home} no longer defines ${rule.what}`);
  }
  assert.equal(bad.length, 0, `defined or spelled out outside their home:\n${bad.join('\n')}`);
});
