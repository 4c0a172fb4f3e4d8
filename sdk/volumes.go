package wrenn

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"

	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
)

// Volume is a team's persistent volume (docs/VOLUMES.md): a file system of
// SizeMB that outlives capsules. Location is "store" when no capsule
// holds it (any host can mount it) or "host" (capsules on HostID mount
// it; Mounts lists them).
type Volume = wrennapi.Volume

// VolumeMount mounts a volume in a capsule at create
// (CreateParams.VolumeMounts): at most one read-write mount of a volume
// at a time, any number of read-only ones. Container capsules only.
type VolumeMount = wrennapi.VolumeMount

// CreateVolume makes an empty volume; sizeMB 0 takes the default (1024).
// A name the team already uses is an *Error with Code "conflict".
func (c *Client) CreateVolume(ctx context.Context, name string, sizeMB int64) (*Volume, error) {
	in := wrennapi.CreateVolume{Name: name, SizeMB: optInt(sizeMB)}
	var out Volume
	if err := c.call(ctx, http.MethodPost, "/v1/volumes", nil, in, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Volumes lists the team's volumes by name.
func (c *Client) Volumes(ctx context.Context) ([]Volume, error) {
	var out wrennapi.VolumeList
	if err := c.call(ctx, http.MethodGet, "/v1/volumes", nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Volumes, nil
}

// Volume returns one volume, where it lives and the mounts holding it.
func (c *Client) Volume(ctx context.Context, name string) (*Volume, error) {
	var out Volume
	if err := c.call(ctx, http.MethodGet, "/v1/volumes/"+url.PathEscape(name), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// DeleteVolume deletes a volume and its content; while a capsule mounts
// it the answer is an *Error with Code "conflict".
func (c *Client) DeleteVolume(ctx context.Context, name string) error {
	return c.call(ctx, http.MethodDelete, "/v1/volumes/"+url.PathEscape(name), nil, nil, nil)
}

func volumeFiles(name string) string { return "/v1/volumes/" + url.PathEscape(name) + "/files" }

// ReadVolumeFile reads a file of a volume (at most 64 MiB), with or
// without a capsule holding it.
func (c *Client) ReadVolumeFile(ctx context.Context, name, path string) ([]byte, error) {
	resp, err := c.do(ctx, http.MethodGet, volumeFiles(name), url.Values{"path": {path}}, nil, "")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// WriteVolumeFile creates or replaces a file of a volume (at most 64 MiB;
// parents are created). Data that does not fit is an *Error with Code
// "volume_full" (HTTP 507) and leaves the old file.
func (c *Client) WriteVolumeFile(ctx context.Context, name, path string, data []byte) (*FileEntry, error) {
	resp, err := c.do(ctx, http.MethodPut, volumeFiles(name), url.Values{"path": {path}}, bytes.NewReader(data), "application/octet-stream")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out FileEntry
	if err := decodeJSONBody(resp, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListVolumeFiles lists a directory of a volume ("" or "/" is its root).
func (c *Client) ListVolumeFiles(ctx context.Context, name, path string) ([]FileEntry, error) {
	var out wrennapi.FileList
	q := url.Values{}
	if path != "" {
		q.Set("path", path)
	}
	if err := c.call(ctx, http.MethodGet, volumeFiles(name)+"/list", q, nil, &out); err != nil {
		return nil, err
	}
	return out.Entries, nil
}

// RemoveVolumeFile removes a file or directory tree of a volume.
func (c *Client) RemoveVolumeFile(ctx context.Context, name, path string) error {
	return c.call(ctx, http.MethodDelete, volumeFiles(name), url.Values{"path": {path}}, nil, nil)
}
