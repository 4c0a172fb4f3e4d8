/**
 * @wrenn/sdk: TypeScript client of Wrenn's REST and WebSocket API, for
 * Node >= 20 and browsers.
 *
 * ```ts
 * import { Client } from '@wrenn/sdk';
 * const c = new Client({ url, apiKey }); // or WRENN_URL / WRENN_API_KEY under Node
 * const cap = await c.capsules.create({ template: 'minimal' });
 * const r = await cap.exec('echo', ['hi']); // r.stdout, r.stderr, r.exitCode
 * await cap.delete();
 * ```
 *
 * @module
 */
import type { components } from './openapi.js';
import { Events, Webhooks } from './events.js';
import {
  APIError,
  CommandExitError,
  ConnectionError,
  StreamClosedError,
  TimeoutError,
  WrennError,
  decodeError,
} from './errors.js';

export { APIError, CommandExitError, ConnectionError, StreamClosedError, TimeoutError, WrennError } from './errors.js';
export type { components, paths } from './openapi.js';
export { verifyWebhook, WebhookVerificationError } from './webhooks.js';
export { Events, Webhooks } from './events.js';
export type { EventFilter, EventPage, WebhookDelivery, WebhookDeliveryPage } from './events.js';

type S = components['schemas'];
/** A capsule's state as the API sends it (schema `Capsule`). */
export type CapsuleInfo = S['Capsule'];
/** One page of capsules (schema `CapsuleList`). */
export type CapsulePage = S['CapsuleList'];
/** The body of a create (schema `CreateCapsule`). */
export type CreateCapsuleParams = S['CreateCapsule'];
/** A team's persistent volume (docs/VOLUMES.md): `location` "store" (no capsule holds it) or "host". */
export type Volume = S['Volume'];
/** Mounts a volume at create (`volume_mounts`): one read-write mount at a time. */
export type VolumeMount = S['VolumeMount'];
/**
 * A capsule's egress policy and rate limits (schema `CapsuleNetwork`): `allow_out` and `deny_out` hold
 * IPv4 CIDRs, addresses and domain names (`*.example.com` for every name below it); an allow rule wins over a
 * deny rule, and `deny_out: ['0.0.0.0/0']` with `allow_out` is an allow-list. Rates in MB/s, burst in MB
 * (omitted: 200 MB/s, 100 MB). The host, other capsules, link-local and private ranges stay unreachable.
 */
export type Network = S['CapsuleNetwork'];
/** The body of a live network change (schema `SetCapsuleNetwork`: a `Network` plus `allow_internet`). */
export type SetNetworkParams = S['SetCapsuleNetwork'];
/** A template (schema `Template`). */
export type Template = S['Template'];
/** A template made from a capsule by `Capsule.snapshot` (schema `SnapshotTemplate`). */
export type SnapshotTemplate = S['SnapshotTemplate'];
/** The copies made by `Capsule.fork` (schema `ForkResult`): `capsules` (each with its `access_token`), the shared `base_template_id`, and `memory_kept` (whether they run the original's processes). */
export type ForkResult = S['ForkResult'];
/** A file or directory in a capsule (schema `FileEntry`). */
export type FileEntry = S['FileEntry'];
/** The answer to mkdir (schema `MkdirResult`). */
export type MkdirResult = S['MkdirResult'];
/** A background process (schema `Process`). */
export type Process = S['Process'];
/** The answer to starting a process (schema `ProcessStarted`). */
export type ProcessStarted = S['ProcessStarted'];
/** Who the credential acts as (schema `Me`). */
export type Me = S['Me'];
/**
 * How a capsule is isolated: `container` (runc), `gvisor` (gVisor's user-space kernel) or `microvm`
 * (its own kernel in a VM). A create naming one no host of the team runs fails with an APIError whose
 * code is `isolation_unavailable` (HTTP 422).
 */
export type Isolation = 'container' | 'gvisor' | 'microvm';
/** A life-cycle event (schema `Event`: GET /v1/events, the SSE stream, webhook bodies). */
export type WrennEvent = S['Event'];
/** A webhook endpoint (schema `Webhook`). */
export type Webhook = S['Webhook'];
/** A template build (schema `Build`). */
export type Build = S['Build'];
/** What a build runs (schema `BuildSpec`). */
export type BuildSpec = S['BuildSpec'];
/** A capsule's metrics (schema `CapsuleMetrics`). */
export type CapsuleMetrics = S['CapsuleMetrics'];
/** One stream event (schema `ExecEvent`). */
export type ExecEvent = S['ExecEvent'];
/** The API's exec answer (schema `ExecResult`). */
export type RawExecResult = S['ExecResult'];

/** The URL of a local `wrenn up`, used when neither `url` nor `WRENN_URL` is given. */
export const DEFAULT_URL = 'http://127.0.0.1:9725';

/** Options of {@link Client}. */
export interface ClientOptions {
  /** Control plane URL (default `WRENN_URL` under Node, else http://127.0.0.1:9725). */
  url?: string;
  /** API key `wrn_…` (default `WRENN_API_KEY` under Node). */
  apiKey?: string;
  /** Milliseconds a non-streaming call may take (default 120 000; 0 for none). Transfers and streams are not bounded. */
  timeoutMs?: number;
  /** The fetch to use (default the global one). */
  fetch?: typeof fetch;
}

/** Result of a command run to completion. */
export interface ExecResult {
  /** The exit code (non-zero on failure or signal). */
  exitCode: number;
  /** Standard output. */
  stdout: string;
  /** Standard error. */
  stderr: string;
  /** Why the command failed to start or was killed, if it was. */
  error: string;
  /** Whether the output was cut at the server's limit. */
  truncated: boolean;
  /** The process id it ran as. */
  pid: number;
}

/** How a streamed command ended. */
export interface ExitStatus {
  /** The exit code. */
  exitCode: number;
  /** Whether it exited normally (not by a signal). */
  exited: boolean;
  /** A status text such as `exit status 1` or `signal: killed`. */
  status: string;
  /** The process id. */
  pid: number;
}

/** Options of exec, execStream and processes.start. */
export interface ExecOptions {
  /** Environment variables. */
  env?: Record<string, string>;
  /** Working directory. */
  cwd?: string;
  /** User to run as. */
  user?: string;
  /** Seconds the command may run. */
  timeoutSec?: number;
  /** Standard input. */
  stdin?: string;
  /** Throw {@link CommandExitError} on a non-zero exit. */
  check?: boolean;
}

/** Callbacks of streamed output. */
export interface StreamHandlers {
  /** Called with each chunk of standard output. */
  onStdout?: (data: Uint8Array) => void | Promise<void>;
  /** Called with each chunk of standard error. */
  onStderr?: (data: Uint8Array) => void | Promise<void>;
}

/** What files.write accepts: bytes, text, a Blob, a web stream or an async iterable of bytes (streamed). */
export type FileData = Uint8Array | ArrayBuffer | string | Blob | ReadableStream<Uint8Array> | AsyncIterable<Uint8Array>;

function env(name: string): string | undefined {
  const p = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process;
  return p?.env?.[name];
}

// A WebSocket the SDK uses: the platform's, or the `ws` package's (Node 20).
interface Socket {
  send(data: string | Uint8Array): void;
  close(code?: number): void;
  next(): Promise<string | Uint8Array | null>;
  closedCleanly: boolean;
}

/** Client of a Wrenn control plane. Nothing is retried: a failed call throws and the caller decides. */
export class Client {
  /** The control plane's base URL. */
  readonly url: string;
  /** Capsules: create, list, get. */
  readonly capsules: Capsules;
  /** Templates. */
  readonly templates: Templates;
  /** Template builds (platform admins). */
  readonly builds: Builds;
  /** The team's event log and live stream. */
  readonly events: Events;
  /** The team's webhook endpoints (team admins and owners). */
  readonly webhooks: Webhooks;
  /** Persistent volumes. */
  readonly volumes: Volumes;
  private readonly apiKey: string;
  private readonly timeoutMs: number;
  private readonly fetchImpl: typeof fetch;

  constructor(opts: ClientOptions = {}) {
    this.url = (opts.url ?? env('WRENN_URL') ?? DEFAULT_URL).replace(/\/+$/, '');
    this.apiKey = opts.apiKey ?? env('WRENN_API_KEY') ?? '';
    this.timeoutMs = opts.timeoutMs ?? 120_000;
    this.fetchImpl = opts.fetch ?? globalThis.fetch.bind(globalThis);
    this.capsules = new Capsules(this);
    this.templates = new Templates(this);
    this.builds = new Builds(this);
    this.events = new Events(this);
    this.webhooks = new Webhooks(this);
    this.volumes = new Volumes(this);
  }

  /** Who the credential acts as (`GET /v1/me`). */
  async me(): Promise<Me> {
    return (await this.json('GET', '/v1/me')) as Me;
  }

  /** The server's health (`GET /health`). */
  async health(): Promise<S['Health']> {
    return (await this.json('GET', '/health')) as S['Health'];
  }

  /**
   * Sets the default isolation of the team's new capsules (`container`, `gvisor`, `microvm`; `''` clears
   * it: the platform's default applies). `teamId` defaults to the credential's team; needs the team's
   * admin role.
   */
  async setTeamIsolation(isolation: Isolation | '', teamId?: string): Promise<S['Team']> {
    const id = teamId ?? (await this.me()).team_id;
    const body: S['TeamUpdate'] = { default_isolation: isolation };
    return (await this.json('PATCH', '/v1/teams/' + encodeURIComponent(id), { json: body })) as S['Team'];
  }

  /** @internal */
  endpoint(path: string, query?: Record<string, unknown>): string {
    let u = this.url + path;
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query ?? {})) {
      if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
    }
    const s = q.toString();
    if (s) u += '?' + s;
    return u;
  }

  /** @internal Sends a request; throws APIError for a non-2xx answer. */
  async send(
    method: string,
    path: string,
    o: { query?: Record<string, unknown>; json?: unknown; body?: BodyInit; contentType?: string; stream?: boolean; timeoutMs?: number } = {},
  ): Promise<Response> {
    const url = this.endpoint(path, o.query);
    const headers: Record<string, string> = {};
    if (this.apiKey) headers['X-API-Key'] = this.apiKey;
    let body = o.body;
    if (o.json !== undefined) {
      body = JSON.stringify(o.json);
      headers['Content-Type'] = 'application/json';
    } else if (o.contentType) {
      headers['Content-Type'] = o.contentType;
    }
    const t = o.timeoutMs ?? (o.stream ? 0 : this.timeoutMs);
    const init: RequestInit & { duplex?: string } = { method, headers, body };
    if (body instanceof ReadableStream) init.duplex = 'half';
    if (t > 0) init.signal = AbortSignal.timeout(t);
    let resp: Response;
    try {
      resp = await this.fetchImpl(url, init);
    } catch (e) {
      throw transportError(this.url, url, e);
    }
    if (!resp.ok) {
      let text = '';
      try {
        text = await resp.text();
      } catch {
        /* the status still says what happened */
      }
      throw decodeError(resp.status, text, resp.headers.get('X-Request-Id'));
    }
    return resp;
  }

  /** @internal */
  async json(method: string, path: string, o: Parameters<Client['send']>[2] = {}): Promise<unknown> {
    const resp = await this.send(method, path, o);
    let text: string;
    try {
      text = await resp.text();
    } catch (e) {
      throw transportError(this.url, path, e);
    }
    return text ? JSON.parse(text) : undefined;
  }

  /** @internal Opens a WebSocket to an API route. */
  async ws(path: string, query?: Record<string, unknown>): Promise<Socket> {
    const G = (globalThis as { WebSocket?: typeof WebSocket }).WebSocket;
    const q = { ...(query ?? {}) };
    let sock: WebSocket;
    const wsURL = (u: string) => u.replace(/^http/, 'ws');
    if (G) {
      // The platform's WebSocket cannot set headers: the API takes the key as ?token= on WebSocket routes only.
      if (this.apiKey) q.token = this.apiKey;
      sock = new G(wsURL(this.endpoint(path, q)));
    } else {
      const { default: WS } = (await import('ws')) as unknown as { default: new (u: string, o: unknown) => WebSocket };
      sock = new WS(wsURL(this.endpoint(path, q)), {
        headers: this.apiKey ? { 'X-API-Key': this.apiKey } : {},
        maxPayload: 0,
        perMessageDeflate: false,
      });
    }
    sock.binaryType = 'arraybuffer';
    return openSocket(sock, this.url, this.timeoutMs);
  }
}

function transportError(base: string, url: string, e: unknown): WrennError {
  const name = (e as Error)?.name;
  if (name === 'TimeoutError' || name === 'AbortError') return new TimeoutError(url, e);
  return new ConnectionError(base, e);
}

// openSocket waits for the socket to open and queues its messages for next().
function openSocket(ws: WebSocket, base: string, timeoutMs: number): Promise<Socket> {
  const queue: (string | Uint8Array | null)[] = [];
  let waiter: ((v: string | Uint8Array | null) => void) | null = null;
  let failure: WrennError | null = null;
  const s: Socket = {
    closedCleanly: false,
    send: (d) => ws.send(d),
    close: (code) => ws.close(code ?? 1000),
    next: () => {
      if (queue.length) return Promise.resolve(queue.shift()!);
      if (failure) return Promise.reject(failure);
      return new Promise((resolve, reject) => {
        waiter = (v) => (failure && v === null ? reject(failure) : resolve(v));
      });
    },
  };
  const push = (v: string | Uint8Array | null) => {
    if (waiter) {
      const w = waiter;
      waiter = null;
      w(v);
    } else queue.push(v);
  };
  return new Promise((resolve, reject) => {
    let opened = false;
    const timer = timeoutMs > 0 ? setTimeout(() => {
      if (!opened) {
        ws.close();
        reject(new TimeoutError(base));
      }
    }, timeoutMs) : undefined;
    ws.onopen = () => {
      opened = true;
      clearTimeout(timer);
      resolve(s);
    };
    ws.onmessage = (ev: MessageEvent) => {
      const d = ev.data;
      push(typeof d === 'string' ? d : new Uint8Array(d as ArrayBuffer));
    };
    // ws (Node) reports a refused upgrade with the status: map it to the API's error.
    (ws as unknown as { on?: (e: string, f: (...a: unknown[]) => void) => void }).on?.('unexpected-response', (_req: unknown, res: unknown) => {
      const r = res as { statusCode: number; headers: Record<string, string>; on: (e: string, f: (c?: Buffer) => void) => void };
      const chunks: Buffer[] = [];
      r.on('data', (c) => chunks.push(c!));
      r.on('end', () => {
        clearTimeout(timer);
        opened = true;
        reject(decodeError(r.statusCode, Buffer.concat(chunks).toString(), r.headers['x-request-id']));
        ws.close();
      });
    });
    ws.onerror = (ev: Event) => {
      const err = (ev as unknown as { error?: unknown }).error ?? ev;
      if (!opened) {
        clearTimeout(timer);
        opened = true;
        reject(new ConnectionError(base, err));
      } else if (!failure) {
        failure = new StreamClosedError('wrenn: connection broke', { cause: err });
      }
    };
    ws.onclose = (ev: CloseEvent) => {
      s.closedCleanly = ev.code === 1000;
      if (!opened) {
        opened = true;
        clearTimeout(timer);
        reject(new ConnectionError(base, new Error(`WebSocket closed (${ev.code})`)));
      }
      if (!s.closedCleanly && !failure) failure = new StreamClosedError(`wrenn: connection closed (${ev.code})`);
      push(null);
    };
  });
}

const enc = new TextEncoder();
const dec = new TextDecoder();

function b64(s: string): Uint8Array {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function eventBytes(ev: ExecEvent): Uint8Array {
  return ev.data_b64 ? b64(ev.data_b64) : enc.encode(ev.data ?? '');
}

/** Asks exec and process streams for output as binary frames instead of JSON events (an older server ignores it). */
const BINARY_FRAMES = { frames: 'binary' };

async function pump(sock: Socket, h: StreamHandlers): Promise<ExitStatus> {
  let pid = 0;
  try {
    for (;;) {
      const m = await sock.next();
      if (m === null) break;
      if (typeof m !== 'string') {
        // A binary output frame (?frames=binary): the stream's byte (1
        // stdout, 2 stderr), then the raw bytes.
        if (m.length > 0 && m[0] === 1) await h.onStdout?.(m.subarray(1));
        else if (m.length > 0 && m[0] === 2) await h.onStderr?.(m.subarray(1));
        continue;
      }
      const ev = JSON.parse(m) as ExecEvent;
      switch (ev.type) {
        case 'start':
          pid = ev.pid ?? 0;
          break;
        case 'stdout':
          await h.onStdout?.(eventBytes(ev));
          break;
        case 'stderr':
          await h.onStderr?.(eventBytes(ev));
          break;
        case 'end':
          return { exitCode: ev.exit_code ?? 0, exited: !!ev.exited, status: ev.status ?? '', pid };
        case 'error':
          throw new APIError(0, ev.code || 'internal', ev.message ?? '');
      }
    }
  } finally {
    sock.close();
  }
  throw new StreamClosedError('wrenn: stream ended without an exit status');
}

function execBody(cmd: string, args: string[] | undefined, o: ExecOptions): S['Exec'] {
  const b: S['Exec'] = { cmd };
  if (args?.length) b.args = args;
  if (o.env) b.env = o.env;
  if (o.cwd) b.cwd = o.cwd;
  if (o.user) b.user = o.user;
  if (o.timeoutSec !== undefined) b.timeout_sec = o.timeoutSec;
  if (o.stdin !== undefined) b.stdin = o.stdin;
  return b;
}

const cpath = (id: string) => '/v1/capsules/' + encodeURIComponent(id);

/** Capsule operations (`client.capsules`). */
export class Capsules {
  /** @internal */
  constructor(private readonly c: Client) {}

  /** Creates a capsule (`POST /v1/capsules`); omitted fields take the server's defaults. Not retried. */
  async create(params: CreateCapsuleParams = {}): Promise<Capsule> {
    return new Capsule(this.c, (await this.c.json('POST', '/v1/capsules', { json: params })) as CapsuleInfo);
  }

  /** The capsule with this id. */
  async get(id: string): Promise<Capsule> {
    return new Capsule(this.c, (await this.c.json('GET', cpath(id))) as CapsuleInfo);
  }

  /** One page of the team's capsules, newest first; pass `next_cursor` back as `cursor`. */
  async listPage(o: { status?: string; limit?: number; cursor?: string } = {}): Promise<CapsulePage> {
    return (await this.c.json('GET', '/v1/capsules', { query: o })) as CapsulePage;
  }

  /** Every capsule of the team (following every cursor), optionally only those in `status`. */
  async list(o: { status?: string; limit?: number } = {}): Promise<CapsuleInfo[]> {
    const out: CapsuleInfo[] = [];
    let cursor: string | undefined;
    for (;;) {
      const p = await this.listPage({ ...o, cursor });
      out.push(...p.capsules);
      if (!p.next_cursor) return out;
      cursor = p.next_cursor;
    }
  }

  /** Destroys a capsule by id. */
  async delete(id: string): Promise<void> {
    await this.c.json('DELETE', cpath(id));
  }
}

/** A capsule and the calls that act on it. `await using cap = …` deletes it at scope end. */
export class Capsule {
  /** The capsule's last known state. */
  info: CapsuleInfo;
  /** Files in the capsule. */
  readonly files: Files;
  /** Background processes. */
  readonly processes: Processes;

  /** @internal */
  constructor(private readonly c: Client, info: CapsuleInfo) {
    this.info = info;
    this.files = new Files(c, info.id);
    this.processes = new Processes(c, info.id);
  }

  /** The capsule's id (`cl-…`). */
  get id(): string {
    return this.info.id;
  }

  /** Its status when last fetched. */
  get status(): CapsuleInfo['status'] {
    return this.info.status;
  }

  private get path(): string {
    return cpath(this.info.id);
  }

  private async update(method: string, sub: string, json?: unknown): Promise<CapsuleInfo> {
    this.info = (await this.c.json(method, this.path + sub, { json })) as CapsuleInfo;
    return this.info;
  }

  /** Fetches the current state into `info`. */
  refresh(): Promise<CapsuleInfo> {
    return this.update('GET', '');
  }

  /** Destroys the capsule. */
  async delete(): Promise<void> {
    await this.c.json('DELETE', this.path);
  }

  /** Deletes the capsule (for `await using`); a capsule already gone is fine. */
  async [Symbol.asyncDispose ?? Symbol.for('Symbol.asyncDispose')](): Promise<void> {
    try {
      await this.delete();
    } catch (e) {
      if (!(e instanceof APIError && e.code === 'not_found')) throw e;
    }
  }

  /** Pauses (warm, or to disk); `memory_kept` in the answer says whether processes survive. */
  pause(o: { toDisk?: boolean } = {}): Promise<CapsuleInfo> {
    return this.update('POST', '/pause', o.toDisk ? { to_disk: true } : {});
  }

  /**
   * Turns the running capsule into a team template called `name` (`name` or `name:tag`).
   * By default the processes' memory is kept too where the host can, so capsules created
   * from the template start with them running; `memoryReason` says why not. The capsule
   * keeps running.
   */
  async snapshot(name: string, o: { memory?: boolean } = {}): Promise<SnapshotTemplate> {
    return (await this.c.json('POST', this.path + '/snapshot', { json: { name, memory: o.memory ?? true } })) as SnapshotTemplate;
  }

  /**
   * Copies the running or paused capsule `count` times (1 to 20): its files and, where the
   * host keeps memory, its running processes. Each copy has its own id, network and disk;
   * the original keeps running. The copies share one base template (stored once).
   */
  async fork(count = 1): Promise<ForkResult> {
    return (await this.c.json('POST', this.path + '/fork', { json: { count } })) as ForkResult;
  }

  /** Resumes a paused or hibernated capsule, optionally with a new time to live. */
  resume(o: { timeoutSec?: number } = {}): Promise<CapsuleInfo> {
    return this.update('POST', '/resume', o.timeoutSec !== undefined ? { timeout_sec: o.timeoutSec } : {});
  }

  /** Sets the time to live to `seconds` from now. */
  setTimeout(seconds: number): Promise<CapsuleInfo> {
    return this.update('POST', '/timeout', { timeout_sec: seconds });
  }

  /**
   * Replaces the capsule's egress policy and rate limits, live (`PUT …/network`): the fields given are the
   * whole new policy (`{}` restores the defaults); `allow_internet`, when given, switches outbound internet.
   * Established connections keep flowing. An invalid policy throws an `APIError` (`invalid_argument`) naming
   * the rule, and the old policy stays.
   */
  setNetwork(p: SetNetworkParams = {}): Promise<CapsuleInfo> {
    return this.update('PUT', '/network', p);
  }

  /** Makes ports reachable through the proxy without the access token (or not). */
  setPublic(pub: boolean): Promise<CapsuleInfo> {
    return this.update('PUT', '/public', { public: pub });
  }

  /** Resource use over `window` (10m, 2h or 24h). */
  async metrics(window = '10m'): Promise<CapsuleMetrics> {
    return (await this.c.json('GET', this.path + '/metrics', { query: { window } })) as CapsuleMetrics;
  }

  /** Runs `cmd args…` to completion (`POST …/exec`). */
  async exec(cmd: string, args: string[] = [], o: ExecOptions = {}): Promise<ExecResult> {
    const timeoutMs = o.timeoutSec !== undefined ? Math.max(120_000, (o.timeoutSec + 30) * 1000) : undefined;
    const r = (await this.c.json('POST', this.path + '/exec', { json: execBody(cmd, args, o), timeoutMs })) as RawExecResult;
    const res: ExecResult = { exitCode: r.exit_code, stdout: r.stdout, stderr: r.stderr, error: r.error, truncated: r.truncated, pid: r.pid };
    if (o.check && res.exitCode !== 0) throw new CommandExitError(res.exitCode, res.stdout, res.stderr);
    return res;
  }

  /** Runs `cmd args…` with its output delivered live to the handlers (WebSocket `…/exec/stream`). */
  async execStream(cmd: string, args: string[] = [], o: ExecOptions & StreamHandlers = {}): Promise<ExitStatus> {
    const sock = await this.c.ws(this.path + '/exec/stream', BINARY_FRAMES);
    sock.send(JSON.stringify(execBody(cmd, args, o)));
    const st = await pump(sock, o);
    if (o.check && st.exitCode !== 0) throw new CommandExitError(st.exitCode);
    return st;
  }

  /** Opens a terminal running `cmd` (default the capsule's shell), or attaches to process `pid`. */
  async pty(o: { cols?: number; rows?: number; cmd?: string; pid?: number } = {}): Promise<Pty> {
    return new Pty(await this.c.ws(this.path + '/pty', { cols: o.cols ?? 80, rows: o.rows ?? 24, cmd: o.cmd, pid: o.pid }));
  }
}

/** An open terminal: `send` keystrokes, `recv` output, `resize`, `close`. */
export class Pty {
  /** The terminal process's pid (after its start message). */
  pid?: number;
  /** The exit code once the session ended. */
  exitCode?: number;

  /** @internal */
  constructor(private readonly sock: Socket) {}

  /** Sends keystrokes. */
  send(data: string | Uint8Array): void {
    this.sock.send(typeof data === 'string' ? enc.encode(data) : data);
  }

  /** Resizes the terminal. */
  resize(cols: number, rows: number): void {
    this.sock.send(JSON.stringify({ type: 'resize', cols, rows }));
  }

  /** The next chunk of output, or null when the session ended (then `exitCode` is set). */
  async recv(): Promise<Uint8Array | null> {
    for (;;) {
      const m = await this.sock.next();
      if (m === null) return null;
      if (typeof m !== 'string') return m;
      const ev = JSON.parse(m);
      if (ev.type === 'start') this.pid = ev.pid;
      else if (ev.type === 'end') this.exitCode = ev.exit_code ?? 0;
      else if (ev.type === 'error') throw new APIError(0, ev.code || 'internal', ev.message ?? '');
    }
  }

  /** Closes the terminal (a shell it started is killed). */
  close(): void {
    this.sock.close();
  }
}

/** Background processes of one capsule (`capsule.processes`). */
export class Processes {
  private readonly path: string;
  /** @internal */
  constructor(private readonly c: Client, id: string) {
    this.path = cpath(id) + '/processes';
  }

  /** Starts `cmd args…` in the background; `openStdin` keeps stdin open for attach. */
  async start(cmd: string, args: string[] = [], o: ExecOptions & { tag?: string; openStdin?: boolean } = {}): Promise<ProcessStarted> {
    const body: S['StartProcess'] = { ...execBody(cmd, args, o) };
    if (o.tag) body.tag = o.tag;
    if (o.openStdin) body.open_stdin = true;
    return (await this.c.json('POST', this.path, { json: body })) as ProcessStarted;
  }

  /** The capsule's background processes. */
  async list(): Promise<Process[]> {
    return ((await this.c.json('GET', this.path)) as S['ProcessList']).processes;
  }

  /** Sends `signal` (SIGKILL or SIGTERM) to process `pid`. */
  async kill(pid: number, signal = 'SIGKILL'): Promise<void> {
    await this.c.json('DELETE', `${this.path}/${pid}`, { query: { signal } });
  }

  /** Follows `pid`'s output until it exits; first sends `stdin` (and closes it with `closeStdin`). */
  async attach(pid: number, o: StreamHandlers & { stdin?: string; closeStdin?: boolean } = {}): Promise<ExitStatus> {
    const sock = await this.c.ws(`${this.path}/${pid}/stream`, BINARY_FRAMES);
    if (o.stdin !== undefined) sock.send(JSON.stringify({ type: 'stdin', data: o.stdin }));
    if (o.closeStdin) sock.send(JSON.stringify({ type: 'close_stdin' }));
    return pump(sock, o);
  }
}

function toStream(data: FileData): BodyInit {
  if (typeof data === 'string' || data instanceof Uint8Array || data instanceof ArrayBuffer || data instanceof Blob || data instanceof ReadableStream) {
    return data as BodyInit;
  }
  const it = (data as AsyncIterable<Uint8Array>)[Symbol.asyncIterator]();
  return new ReadableStream<Uint8Array>({
    async pull(ctl) {
      const { value, done } = await it.next();
      if (done) ctl.close();
      else ctl.enqueue(value);
    },
    async cancel() {
      await it.return?.();
    },
  });
}

/** Files of one capsule (`capsule.files`). Transfers are streamed both ways. */
export class Files {
  private readonly path: string;
  /** @internal */
  constructor(private readonly c: Client, id: string) {
    this.path = cpath(id) + '/files';
  }

  /** Writes `data` to `path` (parents created); streams and async iterables are never held whole in memory. */
  async write(path: string, data: FileData): Promise<FileEntry> {
    return (await this.c.json('PUT', this.path, { query: { path }, body: toStream(data), contentType: 'application/octet-stream', stream: true })) as FileEntry;
  }

  /** The file's bytes as a stream (a body cut short errors, never looks like a short file). */
  async stream(path: string): Promise<ReadableStream<Uint8Array>> {
    const resp = await this.c.send('GET', this.path, { query: { path }, stream: true });
    return resp.body ?? new ReadableStream({ start: (c) => c.close() });
  }

  /** The whole file's bytes (use `stream` or `download` for large files). */
  async read(path: string): Promise<Uint8Array> {
    const resp = await this.c.send('GET', this.path, { query: { path }, stream: true });
    return new Uint8Array(await resp.arrayBuffer());
  }

  /** The whole file, decoded as UTF-8. */
  async readText(path: string): Promise<string> {
    return dec.decode(await this.read(path));
  }

  /** Node only: streams the local file `localPath` to `path`. */
  async upload(localPath: string, path: string): Promise<FileEntry> {
    const fs = await import('node:fs');
    const { Readable } = await import('node:stream');
    const body = Readable.toWeb(fs.createReadStream(localPath, { highWaterMark: 1 << 20 })) as ReadableStream<Uint8Array>;
    return this.write(path, body);
  }

  /** Node only: streams the file at `path` into the local file `localPath`; returns the byte count. */
  async download(path: string, localPath: string): Promise<number> {
    const fs = await import('node:fs');
    const { Readable } = await import('node:stream');
    const { pipeline } = await import('node:stream/promises');
    const body = await this.stream(path);
    let n = 0;
    const src = Readable.fromWeb(body as import('node:stream/web').ReadableStream<Uint8Array>);
    src.on('data', (c: Uint8Array) => (n += c.length));
    await pipeline(src, fs.createWriteStream(localPath));
    return n;
  }

  /** The entries of directory `path` (`depth` 1 = direct children). */
  async list(path: string, depth = 1): Promise<FileEntry[]> {
    return ((await this.c.json('GET', this.path + '/list', { query: { path, depth } })) as S['FileList']).entries;
  }

  /** Creates directory `path` and its parents (`created` false when it existed). */
  async mkdir(path: string): Promise<MkdirResult> {
    return (await this.c.json('POST', this.path + '/mkdir', { json: { path } })) as MkdirResult;
  }

  /** Removes a file or a directory tree. */
  async remove(path: string): Promise<void> {
    await this.c.json('DELETE', this.path, { query: { path } });
  }
}

/** Templates visible to the team (`client.templates`). */
export class Templates {
  /** @internal */
  constructor(private readonly c: Client) {}

  /** The team's templates and the public ones. */
  async list(): Promise<Template[]> {
    return ((await this.c.json('GET', '/v1/templates')) as S['TemplateList']).templates;
  }

  /** One template by id (`tpl-…`; names are in list()). */
  async get(id: string): Promise<Template> {
    return (await this.c.json('GET', '/v1/templates/' + encodeURIComponent(id))) as Template;
  }

  /**
   * Sets the default isolation of capsules created from one of the team's templates (`container`,
   * `gvisor`, `microvm`; `''` clears it: the team's default applies). Needs the team's admin role.
   */
  async setIsolation(id: string, isolation: Isolation | ''): Promise<Template> {
    const body: S['TemplateUpdate'] = { isolation };
    return (await this.c.json('PATCH', '/v1/templates/' + encodeURIComponent(id), { json: body })) as Template;
  }

  /** Deletes one of the team's own templates by id; capsules using it keep running. */
  async delete(id: string): Promise<void> {
    await this.c.json('DELETE', '/v1/templates/' + encodeURIComponent(id));
  }
  /**
   * Starts a team build of template `name` (`POST /v1/templates/builds`): a Wrennfile `recipe` with an
   * optional build `context` (a tar), or an `image` tarball to import. The body is sent as multipart
   * form data (fetch buffers Blob parts; the Go SDK and CLI stream large contexts). Follow it with buildLogs().
   */
  async build(name: string, o: TemplateBuildOptions): Promise<Build> {
    const form = new FormData();
    form.append('name', name);
    if (o.recipe !== undefined) form.append('recipe', o.recipe);
    if (o.registryAuth) form.append('registry_auth', JSON.stringify(o.registryAuth));
    if (o.timeoutSec) form.append('timeout_sec', String(o.timeoutSec));
    if (o.context !== undefined) form.append('context', toBlob(o.context), 'context.tar');
    if (o.image !== undefined) form.append('image', toBlob(o.image), 'image.tar');
    const resp = await this.c.send('POST', '/v1/templates/builds', { body: form, stream: true });
    return (await resp.json()) as Build;
  }

  /** The team's builds, newest first. */
  async builds(): Promise<Build[]> {
    return ((await this.c.json('GET', '/v1/templates/builds')) as S['BuildList']).builds;
  }

  /** One of the team's builds. */
  async getBuild(id: string): Promise<Build> {
    return (await this.c.json('GET', '/v1/templates/builds/' + encodeURIComponent(id))) as Build;
  }

  /** Cancels a pending or running build (`conflict` once it finished). */
  async cancelBuild(id: string): Promise<Build> {
    return (await this.c.json('POST', `/v1/templates/builds/${encodeURIComponent(id)}/cancel`)) as Build;
  }

  /** The build's log records; with `follow` they arrive as the build runs, until it ends. */
  async *buildLogs(id: string, o: { follow?: boolean } = {}): AsyncGenerator<BuildLogRecord> {
    const resp = await this.c.send('GET', `/v1/templates/builds/${encodeURIComponent(id)}/logs`, {
      query: { follow: o.follow ? '1' : undefined },
      stream: true,
    });
    if (!resp.body) return;
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (value) buf += value;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.trim()) yield JSON.parse(line) as BuildLogRecord;
      }
      if (done) break;
    }
    if (buf.trim()) yield JSON.parse(buf) as BuildLogRecord;
  }
}

/** A template build's log record (schema `BuildLogRecord`). */
export type BuildLogRecord = S['BuildLogRecord'];

/** What Templates.build() sends. */
export interface TemplateBuildOptions {
  /** The Wrennfile (docs/TEMPLATES.md). */
  recipe?: string;
  /** The build context for COPY, as a tar. */
  context?: Blob | Uint8Array;
  /** An image (docker save, OCI layout) or rootfs tarball to import instead of a recipe. */
  image?: Blob | Uint8Array;
  /** Credentials for a private FROM image, for this build only. */
  registryAuth?: { username: string; password: string };
  /** Bound for the whole build (default 1800). */
  timeoutSec?: number;
}

function toBlob(d: Blob | Uint8Array): Blob {
  return d instanceof Blob ? d : new Blob([d as BlobPart]);
}

/** Template builds (`client.builds`; platform admins only). */
export class Builds {
  /** @internal */
  constructor(private readonly c: Client) {}

  /** Queues a build producing template `templateName` from `spec` (for `teamId`, default the platform team). */
  async create(templateName: string, spec: BuildSpec, teamId?: string): Promise<Build> {
    const body: S['CreateBuild'] = { template_name: templateName, spec };
    if (teamId) body.team_id = teamId;
    return (await this.c.json('POST', '/v1/admin/builds', { json: body })) as Build;
  }

  /** Every team's builds. */
  async list(): Promise<Build[]> {
    return ((await this.c.json('GET', '/v1/admin/builds')) as S['BuildList']).builds;
  }

  /** Cancels a pending or running build (`conflict` when it already finished). */
  async cancel(id: string): Promise<Build> {
    return (await this.c.json('POST', `/v1/admin/builds/${encodeURIComponent(id)}/cancel`)) as Build;
  }
}

function vpath(name: string): string {
  return '/v1/volumes/' + encodeURIComponent(name);
}

/** The team's persistent volumes (`client.volumes`; docs/VOLUMES.md). */
export class Volumes {
  /** @internal */
  constructor(private readonly c: Client) {}

  /** Creates an empty volume of `sizeMb` (the quota; default 1024). */
  async create(name: string, sizeMb?: number): Promise<Volume> {
    const json: Record<string, unknown> = { name };
    if (sizeMb !== undefined) json.size_mb = sizeMb;
    return (await this.c.json('POST', '/v1/volumes', { json })) as Volume;
  }

  /** The team's volumes, by name. */
  async list(): Promise<Volume[]> {
    return ((await this.c.json('GET', '/v1/volumes')) as S['VolumeList']).volumes;
  }

  /** One volume, where it lives and the mounts holding it. */
  async get(name: string): Promise<Volume> {
    return (await this.c.json('GET', vpath(name))) as Volume;
  }

  /** Deletes the volume and its files (a `conflict` error while a capsule mounts it). */
  async delete(name: string): Promise<void> {
    await this.c.send('DELETE', vpath(name));
  }

  /** A file of the volume (at most 64 MiB), with or without a capsule holding it. */
  async read(name: string, path: string): Promise<Uint8Array> {
    const resp = await this.c.send('GET', vpath(name) + '/files', { query: { path }, stream: true });
    return new Uint8Array(await resp.arrayBuffer());
  }

  /** Creates or replaces a file (at most 64 MiB; parents created); `volume_full` (507) when it does not fit. */
  async write(name: string, path: string, data: Uint8Array | string): Promise<FileEntry> {
    const body = (typeof data === 'string' ? new TextEncoder().encode(data) : data) as unknown as BodyInit;
    return (await this.c.json('PUT', vpath(name) + '/files', { query: { path }, body, contentType: 'application/octet-stream' })) as FileEntry;
  }

  /** The entries of a directory of the volume. */
  async listFiles(name: string, path = '/'): Promise<FileEntry[]> {
    return ((await this.c.json('GET', vpath(name) + '/files/list', { query: { path } })) as S['FileList']).entries;
  }

  /** Removes a file or directory tree of the volume. */
  async remove(name: string, path: string): Promise<void> {
    await this.c.send('DELETE', vpath(name) + '/files', { query: { path } });
  }
}
