import { useEffect, useRef } from 'react';

/** Calls fn now and then every ms while the component is mounted and the tab visible. */
export function usePoll(fn: (signal: AbortSignal) => Promise<void>, ms: number, deps: unknown[]) {
  const saved = useRef(fn);
  saved.current = fn;
  useEffect(() => {
    const ac = new AbortController();
    let t: number | undefined;
    const tick = async () => {
      if (document.visibilityState !== 'hidden') {
        try {
          await saved.current(ac.signal);
        } catch {
          /* the callee shows its own errors */
        }
      }
      if (!ac.signal.aborted) t = window.setTimeout(tick, ms);
    };
    tick();
    return () => {
      ac.abort();
      window.clearTimeout(t);
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, deps);
}
