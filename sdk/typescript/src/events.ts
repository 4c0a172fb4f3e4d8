// The event log, the live event stream and webhook endpoints (docs/EVENTS.md).
import type { Client } from './index.js';
import type { components } from './openapi.js';

type S = components['schemas'];

/** A page of the event log (schema `EventPage`); `next_cursor` is empty on the last page. */
export type EventPage = S['EventPage'];
/** One delivery of an event to an endpoint (schema `WebhookDelivery`). */
export type WebhookDelivery = S['WebhookDelivery'];
/** A page of an endpoint's deliveries, newest first (schema `WebhookDeliveryPage`). */
export type WebhookDeliveryPage = S['WebhookDeliveryPage'];

/** Filters of the event log and stream. */
export interface EventFilter {
  /** An event type, e.g. `capsule.created`. */
  type?: string;
  /** The capsule, build or host id the events are about. */
  subject?: string;
}

/** The team's life-cycle events (`client.events`): the ordered log and the live stream. */
export class Events {
  /** @internal */
  constructor(private readonly c: Client) {}

  /** One page of the log, oldest first after `cursor` (an event id). */
  async listPage(o: EventFilter & { cursor?: string; limit?: number } = {}): Promise<EventPage> {
    return (await this.c.json('GET', '/v1/events', { query: { ...o } })) as EventPage;
  }

  /** Every event of the log after `cursor` (all pages), oldest first. */
  async list(o: EventFilter & { cursor?: string } = {}): Promise<S['Event'][]> {
    const out: S['Event'][] = [];
    let cursor = o.cursor;
    for (;;) {
      const page = await this.listPage({ ...o, cursor, limit: 1000 });
      out.push(...page.events);
      if (!page.next_cursor) return out;
      cursor = page.next_cursor;
    }
  }

  /**
   * Events as they happen (Server-Sent Events), after `lastEventId` when given (the stream first
   * replays what the log holds after it). The stream never ends by itself: `break` out of the loop
   * (or abort `signal`) to stop; to resume after a disconnection, pass the last event's `id`.
   */
  async *stream(o: EventFilter & { lastEventId?: string } = {}): AsyncGenerator<S['Event']> {
    const resp = await this.c.send('GET', '/v1/events/stream', {
      query: { type: o.type, subject: o.subject, last_event_id: o.lastEventId },
      stream: true,
    });
    if (!resp.body) return;
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    let data: string[] = [];
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (value) buf += value;
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl).replace(/\r$/, '');
          buf = buf.slice(nl + 1);
          if (line === '') {
            if (data.length) yield JSON.parse(data.join('\n')) as S['Event'];
            data = [];
          } else if (line.startsWith('data:')) {
            data.push(line.slice(5).replace(/^ /, ''));
          }
          // id:, event: and ":" keep-alive comments carry nothing the Event lacks.
        }
        if (done) return;
      }
    } finally {
      await reader.cancel().catch(() => undefined);
    }
  }
}

/** The team's webhook endpoints (`client.webhooks`; team admins and owners). */
export class Webhooks {
  /** @internal */
  constructor(private readonly c: Client) {}

  private path(id: string, tail = ''): string {
    return '/v1/webhooks/' + encodeURIComponent(id) + tail;
  }

  /**
   * Adds an endpoint. The answer's `secret` signs every delivery and is shown this once.
   * `eventTypes` empty or absent: every type.
   */
  async create(url: string, o: { eventTypes?: string[]; enabled?: boolean } = {}): Promise<S['Webhook']> {
    const body: S['CreateWebhook'] = { url, enabled: o.enabled ?? true };
    if (o.eventTypes?.length) body.event_types = o.eventTypes;
    return (await this.c.json('POST', '/v1/webhooks', { json: body })) as S['Webhook'];
  }

  /** The team's endpoints (no secrets). */
  async list(): Promise<S['Webhook'][]> {
    return ((await this.c.json('GET', '/v1/webhooks')) as S['WebhookList']).webhooks;
  }

  /** One endpoint (no secret). */
  async get(id: string): Promise<S['Webhook']> {
    return (await this.c.json('GET', this.path(id))) as S['Webhook'];
  }

  /** Changes the URL, the event types (`[]`: every type) or enabled; absent fields stay as they are. */
  async update(id: string, o: { url?: string; eventTypes?: string[]; enabled?: boolean }): Promise<S['Webhook']> {
    const body: S['UpdateWebhook'] = {};
    if (o.url !== undefined) body.url = o.url;
    if (o.eventTypes !== undefined) body.event_types = o.eventTypes;
    if (o.enabled !== undefined) body.enabled = o.enabled;
    return (await this.c.json('PATCH', this.path(id), { json: body })) as S['Webhook'];
  }

  /** Removes the endpoint and its queued deliveries. */
  async delete(id: string): Promise<void> {
    await this.c.send('DELETE', this.path(id));
  }

  /** Queues a signed `webhook.test` delivery to the endpoint. */
  async test(id: string): Promise<WebhookDelivery> {
    return (await this.c.json('POST', this.path(id, '/test'))) as WebhookDelivery;
  }

  /** Replaces the signing secret and returns the new one (shown this once). */
  async rotateSecret(id: string): Promise<string> {
    return ((await this.c.json('POST', this.path(id, '/rotate-secret'))) as S['WebhookSecret']).secret;
  }

  /** One page of the endpoint's deliveries, newest first. */
  async deliveriesPage(id: string, o: { cursor?: string; limit?: number } = {}): Promise<WebhookDeliveryPage> {
    return (await this.c.json('GET', this.path(id, '/deliveries'), { query: { ...o } })) as WebhookDeliveryPage;
  }

  /** Every delivery of the endpoint still kept, newest first. */
  async deliveries(id: string): Promise<WebhookDelivery[]> {
    const out: WebhookDelivery[] = [];
    let cursor: string | undefined;
    for (;;) {
      const page = await this.deliveriesPage(id, { cursor, limit: 500 });
      out.push(...page.deliveries);
      if (!page.next_cursor) return out;
      cursor = page.next_cursor;
    }
  }
}
