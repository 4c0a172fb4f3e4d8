import { useCallback, useEffect, useState, type FormEvent } from 'react';
import { api, type Schemas } from '../api/client';
import { ago } from '../lib/format';
import { Confirm, ErrorBox, Loading } from '../components/ui';

export function Keys() {
  const [list, setList] = useState<Schemas['APIKey'][] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [created, setCreated] = useState<Schemas['APIKey'] | null>(null);
  const [copied, setCopied] = useState(false);
  const [revoke, setRevoke] = useState<Schemas['APIKey'] | null>(null);
  const load = useCallback(async () => {
    try {
      setList((await api<Schemas['APIKeyList']>('GET', '/v1/api-keys')).api_keys);
      setError(null);
    } catch (e) {
      setError(e);
    }
  }, []);
  useEffect(() => {
    load();
  }, [load]);
  async function create(e: FormEvent<HTMLFormElement>) {
    e.preventDefault();
    const name = new FormData(e.currentTarget).get('name') as string;
    try {
      setCreated(await api<Schemas['APIKey']>('POST', '/v1/api-keys', { name }));
      setCopied(false);
      (e.target as HTMLFormElement).reset();
      load();
    } catch (err) {
      setError(err);
    }
  }
  async function del(k: Schemas['APIKey']) {
    setRevoke(null);
    try {
      await api('DELETE', `/v1/api-keys/${encodeURIComponent(k.id)}`);
      load();
    } catch (err) {
      setError(err);
    }
  }
  return (
    <section>
      <h1>API keys</h1>
      <form className="bar small" onSubmit={create}>
        <label>Name <input name="name" required /></label>
        <button type="submit" className="primary">Create key</button>
      </form>
      {created?.key && (
        <div className="notice" role="status">
          New key <strong>{created.name}</strong> (shown only this once): <code data-testid="new-key">{created.key}</code>{' '}
          <button onClick={() => navigator.clipboard.writeText(created.key!).then(() => setCopied(true), () => setCopied(false))}>{copied ? 'Copied' : 'Copy'}</button>{' '}
          <button onClick={() => setCreated(null)}>Done</button>
        </div>
      )}
      <ErrorBox error={error} retry={load} />
      {list === null && !error && <Loading what="API keys" />}
      {list?.length === 0 && <p className="empty">No API keys.</p>}
      {list && list.length > 0 && (
        <table className="list">
          <thead><tr><th>Name</th><th>Prefix</th><th>Created</th><th>Last used</th><th><span className="sr">Actions</span></th></tr></thead>
          <tbody>
            {list.map((k) => (
              <tr key={k.id}><td>{k.name}</td><td><code>{k.prefix}…</code></td><td>{ago(k.created_at)}</td><td>{k.last_used_at ? ago(k.last_used_at) : 'never'}</td>
                <td><button className="danger" onClick={() => setRevoke(k)}>Revoke</button></td></tr>
            ))}
          </tbody>
        </table>
      )}
      <Confirm open={!!revoke} title="Revoke key" body={`Revoke ${revoke?.name}? Programs using it stop working at once.`} action="Revoke" onCancel={() => setRevoke(null)} onConfirm={() => revoke && del(revoke)} />
    </section>
  );
}
