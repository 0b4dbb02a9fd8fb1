import { UserError } from './errors.js';

export function run(_args: string[], prog: string): number {
  throw new UserError(`${prog} is not implemented yet`);
}
