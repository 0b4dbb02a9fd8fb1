import { ComposefsError, type ComposefsErrorOptions } from '../errors.js';

/**
 * A signature, a signing key or a signed payload that is refused: one line
 * naming what (the signature file, the key file, the payload) and why.
 */
export class SignatureError extends ComposefsError {
  constructor(message: string, options?: ComposefsErrorOptions) {
    super(message, 'signature', options);
  }
}

/** A key or signature file's bytes, and how to name it in a message (its path, or "keyData of …"). */
export interface NamedBytes {
  what: string;
  bytes: Uint8Array;
}
