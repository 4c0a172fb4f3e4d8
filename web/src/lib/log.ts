// Followed output of a process: appended chunks, capped to the last max
// characters (a long-running process must not grow the page without bound),
// cut at a line start when possible.
export function appendCapped(buf: string, chunk: string, max: number): string {
  const s = buf + chunk;
  if (s.length <= max) return s;
  let cut = s.length - max;
  const nl = s.indexOf('\n', cut);
  if (nl !== -1 && nl - cut < 200) cut = nl + 1;
  return s.slice(cut);
}

/** Whether a scrolled element is (nearly) at its bottom: follow new output only then. */
export function atBottom(el: { scrollTop: number; scrollHeight: number; clientHeight: number }, slack = 8): boolean {
  return el.scrollHeight - el.scrollTop - el.clientHeight <= slack;
}

/** Decodes an ExecEvent's payload (text, or base64 for output that is not UTF-8). */
export function eventText(ev: { data?: string; data_b64?: string }): string {
  if (ev.data !== undefined) return ev.data;
  if (ev.data_b64 === undefined) return '';
  const bin = atob(ev.data_b64);
  const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
  return new TextDecoder('utf-8', { fatal: false }).decode(bytes);
}
