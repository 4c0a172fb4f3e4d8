import { NavLink, Navigate, Route, Routes, useLocation } from 'react-router';
import { useSession } from './session';
import { SignIn, GitHubCallback } from './pages/SignIn';
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
  if (!me) return <SignIn />;
  return (
    <div className="layout">
      <header className="top">
        <span className="brand">Wrenn</span>
        <nav aria-label="Main">
          <NavLink to="/capsules">Capsules</NavLink>
          <NavLink to="/templates">Templates</NavLink>
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
      <main>
        <Routes>
          <Route path="/" element={<Navigate to="/capsules" replace />} />
          <Route path="/capsules" element={<Capsules />} />
          <Route path="/capsules/:id" element={<CapsulePage />} />
          <Route path="/templates" element={<Templates />} />
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
