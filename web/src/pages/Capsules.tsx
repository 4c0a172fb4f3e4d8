import { memo, useCallback, useMemo, useRef, useState, type FormEvent } from 'react';
import { Link, useNavigate } from 'react-router';
import { accessTokens, api, request, type Capsule, type Schemas } from '../api/client';
import { mergeList } from '../lib/merge';
import { usePoll } from '../lib/poll';
import { ago, bytes, until } from '../lib/format';
import { Confirm, Dialog, ErrorBox, Loading } from '../components/ui';

const STATES = ['pending', 'starting', 'running', 'paused', 'hibernated', 'stopped', 'error', 'missing'] as const;

export function Capsules() {
  const [list, setList] = useState<Capsule[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [state, setState] = useState('');
  const [template, setTemplate] = useState('');
  const [meta, setMeta] = useState('');
  const [selected, setSelected] = useState<Set<string>>(new Set());
  const [creating, setCreating] = useState(false);
  const [confirmDelete, setConfirmDelete] = useState(false);
  const etag = useRef('');

  const load = useCallback(
    async (signal?: AbortSignal) => {
      try {
        const q = new URLSearchParams({ limit: '1000' });
        if (state) q.set('status', state);
        for (const [k, v] of parseMeta(meta)) q.append(`metadata.${k}`, v);
        const res = await request('GET', `/v1/capsules?${q}`, { signal, headers: etag.current ? { 'If-None-Match': etag.current } : {} });
        if (res.status === 304) return;
        etag.current = res.headers.get('ETag') ?? '';
        const body = (await res.json()) as Schemas['CapsuleList'];
        setList((prev) => mergeList(prev ?? [], body.capsules, (c) => c.id));
        setError(null);
      } catch (e) {
        if ((e as Error).name !== 'AbortError') setError(e);
      }
    },
    [state, meta],
  );
  usePoll(
    (s) => {
      return load(s);
    },
    3000,
    [load],
  );

  const templates = useMemo(() => [...new Set((list ?? []).map((c) => c.template_id))].sort(), [list]);
  const shown = useMemo(() => (list ?? []).filter((c) => !template || c.template_id === template), [list, template]);

  const toggle = useCallback((id: string) => {
    setSelected((s) => {
      const n = new Set(s);
      if (n.has(id)) n.delete(id);
      else n.add(id);
      return n;
    });
  }, []);

  async function deleteSelected() {
    setConfirmDelete(false);
    const ids = [...selected];
    const results = await Promise.allSettled(ids.map((id) => api('DELETE', `/v1/capsules/${encodeURIComponent(id)}`)));
    const failed = results.filter((r) => r.status === 'rejected') as PromiseRejectedResult[];
    setSelected(new Set());
    if (failed.length) setError(failed[0].reason);
    etag.current = '';
    await load();
  }

  return (
    <section>
      <div className="bar">
        <h1>Capsules</h1>
        <button className="primary" onClick={() => setCreating(true)}>
          New capsule
        </button>
        <button className="danger" disabled={selected.size === 0} onClick={() => setConfirmDelete(true)}>
          Delete selected ({selected.size})
        </button>
      </div>
      <div className="filters">
        <label>
          State{' '}
          <select value={state} onChange={(e) => { etag.current = ''; setState(e.target.value); }}>
            <option value="">any</option>
            {STATES.map((s) => (
              <option key={s}>{s}</option>
            ))}
          </select>
        </label>
        <label>
          Template{' '}
          <select value={template} onChange={(e) => setTemplate(e.target.value)}>
            <option value="">any</option>
            {templates.map((t) => (
              <option key={t}>{t}</option>
            ))}
          </select>
        </label>
        <MetaFilter value={meta} onChange={(v) => { etag.current = ''; setMeta(v); }} />
      </div>
      <ErrorBox error={error} retry={() => load()} />
      {list === null && !error && <Loading what="capsules" />}
      {list !== null && shown.length === 0 && <p className="empty">No capsules{state || template || meta ? ' match these filters' : ' yet: create one with “New capsule”'}.</p>}
      {shown.length > 0 && (
        <table className="list">
          <thead>
            <tr>
              <th><span className="sr">Select</span></th>
              <th>ID</th>
              <th>State</th>
              <th>Template</th>
              <th>Size</th>
              <th>Age</th>
              <th>Expires</th>
            </tr>
          </thead>
          <tbody>
            {shown.map((c) => (
              <Row key={c.id} c={c} checked={selected.has(c.id)} toggle={toggle} />
            ))}
          </tbody>
        </table>
      )}
      <CreateDialog open={creating} onClose={() => setCreating(false)} />
      <Confirm
        open={confirmDelete}
        title="Delete capsules"
        body={`Delete ${selected.size} capsule(s)? Their files and memory are gone for good.`}
        action="Delete"
        onConfirm={deleteSelected}
        onCancel={() => setConfirmDelete(false)}
      />
    </section>
  );
}

const Row = memo(function Row({ c, checked, toggle }: { c: Capsule; checked: boolean; toggle: (id: string) => void }) {
  return (
    <tr data-id={c.id}>
      <td>
        <input type="checkbox" aria-label={`Select ${c.id}`} checked={checked} onChange={() => toggle(c.id)} />
      </td>
      <td>
        <Link to={`/capsules/${c.id}`}>{c.id}</Link>
      </td>
      <td>
        <span className={`state s-${c.status}`}>{c.status}</span>
      </td>
      <td>{c.template_id}</td>
      <td>
        {c.vcpus} vCPU · {c.memory_mb} MiB · {bytes(c.disk_size_mb * 1024 * 1024)}
      </td>
      <td>{ago(c.created_at)}</td>
      <td>{until(c.expires_at)}</td>
    </tr>
  );
});

function CreateDialog({ open, onClose }: { open: boolean; onClose: () => void }) {
  const nav = useNavigate();
  const [templates, setTemplates] = useState<Schemas['Template'][] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const [f, setF] = useState({ template: '', vcpus: 1, memory_mb: 512, disk_size_mb: 2048, timeout_sec: 300, allow_internet: true, public: false, metadata: '' });

  usePoll(
    async () => {
      if (!open || templates) return;
      try {
        const t = await api<Schemas['TemplateList']>('GET', '/v1/templates');
        setTemplates(t.templates);
        setF((f) => ({ ...f, template: f.template || t.templates.find((x) => x.name === 'minimal')?.name || t.templates[0]?.name || '' }));
      } catch (e) {
        setError(e);
      }
    },
    60000,
    [open],
  );

  async function submit(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      // allow_internet is sent only when it differs from its default (true):
      // servers that predate the field refuse it as unknown.
      const { allow_internet, metadata, ...rest } = f;
      const md = Object.fromEntries(parseMeta(metadata));
      const c = await api<Capsule>('POST', '/v1/capsules', { ...rest, ...(allow_internet ? {} : { allow_internet }), ...(Object.keys(md).length ? { metadata: md } : {}) });
      if (c.access_token) accessTokens.set(c.id, c.access_token);
      onClose();
      nav(`/capsules/${c.id}`);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }
  const num = (k: keyof typeof f) => (e: React.ChangeEvent<HTMLInputElement>) => setF({ ...f, [k]: Number(e.target.value) });

  return (
    <Dialog title="New capsule" open={open} onClose={onClose}>
      <form onSubmit={submit} className="grid">
        <label>
          Template
          {templates === null ? (
            <Loading what="templates" />
          ) : (
            <select name="template" value={f.template} onChange={(e) => setF({ ...f, template: e.target.value })} required>
              {templates.map((t) => (
                <option key={t.id} value={t.name}>
                  {t.name}
                </option>
              ))}
            </select>
          )}
        </label>
        <label>
          vCPUs <input name="vcpus" type="number" min={1} max={64} value={f.vcpus} onChange={num('vcpus')} />
        </label>
        <label>
          Memory (MiB) <input name="memory_mb" type="number" min={64} step={64} value={f.memory_mb} onChange={num('memory_mb')} />
        </label>
        <label>
          Disk (MiB) <input name="disk_size_mb" type="number" min={256} step={256} value={f.disk_size_mb} onChange={num('disk_size_mb')} />
        </label>
        <label>
          Timeout (s) <input name="timeout_sec" type="number" min={0} value={f.timeout_sec} onChange={num('timeout_sec')} />
        </label>
        <label className="check">
          <input name="allow_internet" type="checkbox" checked={f.allow_internet} onChange={(e) => setF({ ...f, allow_internet: e.target.checked })} /> Internet access
        </label>
        <label className="check">
          <input name="public" type="checkbox" checked={f.public} onChange={(e) => setF({ ...f, public: e.target.checked })} /> Public ports (no access token through the proxy)
        </label>
        <label>
          Metadata (key=value, one per line)
          <textarea name="metadata" rows={2} value={f.metadata} onChange={(e) => setF({ ...f, metadata: e.target.value })} />
        </label>
        <ErrorBox error={error} />
        <div className="actions">
          <button type="button" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" className="primary" disabled={busy || !f.template}>
            {busy ? 'Creating…' : 'Create'}
          </button>
        </div>
      </form>
    </Dialog>
  );
}

/** key=value pairs, one per line or comma-separated; blank parts ignored. */
export function parseMeta(s: string): [string, string][] {
  return s
    .split(/[\n,]/)
    .map((p) => p.trim())
    .filter((p) => p.includes('='))
    .map((p) => {
      const i = p.indexOf('=');
      return [p.slice(0, i).trim(), p.slice(i + 1).trim()] as [string, string];
    })
    .filter(([k]) => k !== '');
}

/** The metadata filter: applied when the field is left or Enter pressed. */
function MetaFilter({ value, onChange }: { value: string; onChange: (v: string) => void }) {
  const [v, setV] = useState(value);
  return (
    <label>
      Metadata{' '}
      <input name="metadata-filter" placeholder="key=value, …" value={v} onChange={(e) => setV(e.target.value)} onBlur={() => onChange(v)} onKeyDown={(e) => e.key === 'Enter' && onChange(v)} />
    </label>
  );
}
