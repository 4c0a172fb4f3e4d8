// The API client: the only place that knows where the credential lives.
//
// The credential (an API key or a session JWT) is kept in memory only — a
// module variable, never localStorage, sessionStorage or a cookie — so a
// script injected into any other page of the origin cannot read it later and
// closing or reloading the tab signs out. See docs/DASHBOARD.md (Security).
import type { components } from './schema';

export type Schemas = components['schemas'];
export type Capsule = Schemas['Capsule'];
export type Me = Schemas['Me'];

export type Credential = { kind: 'key'; key: string } | { kind: 'jwt'; token: string; expiresAt?: string };

let cred: Credential | null = null;
let onExpired: ((why: string) => void) | null = null;

export function setCredential(c: Credential | null) {
  cred = c;
}
export function credential(): Credential | null {
  return cred;
}
/** Registers what happens when the server refuses the credential (401). */
export function onSessionExpired(fn: (why: string) => void) {
  onExpired = fn;
}

export class ApiError extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
  ) {
    super(message);
  }
}

export function authHeaders(): Record<string, string> {
  if (!cred) return {};
  return cred.kind === 'key' ? { 'X-API-Key': cred.key } : { Authorization: `Bearer ${cred.token}` };
}

export async function request(method: string, path: string, init: { body?: BodyInit; json?: unknown; headers?: Record<string, string>; signal?: AbortSignal } = {}): Promise<Response> {
  const headers: Record<string, string> = { ...authHeaders(), ...(init.headers ?? {}) };
  let body = init.body;
  if (init.json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(init.json);
  }
  let res: Response;
  try {
    res = await fetch(path, { method, headers, body, signal: init.signal, cache: 'no-store' });
  } catch (e) {
    if ((e as Error).name === 'AbortError') throw e;
    throw new ApiError(0, 'network', 'The server cannot be reached.');
  }
  if (res.ok || res.status === 304) return res;
  let code = 'error';
  let message = `${res.status} ${res.statusText}`;
  try {
    const j = await res.json();
    code = j.code ?? code;
    message = j.message ?? message;
  } catch {
    /* not JSON */
  }
  if (res.status === 401 && cred && !path.startsWith('/v1/auth/')) {
    cred = null;
    onExpired?.(message);
  }
  throw new ApiError(res.status, code, message);
}

export async function api<T>(method: string, path: string, json?: unknown): Promise<T> {
  const res = await request(method, path, { json });
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  return (text ? JSON.parse(text) : undefined) as T;
}

/** URL of a WebSocket route with the credential as ?token= (the only way a
 * browser can authenticate a handshake; the API reads it only there). */
export function wsURL(path: string, params: Record<string, string | number>): string {
  const u = new URL(path, window.location.href);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  for (const [k, v] of Object.entries(params)) u.searchParams.set(k, String(v));
  if (cred) u.searchParams.set('token', cred.kind === 'key' ? cred.key : cred.token);
  return u.toString();
}

export function capsulePath(id: string, rest = ''): string {
  return `/v1/capsules/${encodeURIComponent(id)}${rest}`;
}

export type AuthOptions = Schemas['AuthOptions'];
let optionsP: Promise<AuthOptions> | null = null;
/** GET /v1/auth/options, once per page load (servers without it: all off). */
export function authOptions(): Promise<AuthOptions> {
  optionsP ??= api<AuthOptions>('GET', '/v1/auth/options').catch(() => {
    optionsP = null;
    return { signup: true, github: false, proxy_port: 0, proxy_domain: '' };
  });
  return optionsP;
}

/** Access tokens of capsules created in this tab (the API shows one only in
 * the create answer); kept in memory like the credential, cleared on sign-out. */
export const accessTokens = new Map<string, string>();
