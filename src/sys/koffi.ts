/**
 * koffi, loaded on first use: loading it costs ~15 ms, which a command that
 * only hashes a buffer (`mkcomposefs --print-digest`) should not pay.
 */
import type * as KoffiModule from 'koffi';
import { createRequire } from 'node:module';

let loaded: typeof KoffiModule | null = null;

/**
 * koffi's own entry point spends ~6 ms working out which prebuilt binary to
 * load; asking for this platform's package directly skips that. Any other
 * platform goes through koffi's entry point as usual.
 */
export function getKoffi(): typeof KoffiModule {
  if (loaded) return loaded;
  const require = createRequire(import.meta.url);
  try {
    loaded = require(`@koromix/koffi-${process.platform}-${process.arch}`) as typeof KoffiModule;
  } catch {
    loaded = require('koffi') as typeof KoffiModule;
  }
  return loaded;
}
