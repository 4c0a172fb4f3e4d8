package agents_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/api/agents"
	"github.com/wrenn-dev/wrenn/internal/store"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// TestClientSpeaksHTTP1WithHostCredential: even against a TLS server that
// offers HTTP/2, the pool uses HTTP/1.1, and every call carries the host's
// credential.
func TestClientSpeaksHTTP1WithHostCredential(t *testing.T) {
	var mu sync.Mutex
	var protos []int
	var auths []string
	path, h := hostagentv1connect.NewHostAgentServiceHandler(hostagentv1connect.UnimplementedHostAgentServiceHandler{})
	mux := http.NewServeMux()
	mux.Handle(path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		protos = append(protos, r.ProtoMajor)
		auths = append(auths, r.Header.Get("Authorization"))
		mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)

	roots := srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	p := agents.New(agents.Config{Key: []byte("0123456789abcdef0123456789abcdef"), TLS: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}})
	t.Cleanup(p.Close)
	host := store.Host{ID: "host-abc", Address: strings.TrimPrefix(srv.URL, "https://")}
	if got := p.BaseURL(host.Address); !strings.HasPrefix(got, "https://") {
		t.Fatalf("BaseURL with TLS = %q", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 3 {
		_, err := p.Client(host).GetHostInfo(ctx, connect.NewRequest(&pb.GetHostInfoRequest{}))
		if connect.CodeOf(err) != connect.CodeUnimplemented {
			t.Fatalf("call: %v, want the server's Unimplemented", err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for i := range protos {
		if protos[i] != 1 {
			t.Fatalf("request %d used HTTP/%d", i, protos[i])
		}
		if auths[i] != "Bearer "+p.Credential(host.ID) {
			t.Fatalf("request %d Authorization = %q", i, auths[i])
		}
	}
	tr := agents.NewTransport(nil, 5*time.Minute, time.Second)
	if tr.ResponseHeaderTimeout != 5*time.Minute || tr.Protocols.HTTP2() || !tr.Protocols.HTTP1() {
		t.Fatalf("transport: header timeout %v, protocols %v", tr.ResponseHeaderTimeout, tr.Protocols)
	}
}

// TestClientAsksForNoCompression: the pool's clients take agents' answers
// uncompressed (unary and streams), so file downloads and output streams
// are not gzipped on the way to the control plane.
func TestClientAsksForNoCompression(t *testing.T) {
	var mu sync.Mutex
	var accepts []string
	path, h := hostagentv1connect.NewHostAgentServiceHandler(hostagentv1connect.UnimplementedHostAgentServiceHandler{})
	mux := http.NewServeMux()
	mux.Handle(path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		accepts = append(accepts, r.Header.Get("Accept-Encoding")+"|"+r.Header.Get("Connect-Accept-Encoding"))
		mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	p := agents.New(agents.Config{Key: []byte("k")})
	c := p.Client(store.Host{ID: "host-1", Address: srv.URL})
	ctx := context.Background()
	_, _ = c.GetHostInfo(ctx, connect.NewRequest(&pb.GetHostInfoRequest{}))
	if st, err := c.ReadFileStream(ctx, connect.NewRequest(&pb.ReadFileRequest{CapsuleId: "cl-x", Path: "/x"})); err == nil {
		for st.Receive() {
		}
		_ = st.Close()
	}
	mu.Lock()
	defer mu.Unlock()
	if len(accepts) != 2 {
		t.Fatalf("%d calls seen, want 2", len(accepts))
	}
	for _, a := range accepts {
		if strings.Contains(a, "gzip") {
			t.Errorf("the client accepts gzip (Accept-Encoding|Connect-Accept-Encoding = %q)", a)
		}
	}
}
