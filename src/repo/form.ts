/**
 * The two forms of an image's composefs image (src/repo/build.ts builds
 * them), in a module of their own so that naming them, or catching
 * CanonicalFormError, loads none of the builders.
 */
import { ComposefsError, type ComposefsErrorOptions } from '../errors.js';

/** 'canonical': the composefs-rs canonical form a seal digests; 'unpacked': the rootfs `umoci raw unpack` writes. */
export type ImageForm = 'canonical' | 'unpacked';
/** What a pull asks for: a form, or 'auto' (canonical when the image has that form, else unpacked). */
export type FormChoice = ImageForm | 'auto';

export const IMAGE_FORMS: readonly FormChoice[] = ['auto', 'canonical', 'unpacked'];

/** The composefs format version of the canonical form (composefs-rs FormatVersion::V1). */
export const CANONICAL_FORMAT_VERSION = 1;

/** Why an image has no canonical form: one line, naming the layer and entry where there is one. */
export class CanonicalFormError extends ComposefsError {
  constructor(message: string, options?: ComposefsErrorOptions) {
    super(message, 'canonical-form', options);
  }
}
