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

/**
 * A run that failed by itself (not killed), with one line on stderr that
 * matches `pattern` and no stack trace: what every error a user can cause
 * must give. Returns that line.
 */
export function oneLineError(r: { status: number | null; stdout?: string; stderr: string }, pattern: RegExp): string {
  assert.notEqual(r.status, 0, `should fail; stdout: ${r.stdout ?? ''}`);
  assert.notEqual(r.status, null, `should end by itself; stderr: ${r.stderr.slice(0, 2000)}`);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `one line: ${r.stderr.slice(0, 2000)}`);
  assert.match(lines[0], pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at |internal error/);
  return lines[0];
}
