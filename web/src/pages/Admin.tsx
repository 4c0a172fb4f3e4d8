import { useCallback, useEffect, useState } from 'react';
import { NavLink, Route, Routes } from 'react-router';
import { api, ApiError, type Schemas } from '../api/client';
import { useSession } from '../session';
import { ago } from '../lib/format';
import { Confirm, ErrorBox, Loading } from '../components/ui';

// Platform-admin pages. The navigation hides them from others, and the API
// refuses them (403) whatever the UI shows.
export function Admin() {
  const { me } = useSession();
  if (!me?.is_admin) return <p className="error" role="alert">Only platform admins can see this page.</p>;
  return (
    <section>
      <h1>Admin</h1>
      <nav className="tabs" aria-label="Admin">
        <NavLink to="/admin/users">Users</NavLink>
        <NavLink to="/admin/teams">Teams</NavLink>
        <NavLink to="/admin/hosts">Hosts</NavLink>
      </nav>
      <Routes>
        <Route index element={<Users />} />
        <Route path="users" element={<Users />} />
        <Route path="teams" element={<Teams />} />
        <Route path="hosts" element={<Hosts />} />
      </Routes>
    </section>
  );
}

function useList<T>(path: string, pick: (j: never) => T[]) {
  const [list, setList] = useState<T[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const load = useCallback(async () => {
    try {
      setList(pick((await api<never>('GET', path)) as never));
      setError(null);
    } catch (e) {
      setError(e);
    }
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [path]);
  useEffect(() => {
    load();
  }, [load]);
  return { list, error, load };
}

function Users() {
  const { me } = useSession();
  const { list, error, load } = useList<Schemas['AdminUser']>('/v1/admin/users?limit=1000', (j: Schemas['AdminUserList']) => j.users);
  const [change, setChange] = useState<{ u: Schemas['AdminUser']; what: 'admin' | 'active'; to: boolean } | null>(null);
  const [actionError, setActionError] = useState<unknown>(null);

  async function apply() {
    if (!change) return;
    const { u, what, to } = change;
    setChange(null);
    setActionError(null);
    try {
      await api('PUT', `/v1/admin/users/${encodeURIComponent(u.id)}/${what}`, what === 'admin' ? { admin: to } : { active: to });
      load();
    } catch (e) {
      if (e instanceof ApiError && e.status === 409) {
        setActionError(new Error(`Refused: ${e.message}. There must always be at least one active platform admin.`));
      } else setActionError(e);
    }
  }

  const self = change && change.u.id === me?.user_id;
  return (
    <div>
      <ErrorBox error={actionError} />
      <ErrorBox error={error} retry={load} />
      {list === null && !error && <Loading what="users" />}
      {list?.length === 0 && <p className="empty">No users.</p>}
      {list && list.length > 0 && (
        <table className="list">
          <thead><tr><th>Name</th><th>Email</th><th>Status</th><th>Admin</th><th>Created</th><th><span className="sr">Actions</span></th></tr></thead>
          <tbody>
            {list.map((u) => (
              <tr key={u.id} data-email={u.email}>
                <td>{u.name}{u.id === me?.user_id ? ' (you)' : ''}</td><td>{u.email}</td><td>{u.status}</td><td>{u.is_admin ? 'yes' : 'no'}</td><td>{ago(u.created_at)}</td>
                <td>
                  <button onClick={() => setChange({ u, what: 'admin', to: !u.is_admin })}>{u.is_admin ? 'Revoke admin' : 'Grant admin'}</button>{' '}
                  <button className={u.status === 'active' ? 'danger' : ''} onClick={() => setChange({ u, what: 'active', to: u.status !== 'active' })}>
                    {u.status === 'active' ? 'Deactivate' : 'Activate'}
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <Confirm
        open={!!change}
        title={change?.what === 'admin' ? (change.to ? 'Grant platform admin' : 'Revoke platform admin') : change?.to ? 'Activate user' : 'Deactivate user'}
        body={
          change?.what === 'admin' && !change.to && self
            ? 'Warning: you are removing your own platform admin rights. You will lose access to these pages at once, and only another admin can give them back.'
            : `${change?.what === 'admin' ? (change?.to ? 'Make' : 'Stop') : change?.to ? 'Let' : 'Stop'} ${change?.u.email} ${change?.what === 'admin' ? (change?.to ? 'a platform admin' : 'being a platform admin') : change?.to ? 'sign in again' : 'from signing in'}?`
        }
        action="Confirm"
        onCancel={() => setChange(null)}
        onConfirm={apply}
      />
    </div>
  );
}

function Teams() {
  const { list, error, load } = useList<Schemas['AdminTeam']>('/v1/admin/teams', (j: Schemas['AdminTeamList']) => j.teams);
  return (
    <div>
      <ErrorBox error={error} retry={load} />
      {list === null && !error && <Loading what="teams" />}
      {list?.length === 0 && <p className="empty">No teams.</p>}
      {list && list.length > 0 && (
        <table className="list">
          <thead><tr><th>Name</th><th>ID</th><th>BYOC</th><th>Created</th></tr></thead>
          <tbody>{list.map((t) => <tr key={t.id}><td>{t.name}</td><td><code>{t.id}</code></td><td>{t.is_byoc ? 'yes' : 'no'}</td><td>{ago(t.created_at)}</td></tr>)}</tbody>
        </table>
      )}
    </div>
  );
}

function Hosts() {
  const { list, error, load } = useList<Schemas['Host']>('/v1/admin/hosts', (j: Schemas['HostList']) => j.hosts);
  return (
    <div>
      <ErrorBox error={error} retry={load} />
      {list === null && !error && <Loading what="hosts" />}
      {list?.length === 0 && <p className="empty">No hosts registered.</p>}
      {list && list.length > 0 && (
        <table className="list">
          <thead><tr><th>ID</th><th>Address</th><th>State</th><th>vCPU</th><th>Memory MiB</th><th>Disk MiB</th><th>Last heartbeat</th></tr></thead>
          <tbody>
            {list.map((h) => (
              <tr key={h.id}><td><code>{h.id}</code></td><td>{h.address}</td><td>{h.status}</td><td>{h.used_vcpus}/{h.vcpus}</td><td>{h.used_memory_mb}/{h.memory_mb}</td><td>{h.used_disk_mb}/{h.disk_mb}</td><td>{ago(h.last_heartbeat_at)}</td></tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}
