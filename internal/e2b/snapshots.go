package e2b

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"slices"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/store"
)

// snapshotInfo is E2B's SnapshotInfo: the template a sandbox was
// snapshotted into, usable as a create's templateID.
type snapshotInfo struct {
	SnapshotID string   `json:"snapshotID"`
	Names      []string `json:"names"`
}

type snapshotBody struct {
	Name *string `json:"name"`
}

// createSnapshot is POST /sandboxes/{id}/snapshots: the running sandbox
// becomes a team template (files and, where the host can, memory — so
// sandboxes created from it start with its processes running) through the
// capsule service; the sandbox keeps running. Without a name one is made
// up. Unlike E2B, a name that is taken is a 409 (no new build is added to
// an existing template).
func (h *Handler) createSnapshot(w http.ResponseWriter, r *http.Request) {
	var body snapshotBody
	if err := h.decode(w, r, &body); err != nil {
		h.fail(w, r, err)
		return
	}
	name := ""
	if body.Name != nil {
		name = *body.Name
	}
	if name == "" {
		var b [4]byte
		_, _ = rand.Read(b[:])
		name = "snapshot-" + hex.EncodeToString(b[:])
	}
	t, _, err := h.cfg.Capsules.Snapshot(r.Context(), scope(r), chi.URLParam(r, "id"), capsules.SnapshotRequest{Name: name})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, snapshotInfo{SnapshotID: t.Name, Names: []string{t.Name}})
}

// listSnapshots is GET /snapshots: the team's templates made from
// sandboxes, newest first, optionally only those of ?sandboxID= and at
// most ?limit= of them.
func (h *Handler) listSnapshots(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := 100
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			writeError(w, http.StatusBadRequest, "limit must be a number from 1 to 1000")
			return
		}
		limit = n
	}
	ts, err := h.cfg.Store.ListTemplates(r.Context(), scope(r).TeamID)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	slices.SortStableFunc(ts, func(a, b store.Template) int { return b.CreatedAt.Compare(a.CreatedAt) })
	out := []snapshotInfo{}
	for _, t := range ts {
		if len(out) == limit {
			break
		}
		if t.TeamID != scope(r).TeamID || t.SourceCapsuleID == "" {
			continue
		}
		if sb := q.Get("sandboxID"); sb != "" && sb != t.SourceCapsuleID {
			continue
		}
		out = append(out, snapshotInfo{SnapshotID: t.Name, Names: []string{t.Name}})
	}
	writeJSON(w, http.StatusOK, out)
}
