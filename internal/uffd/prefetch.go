package uffd

import (
	"context"
	"errors"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// unit is a prefetch work item: pages [i, j) of r.
type unit struct {
	r    *region
	i, j int
}

// plan lists the prefetch work: the source's recorded order first (runs of
// consecutive pages coalesced), then every page of every region in address
// order, in chunks.
func (s *Server) plan() []unit {
	var units []unit
	chunk := func(r *region) int { return max(1, int(uint64(s.cfg.PrefetchChunk)/r.ps)) }
	if po, ok := s.cfg.Source.(PrefetchOrderer); ok {
		byOff := append([]*region(nil), s.regions...)
		sort.Slice(byOff, func(a, b int) bool { return byOff[a].Offset < byOff[b].Offset })
		for _, off := range po.PrefetchOrder() {
			k := sort.Search(len(byOff), func(k int) bool { return int64(byOff[k].Offset+byOff[k].Size) > off })
			if off < 0 || k == len(byOff) || int64(byOff[k].Offset) > off {
				continue
			}
			r := byOff[k]
			i := int((uint64(off) - r.Offset) / r.ps)
			if n := len(units); n > 0 && units[n-1].r == r && units[n-1].j == i && i-units[n-1].i < chunk(r) {
				units[n-1].j++
				continue
			}
			units = append(units, unit{r: r, i: i, j: i + 1})
		}
	}
	for _, r := range s.regions {
		c := chunk(r)
		for i := 0; i < r.pages; i += c {
			units = append(units, unit{r: r, i: i, j: min(i+c, r.pages)})
		}
	}
	return units
}

// prefetch populates every page not yet present or removed, after the first
// fault (or PrefetchDelay). It closes prefetchDone when all pages are done.
func (s *Server) prefetch(ctx context.Context, uffd int) {
	t := time.NewTimer(s.cfg.PrefetchDelay)
	defer t.Stop()
	select {
	case <-s.startPrefetch:
	case <-t.C:
	case <-ctx.Done():
		return
	}
	units := s.plan()
	var next atomic.Int64
	var failed atomic.Bool
	var wg sync.WaitGroup
	for range s.cfg.PrefetchWorkers {
		wg.Go(func() {
			buf := make([]byte, len(s.zeroBuf))
			for {
				k := int(next.Add(1) - 1)
				if k >= len(units) || failed.Load() {
					return
				}
				u := units[k]
				if err := s.prefetchRange(ctx, uffd, u.r, u.i, u.j, buf); err != nil {
					failed.Store(true)
					if !errors.Is(err, errPeerGone) && ctx.Err() == nil {
						s.log.Error("uffd: prefetch stopped; remaining pages load on fault", "err", err)
					}
					return
				}
			}
		})
	}
	wg.Wait()
	if failed.Load() || ctx.Err() != nil {
		return
	}
	s.prefetchNs.Store(int64(max(time.Since(s.start), 1)))
	close(s.prefetchDone)
	st := s.Stats()
	s.log.Debug("uffd: prefetch done", "pages", st.Pages, "prefetched", st.PrefetchedPages, "faults", st.Faults, "took", st.TimeToFullPrefetch)
}

// prefetchRange populates the pages of [i, j) of r that are neither present
// nor removed, in runs of pages that are all data or all zeros.
func (s *Server) prefetchRange(ctx context.Context, uffd int, r *region, i, j int, buf []byte) error {
	for i < j {
		if err := ctx.Err(); err != nil {
			return err
		}
		if r.present.get(i) || r.removed.get(i) {
			i++
			continue
		}
		zero := s.pageZero(r, i)
		k := i + 1
		for k < j && uint64(k-i+1)*r.ps <= uint64(len(buf)) && !r.present.get(k) && !r.removed.get(k) && s.pageZero(r, k) == zero {
			k++
		}
		data := buf[:uint64(k-i)*r.ps]
		if !zero {
			if _, err := s.cfg.Source.ReadAt(data, r.imageOff(i)); err != nil {
				return err
			}
		}
		s.removeMu.RLock()
		m := i
		for m < k && !r.removed.get(m) {
			m++
		}
		var done, copied int
		var err error
		if m > i {
			done, copied, err = s.populate(uffd, r, i, m, zero, data)
		}
		s.removeMu.RUnlock()
		s.prefetched.Add(uint64(copied))
		switch {
		case err == nil:
			i = max(m, i+1)
		case errors.Is(err, errMapChanging):
			s.retries.Add(1)
			i += done
			time.Sleep(100 * time.Microsecond)
		case errors.Is(err, errUnmapped):
			return nil
		default:
			return err
		}
	}
	return nil
}
