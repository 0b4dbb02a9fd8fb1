/**
 * A strict JSON reader for the documents the containers tools read strictly
 * (containers-policy.json, signature payloads): RFC 8259, objects as Maps in
 * document order (a duplicated key is refused, no key reaches a prototype),
 * nesting bounded. Errors come from the caller's `fail`, given the JSON path
 * of the value (`default[0].keyPath`) and the reason (a syntax error says its
 * line and column).
 */
import { printableJson } from '../printable.js';

export type Json = null | boolean | number | string | Json[] | JsonObject;
export type JsonObject = Map<string, Json>;

export const maxJsonDepth = 64;

/** How a member reads in a path: `a.b`, or `a["x-y"]` for a key that is not an identifier. */
export function member(path: string, key: string): string {
  const safe = /^[A-Za-z_][A-Za-z0-9_]*$/.test(key) ? key : undefined;
  if (path === '') return safe ?? `[${printableJson(key)}]`;
  return safe !== undefined ? `${path}.${safe}` : `${path}[${printableJson(key)}]`;
}

/** The value `text` holds; anything else (syntax, duplicates, depth, text after it) is `fail(path, reason)`. */
export function parseStrictJson(text: string, fail: (path: string, reason: string) => Error): Json {
  return new StrictJson(text, fail).parseDocument();
}

class StrictJson {
  private pos = 0;
  constructor(
    private readonly text: string,
    private readonly fail: (path: string, reason: string) => Error,
  ) {}

  parseDocument(): Json {
    const value = this.value('', 0);
    this.space();
    if (this.pos < this.text.length) throw this.syntax('unexpected text after the JSON value');
    return value;
  }

  private syntax(reason: string): Error {
    const before = this.text.slice(0, this.pos);
    const line = before.split('\n').length;
    const column = this.pos - before.lastIndexOf('\n');
    return this.fail('', `invalid JSON at line ${line} column ${column}: ${reason}`);
  }

  private space(): void {
    while (this.pos < this.text.length && ' \t\n\r'.includes(this.text[this.pos]!)) this.pos++;
  }

  private value(path: string, depth: number): Json {
    if (depth > maxJsonDepth) throw this.fail(path, `nested deeper than ${maxJsonDepth} levels`);
    this.space();
    const c = this.text[this.pos];
    if (c === '{') return this.object(path, depth);
    if (c === '[') return this.array(path, depth);
    if (c === '"') return this.string();
    for (const [word, v] of [['true', true], ['false', false], ['null', null]] as const) {
      if (this.text.startsWith(word, this.pos)) {
        this.pos += word.length;
        return v;
      }
    }
    const m = /^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/.exec(this.text.slice(this.pos, this.pos + 400));
    if (m) {
      this.pos += m[0].length;
      return Number(m[0]);
    }
    throw this.syntax(c === undefined ? 'unexpected end of file' : `unexpected character ${printableJson(c)}`);
  }

  private object(path: string, depth: number): JsonObject {
    this.pos++;
    const out: JsonObject = new Map();
    this.space();
    if (this.text[this.pos] === '}') {
      this.pos++;
      return out;
    }
    for (;;) {
      this.space();
      if (this.text[this.pos] !== '"') throw this.syntax('expected a member name');
      const key = this.string();
      if (out.has(key)) throw this.fail(path, `duplicate key ${printableJson(key)}`);
      this.space();
      if (this.text[this.pos] !== ':') throw this.syntax("expected ':'");
      this.pos++;
      out.set(key, this.value(member(path, key), depth + 1));
      this.space();
      const c = this.text[this.pos];
      if (c === undefined) throw this.syntax('unexpected end of file');
      this.pos++;
      if (c === '}') return out;
      if (c !== ',') throw this.syntax("expected ',' or '}'");
    }
  }

  private array(path: string, depth: number): Json[] {
    this.pos++;
    const out: Json[] = [];
    this.space();
    if (this.text[this.pos] === ']') {
      this.pos++;
      return out;
    }
    for (;;) {
      out.push(this.value(`${path}[${out.length}]`, depth + 1));
      this.space();
      const c = this.text[this.pos];
      if (c === undefined) throw this.syntax('unexpected end of file');
      this.pos++;
      if (c === ']') return out;
      if (c !== ',') throw this.syntax("expected ',' or ']'");
    }
  }

  private string(): string {
    const start = this.pos;
    this.pos++;
    for (;;) {
      const c = this.text[this.pos];
      if (c === undefined) throw this.syntax('unterminated string');
      if (c === '"') break;
      if (c < ' ') throw this.syntax('control character in a string');
      if (c === '\\') {
        const e = this.text[this.pos + 1];
        if (e === 'u') {
          if (!/^[0-9a-fA-F]{4}$/.test(this.text.slice(this.pos + 2, this.pos + 6))) throw this.syntax('malformed \\u escape');
          this.pos += 6;
          continue;
        }
        if (e === undefined || !'"\\/bfnrt'.includes(e)) throw this.syntax('malformed escape');
        this.pos += 2;
        continue;
      }
      this.pos++;
    }
    this.pos++;
    return JSON.parse(this.text.slice(start, this.pos)) as string;
  }
}
