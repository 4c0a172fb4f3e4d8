// mergeList merges a freshly polled list into the current one in place:
// rows that did not change keep their object identity (React skips them),
// changed rows are replaced, new rows appear in the server's order and rows
// that are gone disappear. It returns prev itself when nothing changed, so
// a poll that brings nothing new renders nothing.
export function mergeList<T>(prev: readonly T[], next: readonly T[], key: (t: T) => string, same: (a: T, b: T) => boolean = shallowEqual): T[] {
  const old = new Map<string, T>();
  for (const p of prev) old.set(key(p), p);
  let changed = prev.length !== next.length;
  const out = next.map((n, i) => {
    const o = old.get(key(n));
    if (o !== undefined && same(o, n)) {
      if (prev[i] !== o) changed = true;
      return o;
    }
    changed = true;
    return n;
  });
  return changed ? out : (prev as T[]);
}

export function shallowEqual<T>(a: T, b: T): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  const ka = Object.keys(a as object);
  const kb = Object.keys(b as object);
  if (ka.length !== kb.length) return false;
  for (const k of ka) {
    const va = (a as Record<string, unknown>)[k];
    const vb = (b as Record<string, unknown>)[k];
    if (va !== vb && JSON.stringify(va) !== JSON.stringify(vb)) return false;
  }
  return true;
}
