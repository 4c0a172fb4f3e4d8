package fleet

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// certs is the fleet's private CA: a server certificate per agent (its
// address as the IP SAN) and one client certificate the control-plane
// replicas present to the agents (mutual TLS).
type certs struct {
	dir                   string
	ca                    *x509.Certificate
	caKey                 *ecdsa.PrivateKey
	caPath                string
	clientCert, clientKey string
}

func newCerts(dir string) (*certs, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "wrenn fleet CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(30 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	c := &certs{dir: dir, ca: ca, caKey: key, caPath: filepath.Join(dir, "ca.pem")}
	if err := writePEM(c.caPath, "CERTIFICATE", der); err != nil {
		return nil, err
	}
	c.clientCert, c.clientKey, err = c.issue("control-plane", nil, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// server issues agent name's certificate for ip.
func (c *certs) server(name string, ip netip.Addr) error {
	_, _, err := c.issue(name, []net.IP{ip.AsSlice()}, x509.ExtKeyUsageServerAuth)
	return err
}

// serverFiles are the key and certificate paths of agent name.
func (c *certs) serverFiles(name string) (key, cert string) {
	return filepath.Join(c.dir, name+"-key.pem"), filepath.Join(c.dir, name+".pem")
}

var serial int64 = 1

func (c *certs) issue(name string, ips []net.IP, usage x509.ExtKeyUsage) (cert, key string, err error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	serial++
	tpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(30 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, c.ca, &k.PublicKey, c.caKey)
	if err != nil {
		return "", "", fmt.Errorf("fleet: certificate %s: %w", name, err)
	}
	kd, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return "", "", err
	}
	key, cert = c.serverFiles(name)
	if err := writePEM(cert, "CERTIFICATE", der); err != nil {
		return "", "", err
	}
	if err := writePEM(key, "EC PRIVATE KEY", kd); err != nil {
		return "", "", err
	}
	return cert, key, nil
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}
