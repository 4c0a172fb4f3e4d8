import { useEffect, useRef, useState } from 'react';
import { Terminal as XTerm } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import '@xterm/xterm/css/xterm.css';
import { capsulePath, wsURL } from '../api/client';
import { afterClose } from '../lib/reconnect';

// A shell in the capsule over the PTY WebSocket: binary frames carry
// keystrokes in and output out; text frames carry control messages
// ({"type":"resize"} in; {"type":"start"}/{"type":"end"}/{"type":"error"} out).
//
// Reconnect: the shell is opened with ?grace=300, so it outlives its socket
// by five minutes; when the socket drops without the shell's end the
// terminal re-attaches to the same pid (?pid=) with backoff, and the API
// delivers what the shell printed meanwhile. The pid is also remembered per capsule for
// this tab, so leaving the tab or the page and coming back within the grace
// re-attaches to the running shell.

/** capsule id → pid of its dashboard shell (memory only, like the credential) */
const shells = new Map<string, number>();

/** How long the API keeps a shell whose socket went away (?grace=): a
 * re-attach within it finds the shell; after it the shell is killed. */
const GRACE_SEC = 300;

type State = 'connecting' | 'open' | 'reconnecting' | 'closed';

export default function Terminal({ id }: { id: string }) {
  const el = useRef<HTMLDivElement>(null);
  const [state, setState] = useState<State>('connecting');
  const [session, setSession] = useState(0);
  const [reattached, setReattached] = useState(0);

  useEffect(() => {
    const term = new XTerm({ cursorBlink: true, fontSize: 14, convertEol: false, fontFamily: 'ui-monospace, monospace' });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(el.current!);
    fit.fit();
    const enc = new TextEncoder();
    let ws: WebSocket | null = null;
    let disposed = false;
    let retry: number | undefined;
    let attempt = 0;

    const connect = (pid: number | null) => {
      let gotEnd = false;
      let errorCode: string | undefined;
      let startedPid = pid;
      const params: Record<string, number> = { cols: term.cols, rows: term.rows, grace: GRACE_SEC };
      if (pid) params.pid = pid;
      const sock = new WebSocket(wsURL(capsulePath(id, '/pty'), params));
      ws = sock;
      sock.binaryType = 'arraybuffer';
      sock.onopen = () => {
        if (pid) {
          // An attach first delivers what the shell printed while no one was
          // attached (the screen keeps the rest); tell it this terminal's size.
          sock.send(JSON.stringify({ type: 'resize', cols: term.cols, rows: term.rows }));
          setReattached((n) => n + 1);
        }
        attempt = 0;
        setState('open');
        term.focus();
      };
      sock.onmessage = (ev) => {
        if (typeof ev.data !== 'string') {
          term.write(new Uint8Array(ev.data as ArrayBuffer));
          return;
        }
        try {
          const m = JSON.parse(ev.data) as { type: string; pid?: number; code?: string; message?: string };
          if (m.type === 'start' && m.pid) {
            startedPid = m.pid;
            shells.set(id, m.pid);
          } else if (m.type === 'end') {
            gotEnd = true;
          } else if (m.type === 'error') {
            errorCode = m.code;
            if (m.message) term.write(`\r\n[${m.message}]\r\n`);
          }
        } catch {
          /* not a control frame */
        }
      };
      sock.onclose = () => {
        if (disposed) return;
        const next = afterClose({ gotEnd, pid: startedPid, errorCode, attempt });
        if (next.kind === 'retry') {
          attempt++;
          setState('reconnecting');
          if (attempt === 1) term.write('\r\n[connection lost: reconnecting…]\r\n');
          retry = window.setTimeout(() => connect(next.pid), next.delay);
          return;
        }
        shells.delete(id);
        setState('closed');
        term.write(next.kind === 'ended' ? '\r\n[session disconnected]\r\n' : `\r\n[connection lost: ${next.why}]\r\n`);
      };
    };
    connect(shells.get(id) ?? null);

    const data = term.onData((d) => ws?.readyState === WebSocket.OPEN && ws.send(enc.encode(d)));
    const resize = term.onResize(({ cols, rows }) => ws?.readyState === WebSocket.OPEN && ws.send(JSON.stringify({ type: 'resize', cols, rows })));
    const ro = new ResizeObserver(() => fit.fit());
    ro.observe(el.current!);
    return () => {
      disposed = true;
      window.clearTimeout(retry);
      ro.disconnect();
      data.dispose();
      resize.dispose();
      ws?.close();
      term.dispose();
    };
  }, [id, session]);

  return (
    <div>
      <div className="bar small">
        <span data-testid="term-state">{state}</span>
        {reattached > 0 && <span className="hint" data-testid="term-reattached">re-attached to the running shell ({reattached}×)</span>}
        {state === 'closed' && <button onClick={() => setSession((a) => a + 1)}>New session</button>}
      </div>
      <div ref={el} className="term" data-testid="terminal" />
    </div>
  );
}
