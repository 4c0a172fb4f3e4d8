package events

import (
	"context"
	"time"

	"github.com/wrenn-dev/wrenn/internal/store"
)

// LogStore reads a team's log.
type LogStore interface {
	ListEvents(ctx context.Context, teamID string, f store.EventFilter) ([]store.Event, error)
}

// Follow sends team teamID's events after f.AfterID that match f (type,
// subject) to send, in id order, first from the log, then live from the
// hub, until ctx ends or send fails. idle is called when nothing was sent
// for keepAlive (SSE comments keep proxies from closing the stream).
func Follow(ctx context.Context, hub *Hub, st LogStore, teamID string, f store.EventFilter, keepAlive time.Duration,
	send func(store.Event) error, idle func() error,
) error {
	// Subscribe before reading the backlog, so nothing falls between the
	// two; what both deliver is skipped by id.
	sub := hub.Subscribe()
	defer hub.Unsubscribe(sub)
	// Events stored before the hub started are not broadcast: read the
	// backlog only once it has.
	select {
	case <-hub.Ready():
	case <-ctx.Done():
		return ctx.Err()
	}
	last := f.AfterID
	catchUp := func() error {
		for {
			evs, err := st.ListEvents(ctx, teamID, store.EventFilter{AfterID: last, Type: f.Type, Subject: f.Subject, Limit: 500})
			if err != nil {
				return err
			}
			for _, e := range evs {
				if err := send(e); err != nil {
					return err
				}
				last = e.ID
			}
			if len(evs) < 500 {
				return nil
			}
		}
	}
	if err := catchUp(); err != nil {
		return err
	}
	if keepAlive <= 0 {
		keepAlive = 15 * time.Second
	}
	ka := time.NewTimer(keepAlive)
	defer ka.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-sub.Lagged:
			if err := catchUp(); err != nil {
				return err
			}
		case evs := <-sub.C:
			sent := false
			for _, e := range evs {
				if e.ID <= last || e.TeamID != teamID || (f.Type != "" && e.Type != f.Type) || (f.Subject != "" && e.Subject != f.Subject) {
					continue
				}
				if err := send(e); err != nil {
					return err
				}
				last, sent = e.ID, true
			}
			if !sent {
				continue
			}
		case <-ka.C:
			if err := idle(); err != nil {
				return err
			}
		}
		ka.Reset(keepAlive)
	}
}
