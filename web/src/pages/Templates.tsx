import { useState } from 'react';
import { Link } from 'react-router';
import { api, ApiError, type Schemas } from '../api/client';
import { useSession } from '../session';
import { usePoll } from '../lib/poll';
import { ago, bytes } from '../lib/format';
import { Confirm, ErrorBox, Loading } from '../components/ui';

export function Templates() {
  const [list, setList] = useState<Schemas['Template'][] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const { me } = useSession();
  const [del, setDel] = useState<Schemas['Template'] | null>(null);
  const [actionError, setActionError] = useState<unknown>(null);
  const [tick, setTick] = useState(0);

  // DELETE /v1/templates/{id} (issue 16); a server without it answers 405,
  // and then a platform admin deletes through the admin route.
  async function remove(t: Schemas['Template']) {
    setDel(null);
    setActionError(null);
    try {
      try {
        await api('DELETE', `/v1/templates/${encodeURIComponent(t.id)}`);
      } catch (e) {
        if (!(e instanceof ApiError && e.status === 405)) throw e;
        if (!me?.is_admin) throw new Error('This server cannot delete team templates yet (only platform admins can, from Admin → Templates).');
        await api('DELETE', `/v1/admin/templates/${encodeURIComponent(t.id)}`);
      }
      setTick((n) => n + 1);
    } catch (e) {
      setActionError(e);
    }
  }
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
    [tick],
  );
  return (
    <section>
      <div className="bar">
        <h1>Templates</h1>
        <Link to="/templates/builds">Build a template</Link>
      </div>
      <ErrorBox error={error} />
      <ErrorBox error={actionError} />
      {list === null && !error && <Loading what="templates" />}
      {list?.length === 0 && <p className="empty">No templates yet.</p>}
      {list && list.length > 0 && (
        <table className="list">
          <thead><tr><th>Name</th><th>ID</th><th>Size</th><th>Public</th><th>Created</th><th><span className="sr">Actions</span></th></tr></thead>
          <tbody>
            {list.map((t) => (
              <tr key={t.id}><td>{t.name}</td><td><code>{t.id}</code></td><td>{bytes(t.size_bytes)}</td><td>{t.public ? 'yes' : 'no'}</td><td>{ago(t.created_at)}</td>
                <td><button className="danger" aria-label={`Delete template ${t.name}`} onClick={() => setDel(t)}>Delete</button></td></tr>
            ))}
          </tbody>
        </table>
      )}
      <Confirm open={!!del} title="Delete template" body={`Delete template ${del?.name}? Refused while capsules use it.`} action="Delete" onCancel={() => setDel(null)} onConfirm={() => del && remove(del)} />
    </section>
  );
}
