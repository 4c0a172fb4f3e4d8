import { useEffect, useState, type FormEvent } from 'react';
import { useNavigate } from 'react-router';
import { api, type Schemas } from '../api/client';
import { useSession } from '../session';
import { ErrorBox } from '../components/ui';

export function SignIn() {
  const { signIn, notice } = useSession();
  const [mode, setMode] = useState<'key' | 'password'>('key');
  const [key, setKey] = useState('');
  const [email, setEmail] = useState('');
  const [password, setPassword] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);

  async function submit(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      if (mode === 'key') {
        await signIn({ kind: 'key', key: key.trim() });
      } else {
        const s = await api<Schemas['Session']>('POST', '/v1/auth/login', { email, password });
        await signIn({ kind: 'jwt', token: s.token, expiresAt: s.expires_at });
      }
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  return (
    <main className="signin">
      <h1>Sign in to Wrenn</h1>
      {notice && <p className="notice" role="status">{notice}</p>}
      <div role="tablist" className="tabs">
        <button role="tab" aria-selected={mode === 'key'} onClick={() => setMode('key')}>API key</button>
        <button role="tab" aria-selected={mode === 'password'} onClick={() => setMode('password')}>Email and password</button>
      </div>
      <form onSubmit={submit}>
        {mode === 'key' ? (
          <label>
            API key
            <input name="key" type="password" autoComplete="off" value={key} onChange={(e) => setKey(e.target.value)} placeholder="wrn_…" required />
          </label>
        ) : (
          <>
            <label>
              Email
              <input name="email" type="email" autoComplete="username" value={email} onChange={(e) => setEmail(e.target.value)} required />
            </label>
            <label>
              Password
              <input name="password" type="password" autoComplete="current-password" value={password} onChange={(e) => setPassword(e.target.value)} required />
            </label>
          </>
        )}
        <button type="submit" className="primary" disabled={busy}>
          {busy ? 'Signing in…' : 'Sign in'}
        </button>
      </form>
      <ErrorBox error={error} />
      <p>
        <a href="/v1/auth/github?intent=login">Sign in with GitHub</a>
      </p>
      <p className="hint">The admin key is printed by <code>wrenn up</code> on its first start and saved in its home.</p>
    </main>
  );
}

/** Landing of the GitHub flow: the token arrives in the URL fragment (never
 * sent to a server or a log); it is moved into memory and wiped from the URL. */
export function GitHubCallback() {
  const { signIn } = useSession();
  const nav = useNavigate();
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    const h = new URLSearchParams(window.location.hash.slice(1));
    const q = new URLSearchParams(window.location.search);
    window.history.replaceState(null, '', '/auth/callback');
    const token = h.get('token');
    if (!token) {
      setError(new Error(`GitHub sign-in failed: ${q.get('error') ?? h.get('error') ?? 'no token'}`));
      return;
    }
    signIn({ kind: 'jwt', token }).then(() => nav('/capsules', { replace: true }), setError);
  }, [signIn, nav]);
  return (
    <main className="signin">
      <h1>Signing in with GitHub…</h1>
      <ErrorBox error={error} />
      {error != null && <a href="/">Back to sign in</a>}
    </main>
  );
}
