package api

import (
	"io"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
)

// Volumes (docs/VOLUMES.md): thin handlers over the capsule service's
// volume calls.

func toVolumeJSON(v store.Volume, mounts []store.VolumeMount) wrennapi.Volume {
	out := wrennapi.Volume{
		ID: v.ID, Name: v.Name, SizeMB: v.SizeMB, CreatedAt: v.CreatedAt, UpdatedAt: v.UpdatedAt,
		Location: wrennapi.VolumeLocationStore, Mounts: []wrennapi.VolumeMountStatus{},
	}
	for _, m := range mounts {
		out.Location, out.HostID = wrennapi.VolumeLocationHost, m.HostID
		out.Mounts = append(out.Mounts, wrennapi.VolumeMountStatus{CapsuleID: m.CapsuleID, Path: m.Path, ReadOnly: m.ReadOnly})
	}
	return out
}

func volumeName(r *http.Request) string { return chi.URLParam(r, "volumeName") }

func (a *API) createVolume(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.CreateVolume
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	v, err := a.capsules.CreateVolume(r.Context(), scope(r), req.Name, req.SizeMB)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, toVolumeJSON(v, nil))
}

func (a *API) listVolumes(w http.ResponseWriter, r *http.Request) {
	vs, err := a.capsules.ListVolumes(r.Context(), scope(r))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	out := wrennapi.VolumeList{Volumes: make([]wrennapi.Volume, 0, len(vs))}
	for _, v := range vs {
		info, err := a.capsules.GetVolume(r.Context(), scope(r), v.Name)
		if err != nil {
			a.writeError(w, r, err)
			return
		}
		out.Volumes = append(out.Volumes, toVolumeJSON(info.Volume, info.Mounts))
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) getVolume(w http.ResponseWriter, r *http.Request) {
	info, err := a.capsules.GetVolume(r.Context(), scope(r), volumeName(r))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toVolumeJSON(info.Volume, info.Mounts))
}

func (a *API) deleteVolume(w http.ResponseWriter, r *http.Request) {
	if err := a.capsules.DeleteVolume(r.Context(), scope(r), volumeName(r)); err != nil {
		a.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) readVolumeFile(w http.ResponseWriter, r *http.Request) {
	path, err := pathParam(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	b, err := a.capsules.VolumeReadFile(r.Context(), scope(r), volumeName(r), path)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", attachment(path))
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Security-Policy", "sandbox")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

func (a *API) writeVolumeFile(w http.ResponseWriter, r *http.Request) {
	path, err := pathParam(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if strings.HasSuffix(path, "/") {
		a.writeError(w, r, errorf(CodeInvalidArgument, "path must name a file"))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, capsules.MaxVolumeFileBytes))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	e, err := a.capsules.VolumeWriteFile(r.Context(), scope(r), volumeName(r), path, body)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toEntryJSON(e))
}

func (a *API) deleteVolumeFile(w http.ResponseWriter, r *http.Request) {
	path, err := pathParam(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if err := a.capsules.VolumeRemove(r.Context(), scope(r), volumeName(r), path); err != nil {
		a.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) listVolumeFiles(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Query().Get("path")
	if path == "" {
		path = "/"
	}
	if len(path) > 4096 || strings.ContainsRune(path, 0) {
		a.writeError(w, r, errorf(CodeInvalidArgument, "path is at most 4096 bytes, no NUL"))
		return
	}
	es, err := a.capsules.VolumeListDir(r.Context(), scope(r), volumeName(r), path)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	out := make([]wrennapi.FileEntry, 0, len(es))
	for _, e := range es {
		out = append(out, toEntryJSON(e))
	}
	writeJSON(w, http.StatusOK, wrennapi.FileList{Entries: out})
}

func fromVolumeMountsJSON(ms []wrennapi.VolumeMount) []capsules.VolumeMountRequest {
	out := make([]capsules.VolumeMountRequest, 0, len(ms))
	for _, m := range ms {
		out = append(out, capsules.VolumeMountRequest{Name: m.Name, Path: m.Path, ReadOnly: m.ReadOnly})
	}
	return out
}
