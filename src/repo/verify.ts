/**
 * `cfs verify NAME`, offline: a named image checked against the seal its
 * pull checked, from what the repository holds alone. The stored image's
 * fs-verity digest must be the seal's merged digest, the stored config's its
 * config digest; the artifact (or, inline, the manifest) must still say so
 * and name the recorded manifest as its subject; and the image rebuilt from
 * the stored layer records must be the stored image. Each failure is one
 * problem; nothing is changed.
 */
import { createHash } from 'node:crypto';
import { ComposefsError } from '../errors.js';
import { digestHexPattern, fsverityDigest } from '../fsverity/index.js';
import { artifactSeal, inlineSeals, sealKey, type FoundSeal, type SealRole } from '../oci/seal-format.js';
import { checkSealSignatures, requireSigned, type RoleSignature } from '../oci/seal-signatures.js';
import type { CertificateInfo } from '../fsverity/pkcs7.js';
import type { NameSeal } from '../oci/seals.js';
import { buildImage } from './build.js';
import { recordForm, type Repository } from './repository.js';

export type VerifyCheck = 'seal' | 'image' | 'config' | 'artifact' | 'manifest' | 'signature' | 'rebuild';

export interface VerifyProblem {
  check: VerifyCheck;
  /** One line: what differs, and the digests. */
  message: string;
  expected?: string;
  computed?: string;
}

export interface VerifyResult {
  name: string;
  /** The seal recorded at the pull; null: the name is not sealed. */
  seal: NameSeal | null;
  /** With trusted certificates: each signature verified, and by which certificate. */
  signatures?: RoleSignature[];
  /** The checks made, in order. */
  checked: VerifyCheck[];
  problems: VerifyProblem[];
  /** No problems (an unsealed name is a problem unless `allowUnsealed`). */
  ok: boolean;
}

export interface VerifyOptions {
  /** An unsealed name passes when its other checks do (default: it is a problem). */
  allowUnsealed?: boolean;
  /** Check the seal's recorded composefs signatures against these certificates (an unsigned seal is then a problem). */
  trustCertificates?: readonly CertificateInfo[];
  /** The time certificates must be valid at (default: now). */
  now?: Date;
}

function message(err: unknown): string {
  return err instanceof ComposefsError ? err.message : ((err as Error)?.message ?? String(err));
}

/** Check the name `name` of `repo` against its seal (the repository lock held shared, so no gc runs meanwhile). */
export async function verifyName(repo: Repository, name: string, options: VerifyOptions = {}): Promise<VerifyResult> {
  const lock = await repo.lock(false);
  try {
    const rec = repo.getName(name);
    const seal = rec.seal ?? null;
    const algorithm = seal?.algorithm ?? repo.algorithm;
    const problems: VerifyProblem[] = [];
    const checked: VerifyCheck[] = [];
    const problem = (check: VerifyCheck, text: string, expected?: string, computed?: string) =>
      problems.push({ check, message: text, ...(expected !== undefined ? { expected, computed } : {}) });
    if (!seal && !options.allowUnsealed) problem('seal', `${name}: not sealed (its pull found no composefs seal)`);
    if (seal && seal.algorithm !== repo.algorithm) problem('seal', `${name}: sealed with ${seal.algorithm}, and the repository's algorithm is ${repo.algorithm}`);

    checked.push('image');
    let stored: string | null = null;
    try {
      // The record's field names a file in images/: nothing else (no path) is read.
      if (typeof rec.image !== 'string' || !digestHexPattern(algorithm).test(rec.image)) throw new Error(`the name record is corrupt (image '${String(rec.image).slice(0, 200)}')`);
      stored = fsverityDigest(repo.readFile('images', rec.image), algorithm).toString('hex');
      const expected = seal?.merged ?? rec.image;
      if (stored !== expected) problem('image', `${name}: the stored image's fs-verity digest is ${stored}, ${seal ? `the seal's merged digest (${sealKey('merged', algorithm)})` : 'the name records'} ${expected}`, expected, stored);
      else if (stored !== rec.image) problem('image', `${name}: the record names image ${rec.image}, the seal ${stored}`, stored, rec.image);
    } catch (err) {
      problem('image', `${name}: image ${rec.image}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : message(err)}`);
    }

    checked.push('config');
    try {
      const config = repo.readBlob(rec.config);
      const sha = `sha256:${createHash('sha256').update(config).digest('hex')}`;
      if (sha !== rec.config) problem('config', `${name}: config blob ${rec.config} has digest ${sha}`, rec.config, sha);
      else if (seal?.config !== undefined) {
        const got = fsverityDigest(config, algorithm).toString('hex');
        if (got !== seal.config) problem('config', `${name}: the stored config's fs-verity digest is ${got}, the seal's config digest (${sealKey('config', algorithm)}) ${seal.config}`, seal.config, got);
      }
    } catch (err) {
      problem('config', `${name}: config ${rec.config}: ${message(err)}`);
    }

    if (seal) {
      // Where the seal came from must still say what the record says.
      const check: VerifyCheck = seal.mode === 'artifact' ? 'artifact' : 'manifest';
      const blob = seal.mode === 'artifact' ? seal.artifact : rec.manifest;
      checked.push(check);
      try {
        if (!blob) throw new Error('the record names no artifact');
        const bytes = repo.readBlob(blob);
        const sha = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
        if (sha !== blob) throw new Error(`its bytes have digest ${sha}`);
        const json: unknown = JSON.parse(bytes.toString('utf8'));
        let found: FoundSeal | undefined;
        if (seal.mode === 'artifact') found = artifactSeal(json, blob, rec.manifest);
        else found = inlineSeals(json, `manifest ${blob}`).find((s) => s.algorithm === seal.algorithm);
        if (!found || found.algorithm !== seal.algorithm) throw new Error(`no ${seal.algorithm} seal in it`);
        if (found.merged !== seal.merged) problem(check, `${name}: ${check} ${blob} seals merged ${found.merged}, the record ${seal.merged}`, found.merged, seal.merged);
        // The record's config digest may come from the inline seal beside the artifact: only a different one is a problem.
        if (found.config !== undefined && found.config !== seal.config) problem(check, `${name}: ${check} ${blob} seals config ${found.config ?? '(none)'}, the record ${seal.config ?? '(none)'}`, found.config, seal.config);
        if (seal.manifest !== undefined && found.manifest !== seal.manifest) problem(check, `${name}: ${check} ${blob} seals manifest ${found.manifest ?? '(none)'}, the record ${seal.manifest ?? '(none)'}`, found.manifest, seal.manifest);
        if (seal.manifest !== undefined) {
          const got = fsverityDigest(repo.readBlob(rec.manifest), algorithm).toString('hex');
          if (got !== seal.manifest) problem(check, `${name}: the stored manifest's fs-verity digest is ${got}, the seal's manifest digest ${seal.manifest}`, seal.manifest, got);
        }
        // The signatures kept in the record must be the ones the artifact (its layer digests) or the manifest (its .sig annotations) carries.
        const recorded = seal.signatures ?? {};
        for (const role of new Set(seal.signatures ? [...Object.keys(recorded), ...Object.keys(found.signatureLayers ?? found.signatures ?? {})] : []) as Set<SealRole>) {
          const kept = recorded[role];
          const bytes = typeof kept === 'string' ? Buffer.from(kept, 'base64') : null;
          const same = seal.mode === 'artifact'
            ? bytes !== null && found.signatureLayers?.[role]?.digest === `sha256:${createHash('sha256').update(bytes).digest('hex')}`
            : typeof kept === 'string' && found.signatures?.[role] === kept;
          if (!same) problem(check, `${name}: the ${role} signature the record keeps is not the one ${check} ${blob} carries`);
        }
      } catch (err) {
        problem(check, `${name}: ${check} ${blob ?? ''}: ${message(err).replace(/^composefs artifact \S+: /, '')}`);
      }
    }

    let signatures: RoleSignature[] | undefined;
    if (options.trustCertificates) {
      checked.push('signature');
      try {
        if (!seal) throw new Error('not sealed, so not signed');
        const asFound: FoundSeal = { algorithm: seal.algorithm, merged: seal.merged, mode: seal.mode, ...(seal.config !== undefined ? { config: seal.config } : {}), ...(seal.manifest !== undefined ? { manifest: seal.manifest } : {}), ...(seal.artifact !== undefined ? { artifact: seal.artifact } : {}), ...(seal.signatures ? { signatures: seal.signatures } : {}) };
        requireSigned(name, [asFound]);
        signatures = checkSealSignatures(name, asFound, options.trustCertificates, options.now);
      } catch (err) {
        problem('signature', message(err).startsWith(`${name}: `) ? message(err) : `${name}: ${message(err)}`);
      }
    }

    checked.push('rebuild');
    try {
      // In the form the record says the pull built (records from before forms hold unpacked images).
      const form = recordForm(rec);
      const layers = rec.layers.map((d) => ({ name: `layer ${d}`, entries: repo.readLayer(d) }));
      const rebuilt = buildImage(layers, { form, keepUserXattrs: rec.keepUserXattrs ?? false, algorithm }).digest;
      const want = seal?.merged ?? rec.image;
      if (rebuilt !== want) problem('rebuild', `${name}: the image rebuilt from the layer records has fs-verity digest ${rebuilt}, ${seal ? 'the seal' : 'the record'} ${want}`, want, rebuilt);
    } catch (err) {
      problem('rebuild', `${name}: rebuilding from the layer records: ${message(err)}`);
    }
    return { name, seal, ...(signatures ? { signatures } : {}), checked, problems, ok: problems.length === 0 };
  } finally {
    lock.release();
  }
}
