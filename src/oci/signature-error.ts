/** A key or signature file's bytes, and how to name it in a message (its path, or "keyData of …"). */
export interface NamedBytes {
  what: string;
  bytes: Uint8Array;
}
