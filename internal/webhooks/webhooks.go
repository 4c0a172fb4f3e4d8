// Package webhooks owns team webhook endpoints and their delivery: the
// endpoint service (create, update, rotate, test, list deliveries), the
// signature (Sign, Verify), the sealing of endpoint secrets at rest, the
// SSRF guard and the Dispatcher that drains the outbox.
//
// Invariants:
//   - An endpoint's secret is shown once (create, rotate) and stored only
//     sealed (AES-GCM under a key derived from the server secret).
//   - Deliveries are at least once: a delivery row leaves pending only when
//     the receiver answered 2xx (delivered) or its retry window (24 h by
//     default) ran out (failed). Rows live in the store, so a restart
//     resumes where the last replica stopped.
//   - One replica at a time delivers to an endpoint (a lease on the
//     endpoint row, renewed per delivery), and it delivers that endpoint's
//     rows in event order: a failing delivery holds back the later ones
//     until it succeeds or fails for good. So a receiver sees each
//     endpoint's events in order, each once unless an attempt's answer was
//     lost.
//   - Every connection goes through the Guard's dial-time check; redirects
//     are not followed.
package webhooks

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/wrenn-dev/wrenn/internal/events"
	"github.com/wrenn-dev/wrenn/internal/store"
)

// InvalidError is a client mistake (a 400 with Msg).
type InvalidError struct{ Msg string }

func (e *InvalidError) Error() string { return e.Msg }

func invalid(format string, args ...any) error {
	return &InvalidError{Msg: fmt.Sprintf(format, args...)}
}

// MaxPerTeam bounds a team's endpoints.
const MaxPerTeam = 20

// Service manages endpoints.
type Service struct {
	Store  store.Store
	Sealer *Sealer
	Guard  *Guard
	// OnQueued wakes the dispatcher after a test delivery was queued.
	OnQueued func()
}

// Spec is the writable part of an endpoint; nil fields are unchanged
// (Update) or take defaults (Create: enabled, every type).
type Spec struct {
	URL        *string
	EventTypes *[]string
	Enabled    *bool
}

func (s *Service) checkTypes(types []string) ([]string, error) {
	out := make([]string, 0, len(types))
	for _, t := range types {
		if !events.ValidType(t) {
			return nil, invalid("unknown event type %q (one of: %s)", t, strings.Join(events.Types, ", "))
		}
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	return out, nil
}

func (s *Service) checkURL(ctx context.Context, u string) error {
	if err := s.Guard.CheckURL(ctx, u); err != nil {
		if errors.Is(err, ErrForbiddenAddress) {
			return invalid("url refused: %v (the operator can allow private addresses with --webhook-allow-private)", err)
		}
		return invalid("%v", err)
	}
	return nil
}

// Create adds an endpoint; secret is returned once, never again.
func (s *Service) Create(ctx context.Context, teamID string, sp Spec) (w store.Webhook, secret string, err error) {
	if sp.URL == nil || *sp.URL == "" {
		return w, "", invalid("url is required")
	}
	if err := s.checkURL(ctx, *sp.URL); err != nil {
		return w, "", err
	}
	var types []string
	if sp.EventTypes != nil {
		if types, err = s.checkTypes(*sp.EventTypes); err != nil {
			return w, "", err
		}
	}
	existing, err := s.Store.ListWebhooks(ctx, teamID)
	if err != nil {
		return w, "", err
	}
	if len(existing) >= MaxPerTeam {
		return w, "", invalid("a team has at most %d webhooks", MaxPerTeam)
	}
	enabled := sp.Enabled == nil || *sp.Enabled
	secret = NewSecret()
	w, err = s.Store.CreateWebhook(ctx, store.Webhook{TeamID: teamID, URL: *sp.URL, EventTypes: types, Enabled: enabled, SecretSealed: s.Sealer.Seal(secret)})
	return w, secret, err
}

// Get returns a team's endpoint.
func (s *Service) Get(ctx context.Context, teamID, id string) (store.Webhook, error) {
	if !store.IsID(store.PrefixWebhook, id) {
		return store.Webhook{}, fmt.Errorf("webhook %q: %w", id, store.ErrNotFound)
	}
	return s.Store.GetWebhook(ctx, teamID, id)
}

// List returns a team's endpoints.
func (s *Service) List(ctx context.Context, teamID string) ([]store.Webhook, error) {
	return s.Store.ListWebhooks(ctx, teamID)
}

// Update changes an endpoint's URL, types or enabled flag.
func (s *Service) Update(ctx context.Context, teamID, id string, sp Spec) (store.Webhook, error) {
	w, err := s.Get(ctx, teamID, id)
	if err != nil {
		return w, err
	}
	if sp.URL != nil {
		if err := s.checkURL(ctx, *sp.URL); err != nil {
			return w, err
		}
		w.URL = *sp.URL
	}
	if sp.EventTypes != nil {
		if w.EventTypes, err = s.checkTypes(*sp.EventTypes); err != nil {
			return w, err
		}
	}
	if sp.Enabled != nil {
		w.Enabled = *sp.Enabled
	}
	if err := s.Store.UpdateWebhook(ctx, w); err != nil {
		return w, err
	}
	return s.Store.GetWebhook(ctx, teamID, id)
}

// Delete removes an endpoint and its pending deliveries.
func (s *Service) Delete(ctx context.Context, teamID, id string) error {
	if _, err := s.Get(ctx, teamID, id); err != nil {
		return err
	}
	return s.Store.DeleteWebhook(ctx, teamID, id)
}

// Rotate replaces an endpoint's secret; the new one is returned once.
// Deliveries signed from now on use it.
func (s *Service) Rotate(ctx context.Context, teamID, id string) (string, error) {
	if _, err := s.Get(ctx, teamID, id); err != nil {
		return "", err
	}
	secret := NewSecret()
	return secret, s.Store.SetWebhookSecret(ctx, teamID, id, s.Sealer.Seal(secret))
}

// Test queues a webhook.test delivery to the endpoint (enabled or not).
func (s *Service) Test(ctx context.Context, teamID, id string) (store.WebhookDelivery, error) {
	w, err := s.Get(ctx, teamID, id)
	if err != nil {
		return store.WebhookDelivery{}, err
	}
	ev := store.Event{TeamID: teamID, Type: events.WebhookTest, Subject: w.ID, CreatedAt: store.Now(), Data: []byte(`{"message":"test delivery from Wrenn"}`)}
	body, err := events.Body(ev)
	if err != nil {
		return store.WebhookDelivery{}, err
	}
	d, err := s.Store.EnqueueWebhookDelivery(ctx, store.WebhookDelivery{WebhookID: w.ID, TeamID: teamID, EventType: events.WebhookTest, Body: body})
	if err == nil && s.OnQueued != nil {
		s.OnQueued()
	}
	return d, err
}

// Deliveries pages an endpoint's deliveries, newest first.
func (s *Service) Deliveries(ctx context.Context, teamID, id string, beforeID int64, limit int) ([]store.WebhookDelivery, error) {
	if _, err := s.Get(ctx, teamID, id); err != nil {
		return nil, err
	}
	return s.Store.ListWebhookDeliveries(ctx, teamID, id, beforeID, limit)
}
