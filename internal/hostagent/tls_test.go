package hostagent_test

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
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/hostagent"
	"github.com/wrenn-dev/wrenn/internal/testutil"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

type pki struct {
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	caPEM  []byte
	dir    string
	serial int64
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "wrenn test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	return &pki{ca: ca, caKey: key, caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), dir: t.TempDir(), serial: 1}
}

// issue writes a leaf certificate and key and returns their paths.
func (p *pki) issue(t *testing.T, name string, server bool) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p.serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(p.serial), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certPath, keyPath = filepath.Join(p.dir, name+".pem"), filepath.Join(p.dir, name+".key")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

func TestMutualTLS(t *testing.T) {
	h := startHost(t, newDirs(t), nil)
	p := newPKI(t)
	srvCert, srvKey := p.issue(t, "agent", true)
	cliCert, cliKey := p.issue(t, "control-plane", false)
	caPath := filepath.Join(p.dir, "ca.pem")
	if err := os.WriteFile(caPath, p.caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := h.agent.Serve(ctx, ln, hostagent.ServerConfig{TLSCert: srvCert, TLSKey: srvKey, ClientCA: caPath, Logger: logger()}); err != nil {
			t.Errorf("serve TLS: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(p.caPEM)
	client := func(withCert bool) *http.Client {
		tc := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
		if withCert {
			kp, err := tls.LoadX509KeyPair(cliCert, cliKey)
			if err != nil {
				t.Fatal(err)
			}
			tc.Certificates = []tls.Certificate{kp}
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
	}
	url := "https://" + ln.Addr().String()
	rctx := testutil.Context(t, testutil.Short)
	tests := []struct {
		name     string
		cert     bool
		token    string
		wantCode connect.Code
		wantOK   bool
	}{
		{"client certificate and secret", true, secret, 0, true},
		{"client certificate, wrong secret", true, "nope", connect.CodeUnauthenticated, false},
		// The handshake failure surfaces as Unavailable or Unknown
		// depending on when TLS 1.3 reports it: any error will do.
		{"no client certificate", false, secret, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClientWith(client(tt.cert), url, tt.token)
			res, err := c.GetHostInfo(rctx, connect.NewRequest(&pb.GetHostInfoRequest{}))
			if tt.wantOK {
				if err != nil || res.Msg.GetDriver() != "container" {
					t.Fatalf("got %v %v, want the host info", res, err)
				}
				return
			}
			if err == nil || (tt.wantCode != 0 && connect.CodeOf(err) != tt.wantCode) {
				t.Fatalf("got %v, want code %v", err, tt.wantCode)
			}
		})
	}
	// The agent speaks HTTP/1.1 only, also over TLS.
	resp, err := client(true).Get(url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.ProtoMajor != 1 {
		t.Errorf("protocol %s, want HTTP/1.1", resp.Proto)
	}
}
