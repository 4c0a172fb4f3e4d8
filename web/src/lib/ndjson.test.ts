import { describe, expect, it } from 'vitest';
import { followNDJSON, NDJSONDecoder } from './ndjson';

const enc = (s: string) => new TextEncoder().encode(s);

describe('NDJSONDecoder', () => {
  it('joins records split across chunks, even inside a UTF-8 sequence', () => {
    const d = new NDJSONDecoder();
    const all = enc('{"step":1,"data":"héllo"}\n{"step":2,"data":"x"}\n');
    const cut = all.indexOf(0xc3) + 1; // between the two bytes of é
    expect(d.push(all.slice(0, cut))).toEqual([]);
    expect(d.push(all.slice(cut))).toEqual([{ step: 1, data: 'héllo' }, { step: 2, data: 'x' }]);
  });
  it('skips blank lines, keeps a bad line as data, returns the unterminated last record at the end', () => {
    const d = new NDJSONDecoder();
    expect(d.push(enc('\n\nnot json\n{"a":1}'))).toEqual([{ data: 'not json' }]);
    expect(d.end()).toEqual([{ a: 1 }]);
  });
});

describe('followNDJSON', () => {
  it('delivers records as chunks arrive', async () => {
    const chunks = ['{"step":1,"stream":"stdout","da', 'ta":"a"}\n{"step":1,"stream":"stderr","data":"b"}\n', '{"step":2}'];
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        for (const ch of chunks) c.enqueue(enc(ch));
        c.close();
      },
    });
    const batches: unknown[][] = [];
    await followNDJSON(new Response(body), (r) => batches.push(r));
    expect(batches.flat()).toEqual([{ step: 1, stream: 'stdout', data: 'a' }, { step: 1, stream: 'stderr', data: 'b' }, { step: 2 }]);
    expect(batches.length).toBe(2); // chunk 1 completes nothing; chunk 2 two records; the end one
  });
});
