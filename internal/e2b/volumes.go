package e2b

import (
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/store"
)

// E2B's volume routes (docs/VOLUMES.md, docs/E2B.md) over the capsule
// service's volumes: volumeID is Wrenn's vol-… id, name the team's volume
// name. E2B's volume content service (the token in VolumeAndToken) has
// no counterpart: files of a volume go through Wrenn's
// /v1/volumes/{name}/files routes, so token is empty.

type e2bVolume struct {
	VolumeID string `json:"volumeID"`
	Name     string `json:"name"`
}

type e2bVolumeAndToken struct {
	VolumeID string `json:"volumeID"`
	Name     string `json:"name"`
	Token    string `json:"token"`
}

type newVolume struct {
	Name string `json:"name"`
}

// volumeMount is E2B's SandboxVolumeMount.
type volumeMount struct {
	Name string `json:"name"`
	Path string `json:"path"`
}

func toVolumeMounts(ms []volumeMount) []capsules.VolumeMountRequest {
	out := make([]capsules.VolumeMountRequest, 0, len(ms))
	for _, m := range ms {
		out = append(out, capsules.VolumeMountRequest{Name: m.Name, Path: m.Path})
	}
	return out
}

func (h *Handler) listVolumes(w http.ResponseWriter, r *http.Request) {
	vs, err := h.cfg.Capsules.ListVolumes(r.Context(), scope(r))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := make([]e2bVolume, 0, len(vs))
	for _, v := range vs {
		out = append(out, e2bVolume{VolumeID: v.ID, Name: v.Name})
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *Handler) createVolume(w http.ResponseWriter, r *http.Request) {
	var req newVolume
	if err := h.decode(w, r, &req); err != nil {
		h.fail(w, r, err)
		return
	}
	v, err := h.cfg.Capsules.CreateVolume(r.Context(), scope(r), req.Name, nil)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, e2bVolumeAndToken{VolumeID: v.ID, Name: v.Name})
}

// volumeByID finds the team's volume by its id (E2B addresses volumes by
// id; Wrenn's service by name).
func (h *Handler) volumeByID(r *http.Request) (store.Volume, bool, error) {
	id := chi.URLParam(r, "vid")
	vs, err := h.cfg.Capsules.ListVolumes(r.Context(), scope(r))
	if err != nil {
		return store.Volume{}, false, err
	}
	for _, v := range vs {
		if v.ID == id {
			return v, true, nil
		}
	}
	return store.Volume{}, false, nil
}

func (h *Handler) getVolume(w http.ResponseWriter, r *http.Request) {
	v, ok, err := h.volumeByID(r)
	switch {
	case err != nil:
		h.fail(w, r, err)
	case !ok:
		writeError(w, http.StatusNotFound, "volume not found")
	default:
		writeJSON(w, http.StatusOK, e2bVolumeAndToken{VolumeID: v.ID, Name: v.Name})
	}
}

func (h *Handler) deleteVolume(w http.ResponseWriter, r *http.Request) {
	v, ok, err := h.volumeByID(r)
	switch {
	case err != nil:
		h.fail(w, r, err)
		return
	case !ok:
		writeError(w, http.StatusNotFound, "volume not found")
		return
	}
	if err := h.cfg.Capsules.DeleteVolume(r.Context(), scope(r), v.Name); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
