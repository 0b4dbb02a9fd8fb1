/** Temporary mount directories (path layers only). */
import { statSync } from 'node:fs';
import { tmpdir } from 'node:os';

/** Prefix of our temporary mount directories; the pid follows, so leftovers of dead processes can be told apart. */
export const TEMP_PREFIX = '.composefs-mnt-';

/** Where temporary mount directories go: /run (a tmpfs, emptied at boot) when root can write there, else the temp dir. */
export function temporaryBase(): string {
  try {
    if (statSync('/run').isDirectory() && process.getuid?.() === 0) return '/run';
  } catch {
    /* no /run */
  }
  return tmpdir();
}
