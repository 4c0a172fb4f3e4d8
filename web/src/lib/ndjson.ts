// Newline-delimited JSON read incrementally from a byte stream (the build
// log's ?follow=1 answer): chunks may split a record anywhere, even inside a
// UTF-8 sequence; a record is complete at its newline.

export class NDJSONDecoder<T = unknown> {
  private dec = new TextDecoder();
  private buf = '';

  /** Feeds a chunk; returns the records it completed. Blank lines are skipped;
   * a line that is not JSON becomes a record {data: line} via onBad. */
  push(chunk: Uint8Array, onBad: (line: string) => T = (l) => ({ data: l }) as T): T[] {
    this.buf += this.dec.decode(chunk, { stream: true });
    return this.take(false, onBad);
  }

  /** Ends the stream: a last record without a newline is returned too. */
  end(onBad: (line: string) => T = (l) => ({ data: l }) as T): T[] {
    this.buf += this.dec.decode();
    return this.take(true, onBad);
  }

  private take(all: boolean, onBad: (line: string) => T): T[] {
    const out: T[] = [];
    let i: number;
    while ((i = this.buf.indexOf('\n')) >= 0) {
      this.line(this.buf.slice(0, i), out, onBad);
      this.buf = this.buf.slice(i + 1);
    }
    if (all && this.buf) {
      this.line(this.buf, out, onBad);
      this.buf = '';
    }
    return out;
  }

  private line(l: string, out: T[], onBad: (line: string) => T) {
    const s = l.trim();
    if (!s) return;
    try {
      out.push(JSON.parse(s) as T);
    } catch {
      out.push(onBad(s));
    }
  }
}

/** A build log record (issue 16: {time, step, stream, data}). */
export type BuildLogRecord = { time?: string; step?: number | string; stream?: string; data?: string };

/** Reads an NDJSON response to its end, calling onRecords as records arrive. */
export async function followNDJSON<T>(res: Response, onRecords: (r: T[]) => void, signal?: AbortSignal): Promise<void> {
  const d = new NDJSONDecoder<T>();
  if (!res.body) {
    onRecords(d.push(new Uint8Array(await res.arrayBuffer())).concat(d.end()));
    return;
  }
  const rd = res.body.getReader();
  const stop = () => rd.cancel().catch(() => {});
  signal?.addEventListener('abort', stop);
  try {
    for (;;) {
      const { value, done } = await rd.read();
      if (done) break;
      const recs = d.push(value);
      if (recs.length) onRecords(recs);
    }
    const rest = d.end();
    if (rest.length) onRecords(rest);
  } finally {
    signal?.removeEventListener('abort', stop);
  }
}
