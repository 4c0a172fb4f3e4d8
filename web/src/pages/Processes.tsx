import { useCallback, useEffect, useRef, useState, type FormEvent } from 'react';
import { api, capsulePath, wsURL, type Schemas } from '../api/client';
import { usePoll } from '../lib/poll';
import { appendCapped, atBottom, eventText } from '../lib/log';
import { Confirm, ErrorBox, Loading } from '../components/ui';

type Proc = Schemas['Process'];

export function Processes({ id }: { id: string }) {
  const [list, setList] = useState<Proc[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [follow, setFollow] = useState<number | null>(null);
  const [kill, setKill] = useState<Proc | null>(null);
  const load = useCallback(async () => {
    try {
      setList((await api<Schemas['ProcessList']>('GET', capsulePath(id, '/processes'))).processes);
      setError(null);
    } catch (e) {
      setError(e);
    }
  }, [id]);
  usePoll(load, 3000, [load]);

  async function start(e: FormEvent<HTMLFormElement>) {
    e.preventDefault();
    const cmd = new FormData(e.currentTarget).get('cmd') as string;
    try {
      const p = await api<Schemas['ProcessStarted']>('POST', capsulePath(id, '/processes'), { cmd: '/bin/sh', args: ['-c', cmd] });
      (e.target as HTMLFormElement).reset();
      setFollow(p.pid);
      load();
    } catch (err) {
      setError(err);
    }
  }
  async function doKill(p: Proc) {
    setKill(null);
    try {
      await api('DELETE', capsulePath(id, `/processes/${p.pid}?signal=SIGKILL`));
      load();
    } catch (err) {
      setError(err);
    }
  }

  return (
    <div>
      <form className="bar small" onSubmit={start}>
        <label>
          <span className="sr">Command</span>
          <input name="cmd" aria-label="Command" placeholder="command run with sh -c" required size={40} />
        </label>
        <button type="submit">Start in background</button>
      </form>
      <ErrorBox error={error} retry={load} />
      {list === null && !error && <Loading what="processes" />}
      {list?.length === 0 && <p className="empty">No processes running.</p>}
      {list && list.length > 0 && (
        <table className="list">
          <thead><tr><th>PID</th><th>Command</th><th>Tag</th><th><span className="sr">Actions</span></th></tr></thead>
          <tbody>
            {list.map((p) => (
              <tr key={p.pid} data-pid={p.pid}>
                <td>{p.pid}</td>
                <td><code>{[p.cmd, ...p.args].join(' ')}</code></td>
                <td>{p.tag}</td>
                <td>
                  <button onClick={() => setFollow(p.pid)} aria-label={`Output of ${p.pid}`}>Output</button>{' '}
                  <button className="danger" onClick={() => setKill(p)} aria-label={`Kill ${p.pid}`}>Kill</button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {follow !== null && <Output key={follow} id={id} pid={follow} onClose={() => setFollow(null)} />}
      <Confirm open={!!kill} title="Kill process" body={`Kill process ${kill?.pid} (SIGKILL)?`} action="Kill" onCancel={() => setKill(null)} onConfirm={() => kill && doKill(kill)} />
    </div>
  );
}

/** Follows a process's output over its stream WebSocket. */
function Output({ id, pid, onClose }: { id: string; pid: number; onClose: () => void }) {
  const [text, setText] = useState('');
  const [state, setState] = useState('connecting');
  const pre = useRef<HTMLPreElement>(null);
  const stick = useRef(true);
  useEffect(() => {
    const ws = new WebSocket(wsURL(capsulePath(id, `/processes/${pid}/stream`), {}));
    ws.onopen = () => setState('following');
    ws.onmessage = (m) => {
      if (typeof m.data !== 'string') return;
      const ev = JSON.parse(m.data) as Schemas['ExecEvent'];
      if (ev.type === 'stdout' || ev.type === 'stderr') setText((t) => appendCapped(t, eventText(ev), 256 * 1024));
      else if (ev.type === 'end') setState(`exited (${ev.exit_code ?? ev.status ?? '?'})`);
      else if (ev.type === 'error') setState(`error: ${ev.message}`);
    };
    ws.onclose = () => setState((s) => (s === 'following' || s === 'connecting' ? 'disconnected' : s));
    return () => {
      ws.onclose = null;
      ws.close();
    };
  }, [id, pid]);
  useEffect(() => {
    if (stick.current && pre.current) pre.current.scrollTop = pre.current.scrollHeight;
  }, [text]);
  return (
    <div className="preview">
      <div className="bar small">
        <strong>Output of {pid}</strong> <span data-testid="proc-state">{state}</span>
        <button onClick={onClose}>Close</button>
      </div>
      <pre ref={pre} data-testid="proc-output" onScroll={(e) => (stick.current = atBottom(e.currentTarget))}>{text}</pre>
    </div>
  );
}
