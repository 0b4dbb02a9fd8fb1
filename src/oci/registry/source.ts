import type { Readable } from 'node:stream';
import type { Descriptor, ImageSource, ResolvedImage, SourceOptions } from '../source.js';
import type { SourceReference } from '../reference.js';
import type { PlatformChoice } from '../manifest.js';
import { SourceError } from '../source-errors.js';

export class RegistrySource implements ImageSource {
  constructor(
    private readonly ref: Extract<SourceReference, { transport: 'docker' }>,
    readonly defaultName: string,
    readonly choice: PlatformChoice,
    readonly options: SourceOptions,
  ) {}
  async resolve(): Promise<ResolvedImage> {
    throw new SourceError(`${this.ref.text}: the registry transport is not implemented yet`, 'unsupported');
  }
  async openBlob(descriptor: Descriptor): Promise<Readable> {
    throw new SourceError(`${descriptor.digest}: the registry transport is not implemented yet`, 'unsupported');
  }
  async close(): Promise<void> {}
}
