import { ComposefsError, type ComposefsErrorOptions } from '../errors.js';

/**
 * Why an image could not be read from where it is. `code` is stable:
 * 'invalid-reference', 'not-found', 'unauthorized', 'denied', 'tls',
 * 'network', 'unsupported', 'digest-mismatch', 'size-mismatch',
 * 'invalid-manifest', 'registry'.
 */
export class SourceError extends ComposefsError {
  constructor(message: string, code: string, options?: ComposefsErrorOptions) {
    super(message, code, options);
  }
}
