/** Errors raised by the Wrenn SDK. */

/** Base class of every error the SDK throws. */
export class WrennError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** An error answered by the Wrenn API (`{"code", "message", "request_id"}`). */
export class APIError extends WrennError {
  /** HTTP status (0 for an error sent on a WebSocket). */
  readonly status: number;
  /** The API's error code, e.g. `not_found`, `conflict`, `invalid_argument`. */
  readonly code: string;
  /** The request id the server logged, if any. */
  readonly requestId?: string;

  constructor(status: number, code: string, message: string, requestId?: string) {
    // message is the API's own message; toString() adds the code and request id.
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
  }

  /** `APIError: code: message (request id …)`. */
  override toString(): string {
    return `${this.name}: ${this.code}: ${this.message}${this.requestId ? ` (request id ${this.requestId})` : ''}`;
  }
}

/** Nothing answered at the URL, or the connection broke before an answer. */
export class ConnectionError extends WrennError {
  /** The base URL that did not answer. */
  readonly url: string;
  constructor(url: string, cause: unknown) {
    super(`wrenn: no answer from ${url}: ${(cause as Error)?.message ?? cause}`, { cause });
    this.url = url;
  }
}

/** The call did not finish within its timeout. */
export class TimeoutError extends WrennError {
  /** The URL of the call that timed out. */
  readonly url: string;
  constructor(url: string, cause?: unknown) {
    super(`wrenn: timed out: ${url}`, { cause });
    this.url = url;
  }
}

/** An exec, process or terminal stream ended without an exit status. */
export class StreamClosedError extends WrennError {}

/** A command exited non-zero and the call asked for that to throw (`check: true`). */
export class CommandExitError extends WrennError {
  /** The command's exit code. */
  readonly exitCode: number;
  /** Its output, when the call collected it. */
  readonly stdout: string;
  /** Its error output, when the call collected it. */
  readonly stderr: string;
  constructor(exitCode: number, stdout = '', stderr = '') {
    super(`wrenn: command exited with code ${exitCode}: ${stderr.trim().slice(0, 200)}`);
    this.exitCode = exitCode;
    this.stdout = stdout;
    this.stderr = stderr;
  }
}

const defaultCode: Record<number, string> = {
  400: 'invalid_argument', 401: 'unauthenticated', 403: 'permission_denied', 404: 'not_found',
  409: 'conflict', 413: 'payload_too_large', 429: 'rate_limited', 503: 'unavailable',
};

/** Builds an APIError from an error answer's status, body and X-Request-Id header. */
export function decodeError(status: number, body: string, requestId?: string | null): APIError {
  let code = '';
  let message = '';
  try {
    const d = JSON.parse(body);
    code = d.code ?? '';
    message = d.message ?? '';
    requestId = d.request_id ?? requestId;
  } catch {
    message = body.trim();
  }
  if (!code) {
    code = defaultCode[status] ?? (status >= 500 ? 'internal' : 'unknown');
    message ||= `HTTP ${status}`;
  }
  return new APIError(status, code, message, requestId ?? undefined);
}
