/**
 * Varlink over a unix stream socket, with descriptors (https://varlink.org):
 * each message is one JSON object ended by a NUL byte; a call is
 * `{"method": "iface.Method", "parameters": {…}, "oneway"?, "more"?}`, a reply
 * `{"parameters": {…}}` or `{"error": "iface.Error", "parameters": {…}}`.
 * Descriptors travel with SCM_RIGHTS in the sendmsg that carries a message's
 * first byte, as systemd and composefs-rs send them.
 *
 * The server is built to be hostile-proof, one connection never affecting
 * another: a message is at most `maxMessageBytes` (1 MiB) and takes at most
 * `maxFdsPerMessage` descriptors; it must arrive whole within
 * `messageTimeoutMs` of its first byte; a reply must drain within
 * `writeTimeoutMs`; an idle connection closes after `idleTimeoutMs`;
 * connections are bounded in all and per uid. A connection is served one
 * call at a time (and is not read meanwhile), so its memory is bounded too.
 * Every received descriptor is closed unless its handler takes it. Protocol
 * violations get an error reply and the connection closes; a handler that
 * throws gets an error reply and the connection stays.
 */
import { lstatSync, mkdtempSync, renameSync, rmdirSync, chmodSync, unlinkSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { ComposefsError, IoError, ioError, reasonOf } from '../errors.js';
import { parseStrictJson, type Json, type JsonObject } from '../oci/strict-json.js';
import { printable } from '../printable.js';
import { SysError } from '../sys/libc.js';
import {
  acceptConnection,
  closeFds,
  connectUnix,
  listenUnix,
  peerCredentials,
  peerGroups,
  peerPidfd,
  receiveWithFds,
  sendWithFds,
  type PeerCredentials,
} from '../sys/socket.js';
import { EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, watchFd, type Watch } from './fd-watcher.js';
import { MountError } from './mount-interface.js';

export const MiB = 1024 * 1024;

/** The standard errors of org.varlink.service. */
export const VarlinkServiceError = {
  InterfaceNotFound: 'org.varlink.service.InterfaceNotFound',
  MethodNotFound: 'org.varlink.service.MethodNotFound',
  MethodNotImplemented: 'org.varlink.service.MethodNotImplemented',
  InvalidParameter: 'org.varlink.service.InvalidParameter',
} as const;

const SERVICE_INTERFACE = 'org.varlink.service';

const serviceInterfaceDescription = `# The Varlink Service Interface is provided by every varlink service. It
# describes the service and the interfaces it implements.
interface org.varlink.service

# Get a list of all the interfaces a service provides and information
# about the implementation.
method GetInfo() -> (
  vendor: string,
  product: string,
  version: string,
  url: string,
  interfaces: []string
)

# Get the description of an interface that is implemented by this service.
method GetInterfaceDescription(interface: string) -> (description: string)

# The requested interface was not found.
error InterfaceNotFound (interface: string)

# The requested method was not found
error MethodNotFound (method: string)

# The interface defines the requested method, but the service does not
# implement it.
error MethodNotImplemented (method: string)

# One of the passed parameters is invalid.
error InvalidParameter (parameter: string)
`;

/**
 * A varlink error: a reply the server sends (thrown by a handler) or one the
 * client received. `error` is its full name, `parameters` its parameters.
 */
export class VarlinkError extends ComposefsError {
  constructor(
    readonly error: string,
    readonly parameters: Record<string, unknown> = {},
    message?: string,
  ) {
    const reason = typeof parameters.reason === 'string' ? `: ${parameters.reason}` : '';
    super(printable(message ?? `${error}${reason}`), 'varlink');
  }
}

/** One descriptor list of a call, indexes as the caller numbered them. */
export interface CallDescriptors {
  /** How many descriptors came with the call. */
  readonly count: number;
  /**
   * Take descriptor `index` for keeps (the handler closes it); the server
   * closes every descriptor not taken once the handler returns. An index
   * out of range or taken twice is a BadDescriptor error naming `parameter`.
   */
  take(index: number, parameter: string): number;
  /** Look at descriptor `index` without taking it (it is closed after the call). */
  peek(index: number, parameter: string): number;
}

export interface CallContext {
  /** The full method name called. */
  readonly method: string;
  /** The caller asked for several replies (`more`): send all but the last with `reply`. */
  readonly more: boolean;
  readonly oneway: boolean;
  /** Who connected (SO_PEERCRED and SO_PEERGROUPS, as at connect time). */
  readonly peer: PeerCredentials;
  readonly fds: CallDescriptors;
  /** Aborted when the caller hangs up or the server closes. */
  readonly signal: AbortSignal;
  /** A pidfd of the caller, the caller's to close; see peerPidfd (src/sys/socket.ts). */
  openPeerPidfd(): { pidfd: number; exact: boolean };
  /** With `more`: one reply now, `continues: true`; the handler's return value is the last. */
  reply(parameters: Record<string, unknown>, fds?: number[]): void;
}

/** A handler's reply: its parameters, and descriptors to send with them (the server closes them once sent). */
export interface HandlerReply {
  parameters?: Record<string, unknown>;
  fds?: number[];
}

export type VarlinkHandler = (parameters: JsonObject, call: CallContext) => Promise<HandlerReply | void> | HandlerReply | void;

export interface VarlinkInterfaceImpl {
  /** The interface's name (`io.composefs.Mount`). */
  name: string;
  /** Its description, as in its .varlink file: served by GetInterfaceDescription; calls to methods it does not declare are MethodNotFound. */
  description: string;
  /** Handlers by short method name; a declared method without one is MethodNotImplemented. */
  methods: Record<string, VarlinkHandler>;
}

export interface VarlinkServiceInfo {
  vendor: string;
  product: string;
  version: string;
  url: string;
  interfaces: VarlinkInterfaceImpl[];
}

export interface ServeOptions {
  /** Open connections at most (default 256); more are accepted and closed at once. */
  maxConnections?: number;
  /** Open connections per uid at most (default 128). */
  maxConnectionsPerUid?: number;
  /** Descriptors one message may carry (default 16); a message with more fails. */
  maxFdsPerMessage?: number;
  /** Bytes of one message, its NUL excluded (default 1 MiB). */
  maxMessageBytes?: number;
  /** From a message's first byte to its NUL (default 10 s). */
  messageTimeoutMs?: number;
  /** A connection with nothing under way closes after this (default 60 s). */
  idleTimeoutMs?: number;
  /** A reply the peer does not read closes the connection after this (default 10 s). */
  writeTimeoutMs?: number;
  /** The mode of a socket created at a path (default 0o666: anyone may call, the service decides). */
  mode?: number;
  /** The name of the error replied to protocol violations, with `reason` (default io.composefs.Mount.ProtocolError). */
  protocolError?: string;
  /** The name of the error replied when a handler fails unexpectedly, with `reason` (default io.composefs.Mount.InternalError). */
  internalError?: string;
  /** One line per event worth logging (refused connections, protocol errors, handler failures); printable already. */
  log?: (line: string) => void;
}

export interface VarlinkServer {
  /** The socket's path, when the server created it. */
  readonly path: string | undefined;
  /** Connections open now. */
  readonly connections: number;
  /** Stop accepting, let calls under way finish and reply, close every connection; removes a socket the server created. */
  close(): Promise<void>;
}

/** Refused with org.varlink.service.InvalidParameter naming `parameter`. */
export function invalidParameter(parameter: string): VarlinkError {
  return new VarlinkError(VarlinkServiceError.InvalidParameter, { parameter });
}

/**
 * Typed reads of a call's parameters for handlers: each wrong or missing
 * value is org.varlink.service.InvalidParameter naming it (`options.atime`),
 * and parameters the method does not know are refused by `done()`.
 */
export class Parameters {
  private readonly read = new Set<string>();
  constructor(
    private readonly map: JsonObject,
    private readonly prefix = '',
  ) {}

  private get(name: string): Json | undefined {
    this.read.add(name);
    const v = this.map.get(name);
    return v === null ? undefined : v; // varlink sends an absent optional as null or not at all
  }

  private bad(name: string): VarlinkError {
    return invalidParameter(`${this.prefix}${name}`);
  }

  int(name: string): number {
    const v = this.optionalInt(name);
    if (v === undefined) throw this.bad(name);
    return v;
  }

  optionalInt(name: string): number | undefined {
    const v = this.get(name);
    if (v !== undefined && (typeof v !== 'number' || !Number.isSafeInteger(v))) throw this.bad(name);
    return v;
  }

  intArray(name: string, maxLength = 64): number[] {
    const v = this.get(name);
    if (!Array.isArray(v) || v.length > maxLength || !v.every((x) => typeof x === 'number' && Number.isSafeInteger(x))) throw this.bad(name);
    return v as number[];
  }

  string(name: string, maxLength = 4096): string {
    const v = this.optionalString(name, maxLength);
    if (v === undefined) throw this.bad(name);
    return v;
  }

  optionalString(name: string, maxLength = 4096): string | undefined {
    const v = this.get(name);
    if (v !== undefined && (typeof v !== 'string' || v.length > maxLength)) throw this.bad(name);
    return v;
  }

  optionalBool(name: string): boolean | undefined {
    const v = this.get(name);
    if (v !== undefined && typeof v !== 'boolean') throw this.bad(name);
    return v;
  }

  optionalEnum<T extends string>(name: string, values: readonly T[]): T | undefined {
    const v = this.get(name);
    if (v !== undefined && (typeof v !== 'string' || !(values as readonly string[]).includes(v))) throw this.bad(name);
    return v as T | undefined;
  }

  /** A nested object's reader (`options`), or one of an empty object when absent. */
  object(name: string): Parameters {
    const v = this.get(name);
    if (v !== undefined && !(v instanceof Map)) throw this.bad(name);
    return new Parameters(v ?? new Map(), `${this.prefix}${name}.`);
  }

  /** Refuse any parameter not read: a caller asking for what the method does not do is told so. */
  done(): void {
    for (const key of this.map.keys()) if (!this.read.has(key)) throw this.bad(key);
  }
}

/** A JSON value as plain data: objects with no prototype, so no key reaches Object.prototype. */
export function plainJson(value: Json): unknown {
  if (value instanceof Map) {
    const out: Record<string, unknown> = Object.create(null);
    for (const [k, v] of value) out[k] = plainJson(v);
    return out;
  }
  if (Array.isArray(value)) return value.map(plainJson);
  return value;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** A message's JSON object; anything else (not UTF-8, not JSON, not an object) throws with a reason. */
export function parseMessage(bytes: Buffer): JsonObject {
  let text: string;
  try {
    text = utf8.decode(bytes);
  } catch {
    throw new Error('the message is not UTF-8');
  }
  const value = parseStrictJson(text, (path, reason) => new Error(path ? `${path}: ${reason}` : reason));
  if (!(value instanceof Map)) throw new Error('the message is not a JSON object');
  return value;
}

export interface VarlinkCall {
  method: string;
  parameters: JsonObject;
  oneway: boolean;
  more: boolean;
}

/** An interface name (varlink's grammar: reverse-domain, letters, digits, inner dashes) then a method name. */
const METHOD_NAME = /^[A-Za-z](-*[A-Za-z0-9])*(\.[A-Za-z0-9](-*[A-Za-z0-9])*)+\.[A-Z][A-Za-z0-9]*$/;

/** A call's fields, checked; a message that is not a call throws with a reason. */
export function parseCall(message: JsonObject): VarlinkCall {
  for (const key of message.keys()) {
    if (!['method', 'parameters', 'oneway', 'more', 'upgrade'].includes(key)) throw new Error(`unknown field ${JSON.stringify(key)} in a call`);
  }
  const method = message.get('method');
  if (typeof method !== 'string' || method.length > 255 || !METHOD_NAME.test(method)) throw new Error('the call has no valid "method"');
  const parameters = message.get('parameters') ?? new Map();
  if (!(parameters instanceof Map)) throw new Error('"parameters" is not an object');
  const flag = (name: string) => {
    const v = message.get(name);
    if (v !== undefined && typeof v !== 'boolean') throw new Error(`"${name}" is not a boolean`);
    return v === true;
  };
  if (flag('upgrade')) throw new Error('"upgrade" is not supported');
  const oneway = flag('oneway');
  const more = flag('more');
  if (oneway && more) throw new Error('a call cannot be both "oneway" and "more"');
  return { method, parameters, oneway, more };
}

/** The method names an interface description declares (`method Name(`). */
export function declaredMethods(description: string): string[] {
  return [...description.matchAll(/^method\s+([A-Z][A-Za-z0-9]*)\s*\(/gm)].map((m) => m[1]!);
}

/** The error names an interface description declares (`error Name`). */
export function declaredErrors(description: string): string[] {
  return [...description.matchAll(/^error\s+([A-Z][A-Za-z0-9]*)\b/gm)].map((m) => m[1]!);
}

/** The interface name a description declares. */
export function declaredInterface(description: string): string | undefined {
  return /^interface\s+(\S+)\s*$/m.exec(description)?.[1];
}

function frame(value: unknown): Buffer {
  return Buffer.from(`${JSON.stringify(value)}\0`);
}

interface Outgoing {
  data: Buffer;
  /** Sent with the first byte of `data`, then closed here. */
  fds: number[];
}

/**
 * Create the listening socket at `path` with `mode`: bound in a private
 * directory beside it, given its mode, then renamed into place, so it is
 * never reachable with the wrong mode. A stale socket there (nobody
 * listening) is replaced; a live one, or anything not a socket, is an error.
 */
function listenAt(path: string, mode: number): number {
  let existing;
  try {
    existing = lstatSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  if (existing) {
    if (!existing.isSocket()) throw new IoError(`${printable(path)}: exists and is not a socket`, 'EEXIST');
    let live = false;
    try {
      const fd = connectUnix(path);
      live = true;
      if (fd !== null) closeFds([fd]);
    } catch {
      // ECONNREFUSED: left behind by a service that is gone
    }
    if (live) throw new IoError(`${printable(path)}: another service is listening on it`, 'EADDRINUSE');
  }
  const dir = mkdtempSync(join(dirname(path), `.${basename(path)}-`));
  const staging = join(dir, 's');
  try {
    const fd = listenUnix(staging);
    try {
      chmodSync(staging, mode);
      renameSync(staging, path);
      return fd;
    } catch (err) {
      closeFds([fd]);
      throw err;
    }
  } finally {
    try {
      unlinkSync(staging);
    } catch {
      // renamed into place
    }
    rmdirSync(dir);
  }
}

/**
 * Serve `service` on `listen`: a listening socket's descriptor (systemd's,
 * made non-blocking; the server closes it on close) or a path to create.
 */
export function serveVarlink(listen: number | string, service: VarlinkServiceInfo, options: ServeOptions = {}): VarlinkServer {
  const maxConnections = options.maxConnections ?? 256;
  const maxPerUid = options.maxConnectionsPerUid ?? 128;
  const maxFds = options.maxFdsPerMessage ?? 16;
  const maxBytes = options.maxMessageBytes ?? MiB;
  const messageTimeout = options.messageTimeoutMs ?? 10_000;
  const idleTimeout = options.idleTimeoutMs ?? 60_000;
  const writeTimeout = options.writeTimeoutMs ?? 10_000;
  const protocolError = options.protocolError ?? MountError.ProtocolError;
  const internalError = options.internalError ?? MountError.InternalError;
  const log = options.log ?? (() => {});

  const interfaces = new Map<string, VarlinkInterfaceImpl>();
  for (const impl of service.interfaces) {
    const declared = declaredMethods(impl.description);
    if (declaredInterface(impl.description) !== impl.name) throw new Error(`the description of ${impl.name} declares another interface`);
    const extra = Object.keys(impl.methods).filter((m) => !declared.includes(m));
    if (extra.length > 0) throw new Error(`${impl.name} has handlers for undeclared methods: ${extra.join(', ')}`);
    interfaces.set(impl.name, impl);
  }

  const path = typeof listen === 'string' ? listen : undefined;
  let listenFd: number;
  try {
    listenFd = typeof listen === 'string' ? listenAt(listen, options.mode ?? 0o666) : listen;
  } catch (err) {
    throw err instanceof ComposefsError ? err : ioError(err, `socket ${printable(String(listen))}`);
  }
  const listenIno = path !== undefined ? statSync(path).ino : undefined;
  const open = new Set<Connection>();
  const perUid = new Map<number, number>();
  const running = new Set<Promise<void>>();
  let closed = false;
  let lastRefusalLog = 0;

  const refuse = (fd: number, why: string) => {
    closeFds([fd]);
    const now = Date.now();
    // A flood of connections must not become a flood of log lines.
    if (now - lastRefusalLog >= 1000) {
      lastRefusalLog = now;
      log(`connection refused: ${why}`);
    }
  };

  const onAcceptable = () => {
    for (let i = 0; i < 64 && !closed; i++) {
      let fd: number | null;
      try {
        fd = acceptConnection(listenFd);
      } catch (err) {
        const code = err instanceof SysError ? err.code : '';
        if (code === 'EMFILE' || code === 'ENFILE' || code === 'ENOBUFS' || code === 'ENOMEM') {
          // Out of descriptors: pending connections stay queued; accept again once some close.
          listenWatch.modify(0);
          setTimeout(() => {
            if (!closed) listenWatch.modify(EPOLLIN);
          }, 100).unref();
          log(`accept paused: ${reasonOf(err)}`);
        }
        return;
      }
      if (fd === null) return;
      let peer: PeerCredentials;
      try {
        peer = { ...peerCredentials(fd), groups: peerGroups(fd) };
      } catch (err) {
        refuse(fd, reasonOf(err));
        continue;
      }
      if (open.size >= maxConnections) {
        refuse(fd, `${open.size} connections open`);
        continue;
      }
      const held = perUid.get(peer.uid) ?? 0;
      if (held >= maxPerUid) {
        refuse(fd, `uid ${peer.uid} holds ${held} connections`);
        continue;
      }
      perUid.set(peer.uid, held + 1);
      open.add(new Connection(fd, peer));
    }
  };
  const listenWatch = watchFd(listenFd, EPOLLIN, onAcceptable);

  const describe = (name: string) => (name === SERVICE_INTERFACE ? serviceInterfaceDescription : interfaces.get(name)?.description);

  async function dispatch(call: VarlinkCall, context: CallContext): Promise<HandlerReply | void> {
    const dot = call.method.lastIndexOf('.');
    const iface = call.method.slice(0, dot);
    const name = call.method.slice(dot + 1);
    if (iface === SERVICE_INTERFACE) {
      if (name === 'GetInfo') {
        return {
          parameters: {
            vendor: service.vendor,
            product: service.product,
            version: service.version,
            url: service.url,
            interfaces: [SERVICE_INTERFACE, ...interfaces.keys()],
          },
        };
      }
      if (name === 'GetInterfaceDescription') {
        const wanted = call.parameters.get('interface');
        if (typeof wanted !== 'string') throw invalidParameter('interface');
        const description = describe(wanted);
        if (description === undefined) throw new VarlinkError(VarlinkServiceError.InterfaceNotFound, { interface: wanted });
        return { parameters: { description } };
      }
      throw new VarlinkError(VarlinkServiceError.MethodNotFound, { method: call.method });
    }
    const impl = interfaces.get(iface);
    if (!impl) throw new VarlinkError(VarlinkServiceError.InterfaceNotFound, { interface: iface });
    if (!declaredMethods(impl.description).includes(name)) throw new VarlinkError(VarlinkServiceError.MethodNotFound, { method: call.method });
    const handler = Object.hasOwn(impl.methods, name) ? impl.methods[name] : undefined;
    if (!handler) throw new VarlinkError(VarlinkServiceError.MethodNotImplemented, { method: call.method });
    return handler(call.parameters, context);
  }

  class Connection {
    private readonly watch: Watch;
    private chunks: Buffer[] = [];
    private buffered = 0;
    /** Descriptors that came with the message being read. */
    private incomingFds: number[] = [];
    /** The message being read brought more descriptors than allowed: it fails when complete. */
    private fdsRefused = false;
    private readonly output: Outgoing[] = [];
    private busy = false;
    private closing = false;
    private gone = false;
    private timer: NodeJS.Timeout | null = null;
    private readonly abort = new AbortController();

    constructor(
      private readonly fd: number,
      private readonly peer: PeerCredentials,
    ) {
      this.watch = watchFd(fd, EPOLLIN, (events) => this.onReady(events));
      this.arm();
    }

    private what(): string {
      return `uid ${this.peer.uid} pid ${this.peer.pid}`;
    }

    /** The one timer of this connection, for whatever it waits on now. */
    private arm(): void {
      if (this.timer) clearTimeout(this.timer);
      this.timer = null;
      if (this.gone) return;
      let ms: number;
      let why: string;
      if (this.output.length > 0) {
        ms = writeTimeout;
        why = 'did not read its reply';
      } else if (this.busy) {
        return; // the handler's time is its own
      } else if (this.buffered > 0 || this.incomingFds.length > 0) {
        ms = messageTimeout;
        why = 'sent part of a message and stopped';
      } else {
        ms = idleTimeout;
        why = 'idle';
      }
      this.timer = setTimeout(() => {
        if (why !== 'idle') log(`${this.what()}: closed: ${why} within ${ms} ms`);
        this.close();
      }, ms);
      this.timer.unref();
    }

    private interest(): void {
      if (this.gone) return;
      let events = 0;
      if (!this.busy && !this.closing) events |= EPOLLIN;
      if (this.output.length > 0) events |= EPOLLOUT;
      this.watch.modify(events);
    }

    private onReady(events: number): void {
      try {
        this.ready(events);
      } catch (err) {
        // A failure here (epoll_ctl, a descriptor gone) ends this connection only.
        log(`${this.what()}: closed: ${printable(reasonOf(err))}`);
        this.close();
      }
    }

    private ready(events: number): void {
      if (this.gone) return;
      if (events & EPOLLOUT) this.flush();
      if (this.gone) return;
      if (events & EPOLLIN && !this.busy && !this.closing) {
        this.read();
      } else if (events & (EPOLLHUP | EPOLLERR)) {
        // The peer is gone while a call runs or a reply waits: nothing more can reach it.
        this.close();
      }
    }

    private read(): void {
      const armedBefore = this.buffered > 0;
      // A few chunks per wake-up, so one fast sender cannot hold the loop; the rest stays readable.
      for (let i = 0; i < 16 && !this.busy && !this.closing && !this.gone; i++) {
        let got;
        try {
          got = receiveWithFds(this.fd, maxFds);
        } catch (err) {
          if (this.buffered > 0) log(`${this.what()}: closed mid-message: ${reasonOf(err)}`);
          this.close();
          return;
        }
        if (got === null) break;
        if (got.data.length === 0) {
          closeFds(got.fds);
          if (this.buffered > 0) log(`${this.what()}: hung up mid-message`);
          this.close();
          return;
        }
        if (got.truncated || this.incomingFds.length + got.fds.length > maxFds) {
          closeFds(got.fds);
          closeFds(this.incomingFds);
          this.incomingFds = [];
          this.fdsRefused = true;
        } else {
          this.incomingFds.push(...got.fds);
        }
        this.take(got.data);
      }
      if (!this.gone && (this.buffered > 0) !== armedBefore) this.arm();
      this.interest();
    }

    /** Bytes read: split off a complete message (a call runs), keep the rest. */
    private take(data: Buffer): void {
      this.chunks.push(data);
      this.buffered += data.length;
      this.next();
    }

    /** Start the next complete message buffered, if any and none runs. */
    private next(): void {
      if (this.busy || this.closing || this.gone || this.buffered === 0) return;
      const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
      const end = all.indexOf(0);
      if (end < 0) {
        this.chunks = [all];
        if (all.length > maxBytes) this.violate(`a message is larger than ${maxBytes} bytes`);
        return;
      }
      const message = all.subarray(0, end);
      const rest = all.subarray(end + 1);
      this.chunks = rest.length > 0 ? [rest] : [];
      this.buffered = rest.length;
      const fds = this.incomingFds;
      const refused = this.fdsRefused;
      this.incomingFds = [];
      this.fdsRefused = false;
      if (message.length > maxBytes) {
        closeFds(fds);
        this.violate(`a message is larger than ${maxBytes} bytes`);
        return;
      }
      let call: VarlinkCall;
      try {
        call = parseCall(parseMessage(message));
      } catch (err) {
        closeFds(fds);
        this.violate(reasonOf(err));
        return;
      }
      if (refused) {
        // Fail this call only: its descriptors are gone, but the stream is intact.
        log(`${this.what()}: ${printable(call.method)}: refused: more than ${maxFds} descriptors`);
        if (!call.oneway) this.send({ error: protocolError, parameters: { reason: `more than ${maxFds} descriptors in one message` } }, []);
        this.next();
        return;
      }
      this.run(call, fds);
    }

    /** Reply to a broken message and close once the reply is out. */
    private violate(reason: string): void {
      log(`${this.what()}: protocol error: ${printable(reason)}`);
      this.closing = true;
      closeFds(this.incomingFds);
      this.incomingFds = [];
      this.chunks = [];
      this.buffered = 0;
      this.send({ error: protocolError, parameters: { reason } }, []);
    }

    private run(call: VarlinkCall, fds: number[]): void {
      this.busy = true;
      this.interest();
      this.arm();
      const taken = new Set<number>();
      const index = (i: number, parameter: string) => {
        if (!Number.isSafeInteger(i) || i < 0 || i >= fds.length) {
          throw new VarlinkError(MountError.BadDescriptor, { parameter, reason: `no descriptor ${i} came with the call (${fds.length} did)` });
        }
        if (taken.has(i)) throw new VarlinkError(MountError.BadDescriptor, { parameter, reason: `descriptor ${i} is used twice` });
        return i;
      };
      const descriptors: CallDescriptors = {
        count: fds.length,
        take: (i, parameter) => {
          const fd = fds[index(i, parameter)]!;
          taken.add(i);
          return fd;
        },
        peek: (i, parameter) => fds[index(i, parameter)]!,
      };
      let finished = false;
      const context: CallContext = {
        method: call.method,
        more: call.more,
        oneway: call.oneway,
        peer: this.peer,
        fds: descriptors,
        signal: this.abort.signal,
        openPeerPidfd: () => peerPidfd(this.fd),
        reply: (parameters, replyFds = []) => {
          if (!call.more || finished || this.gone) {
            closeFds(replyFds);
            if (!call.more) throw new Error('reply() is for calls with "more"');
            return;
          }
          this.send({ parameters, continues: true }, replyFds);
        },
      };
      const done = (async () => {
        let reply: unknown;
        let replyFds: number[] = [];
        try {
          const result = (await dispatch(call, context)) ?? {};
          reply = { parameters: result.parameters ?? {} };
          replyFds = result.fds ?? [];
        } catch (err) {
          if (err instanceof VarlinkError) {
            reply = { error: err.error, parameters: err.parameters };
          } else {
            const reason = printable(err instanceof ComposefsError ? err.message : reasonOf(err));
            log(`${this.what()}: ${printable(call.method)}: failed: ${reason}`);
            reply = { error: internalError, parameters: { reason } };
          }
        }
        finished = true;
        closeFds(fds.filter((_, i) => !taken.has(i)));
        try {
          if (call.oneway || this.gone) closeFds(replyFds);
          else this.send(reply, replyFds);
        } catch (err) {
          // A reply that cannot be written as JSON (a cycle, a BigInt): the handler's bug, this connection's end.
          closeFds(replyFds);
          log(`${this.what()}: ${printable(call.method)}: unusable reply: ${printable(reasonOf(err))}`);
          this.close();
        }
        this.busy = false;
        if (this.closing && this.output.length === 0) this.close();
        if (!this.gone) {
          this.arm();
          this.interest();
          // Calls sent one after another: the next may be buffered already.
          setImmediate(() => this.next());
        }
      })();
      running.add(done);
      void done.finally(() => running.delete(done));
    }

    private send(value: unknown, fds: number[]): void {
      let data = frame(value);
      if (data.length - 1 > maxBytes) {
        closeFds(fds);
        fds = [];
        data = frame({ error: internalError, parameters: { reason: `the reply is larger than ${maxBytes} bytes` } });
      }
      this.output.push({ data, fds });
      this.flush();
      this.arm();
      this.interest();
    }

    private flush(): void {
      while (this.output.length > 0 && !this.gone) {
        const head = this.output[0]!;
        let sent: number | null;
        try {
          sent = sendWithFds(this.fd, head.data, head.fds);
        } catch {
          this.close(); // EPIPE, ECONNRESET: the peer left
          return;
        }
        if (sent === null) return; // full: EPOLLOUT brings us back
        closeFds(head.fds);
        head.fds = [];
        if (sent < head.data.length) {
          head.data = head.data.subarray(sent);
          continue;
        }
        this.output.shift();
        if (this.output.length === 0) {
          this.arm();
          this.interest();
        }
      }
      if (this.output.length === 0 && this.closing && !this.busy) this.close();
    }

    /** The server is closing: end now when idle, else once the call under way has replied. */
    finishThenClose(): void {
      this.closing = true;
      if (!this.busy && this.output.length === 0) this.close();
      else this.interest();
    }

    close(): void {
      if (this.gone) return;
      this.gone = true;
      if (this.timer) clearTimeout(this.timer);
      this.watch.stop();
      closeFds([this.fd]);
      closeFds(this.incomingFds);
      this.incomingFds = [];
      for (const o of this.output) closeFds(o.fds);
      this.output.length = 0;
      this.chunks = [];
      this.abort.abort();
      open.delete(this);
      const held = (perUid.get(this.peer.uid) ?? 1) - 1;
      if (held > 0) perUid.set(this.peer.uid, held);
      else perUid.delete(this.peer.uid);
    }
  }

  return {
    path,
    get connections() {
      return open.size;
    },
    async close() {
      if (closed) return;
      closed = true;
      listenWatch.stop();
      closeFds([listenFd]);
      if (path !== undefined) {
        try {
          // Only our own socket: another service may have replaced it since.
          if (lstatSync(path).ino === listenIno) unlinkSync(path);
        } catch {
          // already gone
        }
      }
      // Calls under way finish and their replies go out; idle connections close now.
      for (const c of [...open]) c.finishThenClose();
      await Promise.allSettled([...running]);
      const deadline = Date.now() + writeTimeout;
      while (open.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      for (const c of [...open]) c.close();
    },
  };
}

export interface CallOptions {
  /** The whole call, from connect to the reply (default 30 s). */
  timeoutMs?: number;
  /** Descriptors the reply may carry (default 16). */
  maxFds?: number;
  /** Bytes of the reply (default 1 MiB). */
  maxMessageBytes?: number;
}

export interface CallResult {
  parameters: Record<string, unknown>;
  /** Descriptors sent with the reply, now the caller's. */
  fds: number[];
}

/**
 * Call `method` at the service on `socketPath`, sending `fds` with the call
 * (they stay the caller's). An error reply rejects with VarlinkError; a
 * service that cannot be reached, hangs up or does not answer in time
 * rejects with IoError naming the socket.
 */
export function callVarlink(socketPath: string, method: string, parameters: Record<string, unknown> = {}, fds: readonly number[] = [], options: CallOptions = {}): Promise<CallResult> {
  const timeoutMs = options.timeoutMs ?? 30_000;
  const maxFds = options.maxFds ?? 16;
  const maxBytes = options.maxMessageBytes ?? MiB;
  const where = `mount service ${printable(socketPath)}`;
  return new Promise<CallResult>((resolve, reject) => {
    const deadline = Date.now() + timeoutMs;
    let fd = -1;
    let watch: Watch | null = null;
    let out = frame({ method, parameters });
    let fdsSent = false;
    const chunks: Buffer[] = [];
    let buffered = 0;
    const received: number[] = [];
    let settled = false;
    const timer = setTimeout(() => fail(new IoError(`${where}: no reply within ${timeoutMs} ms`, 'ETIMEDOUT')), timeoutMs);

    function cleanup(keepFds: boolean): void {
      clearTimeout(timer);
      watch?.stop();
      if (fd >= 0) closeFds([fd]);
      fd = -1;
      if (!keepFds) closeFds(received);
    }
    function fail(err: Error): void {
      if (settled) return;
      settled = true;
      cleanup(false);
      reject(err);
    }
    function finish(message: Buffer): void {
      let reply: Record<string, unknown>;
      try {
        reply = plainJson(parseMessage(message)) as Record<string, unknown>;
      } catch (err) {
        return fail(new IoError(`${where}: unreadable reply: ${reasonOf(err)}`, 'EPROTO'));
      }
      const params = reply.parameters;
      const replyParameters = params !== null && typeof params === 'object' && !Array.isArray(params) ? (params as Record<string, unknown>) : {};
      if (typeof reply.error === 'string') {
        return fail(new VarlinkError(reply.error, replyParameters));
      }
      settled = true;
      cleanup(true);
      resolve({ parameters: replyParameters, fds: received });
    }
    function onReady(events: number): void {
      if (settled) return;
      try {
        if (out.length > 0) {
          const sent = sendWithFds(fd, out, fdsSent ? [] : fds);
          if (sent !== null) {
            fdsSent = true;
            out = out.subarray(sent);
            if (out.length === 0) watch!.modify(EPOLLIN);
          }
          if (out.length > 0) return;
        }
        if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
        for (;;) {
          const got = receiveWithFds(fd, maxFds);
          if (got === null) return;
          received.push(...got.fds);
          if (got.truncated) return fail(new IoError(`${where}: the reply carried more than ${maxFds} descriptors`, 'EPROTO'));
          if (got.data.length === 0) return fail(new IoError(`${where}: the service hung up before replying`, 'ECONNRESET'));
          chunks.push(got.data);
          buffered += got.data.length;
          const all = Buffer.concat(chunks);
          const end = all.indexOf(0);
          // A reply with "continues" is not asked for here: the first message is the answer.
          if (end >= 0) return finish(all.subarray(0, end));
          if (buffered > maxBytes) return fail(new IoError(`${where}: the reply is larger than ${maxBytes} bytes`, 'EMSGSIZE'));
          chunks.length = 0;
          chunks.push(all);
        }
      } catch (err) {
        fail(new IoError(`${where}: ${reasonOf(err)}`, (err as SysError).code, { cause: err }));
      }
    }
    const connect = () => {
      if (settled) return;
      try {
        const c = connectUnix(socketPath);
        if (c === null) {
          // The service's backlog is full: try again shortly, within the deadline.
          if (Date.now() < deadline) setTimeout(connect, 10);
          return;
        }
        fd = c;
        watch = watchFd(fd, EPOLLOUT | EPOLLIN, onReady);
      } catch (err) {
        fail(new IoError(`${where}: ${reasonOf(err)}`, (err as SysError).code, { cause: err }));
      }
    };
    connect();
  });
}
