// Package usage turns capsule metric snapshots into usage figures: an
// hourly worker rolls completed UTC days into daily_usage (idempotently:
// re-running it rewrites the same rows), and queries combine those rollups
// with today's figures computed live from the snapshots.
//
// Units: one snapshot covers IntervalMS milliseconds during which the
// capsule used CPUCores cores on average and MemBytes bytes of memory. It
// contributes CPUCores × minutes to cpu_minutes and MemBytes/MiB × minutes
// to ram_mb_minutes of the UTC day its timestamp falls in.
package usage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/wrenn-dev/wrenn/internal/store"
)

// MaxRangeDays is the longest range a usage query may ask for.
const MaxRangeDays = 92

// ErrBadRange is returned for malformed or too long date ranges.
var ErrBadRange = errors.New("bad usage range")

// Store is the part of the store this package uses.
type Store interface {
	ListTeamMetricSnapshots(ctx context.Context, teamID string, from, to time.Time) ([]store.MetricSnapshot, error)
	ListTeamsWithMetricSnapshots(ctx context.Context, from, to time.Time) ([]string, error)
	UpsertDailyUsage(ctx context.Context, rows []store.DailyUsage) error
	ListDailyUsage(ctx context.Context, teamID string, from, to time.Time) ([]store.DailyUsage, error)
}

// Day is one day of a team's usage.
type Day struct {
	Date         string  `json:"date"` // YYYY-MM-DD (UTC)
	CPUMinutes   float64 `json:"cpu_minutes"`
	RAMMBMinutes float64 `json:"ram_mb_minutes"`
	// Live is true for today, computed from snapshots at query time.
	Live bool `json:"live,omitempty"`
}

// Report is the answer to a usage query.
type Report struct {
	From   string `json:"from"`
	To     string `json:"to"`
	Days   []Day  `json:"days"`
	Totals struct {
		CPUMinutes   float64 `json:"cpu_minutes"`
		RAMMBMinutes float64 `json:"ram_mb_minutes"`
	} `json:"totals"`
}

// Service computes usage. Now is injectable for tests.
type Service struct {
	Store Store
	Now   func() time.Time
	Log   *slog.Logger
	// Lookback is how many completed days each rollup pass rewrites
	// (default 3), so late snapshots are still counted.
	Lookback int
	// Gate, when set, is asked before each pass in Run; a pass runs only
	// when it answers true (lease.Keeper.Gate: one replica rolls up).
	Gate func(context.Context) bool
}

func (s *Service) now() time.Time {
	if s.Now != nil {
		return s.Now().UTC()
	}
	return time.Now().UTC()
}

// ParseRange validates a from/to pair of YYYY-MM-DD dates (inclusive).
func ParseRange(from, to string) (time.Time, time.Time, error) {
	f, err := time.Parse(time.DateOnly, from)
	if err != nil {
		return time.Time{}, time.Time{}, fmt.Errorf("%w: from must be a date YYYY-MM-DD", ErrBadRange)
	}
	t, err := time.Parse(time.DateOnly, to)
	if err != nil {
		return time.Time{}, time.Time{}, fmt.Errorf("%w: to must be a date YYYY-MM-DD", ErrBadRange)
	}
	if t.Before(f) {
		return time.Time{}, time.Time{}, fmt.Errorf("%w: to is before from", ErrBadRange)
	}
	if days := int(t.Sub(f)/(24*time.Hour)) + 1; days > MaxRangeDays {
		return time.Time{}, time.Time{}, fmt.Errorf("%w: %d days asked, at most %d", ErrBadRange, days, MaxRangeDays)
	}
	return f, t, nil
}

// Aggregate sums snapshots per UTC day.
func Aggregate(teamID string, snaps []store.MetricSnapshot) map[time.Time]store.DailyUsage {
	out := map[time.Time]store.DailyUsage{}
	for _, sn := range snaps {
		day := store.Day(sn.TS)
		minutes := float64(sn.IntervalMS) / 60000
		u := out[day]
		u.TeamID, u.Day = teamID, day
		u.CPUMinutes += sn.CPUCores * minutes
		u.RAMMBMinutes += float64(sn.MemBytes) / (1 << 20) * minutes
		out[day] = u
	}
	return out
}

// RollupDay writes daily_usage rows for every team with snapshots on day.
func (s *Service) RollupDay(ctx context.Context, day time.Time) (int, error) {
	day = store.Day(day)
	next := day.AddDate(0, 0, 1)
	teams, err := s.Store.ListTeamsWithMetricSnapshots(ctx, day, next)
	if err != nil {
		return 0, fmt.Errorf("list teams: %w", err)
	}
	var rows []store.DailyUsage
	for _, team := range teams {
		snaps, err := s.Store.ListTeamMetricSnapshots(ctx, team, day, next)
		if err != nil {
			return 0, fmt.Errorf("snapshots of %s: %w", team, err)
		}
		if u, ok := Aggregate(team, snaps)[day]; ok {
			rows = append(rows, u)
		}
	}
	if len(rows) == 0 {
		return 0, nil
	}
	if err := s.Store.UpsertDailyUsage(ctx, rows); err != nil {
		return 0, fmt.Errorf("upsert daily usage: %w", err)
	}
	return len(rows), nil
}

// RollupCompleted rolls the last Lookback completed days (never today).
func (s *Service) RollupCompleted(ctx context.Context) error {
	lookback := s.Lookback
	if lookback <= 0 {
		lookback = 3
	}
	today := store.Day(s.now())
	for i := lookback; i >= 1; i-- {
		if _, err := s.RollupDay(ctx, today.AddDate(0, 0, -i)); err != nil {
			return err
		}
	}
	return nil
}

// Run rolls completed days now and then every interval (default 1 h) until
// ctx is done.
func (s *Service) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = time.Hour
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if s.Gate == nil || s.Gate(ctx) {
			if err := s.RollupCompleted(ctx); err != nil && ctx.Err() == nil && s.Log != nil {
				s.Log.Warn("usage rollup failed", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Query returns a team's usage for [from, to] (inclusive dates, UTC):
// rolled-up figures for completed days and live figures for today.
// Days after today are reported as zero.
func (s *Service) Query(ctx context.Context, teamID string, from, to time.Time) (Report, error) {
	from, to = store.Day(from), store.Day(to)
	var rep Report
	rep.From, rep.To = from.Format(time.DateOnly), to.Format(time.DateOnly)
	rolled, err := s.Store.ListDailyUsage(ctx, teamID, from, to)
	if err != nil {
		return rep, fmt.Errorf("daily usage: %w", err)
	}
	byDay := map[time.Time]store.DailyUsage{}
	for _, r := range rolled {
		byDay[store.Day(r.Day)] = r
	}
	today := store.Day(s.now())
	if !today.Before(from) && !today.After(to) {
		snaps, err := s.Store.ListTeamMetricSnapshots(ctx, teamID, today, today.AddDate(0, 0, 1))
		if err != nil {
			return rep, fmt.Errorf("today's snapshots: %w", err)
		}
		byDay[today] = Aggregate(teamID, snaps)[today]
	}
	for d := from; !d.After(to); d = d.AddDate(0, 0, 1) {
		u := byDay[d]
		day := Day{Date: d.Format(time.DateOnly), CPUMinutes: round(u.CPUMinutes), RAMMBMinutes: round(u.RAMMBMinutes), Live: d.Equal(today)}
		rep.Days = append(rep.Days, day)
		rep.Totals.CPUMinutes += u.CPUMinutes
		rep.Totals.RAMMBMinutes += u.RAMMBMinutes
	}
	rep.Totals.CPUMinutes, rep.Totals.RAMMBMinutes = round(rep.Totals.CPUMinutes), round(rep.Totals.RAMMBMinutes)
	return rep, nil
}

// round keeps 4 decimals, enough for minutes and stable across engines.
func round(v float64) float64 {
	const p = 1e4
	if v < 0 {
		return -round(-v)
	}
	return float64(int64(v*p+0.5)) / p
}
