/**
 * The numbers the writer's loops use, as const enums (literals after tsc):
 * defined once, in src/tree/model.ts (file types) and src/erofs/format.ts
 * (the EROFS layout); named here for the writer's passes.
 */
export { Mode } from '../../tree/model.js';
export { Erofs } from '../format.js';
