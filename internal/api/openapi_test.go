package api_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
	"go.yaml.in/yaml/v3"

	"github.com/wrenn-dev/wrenn/internal/api"
	"github.com/wrenn-dev/wrenn/internal/api/apitest"
)

// TestOpenAPICoversEveryRoute walks the router: every route must be
// documented in openapi.yaml with its method, so a new route cannot be
// forgotten.
func TestOpenAPICoversEveryRoute(t *testing.T) {
	var doc struct {
		OpenAPI string                    `yaml:"openapi"`
		Paths   map[string]map[string]any `yaml:"paths"`
	}
	if err := yaml.Unmarshal(api.OpenAPI(), &doc); err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi version %q", doc.OpenAPI)
	}
	a := api.New(api.Config{Store: apitest.SQLite(t)})
	n := 0
	err := chi.Walk(a.Routes(), func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		n++
		p := strings.TrimSuffix(route, "/")
		ops, ok := doc.Paths[p]
		if !ok {
			t.Errorf("route %s %s is not in openapi.yaml (as %s)", method, route, p)
			return nil
		}
		if _, ok := ops[strings.ToLower(method)]; !ok {
			t.Errorf("openapi.yaml documents %s but not its %s", p, method)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 50 {
		t.Fatalf("walked only %d routes", n)
	}
	for _, p := range []string{"/openapi.yaml", "/docs"} {
		if _, ok := doc.Paths[p]["get"]; !ok {
			t.Errorf("openapi.yaml does not document GET %s", p)
		}
	}
}

// TestOpenAPIVersion: the document stays OpenAPI 3.0, which the generator
// (oapi-codegen) reads; 3.1 would silently lose nullable fields.
func TestOpenAPIVersion(t *testing.T) {
	var doc struct {
		OpenAPI string `yaml:"openapi"`
	}
	if err := yaml.Unmarshal(api.OpenAPI(), &doc); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.0.") {
		t.Fatalf("openapi: %q, want 3.0.x (see docs/API.md)", doc.OpenAPI)
	}
}

// TestDocsAndOpenAPIServed: GET /openapi.yaml serves the document and GET
// /docs a self-contained HTML reference with the document embedded (both
// go through the response validator of newEnv).
func TestDocsAndOpenAPIServed(t *testing.T) {
	e := newEnv(t, apitest.SQLite(t))
	y := e.want(e.do("GET", "/openapi.yaml", "", nil), 200)
	if string(y.body) != string(api.OpenAPI()) || y.header.Get("Content-Type") != "application/yaml" {
		t.Fatalf("openapi.yaml: %q, %d bytes", y.header.Get("Content-Type"), len(y.body))
	}
	d := e.want(e.do("GET", "/docs", "", nil), 200)
	page := string(d.body)
	if !strings.HasPrefix(d.header.Get("Content-Type"), "text/html") {
		t.Fatalf("Content-Type %q", d.header.Get("Content-Type"))
	}
	for _, want := range []string{`"openapi":"3.0.3"`, `"/v1/capsules"`, `"CreateCapsule"`, "Wrenn API reference"} {
		if !strings.Contains(page, want) {
			t.Errorf("/docs lacks %s", want)
		}
	}
	// Outside the embedded document, the page loads nothing from
	// anywhere (the machine may have no internet).
	const open = `<script type="application/json" id="spec">`
	i := strings.Index(page, open)
	j := strings.Index(page[i+1:], "</script>")
	if i < 0 || j < 0 {
		t.Fatal("/docs has no embedded document")
	}
	shell := page[:i] + page[i+1+j:]
	for _, bad := range []string{"http://", "https://", "src=", "<link", "@import", "{{SPEC}}"} {
		if strings.Contains(shell, bad) {
			t.Errorf("/docs contains %q outside the document", bad)
		}
	}
	if csp := d.header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'sha256-") || !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("CSP %q", csp)
	}
}
