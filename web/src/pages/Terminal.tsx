import { useEffect, useRef, useState } from 'react';
import { Terminal as XTerm } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import '@xterm/xterm/css/xterm.css';
import { capsulePath, wsURL } from '../api/client';

// A shell in the capsule over the PTY WebSocket: binary frames carry
// keystrokes in and output out; text frames carry control messages
// ({"type":"resize"} in; {"type":"start"}/{"type":"end"} out).
export default function Terminal({ id }: { id: string }) {
  const el = useRef<HTMLDivElement>(null);
  const [state, setState] = useState<'connecting' | 'open' | 'closed'>('connecting');
  const [attempt, setAttempt] = useState(0);

  useEffect(() => {
    const term = new XTerm({ cursorBlink: true, fontSize: 14, convertEol: false, fontFamily: 'ui-monospace, monospace' });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(el.current!);
    fit.fit();
    const enc = new TextEncoder();
    const ws = new WebSocket(wsURL(capsulePath(id, '/pty'), { cols: term.cols, rows: term.rows }));
    ws.binaryType = 'arraybuffer';
    setState('connecting');
    ws.onopen = () => {
      setState('open');
      term.focus();
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data === 'string') return; // start/end frames
      term.write(new Uint8Array(ev.data as ArrayBuffer));
    };
    ws.onclose = (ev) => {
      setState('closed');
      term.write(ev.wasClean ? '\r\n[session disconnected]\r\n' : `\r\n[connection lost${ev.reason ? `: ${ev.reason}` : ''}]\r\n`);
    };
    const data = term.onData((d) => ws.readyState === WebSocket.OPEN && ws.send(enc.encode(d)));
    const resize = term.onResize(({ cols, rows }) => ws.readyState === WebSocket.OPEN && ws.send(JSON.stringify({ type: 'resize', cols, rows })));
    const ro = new ResizeObserver(() => fit.fit());
    ro.observe(el.current!);
    return () => {
      ro.disconnect();
      data.dispose();
      resize.dispose();
      ws.onclose = null;
      ws.close();
      term.dispose();
    };
  }, [id, attempt]);

  return (
    <div>
      <div className="bar small">
        <span data-testid="term-state">{state}</span>
        {state === 'closed' && <button onClick={() => setAttempt((a) => a + 1)}>New session</button>}
      </div>
      <div ref={el} className="term" data-testid="terminal" />
    </div>
  );
}
