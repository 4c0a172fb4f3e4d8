package controlplane_test

import (
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/api/apitest"
)

// TestServerCutsSlowLoginBody: the control plane's own server (NewHTTPServer)
// cuts a login that declares 100 bytes and sends 1 within the JSON body
// bound (10 s), instead of holding the connection for minutes.
func TestServerCutsSlowLoginBody(t *testing.T) {
	c := startCP(t, apitest.Stores()[0].Open(t), nil)
	conn, err := net.Dial("tcp", strings.TrimPrefix(c.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
	start := time.Now()
	_ = conn.SetReadDeadline(start.Add(30 * time.Second))
	b, err := io.ReadAll(conn)
	if d := time.Since(start); err != nil || d > 13*time.Second {
		t.Fatalf("connection held %v (err %v), want it cut within about 10 s", d, err)
	}
	if len(b) > 0 && !strings.Contains(string(b), "408") {
		t.Errorf("answer %q, want 408 request_timeout or a closed connection", b)
	}
}
