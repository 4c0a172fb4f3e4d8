package store

import (
	"context"
	"time"
)

// PrefixWebhook is the id prefix of webhook endpoints (wh-…).
const PrefixWebhook = "wh"

// Event is one entry of a team's life-cycle log (internal/events). ID is
// assigned by the store and orders the log; Data is a JSON object.
type Event struct {
	ID        int64
	TeamID    string
	Type      string
	Subject   string
	CreatedAt time.Time
	Data      []byte
}

// EventFilter selects a team's events after AfterID, oldest first; empty
// Type and Subject match everything.
type EventFilter struct {
	AfterID int64
	Type    string
	Subject string
	Limit   int
}

// Webhook is a team's webhook endpoint. SecretSealed is the signing
// secret sealed by internal/webhooks (the store never sees it in clear).
// EventTypes empty means every type.
type Webhook struct {
	ID           string
	TeamID       string
	URL          string
	EventTypes   []string
	Enabled      bool
	SecretSealed []byte
	CreatedAt    time.Time
	UpdatedAt    time.Time
}

// DeliveryStatus is a webhook delivery's state.
type DeliveryStatus string

// Delivery states: pending (queued or waiting for a retry), delivered (a
// 2xx answer), failed (gave up after the retry window).
const (
	DeliveryPending   DeliveryStatus = "pending"
	DeliveryDelivered DeliveryStatus = "delivered"
	DeliveryFailed    DeliveryStatus = "failed"
)

// WebhookDelivery is one (endpoint, event) row of the outbox. Body is the
// exact JSON that is sent.
type WebhookDelivery struct {
	ID             int64
	WebhookID      string
	TeamID         string
	EventID        int64
	EventType      string
	Body           []byte
	Status         DeliveryStatus
	Attempts       int
	NextAttemptAt  time.Time
	LastAttemptAt  *time.Time
	ResponseStatus int
	LastError      string
	CreatedAt      time.Time
}

// DeliveryOutcome records one delivery attempt (FinishWebhookDelivery).
type DeliveryOutcome struct {
	Status         DeliveryStatus
	NextAttemptAt  time.Time
	AttemptedAt    time.Time
	ResponseStatus int
	LastError      string
}

// EventStore is the store's part for events, webhooks and their outbox
// (migration 15). Team-scoped methods match the team in the same statement.
type EventStore interface {
	// AppendEvent inserts e (ID and, when zero, CreatedAt are set) and, in
	// the same transaction, one pending delivery per webhook in hooks
	// (body from bodyFor, given the stored event), so a delivery is queued
	// exactly when its event exists.
	AppendEvent(ctx context.Context, e Event, hooks []string, bodyFor func(Event) ([]byte, error)) (Event, error)
	// ListEvents pages a team's events oldest first after f.AfterID.
	ListEvents(ctx context.Context, teamID string, f EventFilter) ([]Event, error)
	// ListEventsAfter lists every team's events after id, oldest first (the
	// SSE hub's poll).
	ListEventsAfter(ctx context.Context, afterID int64, limit int) ([]Event, error)
	// LastEventID is the highest event id (0 when there is none).
	LastEventID(ctx context.Context) (int64, error)
	// DeleteEventsBefore removes events older than t (retention).
	DeleteEventsBefore(ctx context.Context, t time.Time) (int64, error)

	CreateWebhook(ctx context.Context, w Webhook) (Webhook, error)
	GetWebhook(ctx context.Context, teamID, id string) (Webhook, error)
	// GetWebhookUnscoped is for the dispatcher, which serves every team.
	GetWebhookUnscoped(ctx context.Context, id string) (Webhook, error)
	ListWebhooks(ctx context.Context, teamID string) ([]Webhook, error)
	// ListEnabledWebhooks is the team's enabled endpoints (event fan-out).
	ListEnabledWebhooks(ctx context.Context, teamID string) ([]Webhook, error)
	UpdateWebhook(ctx context.Context, w Webhook) error
	SetWebhookSecret(ctx context.Context, teamID, id string, sealed []byte) error
	DeleteWebhook(ctx context.Context, teamID, id string) error
	// EnqueueWebhookDelivery queues one delivery (the test ping).
	EnqueueWebhookDelivery(ctx context.Context, d WebhookDelivery) (WebhookDelivery, error)
	// ListWebhookDeliveries pages a webhook's deliveries newest first,
	// before id beforeID (0: from the newest).
	ListWebhookDeliveries(ctx context.Context, teamID, webhookID string, beforeID int64, limit int) ([]WebhookDelivery, error)

	// DueWebhooks lists endpoints with a pending delivery due at now.
	DueWebhooks(ctx context.Context, now time.Time, limit int) ([]string, error)
	// LeaseWebhook gives owner the right to deliver to webhook id until
	// `until` if nobody else holds an unexpired lease (or owner does).
	LeaseWebhook(ctx context.Context, id, owner string, now, until time.Time) (bool, error)
	ReleaseWebhook(ctx context.Context, id, owner string) error
	// PendingWebhookDeliveries lists an endpoint's pending deliveries in
	// event order.
	PendingWebhookDeliveries(ctx context.Context, webhookID string, limit int) ([]WebhookDelivery, error)
	// FinishWebhookDelivery records an attempt if the delivery is still
	// pending and owner still holds its endpoint's lease.
	FinishWebhookDelivery(ctx context.Context, id int64, owner string, o DeliveryOutcome) (bool, error)
}
