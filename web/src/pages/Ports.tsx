import { useCallback, useEffect, useState } from 'react';
import { accessTokens, api, authOptions, capsulePath, type AuthOptions, type Capsule, type Schemas } from '../api/client';
import { listeningPorts, proxyLink, type Port } from '../lib/ports';
import { usePoll } from '../lib/poll';
import { ErrorBox, Loading } from '../components/ui';

// Ports listening in the capsule (read from its /proc/net/tcp{,6} with an
// exec through the public API, every 5 s) with links through the port proxy,
// which has its own origin (GET /v1/auth/options says its port and domain).
export function Ports({ c }: { c: Capsule }) {
  const [ports, setPorts] = useState<Port[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [opts, setOpts] = useState<AuthOptions | null>(null);
  useEffect(() => {
    authOptions().then(setOpts);
  }, []);
  const load = useCallback(async () => {
    try {
      const r = await api<Schemas['ExecResult']>('POST', capsulePath(c.id, '/exec'), {
        cmd: '/bin/sh',
        args: ['-c', 'cat /proc/net/tcp; echo @@wrenn@@; cat /proc/net/tcp6 2>/dev/null; true'],
        timeout_sec: 10,
      });
      const [v4, v6 = ''] = r.stdout.split('@@wrenn@@\n');
      setPorts(listeningPorts(v4, v6));
      setError(null);
    } catch (e) {
      setError(e);
    }
  }, [c.id]);
  usePoll(load, 5000, [load]);

  const token = accessTokens.get(c.id);
  const link = (p: number) => {
    const u = proxyLink(window.location, opts?.proxy_port ?? 0, opts?.proxy_domain ?? '', c.id, p);
    return !c.public && token ? `${u}?wrenn_access_token=${encodeURIComponent(token)}` : u;
  };
  return (
    <div>
      <p className="hint">
        {c.public
          ? 'This capsule is public: its ports open through the proxy without a token.'
          : token
            ? 'This capsule is private: the links carry its access token (shown once at create, kept in this tab only).'
            : 'This capsule is private: the proxy needs its access token (given only when it was created). Make it public to open ports in a browser.'}
      </p>
      <ErrorBox error={error} retry={load} />
      {ports === null && !error && <Loading what="ports" />}
      {ports?.length === 0 && <p className="empty">Nothing listens on a port yet (e.g. run <code>python3 -m http.server 8000</code> in the terminal).</p>}
      {ports && ports.length > 0 && (
        <table className="list">
          <thead><tr><th>Port</th><th>Address</th><th>Proxy link</th></tr></thead>
          <tbody>
            {ports.map((p) => (
              <tr key={p.port} data-port={p.port}>
                <td>{p.port}</td>
                <td><code>{p.address}</code></td>
                <td>{opts && (c.public || token) ? <a href={link(p.port)} target="_blank" rel="noopener noreferrer">{link(p.port).replace(/\?.*/, '')}</a> : <code>{link(p.port)}</code>}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}
