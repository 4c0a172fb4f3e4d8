import { useState } from 'react';
import Chart from '../components/Chart';
import { api, capsulePath, type Schemas } from '../api/client';
import { usePoll } from '../lib/poll';
import { ErrorBox, Loading } from '../components/ui';

const WINDOWS = ['10m', '2h', '24h'] as const;

export default function Metrics({ id }: { id: string }) {
  const [win, setWin] = useState<(typeof WINDOWS)[number]>('10m');
  const [data, setData] = useState<Schemas['CapsuleMetrics'] | null>(null);
  const [error, setError] = useState<unknown>(null);
  usePoll(
    async () => {
      try {
        setData(await api<Schemas['CapsuleMetrics']>('GET', capsulePath(id, `/metrics?window=${win}`)));
        setError(null);
      } catch (e) {
        setError(e);
      }
    },
    5000,
    [id, win],
  );
  return (
    <div>
      <div className="bar small">
        {WINDOWS.map((w) => (
          <button key={w} aria-pressed={w === win} onClick={() => { setData(null); setWin(w); }}>{w}</button>
        ))}
      </div>
      <ErrorBox error={error} />
      {!data && !error && <Loading what="metrics" />}
      {data && data.points.length === 0 && <p className="empty">No samples yet: the capsule reports every few seconds while it runs.</p>}
      {data && data.points.length > 0 && (
        <div className="charts">
          <Chart title="CPU %" x={xs(data.points)} y={data.points.map((p) => p.cpu_used_pct)} />
          <Chart title="Memory MiB" x={xs(data.points)} y={data.points.map((p) => p.mem_used_bytes / 2 ** 20)} />
          <Chart title="Disk MiB" x={xs(data.points)} y={data.points.map((p) => p.disk_used_bytes / 2 ** 20)} />
        </div>
      )}
    </div>
  );
}

const xs = (pts: Schemas['MetricPoint'][]) => pts.map((p) => p.ts_ms / 1000);
