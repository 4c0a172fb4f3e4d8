package web

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHandlerRoutes(t *testing.T) {
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-From", "api")
		w.WriteHeader(http.StatusTeapot)
	})
	h := Handler(api)
	for _, tc := range []struct {
		method, path string
		api          bool
		status       int
	}{
		{"GET", "/v1/capsules", true, http.StatusTeapot},
		{"GET", "/v1", true, http.StatusTeapot},
		{"GET", "/e2b/sandboxes", true, http.StatusTeapot},
		{"GET", "/proxy/cl-abc/8080/", true, http.StatusTeapot},
		{"GET", "/openapi.yaml", true, http.StatusTeapot},
		{"GET", "/docs", true, http.StatusTeapot},
		{"GET", "/health", true, http.StatusTeapot},
		{"GET", "/metrics", true, http.StatusTeapot},
		{"POST", "/capsules", true, http.StatusTeapot}, // not a page: the API answers (404/405 JSON)
		{"GET", "/", false, http.StatusOK},
		{"GET", "/capsules/cl-123", false, http.StatusOK}, // client route → index.html
		{"GET", "/v1x", false, http.StatusOK},
		{"GET", "/assets/missing-abc.js", false, http.StatusNotFound},
		{"GET", "/missing.png", false, http.StatusNotFound},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, nil))
		if got := rec.Header().Get("X-From") == "api"; got != tc.api {
			t.Errorf("%s %s: served by api=%v, want %v", tc.method, tc.path, got, tc.api)
		}
		if rec.Code != tc.status {
			t.Errorf("%s %s: status %d, want %d", tc.method, tc.path, rec.Code, tc.status)
		}
		if !tc.api {
			if csp := rec.Header().Get("Content-Security-Policy"); csp != CSP {
				t.Errorf("%s %s: CSP %q", tc.method, tc.path, csp)
			}
		}
		if !tc.api && tc.status == http.StatusOK {
			body, _ := io.ReadAll(rec.Body)
			if !strings.Contains(string(body), "<html") {
				t.Errorf("%s %s: not an HTML page: %.100s", tc.method, tc.path, body)
			}
			if !Built() && !strings.Contains(string(body), "make build") {
				t.Errorf("placeholder page does not say how to build the dashboard")
			}
		}
	}
	if !strings.Contains(CSP, "script-src 'self';") || strings.Contains(CSP, "unsafe-eval") {
		t.Errorf("CSP is not strict about scripts: %s", CSP)
	}
}
