// What the terminal does when its PTY WebSocket closes. The shell keeps
// running in the capsule when the socket drops (envd keeps a process whose
// caller went away), so a drop is followed by a re-attach to the same pid
// (?pid=) with backoff; only the process's own end, or an error that a
// retry cannot fix, ends the session.

export type PtyClose = {
  /** an {"type":"end"} frame arrived: the shell exited */
  gotEnd: boolean;
  /** the shell's pid, from the {"type":"start"} frame or the attach */
  pid: number | null;
  /** the code of an {"type":"error"} frame, if one came */
  errorCode?: string;
  /** re-attaches already tried since the last open socket */
  attempt: number;
};

export type Next =
  | { kind: 'ended'; why: string }
  | { kind: 'retry'; pid: number; delay: number }
  | { kind: 'give-up'; why: string };

export const MAX_RETRIES = 8;

/** Errors worth retrying: the agent or envd is briefly unreachable. */
const RETRYABLE = new Set(['unavailable', 'internal', 'request_timeout']);

export function backoff(attempt: number): number {
  return Math.min(250 * 2 ** attempt, 5000);
}

export function afterClose(c: PtyClose): Next {
  if (c.gotEnd) return { kind: 'ended', why: 'the shell exited' };
  if (c.errorCode && !RETRYABLE.has(c.errorCode)) return { kind: 'ended', why: c.errorCode };
  if (c.pid === null) return { kind: 'give-up', why: 'the shell never started' };
  if (c.attempt >= MAX_RETRIES) return { kind: 'give-up', why: `no answer after ${MAX_RETRIES} attempts` };
  return { kind: 'retry', pid: c.pid, delay: backoff(c.attempt) };
}
