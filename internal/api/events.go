package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/events"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/webhooks"
	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
)

// sseKeepAlive is how often an idle event stream gets a comment.
const sseKeepAlive = 15 * time.Second

func toEventJSON(e store.Event) wrennapi.Event {
	out := wrennapi.Event{
		ID: strconv.FormatInt(e.ID, 10), Type: wrennapi.EventType(e.Type), Time: e.CreatedAt, TeamID: e.TeamID,
		Subject: e.Subject, Data: map[string]any{},
	}
	_ = json.Unmarshal(e.Data, &out.Data)
	return out
}

// eventFilter parses type, subject and limit; the cursor is the caller's.
func eventFilter(r *http.Request) (store.EventFilter, error) {
	q := r.URL.Query()
	f := store.EventFilter{Type: q.Get("type"), Subject: q.Get("subject")}
	if f.Type != "" && !events.ValidType(f.Type) {
		return f, errorf(CodeInvalidArgument, "unknown event type %q", clip(f.Type))
	}
	if len(f.Subject) > 128 {
		return f, errorf(CodeInvalidArgument, "subject is longer than 128 bytes")
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			return f, errorf(CodeInvalidArgument, "limit must be an integer from 1 to 1000")
		}
		f.Limit = n
	}
	return f, nil
}

func parseEventID(name, s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, errorf(CodeInvalidArgument, "%s must be an event id", name)
	}
	return n, nil
}

// listEvents is GET /v1/events: the team's log after cursor, oldest first.
func (a *API) listEvents(w http.ResponseWriter, r *http.Request) {
	f, err := eventFilter(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if f.AfterID, err = parseEventID("cursor", r.URL.Query().Get("cursor")); err != nil {
		a.writeError(w, r, err)
		return
	}
	if f.Limit == 0 {
		f.Limit = 100
	}
	evs, err := a.cfg.Store.ListEvents(r.Context(), caller(r.Context()).TeamID, f)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	page := wrennapi.EventPage{Events: make([]wrennapi.Event, 0, len(evs))}
	for _, e := range evs {
		page.Events = append(page.Events, toEventJSON(e))
	}
	if len(evs) == f.Limit {
		page.NextCursor = strconv.FormatInt(evs[len(evs)-1].ID, 10)
	}
	writeJSON(w, http.StatusOK, page)
}

// streamEvents is GET /v1/events/stream: Server-Sent Events, resumable
// with Last-Event-ID (or ?last_event_id=). Without either it starts with
// the events written from now on.
func (a *API) streamEvents(w http.ResponseWriter, r *http.Request) {
	if a.cfg.EventHub == nil {
		a.writeError(w, r, errorf(CodeUnavailable, "the event stream is not enabled on this server"))
		return
	}
	f, err := eventFilter(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	last := r.Header.Get("Last-Event-ID")
	if last == "" {
		last = r.URL.Query().Get("last_event_id")
	}
	if last == "" {
		// Live only: start after the newest event.
		f.AfterID, err = a.cfg.Store.LastEventID(r.Context())
		if err != nil {
			a.writeError(w, r, err)
			return
		}
	} else if f.AfterID, err = parseEventID("Last-Event-ID", last); err != nil {
		a.writeError(w, r, err)
		return
	}
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	if _, err := fmt.Fprint(w, "retry: 2000\n\n"); err != nil {
		return
	}
	_ = rc.Flush()
	ctx := r.Context()
	err = events.Follow(ctx, a.cfg.EventHub, a.cfg.Store, caller(ctx).TeamID, f, sseKeepAlive,
		func(e store.Event) error {
			b, err := json.Marshal(toEventJSON(e))
			if err != nil {
				return err
			}
			if _, err := fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", e.ID, e.Type, b); err != nil {
				return err
			}
			return rc.Flush()
		},
		func() error {
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return err
			}
			return rc.Flush()
		})
	if err != nil && ctx.Err() == nil {
		a.log.WarnContext(ctx, "event stream ended", "err", err)
	}
}

// ---- webhooks ----

func toWebhookJSON(h store.Webhook) wrennapi.Webhook {
	types := h.EventTypes
	if types == nil {
		types = []string{}
	}
	return wrennapi.Webhook{ID: h.ID, URL: h.URL, EventTypes: types, Enabled: h.Enabled, CreatedAt: h.CreatedAt, UpdatedAt: h.UpdatedAt}
}

func toDeliveryJSON(d store.WebhookDelivery) wrennapi.WebhookDelivery {
	ev := strconv.FormatInt(d.EventID, 10)
	if d.EventID == 0 {
		ev = "test-" + strconv.FormatInt(d.ID, 10)
	}
	return wrennapi.WebhookDelivery{
		ID: d.ID, EventID: ev, EventType: d.EventType, Status: wrennapi.WebhookDeliveryStatus(d.Status),
		Attempts: d.Attempts, NextAttemptAt: d.NextAttemptAt, LastAttemptAt: d.LastAttemptAt,
		ResponseStatus: d.ResponseStatus, LastError: d.LastError, CreatedAt: d.CreatedAt,
	}
}

// webhookErr maps the webhook service's errors onto API errors.
func webhookErr(err error) error {
	var ie *webhooks.InvalidError
	if errors.As(err, &ie) {
		return errorf(CodeInvalidArgument, "%s", ie.Msg)
	}
	if errors.Is(err, store.ErrNotFound) {
		return errorf(CodeNotFound, "webhook not found")
	}
	return err
}

// webhookAdmin checks the caller may manage the team's webhooks (team
// admins and owners: endpoints receive every event and hold secrets).
func (a *API) webhookAdmin(w http.ResponseWriter, r *http.Request) (teamID string, ok bool) {
	p := caller(r.Context())
	if !roleAtLeast(p.Role, store.RoleAdmin) {
		a.writeError(w, r, errorf(CodePermissionDenied, "webhooks need the admin role in the team"))
		return "", false
	}
	if a.cfg.Webhooks == nil {
		a.writeError(w, r, errorf(CodeUnavailable, "webhooks are not enabled on this server"))
		return "", false
	}
	return p.TeamID, true
}

func (a *API) listWebhooks(w http.ResponseWriter, r *http.Request) {
	team, ok := a.webhookAdmin(w, r)
	if !ok {
		return
	}
	hs, err := a.cfg.Webhooks.List(r.Context(), team)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	out := wrennapi.WebhookList{Webhooks: make([]wrennapi.Webhook, 0, len(hs))}
	for _, h := range hs {
		out.Webhooks = append(out.Webhooks, toWebhookJSON(h))
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) createWebhook(w http.ResponseWriter, r *http.Request) {
	team, ok := a.webhookAdmin(w, r)
	if !ok {
		return
	}
	var req wrennapi.CreateWebhook
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	sp := webhooks.Spec{URL: &req.URL, Enabled: req.Enabled}
	if req.EventTypes != nil {
		sp.EventTypes = &req.EventTypes
	}
	h, secret, err := a.cfg.Webhooks.Create(r.Context(), team, sp)
	a.audit(r, team, "webhook", h.ID, "create", err, map[string]any{"url": req.URL})
	if err != nil {
		a.writeError(w, r, webhookErr(err))
		return
	}
	out := toWebhookJSON(h)
	out.Secret = secret
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusCreated, out)
}

func (a *API) getWebhook(w http.ResponseWriter, r *http.Request) {
	team, ok := a.webhookAdmin(w, r)
	if !ok {
		return
	}
	h, err := a.cfg.Webhooks.Get(r.Context(), team, chi.URLParam(r, "webhookID"))
	if err != nil {
		a.writeError(w, r, webhookErr(err))
		return
	}
	writeJSON(w, http.StatusOK, toWebhookJSON(h))
}

func (a *API) updateWebhook(w http.ResponseWriter, r *http.Request) {
	team, ok := a.webhookAdmin(w, r)
	if !ok {
		return
	}
	var req wrennapi.UpdateWebhook
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	id := chi.URLParam(r, "webhookID")
	h, err := a.cfg.Webhooks.Update(r.Context(), team, id, webhooks.Spec{URL: req.URL, EventTypes: req.EventTypes, Enabled: req.Enabled})
	a.audit(r, team, "webhook", id, "update", err, nil)
	if err != nil {
		a.writeError(w, r, webhookErr(err))
		return
	}
	writeJSON(w, http.StatusOK, toWebhookJSON(h))
}

func (a *API) deleteWebhook(w http.ResponseWriter, r *http.Request) {
	team, ok := a.webhookAdmin(w, r)
	if !ok {
		return
	}
	id := chi.URLParam(r, "webhookID")
	err := a.cfg.Webhooks.Delete(r.Context(), team, id)
	a.audit(r, team, "webhook", id, "delete", err, nil)
	if err != nil {
		a.writeError(w, r, webhookErr(err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) testWebhook(w http.ResponseWriter, r *http.Request) {
	team, ok := a.webhookAdmin(w, r)
	if !ok {
		return
	}
	d, err := a.cfg.Webhooks.Test(r.Context(), team, chi.URLParam(r, "webhookID"))
	if err != nil {
		a.writeError(w, r, webhookErr(err))
		return
	}
	writeJSON(w, http.StatusAccepted, toDeliveryJSON(d))
}

func (a *API) rotateWebhookSecret(w http.ResponseWriter, r *http.Request) {
	team, ok := a.webhookAdmin(w, r)
	if !ok {
		return
	}
	id := chi.URLParam(r, "webhookID")
	secret, err := a.cfg.Webhooks.Rotate(r.Context(), team, id)
	a.audit(r, team, "webhook", id, "rotate_secret", err, nil)
	if err != nil {
		a.writeError(w, r, webhookErr(err))
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, wrennapi.WebhookSecret{Secret: secret})
}

func (a *API) webhookDeliveries(w http.ResponseWriter, r *http.Request) {
	team, ok := a.webhookAdmin(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	before, err := parseEventID("cursor", q.Get("cursor"))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	limit := 50
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 500 {
			a.writeError(w, r, errorf(CodeInvalidArgument, "limit must be an integer from 1 to 500"))
			return
		}
		limit = n
	}
	ds, err := a.cfg.Webhooks.Deliveries(r.Context(), team, chi.URLParam(r, "webhookID"), before, limit)
	if err != nil {
		a.writeError(w, r, webhookErr(err))
		return
	}
	out := wrennapi.WebhookDeliveryPage{Deliveries: make([]wrennapi.WebhookDelivery, 0, len(ds))}
	for _, d := range ds {
		out.Deliveries = append(out.Deliveries, toDeliveryJSON(d))
	}
	if len(ds) == limit {
		out.NextCursor = strconv.FormatInt(ds[len(ds)-1].ID, 10)
	}
	writeJSON(w, http.StatusOK, out)
}
