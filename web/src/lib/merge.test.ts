import { describe, expect, it } from 'vitest';
import { mergeList } from './merge';

type Row = { id: string; status: string; meta?: Record<string, string> };
const key = (r: Row) => r.id;

describe('mergeList', () => {
  it('returns the previous array when nothing changed', () => {
    const prev: Row[] = [{ id: 'a', status: 'running', meta: { x: '1' } }, { id: 'b', status: 'paused' }];
    const next: Row[] = [{ id: 'a', status: 'running', meta: { x: '1' } }, { id: 'b', status: 'paused' }];
    expect(mergeList(prev, next, key)).toBe(prev);
  });
  it('keeps unchanged rows and replaces changed ones', () => {
    const prev: Row[] = [{ id: 'a', status: 'running' }, { id: 'b', status: 'running' }];
    const next: Row[] = [{ id: 'a', status: 'running' }, { id: 'b', status: 'paused' }];
    const out = mergeList(prev, next, key);
    expect(out).not.toBe(prev);
    expect(out[0]).toBe(prev[0]);
    expect(out[1]).toBe(next[1]);
    expect(out[1].status).toBe('paused');
  });
  it('adds new rows, drops gone rows and follows the server order', () => {
    const prev: Row[] = [{ id: 'a', status: 'running' }, { id: 'b', status: 'running' }];
    const next: Row[] = [{ id: 'c', status: 'pending' }, { id: 'a', status: 'running' }];
    const out = mergeList(prev, next, key);
    expect(out.map(key)).toEqual(['c', 'a']);
    expect(out[1]).toBe(prev[0]);
  });
  it('notices a reorder even when every row is the same', () => {
    const prev: Row[] = [{ id: 'a', status: 'x' }, { id: 'b', status: 'y' }];
    const next: Row[] = [{ id: 'b', status: 'y' }, { id: 'a', status: 'x' }];
    const out = mergeList(prev, next, key);
    expect(out).not.toBe(prev);
    expect(out[0]).toBe(prev[1]);
  });
  it('handles empty lists', () => {
    const prev: Row[] = [];
    expect(mergeList(prev, [], key)).toBe(prev);
    expect(mergeList([{ id: 'a', status: 'x' }], [], key)).toEqual([]);
  });
});
