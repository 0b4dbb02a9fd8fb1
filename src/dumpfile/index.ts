/** The composefs dump-file format (composefs-dump(5)): parser and writer. */
export { parseDump, parseDumpFlat, DumpParseError, type ParseOptions } from './parse.js';
export { writeDump, writeDumpChunks } from './write.js';
export { escapeField, ESCAPE_EQUAL, ESCAPE_LONE_DASH } from './escape.js';
