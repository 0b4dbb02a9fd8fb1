/**
 * `cfs verify [--repo DIR] [--allow-unsealed] [--json] NAME`: check a named
 * image against the seal its pull checked, offline (src/repo/verify.ts).
 * One line per problem on stderr, then exit 1; all well: one line on
 * stdout, exit 0. An unsealed name is a problem unless --allow-unsealed
 * (its image is then still checked against its record and rebuilt).
 */
import { formatHelp, parseArgs, type OptionSpec } from './args.js';
import { UsageError } from '../errors.js';
import { printable, printableJson } from '../printable.js';

const specs: OptionSpec[] = [
  { name: 'repo', value: true, arg: 'DIR', help: 'the repository' },
  { name: 'shared', help: 'use the repository even if others own it or may write it (see README: shared repositories)' },
  { name: 'allow-unsealed', help: 'an unsealed name passes when its image matches its record and its layers (default: it fails)' },
  { name: 'trust-cert', value: true, arg: 'FILE|DIR', help: 'also check the seal\'s composefs signatures (kept at the pull) against these certificates; an unsigned seal then fails' },
  { name: 'json', help: 'print one JSON object' },
  { name: 'help', short: 'h', help: 'show this help' },
];

export async function run(args: string[], prog: string): Promise<number> {
  const p = parseArgs(args, specs);
  const usage = `${prog} [--repo DIR] [--allow-unsealed] [--trust-cert FILE|DIR] [--json] NAME`;
  if (p.options.has('help')) {
    process.stdout.write(
      formatHelp(
        usage,
        'Check a named image against its seal, offline: the stored image has the sealed merged digest, the stored config the\nsealed config digest, the artifact (or the inline manifest) still says so of the recorded manifest, and the image\nrebuilt from the stored layer records is the stored image. Exit 0: all well; 1: a problem (one line each).',
        specs,
      ),
    );
    return 0;
  }
  if (p.positional.length !== 1) throw new UsageError(`one name expected (usage: ${usage})`);
  const trustCert = p.options.get('trust-cert');
  const trustCertificates = trustCert !== undefined ? (await import('../oci/seal-signatures.js')).loadTrustedCertificates(String(trustCert)) : undefined;
  const [{ Repository }, { verifyName }] = await Promise.all([import('../repo/repository.js'), import('../repo/verify.js')]);
  const dir = p.options.get('repo');
  const repo = Repository.open(dir === undefined ? undefined : String(dir), { create: false, shared: p.options.has('shared') });
  try {
    const r = await verifyName(repo, p.positional[0], { allowUnsealed: p.options.has('allow-unsealed'), ...(trustCertificates ? { trustCertificates } : {}) });
    if (p.options.has('json')) process.stdout.write(`${printableJson(r)}\n`);
    else {
      for (const problem of r.problems) process.stderr.write(`${prog}: ${printable(problem.message)}\n`);
      if (r.ok) {
        const signers = [...new Set((r.signatures ?? []).map((v) => v.subject))];
        const what = `${r.seal ? `sealed ${r.seal.mode === 'artifact' ? `by artifact ${r.seal.artifact}` : 'inline'}, fsverity-${r.seal.algorithm} ${r.seal.merged}` : 'not sealed'}${r.signatures ? `; signed (${r.signatures.map((v) => v.role).join(', ')}) by "${signers.join('", "')}"` : ''}`;
        process.stdout.write(`${printable(r.name)}: ok (${what}; checked ${r.checked.join(', ')})\n`);
      }
    }
    return r.ok ? 0 : 1;
  } finally {
    repo.close();
  }
}
