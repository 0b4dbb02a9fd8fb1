/**
 * The Node options a worker thread starts with. By default a thread takes
 * the parent's (process.execArgv), and some of those are about the parent's
 * entry point only: under `node --input-type=module -e CODE` every thread
 * fails at its start ("--input-type can only be used with string input via
 * --eval, --print, or STDIN"), a library used from such a script with it.
 * The parent's other options (heap, source maps, loaders) still apply.
 */
const ENTRY_OPTIONS_WITH_VALUE = new Set(['-e', '--eval', '-p', '--print', '--input-type']);
const ENTRY_OPTIONS = /^(?:--input-type|--eval|--print)=/;

export function threadExecArgv(parent: readonly string[] = process.execArgv): string[] {
  const out: string[] = [];
  for (let i = 0; i < parent.length; i++) {
    const arg = parent[i]!;
    if (ENTRY_OPTIONS_WITH_VALUE.has(arg)) {
      i++; // and its value
      continue;
    }
    if (ENTRY_OPTIONS.test(arg) || arg === '-pe' || arg === '-ep') continue;
    out.push(arg);
  }
  return out;
}
