// Verifying Wrenn webhook deliveries (docs/EVENTS.md).
import { createHmac, timingSafeEqual } from 'node:crypto';

/** A webhook delivery whose Wrenn-Signature does not verify. */
export class WebhookVerificationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WebhookVerificationError';
  }
}

/**
 * Check a webhook delivery; throws {@link WebhookVerificationError} if it
 * does not verify. `header` is the request's `Wrenn-Signature` header,
 * `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` (several `v1`
 * values may be present); `body` the raw request body, before any JSON
 * parsing; `toleranceSec` the accepted clock skew. Deliveries are at least
 * once: deduplicate by the `Wrenn-Event-Id` header.
 */
export function verifyWebhook(
  secret: string,
  header: string | null | undefined,
  body: string | Uint8Array,
  toleranceSec = 300,
  nowSec: number = Date.now() / 1000,
): void {
  let ts: string | undefined;
  const sigs: string[] = [];
  for (const part of (header ?? '').split(',')) {
    const i = part.indexOf('=');
    if (i < 0) throw new WebhookVerificationError('malformed Wrenn-Signature header');
    const k = part.slice(0, i).trim();
    const v = part.slice(i + 1).trim();
    if (k === 't') ts = v;
    else if (k === 'v1') sigs.push(v);
  }
  if (ts === undefined || !/^\d+$/.test(ts) || sigs.length === 0) {
    throw new WebhookVerificationError('malformed Wrenn-Signature header');
  }
  if (Math.abs(nowSec - Number(ts)) > toleranceSec) {
    throw new WebhookVerificationError('timestamp outside the tolerance');
  }
  const mac = createHmac('sha256', secret);
  mac.update(`${ts}.`);
  mac.update(body);
  const want = mac.digest();
  for (const s of sigs) {
    const got = Buffer.from(s, 'hex');
    if (got.length === want.length && timingSafeEqual(got, want)) return;
  }
  throw new WebhookVerificationError('signature does not match');
}
