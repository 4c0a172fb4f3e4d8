package cli

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/testutil"
)

func TestServerCommandServesAndStops(t *testing.T) {
	home := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	pln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	proxyAddr := pln.Addr().String()
	_ = pln.Close()
	secret := filepath.Join(home, "secret")
	cmd := newServerCmd()
	cmd.SetArgs([]string{"--listen", addr, "--proxy-listen", proxyAddr, "--db", filepath.Join(home, "db", "wrenn.db"), "--jwt-secret-file", secret, "--log-level", "warn"})
	var stderr bytes.Buffer
	cmd.SetErr(&stderr)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	testutil.Eventually(t, 30*time.Second, func() bool {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/health", nil)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		_ = res.Body.Close()
		return res.StatusCode == http.StatusOK
	}, "wrenn server answers /health")
	// The port proxy has its own listener: an unknown capsule there is a
	// 404 from the proxy; the API's listener has no such route.
	for _, base := range []string{"http://" + proxyAddr, "http://" + addr} {
		req, _ := http.NewRequestWithContext(ctx, "GET", base+"/proxy/cl-nosuchcapsule00000/8080/", nil)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", base, err)
		}
		_ = res.Body.Close()
		if res.StatusCode != http.StatusNotFound || res.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s/proxy/…: %d %s, want a 404 error body", base, res.StatusCode, res.Header.Get("Content-Type"))
		}
	}
	st, err := os.Stat(secret)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("secret file: %v, mode %v; want 0600", err, st.Mode())
	}
	first, _ := os.ReadFile(secret)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("server exited with %v; stderr %s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("server did not stop after cancellation")
	}
	// A second start reuses the secret.
	if _, err := loadOrCreateSecret(secret); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(secret); !bytes.Equal(first, again) {
		t.Fatal("the secret changed between starts")
	}
	if _, err := serverConfig(serverFlags{db: filepath.Join(home, "x.db"), secretFile: secret, logLevel: "loud"}, &stderr); err == nil {
		t.Fatal("bad --log-level accepted")
	}
	if _, err := serverConfig(serverFlags{db: filepath.Join(home, "x.db"), secretFile: secret, logLevel: "info", githubClientID: "id"}, &stderr); err == nil {
		t.Fatal("GitHub client id without a secret file accepted")
	}
}

// TestServerCapsuleInternetFlag: --capsule-internet is on or off (the
// platform's ceiling on capsules' outbound internet); anything else is
// refused.
func TestServerCapsuleInternetFlag(t *testing.T) {
	home := t.TempDir()
	var stderr bytes.Buffer
	f := serverFlags{db: filepath.Join(home, "x.db"), secretFile: filepath.Join(home, "secret"), logLevel: "info"}
	for v, want := range map[string]bool{"on": false, "off": true} {
		f.capsuleInternet = v
		cfg, err := serverConfig(f, &stderr)
		if err != nil || cfg.CapsuleInternetOff != want {
			t.Errorf("--capsule-internet=%s: off=%v, %v; want off=%v", v, cfg.CapsuleInternetOff, err, want)
		}
	}
	f.capsuleInternet = "maybe"
	if _, err := serverConfig(f, &stderr); err == nil || !strings.Contains(err.Error(), "--capsule-internet") {
		t.Errorf("--capsule-internet=maybe: %v", err)
	}
}
