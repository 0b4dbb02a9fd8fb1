/**
 * One entry point from a reference string to an ImageSource. Each transport
 * is loaded only when used, so reading a local layout never loads the
 * registry client.
 */
import { realpathSync } from 'node:fs';
import { resolve } from 'node:path';
import type { ImageSource, Platform, SourceOptions } from './source.js';
import { defaultNameOf, parseReference } from './reference.js';
import { parsePlatform } from './manifest.js';

function platformOf(options: SourceOptions): Platform | undefined {
  if (options.platform === undefined) return undefined;
  return typeof options.platform === 'string' ? parsePlatform(options.platform) : options.platform;
}

/**
 * The path made absolute with its symbolic links resolved, once: what is
 * read and what a policy scopes are then the same place, as containers/image
 * reads an oci: reference through its resolved directory. A path that does
 * not resolve is kept (its reading fails with its own message).
 */
function resolvedPath(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return resolve(path);
  }
}

export async function openSource(reference: string, options: SourceOptions = {}): Promise<ImageSource> {
  const ref = parseReference(reference);
  const choice = { platform: platformOf(options) };
  const defaultName = defaultNameOf(ref);
  switch (ref.transport) {
    case 'oci': {
      const [{ OciLayoutSource }, { DirectoryFiles }] = await Promise.all([import('./layout.js'), import('./files.js')]);
      const path = resolvedPath(ref.path);
      return new OciLayoutSource(new DirectoryFiles(path), reference, ref.ref, defaultName, choice, true, path);
    }
    case 'oci-archive': {
      const [{ OciLayoutSource }, { TarFiles }] = await Promise.all([import('./layout.js'), import('./files.js')]);
      const path = resolvedPath(ref.path);
      const files = await TarFiles.open(path, reference);
      return new OciLayoutSource(files, reference, ref.ref, defaultName, choice, false, path);
    }
    case 'docker-archive': {
      const { DockerArchiveSource } = await import('./docker-archive.js');
      return DockerArchiveSource.open(ref, defaultName);
    }
    case 'docker': {
      const { RegistrySource } = await import('./registry/source.js');
      return new RegistrySource(ref, defaultName, choice, options);
    }
  }
}
