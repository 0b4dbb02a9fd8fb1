/** How `cfs pull --explain` and `cfs inspect` word an image's form. */
import type { ImageForm } from '../repo/form.js';

/** One line: the form an image was built in and, for 'auto' falling back to unpacked, why. */
export function explainForm(form: ImageForm, keepUserXattrs: boolean | undefined, reason: string | undefined): string {
  if (form === 'canonical') return `form: canonical (composefs-rs canonical generation, format version 1; xattrs kept: security.capability${keepUserXattrs ? ', user.*' : ''})`;
  return reason === undefined ? 'form: unpacked (as umoci raw unpack writes it)' : `form: unpacked, because the image has no canonical form: ${reason}`;
}
