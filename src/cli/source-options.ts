/**
 * The options that say how to reach an image (a registry's credentials,
 * certificates, speed floor; the platform of an index), shared by the
 * commands that read or write images: `cfs pull`, `cfs seal`.
 */
import { UsageError } from '../errors.js';
import type { SourceOptions } from '../oci/source.js';
import type { PolicyContext } from '../oci/policy-check.js';
import type { RegistriesD } from '../oci/registries-d.js';
import type { OptionSpec, Parsed } from './args.js';

export const repoOptionSpecs: OptionSpec[] = [
  { name: 'repo', value: true, arg: 'DIR', help: 'the repository (default $CFS_REPO, /var/lib/composefs as root, else $XDG_DATA_HOME/composefs)' },
  { name: 'shared', help: 'use the repository even if others own it or may write it (see README: shared repositories)' },
];

export const sourceOptionSpecs: OptionSpec[] = [
  { name: 'platform', value: true, arg: 'OS/ARCH[/VARIANT]', help: 'the image to take from an index (default: this machine)' },
  { name: 'creds', value: true, arg: 'USER:PASS', help: 'registry credentials' },
  { name: 'authfile', value: true, arg: 'FILE', help: 'registry auth file (default: $REGISTRY_AUTH_FILE, containers auth.json, ~/.docker/config.json)' },
  { name: 'cert-dir', value: true, arg: 'DIR', help: 'CA certificates (ca.crt) for the registry, as containers certs.d' },
  { name: 'tls-verify', value: true, arg: 'BOOL', help: 'check the registry certificate (default true)' },
  { name: 'speed-limit', value: true, arg: 'BYTES', help: 'fail a registry transfer slower than BYTES per second over --speed-time (default $CFS_SPEED_LIMIT, else 1024; 0: never)' },
  { name: 'speed-time', value: true, arg: 'SECONDS', help: 'the period of --speed-limit (default $CFS_SPEED_TIME, else 30)' },
];

/** How an image is admitted: skopeo's and podman's policy options. */
export const policyOptionSpecs: OptionSpec[] = [
  { name: 'policy', value: true, arg: 'FILE', help: 'containers-policy.json(5) to apply (default: $HOME/.config/containers/policy.json, else /etc/containers/policy.json; none: images are accepted, and --explain says so)' },
  { name: 'insecure-policy', help: 'accept any image, without reading a policy (as skopeo --insecure-policy)' },
  { name: 'registries.d', value: true, arg: 'DIR', help: 'containers-registries.d(5) directory saying where signatures are (default: $HOME/.config/containers/registries.d, else /etc/containers/registries.d)' },
];

/** The policy the options name, loaded (a malformed policy is refused here, before any image is read). */
export async function policyContextOf(p: Parsed): Promise<PolicyContext> {
  const file = stringOption(p, 'policy');
  const insecure = p.options.has('insecure-policy');
  if (insecure && file !== undefined) throw new UsageError('--policy and --insecure-policy exclude each other');
  const { loadPolicy } = await import('../oci/policy-check.js');
  const ctx = await loadPolicy({ file, insecure, env: process.env });
  const dir = stringOption(p, 'registries.d');
  let registriesD: Promise<RegistriesD> | undefined;
  // registries.d is read only when a requirement needs signatures.
  ctx.registriesD = () => (registriesD ??= import('../oci/registries-d.js').then(({ loadRegistriesD }) => loadRegistriesD({ dir, env: process.env })));
  return ctx;
}

/** The value of a string option, if given. */
export function stringOption(p: Parsed, name: string): string | undefined {
  const v = p.options.get(name);
  return v === undefined ? undefined : String(v);
}

/** The source options given on the command line (and their environment variables). */
export function sourceOptionsOf(p: Parsed): SourceOptions {
  const tls = p.options.get('tls-verify');
  if (tls !== undefined && tls !== 'true' && tls !== 'false') throw new UsageError(`invalid value for --tls-verify: '${String(tls)}' (true or false)`);
  const str = (k: string) => stringOption(p, k);
  /** A whole number option, else its environment variable (--speed-time: CFS_SPEED_TIME). */
  const count = (k: string, min: number) => {
    const variable = `CFS_${k.toUpperCase().replace(/-/g, '_')}`;
    const [text, from] = str(k) !== undefined ? [str(k), `--${k}`] : [process.env[variable], variable];
    if (text === undefined || text === '') return undefined;
    if (!/^\d+$/.test(text) || Number(text) < min) throw new UsageError(`invalid value for ${from}: '${text}' (a whole number${min > 0 ? ` from ${min}` : ''})`);
    return Number(text);
  };
  return {
    platform: str('platform'),
    creds: str('creds'),
    authFile: str('authfile'),
    certDir: str('cert-dir'),
    tlsVerify: tls === undefined ? undefined : tls === 'true',
    speedLimit: count('speed-limit', 0),
    speedTime: count('speed-time', 1),
  };
}
