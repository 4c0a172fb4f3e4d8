package proxy_test

import (
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/proxy"
)

type recorded struct {
	Header  http.Header `json:"header"`
	Query   string      `json:"query"`
	Cookies []string    `json:"cookies"`
}

func sessionToken(t *testing.T) string {
	t.Helper()
	s, err := auth.NewSessions([]byte(strings.Repeat("s", 32)), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := s.Issue("us-abc", "tm-abc", "")
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestCredentialsNeverReachTheCapsule sends each Wrenn credential the way a
// browser or client would carry it, through both proxies, to a listener
// that records what it receives; the credential must not arrive, while the
// app's own credentials do.
func TestCredentialsNeverReachTheCapsule(t *testing.T) {
	c := newChain(t)
	apiKey := auth.GenerateAPIKey().Plain
	jwtTok := sessionToken(t)
	tests := []struct {
		name   string
		secret string
		hdr    []string // header name/value pairs
		query  string
	}{
		{"X-API-Key", apiKey, []string{"X-API-Key", apiKey}, ""},
		{"bearer API key", apiKey, []string{"Authorization", "Bearer " + apiKey}, ""},
		{"bearer API key, lower-case scheme", apiKey, []string{"Authorization", "bearer " + apiKey}, ""},
		{"bearer session JWT", jwtTok, []string{"Authorization", "Bearer " + jwtTok}, ""},
		{"OAuth state cookie", "signed-state-value", []string{"Cookie", "wrenn_oauth_state=signed-state-value"}, ""},
		{"signup cookie", "wrenn_oauth_new_signup", []string{"Cookie", "wrenn_oauth_new_signup=1"}, ""},
		{"session cookie", jwtTok, []string{"Cookie", "wrenn_session=" + jwtTok}, ""},
		{"query token (API key)", apiKey, nil, "token=" + apiKey},
		{"query token (JWT)", jwtTok, nil, "token=" + url.QueryEscape(jwtTok)},
		{"access token header", token, []string{proxy.AccessTokenHeader, token}, ""},
		{"access token query", token, nil, proxy.AccessTokenParam + "=" + token},
		{"host secret from the client", "forged-host-secret", []string{"X-Wrenn-Host-Secret", "forged-host-secret"}, ""},
	}
	pfx := "/proxy/" + capsuleID + "/" + strconv.Itoa(c.port)
	host := strconv.Itoa(c.port) + "-" + capsuleID + "." + domain
	for _, tt := range tests {
		for _, form := range []string{"path", "subdomain"} {
			t.Run(tt.name+"/"+form, func(t *testing.T) {
				path, h := pfx+"/record", ""
				if form == "subdomain" {
					path, h = "/record", host
				}
				q := "keep=1"
				if tt.query != "" {
					q = tt.query + "&" + q
				}
				hdr := append([]string{
					"Authorization", "Basic dXNlcjo=",
					"Cookie", "app_session=mine",
				}, tt.hdr...)
				// The credential is added next to the app's own
				// Authorization and Cookie values.
				status, body, _ := c.getMulti(t, path+"?"+q, h, hdr, !strings.Contains(tt.query, proxy.AccessTokenParam))
				if status != 200 {
					t.Fatalf("status %d: %s", status, body)
				}
				if strings.Contains(body, tt.secret) {
					t.Fatalf("the capsule received the credential: %s", body)
				}
				var got recorded
				if err := json.Unmarshal([]byte(body), &got); err != nil {
					t.Fatalf("record: %v: %s", err, body)
				}
				if !strings.Contains(got.Query, "keep=1") {
					t.Errorf("other query parameters must stay: %q", got.Query)
				}
				if v := got.Header.Values("Authorization"); !slices.Equal(v, []string{"Basic dXNlcjo="}) {
					t.Errorf("Authorization: Basic must reach envd and apps, alone; got %q", v)
				}
				if !slices.ContainsFunc(got.Cookies, func(s string) bool { return strings.Contains(s, "app_session=mine") }) {
					t.Errorf("the app's own cookie must stay: %v", got.Cookies)
				}
			})
		}
	}
	t.Run("other bearer tokens pass", func(t *testing.T) {
		status, body, _ := c.getMulti(t, pfx+"/record?token=jupyter-token", "", []string{"Authorization", "Bearer app-token"}, true)
		if status != 200 || !strings.Contains(body, "Bearer app-token") || !strings.Contains(body, "token=jupyter-token") {
			t.Fatalf("%d %s", status, body)
		}
	})
}

// getMulti is get with repeatable headers (Add, not Set); withToken adds
// the access token header.
func (c *chain) getMulti(t *testing.T, path, host string, hdr []string, withToken bool) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), "GET", c.cp.URL+path, nil)
	if host != "" {
		req.Host = host
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	if withToken && req.Header.Get(proxy.AccessTokenHeader) == "" {
		req.Header.Set(proxy.AccessTokenHeader, token)
	}
	res, err := noRedirect().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b), res.Header
}

// TestNoExistenceOracle: an unknown capsule, a private capsule without a
// valid token, and envd's port get the same answer: status, body and
// headers.
func TestNoExistenceOracle(t *testing.T) {
	c := newChain(t)
	port := strconv.Itoa(c.port)
	unknown := "cl-unknown0000000000"
	type answer struct {
		status int
		body   string
		header http.Header
	}
	ask := func(path, host string, hdr ...string) answer {
		status, body, h := c.get(t, path, host, hdr...)
		h = h.Clone()
		h.Del("Date")
		return answer{status, body, h}
	}
	want := ask("/proxy/"+unknown+"/"+port+"/", "")
	if want.status != http.StatusNotFound {
		t.Fatalf("unknown capsule: %d %s", want.status, want.body)
	}
	var e map[string]string
	if err := json.Unmarshal([]byte(want.body), &e); err != nil || e["code"] != "not_found" || e["message"] == "" {
		t.Fatalf("want the {code,message} error body, got %q", want.body)
	}
	cases := map[string]answer{
		"known, no token":              ask("/proxy/"+capsuleID+"/"+port+"/", ""),
		"known, wrong token":           ask("/proxy/"+capsuleID+"/"+port+"/", "", proxy.AccessTokenHeader, "wrc_wrong"),
		"known, wrong query token":     ask("/proxy/"+capsuleID+"/"+port+"/?"+proxy.AccessTokenParam+"=x", ""),
		"known, API key instead":       ask("/proxy/"+capsuleID+"/"+port+"/", "", "X-API-Key", auth.GenerateAPIKey().Plain),
		"unknown, a token":             ask("/proxy/"+unknown+"/"+port+"/", "", proxy.AccessTokenHeader, token),
		"envd port, valid token":       ask("/proxy/"+capsuleID+"/49983/", "", proxy.AccessTokenHeader, token),
		"envd port, unknown capsule":   ask("/proxy/"+unknown+"/49983/", ""),
		"subdomain, known, no token":   ask("/", port+"-"+capsuleID+"."+domain),
		"subdomain, unknown":           ask("/", port+"-"+unknown+"."+domain),
		"subdomain, envd port":         ask("/", "49983-"+capsuleID+"."+domain, proxy.AccessTokenHeader, token),
		"not a proxy path on its host": ask("/v1/capsules", ""),
	}
	for _, name := range slices.Sorted(maps.Keys(cases)) {
		got := cases[name]
		if got.status != want.status || got.body != want.body || !maps.EqualFunc(got.header, want.header, slices.Equal) {
			t.Errorf("%s: answered %d %v %q; an unknown capsule answers %d %v %q", name, got.status, got.header, got.body, want.status, want.header, want.body)
		}
	}
	// The envd port stays refused when the capsule is public.
	c.target.Public = true
	if got := ask("/proxy/"+capsuleID+"/49983/", ""); got.status != want.status || got.body != want.body {
		t.Errorf("public capsule, envd port: %d %q", got.status, got.body)
	}
}
