import { useEffect, useState, type FormEvent } from 'react';
import { useNavigate } from 'react-router';
import { api, authOptions, type AuthOptions, type Schemas } from '../api/client';
import { useSession } from '../session';
import { Dialog, ErrorBox, Loading } from '../components/ui';

type Mode = 'key' | 'password' | 'signup' | 'forgot';

// What the GitHub callback's /login?error=<code> means.
const OAUTH_ERRORS: Record<string, string> = {
  no_account: 'No Wrenn account is linked to this GitHub account. Sign up with GitHub first (signing in never creates an account).',
  signup_disabled: 'Sign-up is disabled on this server.',
  email_taken: 'An account with the email of this GitHub account already exists: sign in with your password.',
  no_verified_email: 'Your GitHub account has no verified primary email.',
  account_disabled: 'This account is deactivated.',
  invalid_state: 'The GitHub sign-in expired or was not started here. Try again.',
  access_denied: 'GitHub sign-in was cancelled.',
  github_unavailable: 'GitHub could not be reached. Try again later.',
  already_linked: 'That GitHub account is linked to another user.',
};

export function useAuthOptions(): AuthOptions | null {
  const [o, setO] = useState<AuthOptions | null>(null);
  useEffect(() => {
    authOptions().then(setO);
  }, []);
  return o;
}

export function SignIn() {
  const { signIn, notice } = useSession();
  const opts = useAuthOptions();
  const [mode, setMode] = useState<Mode>('key');
  const [key, setKey] = useState('');
  const [name, setName] = useState('');
  const [email, setEmail] = useState('');
  const [password, setPassword] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [sent, setSent] = useState('');
  const [oauthError] = useState(() => {
    if (window.location.pathname !== '/login') return '';
    const code = new URLSearchParams(window.location.search).get('error') ?? '';
    return code ? (OAUTH_ERRORS[code] ?? `GitHub sign-in failed (${code}).`) : '';
  });

  async function submit(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    setSent('');
    try {
      if (mode === 'key') {
        await signIn({ kind: 'key', key: key.trim() });
      } else if (mode === 'password') {
        const s = await api<Schemas['Session']>('POST', '/v1/auth/login', { email, password });
        await signIn({ kind: 'jwt', token: s.token, expiresAt: s.expires_at });
      } else if (mode === 'signup') {
        const s = await api<Schemas['Session']>('POST', '/v1/auth/signup', { email, password, ...(name.trim() ? { name: name.trim() } : {}) });
        await signIn({ kind: 'jwt', token: s.token, expiresAt: s.expires_at });
      } else {
        await api('POST', '/v1/auth/password/forgot', { email });
        setSent(`If an active account uses ${email}, a reset link is on its way (valid for one hour).`);
      }
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  const tab = (m: Mode, label: string) => (
    <button role="tab" aria-selected={mode === m} onClick={() => { setMode(m); setError(null); setSent(''); }}>
      {label}
    </button>
  );
  const emailField = (
    <label>
      Email
      <input name="email" type="email" autoComplete="username" value={email} onChange={(e) => setEmail(e.target.value)} required />
    </label>
  );
  return (
    <main className="signin">
      <h1>{mode === 'signup' ? 'Create a Wrenn account' : mode === 'forgot' ? 'Reset your password' : 'Sign in to Wrenn'}</h1>
      {notice && <p className="notice" role="status">{notice}</p>}
      {oauthError && <p className="error" role="alert">{oauthError}</p>}
      <div role="tablist" className="tabs" aria-label="How to sign in">
        {tab('key', 'API key')}
        {tab('password', 'Email and password')}
        {opts?.signup && tab('signup', 'Sign up')}
      </div>
      <form onSubmit={submit}>
        {mode === 'key' && (
          <label>
            API key
            <input name="key" type="password" autoComplete="off" value={key} onChange={(e) => setKey(e.target.value)} placeholder="wrn_…" required />
          </label>
        )}
        {mode === 'signup' && (
          <label>
            Name
            <input name="name" autoComplete="name" value={name} onChange={(e) => setName(e.target.value)} />
          </label>
        )}
        {mode !== 'key' && emailField}
        {(mode === 'password' || mode === 'signup') && (
          <label>
            Password{mode === 'signup' ? ' (at least 8 characters)' : ''}
            <input name="password" type="password" minLength={mode === 'signup' ? 8 : undefined} autoComplete={mode === 'signup' ? 'new-password' : 'current-password'} value={password} onChange={(e) => setPassword(e.target.value)} required />
          </label>
        )}
        <button type="submit" className="primary" disabled={busy}>
          {busy ? 'Working…' : mode === 'signup' ? 'Create account' : mode === 'forgot' ? 'Send reset link' : 'Sign in'}
        </button>
      </form>
      <ErrorBox error={error} />
      {sent && <p className="notice" role="status">{sent}</p>}
      {mode === 'password' && (
        <p>
          <button className="link" onClick={() => { setMode('forgot'); setError(null); }}>Forgot your password?</button>
        </p>
      )}
      {mode === 'forgot' && (
        <p>
          <button className="link" onClick={() => setMode('password')}>Back to sign in</button>
        </p>
      )}
      {opts?.github && (
        <p className="actions">
          <a href="/v1/auth/github?intent=login">Sign in with GitHub</a>
          {opts.signup && <a href="/v1/auth/github?intent=signup">Sign up with GitHub</a>}
        </p>
      )}
      <p className="hint">The admin key is printed by <code>wrenn up</code> on its first start and saved in its home.</p>
    </main>
  );
}

/** Landing of the GitHub flow: the token arrives in the URL fragment (never
 * sent to a server or a log); it is moved into memory and wiped from the URL.
 * After a sign-up the API sets the one-time wrenn_oauth_new_signup cookie:
 * the name dialog then confirms the name taken from GitHub. */
export function GitHubCallback() {
  const { signIn, setWelcome } = useSession();
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
    const isNew = document.cookie.split(';').some((c) => c.trim() === 'wrenn_oauth_new_signup=1');
    document.cookie = 'wrenn_oauth_new_signup=; Max-Age=0; Path=/; SameSite=Lax';
    signIn({ kind: 'jwt', token }).then(() => {
      if (isNew) setWelcome(true);
      nav('/capsules', { replace: true });
    }, setError);
  }, [signIn, nav, setWelcome]);
  return (
    <main className="signin">
      <h1>Signing in with GitHub…</h1>
      <ErrorBox error={error} />
      {error != null && <a href="/">Back to sign in</a>}
    </main>
  );
}

/** The dialog after a GitHub sign-up: confirm or edit the display name. */
export function WelcomeDialog() {
  const { me, welcome, setWelcome, setMe } = useSession();
  const [name, setName] = useState(me?.name ?? '');
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => setName(me?.name ?? ''), [me?.name]);
  async function save(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    try {
      setMe(await api<Schemas['Me']>('PATCH', '/v1/me', { name }));
      setWelcome(false);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }
  return (
    <Dialog title="Welcome to Wrenn" open={welcome} onClose={() => setWelcome(false)}>
      <form onSubmit={save} className="grid">
        <p>Your account was created from GitHub. Is this the name others should see?</p>
        <label>
          Display name
          <input name="display-name" value={name} maxLength={100} onChange={(e) => setName(e.target.value)} required />
        </label>
        <ErrorBox error={error} />
        <div className="actions">
          <button type="button" onClick={() => setWelcome(false)}>Skip</button>
          <button type="submit" className="primary" disabled={busy || !name.trim()}>Save name</button>
        </div>
      </form>
    </Dialog>
  );
}

/** Moves ?token= of a mailed link into memory and out of the address bar. */
function useLinkToken(path: string): string {
  const [tok] = useState(() => new URLSearchParams(window.location.search).get('token') ?? '');
  useEffect(() => {
    window.history.replaceState(null, '', path);
  }, [path]);
  return tok;
}

/** /verify-email?token=…: the landing of the verification mail. */
export function VerifyEmail() {
  const tok = useLinkToken('/verify-email');
  const { me } = useSession();
  const [state, setState] = useState<'working' | 'done' | 'failed'>(tok ? 'working' : 'failed');
  const [error, setError] = useState<unknown>(tok ? null : new Error('The link has no token.'));
  useEffect(() => {
    if (!tok) return;
    api('POST', '/v1/auth/verify', { token: tok }).then(
      () => setState('done'),
      (e) => {
        setError(e);
        setState('failed');
      },
    );
  }, [tok]);
  return (
    <main className="signin">
      <h1>Email verification</h1>
      {state === 'working' && <Loading what="verification" />}
      {state === 'done' && <p className="notice" role="status">Your email address is verified.</p>}
      <ErrorBox error={error} />
      {state === 'failed' && <p className="hint">Links work once and for 48 hours. Signed in, you can ask for a fresh one on the Team page.</p>}
      <p><a href={me ? '/capsules' : '/'}>{me ? 'Go to the dashboard' : 'Sign in'}</a></p>
    </main>
  );
}

/** /reset-password?token=…: choose a new password. */
export function ResetPassword() {
  const tok = useLinkToken('/reset-password');
  const [password, setPassword] = useState('');
  const [again, setAgain] = useState('');
  const [done, setDone] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(tok ? null : new Error('The link has no token.'));
  async function submit(e: FormEvent) {
    e.preventDefault();
    if (password !== again) {
      setError(new Error('The two passwords differ.'));
      return;
    }
    setBusy(true);
    setError(null);
    try {
      await api('POST', '/v1/auth/password/reset', { token: tok, password });
      setDone(true);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }
  return (
    <main className="signin">
      <h1>Choose a new password</h1>
      {done ? (
        <p className="notice" role="status">Your password is changed. <a href="/">Sign in</a></p>
      ) : (
        <form onSubmit={submit}>
          <label>
            New password (at least 8 characters)
            <input name="new-password" type="password" autoComplete="new-password" minLength={8} value={password} onChange={(e) => setPassword(e.target.value)} required />
          </label>
          <label>
            Repeat it
            <input name="repeat-password" type="password" autoComplete="new-password" minLength={8} value={again} onChange={(e) => setAgain(e.target.value)} required />
          </label>
          <button type="submit" className="primary" disabled={busy || !tok}>{busy ? 'Saving…' : 'Set password'}</button>
        </form>
      )}
      <ErrorBox error={error} />
      {!done && <p><a href="/">Back to sign in</a></p>}
    </main>
  );
}
