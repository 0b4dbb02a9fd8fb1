/**
 * Reads every layer of an image through openSource, checked and discarded:
 * the registry client's transfer alone, run as its own process by
 * bench/registry.ts. Usage: node registry-read.js REFERENCE CREDS CERT_DIR
 */
import { openSource } from '../src/oci/transports.js';

const [reference, creds, certDir] = process.argv.slice(2);
const source = await openSource(reference, { creds, certDir });
try {
  const image = await source.resolve();
  let total = 0;
  await Promise.all(
    image.layers.map(async (layer) => {
      for await (const chunk of await source.openBlob(layer)) total += (chunk as Buffer).length;
    }),
  );
  process.stdout.write(`${total}\n`);
} finally {
  await source.close();
}
