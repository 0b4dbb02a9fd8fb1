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
import { printableJson } from '../printable.js';

const specs: OptionSpec[] = [
  { name: 'repo', value: true, arg: 'DIR', help: 'the repository (default $CFS_REPO, /var/lib/composefs as root, else $XDG_DATA_HOME/composefs)' },
  { name: 'shared', help: 'use the repository even if others own it or may write it (see README: shared repositories)' },
  { name: 'algorithm', value: true, arg: 'ALG', help: 'fs-verity algorithm of a new repository: sha256 (default) or sha512; must be the existing one\'s otherwise' },
  { name: 'platform', value: true, arg: 'OS/ARCH[/VARIANT]', help: 'the image to take from an index (default: this machine)' },
  { name: 'creds', value: true, arg: 'USER:PASS', help: 'registry credentials' },
  { name: 'authfile', value: true, arg: 'FILE', help: 'registry auth file (default: $REGISTRY_AUTH_FILE, containers auth.json, ~/.docker/config.json)' },
  { name: 'cert-dir', value: true, arg: 'DIR', help: 'CA certificates (ca.crt) for the registry, as containers certs.d' },
  { name: 'tls-verify', value: true, arg: 'BOOL', help: 'check the registry certificate (default true)' },
  { name: 'speed-limit', value: true, arg: 'BYTES', help: 'fail a registry transfer slower than BYTES per second over --speed-time (default $CFS_SPEED_LIMIT, else 1024; 0: never)' },
  { name: 'speed-time', value: true, arg: 'SECONDS', help: 'the period of --speed-limit (default $CFS_SPEED_TIME, else 30)' },
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
  const tls = p.options.get('tls-verify');
  if (tls !== undefined && tls !== 'true' && tls !== 'false') throw new UsageError(`invalid value for --tls-verify: '${String(tls)}' (true or false)`);
  const str = (k: string) => (p.options.get(k) === undefined ? undefined : String(p.options.get(k)));
  /** A whole number option, else its environment variable (--speed-time: CFS_SPEED_TIME). */
  const count = (k: string, min: number) => {
    const variable = `CFS_${k.toUpperCase().replace(/-/g, '_')}`;
    const [text, from] = str(k) !== undefined ? [str(k), `--${k}`] : [process.env[variable], variable];
    if (text === undefined || text === '') return undefined;
    if (!/^\d+$/.test(text) || Number(text) < min) throw new UsageError(`invalid value for ${from}: '${text}' (a whole number${min > 0 ? ` from ${min}` : ''})`);
    return Number(text);
  };
  const speedLimit = count('speed-limit', 0);
  const speedTime = count('speed-time', 1);

  const [{ openSource }, { Repository }, { pullImage }] = await Promise.all([import('../oci/transports.js'), import('../repo/repository.js'), import('../repo/pull.js')]);
  const repo = Repository.open(str('repo'), { shared: p.options.has('shared'), algorithm: algorithmOption(p) });
  const source = await openSource(reference, {
    platform: str('platform'),
    creds: str('creds'),
    authFile: str('authfile'),
    certDir: str('cert-dir'),
    tlsVerify: tls === undefined ? undefined : tls === 'true',
    speedLimit,
    speedTime,
  });
  const json = p.options.has('json');
  const progress = !p.options.has('quiet') && !json && process.stderr.isTTY ? new PullProgress(process.stderr) : null;
  const abort = new AbortController();
  const onSignal = () => abort.abort();
  process.once('SIGINT', onSignal);
  try {
    const result = await pullImage(repo, source, { name, onEvent: (e) => progress?.on(e), signal: abort.signal });
    progress?.end();
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
