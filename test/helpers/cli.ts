/** Running the built `cfs` command in tests, and the assertion most runs make. */
import assert from 'node:assert/strict';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { cliPath } from './paths.js';

export function cfs(...args: string[]): SpawnSyncReturns<string> {
  return spawnSync(cliPath('cfs'), args, { encoding: 'utf8' });
}

/** Its stdout, once the exit status said success (stderr in the message otherwise). */
export function ok(r: SpawnSyncReturns<string>): string {
  assert.equal(r.status, 0, `exit status; stderr: ${r.stderr}`);
  return r.stdout;
}
