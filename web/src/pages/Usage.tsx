import { lazy, Suspense, useState } from 'react';
import { api, type Schemas } from '../api/client';
import { usePoll } from '../lib/poll';
import { ErrorBox, Loading } from '../components/ui';

const Chart = lazy(() => import('../components/Chart'));

const day = (d: Date) => d.toISOString().slice(0, 10);

export function Usage() {
  const [to, setTo] = useState(day(new Date()));
  const [from, setFrom] = useState(day(new Date(Date.now() - 29 * 86400e3)));
  const [u, setU] = useState<Schemas['Usage'] | null>(null);
  const [error, setError] = useState<unknown>(null);
  usePoll(
    async () => {
      try {
        setU(await api<Schemas['Usage']>('GET', `/v1/capsules/usage?from=${from}&to=${to}`));
        setError(null);
      } catch (e) {
        setError(e);
      }
    },
    60000,
    [from, to],
  );
  const x = (u?.days ?? []).map((d) => Date.parse(d.date + 'T00:00:00Z') / 1000);
  return (
    <section>
      <h1>Usage</h1>
      <div className="filters">
        <label>From <input type="date" value={from} max={to} onChange={(e) => setFrom(e.target.value)} /></label>
        <label>To <input type="date" value={to} min={from} onChange={(e) => setTo(e.target.value)} /></label>
        <span className="hint">At most 92 days.</span>
      </div>
      <ErrorBox error={error} />
      {!u && !error && <Loading what="usage" />}
      {u && (
        <>
          <p>
            Total: <strong>{u.totals.cpu_minutes.toFixed(1)}</strong> CPU-minutes, <strong>{Math.round(u.totals.ram_mb_minutes)}</strong> RAM-MB-minutes.
          </p>
          {u.days.length === 0 ? (
            <p className="empty">No usage in this range.</p>
          ) : (
            <Suspense fallback={<Loading what="charts" />}>
              <div className="charts">
                <Chart title="CPU-minutes per day" x={x} y={u.days.map((d) => d.cpu_minutes)} bars />
                <Chart title="RAM-MB-minutes per day" x={x} y={u.days.map((d) => d.ram_mb_minutes)} bars />
              </div>
            </Suspense>
          )}
        </>
      )}
    </section>
  );
}
