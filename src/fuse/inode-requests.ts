/**
 * The answers about names and inodes, which come from the image alone:
 * LOOKUP, GETATTR, READLINK, READDIR(PLUS), GETXATTR, LISTXATTR, STATFS.
 * Each writes its reply body at protocol.BODY of the thread's reply buffer
 * and returns the body's length, or throws a ReplyError with the errno to
 * answer instead.
 *
 * Node ids are derived from the image (nid + 2; the root is 1), so the
 * server keeps no table of looked-up inodes and FORGET costs nothing.
 */
import { constants as osConstants } from 'node:os';
import type { ImageView, Ino } from './image.js';
import { ImageFormatError } from '../erofs/header.js';
import { S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from '../tree/model.js';
import * as P from './protocol.js';

const E = osConstants.errno;
/** Names and attributes never change: the kernel may cache them for a year. */
export const VALID = 365 * 24 * 3600;
const NAME_MAX = 255;
const FS_BLOCK = 4096;
const EROFS_FT_CHRDEV = 3;
const TRUSTED = 'trusted.';

export class InodeRequests {
  constructor(
    readonly image: ImageView,
    private readonly reply: Buffer,
    private readonly log: (line: string) => void,
  ) {}

  nidOf(nodeid: number): number {
    return nodeid === P.FUSE_ROOT_ID ? this.image.rootNid : nodeid - 2;
  }

  nodeidOf(nid: number): number {
    return nid === this.image.rootNid ? P.FUSE_ROOT_ID : nid + 2;
  }

  attrOf(ino: Ino): P.Attr {
    const type = ino.mode & S_IFMT;
    const hasBlocks = type === S_IFREG || type === S_IFDIR || type === S_IFLNK;
    return {
      ino: ino.nid,
      size: ino.size,
      blocks: hasBlocks ? Math.ceil(ino.size / FS_BLOCK) * (FS_BLOCK / 512) : 0,
      mtimeSec: ino.mtimeSec,
      mtimeNsec: ino.mtimeNsec,
      mode: ino.mode,
      nlink: ino.nlink,
      uid: ino.uid,
      gid: ino.gid,
      rdev: this.image.rdev(ino),
    };
  }

  /** The inode behind a node id. */
  inode(nodeid: number): Ino {
    return this.image.inode(this.nidOf(nodeid));
  }

  /** The regular file behind a node id (EISDIR, EINVAL for anything else). */
  regular(nodeid: number): Ino {
    const ino = this.inode(nodeid);
    const t = ino.mode & S_IFMT;
    if (t === S_IFDIR) throw new P.ReplyError(E.EISDIR);
    if (t !== S_IFREG) throw new P.ReplyError(E.EINVAL);
    return ino;
  }

  private dir(nodeid: number): Ino {
    const dir = this.inode(nodeid);
    if ((dir.mode & S_IFMT) !== S_IFDIR) throw new P.ReplyError(E.ENOTDIR);
    return dir;
  }

  getattr(nodeid: number): number {
    return P.encodeAttrOut(this.reply, P.BODY, VALID, this.attrOf(this.inode(nodeid)));
  }

  readlink(nodeid: number): number {
    const ino = this.inode(nodeid);
    if ((ino.mode & S_IFMT) !== S_IFLNK) throw new P.ReplyError(E.EINVAL);
    return this.image.symlinkTarget(ino).copy(this.reply, P.BODY);
  }

  lookup(parent: number, name: Buffer): number {
    const dir = this.dir(parent);
    const e = name.length > NAME_MAX ? null : this.image.lookup(dir, name);
    if (e !== null) {
      const ino = this.image.inode(e.nid);
      if (!this.image.isWhiteout(ino)) return P.encodeEntry(this.reply, P.BODY, this.nodeidOf(e.nid), VALID, this.attrOf(ino));
    }
    // A negative entry, cached as long as the positive ones: the image never changes.
    return P.encodeNoEntry(this.reply, P.BODY, VALID);
  }

  /** The records from `offset` that fit in `size` bytes; whiteouts are left out (as overlayfs hides them). */
  readdir(nodeid: number, offset: number, size: number, plus: boolean): number {
    const dir = this.dir(nodeid);
    const r = this.reply;
    const limit = Math.min(size, r.length - P.BODY);
    let len = 0;
    this.image.readdir(dir, offset, (e, next) => {
      const name = this.image.name(e);
      if (len + P.direntSize(name.length, plus) > limit) return false;
      let ino: Ino | null = null;
      const dots = name.length <= 2 && name[0] === 0x2e && (name.length === 1 || name[1] === 0x2e);
      if ((plus && !dots) || e.ftype === EROFS_FT_CHRDEV /* maybe a whiteout */) {
        try {
          ino = this.image.inode(e.nid);
        } catch (err) {
          if (!(err instanceof ImageFormatError)) throw err;
          this.log(`image: ${err.message}`);
        }
        if (ino !== null && this.image.isWhiteout(ino)) return true;
      }
      const type = P.DT_OF_FT[e.ftype] ?? 0;
      const at = P.BODY + len;
      if (!plus) len += P.encodeDirent(r, at, e.nid, next, type, name);
      else {
        const entry = ino !== null && !dots ? { nodeid: this.nodeidOf(e.nid), valid: VALID, attr: this.attrOf(ino) } : null;
        len += P.encodeDirentPlus(r, at, entry, e.nid, next, type, name);
      }
      return true;
    });
    return len;
  }

  getxattr(nodeid: number, size: number, name: Buffer): number {
    const x = this.image.xattrs(this.inode(nodeid)).find((a) => a.name.equals(name));
    if (!x) throw new P.ReplyError(E.ENODATA);
    return this.sized(size, x.value);
  }

  /**
   * The kernel mount lists trusted.* names only to callers with
   * CAP_SYS_ADMIN. A request carries the caller's uid, not its capabilities:
   * uid 0 stands for privilege here (the kernel still refuses reading a
   * trusted.* value to a caller without it).
   */
  listxattr(nodeid: number, size: number, uid: number): number {
    const parts: Buffer[] = [];
    for (const x of this.image.xattrs(this.inode(nodeid))) {
      if (uid !== 0 && x.name.length >= TRUSTED.length && x.name.toString('latin1', 0, TRUSTED.length) === TRUSTED) continue;
      parts.push(x.name, Buffer.from([0]));
    }
    return this.sized(size, Buffer.concat(parts));
  }

  /** The xattr answer: the size alone when asked with size 0, ERANGE when it does not fit. */
  private sized(size: number, value: Buffer): number {
    if (size === 0) return P.encodeXattrSize(this.reply, P.BODY, value.length);
    if (value.length > size) throw new P.ReplyError(E.ERANGE);
    return value.copy(this.reply, P.BODY);
  }

  statfs(): number {
    const h = this.image.header;
    return P.encodeStatfsOut(this.reply, P.BODY, { blocks: h.blocks, files: h.inodes, bsize: FS_BLOCK, namelen: NAME_MAX, frsize: FS_BLOCK });
  }
}
