/**
 * `cfs seal [--inline] SOURCE [DEST]`: seal an image (the composefs OCI
 * sealing spec). The digests come from the repository (the image is pulled
 * first unless a name already holds its manifest in canonical form). By
 * default an artifact carrying them is pushed next to SOURCE, whose manifest
 * stays as it was; prints the artifact's digest. `--inline` pushes a new
 * manifest carrying them to DEST (default SOURCE's tag) and prints its digest.
 */
import { algorithmOption, formatHelp, parseArgs, type OptionSpec } from './args.js';
import { UsageError } from '../errors.js';
import { printable, printableJson } from '../printable.js';
import { policyContextOf, policyOptionSpecs, repoOptionSpecs, sourceOptionSpecs, sourceOptionsOf, stringOption } from './source-options.js';

const specs: OptionSpec[] = [
  ...repoOptionSpecs,
  ...sourceOptionSpecs,
  ...policyOptionSpecs,
  { name: 'inline', help: 'push a new manifest carrying the seal to DEST (default: SOURCE\'s tag) instead of an artifact beside SOURCE' },
  { name: 'algorithm', value: true, arg: 'ALG', help: 'fs-verity algorithm of the seal: sha256 or sha512 (must be the repository\'s; chooses it for a new one)' },
  { name: 'keep-user-xattrs', help: 'seal the canonical form that keeps user.* xattrs (a pull not told which variant tries this one when the other does not match)' },
  { name: 'name', value: true, arg: 'NAME', help: 'the name an image pulled for sealing gets (default: the source\'s repository and tag)' },
  { name: 'sign-key', value: true, arg: 'KEY', help: 'sign the seal with this private key (PEM or DER, RSA or EC): PKCS#7 over each digest, as fsverity sign makes (needs --sign-cert)' },
  { name: 'sign-cert', value: true, arg: 'CERT', help: 'the signing key\'s X.509 certificate (PEM or DER); its issuer and serial name the signer' },
  { name: 'sign-passphrase-file', value: true, arg: 'FILE', help: 'the passphrase of an encrypted --sign-key (its first line)' },
  { name: 'explain', help: 'say on stderr where each digest came from and what was written where' },
  { name: 'json', help: 'print a JSON record instead of the digest' },
  { name: 'help', short: 'h', help: 'show this help' },
];

export async function run(args: string[], prog: string): Promise<number> {
  const p = parseArgs(args, specs);
  const usage = `${prog} [OPTIONS] SOURCE  |  ${prog} --inline [OPTIONS] SOURCE [DEST]`;
  if (p.options.has('help')) {
    process.stdout.write(
      formatHelp(
        usage,
        'Seal an image: the fs-verity digest of its canonical composefs image and of its config, carried in OCI metadata.\nSOURCE, DEST: docker://HOST[:PORT]/REPO[:TAG|@sha256:…] or oci:DIR[:REF].\nBy default an artifact (application/vnd.composefs.metadata.v1) whose subject is SOURCE\'s manifest is pushed beside it; prints its digest.\nWith --inline, a copy of SOURCE\'s manifest with the seal in its annotations is pushed to DEST; prints its digest.',
        specs,
      ),
    );
    return 0;
  }
  const inline = p.options.has('inline');
  if (p.positional.length < 1) throw new UsageError(`no source given (usage: ${usage})`);
  const max = inline ? 2 : 1;
  if (p.positional.length > max) throw new UsageError(`too many arguments: '${p.positional[max]}'${inline ? '' : ' (a DEST is for --inline)'} (usage: ${usage})`);
  const [reference, dest] = p.positional;
  const algorithm = algorithmOption(p);
  const sourceOptions = sourceOptionsOf(p);
  const explain = p.options.has('explain') ? (line: string) => process.stderr.write(`${printable(line)}\n`) : undefined;
  const signKey = stringOption(p, 'sign-key');
  const signCert = stringOption(p, 'sign-cert');
  const passphraseFile = stringOption(p, 'sign-passphrase-file');
  if ((signKey === undefined) !== (signCert === undefined)) throw new UsageError(`--sign-key and --sign-cert go together (${signKey === undefined ? '--sign-cert' : '--sign-key'} given alone)`);
  if (passphraseFile !== undefined && signKey === undefined) throw new UsageError('--sign-passphrase-file is for --sign-key');
  // Read and checked before anything is pulled or pushed.
  const sign = signKey !== undefined ? (await import('../oci/seal-signatures.js')).loadSigningIdentity(signKey, signCert!, passphraseFile) : undefined;

  const policy = await policyContextOf(p);
  const [{ Repository }, { sealImage }] = await Promise.all([import('../repo/repository.js'), import('../repo/seal.js')]);
  const repo = Repository.open(stringOption(p, 'repo'), { shared: p.options.has('shared'), algorithm });
  const abort = new AbortController();
  const onSignal = () => abort.abort();
  process.once('SIGINT', onSignal);
  try {
    const result = await sealImage(repo, reference, {
      ...sourceOptions,
      inline,
      dest,
      algorithm,
      keepUserXattrs: p.options.has('keep-user-xattrs'),
      name: stringOption(p, 'name'),
      ...(sign ? { sign } : {}),
      explain,
      policy,
      signal: abort.signal,
    });
    if (p.options.has('json')) process.stdout.write(`${printableJson({ ...result, repository: repo.root })}\n`);
    else process.stdout.write(`${(result.inline ?? result.artifact)!.digest}\n`);
    return 0;
  } finally {
    process.removeListener('SIGINT', onSignal);
    repo.close();
  }
}
