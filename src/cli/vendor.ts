/**
 * The npm libraries only signature work needs, bundled apart from the CLI by
 * scripts/bundle.mjs (dist/src/cli/vendor.cjs) and loaded by bin/load.js on
 * first use: OpenPGP.js (simple signing), yaml (registries.d) and
 * @noble/ciphers' secretbox (cosign's encrypted keys). Only the CLI bundle
 * reads this module; the library imports the packages directly.
 */
export * as openpgp from 'openpgp';
export * as yaml from 'yaml';
export * as nobleSalsa from '@noble/ciphers/salsa.js';
