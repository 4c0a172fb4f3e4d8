import { useCallback, useEffect, useRef, useState, type FormEvent } from 'react';
import { api, type Schemas } from '../api/client';
import { ErrorBox, Loading } from '../components/ui';

type Filters = { actor_id: string; resource_type: string; action: string; from: string; to: string; team_id: string };
const NONE: Filters = { actor_id: '', resource_type: '', action: '', from: '', to: '', team_id: '' };

// An audit log, newest first, one cursor page after another as the user
// scrolls to the end (an IntersectionObserver on a sentinel row), filtered
// by actor, resource type, action and date range (server side).
export function Audit() {
  return <AuditLog path="/v1/audit-logs" title="Audit log" />;
}

export function AuditLog({ path, title, admin = false }: { path: string; title: string; admin?: boolean }) {
  const [filters, setFilters] = useState<Filters>(NONE);
  const [entries, setEntries] = useState<Schemas['AuditEntry'][]>([]);
  const [cursor, setCursor] = useState<string | null>('');
  const [loading, setLoading] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const sentinel = useRef<HTMLDivElement>(null);
  const busy = useRef(false);
  const gen = useRef(0);

  const more = useCallback(async () => {
    if (busy.current || cursor === null) return;
    busy.current = true;
    const g = gen.current;
    setLoading(true);
    try {
      const q = new URLSearchParams({ limit: '50' });
      if (cursor) q.set('cursor', cursor);
      for (const [k, v] of Object.entries(filters)) {
        if (!v) continue;
        // Dates from the pickers are whole days (UTC): from its start, to its end.
        if (k === 'from') q.set(k, `${v}T00:00:00Z`);
        else if (k === 'to') q.set(k, `${v}T23:59:59.999Z`);
        else q.set(k, v);
      }
      const p = await api<Schemas['AuditPage']>('GET', `${path}?${q}`);
      if (g !== gen.current) return; // the filters changed meanwhile
      setEntries((e) => [...e, ...p.entries]);
      setCursor(p.next_cursor || null);
      setError(null);
    } catch (e) {
      setError(e);
    } finally {
      busy.current = false;
      setLoading(false);
    }
  }, [cursor, filters, path]);

  useEffect(() => {
    const el = sentinel.current;
    if (!el) return;
    const io = new IntersectionObserver((es) => es.some((e) => e.isIntersecting) && more());
    io.observe(el);
    return () => io.disconnect();
  }, [more]);

  function apply(e: FormEvent<HTMLFormElement>) {
    e.preventDefault();
    const fd = new FormData(e.currentTarget);
    const f = { ...NONE };
    for (const k of Object.keys(NONE) as (keyof Filters)[]) f[k] = String(fd.get(k) ?? '').trim();
    gen.current++;
    busy.current = false;
    setEntries([]);
    setCursor('');
    setFilters(f);
  }

  return (
    <section>
      {admin ? <h2>{title}</h2> : <h1>{title}</h1>}
      <form className="filters" onSubmit={apply} aria-label="Audit filters">
        <label>Actor ID <input name="actor_id" className="mid" /></label>
        <label>
          Resource{' '}
          <select name="resource_type" defaultValue="">
            <option value="">any</option>
            {['capsule', 'api_key', 'team', 'member', 'invite', 'template', 'build', 'host', 'user'].map((r) => <option key={r}>{r}</option>)}
          </select>
        </label>
        <label>Action <input name="action" className="short" placeholder="create" /></label>
        <label>From <input name="from" type="date" /></label>
        <label>To <input name="to" type="date" /></label>
        {admin && <label>Team ID <input name="team_id" className="mid" /></label>}
        <button type="submit">Filter</button>
      </form>
      {entries.length === 0 && cursor === null && !error && <p className="empty">Nothing recorded{Object.values(filters).some(Boolean) ? ' that matches these filters' : ' yet'}.</p>}
      {entries.length > 0 && (
        <table className="list">
          <thead><tr><th>When</th><th>Actor</th><th>Action</th><th>Resource</th><th>Status</th>{admin && <th>Scope</th>}</tr></thead>
          <tbody>
            {entries.map((e) => (
              <tr key={e.id}>
                <td>{new Date(e.created_at).toLocaleString()}</td>
                <td title={e.actor_id}>{e.actor_name || e.actor_id}</td>
                <td>{e.action}</td>
                <td>{e.resource_type} {e.resource_id}</td>
                <td>{e.status}</td>
                {admin && <td>{e.scope}</td>}
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <ErrorBox error={error} retry={more} />
      {loading && <Loading what="entries" />}
      <div ref={sentinel} className="sentinel" />
    </section>
  );
}
