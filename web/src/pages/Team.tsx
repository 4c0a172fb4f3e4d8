import { useCallback, useEffect, useState } from 'react';
import { api, type Schemas } from '../api/client';
import { useSession } from '../session';
import { ago } from '../lib/format';
import { ErrorBox, Loading } from '../components/ui';

export function Team() {
  const { me } = useSession();
  const [members, setMembers] = useState<Schemas['Member'][] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const load = useCallback(async () => {
    if (!me?.team_id) return;
    try {
      setMembers((await api<Schemas['MemberList']>('GET', `/v1/teams/${encodeURIComponent(me.team_id)}/members`)).members);
      setError(null);
    } catch (e) {
      setError(e);
    }
  }, [me?.team_id]);
  useEffect(() => {
    load();
  }, [load]);
  return (
    <section>
      <h1>Team {me?.team?.name}</h1>
      <p className="hint">Your role: {me?.role || 'none'}.</p>
      <ErrorBox error={error} retry={load} />
      {members === null && !error && <Loading what="members" />}
      {members?.length === 0 && <p className="empty">No members.</p>}
      {members && members.length > 0 && (
        <table className="list">
          <thead><tr><th>Name</th><th>Email</th><th>Role</th><th>Joined</th></tr></thead>
          <tbody>
            {members.map((m) => (
              <tr key={m.user_id}><td>{m.name}</td><td>{m.email}</td><td>{m.role}</td><td>{ago(m.created_at)}</td></tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
