package api

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"

	"github.com/go-chi/chi/v5"
)

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

func chiParam(r *http.Request, name string) string { return chi.URLParam(r, name) }

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
