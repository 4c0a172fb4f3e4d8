import { useCallback, useEffect, useState, type FormEvent } from 'react';
import { useNavigate } from 'react-router';
import { api, credential, type Schemas } from '../api/client';
import { useSession } from '../session';
import { ago } from '../lib/format';
import { Confirm, ErrorBox, Loading } from '../components/ui';

type Role = 'owner' | 'admin' | 'member';
const ROLES: Role[] = ['member', 'admin', 'owner'];

// The current team: members and their roles, invites, leaving; the caller's
// teams with switching (a session token carries the current team, so only
// a signed-in user, not an API key, can switch) and creating a team.
export function Team() {
  const { me, signIn, signOut } = useSession();
  const teamID = me?.team_id ?? '';
  const tpath = `/v1/teams/${encodeURIComponent(teamID)}`;
  const manager = me?.role === 'owner' || me?.role === 'admin';
  const isJWT = credential()?.kind === 'jwt';
  const [members, setMembers] = useState<Schemas['Member'][] | null>(null);
  const [invites, setInvites] = useState<Schemas['Invite'][] | null>(null);
  const [teams, setTeams] = useState<Schemas['Team'][] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [actionError, setActionError] = useState<unknown>(null);
  const [created, setCreated] = useState<Schemas['Invite'] | null>(null);
  const [confirm, setConfirm] = useState<null | { title: string; body: string; action: string; run: () => Promise<void> }>(null);
  const [notice, setNotice] = useState('');

  const load = useCallback(async () => {
    if (!teamID) return;
    try {
      setMembers((await api<Schemas['MemberList']>('GET', `${tpath}/members`)).members);
      setTeams((await api<Schemas['TeamList']>('GET', '/v1/teams')).teams);
      setInvites(manager ? (await api<Schemas['InviteList']>('GET', `${tpath}/invites`)).invites : []);
      setError(null);
    } catch (e) {
      setError(e);
    }
  }, [teamID, tpath, manager]);
  useEffect(() => {
    load();
  }, [load]);

  async function act(fn: () => Promise<unknown>) {
    setActionError(null);
    setNotice('');
    try {
      await fn();
      await load();
    } catch (e) {
      setActionError(e);
    }
  }

  async function invite(e: FormEvent<HTMLFormElement>) {
    e.preventDefault();
    const fd = new FormData(e.currentTarget);
    const form = e.currentTarget;
    await act(async () => {
      setCreated(await api<Schemas['Invite']>('POST', `${tpath}/invites`, { email: fd.get('email'), role: fd.get('role') }));
      form.reset();
    });
  }

  async function switchTo(t: Schemas['Team']) {
    await act(async () => {
      const s = await api<Schemas['Session']>('POST', `/v1/teams/${encodeURIComponent(t.id)}/switch`, {});
      await signIn({ kind: 'jwt', token: s.token, expiresAt: s.expires_at });
    });
  }

  async function createTeam(e: FormEvent<HTMLFormElement>) {
    e.preventDefault();
    const name = new FormData(e.currentTarget).get('team-name');
    const form = e.currentTarget;
    await act(async () => {
      await api('POST', '/v1/teams', { name });
      form.reset();
    });
  }

  const inviteLink = created?.token ? `${window.location.origin}/invite#token=${encodeURIComponent(created.token)}` : '';
  return (
    <section>
      <h1>Team {me?.team?.name}</h1>
      <p className="hint">Your role: {me?.role || 'none'}.</p>
      <ErrorBox error={error} retry={load} />
      <ErrorBox error={actionError} />
      {notice && <p className="notice" role="status">{notice}</p>}

      <h2>Members</h2>
      {members === null && !error && <Loading what="members" />}
      {members?.length === 0 && <p className="empty">No members.</p>}
      {members && members.length > 0 && (
        <table className="list">
          <thead><tr><th>Name</th><th>Email</th><th>Role</th><th>Joined</th><th><span className="sr">Actions</span></th></tr></thead>
          <tbody>
            {members.map((m) => {
              const self = m.user_id === me?.user_id;
              return (
                <tr key={m.user_id} data-member={m.email}>
                  <td>{m.name}{self ? ' (you)' : ''}</td>
                  <td>{m.email}</td>
                  <td>
                    {manager && !self ? (
                      <select aria-label={`Role of ${m.email}`} value={m.role} onChange={(e) => act(() => api('PATCH', `${tpath}/members/${encodeURIComponent(m.user_id)}`, { role: e.target.value }))}>
                        {ROLES.map((r) => <option key={r}>{r}</option>)}
                      </select>
                    ) : (
                      m.role
                    )}
                  </td>
                  <td>{ago(m.created_at)}</td>
                  <td>
                    {self ? (
                      <button className="danger" onClick={() => setConfirm({
                        title: 'Leave team', body: `Leave ${me?.team?.name ?? 'this team'}? You lose access to its capsules and keys; a team keeps at least one owner.`, action: 'Leave',
                        run: async () => {
                          await api('DELETE', `${tpath}/members/${encodeURIComponent(m.user_id)}`);
                          signOut('You left the team. Sign in again to continue in another team.');
                        },
                      })}>Leave team</button>
                    ) : manager ? (
                      <button className="danger" onClick={() => setConfirm({
                        title: 'Remove member', body: `Remove ${m.email} from the team?`, action: 'Remove',
                        run: () => act(() => api('DELETE', `${tpath}/members/${encodeURIComponent(m.user_id)}`)),
                      })}>Remove</button>
                    ) : null}
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}

      {manager && (
        <>
          <h2>Invites</h2>
          <form onSubmit={invite} className="actions">
            <label>Email <input name="email" type="email" required /></label>
            <label>Role <select name="role" defaultValue="member">{ROLES.map((r) => <option key={r}>{r}</option>)}</select></label>
            <button type="submit" className="primary">Invite</button>
          </form>
          {created && (
            <div className="notice" role="status">
              Invite for {created.email} created. Send them this link (shown once; it works for their account only):{' '}
              <code data-testid="invite-link">{inviteLink}</code>{' '}
              <button onClick={() => navigator.clipboard?.writeText(inviteLink)}>Copy</button>
            </div>
          )}
          {invites?.length === 0 && <p className="empty">No open invites.</p>}
          {invites && invites.length > 0 && (
            <table className="list">
              <thead><tr><th>Email</th><th>Role</th><th>Expires</th><th><span className="sr">Actions</span></th></tr></thead>
              <tbody>
                {invites.map((i) => (
                  <tr key={i.id} data-invite={i.email}>
                    <td>{i.email}</td><td>{i.role}</td><td>{new Date(i.expires_at).toLocaleString()}</td>
                    <td><button onClick={() => act(() => api('DELETE', `${tpath}/invites/${encodeURIComponent(i.id)}`))}>Withdraw</button></td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </>
      )}

      <h2>Your teams</h2>
      {!isJWT && <p className="hint">Signed in with an API key, which always acts for its own team: sign in with email or GitHub to switch teams.</p>}
      {teams && (
        <table className="list">
          <thead><tr><th>Team</th><th>Your role</th><th>BYOC</th><th><span className="sr">Actions</span></th></tr></thead>
          <tbody>
            {teams.map((t) => (
              <tr key={t.id} data-team={t.name}>
                <td>{t.name}</td><td>{t.role}</td><td>{t.is_byoc ? 'yes' : 'no'}</td>
                <td>{t.id === teamID ? 'current' : isJWT && <button onClick={() => switchTo(t)}>Switch to {t.name}</button>}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {me?.user_id && (
        <form onSubmit={createTeam} className="actions">
          <label>New team <input name="team-name" required maxLength={100} /></label>
          <button type="submit">Create team</button>
        </form>
      )}
      {isJWT && (
        <p>
          <button className="link" onClick={() => act(async () => {
            const r = await api<Schemas['EmailVerification']>('POST', '/v1/auth/verify/resend', {});
            setNotice(r.email_verified && !r.sent ? 'Your email address is already verified.' : 'A fresh verification link was mailed to you.');
          })}>Send me a new email verification link</button>
        </p>
      )}
      <Confirm
        open={!!confirm}
        title={confirm?.title ?? ''}
        body={confirm?.body ?? ''}
        action={confirm?.action ?? ''}
        onCancel={() => setConfirm(null)}
        onConfirm={() => {
          const c = confirm;
          setConfirm(null);
          c?.run().catch(setActionError);
        }}
      />
    </section>
  );
}

/** /invite#token=…: accept an invite (addressed to the signed-in user's email). */
export function AcceptInvite() {
  const { signIn } = useSession();
  const nav = useNavigate();
  const [tok] = useState(() => new URLSearchParams(window.location.hash.slice(1)).get('token') ?? '');
  const [error, setError] = useState<unknown>(tok ? null : new Error('The invite link has no token.'));
  const [busy, setBusy] = useState(false);
  async function accept() {
    setBusy(true);
    setError(null);
    try {
      const r = await api<Schemas['InviteAccepted']>('POST', '/v1/invites/accept', { token: tok });
      window.history.replaceState(null, '', '/invite');
      if (credential()?.kind === 'jwt') {
        const s = await api<Schemas['Session']>('POST', `/v1/teams/${encodeURIComponent(r.team_id)}/switch`, {});
        await signIn({ kind: 'jwt', token: s.token, expiresAt: s.expires_at });
      }
      nav('/team');
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  }
  return (
    <section>
      <h1>Team invite</h1>
      <p>Accept the invite to join the team with the role it gives you. It works only for the account it was sent to.</p>
      <ErrorBox error={error} />
      <button className="primary" disabled={busy || !tok} onClick={accept}>Accept invite</button>
    </section>
  );
}
