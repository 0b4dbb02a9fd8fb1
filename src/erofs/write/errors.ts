import { ComposefsError } from '../../errors.js';

/** A tree no composefs image can hold, or a writer invariant broken. */
export class ImageWriteError extends ComposefsError {
  constructor(message: string) {
    super(message, 'image-write');
  }
}
