/**
 * What a checking walk of src/erofs/reader.ts decoded beyond the tree: the
 * layout facts (where data and names lie, raw inode fields, dirent types,
 * `.` and `..`) in the order the walk met them, and the damage it stepped
 * over. The checks of src/erofs/image-checks.ts are a pass over these facts,
 * so the walk itself only decodes; the order of the facts is the order fsck
 * reports problems in. The facts are handed over as they are decoded rather
 * than kept: keeping 100,000 small objects alive until the walk ends (the
 * cs9 image) made a checking read of it twice as slow (75 -> 130 ms cold).
 */
import type { Inode } from '../tree/model.js';
import type { ImageHeader } from './header.js';

/** A directory on the walk's path (the root has no parent and no name). */
export interface DirectoryPlace {
  readonly parent: DirectoryPlace | null;
  readonly name: Buffer | null;
  readonly inode: Inode;
}

/**
 * Where an entry is: its directory and its name at image[nameStart..nameEnd)
 * (the root: no directory, nameStart -1). Numbers rather than a view: most
 * entries never need their path.
 */
export interface EntryPlace {
  readonly directory: DirectoryPlace | null;
  readonly nameStart: number;
  readonly nameEnd: number;
}

export type DecodedFact =
  /** Damage confined to one entry (or a duplicate name): the entry was left out. */
  | { kind: 'damage'; path: Buffer; code: string; message: string }
  /** An inode's inline data: `length` bytes at `offset`. */
  | { kind: 'inline-tail'; nid: number; offset: number; length: number }
  /** An inode's own fields, once its data (symlink target, file content) was read. */
  | {
      kind: 'inode';
      at: EntryPlace;
      nid: number;
      compact: boolean;
      /** The stored i_format (version and layout bits). */
      format: number;
      layout: number;
      /** The stored mode (before a whiteout escape turns a file into a device). */
      mode: number;
      size: number;
      /** The union field: the chunk format of a chunk-based file. */
      union: number;
      mtimeNsec: number;
      /** Where inline data (or a chunk index) would start. */
      tailOffset: number;
      /** Bytes of the symlink target (-1: not a symlink). */
      symlinkLength: number;
    }
  /** One xattr as stored and applied; `filter` is the inode's name filter word when the image has filters, else 0. */
  | {
      kind: 'xattr';
      at: EntryPlace;
      nid: number;
      filter: number;
      nameIndex: number;
      nameStart: number;
      nameLength: number;
      valueStart: number;
      valueEnd: number;
      /** HAS_REDIRECT / HAS_METACOPY (src/erofs/overlay.ts) when it was taken as one of them, else 0. */
      overlayFlags: number;
    }
  /** An inode's xattrs all applied: what the overlay xattrs made of it. */
  | { kind: 'overlay'; at: EntryPlace; mode: number; layout: number; size: number; flags: number }
  /** A directory entered: what its `.` and `..` point at (-1: missing), and whether the names were stored in order. */
  | { kind: 'directory'; at: DirectoryPlace; nid: number; parentNid: number; dot: number; dotdot: number; sorted: boolean }
  /** A directory left: its link count and how many subdirectories the walk found in it. */
  | { kind: 'directory-done'; at: DirectoryPlace; subdirectories: number }
  /** A directory entry's type against its inode (`linked`: a further name of an inode already met). */
  | { kind: 'entry-type'; at: EntryPlace; direntType: number; mode: number; rdev: number; linked: boolean };

/** Hears, in decoding order, what a checking walk decoded. */
export interface DecodeListener {
  header(header: ImageHeader): void;
  fact(fact: DecodedFact): void;
  /** The walk completed: distinct inodes met, whiteouts included. */
  completed(inodeCount: number): void;
}

const SLASH = Buffer.from('/');

/** The path of a directory, or of the entry `name` in it. */
export function placePath(directory: DirectoryPlace | null, name: Buffer | null = null): Buffer {
  const parts: Buffer[] = [];
  if (name) parts.push(name);
  for (let d = directory; d && d.name; d = d.parent) parts.push(d.name);
  if (parts.length === 0) return SLASH;
  const pieces: Buffer[] = [];
  for (let i = parts.length - 1; i >= 0; i--) pieces.push(SLASH, parts[i]);
  return Buffer.concat(pieces);
}

export const entryPath = (image: Buffer, at: EntryPlace): Buffer => placePath(at.directory, at.nameStart < 0 ? null : image.subarray(at.nameStart, at.nameEnd));
