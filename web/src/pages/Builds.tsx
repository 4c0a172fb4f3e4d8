import { useCallback, useEffect, useRef, useState, type FormEvent } from 'react';
import { Link, useNavigate, useParams } from 'react-router';
import { api, ApiError, request, type Schemas } from '../api/client';
import { useSession } from '../session';
import { usePoll } from '../lib/poll';
import { ago } from '../lib/format';
import { atBottom } from '../lib/log';
import { followNDJSON, type BuildLogRecord } from '../lib/ndjson';
import { recipeToSpec } from '../lib/recipe';
import { Confirm, ErrorBox, Loading } from '../components/ui';

// Template builds, against two API shapes:
//   - team builds (issue 16): GET/POST /v1/templates/builds (multipart:
//     recipe, name, optional context tar), GET …/{id}, POST …/{id}/cancel
//     and the live log GET …/{id}/logs?follow=1 (NDJSON {time, step,
//     stream, data});
//   - today's admin builds: GET/POST /v1/admin/builds (a JSON spec the
//     Wrennfile is mapped onto) and POST …/{id}/cancel; no log route, so the
//     log view shows the build's progress messages as they change.
// Which one the server has is found out once per page load.

type Build = Schemas['Build'];
type Mode = 'team' | 'admin' | 'none';

let modeP: Promise<Mode> | null = null;
function buildsMode(isAdmin: boolean): Promise<Mode> {
  modeP ??= api<{ builds?: Build[] }>('GET', '/v1/templates/builds')
    .then((j) => (Array.isArray(j?.builds) ? 'team' : isAdmin ? 'admin' : 'none'))
    .catch(() => (isAdmin ? 'admin' : 'none'));
  return modeP;
}
const base = (m: Mode) => (m === 'team' ? '/v1/templates/builds' : '/v1/admin/builds');
const FINISHED = new Set(['succeeded', 'failed', 'cancelled']);

const EXAMPLE = `# Wrennfile
FROM minimal
ENV GREETING=hello
RUN echo "$GREETING from a build" > /greeting
RUN for i in 1 2 3; do echo step $i; sleep 1; done
`;

export function Builds() {
  const { me } = useSession();
  const nav = useNavigate();
  const [mode, setMode] = useState<Mode | null>(null);
  const [list, setList] = useState<Build[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [formError, setFormError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const [name, setName] = useState('');
  const [recipe, setRecipe] = useState(EXAMPLE);
  const [context, setContext] = useState<File | null>(null);

  useEffect(() => {
    buildsMode(!!me?.is_admin).then(setMode);
  }, [me?.is_admin]);
  usePoll(
    async () => {
      if (!mode || mode === 'none') return;
      try {
        setList((await api<Schemas['BuildList']>('GET', base(mode))).builds);
        setError(null);
      } catch (e) {
        setError(e);
      }
    },
    3000,
    [mode],
  );

  async function submit(e: FormEvent) {
    e.preventDefault();
    if (!mode || mode === 'none') return;
    setBusy(true);
    setFormError(null);
    try {
      let b: Build;
      if (mode === 'team') {
        const fd = new FormData();
        fd.set('name', name);
        fd.set('recipe', new Blob([recipe], { type: 'text/plain' }), 'Wrennfile');
        if (context) fd.set('context', context, context.name);
        const res = await request('POST', base(mode), { body: fd });
        b = (await res.json()) as Build;
      } else {
        const spec = recipeToSpec(recipe);
        b = await api<Build>('POST', base(mode), { template_name: name, team_id: me?.team_id, spec });
      }
      nav(`/templates/builds/${b.id}`);
    } catch (err) {
      setFormError(err);
    } finally {
      setBusy(false);
    }
  }

  return (
    <section>
      <h1>Template builds</h1>
      {mode === null && <Loading what="builds" />}
      {mode === 'none' && <p className="empty">This server builds templates for platform admins only (team builds are not available yet).</p>}
      {mode && mode !== 'none' && (
        <>
          <form onSubmit={submit} className="grid build-form">
            <label>
              Template name
              <input name="template-name" value={name} onChange={(e) => setName(e.target.value)} pattern="[a-z0-9][a-z0-9._\-]{0,63}" required placeholder="my-tools" />
            </label>
            <label>
              Recipe (Wrennfile)
              <textarea name="recipe" rows={8} value={recipe} onChange={(e) => setRecipe(e.target.value)} spellCheck={false} className="code" required />
            </label>
            {mode === 'team' && (
              <label>
                Build context (a .tar for COPY, optional)
                <input name="context" type="file" accept=".tar,application/x-tar" onChange={(e) => setContext(e.target.files?.[0] ?? null)} />
              </label>
            )}
            {mode === 'admin' && <p className="hint">This server has the admin build API only: FROM, RUN, ENV and WORKDIR are supported; the template goes to your current team.</p>}
            <ErrorBox error={formError} />
            <div className="actions">
              <button type="submit" className="primary" disabled={busy || !name}>{busy ? 'Starting…' : 'Build'}</button>
            </div>
          </form>
          <h2>Builds</h2>
          <ErrorBox error={error} />
          {list === null && !error && <Loading what="builds" />}
          {list?.length === 0 && <p className="empty">No builds yet.</p>}
          {list && list.length > 0 && (
            <table className="list">
              <thead><tr><th>Build</th><th>Template</th><th>Status</th><th>Progress</th><th>Started</th></tr></thead>
              <tbody>
                {list.map((b) => (
                  <tr key={b.id} data-build={b.id}>
                    <td><Link to={`/templates/builds/${b.id}`}>{b.id}</Link></td>
                    <td>{b.template_name}</td>
                    <td><span className={`state b-${b.status}`}>{b.status}</span></td>
                    <td>{b.error}</td>
                    <td>{ago(b.created_at)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </>
      )}
    </section>
  );
}

export function BuildPage() {
  const { id = '' } = useParams();
  const { me } = useSession();
  const [mode, setMode] = useState<Mode | null>(null);
  const [b, setB] = useState<Build | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [actionError, setActionError] = useState<unknown>(null);
  const [log, setLog] = useState<BuildLogRecord[]>([]);
  const [following, setFollowing] = useState(false);
  const [confirm, setConfirm] = useState(false);
  const box = useRef<HTMLDivElement>(null);
  const stick = useRef(true);

  useEffect(() => {
    buildsMode(!!me?.is_admin).then(setMode);
  }, [me?.is_admin]);

  const load = useCallback(async () => {
    if (!mode || mode === 'none') return;
    try {
      let got: Build | undefined;
      if (mode === 'team') got = await api<Build>('GET', `${base(mode)}/${encodeURIComponent(id)}`);
      else got = (await api<Schemas['BuildList']>('GET', base(mode))).builds.find((x) => x.id === id);
      if (!got) throw new ApiError(404, 'not_found', `no build ${id}`);
      setB(got);
      setError(null);
      if (mode === 'admin' && got.error) {
        // No log route: each new progress message becomes a log line.
        setLog((l) => (l.length && l[l.length - 1].data === got!.error ? l : [...l, { time: got!.updated_at, stream: 'progress', data: got!.error }]));
      }
    } catch (e) {
      setError(e);
    }
  }, [mode, id]);
  usePoll(load, 2000, [load]);

  // The live log (team builds): one follow request; records append as they come.
  useEffect(() => {
    if (mode !== 'team') return;
    const ac = new AbortController();
    setLog([]);
    setFollowing(true);
    (async () => {
      try {
        const res = await request('GET', `${base(mode)}/${encodeURIComponent(id)}/logs?follow=1`, { signal: ac.signal });
        await followNDJSON<BuildLogRecord>(res, (recs) => setLog((l) => [...l, ...recs].slice(-5000)), ac.signal);
      } catch (e) {
        if ((e as Error).name !== 'AbortError') setActionError(e);
      } finally {
        if (!ac.signal.aborted) setFollowing(false);
      }
    })();
    return () => ac.abort();
  }, [mode, id]);

  useEffect(() => {
    const el = box.current;
    if (el && stick.current) el.scrollTop = el.scrollHeight;
  }, [log]);

  async function cancel() {
    setConfirm(false);
    setActionError(null);
    try {
      setB(await api<Build>('POST', `${base(mode!)}/${encodeURIComponent(id)}/cancel`, {}));
    } catch (e) {
      setActionError(e);
    }
  }

  if (!b) {
    return (
      <section>
        <p><Link to="/templates/builds">← Builds</Link></p>
        {error ? <ErrorBox error={error} retry={load} /> : <Loading what={`build ${id}`} />}
      </section>
    );
  }
  const done = FINISHED.has(b.status);
  return (
    <section>
      <p><Link to="/templates/builds">← Builds</Link></p>
      <div className="bar">
        <h1>Build {b.id}</h1>
        <span className={`state b-${b.status}`} data-testid="build-status">{b.status}</span>
        <button className="danger" disabled={done} onClick={() => setConfirm(true)}>Cancel build</button>
      </div>
      <dl className="summary">
        <dt>Template</dt><dd>{b.template_name}{b.template_id ? ` (${b.template_id})` : ''}</dd>
        <dt>Started</dt><dd>{ago(b.created_at)}</dd>
        {b.finished_at && (<><dt>Finished</dt><dd>{ago(b.finished_at)}</dd></>)}
        {b.error && (<><dt>{b.status === 'failed' ? 'Error' : 'Progress'}</dt><dd>{b.error}</dd></>)}
      </dl>
      <ErrorBox error={actionError} />
      <h2>Log {mode === 'team' ? (following ? '(following)' : '') : '(progress messages: this server has no build log route)'}</h2>
      <div
        ref={box}
        className="buildlog"
        data-testid="build-log"
        tabIndex={0}
        role="log"
        aria-label="Build log"
        onScroll={(e) => (stick.current = atBottom(e.currentTarget))}
      >
        {log.length === 0 && <span className="hint">{done ? 'No output.' : 'Waiting for output…'}</span>}
        {log.map((r, i) => (
          <div key={i} className={`ll ll-${r.stream ?? 'out'}`}>
            {r.step !== undefined && <span className="step">[{r.step}]</span>} {r.data}
          </div>
        ))}
      </div>
      <Confirm open={confirm} title="Cancel build" body={`Cancel ${b.id}? Its running step is killed.`} action="Cancel build" onCancel={() => setConfirm(false)} onConfirm={cancel} />
    </section>
  );
}
