import { useState } from 'react';
import { api, type Schemas } from '../api/client';
import { usePoll } from '../lib/poll';
import { ago, bytes } from '../lib/format';
import { ErrorBox, Loading } from '../components/ui';

export function Templates() {
  const [list, setList] = useState<Schemas['Template'][] | null>(null);
  const [error, setError] = useState<unknown>(null);
  usePoll(
    async () => {
      try {
        setList((await api<Schemas['TemplateList']>('GET', '/v1/templates')).templates);
        setError(null);
      } catch (e) {
        setError(e);
      }
    },
    10000,
    [],
  );
  return (
    <section>
      <h1>Templates</h1>
      <ErrorBox error={error} />
      {list === null && !error && <Loading what="templates" />}
      {list?.length === 0 && <p className="empty">No templates yet.</p>}
      {list && list.length > 0 && (
        <table className="list">
          <thead><tr><th>Name</th><th>ID</th><th>Size</th><th>Public</th><th>Created</th></tr></thead>
          <tbody>
            {list.map((t) => (
              <tr key={t.id}><td>{t.name}</td><td><code>{t.id}</code></td><td>{bytes(t.size_bytes)}</td><td>{t.public ? 'yes' : 'no'}</td><td>{ago(t.created_at)}</td></tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
