import { useCallback, useEffect, useState } from 'react';
import { NavLink, Route, Routes } from 'react-router';
import { api, ApiError, type Schemas } from '../api/client';
import { useSession } from '../session';
import { ago, bytes } from '../lib/format';
import { Confirm, ErrorBox, Loading } from '../components/ui';
import { AuditLog } from './Audit';
import { Link } from 'react-router';

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
        <NavLink to="/admin/templates">Templates</NavLink>
        <NavLink to="/admin/builds">Builds</NavLink>
        <NavLink to="/admin/capsules">Capsules</NavLink>
        <NavLink to="/admin/audit">Audit log</NavLink>
      </nav>
      <Routes>
        <Route index element={<Users />} />
        <Route path="users" element={<Users />} />
        <Route path="teams" element={<Teams />} />
        <Route path="hosts" element={<Hosts />} />
        <Route path="templates" element={<AdminTemplates />} />
        <Route path="builds" element={<AdminBuilds />} />
        <Route path="capsules" element={<AdminCapsules />} />
        <Route path="audit" element={<AuditLog path="/v1/admin/audit-logs" title="Admin audit log (every team)" admin />} />
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

/** A confirmed admin action and its error, shared by the lists below. */
function useAdminAction(reload: () => void) {
  const [pending, setPending] = useState<null | { title: string; body: string; action: string; run: () => Promise<unknown> }>(null);
  const [error, setError] = useState<unknown>(null);
  const dialog = (
    <Confirm
      open={!!pending}
      title={pending?.title ?? ''}
      body={pending?.body ?? ''}
      action={pending?.action ?? ''}
      onCancel={() => setPending(null)}
      onConfirm={async () => {
        const p = pending;
        setPending(null);
        setError(null);
        try {
          await p?.run();
        } catch (e) {
          setError(e);
        }
        reload();
      }}
    />
  );
  return { confirm: setPending, error, setError, dialog };
}

function Teams() {
  const { list, error, load } = useList<Schemas['AdminTeam']>('/v1/admin/teams', (j: Schemas['AdminTeamList']) => j.teams);
  const a = useAdminAction(load);
  return (
    <div>
      <ErrorBox error={a.error} />
      <ErrorBox error={error} retry={load} />
      {list === null && !error && <Loading what="teams" />}
      {list?.length === 0 && <p className="empty">No teams.</p>}
      {list && list.length > 0 && (
        <table className="list">
          <thead><tr><th>Name</th><th>ID</th><th>BYOC</th><th>Created</th><th><span className="sr">Actions</span></th></tr></thead>
          <tbody>
            {list.map((t) => (
              <tr key={t.id} data-team={t.name}>
                <td>{t.name}{t.is_platform ? ' (platform)' : ''}</td><td><code>{t.id}</code></td><td>{t.is_byoc ? 'yes' : 'no'}</td><td>{ago(t.created_at)}</td>
                <td>
                  <button onClick={() => a.confirm({
                    title: t.is_byoc ? 'Turn BYOC off' : 'Turn BYOC on',
                    body: t.is_byoc ? `Stop ${t.name} from registering its own hosts?` : `Let ${t.name} register its own hosts (bring your own compute)?`,
                    action: 'Confirm',
                    run: () => api('PUT', `/v1/admin/teams/${encodeURIComponent(t.id)}/byoc`, { byoc: !t.is_byoc }),
                  })}>{t.is_byoc ? 'Disable BYOC' : 'Enable BYOC'}</button>{' '}
                  {!t.is_platform && (
                    <button className="danger" onClick={() => a.confirm({
                      title: 'Delete team',
                      body: `Delete ${t.name} with all its capsules (destroyed), keys, members, invites, templates and builds? This cannot be undone.`,
                      action: 'Delete team',
                      run: () => api('DELETE', `/v1/admin/teams/${encodeURIComponent(t.id)}`),
                    })}>Delete</button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {a.dialog}
    </div>
  );
}

function Hosts() {
  const { list, error, load } = useList<Schemas['Host']>('/v1/admin/hosts', (j: Schemas['HostList']) => j.hosts);
  const a = useAdminAction(load);
  const [token, setToken] = useState<Schemas['HostToken'] | null>(null);
  const [teamID, setTeamID] = useState('');
  async function newToken(e: React.FormEvent) {
    e.preventDefault();
    a.setError(null);
    try {
      setToken(await api<Schemas['HostToken']>('POST', '/v1/admin/hosts/tokens', teamID.trim() ? { team_id: teamID.trim() } : {}));
    } catch (err) {
      a.setError(err);
    }
  }
  return (
    <div>
      <form className="actions" onSubmit={newToken}>
        <label>Team ID for a BYOC host (empty: a shared host) <input name="host-team" className="mid" value={teamID} onChange={(e) => setTeamID(e.target.value)} /></label>
        <button type="submit">New registration token</button>
      </form>
      {token && (
        <div className="notice" role="status">
          Registration token (shown once, one use, expires {new Date(token.expires_at).toLocaleString()}{token.team_id ? `, for team ${token.team_id}` : ', shared host'}):{' '}
          <code data-testid="host-token">{token.token}</code> <button onClick={() => navigator.clipboard?.writeText(token.token)}>Copy</button>
          <br />Start the agent with <code>wrenn agent --register-token …</code> (docs/OPERATIONS.md).
        </div>
      )}
      <ErrorBox error={a.error} />
      <ErrorBox error={error} retry={load} />
      {list === null && !error && <Loading what="hosts" />}
      {list?.length === 0 && <p className="empty">No hosts registered.</p>}
      {list && list.length > 0 && (
        <table className="list">
          <thead><tr><th>ID</th><th>Address</th><th>Team</th><th>State</th><th>vCPU</th><th>Memory MiB</th><th>Disk MiB</th><th>Isolation</th><th>Last heartbeat</th><th><span className="sr">Actions</span></th></tr></thead>
          <tbody>
            {list.map((h) => (
              <tr key={h.id}>
                <td><code>{h.id}</code></td><td>{h.address}</td><td>{h.team_id || 'shared'}</td><td>{h.status}</td><td>{h.used_vcpus}/{h.vcpus}</td><td>{h.used_memory_mb}/{h.memory_mb}</td><td>{h.used_disk_mb}/{h.disk_mb}</td>
                <td>{h.capabilities?.isolations?.join(', ')}</td><td>{ago(h.last_heartbeat_at)}</td>
                <td>
                  <button className="danger" onClick={() => a.confirm({
                    title: 'Forget host', body: `Forget ${h.id} (${h.address})? Its capsules are no longer reachable through Wrenn; the agent must register again.`, action: 'Forget',
                    run: () => api('DELETE', `/v1/admin/hosts/${encodeURIComponent(h.id)}`),
                  })}>Forget</button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {a.dialog}
    </div>
  );
}

function AdminTemplates() {
  const { list, error, load } = useList<Schemas['AdminTemplate']>('/v1/admin/templates', (j: Schemas['AdminTemplateList']) => j.templates);
  const a = useAdminAction(load);
  return (
    <div>
      <ErrorBox error={a.error} />
      <ErrorBox error={error} retry={load} />
      {list === null && !error && <Loading what="templates" />}
      {list?.length === 0 && <p className="empty">No templates.</p>}
      {list && list.length > 0 && (
        <table className="list">
          <thead><tr><th>Name</th><th>ID</th><th>Team</th><th>Size</th><th>Public</th><th>Created</th><th><span className="sr">Actions</span></th></tr></thead>
          <tbody>
            {list.map((t) => (
              <tr key={t.id} data-template={t.name}>
                <td>{t.name}</td><td><code>{t.id}</code></td><td><code>{t.team_id}</code></td><td>{bytes(t.size_bytes)}</td><td>{t.public ? 'yes' : 'no'}</td><td>{ago(t.created_at)}</td>
                <td>
                  <button className="danger" onClick={() => a.confirm({
                    title: 'Delete template', body: `Delete template ${t.name} of team ${t.team_id}? Refused while capsules use it.`, action: 'Delete',
                    run: () => api('DELETE', `/v1/admin/templates/${encodeURIComponent(t.id)}`),
                  })}>Delete</button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {a.dialog}
    </div>
  );
}

function AdminBuilds() {
  const { list, error, load } = useList<Schemas['Build']>('/v1/admin/builds', (j: Schemas['BuildList']) => j.builds);
  const a = useAdminAction(load);
  return (
    <div>
      <p className="hint">Every team's builds. Start one on the <Link to="/templates/builds">Builds</Link> page.</p>
      <ErrorBox error={a.error} />
      <ErrorBox error={error} retry={load} />
      {list === null && !error && <Loading what="builds" />}
      {list?.length === 0 && <p className="empty">No builds.</p>}
      {list && list.length > 0 && (
        <table className="list">
          <thead><tr><th>Build</th><th>Team</th><th>Template</th><th>Status</th><th>Progress or error</th><th>Created</th><th><span className="sr">Actions</span></th></tr></thead>
          <tbody>
            {list.map((b) => (
              <tr key={b.id}>
                <td><Link to={`/templates/builds/${b.id}`}>{b.id}</Link></td><td><code>{b.team_id}</code></td><td>{b.template_name}</td><td>{b.status}</td><td>{b.error}</td><td>{ago(b.created_at)}</td>
                <td>
                  {(b.status === 'pending' || b.status === 'running') && (
                    <button className="danger" onClick={() => a.confirm({
                      title: 'Cancel build', body: `Cancel ${b.id}? Its running step is killed.`, action: 'Cancel build',
                      run: () => api('POST', `/v1/admin/builds/${encodeURIComponent(b.id)}/cancel`, {}),
                    })}>Cancel</button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {a.dialog}
    </div>
  );
}

function AdminCapsules() {
  const [state, setState] = useState('');
  const { list, error, load } = useList<Schemas['AdminCapsule']>(`/v1/admin/capsules?limit=1000${state ? `&status=${state}` : ''}`, (j: Schemas['AdminCapsuleList']) => j.capsules);
  const a = useAdminAction(load);
  const path = (c: Schemas['AdminCapsule'], rest = '') => `/v1/admin/capsules/${encodeURIComponent(c.id)}${rest}`;
  return (
    <div>
      <div className="filters">
        <label>
          State{' '}
          <select value={state} onChange={(e) => setState(e.target.value)}>
            <option value="">any</option>
            {['pending', 'starting', 'running', 'paused', 'hibernated', 'stopped', 'error', 'missing'].map((s) => <option key={s}>{s}</option>)}
          </select>
        </label>
        <button onClick={load}>Refresh</button>
      </div>
      <ErrorBox error={a.error} />
      <ErrorBox error={error} retry={load} />
      {list === null && !error && <Loading what="capsules" />}
      {list?.length === 0 && <p className="empty">No capsules.</p>}
      {list && list.length > 0 && (
        <table className="list">
          <thead><tr><th>ID</th><th>Team</th><th>State</th><th>Template</th><th>Host</th><th>Age</th><th><span className="sr">Actions</span></th></tr></thead>
          <tbody>
            {list.map((c) => (
              <tr key={c.id} data-admin-capsule={c.id}>
                <td><code>{c.id}</code></td><td><code>{c.team_id}</code></td><td><span className={`state s-${c.status}`}>{c.status}</span></td><td>{c.template_id}</td><td><code>{c.host_id}</code></td><td>{ago(c.created_at)}</td>
                <td>
                  {c.status === 'running' && <button onClick={() => a.confirm({ title: 'Pause capsule', body: `Pause ${c.id} of team ${c.team_id}?`, action: 'Pause', run: () => api('POST', path(c, '/pause'), {}) })}>Pause</button>}{' '}
                  {(c.status === 'paused' || c.status === 'hibernated') && <button onClick={() => a.confirm({ title: 'Resume capsule', body: `Resume ${c.id} of team ${c.team_id}?`, action: 'Resume', run: () => api('POST', path(c, '/resume'), {}) })}>Resume</button>}{' '}
                  <button className="danger" onClick={() => a.confirm({ title: 'Destroy capsule', body: `Destroy ${c.id} of team ${c.team_id}? Its files and memory are gone for good.`, action: 'Destroy', run: () => api('DELETE', path(c)) })}>Destroy</button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {a.dialog}
    </div>
  );
}
