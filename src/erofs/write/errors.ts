/** A tree no composefs image can hold, or a writer invariant broken. */
export class ImageWriteError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ImageWriteError';
  }
}
