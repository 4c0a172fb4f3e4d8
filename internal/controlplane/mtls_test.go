package controlplane_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/api/apitest"
	"github.com/wrenn-dev/wrenn/internal/controlplane"
	"github.com/wrenn-dev/wrenn/internal/store"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

type certPair struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	der  []byte
}

func issue(t *testing.T, tmpl *x509.Certificate, parent *certPair) *certPair {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &certPair{cert: c, key: key, der: der}
}

func writePEM(t *testing.T, dir, name string, p *certPair) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.der}), 0o600); err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(p.key)
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestAgentMutualTLS: with AgentCA and a client certificate configured, the
// control plane reaches an agent that requires client certificates; without
// the certificate the handshake fails.
func TestAgentMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "wrenn test CA"}, IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}, nil)
	server := issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "agent"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ca)
	client := issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "control plane"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, ca)
	caFile, _ := writePEM(t, dir, "ca", ca)
	clientCert, clientKey := writePEM(t, dir, "client", client)

	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	path, h := hostagentv1connect.NewHostAgentServiceHandler(hostagentv1connect.UnimplementedHostAgentServiceHandler{})
	mux := http.NewServeMux()
	mux.Handle(path, h)
	agent := httptest.NewUnstartedServer(mux)
	agent.TLS = &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{server.der}, PrivateKey: server.key}},
		ClientCAs:    pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12,
	}
	agent.StartTLS()
	t.Cleanup(agent.Close)
	host := store.Host{ID: "host-mtls", Address: agent.URL}

	call := func(cfg controlplane.Config) error {
		cfg.Store, cfg.Secret, cfg.Logger = apitest.SQLite(t), testSecret, logger()
		srv, err := controlplane.New(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = srv.Agent(host).GetHostInfo(ctx, connect.NewRequest(&pb.GetHostInfoRequest{}))
		return err
	}
	if err := call(controlplane.Config{AgentCA: caFile, AgentClientCert: clientCert, AgentClientKey: clientKey}); connect.CodeOf(err) != connect.CodeUnimplemented {
		t.Fatalf("with a client certificate: %v, want to reach the agent (Unimplemented)", err)
	}
	if err := call(controlplane.Config{AgentCA: caFile}); err == nil || connect.CodeOf(err) == connect.CodeUnimplemented {
		t.Fatalf("without a client certificate: %v, want a handshake failure", err)
	}
	if err := call(controlplane.Config{}); err == nil || connect.CodeOf(err) == connect.CodeUnimplemented {
		t.Fatalf("without the CA: %v, want a certificate error", err)
	}
	if _, err := controlplane.New(context.Background(), controlplane.Config{Store: apitest.SQLite(t), Secret: testSecret, AgentCA: filepath.Join(dir, "missing.pem")}); err == nil {
		t.Fatal("a missing CA file was accepted")
	}
}

func TestServerTimeouts(t *testing.T) {
	s := controlplane.NewHTTPServer(http.NotFoundHandler(), logger())
	if s.ReadHeaderTimeout <= 0 || s.IdleTimeout <= 0 {
		t.Fatalf("ReadHeaderTimeout %v, IdleTimeout %v: both must be set", s.ReadHeaderTimeout, s.IdleTimeout)
	}
}
