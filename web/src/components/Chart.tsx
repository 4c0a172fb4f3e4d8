import { useEffect, useRef } from 'react';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

/** A line chart (uPlot) of y over x (x in seconds since the epoch). Loaded on demand. */
export default function Chart({ title, x, y, bars = false }: { title: string; x: number[]; y: number[]; bars?: boolean }) {
  const el = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const data: uPlot.AlignedData = [x, y];
  useEffect(() => {
    plot.current = new uPlot(
      {
        title,
        width: 420,
        height: 200,
        series: [{}, { label: title, stroke: '#2563eb', fill: 'rgba(37,99,235,0.1)', ...(bars ? { paths: uPlot.paths.bars!({ size: [0.6, 40] }), points: { show: false } } : {}) }],
        axes: [{}, { size: 60 }],
      },
      data,
      el.current!,
    );
    return () => plot.current?.destroy();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [title]);
  useEffect(() => plot.current?.setData(data));
  return <div ref={el} className="chart" data-testid="chart" role="img" aria-label={`${title} chart`} />;
}
