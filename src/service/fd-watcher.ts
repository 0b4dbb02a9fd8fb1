/**
 * Readiness of raw descriptors on Node's event loop: one epoll set for the
 * process, waited on by one libuv worker thread (src/sys/epoll.ts), its
 * events dispatched here on the main thread. The mount service and its
 * client read and write their sockets themselves (descriptors travel with
 * the bytes), so they cannot use net.Socket; this is their event source.
 *
 * Events carry a token, never the descriptor: a descriptor closed and
 * reused while a wait was in flight must not receive its predecessor's events.
 * Nothing is waited on while nothing is watched, so the process can exit.
 */
import { epollAdd, epollCreate, epollEventBuffer, epollModify, epollRemove, epollWaitAsync, eventFd, eventFdDrain, eventFdSignal, EPOLLIN } from '../sys/epoll.js';

export { EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP, EPOLLRDHUP } from '../sys/epoll.js';

export interface Watch {
  /** Change the events of interest (0: only errors and hang-ups, which epoll always reports). */
  modify(events: number): void;
  /** Stop watching; call before closing the descriptor. */
  stop(): void;
}

const WAKE_TOKEN = 0;
const MAX_EVENTS = 256;

class FdWatcher {
  private readonly epfd = epollCreate();
  private readonly wake = eventFd();
  private readonly buffer = epollEventBuffer(MAX_EVENTS);
  private readonly watched = new Map<number, (events: number) => void>();
  private nextToken = 1;
  private waiting = false;
  private failures = 0;

  constructor() {
    epollAdd(this.epfd, this.wake, EPOLLIN, WAKE_TOKEN);
  }

  watch(fd: number, events: number, onReady: (events: number) => void): Watch {
    const token = this.nextToken++;
    epollAdd(this.epfd, fd, events, token);
    this.watched.set(token, onReady);
    this.arm();
    let stopped = false;
    return {
      modify: (next) => {
        if (!stopped) epollModify(this.epfd, fd, next, token);
      },
      stop: () => {
        if (stopped) return;
        stopped = true;
        this.watched.delete(token);
        try {
          epollRemove(this.epfd, fd);
        } catch {
          // already closed: the kernel dropped it from the set
        }
        // Let a worker blocked on an empty set return, so the event loop can end.
        if (this.watched.size === 0 && this.waiting) eventFdSignal(this.wake);
      },
    };
  }

  private arm(): void {
    if (this.waiting || this.watched.size === 0) return;
    this.waiting = true;
    epollWaitAsync(this.epfd, this.buffer, -1, (events) => {
      this.waiting = false;
      if (events === null) {
        // EINTR, or a broken set: retry, but never spin on a persistent failure.
        this.failures++;
        setTimeout(() => this.arm(), Math.min(this.failures, 100)).unref();
        return;
      }
      this.failures = 0;
      for (const { token, events: ready } of events) {
        if (token === WAKE_TOKEN) {
          eventFdDrain(this.wake);
          continue;
        }
        const onReady = this.watched.get(token);
        if (!onReady) continue; // stopped while the wait was in flight
        try {
          onReady(ready);
        } catch {
          // Each watcher handles its own failures; one that throws must not starve the others.
        }
      }
      this.arm();
    });
  }
}

let shared: FdWatcher | null = null;

/** Watch `fd` for `events` (EPOLLIN, EPOLLOUT…, level-triggered) on the process's one watcher. */
export function watchFd(fd: number, events: number, onReady: (events: number) => void): Watch {
  shared ??= new FdWatcher();
  return shared.watch(fd, events, onReady);
}
