package api

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"

	_ "embed" // docs.html

	"go.yaml.in/yaml/v3"
)

//go:embed docs.html
var docsHTML string

var (
	docsOnce sync.Once
	docsPage []byte
	docsCSP  string
	docsErr  error
)

// docs serves GET /docs: a readable reference rendered in the browser
// from openapi.yaml (embedded in the page as JSON; no external resources,
// so it works offline).
func (a *API) docs(w http.ResponseWriter, r *http.Request) {
	docsOnce.Do(func() { docsPage, docsCSP, docsErr = renderDocs(openapiYAML, docsHTML) })
	if docsErr != nil {
		a.writeError(w, r, docsErr)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", docsCSP)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(docsPage)
}

// renderDocs puts the document, as JSON, into the page and returns the
// page with a Content-Security-Policy that allows only its own script.
func renderDocs(spec []byte, page string) ([]byte, string, error) {
	var doc any
	if err := yaml.Unmarshal(spec, &doc); err != nil {
		return nil, "", fmt.Errorf("openapi.yaml: %w", err)
	}
	// json.Marshal escapes <, > and &, so the JSON cannot end the script
	// element it sits in.
	j, err := json.Marshal(stringKeys(doc))
	if err != nil {
		return nil, "", fmt.Errorf("openapi.yaml as JSON: %w", err)
	}
	out := strings.Replace(page, "{{SPEC}}", string(j), 1)
	const open, end = "<script>", "</script>"
	i := strings.Index(out, open)
	if i < 0 {
		return nil, "", fmt.Errorf("docs.html has no inline script")
	}
	k := strings.Index(out[i+len(open):], end)
	if k < 0 {
		return nil, "", fmt.Errorf("docs.html: unterminated script")
	}
	sum := sha256.Sum256([]byte(out[i+len(open) : i+len(open)+k]))
	csp := "default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'sha256-" +
		base64.StdEncoding.EncodeToString(sum[:]) + "'"
	return []byte(out), csp, nil
}

// stringKeys turns YAML mappings with non-string keys (e.g. an unquoted
// status code) into JSON-encodable maps.
func stringKeys(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = stringKeys(e)
		}
		return x
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[fmt.Sprint(k)] = stringKeys(e)
		}
		return m
	case []any:
		for i, e := range x {
			x[i] = stringKeys(e)
		}
		return x
	}
	return v
}
