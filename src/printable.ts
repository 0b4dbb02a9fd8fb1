/**
 * Text from images, registries and repositories made safe for a terminal:
 * the control characters (C0, DEL, C1) and the bidirectional formatting
 * characters are written as `\xHH` or `\u{HHHH}`, so that a config's
 * `created` or a layer's path cannot move the cursor, recolour or retitle
 * the terminal, start a new line of output, or reorder what is shown.
 * Everything else, UTF-8 included, is shown as it is.
 */
// eslint-disable-next-line no-control-regex
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

export function printable(text: string): string {
  return text.replace(UNPRINTABLE, (c) => {
    const code = c.charCodeAt(0);
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u{${code.toString(16)}}`;
  });
}

/**
 * JSON for a terminal: JSON.stringify escapes C0 but leaves DEL, C1 and the
 * bidirectional characters raw; here they are \u escapes too (the same JSON).
 */
export function printableJson(value: unknown, indent?: number): string {
  return JSON.stringify(value, null, indent).replace(/[\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/**
 * Bytes from an image (a path, a name) as one printable line for a message:
 * graphic ASCII as it is, `\\` doubled, `\n` `\r` `\t`, anything else
 * (space, control characters, bytes of UTF-8) as `\xHH` — the escapes the
 * dump format uses, so a path in a message reads as it does in a dump.
 */
export function printableBytes(bytes: Uint8Array): string {
  let out = '';
  for (const c of bytes) {
    if (c > 0x20 && c < 0x7f && c !== 0x5c) out += String.fromCharCode(c);
    else if (c === 0x5c) out += '\\\\';
    else if (c === 0x0a) out += '\\n';
    else if (c === 0x0d) out += '\\r';
    else if (c === 0x09) out += '\\t';
    else out += `\\x${c.toString(16).padStart(2, '0')}`;
  }
  return out;
}
