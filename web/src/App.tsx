import { NavLink, Navigate, Route, Routes, useLocation } from 'react-router';
import { useSession } from './session';
import { SignIn, GitHubCallback, ResetPassword, VerifyEmail, WelcomeDialog } from './pages/SignIn';
import { AcceptInvite } from './pages/Team';
import { BuildPage, Builds } from './pages/Builds';
import { Capsules } from './pages/Capsules';
import { CapsulePage } from './pages/Capsule';
import { Templates } from './pages/Templates';
import { Keys } from './pages/Keys';
import { Audit } from './pages/Audit';
import { Usage } from './pages/Usage';
import { Team } from './pages/Team';
import { Admin } from './pages/Admin';

export function App() {
  const { me, signOut } = useSession();
  const loc = useLocation();
  if (loc.pathname === '/auth/callback') return <GitHubCallback />;
  if (loc.pathname === '/verify-email') return <VerifyEmail />;
  if (loc.pathname === '/reset-password') return <ResetPassword />;
  if (!me) return <SignIn />;
  return (
    <div className="layout">
      <header className="top">
        <span className="brand">Wrenn</span>
        <nav aria-label="Main">
          <NavLink to="/capsules">Capsules</NavLink>
          <NavLink to="/templates" end>Templates</NavLink>
          <NavLink to="/templates/builds">Builds</NavLink>
          <NavLink to="/keys">API keys</NavLink>
          <NavLink to="/team">Team</NavLink>
          <NavLink to="/usage">Usage</NavLink>
          <NavLink to="/audit">Audit log</NavLink>
          {me.is_admin && <NavLink to="/admin">Admin</NavLink>}
        </nav>
        <span className="who">
          {me.name || me.email} {me.team ? `· ${me.team.name}` : ''} {me.is_admin ? '· admin' : ''}
        </span>
        <button onClick={() => signOut()}>Sign out</button>
      </header>
      <WelcomeDialog />
      <main>
        <Routes>
          <Route path="/" element={<Navigate to="/capsules" replace />} />
          <Route path="/capsules" element={<Capsules />} />
          <Route path="/capsules/:id" element={<CapsulePage />} />
          <Route path="/templates" element={<Templates />} />
          <Route path="/templates/builds" element={<Builds />} />
          <Route path="/templates/builds/:id" element={<BuildPage />} />
          <Route path="/invite" element={<AcceptInvite />} />
          <Route path="/login" element={<Navigate to="/capsules" replace />} />
          <Route path="/keys" element={<Keys />} />
          <Route path="/audit" element={<Audit />} />
          <Route path="/team" element={<Team />} />
          <Route path="/usage" element={<Usage />} />
          <Route path="/admin/*" element={<Admin />} />
          <Route path="*" element={<p className="empty">No such page. <NavLink to="/capsules">Capsules</NavLink></p>} />
        </Routes>
      </main>
    </div>
  );
}
