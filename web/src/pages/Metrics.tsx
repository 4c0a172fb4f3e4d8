import { useEffect, useRef, useState } from 'react';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
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
          <Chart title="CPU %" pts={data.points} y={(p) => p.cpu_used_pct} />
          <Chart title="Memory MiB" pts={data.points} y={(p) => p.mem_used_bytes / 2 ** 20} />
          <Chart title="Disk MiB" pts={data.points} y={(p) => p.disk_used_bytes / 2 ** 20} />
        </div>
      )}
    </div>
  );
}

function Chart({ title, pts, y }: { title: string; pts: Schemas['MetricPoint'][]; y: (p: Schemas['MetricPoint']) => number }) {
  const el = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const d: uPlot.AlignedData = [pts.map((p) => p.ts_ms / 1000), pts.map(y)];
  useEffect(() => {
    plot.current = new uPlot(
      { title, width: 420, height: 200, series: [{}, { label: title, stroke: '#2563eb', fill: 'rgba(37,99,235,0.1)' }], axes: [{}, { size: 60 }] },
      d,
      el.current!,
    );
    return () => plot.current?.destroy();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [title]);
  useEffect(() => plot.current?.setData(d));
  return <div ref={el} className="chart" data-testid="chart" role="img" aria-label={`${title} chart`} />;
}
