package controlplane_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/api/apitest"
	"github.com/wrenn-dev/wrenn/internal/controlplane"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

var testSecret = []byte("controlplane-test-secret-0123456789abcdef")

func logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// cp is a control plane served on loopback.
type cp struct {
	t   testing.TB
	srv *controlplane.Server
	url string
	// proxyURL is the port proxy's own listener.
	proxyURL string
	st       store.Store
	hc       *http.Client
	// agentDir is the directory of the test agent started for it (life-
	// cycle tests measure stored bytes there).
	agentDir string
}

func startCP(t testing.TB, st store.Store, tweak func(*controlplane.Config)) *cp {
	t.Helper()
	cfg := controlplane.Config{Store: st, Secret: testSecret, Logger: logger(), ReconcileInterval: time.Hour}
	if tweak != nil {
		tweak(&cfg)
	}
	srv, err := controlplane.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := srv.Serve(ctx, ln, pln); err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		srv.Close()
	})
	hc := http.DefaultClient
	if _, bench := t.(*testing.B); !bench {
		// Every answer call receives must match openapi.yaml.
		hc = &http.Client{Transport: apitest.NewValidator(t).RoundTripper(t, nil)}
	}
	return &cp{t: t, srv: srv, url: "http://" + ln.Addr().String(), proxyURL: "http://" + pln.Addr().String(), st: st, hc: hc}
}

type reply struct {
	status int
	body   []byte
	header http.Header
}

func (r reply) obj(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("not JSON: %s", r.body)
	}
	return m
}

func (c *cp) call(method, path, cred string, body any, want int) reply {
	c.t.Helper()
	return c.callURL(method, c.url+path, cred, body, want)
}

// callProxy is call on the port proxy's listener.
func (c *cp) callProxy(method, path, cred string, want int) reply {
	c.t.Helper()
	return c.callURL(method, c.proxyURL+path, cred, nil, want)
}

func (c *cp) callURL(method, url, cred string, body any, want int) reply {
	c.t.Helper()
	path := url
	var rd io.Reader
	ct := "application/json"
	switch b := body.(type) {
	case nil:
	case []byte:
		rd, ct = bytes.NewReader(b), "application/octet-stream"
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	req, _ := http.NewRequestWithContext(context.Background(), method, url, rd)
	if body != nil {
		req.Header.Set("Content-Type", ct)
	}
	if cred != "" {
		req.Header.Set("Authorization", "Bearer "+cred)
	}
	res, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if want != 0 && res.StatusCode != want {
		c.t.Fatalf("%s %s: status %d, want %d: %s", method, path, res.StatusCode, want, b)
	}
	return reply{res.StatusCode, b, res.Header}
}

// signup returns a session token and team id.
func (c *cp) signup(email string) (token, userID, teamID string) {
	c.t.Helper()
	m := c.call("POST", "/v1/auth/signup", "", map[string]string{"email": email, "password": "long enough password"}, 201).obj(c.t)
	return m["token"].(string), m["user"].(map[string]any)["id"].(string), m["team"].(map[string]any)["id"].(string)
}

func buildEnvd(dir string) (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	bin := filepath.Join(dir, "envd")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/envd")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build envd: %w: %s", err, out)
	}
	return bin, nil
}

func itoa(n int) string { return fmt.Sprint(n) }

func (c *cp) srvAgent(h store.Host) hostagentv1connect.HostAgentServiceClient { return c.srv.Agent(h) }
