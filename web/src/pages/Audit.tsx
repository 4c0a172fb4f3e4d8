import { useCallback, useEffect, useRef, useState } from 'react';
import { api, type Schemas } from '../api/client';
import { ErrorBox, Loading } from '../components/ui';

// The team's audit log, newest first, one cursor page after another as the
// user scrolls to the end (an IntersectionObserver on a sentinel row).
export function Audit() {
  const [entries, setEntries] = useState<Schemas['AuditEntry'][]>([]);
  const [cursor, setCursor] = useState<string | null>('');
  const [loading, setLoading] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const sentinel = useRef<HTMLDivElement>(null);
  const busy = useRef(false);

  const more = useCallback(async () => {
    if (busy.current || cursor === null) return;
    busy.current = true;
    setLoading(true);
    try {
      const q = new URLSearchParams({ limit: '50' });
      if (cursor) q.set('cursor', cursor);
      const p = await api<Schemas['AuditPage']>('GET', `/v1/audit-logs?${q}`);
      setEntries((e) => [...e, ...p.entries]);
      setCursor(p.next_cursor || null);
      setError(null);
    } catch (e) {
      setError(e);
    } finally {
      busy.current = false;
      setLoading(false);
    }
  }, [cursor]);

  useEffect(() => {
    const el = sentinel.current;
    if (!el) return;
    const io = new IntersectionObserver((es) => es.some((e) => e.isIntersecting) && more());
    io.observe(el);
    return () => io.disconnect();
  }, [more]);

  return (
    <section>
      <h1>Audit log</h1>
      {entries.length === 0 && cursor === null && !error && <p className="empty">Nothing recorded yet.</p>}
      {entries.length > 0 && (
        <table className="list">
          <thead><tr><th>When</th><th>Actor</th><th>Action</th><th>Resource</th><th>Status</th></tr></thead>
          <tbody>
            {entries.map((e) => (
              <tr key={e.id}><td>{new Date(e.created_at).toLocaleString()}</td><td>{e.actor_name || e.actor_id}</td><td>{e.action}</td><td>{e.resource_type} {e.resource_id}</td><td>{e.status}</td></tr>
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
