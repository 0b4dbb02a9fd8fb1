/**
 * The detached FUSE server (what `cfs mount --fuse` starts unless
 * `--foreground`): mounts, serves, and reports one JSON line on fd 3 — the
 * result once the kernel is served, or the error — then closes it, so the
 * starting process can return. Exits when the mount goes away.
 */
import { closeSync, writeSync } from 'node:fs';
import { ComposefsError } from '../errors.js';
import { serveFuse, type DaemonConfig } from './mount.js';

function report(msg: unknown): void {
  try {
    writeSync(3, `${JSON.stringify(msg)}\n`);
    closeSync(3);
  } catch {
    /* the starter is gone: nobody to tell */
  }
}

async function main(): Promise<void> {
  const config = JSON.parse(process.argv[2]) as DaemonConfig;
  let served: Awaited<ReturnType<typeof serveFuse>>;
  try {
    served = await serveFuse(config.image, config.mountpoint, { ...config.options, foreground: true });
  } catch (err) {
    const code = err instanceof ComposefsError ? err.code : 'internal';
    report({ ok: false, error: { message: err instanceof Error ? err.message : String(err), code } });
    process.exitCode = 1;
    return;
  }
  report({ ok: true, result: served.result });
  try {
    await served.closed;
  } catch {
    process.exitCode = 1;
  }
  process.exit();
}

void main();
