import { lazy, Suspense, useCallback, useState } from 'react';
import { Link, useNavigate, useParams } from 'react-router';
import { api, capsulePath, type Capsule } from '../api/client';
import { usePoll } from '../lib/poll';
import { ago, bytes, until } from '../lib/format';
import { Confirm, ErrorBox, Loading } from '../components/ui';
import { Files } from './Files';
import { Processes } from './Processes';
import { Ports } from './Ports';

// The terminal (xterm.js) and the charts (uPlot) load on demand.
const Terminal = lazy(() => import('./Terminal'));
const Metrics = lazy(() => import('./Metrics'));

type Tab = 'terminal' | 'files' | 'processes' | 'metrics' | 'ports';

export function CapsulePage() {
  const { id = '' } = useParams();
  const nav = useNavigate();
  const [c, setC] = useState<Capsule | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [actionError, setActionError] = useState<unknown>(null);
  const [busy, setBusy] = useState('');
  const [tab, setTab] = useState<Tab>('terminal');
  const [confirm, setConfirm] = useState<null | 'delete' | 'hibernate'>(null);
  const [extend, setExtend] = useState(600);

  const load = useCallback(async () => {
    try {
      setC(await api<Capsule>('GET', capsulePath(id)));
      setError(null);
    } catch (e) {
      setError(e);
    }
  }, [id]);
  usePoll(load, 3000, [load]);

  async function act(name: string, fn: () => Promise<unknown>) {
    setBusy(name);
    setActionError(null);
    try {
      const r = await fn();
      if (r && typeof r === 'object' && 'id' in r) setC(r as Capsule);
      else await load();
    } catch (e) {
      setActionError(e);
    } finally {
      setBusy('');
    }
  }

  if (!c) {
    return (
      <section>
        <p><Link to="/capsules">← Capsules</Link></p>
        {error ? <ErrorBox error={error} retry={load} /> : <Loading what={`capsule ${id}`} />}
      </section>
    );
  }
  const running = c.status === 'running';
  const paused = c.status === 'paused' || c.status === 'hibernated';
  return (
    <section>
      <p><Link to="/capsules">← Capsules</Link></p>
      <div className="bar">
        <h1>{c.id}</h1>
        <span className={`state s-${c.status}`} data-testid="status">{c.status}</span>
      </div>
      <dl className="summary">
        <dt>Template</dt><dd>{c.template_id}</dd>
        <dt>Size</dt><dd>{c.vcpus} vCPU · {c.memory_mb} MiB · {bytes(c.disk_size_mb * 1024 * 1024)} disk</dd>
        <dt>Created</dt><dd>{ago(c.created_at)}</dd>
        <dt>Expires</dt><dd>{until(c.expires_at)}</dd>
        <dt>Internet</dt><dd>{c.allow_internet === undefined ? '—' : c.allow_internet ? 'yes' : 'no'}</dd>
        <dt>Public</dt><dd>{c.public ? 'yes' : 'no'}</dd>
        {c.error_reason && (<><dt>Error</dt><dd>{c.error_reason}</dd></>)}
      </dl>
      <div className="actions">
        <button disabled={!running || !!busy} onClick={() => act('pause', () => api('POST', capsulePath(id, '/pause'), {}))}>{busy === 'pause' ? 'Pausing…' : 'Pause'}</button>
        <button disabled={!running || !!busy} onClick={() => setConfirm('hibernate')}>Pause to disk</button>
        <button disabled={!paused || !!busy} onClick={() => act('resume', () => api('POST', capsulePath(id, '/resume'), {}))}>{busy === 'resume' ? 'Resuming…' : 'Resume'}</button>
        <label>
          <span className="sr">Timeout in seconds</span>
          <input type="number" min={0} value={extend} onChange={(e) => setExtend(Number(e.target.value))} aria-label="Timeout in seconds" className="short" />
        </label>
        <button disabled={!!busy} onClick={() => act('timeout', () => api('POST', capsulePath(id, '/timeout'), { timeout_sec: extend }))}>Set timeout</button>
        <button disabled={!!busy} onClick={() => act('public', () => api('PUT', capsulePath(id, '/public'), { public: !c.public }))}>{c.public ? 'Make private' : 'Make public'}</button>
        <button className="danger" disabled={!!busy} onClick={() => setConfirm('delete')}>Delete</button>
      </div>
      <ErrorBox error={actionError} />
      <div role="tablist" className="tabs">
        {(['terminal', 'files', 'processes', 'metrics', 'ports'] as Tab[]).map((t) => (
          <button key={t} role="tab" aria-selected={tab === t} onClick={() => setTab(t)}>
            {t[0].toUpperCase() + t.slice(1)}
          </button>
        ))}
      </div>
      <div role="tabpanel" className="panel">
        <Suspense fallback={<Loading what={tab} />}>
          {tab === 'terminal' && (running ? <Terminal id={id} /> : <p className="empty">The terminal needs a running capsule ({c.status}).</p>)}
          {tab === 'files' && (running ? <Files id={id} /> : <p className="empty">Files need a running capsule ({c.status}).</p>)}
          {tab === 'processes' && (running ? <Processes id={id} /> : <p className="empty">Processes need a running capsule ({c.status}).</p>)}
          {tab === 'metrics' && <Metrics id={id} />}
          {tab === 'ports' && (running ? <Ports c={c} /> : <p className="empty">Ports need a running capsule ({c.status}).</p>)}
        </Suspense>
      </div>
      <Confirm
        open={confirm === 'delete'}
        title="Delete capsule"
        body={`Delete ${c.id}? Its files and memory are gone for good.`}
        action="Delete"
        onCancel={() => setConfirm(null)}
        onConfirm={() => {
          setConfirm(null);
          act('delete', async () => {
            await api('DELETE', capsulePath(id));
            nav('/capsules');
          });
        }}
      />
      <Confirm
        open={confirm === 'hibernate'}
        title="Pause to disk"
        body="Write the capsule's memory to disk and free it? Resuming takes longer than from a plain pause."
        action="Pause to disk"
        onCancel={() => setConfirm(null)}
        onConfirm={() => {
          setConfirm(null);
          act('pause', () => api('POST', capsulePath(id, '/pause'), { to_disk: true }));
        }}
      />
    </section>
  );
}
