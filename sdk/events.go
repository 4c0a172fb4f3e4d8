package wrenn

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
)

// Event is one life-cycle event (docs/EVENTS.md).
type Event = wrennapi.Event

// Webhook is a webhook endpoint; Secret is set only by CreateWebhook.
type Webhook = wrennapi.Webhook

// WebhookDelivery is one delivery of an event to an endpoint.
type WebhookDelivery = wrennapi.WebhookDelivery

// EventsParams filter Events and StreamEvents; Cursor (Events) is the
// id after which to list, LastEventID (StreamEvents) the id to resume
// after ("" with StreamEvents: only events from now on).
type EventsParams struct {
	Type, Subject string
	Cursor        string
	LastEventID   string
	Limit         int
}

func (p EventsParams) query() url.Values {
	q := url.Values{}
	if p.Type != "" {
		q.Set("type", p.Type)
	}
	if p.Subject != "" {
		q.Set("subject", p.Subject)
	}
	if p.Cursor != "" {
		q.Set("cursor", p.Cursor)
	}
	if p.Limit > 0 {
		q.Set("limit", strconv.Itoa(p.Limit))
	}
	return q
}

// Events lists the team's events oldest first after p.Cursor; next is the
// cursor of the following page ("" when this one was not full).
func (c *Client) Events(ctx context.Context, p EventsParams) (evs []Event, next string, err error) {
	var out wrennapi.EventPage
	if err := c.call(ctx, http.MethodGet, "/v1/events", p.query(), nil, &out); err != nil {
		return nil, "", err
	}
	return out.Events, out.NextCursor, nil
}

// EventStream is an open GET /v1/events/stream.
type EventStream struct {
	body   io.ReadCloser
	sc     *bufio.Scanner
	lastID string
}

// StreamEvents opens the live event stream (Server-Sent Events). Call
// Next for each event and Close when done; to resume after a drop, open a
// new stream with LastEventID set to the stream's LastID.
func (c *Client) StreamEvents(ctx context.Context, p EventsParams) (*EventStream, error) {
	q := p.query()
	q.Del("cursor")
	q.Del("limit")
	if p.LastEventID != "" {
		q.Set("last_event_id", p.LastEventID)
	}
	resp, err := c.do(ctx, http.MethodGet, "/v1/events/stream", q, nil, "")
	if err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	return &EventStream{body: resp.Body, sc: sc, lastID: p.LastEventID}, nil
}

// Next returns the next event; it blocks until one arrives, and returns
// io.EOF when the server closed the stream.
func (s *EventStream) Next() (Event, error) {
	var id, data string
	for s.sc.Scan() {
		line := s.sc.Text()
		switch {
		case line == "":
			if data != "" {
				var e Event
				if err := json.Unmarshal([]byte(data), &e); err != nil {
					return Event{}, fmt.Errorf("wrenn: decode event: %w", err)
				}
				if id != "" {
					s.lastID = id
				}
				return e, nil
			}
			id, data = "", ""
		case strings.HasPrefix(line, "id:"):
			id = strings.TrimSpace(line[3:])
		case strings.HasPrefix(line, "data:"):
			data += strings.TrimPrefix(line[5:], " ")
		}
	}
	if err := s.sc.Err(); err != nil {
		return Event{}, err
	}
	return Event{}, io.EOF
}

// LastID is the id of the last event Next returned (for LastEventID).
func (s *EventStream) LastID() string { return s.lastID }

// Close ends the stream.
func (s *EventStream) Close() error { return s.body.Close() }

// WebhookParams create or change an endpoint; nil fields are left as
// they are (UpdateWebhook) or take the defaults (enabled, every type).
type WebhookParams struct {
	URL        *string
	EventTypes *[]string
	Enabled    *bool
}

// CreateWebhook adds an endpoint; the returned Secret is shown only now.
func (c *Client) CreateWebhook(ctx context.Context, url string, eventTypes []string, enabled *bool) (*Webhook, error) {
	var out Webhook
	in := wrennapi.CreateWebhook{URL: url, EventTypes: eventTypes, Enabled: enabled}
	if err := c.call(ctx, http.MethodPost, "/v1/webhooks", nil, in, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Webhooks lists the team's endpoints.
func (c *Client) Webhooks(ctx context.Context) ([]Webhook, error) {
	var out wrennapi.WebhookList
	if err := c.call(ctx, http.MethodGet, "/v1/webhooks", nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Webhooks, nil
}

// Webhook returns one endpoint.
func (c *Client) Webhook(ctx context.Context, id string) (*Webhook, error) {
	var out Webhook
	if err := c.call(ctx, http.MethodGet, "/v1/webhooks/"+url.PathEscape(id), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// UpdateWebhook changes an endpoint.
func (c *Client) UpdateWebhook(ctx context.Context, id string, p WebhookParams) (*Webhook, error) {
	var out Webhook
	in := wrennapi.UpdateWebhook{URL: p.URL, EventTypes: p.EventTypes, Enabled: p.Enabled}
	if err := c.call(ctx, http.MethodPatch, "/v1/webhooks/"+url.PathEscape(id), nil, in, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// DeleteWebhook removes an endpoint.
func (c *Client) DeleteWebhook(ctx context.Context, id string) error {
	return c.call(ctx, http.MethodDelete, "/v1/webhooks/"+url.PathEscape(id), nil, nil, nil)
}

// TestWebhook queues a signed webhook.test delivery.
func (c *Client) TestWebhook(ctx context.Context, id string) (*WebhookDelivery, error) {
	var out WebhookDelivery
	if err := c.call(ctx, http.MethodPost, "/v1/webhooks/"+url.PathEscape(id)+"/test", nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// RotateWebhookSecret replaces the endpoint's secret and returns the new
// one (shown only now).
func (c *Client) RotateWebhookSecret(ctx context.Context, id string) (string, error) {
	var out wrennapi.WebhookSecret
	if err := c.call(ctx, http.MethodPost, "/v1/webhooks/"+url.PathEscape(id)+"/rotate-secret", nil, nil, &out); err != nil {
		return "", err
	}
	return out.Secret, nil
}

// WebhookDeliveries lists an endpoint's deliveries, newest first.
func (c *Client) WebhookDeliveries(ctx context.Context, id string, limit int) ([]WebhookDelivery, error) {
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var out wrennapi.WebhookDeliveryPage
	if err := c.call(ctx, http.MethodGet, "/v1/webhooks/"+url.PathEscape(id)+"/deliveries", q, nil, &out); err != nil {
		return nil, err
	}
	return out.Deliveries, nil
}

// Webhook verification errors.
var (
	ErrWebhookSignature = errors.New("wrenn: webhook signature does not match")
	ErrWebhookTimestamp = errors.New("wrenn: webhook timestamp outside the tolerance")
	ErrWebhookHeader    = errors.New("wrenn: malformed Wrenn-Signature header")
)

// VerifyWebhook checks a delivery: header is its Wrenn-Signature
// ("t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>"), body
// the raw request body, tolerance the accepted clock skew (0: 5 minutes).
// Verify before parsing the body; deduplicate by the Wrenn-Event-Id header
// (deliveries are at least once).
func VerifyWebhook(secret, header string, body []byte, tolerance time.Duration) error {
	if tolerance <= 0 {
		tolerance = 5 * time.Minute
	}
	var ts string
	var sigs []string
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return ErrWebhookHeader
		}
		switch k {
		case "t":
			ts = v
		case "v1":
			sigs = append(sigs, v)
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return ErrWebhookHeader
	}
	if d := time.Since(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return ErrWebhookTimestamp
	}
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts + "."))
	m.Write(body)
	want := m.Sum(nil)
	for _, s := range sigs {
		if got, err := hex.DecodeString(s); err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	return ErrWebhookSignature
}
