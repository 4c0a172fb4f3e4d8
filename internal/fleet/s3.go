package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/minio/minio-go/v7"

	snapstore "github.com/wrenn-dev/wrenn/internal/snapshot/store"
)

// S3 is a private S3-compatible store (Versity's gateway over a directory)
// that a chaos test may kill -9 and restart; its data survives restarts.
type S3 struct {
	Config snapstore.S3Config

	bin, root string
	spawn     *spawner
	proc      *proc
}

// VersityGW finds versitygw on PATH or in bin/tools of the repository
// holding the working directory (`make tools` installs it there).
func VersityGW() (string, error) {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, "bin", "tools", "versitygw")
			if _, err := os.Stat(p); err != nil {
				return "", fmt.Errorf("versitygw not on PATH nor at %s (make tools)", p)
			}
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("versitygw not on PATH (make tools installs it in bin/tools)")
		}
		dir = parent
	}
}

// StartS3 starts a gateway over dir/s3 with a fresh bucket.
func StartS3(ctx context.Context, dir string) (*S3, error) {
	bin, err := VersityGW()
	if err != nil {
		return nil, err
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	s := &S3{
		Config: snapstore.S3Config{
			Endpoint: addr, Bucket: "wrenn-fleet", Prefix: "fleet/", Region: "us-east-1", Insecure: true,
			AccessKey: "fleet" + hex.EncodeToString(b[:4]), SecretKey: hex.EncodeToString(b[4:]),
		},
		bin: bin, root: filepath.Join(dir, "s3"), spawn: newSpawner(),
	}
	if err := os.MkdirAll(s.root, 0o700); err != nil {
		return nil, err
	}
	if err := s.Start(ctx); err != nil {
		s.spawn.close()
		return nil, err
	}
	st, err := snapstore.NewS3(s.Config)
	if err != nil {
		s.Stop()
		return nil, err
	}
	if err := st.Client().MakeBucket(ctx, s.Config.Bucket, minio.MakeBucketOptions{Region: s.Config.Region}); err != nil {
		s.Stop()
		return nil, fmt.Errorf("fleet: create bucket: %w", err)
	}
	return s, nil
}

// Start (re)starts the gateway and waits until it answers.
func (s *S3) Start(ctx context.Context) error {
	p, err := s.spawn.start(ctx, s.bin, []string{"--port", s.Config.Endpoint, "posix", s.root},
		[]string{"ROOT_ACCESS_KEY=" + s.Config.AccessKey, "ROOT_SECRET_KEY=" + s.Config.SecretKey},
		filepath.Join(filepath.Dir(s.root), "versitygw.log"))
	if err != nil {
		return fmt.Errorf("fleet: start versitygw: %w", err)
	}
	s.proc = p
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := client.Get("http://" + s.Config.Endpoint + "/") //nolint:noctx // bounded
		if err == nil {
			_ = resp.Body.Close()
			return nil // any answer (403 without credentials) means it serves
		}
		select {
		case <-p.exited:
			return fmt.Errorf("fleet: versitygw exited: %s", p.tail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("fleet: versitygw not answering on %s within 20 s", s.Config.Endpoint)
}

// Kill kills the gateway with SIGKILL.
func (s *S3) Kill() { s.proc.kill() }

// Stop stops the gateway and removes its data.
func (s *S3) Stop() {
	if s.proc != nil {
		s.proc.stop(5 * time.Second)
	}
	s.spawn.close()
	_ = os.RemoveAll(s.root)
}

func splitHostPort(addr string) (string, int, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.Atoi(p)
	return h, n, err
}
