import { describe, expect, it } from 'vitest';
import { appendCapped, atBottom, eventText } from './log';

describe('appendCapped', () => {
  it('appends while under the cap', () => {
    expect(appendCapped('a\n', 'b\n', 100)).toBe('a\nb\n');
  });
  it('keeps the tail, cut at a line start', () => {
    const out = appendCapped('line1\nline2\n', 'line3\n', 10);
    expect(out.length).toBeLessThanOrEqual(10);
    expect(out).toBe('line3\n');
  });
  it('cuts mid-line when there is no near newline', () => {
    expect(appendCapped('x'.repeat(500), 'y', 10)).toBe('xxxxxxxxxy');
  });
});

describe('atBottom', () => {
  it('follows only when scrolled to the end', () => {
    expect(atBottom({ scrollTop: 900, scrollHeight: 1000, clientHeight: 100 })).toBe(true);
    expect(atBottom({ scrollTop: 500, scrollHeight: 1000, clientHeight: 100 })).toBe(false);
  });
});

describe('eventText', () => {
  it('decodes text and base64 payloads', () => {
    expect(eventText({ data: 'hi' })).toBe('hi');
    expect(eventText({ data_b64: btoa('h\u00e9') })).toBe('h\ufffd'); // latin-1 é is not UTF-8
    expect(eventText({ data_b64: 'aGk=' })).toBe('hi');
    expect(eventText({})).toBe('');
  });
});
