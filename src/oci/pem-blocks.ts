/**
 * Finding PEM-style blocks (`-----BEGIN TYPE-----` … `-----END TYPE-----`:
 * PEM keys, OpenPGP armor) in a file the user named, in time linear in its
 * size. A lazy regular expression from each BEGIN to its END rescans the
 * rest of the file for every BEGIN that has no END: a key file of a
 * megabyte of BEGIN lines took tens of seconds. As Go's pem.Decode and
 * gpg's armor reader do, a block ends at the first END line after its
 * BEGIN, which must name the same type; a BEGIN whose first END names
 * another type is skipped.
 */

export interface PemBlockText {
  /** The TYPE of the BEGIN line (the `begin` pattern's first group). */
  type: string;
  /** Offset of the BEGIN line. */
  start: number;
  /** Offsets of the text between the BEGIN line and the END line. */
  bodyStart: number;
  bodyEnd: number;
  /** Offset just past the END line's closing dashes. */
  end: number;
}

/**
 * The blocks of `text` in order. `begin` matches a BEGIN line (it must not
 * match across a `-----END ` marker) with the type as its first group; it is
 * copied, so the caller's flags other than `g` are kept.
 */
export function* pemBlocks(text: string, begin: RegExp): Generator<PemBlockText> {
  const re = new RegExp(begin.source, begin.flags.includes('g') ? begin.flags : `${begin.flags}g`);
  // The first END marker at or after the current BEGIN line: found once, reused by every BEGIN before it.
  let nextEnd = -1;
  for (let m = re.exec(text); m !== null; m = re.exec(text)) {
    const bodyStart = m.index + m[0].length;
    if (nextEnd < bodyStart) {
      nextEnd = text.indexOf('-----END ', bodyStart);
      if (nextEnd < 0) return;
    }
    const endLine = `-----END ${m[1]}-----`;
    if (!text.startsWith(endLine, nextEnd)) continue;
    yield { type: m[1]!, start: m.index, bodyStart, bodyEnd: nextEnd, end: nextEnd + endLine.length };
    re.lastIndex = nextEnd + endLine.length;
  }
}
