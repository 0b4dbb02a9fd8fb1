/**
 * containers-policy.json(5) (src/oci/policy.ts): the man page's example
 * policies parse; the most specific scope wins for each scope form of the
 * docker, oci, oci-archive and docker-archive transports; every
 * signedIdentity form matches and refuses as the man page words it (the
 * expected results below are worked out by hand from that wording); every
 * malformed policy is refused with one line naming the file and JSON path.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { dockerIdentityOf, identityMatches, parsePolicy, policyScopesOf, requirementsFor, describeChoice, maxPolicyBytes, PolicyError, type Policy, type SignedIdentity } from '../src/oci/policy.js';
import { parseDockerName, parseReference } from '../src/oci/reference.js';
import { ComposefsError } from '../src/errors.js';
import { mkdirSync, realpathSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { checkPolicy, PolicyRefusedError, type PolicyContext } from '../src/oci/policy-check.js';
import { openSource } from '../src/oci/transports.js';
import { haveSkopeo, skopeo } from './helpers/oci-images.js';
import { gzLayers, writeLayout } from './helpers/oci-layout.js';
import { makeTemp, removeTemp } from './helpers/temp.js';

const DIGEST = `sha256:${'ab'.repeat(32)}`;

function refused(text: string, message: string | RegExp): void {
  assert.throws(
    () => parsePolicy(text, 'policy.json'),
    (err: unknown) => {
      assert.ok(err instanceof PolicyError, String(err));
      assert.ok(err instanceof ComposefsError);
      assert.doesNotMatch(err.message, /\n/);
      if (typeof message === 'string') assert.equal(err.message, message);
      else assert.match(err.message, message);
      return true;
    },
  );
}

const ACCEPT = '[{"type":"insecureAcceptAnything"}]';
const policyWith = (transports: string): string => `{"default":[{"type":"reject"}],"transports":${transports}}`;
const withReq = (req: string): string => policyWith(`{"docker":{"example.com":[${req}]}}`);

// The man page's "reasonably locked-down system", its comments removed (they are not JSON, as it says), and its
// fulcio and pki entries left out (refused below: cfs does not support them).
const LOCKED_DOWN = `{
  "default": [{"type": "reject"}],
  "transports": {
    "docker": {
      "docker.io/openshift": [{"type": "insecureAcceptAnything"}],
      "docker.io/library/busybox": [{"type": "insecureAcceptAnything"}],
      "*.temporary-project.example.com": [{"type": "insecureAcceptAnything"}],
      "hostname:5000/myns/sigstore-signed-with-full-references": [
        {"type": "sigstoreSigned", "keyPath": "/path/to/sigstore-pubkey.pub"}
      ],
      "hostname:5000/myns/sigstore-signed-allows-malicious-tag-substitution": [
        {"type": "sigstoreSigned", "keyPath": "/path/to/sigstore-pubkey.pub", "signedIdentity": {"type": "matchRepository"}}
      ]
    },
    "dir": {"": [{"type": "insecureAcceptAnything"}]},
    "atomic": {
      "hostname:5000/myns/official": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/path/to/official-pubkey.gpg"}],
      "hostname:5000/vendor/product": [
        {"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/path/to/vendor-pubkey.gpg",
         "signedIdentity": {"type": "exactRepository", "dockerRepository": "vendor-hostname/product/repository"}},
        {"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/path/to/reviewer-pubkey.gpg"}
      ],
      "private-mirror:5000/vendor-mirror": [
        {"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/path/to/vendor-pubkey.gpg",
         "signedIdentity": {"type": "remapIdentity", "prefix": "private-mirror:5000/vendor-mirror", "signedPrefix": "vendor.example.com"}}
      ]
    }
  }
}`;

test('the man page examples parse', () => {
  const p = parsePolicy(LOCKED_DOWN, 'policy.json');
  assert.deepEqual(p.default, [{ type: 'reject' }]);
  assert.deepEqual([...p.transports.keys()], ['docker', 'dir', 'atomic']);
  assert.deepEqual(p.transports.get('docker')!.get('hostname:5000/myns/sigstore-signed-with-full-references'), [
    { type: 'sigstoreSigned', keys: { keyPath: '/path/to/sigstore-pubkey.pub' }, signedIdentity: { type: 'matchRepoDigestOrExact' } },
  ]);
  assert.deepEqual(p.transports.get('atomic')!.get('hostname:5000/vendor/product'), [
    { type: 'signedBy', keyType: 'GPGKeys', keys: { keyPath: '/path/to/vendor-pubkey.gpg' }, signedIdentity: { type: 'exactRepository', dockerRepository: 'vendor-hostname/product/repository' } },
    { type: 'signedBy', keyType: 'GPGKeys', keys: { keyPath: '/path/to/reviewer-pubkey.gpg' }, signedIdentity: { type: 'matchRepoDigestOrExact' } },
  ]);
  assert.deepEqual(p.transports.get('atomic')!.get('private-mirror:5000/vendor-mirror')![0], {
    type: 'signedBy',
    keyType: 'GPGKeys',
    keys: { keyPath: '/path/to/vendor-pubkey.gpg' },
    signedIdentity: { type: 'remapIdentity', prefix: 'private-mirror:5000/vendor-mirror', signedPrefix: 'vendor.example.com' },
  });
  // "Completely disable security".
  const open = parsePolicy('{\n    "default": [{"type": "insecureAcceptAnything"}]\n}\n', 'policy.json');
  assert.deepEqual(open, { default: [{ type: 'insecureAcceptAnything' }], transports: new Map() });
  // The other key sources and key data.
  const keys = parsePolicy(
    policyWith(`{"docker":{"a.example":[{"type":"signedBy","keyType":"GPGKeys","keyPaths":["/k1","/k2"]},{"type":"signedBy","keyType":"GPGKeys","keyData":"aGVsbG8="},
      {"type":"sigstoreSigned","keyPaths":["/p1"]},{"type":"sigstoreSigned","keyData":"aGk="},{"type":"sigstoreSigned","keyDatas":["aGk=","aGVsbG8="]}]}}`),
    'policy.json',
  ).transports.get('docker')!.get('a.example')!;
  assert.deepEqual(
    keys.map((r) => ('keys' in r ? r.keys : undefined)),
    [{ keyPaths: ['/k1', '/k2'] }, { keyData: Buffer.from('hello') }, { keyPaths: ['/p1'] }, { keyData: Buffer.from('hi') }, { keyDatas: [Buffer.from('hi'), Buffer.from('hello')] }],
  );
});

const req = (id: string): string => `[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/${id}"}]`;

/** Which scope a reference ends up with: the key path of the single signedBy in it, or "default". */
function chosen(policy: Policy, reference: string, resolvedPath?: string): string {
  const choice = requirementsFor(policy, policyScopesOf(parseReference(reference), resolvedPath));
  const first = choice.requirements[0]!;
  return first.type === 'signedBy' && 'keyPath' in first.keys ? first.keys.keyPath.slice(1) : first.type;
}

test('docker: the most specific scope wins, in the man page order', () => {
  const p = parsePolicy(
    policyWith(`{"docker":{
      "reg.example.com:5000/ns/sub/app:1.0": ${req('tag')},
      "reg.example.com:5000/ns/sub/app@${DIGEST}": ${req('digest')},
      "reg.example.com:5000/ns/sub/app": ${req('repo')},
      "reg.example.com:5000/ns/sub": ${req('subns')},
      "reg.example.com:5000/ns": ${req('ns')},
      "reg.example.com:5000": ${req('hostport')},
      "*.a.example.com": ${req('wild-a')},
      "*.example.com": ${req('wild')},
      "docker.io/library/busybox": ${req('busybox')},
      "busybox": ${req('unexpanded')},
      "": ${req('transport-default')}
    }}`),
    'policy.json',
  );
  assert.equal(chosen(p, 'docker://reg.example.com:5000/ns/sub/app:1.0'), 'tag');
  assert.equal(chosen(p, `docker://reg.example.com:5000/ns/sub/app@${DIGEST}`), 'digest');
  assert.equal(chosen(p, 'docker://reg.example.com:5000/ns/sub/app:2.0'), 'repo');
  assert.equal(chosen(p, 'docker://reg.example.com:5000/ns/sub/app'), 'repo'); // :latest
  assert.equal(chosen(p, `docker://reg.example.com:5000/ns/sub/app@sha256:${'cd'.repeat(32)}`), 'repo');
  assert.equal(chosen(p, 'docker://reg.example.com:5000/ns/sub/other:1.0'), 'subns');
  assert.equal(chosen(p, 'docker://reg.example.com:5000/ns/app:1.0'), 'ns');
  // Namespaces are whole path components: "ns" is not a prefix scope of "nsx".
  assert.equal(chosen(p, 'docker://reg.example.com:5000/nsx/app:1.0'), 'hostport');
  // A wildcard matches subdomains, not counting the port; the more specific wildcard first.
  assert.equal(chosen(p, 'docker://reg.example.com/ns/app:1.0'), 'wild');
  assert.equal(chosen(p, 'docker://reg.example.com:6000/ns/app:1.0'), 'wild');
  assert.equal(chosen(p, 'docker://x.y.a.example.com/app:1'), 'wild-a');
  assert.equal(chosen(p, 'docker://example.com/app:1'), 'transport-default');
  // Scopes are in the fully expanded form: busybox is docker.io/library/busybox.
  assert.equal(chosen(p, 'docker://busybox'), 'busybox');
  assert.equal(chosen(p, 'docker://docker.io/library/busybox:1.36'), 'busybox');
  assert.equal(chosen(p, 'docker://quay.io/busybox:1'), 'transport-default');
  // No section for the transport: the global default.
  assert.equal(chosen(p, 'oci:/srv/images/app'), 'reject');
  const choice = requirementsFor(p, policyScopesOf(parseReference('docker://reg.example.com:5000/ns/app:1.0')));
  assert.equal(describeChoice(choice), 'transports.docker["reg.example.com:5000/ns"]');
  assert.equal(describeChoice(requirementsFor(p, policyScopesOf(parseReference('oci:/x')))), 'default');
  // Without a transport default, an unmatched image gets the global default.
  const noDefault = parsePolicy(policyWith(`{"docker":{"*.com": ${req('com')}}}`), 'policy.json');
  assert.equal(chosen(noDefault, 'docker://quay.io/app:1'), 'reject');
  assert.equal(chosen(noDefault, 'docker://registry.example.com:5000/app:1'), 'com');
});

test('oci, oci-archive, docker-archive: paths upward, then "", then default', () => {
  const p = parsePolicy(
    policyWith(`{
      "oci": {"/srv/images/app": ${req('dir')}, "/srv/images": ${req('parent')}, "/srv/images/app:v1": ${req('with-ref')}, "": ${req('oci-default')}},
      "oci-archive": {"/srv/archives/app.tar": ${req('file')}, "/srv": ${req('srv')}},
      "docker-archive": {"": ${req('archive-default')}}
    }`),
    'policy.json',
  );
  assert.equal(chosen(p, 'oci:/srv/images/app'), 'dir');
  // oci:DIR:REF: the reference name is not part of the scope.
  assert.equal(chosen(p, 'oci:/srv/images/app:v1'), 'dir');
  assert.equal(chosen(p, 'oci:/srv/images/other:v1'), 'parent');
  assert.equal(chosen(p, 'oci:/srv/images/deep/er/x'), 'parent');
  assert.equal(chosen(p, 'oci:/srv/imagesX'), 'oci-default');
  assert.equal(chosen(p, 'oci:/opt/x'), 'oci-default');
  // The path the caller resolved (symlinks) is the one scoped.
  assert.equal(chosen(p, 'oci:/tmp/link-to-app', '/srv/images/app'), 'dir');
  assert.equal(chosen(p, 'oci-archive:/srv/archives/app.tar:v2'), 'file');
  assert.equal(chosen(p, 'oci-archive:/srv/archives/other.tar'), 'srv');
  assert.equal(chosen(p, 'oci-archive:/home/app.tar'), 'reject');
  assert.equal(chosen(p, 'docker-archive:/srv/images/app.tar:app:1'), 'archive-default');
  assert.deepEqual(policyScopesOf(parseReference('oci:/srv/images/app:v1')), { transport: 'oci', identity: '/srv/images/app', namespaces: ['/srv/images', '/srv'] });
});

const docker = (text: string) => parseDockerName(text);

function matches(identity: SignedIdentity, image: string | undefined, signature: string): boolean {
  return identityMatches(identity, image === undefined ? undefined : docker(image), signature);
}

test('signedIdentity matchExact: the signature identity must be exactly the image identity', () => {
  const id: SignedIdentity = { type: 'matchExact' };
  assert.equal(matches(id, 'docker.io/library/busybox:latest', 'docker.io/library/busybox:latest'), true);
  assert.equal(matches(id, 'docker.io/library/busybox:latest', 'busybox:latest'), true); // the same reference, unexpanded
  assert.equal(matches(id, 'docker.io/library/busybox:latest', 'docker.io/library/busybox:1.36'), false);
  assert.equal(matches(id, 'docker.io/library/busybox:latest', 'docker.io/library/busybox'), false); // no tag
  assert.equal(matches(id, 'docker.io/library/busybox:latest', 'quay.io/library/busybox:latest'), false);
  // "referencing an image by digest (with a signature claiming a repository:tag identity) will fail"
  assert.equal(matches(id, `docker.io/library/busybox@${DIGEST}`, 'docker.io/library/busybox:latest'), false);
  assert.equal(matches(id, `docker.io/library/busybox@${DIGEST}`, `docker.io/library/busybox@${DIGEST}`), true);
  assert.equal(matches(id, undefined, 'docker.io/library/busybox:latest'), false); // oci: no docker identity
  assert.equal(matches(id, 'docker.io/library/busybox:latest', 'Not A Reference'), false);
});

test('signedIdentity matchRepoDigestOrExact: exact for a tag, same repository for a digest', () => {
  const id: SignedIdentity = { type: 'matchRepoDigestOrExact' };
  assert.equal(matches(id, 'example.com/ns/app:1.0', 'example.com/ns/app:1.0'), true);
  assert.equal(matches(id, 'example.com/ns/app:1.0', 'example.com/ns/app:2.0'), false);
  assert.equal(matches(id, `example.com/ns/app@${DIGEST}`, 'example.com/ns/app:2.0'), true);
  assert.equal(matches(id, `example.com/ns/app@${DIGEST}`, 'example.com/ns/app:latest'), true);
  assert.equal(matches(id, `example.com/ns/app@${DIGEST}`, 'example.com/ns/other:2.0'), false);
  assert.equal(matches(id, undefined, 'example.com/ns/app:1.0'), false);
});

test('signedIdentity matchRepository: the same repository, any tag', () => {
  const id: SignedIdentity = { type: 'matchRepository' };
  assert.equal(matches(id, 'example.com/ns/app:latest', 'example.com/ns/app:1.2.3'), true);
  assert.equal(matches(id, `example.com/ns/app@${DIGEST}`, 'example.com/ns/app:1.2.3'), true);
  assert.equal(matches(id, 'example.com/ns/app:latest', 'example.com/ns/app2:latest'), false);
  assert.equal(matches(id, 'example.com/ns/app:latest', 'example.com/ns:latest'), false);
  assert.equal(matches(id, 'example.com/ns/app:latest', 'other.example.com/ns/app:latest'), false);
  assert.equal(matches(id, undefined, 'example.com/ns/app:latest'), false);
});

test('signedIdentity exactReference and exactRepository: a specified identity, whatever the image', () => {
  const ref: SignedIdentity = { type: 'exactReference', dockerReference: 'vendor.example.com/product/app:1.0' };
  assert.equal(matches(ref, 'mirror.local/app:1.0', 'vendor.example.com/product/app:1.0'), true);
  assert.equal(matches(ref, undefined, 'vendor.example.com/product/app:1.0'), true); // usable with oci:
  assert.equal(matches(ref, 'vendor.example.com/product/app:1.0', 'vendor.example.com/product/app:2.0'), false);
  assert.equal(matches(ref, 'mirror.local/app:1.0', 'mirror.local/app:1.0'), false);
  const repo: SignedIdentity = { type: 'exactRepository', dockerRepository: 'vendor.example.com/product/app' };
  assert.equal(matches(repo, 'mirror.local/app:1.0', 'vendor.example.com/product/app:7'), true);
  assert.equal(matches(repo, undefined, 'vendor.example.com/product/app:latest'), true);
  assert.equal(matches(repo, 'vendor.example.com/product/app:1', 'vendor.example.com/product/other:1'), false);
  const library: SignedIdentity = { type: 'exactRepository', dockerRepository: 'busybox' };
  assert.equal(matches(library, undefined, 'docker.io/library/busybox:1'), true); // both in the expanded form
});

test('signedIdentity remapIdentity: the prefix rewritten, then matchRepoDigestOrExact', () => {
  const id: SignedIdentity = { type: 'remapIdentity', prefix: 'private-mirror:5000/vendor-mirror', signedPrefix: 'vendor.example.com' };
  // The man page: private-mirror:5000/vendor-mirror/productA/image1:latest needs to be signed as vendor.example.com/productA/image1:latest.
  assert.equal(matches(id, 'private-mirror:5000/vendor-mirror/productA/image1:latest'.toLowerCase(), 'vendor.example.com/producta/image1:latest'), true);
  assert.equal(matches(id, 'private-mirror:5000/vendor-mirror/producta/image1:latest', 'private-mirror:5000/vendor-mirror/producta/image1:latest'), false);
  assert.equal(matches(id, 'private-mirror:5000/vendor-mirror/producta/image1:latest', 'vendor.example.com/producta/image1:1.0'), false);
  // By digest: the repository must match after remapping.
  assert.equal(matches(id, `private-mirror:5000/vendor-mirror/producta/image1@${DIGEST}`, 'vendor.example.com/producta/image1:1.0'), true);
  assert.equal(matches(id, `private-mirror:5000/vendor-mirror/producta/image1@${DIGEST}`, 'vendor.example.com/producta/image2:1.0'), false);
  // Not under the prefix (a prefix matches whole components): used unchanged.
  assert.equal(matches(id, 'private-mirror:5000/vendor-mirrorx/app:1', 'private-mirror:5000/vendor-mirrorx/app:1'), true);
  assert.equal(matches(id, 'private-mirror:5000/vendor-mirrorx/app:1', 'vendor.example.comx/app:1'), false);
  assert.equal(matches(id, 'other.example.com/app:1', 'other.example.com/app:1'), true);
  // The whole repository as prefix, and a host as prefix.
  const whole: SignedIdentity = { type: 'remapIdentity', prefix: 'mirror.local/busybox', signedPrefix: 'docker.io/library/busybox' };
  assert.equal(matches(whole, 'mirror.local/busybox:1.36', 'busybox:1.36'), true);
  const host: SignedIdentity = { type: 'remapIdentity', prefix: 'mirror.local:5000', signedPrefix: 'quay.io' };
  assert.equal(matches(host, 'mirror.local:5000/team/app:2', 'quay.io/team/app:2'), true);
  assert.equal(matches(host, 'mirror.local:5000/team/app:2', 'quay.io/team/app:3'), false);
  assert.equal(matches(id, undefined, 'vendor.example.com/producta/image1:latest'), false);
});

test('every malformed policy is refused with one line naming the file and the JSON path', () => {
  refused(withReq('{"type":"foo"}'), 'policy.json: transports.docker["example.com"][0]: unknown requirement type "foo"');
  refused('{"transports":{}}', 'policy.json: top level: no "default" requirements');
  refused('{"default":[]}', 'policy.json: default: the list of requirements must not be empty');
  refused('{"default":{}}', 'policy.json: default: must be an array of requirements');
  refused(`{"default":${ACCEPT},"extra":1}`, 'policy.json: top level: unknown field "extra"');
  refused(`{"default":${ACCEPT},"default":${ACCEPT}}`, 'policy.json: top level: duplicate key "default"');
  refused(policyWith(`{"docker":{"a":${ACCEPT},"a":${ACCEPT}}}`), 'policy.json: transports.docker: duplicate key "a"');
  refused(policyWith(`{"docker":{"a":[]}}`), 'policy.json: transports.docker["a"]: the list of requirements must not be empty');
  refused(withReq('{"type":"reject","keyPath":"/k"}'), 'policy.json: transports.docker["example.com"][0]: unknown field "keyPath"');
  refused(withReq('{"kind":"reject"}'), 'policy.json: transports.docker["example.com"][0]: no "type"');
  refused(withReq('"reject"'), 'policy.json: transports.docker["example.com"][0]: must be a JSON object');
  refused(withReq('{"type":"signedBy","keyPath":"/k"}'), 'policy.json: transports.docker["example.com"][0]: signedBy needs "keyType" (GPGKeys)');
  refused(withReq('{"type":"signedBy","keyType":"X509Certificates","keyPath":"/k"}'), 'policy.json: transports.docker["example.com"][0].keyType: keyType "X509Certificates" is not supported (only "GPGKeys")');
  refused(withReq('{"type":"signedBy","keyType":"PGP","keyPath":"/k"}'), 'policy.json: transports.docker["example.com"][0].keyType: unrecognized keyType "PGP"');
  refused(withReq('{"type":"signedBy","keyType":"GPGKeys"}'), 'policy.json: transports.docker["example.com"][0]: exactly one of keyPath, keyPaths, keyData must be present, none is');
  refused(withReq('{"type":"signedBy","keyType":"GPGKeys","keyPath":"/k","keyData":"aGk="}'), 'policy.json: transports.docker["example.com"][0]: exactly one of keyPath, keyPaths, keyData must be present, not keyPath and keyData');
  refused(withReq('{"type":"signedBy","keyType":"GPGKeys","keyDatas":["aGk="]}'), 'policy.json: transports.docker["example.com"][0]: unknown field "keyDatas"');
  refused(withReq('{"type":"signedBy","keyType":"GPGKeys","keyPaths":[]}'), 'policy.json: transports.docker["example.com"][0].keyPaths: contains no entries');
  refused(withReq('{"type":"signedBy","keyType":"GPGKeys","keyPaths":["/a",3]}'), 'policy.json: transports.docker["example.com"][0].keyPaths[1]: must be a string');
  refused(withReq('{"type":"signedBy","keyType":"GPGKeys","keyData":"not base64!"}'), 'policy.json: transports.docker["example.com"][0].keyData: is not valid base64');
  refused(withReq('{"type":"sigstoreSigned","fulcio":{"caPath":"/ca","oidcIssuer":"https://i","subjectEmail":"a@b"},"rekorPublicKeyPath":"/r"}'), /^policy\.json: transports\.docker\["example\.com"\]\[0\]\.fulcio: "fulcio" is not supported/);
  refused(withReq('{"type":"sigstoreSigned","keyPath":"/k","rekorPublicKeyPath":"/r"}'), /^policy\.json: transports\.docker\["example\.com"\]\[0\]\.rekorPublicKeyPath: "rekorPublicKeyPath" is not supported/);
  refused(withReq('{"type":"sigstoreSigned","pki":{"caRootsPath":"/r","subjectEmail":"a@b"}}'), /\[0\]\.pki: "pki" is not supported/);
  refused(withReq('{"type":"sigstoreSigned"}'), 'policy.json: transports.docker["example.com"][0]: exactly one of keyPath, keyPaths, keyData, keyDatas must be present, none is');
  refused(withReq('{"type":"sigstoreSigned","keyDatas":[]}'), 'policy.json: transports.docker["example.com"][0].keyDatas: contains no entries');
  refused(withReq('{"type":"sigstoreSigned","keyPath":"/k","keyType":"GPGKeys"}'), 'policy.json: transports.docker["example.com"][0]: unknown field "keyType"');
  const si = (identity: string): string => withReq(`{"type":"signedBy","keyType":"GPGKeys","keyPath":"/k","signedIdentity":${identity}}`);
  const at = 'policy.json: transports.docker["example.com"][0].signedIdentity';
  refused(si('{"type":"matchEverything"}'), `${at}: unknown signedIdentity type "matchEverything"`);
  refused(si('{"type":"matchExact","dockerReference":"a/b:1"}'), `${at}: unknown field "dockerReference"`);
  refused(si('{"type":"exactReference"}'), `${at}: exactReference needs "dockerReference"`);
  refused(si('{"type":"exactReference","dockerReference":"example.com/app"}'), `${at}.dockerReference: docker reference "example.com/app" has neither a tag nor a digest`);
  refused(si('{"type":"exactReference","dockerReference":"Example.com/App:1"}'), /^policy\.json: transports\.docker\["example\.com"\]\[0\]\.signedIdentity\.dockerReference: invalid docker reference "Example\.com\/App:1": /);
  refused(si('{"type":"exactRepository","dockerRepository":"example.com/UPPER"}'), /\.signedIdentity\.dockerRepository: invalid docker reference "example\.com\/UPPER": repository name \(UPPER\) must be lowercase$/);
  refused(si('{"type":"exactRepository"}'), `${at}: exactRepository needs "dockerRepository"`);
  refused(si('{"type":"remapIdentity","prefix":"example.com"}'), `${at}: remapIdentity needs "signedPrefix"`);
  refused(si('{"type":"remapIdentity","prefix":"","signedPrefix":"example.com"}'), `${at}.prefix: "" is not a host[:port], namespace or repository in the fully expanded form`);
  refused(si('{"type":"remapIdentity","prefix":"example.com/app:1","signedPrefix":"example.com"}'), `${at}.prefix: "example.com/app:1" is not a host[:port], namespace or repository in the fully expanded form`);
  refused(si('{"type":"remapIdentity","prefix":"example.com","signedPrefix":"example.com/"}'), `${at}.signedPrefix: "example.com/" is not a host[:port], namespace or repository in the fully expanded form`);
  refused(si('"matchExact"'), `${at}: must be a JSON object`);
  // Scopes the transports cannot have.
  refused(policyWith(`{"oci":{"relative/dir":${ACCEPT}}}`), 'policy.json: transports.oci["relative/dir"]: invalid scope: must be an absolute path');
  refused(policyWith(`{"oci":{"/":${ACCEPT}}}`), 'policy.json: transports.oci["/"]: invalid scope: use the transport default scope "" instead of "/"');
  refused(policyWith(`{"oci-archive":{"/srv/../etc/":${ACCEPT}}}`), 'policy.json: transports["oci-archive"]["/srv/../etc/"]: invalid scope: not a canonical path (perhaps "/etc")');
  refused(policyWith(`{"docker-archive":{"/srv/a.tar":${ACCEPT}}}`), 'policy.json: transports["docker-archive"]["/srv/a.tar"]: invalid scope: docker-archive supports no scope but the default ""');
  refused(policyWith('[]'), 'policy.json: transports: must be a JSON object');
  refused(policyWith('null'), 'policy.json: transports: must be a JSON object');
  refused('[]', 'policy.json: top level: must be a JSON object');
  // Not JSON, too big, too deep; hostile text stays on one printable line.
  refused('{"default": [{"type": "reject"},]}', 'policy.json: top level: invalid JSON at line 1 column 33: unexpected character "]"');
  refused('{"default": [\n{"type": "reject"}\n', 'policy.json: top level: invalid JSON at line 3 column 1: unexpected end of file');
  refused(`{"default":${ACCEPT}} x`, /^policy\.json: top level: invalid JSON at line 1 column \d+: unexpected text after the JSON value$/);
  refused(`{"default":${ACCEPT},"${'a'.repeat(maxPolicyBytes)}":1}`, `policy.json: larger than ${maxPolicyBytes} bytes`);
  refused(`{"default":${'['.repeat(100)}${']'.repeat(100)}}`, /^policy\.json: default(\[0\])+: nested deeper than 64 levels$/);
  refused(withReq('{"type":"\\u001b[31m\\n\\u202e"}'), 'policy.json: transports.docker["example.com"][0]: unknown requirement type "\\u001b[31m\\n\\u202e"');
  refused(policyWith(`{"docker":{"a\\nb":[{"type":"x"}]}}`), 'policy.json: transports.docker["a\\nb"][0]: unknown requirement type "x"');
  assert.throws(() => parsePolicy(Buffer.from([0x7b, 0xff, 0x7d]), 'policy.json'), /^PolicyError: policy\.json: not UTF-8 text$/);
  assert.throws(() => parsePolicy('{}', 'policy.json'), (err: unknown) => err instanceof PolicyError && err.code === 'policy');
});

test('transports cfs does not know are kept, their scopes unchecked, as containers/image keeps them', () => {
  const p = parsePolicy(policyWith(`{"atomic":{"anything at all":${ACCEPT}},"containers-storage":{"[overlay@/var/lib/containers/storage]":${ACCEPT}}}`), 'policy.json');
  assert.deepEqual([...p.transports.keys()], ['atomic', 'containers-storage']);
});

test('the docker identity of each transport: docker and named docker-archive references have one, oci ones none', () => {
  const identity = (text: string) => dockerIdentityOf(parseReference(text));
  assert.deepEqual(identity('docker://busybox'), { domain: 'docker.io', path: 'library/busybox', tag: 'latest' });
  assert.deepEqual(identity('docker-archive:/srv/a.tar:example.com/app:1'), { domain: 'example.com', path: 'app', tag: '1' });
  assert.equal(identity('docker-archive:/srv/a.tar'), undefined);
  assert.equal(identity('oci:/srv/images/app:v1'), undefined);
  assert.equal(identity('oci-archive:/srv/app.tar:v1'), undefined);
  // So a matchRepository requirement can never accept an oci: image, and exactRepository can.
  assert.equal(identityMatches({ type: 'matchRepository' }, identity('oci:/srv/images/app:v1'), 'docker.io/library/app:v1'), false);
  assert.equal(identityMatches({ type: 'exactRepository', dockerRepository: 'app' }, identity('oci:/srv/images/app:v1'), 'docker.io/library/app:v1'), true);
  assert.equal(identityMatches({ type: 'matchExact' }, identity('docker://busybox'), 'docker.io/library/busybox:latest'), true);
});

test('oci-archive: the policy scopes the file read, not a symbolic link resolved again after it was opened', { skip: !haveSkopeo && 'skopeo missing' }, async () => {
  const tmp = realpathSync(makeTemp('policy-link'));
  try {
    const archive = (dir: string, content: string): string => {
      const layout = join(tmp, `${dir}-layout`);
      writeLayout(layout, 'app', gzLayers([{ path: 'hello', data: `${content}\n`, mtime: 1700000000 }]));
      mkdirSync(join(tmp, dir));
      const file = join(tmp, dir, 'app.tar');
      skopeo('copy', '--quiet', `oci:${layout}:app`, `oci-archive:${file}:app`);
      return file;
    };
    const trusted = archive('trusted', 'trusted');
    const untrusted = archive('untrusted', 'untrusted');
    const ctx: PolicyContext = {
      policy: parsePolicy(JSON.stringify({ default: [{ type: 'reject' }], transports: { 'oci-archive': { [join(tmp, 'trusted')]: [{ type: 'insecureAcceptAnything' }] } } }), 'policy.json'),
      file: 'policy.json',
      env: {},
    };
    const link = join(tmp, 'link.tar');
    symlinkSync(untrusted, link);
    const source = await openSource(`oci-archive:${link}:app`);
    try {
      // The link now names the trusted file; the source opened (and reads) the untrusted one.
      unlinkSync(link);
      symlinkSync(trusted, link);
      const img = await source.resolve();
      assert.equal(img.manifestDigest, JSON.parse(skopeo('inspect', `oci-archive:${untrusted}:app`)).Digest);
      await assert.rejects(checkPolicy(ctx, source, img), (err: Error) => {
        assert.ok(err instanceof PolicyRefusedError, String(err));
        assert.match(err.message, /: refused by policy\.json default \(reject\): images here are rejected$/);
        return true;
      });
    } finally {
      await source.close();
    }
    // Opened through the link now, the trusted file is accepted under its own scope.
    const again = await openSource(`oci-archive:${link}:app`);
    try {
      const verdict = await checkPolicy(ctx, again, await again.resolve());
      assert.equal(verdict.scope, `transports["oci-archive"][${JSON.stringify(join(tmp, 'trusted'))}]`);
    } finally {
      await again.close();
    }
  } finally {
    removeTemp(tmp);
  }
});

test('a key file named many times by a policy is held at its size, not at the 8 MiB bound each time', async () => {
  const { readUserFile } = await import('../src/oci/user-files.js');
  const tmp = makeTemp('user-file');
  try {
    const key = join(tmp, 'key.gpg');
    writeFileSync(key, 'a small key\n');
    const read = [];
    for (let i = 0; i < 100; i++) read.push((await readUserFile(key, 8 * 1024 * 1024, 'key file'))!);
    assert.equal(read[0]!.toString(), 'a small key\n');
    const held = read.reduce((sum, b) => sum + b.buffer.byteLength, 0);
    assert.ok(held < 1024 * 1024, `100 reads of a 12-byte file hold ${held} bytes`);
    // Still bounded; a FIFO still refused at once.
    writeFileSync(key, Buffer.alloc(100));
    await assert.rejects(readUserFile(key, 99, 'key file'), /key file .*key\.gpg: larger than 99 bytes$/);
    const fifo = join(tmp, 'fifo');
    spawnSync('mkfifo', [fifo]);
    await assert.rejects(readUserFile(fifo, 99, 'key file'), /fifo: not a regular file$/);
  } finally {
    removeTemp(tmp);
  }
});
