package dashboard

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// GitHub identity the fake hands out: the browser test signs up with it.
const (
	ghClientID = "dashboard-cid"
	ghSecret   = "dashboard-csecret"
	ghName     = "Octo Dashboard"
	ghEmail    = "octo-dashboard@example.com"
)

// fakeGitHub is a local OAuth server like the API tests' one:
// /authorize redirects back with a code, /token exchanges it, /api/user and
// /api/user/emails describe one fixed identity.
func fakeGitHub(t testing.TB) *httptest.Server {
	t.Helper()
	var mu sync.Mutex
	codes, tokens := map[string]bool{}, map[string]bool{}
	random := func(prefix string) string {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		return prefix + hex.EncodeToString(b)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /authorize", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("client_id") != ghClientID {
			http.Error(w, "bad client", http.StatusBadRequest)
			return
		}
		code := random("code_")
		mu.Lock()
		codes[code] = true
		mu.Unlock()
		u, err := url.Parse(q.Get("redirect_uri"))
		if err != nil {
			http.Error(w, "bad redirect_uri", http.StatusBadRequest)
			return
		}
		u.RawQuery = url.Values{"code": {code}, "state": {q.Get("state")}}.Encode()
		http.Redirect(w, r, u.String(), http.StatusFound)
	})
	mux.HandleFunc("POST /token", func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		mu.Lock()
		ok := codes[r.PostForm.Get("code")]
		delete(codes, r.PostForm.Get("code"))
		tok := random("gho_")
		tokens[tok] = true
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if !ok || r.PostForm.Get("client_secret") != ghSecret {
			_, _ = w.Write([]byte(`{"error":"bad_verification_code"}`))
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"access_token": tok, "token_type": "bearer"})
	})
	authed := func(r *http.Request) bool {
		mu.Lock()
		defer mu.Unlock()
		return tokens[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]
	}
	mux.HandleFunc("GET /api/user", func(w http.ResponseWriter, r *http.Request) {
		if !authed(r) {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"id": 4242, "login": "octo-dashboard", "name": ghName})
	})
	mux.HandleFunc("GET /api/user/emails", func(w http.ResponseWriter, r *http.Request) {
		if !authed(r) {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		_ = json.NewEncoder(w).Encode([]map[string]any{{"email": ghEmail, "primary": true, "verified": true}})
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}
