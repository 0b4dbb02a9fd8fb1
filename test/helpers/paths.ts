import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root (tests run from dist/test/). */
export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/** ../shared/conformance beside the clone, or null with the reason to skip. */
export function conformanceDir(): string | null {
  const dir = process.env.CFS_CONFORMANCE ?? join(repoRoot, '..', 'shared', 'conformance');
  return existsSync(dir) ? dir : null;
}

export const NO_CONFORMANCE = 'no ../shared/conformance beside this clone: conformance vectors skipped';

export function cliPath(name: string): string {
  return join(repoRoot, 'bin', `${name}.js`);
}

export const isRoot = process.getuid?.() === 0;
