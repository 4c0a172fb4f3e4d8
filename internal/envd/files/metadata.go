package files

import (
	"net/http"
	"strings"

	"github.com/wrenn-dev/wrenn/internal/envd/filesystem"
)

const (
	metadataHeaderPrefix = "x-metadata-"
	// maxMetadataKey is the Linux xattr name limit (255) minus the
	// "user.e2b." namespace prefix.
	maxMetadataKey = 255 - len(filesystem.MetadataXattrPrefix)
	// maxMetadataTotal bounds keys (with prefix) plus values on one file.
	maxMetadataTotal = 4096
)

// parseMetadata collects X-Metadata-<key> headers into a map keyed by the
// lowercased key. Keys and values must be printable US-ASCII; the first value
// of a repeated header wins. It returns nil when there is no metadata.
func parseMetadata(h http.Header) (map[string]string, error) {
	var out map[string]string
	total := 0
	for name, vals := range h {
		lower := strings.ToLower(name)
		key, ok := strings.CutPrefix(lower, metadataHeaderPrefix)
		if !ok {
			continue
		}
		if key == "" {
			return nil, errorf(http.StatusBadRequest, "metadata header %q has an empty key", name)
		}
		if len(key) > maxMetadataKey {
			return nil, errorf(http.StatusBadRequest, "metadata key %q is longer than %d bytes", key, maxMetadataKey)
		}
		if !printable(key) {
			return nil, errorf(http.StatusBadRequest, "metadata key %q is not printable US-ASCII", key)
		}
		if _, dup := out[key]; dup {
			continue
		}
		val := ""
		if len(vals) > 0 {
			val = vals[0]
		}
		if !printable(val) {
			return nil, errorf(http.StatusBadRequest, "metadata value for %q is not printable US-ASCII", key)
		}
		total += len(filesystem.MetadataXattrPrefix) + len(key) + len(val)
		if total > maxMetadataTotal {
			return nil, errorf(http.StatusBadRequest, "metadata is larger than %d bytes", maxMetadataTotal)
		}
		if out == nil {
			out = map[string]string{}
		}
		out[key] = val
	}
	return out, nil
}

func printable(s string) bool {
	for i := range len(s) {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
