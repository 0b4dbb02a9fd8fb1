/**
 * Signing keys and X.509 certificates for the composefs signature tests,
 * made by `openssl` (never by the code under test): RSA and EC signers, an
 * unrelated one, a keyCertSign-only and a serverAuth-only certificate, and
 * an expired one (`openssl ca` sets both dates; `req -x509` refuses a past
 * end). And the kernel's fsverity_formatted_digest built by hand.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

export function run(cmd: string, args: string[], cwd: string): string {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** rsa, ec, other, ca-only, tls, expired: NAME.key and NAME.crt in `dir`. */
export function makeSigners(dir: string): void {
  run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'rsa.key', '-out', 'rsa.crt', '-days', '30', '-subj', '/CN=rsa signer'], dir);
  run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ec.key', '-out', 'ec.crt', '-days', '30', '-subj', '/CN=ec signer', '-addext', 'keyUsage=critical,digitalSignature', '-addext', 'extendedKeyUsage=codeSigning'], dir);
  run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'other.key', '-out', 'other.crt', '-days', '30', '-subj', '/CN=other signer'], dir);
  run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca-only.key', '-out', 'ca-only.crt', '-days', '30', '-subj', '/CN=ca only', '-addext', 'keyUsage=critical,keyCertSign'], dir);
  run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'tls.key', '-out', 'tls.crt', '-days', '30', '-subj', '/CN=tls only', '-addext', 'extendedKeyUsage=serverAuth'], dir);
  // Expired: `openssl ca` sets both dates (req -x509 refuses a past end).
  writeFileSync(join(dir, 'ca.cnf'), '[ca]\ndefault_ca=d\n[d]\ndatabase=index.txt\nnew_certs_dir=.\nserial=serial\ndefault_md=sha256\npolicy=p\nunique_subject=no\n[p]\ncommonName=supplied\n');
  writeFileSync(join(dir, 'index.txt'), '');
  writeFileSync(join(dir, 'serial'), '01\n');
  run('openssl', ['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', 'expired.key'], dir);
  run('openssl', ['req', '-new', '-key', 'expired.key', '-subj', '/CN=expired signer', '-out', 'expired.csr'], dir);
  run('openssl', ['ca', '-batch', '-config', 'ca.cnf', '-selfsign', '-keyfile', 'expired.key', '-in', 'expired.csr', '-out', 'expired.crt', '-startdate', '20200101000000Z', '-enddate', '20200102000000Z', '-notext'], dir);
}

/** The formatted digest, built by hand: "FSVerity", le16 algorithm id, le16 size, digest (fs-verity's uapi). */
export function handFormatted(algorithm: 'sha256' | 'sha512', hex: string): Buffer {
  const head = Buffer.alloc(12);
  head.write('FSVerity', 0, 'latin1');
  head.writeUInt16LE(algorithm === 'sha256' ? 1 : 2, 8);
  head.writeUInt16LE(hex.length / 2, 10);
  return Buffer.concat([head, Buffer.from(hex, 'hex')]);
}

