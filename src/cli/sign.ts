/**
 * `cfs sign SOURCE`: sign an image where it is, as `skopeo copy --sign-by`
 * signs what it copies: a simple signing signature (an OpenPGP key) written
 * where containers-registries.d(5) says, or a sigstore signature (a cosign
 * private key) pushed as an attachment. Prints where each signature went.
 */
import { formatHelp, parseArgs, type OptionSpec } from './args.js';
import { UsageError } from '../errors.js';
import { printable, printableJson } from '../printable.js';
import { sourceOptionSpecs, sourceOptionsOf, stringOption } from './source-options.js';

const specs: OptionSpec[] = [
  ...sourceOptionSpecs,
  { name: 'sign-by-key', value: true, arg: 'FILE', help: 'an armored OpenPGP secret key: write a simple signing signature (lookaside-staging, else a file:// lookaside, from registries.d)' },
  { name: 'sign-by-sigstore-private-key', value: true, arg: 'FILE', help: 'a cosign private key (ENCRYPTED SIGSTORE PRIVATE KEY): push a sigstore signature (needs use-sigstore-attachments in registries.d)' },
  { name: 'sign-passphrase-file', value: true, arg: 'FILE', help: 'the key\'s passphrase: the file\'s first line' },
  { name: 'sign-identity', value: true, arg: 'REF', help: 'the docker reference the signature claims (default: SOURCE\'s)' },
  { name: 'registries.d', value: true, arg: 'DIR', help: 'containers-registries.d(5) directory (default: $HOME/.config/containers/registries.d, else /etc/containers/registries.d)' },
  { name: 'explain', help: 'say on stderr what was signed and where it was written' },
  { name: 'json', help: 'print a JSON record' },
  { name: 'help', short: 'h', help: 'show this help' },
];

/** A key or passphrase file the user named: small, regular, read whole. */
async function small(path: string, what: string): Promise<{ what: string; bytes: Buffer }> {
  const { readUserFile } = await import('../oci/user-files.js');
  return { what: path, bytes: (await readUserFile(path, 1024 * 1024, what))! };
}

export async function run(args: string[], prog: string): Promise<number> {
  const p = parseArgs(args, specs);
  const usage = `${prog} (--sign-by-key FILE | --sign-by-sigstore-private-key FILE) [OPTIONS] SOURCE`;
  if (p.options.has('help')) {
    process.stdout.write(
      formatHelp(
        usage,
        'Sign an image where it is, as skopeo copy --sign-by / --sign-by-sigstore-private-key sign what they copy.\nSOURCE: docker://HOST[:PORT]/REPO[:TAG|@sha256:…]. For an index, the index and this machine\'s image (or --platform\'s) are signed.\nPrints where each signature went.',
        specs,
      ),
    );
    return 0;
  }
  if (p.positional.length !== 1) throw new UsageError(`one source expected (usage: ${usage})`);
  const gpg = stringOption(p, 'sign-by-key');
  const sigstore = stringOption(p, 'sign-by-sigstore-private-key');
  if ((gpg === undefined) === (sigstore === undefined)) throw new UsageError(`give one of --sign-by-key and --sign-by-sigstore-private-key (usage: ${usage})`);
  const passFile = stringOption(p, 'sign-passphrase-file');
  const passphrase = passFile === undefined ? undefined : (await small(passFile, 'passphrase file')).bytes.toString('utf8').split('\n')[0]!.replace(/\r$/, '');
  const sourceOptions = sourceOptionsOf(p);
  const [{ loadRegistriesD }, { signImage }] = await Promise.all([import('../oci/registries-d.js'), import('../oci/sign.js')]);
  const registriesD = await loadRegistriesD({ dir: stringOption(p, 'registries.d'), env: process.env });
  const explain = p.options.has('explain') ? (line: string) => process.stderr.write(`${printable(line)}\n`) : undefined;
  const result = await signImage(p.positional[0]!, {
    ...sourceOptions,
    ...(gpg !== undefined ? { openPgpKey: await small(gpg, 'key file') } : { sigstoreKey: await small(sigstore!, 'key file') }),
    passphrase,
    identity: stringOption(p, 'sign-identity'),
    registriesD,
    explain,
  });
  if (p.options.has('json')) process.stdout.write(`${printableJson(result)}\n`);
  else for (const s of result.signed) process.stdout.write(`${printable(s.written)}\n`);
  return 0;
}
