// Package web serves the dashboard: the single-page app built from web/
// (npm run build writes it into dist/, which is embedded here) on the API's
// listener. Paths the API owns go to the API; every other GET is a file of
// the app or, for a client-side route, the app's index.html. A binary built
// without the assets (a plain `go build`) serves a page saying how to build
// them.
package web

import (
	"bytes"
	"embed"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"
)

//go:embed all:dist
var dist embed.FS

// apiPrefixes are the paths the API serves; the dashboard never shadows
// them. /proxy is the port proxy's path on its own listener: on the API's
// the API answers it with a 404 error body, never the app.
var apiPrefixes = []string{"/v1", "/e2b", "/openapi.yaml", "/docs", "/health", "/metrics", "/proxy"}

// CSP is the Content-Security-Policy of every dashboard response: scripts,
// connections (fetch and WebSocket) and everything else only from the API's
// own origin; no inline or eval'd script, no framing, no plugins. Inline
// styles are allowed because xterm.js and uPlot inject <style> elements.
const CSP = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; " +
	"img-src 'self' data: blob:; font-src 'self'; connect-src 'self'; object-src 'none'; " +
	"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// Built reports whether the dashboard's assets are embedded.
func Built() bool {
	_, err := fs.Stat(dist, "dist/index.html")
	return err == nil
}

// Handler returns a handler that serves the API's paths with api and
// everything else with the dashboard.
func Handler(api http.Handler) http.Handler {
	sub, _ := fs.Sub(dist, "dist")
	index, err := fs.ReadFile(sub, "index.html")
	if err != nil {
		index = []byte(placeholder)
	}
	files := http.FileServerFS(sub)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isAPI(r.URL.Path) || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
			api.ServeHTTP(w, r)
			return
		}
		h := w.Header()
		h.Set("Content-Security-Policy", CSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
		name := strings.TrimPrefix(path.Clean(r.URL.Path), "/")
		if name != "" && name != "index.html" {
			if st, err := fs.Stat(sub, name); err == nil && !st.IsDir() {
				if strings.HasPrefix(name, "assets/") { // content-hashed names
					h.Set("Cache-Control", "public, max-age=31536000, immutable")
				}
				files.ServeHTTP(w, r)
				return
			}
			if strings.HasPrefix(name, "assets/") || path.Ext(name) != "" {
				http.NotFound(w, r)
				return
			}
		}
		// A client-side route: the app's shell.
		h.Set("Cache-Control", "no-cache")
		h.Set("Content-Type", "text/html; charset=utf-8")
		http.ServeContent(w, r, "index.html", time.Time{}, bytes.NewReader(index))
	})
}

func isAPI(p string) bool {
	for _, pre := range apiPrefixes {
		if p == pre || strings.HasPrefix(p, pre+"/") {
			return true
		}
	}
	return false
}

const placeholder = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Wrenn</title></head>
<body style="font-family:sans-serif;max-width:40em;margin:3em auto">
<h1>Wrenn</h1>
<p>The API is running, but this binary was built without the dashboard.</p>
<p>To build it (needs Node.js and npm): <code>make build</code>, or
<code>make web</code> followed by <code>go build ./cmd/wrenn</code>.</p>
<p>The API reference is at <a href="/docs">/docs</a>.</p>
</body></html>
`
