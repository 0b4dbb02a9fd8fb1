/**
 * The speed floor of a transfer, as curl's --speed-limit and --speed-time:
 * a response body that brings fewer than `bytesPerSecond` × `seconds` bytes
 * in `seconds` fails. Only the time spent waiting for the network counts: a
 * reader that is slow itself (a busy disk) does not make the server look
 * slow. Without a floor a server sending a byte every few seconds would hold
 * the pull, and the repository lock it holds, for ever.
 */
export interface SpeedFloor {
  /** 0: no floor. */
  bytesPerSecond: number;
  seconds: number;
}

export const DEFAULT_SPEED_FLOOR: SpeedFloor = { bytesPerSecond: 1024, seconds: 30 };

export class TooSlowError extends Error {
  constructor(
    readonly bytes: number,
    readonly floor: SpeedFloor,
  ) {
    super(`transfer slower than ${floor.bytesPerSecond} bytes/s for ${floor.seconds} s (${bytes} bytes in that time); giving up (see --speed-limit and --speed-time)`);
    this.name = 'TooSlowError';
  }
}

/** The chunks of `body`, failing with TooSlowError below the floor. */
export async function* withSpeedFloor(body: AsyncIterable<Buffer>, floor: SpeedFloor): AsyncGenerator<Buffer> {
  if (!(floor.bytesPerSecond > 0)) {
    yield* body;
    return;
  }
  const it = body[Symbol.asyncIterator]();
  const periodMs = floor.seconds * 1000;
  const wanted = floor.bytesPerSecond * floor.seconds;
  let waited = 0;
  let bytes = 0;
  let pending: Promise<IteratorResult<Buffer>> | null = null;
  try {
    for (;;) {
      pending ??= it.next();
      const started = performance.now();
      let timer: NodeJS.Timeout | undefined;
      const periodEnd = new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), Math.max(0, periodMs - waited))));
      const r = await Promise.race([pending, periodEnd]);
      clearTimeout(timer);
      waited += performance.now() - started;
      if (r !== null) {
        pending = null;
        if (r.done) return;
        bytes += r.value.length;
      }
      if (waited >= periodMs) {
        if (bytes < wanted) throw new TooSlowError(bytes, floor);
        waited = 0;
        bytes = 0;
      }
      if (r !== null) yield r.value;
    }
  } finally {
    // A read may still be pending: its end, whatever it is, is nobody's now; return() destroys the body under it.
    pending?.catch(() => {});
    it.return?.().catch(() => {});
  }
}
