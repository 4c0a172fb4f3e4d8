import { describe, expect, it } from 'vitest';
import { afterClose, backoff, MAX_RETRIES } from './reconnect';

describe('afterClose', () => {
  it('ends when the shell exited', () => {
    expect(afterClose({ gotEnd: true, pid: 7, attempt: 0 }).kind).toBe('ended');
  });
  it('re-attaches to the same pid after a drop', () => {
    expect(afterClose({ gotEnd: false, pid: 7, attempt: 0 })).toEqual({ kind: 'retry', pid: 7, delay: 250 });
    expect(afterClose({ gotEnd: false, pid: 7, attempt: 3 })).toEqual({ kind: 'retry', pid: 7, delay: 2000 });
  });
  it('retries an unavailable agent but not a vanished process', () => {
    expect(afterClose({ gotEnd: false, pid: 7, attempt: 1, errorCode: 'unavailable' }).kind).toBe('retry');
    expect(afterClose({ gotEnd: false, pid: 7, attempt: 1, errorCode: 'not_found' }).kind).toBe('ended');
    expect(afterClose({ gotEnd: false, pid: 7, attempt: 1, errorCode: 'conflict' }).kind).toBe('ended');
  });
  it('gives up without a pid or after the last attempt', () => {
    expect(afterClose({ gotEnd: false, pid: null, attempt: 0 }).kind).toBe('give-up');
    expect(afterClose({ gotEnd: false, pid: 7, attempt: MAX_RETRIES }).kind).toBe('give-up');
  });
  it('caps the backoff', () => {
    expect(backoff(0)).toBe(250);
    expect(backoff(20)).toBe(5000);
  });
});
