/**
 * `cfs pull SOURCE [NAME]`: a container image (registry, OCI layout or
 * archive) into the repository as one composefs image under a name. Prints
 * the image's fs-verity digest (`--json`: a record). On a terminal, unless
 * `--quiet`, one progress line on stderr: layers done, bytes fetched of the
 * total and the rate, then the build.
 */
import { algorithmOption, formatHelp, parseArgs, type OptionSpec } from './args.js';
import { UsageError } from '../errors.js';
import type { PullEvent } from '../repo/pull.js';
import { humanBytes } from '../units.js';
import { StatusLine } from '../output/status-line.js';
import { printable, printableJson } from '../printable.js';
import { explainForm } from './form.js';
import { getSystemErrorName } from 'node:util';
import { policyContextOf, policyOptionSpecs, repoOptionSpecs, sourceOptionSpecs, sourceOptionsOf, stringOption } from './source-options.js';

const specs: OptionSpec[] = [
  ...repoOptionSpecs,
  { name: 'algorithm', value: true, arg: 'ALG', help: 'fs-verity algorithm of a new repository: sha256 (default) or sha512; must be the existing one\'s otherwise' },
  ...sourceOptionSpecs,
  ...policyOptionSpecs,
  { name: 'require-seal', help: 'refuse an image without a composefs seal (inline, or an artifact among its referrers)' },
  { name: 'trust-cert', value: true, arg: 'FILE|DIR', help: 'require composefs signatures (PKCS#7, as fsverity sign makes) on the seal, each made by one of these X.509 certificates (a PEM or DER file, or a directory of *.pem, *.crt, *.der), checked as soon as the seals are found (a refusal stops the fetch; nothing is named)' },
  { name: 'form', value: true, arg: 'FORM', help: 'canonical: the composefs-rs canonical image a seal digests (refused for an image without /usr); unpacked: the rootfs umoci raw unpack writes; auto (default): canonical when the image has that form, else unpacked' },
  { name: 'keep-user-xattrs', help: 'canonical form: keep user.* xattrs as well as security.capability (as cfsctl --keep-user-xattrs)' },
  { name: 'explain', help: 'say on stderr which policy accepted the image and by which signatures, which form was built (and why not canonical), and which seals were looked for, found and checked' },
  { name: 'quiet', short: 'q', help: 'no progress' },
  { name: 'json', help: 'print a JSON record instead of the digest' },
  { name: 'help', short: 'h', help: 'show this help' },
];


/**
 * The progress line of a pull on a terminal: layers done, bytes fetched of
 * the total and the rate, then each layer in flight with its bytes of its
 * size; then the build. Redrawn ten times a second and at once on every
 * change of state (a layer started or done, the build begun), so that even a
 * pull shorter than a tick shows each stage.
 */
class PullProgress {
  private layers: { size: number; bytes: number; state: 'queued' | 'fetching' | 'done' | 'cached' }[] = [];
  private phase: 'resolving' | 'waiting' | 'fetching' | 'building' = 'resolving';
  private fetchStart = Date.now();
  private readonly status: StatusLine;

  constructor(out: NodeJS.WriteStream) {
    this.status = new StatusLine(() => this.text(), out);
    this.status.begin();
  }

  on(e: PullEvent): void {
    switch (e.type) {
      case 'resolved':
        this.layers = e.layers.map((l) => ({ size: l.size, bytes: 0, state: l.cached ? 'cached' : 'queued' }));
        this.phase = 'fetching';
        this.fetchStart = Date.now();
        break;
      case 'waiting-for-lock':
        this.phase = 'waiting';
        break;
      case 'layer-start':
        this.layers[e.index].state = 'fetching';
        break;
      case 'layer-bytes':
        this.layers[e.index].bytes += e.bytes;
        return; // drawn at the next tick
      case 'layer-done':
        if (!e.cached) this.layers[e.index].state = 'done';
        break;
      case 'building':
        this.phase = 'building';
        break;
      case 'sealed':
      case 'admitted':
      case 'signatures':
      case 'kernel-signature':
      case 'done':
        return;
    }
    this.status.draw();
  }

  /** The line as it stands. */
  private text(): string {
    switch (this.phase) {
      case 'resolving':
        return 'resolving the image';
      case 'waiting':
        return 'waiting for the repository lock (a gc is running)';
      case 'building':
        return `building the image from ${this.layers.length} layer${this.layers.length === 1 ? '' : 's'}`;
      case 'fetching': {
        const todo = this.layers.filter((l) => l.state !== 'cached');
        const total = todo.reduce((a, l) => a + l.size, 0);
        const got = todo.reduce((a, l) => a + l.bytes, 0);
        const secs = (Date.now() - this.fetchStart) / 1000;
        const done = this.layers.filter((l) => l.state === 'done' || l.state === 'cached').length;
        const head = `layers ${done}/${this.layers.length}, ${humanBytes(got)}/${humanBytes(total)}, ${humanBytes(secs > 0 ? got / secs : 0)}/s`;
        const flight = this.layers.flatMap((l, i) => (l.state === 'fetching' ? [`#${i + 1} ${humanBytes(l.bytes)}/${humanBytes(l.size)}`] : []));
        return flight.length > 0 ? `${head} · ${flight.join(', ')}` : head;
      }
    }
  }

  end(): void {
    this.status.end();
  }
}

/** What `--explain` says of the seals: where they were looked for, what was found, what was checked. */
function sealLines(e: Extract<PullEvent, { type: 'sealed' }>): string[] {
  const where = e.via === null ? 'in the manifest (this transport has no referrers)' : `in the manifest and among its referrers (${e.via === 'referrers-api' ? 'the registry\'s referrers API' : e.via === 'tag-schema' ? 'the referrers tag: the registry has no referrers API' : 'the layout\'s index.json'})`;
  const lines = [`seal: looked for ${where}`];
  if (e.found.length === 0) lines.push('seal: none found: the image is not sealed');
  for (const s of e.found) {
    const signed = s.signatures ? `; signed: ${Object.keys(s.signatures).join(', ')}` : '';
    lines.push(`seal: found ${s.mode === 'artifact' ? `artifact ${s.artifact}` : 'inline'}, fsverity-${s.algorithm}: merged ${s.merged}${s.config ? `, config ${s.config}` : ''}${s.manifest ? `, manifest ${s.manifest}` : ''}${signed}`);
  }
  if (e.found.some((s) => s.signatures) && !e.checked?.signedBy) lines.push('signature: not checked (no --trust-cert given); the signatures are kept with the name for cfs verify --trust-cert');
  if (e.checked) lines.push(`seal: checked: the image built has the merged digest${e.checked.config ? ', the config has the config digest' : ''}${e.checked.manifest ? ', the manifest has the manifest digest' : ''} (fsverity-${e.checked.algorithm})`);
  for (const s of e.unchecked) lines.push(`seal: not checked: ${s.mode === 'artifact' ? `artifact ${s.artifact}` : 'inline'} is in ${s.algorithm}, another algorithm than the repository's`);
  return lines;
}

/** What `--explain` says of the signatures: which certificate verified each, and whether the kernel checks them too. */
function signatureLines(e: Extract<PullEvent, { type: 'signatures' | 'kernel-signature' }>): string[] {
  if (e.type === 'signatures') return e.verified.map((v) => `signature: ${v.role} verified in userspace, signed by "${v.subject}" (certificate sha256 ${v.fingerprint})`);
  if (e.verity.state === 'enabled') return ['signature: fs-verity enabled on the merged image with its signature: the kernel checked it too'];
  if (e.verity.state === 'failed') {
    let name = `errno ${e.verity.errno}`;
    try {
      name = getSystemErrorName(-e.verity.errno);
    } catch {
      /* keep the number */
    }
    return [`signature: the kernel did not take the merged image's signature (FS_IOC_ENABLE_VERITY: ${name}${name === 'EOPNOTSUPP' || name === 'ENOTTY' ? ', the file system has no fs-verity' : ''}): signatures were checked in userspace only`];
  }
  return [`signature: the merged image was already stored: signatures were checked in userspace only`];
}

export async function run(args: string[], prog: string): Promise<number> {
  const p = parseArgs(args, specs);
  const usage = `${prog} [OPTIONS] SOURCE [NAME]`;
  if (p.options.has('help')) {
    process.stdout.write(
      formatHelp(
        usage,
        'Pull a container image into the repository as a composefs image, and name it.\nSOURCE: docker://HOST[:PORT]/REPO[:TAG|@sha256:…], oci:DIR[:REF], oci-archive:FILE[:REF], docker-archive:FILE[:REF].\nNAME defaults to the source\'s repository and tag.',
        specs,
      ),
    );
    return 0;
  }
  if (p.positional.length < 1) throw new UsageError(`no source given (usage: ${usage})`);
  if (p.positional.length > 2) throw new UsageError(`too many arguments: '${p.positional[2]}' (usage: ${usage})`);
  const [reference, name] = p.positional;
  const sourceOptions = sourceOptionsOf(p);
  const form = stringOption(p, 'form') ?? 'auto';
  if (form !== 'auto' && form !== 'canonical' && form !== 'unpacked') throw new UsageError(`invalid value for --form: '${form}' (auto, canonical or unpacked)`);
  // Unset unless given: a seal of either canonical variant is then found (see pullImage).
  const keepUserXattrs = p.options.has('keep-user-xattrs') ? true : undefined;
  if (keepUserXattrs && form === 'unpacked') throw new UsageError('--keep-user-xattrs applies to the canonical form only (the unpacked form keeps every xattr umoci keeps)');

  const policy = await policyContextOf(p);
  const trustCert = stringOption(p, 'trust-cert');
  const trustCertificates = trustCert !== undefined ? (await import('../oci/seal-signatures.js')).loadTrustedCertificates(trustCert) : undefined;

  const [{ openSource }, { Repository }, { pullImage }] = await Promise.all([import('../oci/transports.js'), import('../repo/repository.js'), import('../repo/pull.js')]);
  const repo = Repository.open(stringOption(p, 'repo'), { shared: p.options.has('shared'), algorithm: algorithmOption(p) });
  const source = await openSource(reference, sourceOptions);
  const json = p.options.has('json');
  const progress = !p.options.has('quiet') && !json && process.stderr.isTTY ? new PullProgress(process.stderr) : null;
  const abort = new AbortController();
  const onSignal = () => abort.abort();
  process.once('SIGINT', onSignal);
  try {
    const { describeVerdict } = await import('../oci/policy-check.js');
    const explain: string[] = [];
    const onEvent = (e: PullEvent) => {
      progress?.on(e);
      if (!p.options.has('explain')) return;
      if (e.type === 'admitted') explain.push(`policy: ${describeVerdict(e.verdict)} (checked in ${Math.round(e.ms)} ms)`);
      if (e.type === 'built') explain.push(explainForm(e.form, e.keepUserXattrs, e.reason));
      if (e.type === 'sealed') explain.push(...sealLines(e));
      if (e.type === 'signatures' || e.type === 'kernel-signature') explain.push(...signatureLines(e));
    };
    const result = await pullImage(repo, source, { name, onEvent, signal: abort.signal, form, keepUserXattrs, requireSeal: p.options.has('require-seal'), policy, ...(trustCertificates ? { trustCertificates } : {}) });
    progress?.end();
    for (const line of explain) process.stderr.write(`${printable(line)}\n`);
    if (json) {
      process.stdout.write(`${printableJson({ ...result.record, layersImported: result.layersImported, objectsWritten: result.objectsWritten, bytesWritten: result.bytesWritten, repository: repo.root })}\n`);
    } else process.stdout.write(`${result.record.image}\n`);
    return 0;
  } finally {
    progress?.end();
    process.removeListener('SIGINT', onSignal);
    await source.close();
  }
}
