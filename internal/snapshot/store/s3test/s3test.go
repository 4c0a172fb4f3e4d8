// Package s3test starts a real S3-compatible server for tests: Versity's
// S3 gateway (versitygw) serving a temporary directory on loopback. It owns
// nothing but that process and directory, both removed when the test ends.
package s3test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
)

// Binary finds versitygw on PATH or in <repo root>/bin/tools, where
// `make tools` installs it.
func Binary() (string, error) {
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
			if _, err := os.Stat(p); err == nil {
				return p, nil
			}
			return "", fmt.Errorf("versitygw not on PATH nor at %s", p)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("versitygw not on PATH and no repository root above the working directory")
		}
		dir = parent
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("s3test: pick a port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Start runs versitygw for the duration of the test and returns the config
// of a fresh bucket on it. It fails the test when versitygw is not installed.
func Start(t testing.TB) store.S3Config {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatalf("s3test: %v; run `make tools` to install it", err)
	}
	root := t.TempDir()
	cfg := store.S3Config{
		Bucket:    "wrenn-test",
		Prefix:    "snapshots/",
		AccessKey: "test" + randHex(6),
		SecretKey: randHex(16),
		Insecure:  true,
		Region:    "us-east-1",
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port := freePort(t)
		cfg.Endpoint = "127.0.0.1:" + strconv.Itoa(port)
		cmd := exec.Command(bin, "--port", cfg.Endpoint, "posix", root)
		cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+cfg.AccessKey, "ROOT_SECRET_KEY="+cfg.SecretKey)
		logPath := filepath.Join(t.TempDir(), "versitygw.log")
		logf, err := os.Create(logPath)
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		release, err := startOnPinnedThread(cmd)
		if err != nil {
			_ = logf.Close()
			t.Fatalf("s3test: start versitygw: %v", err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			<-exited
			release()
			_ = logf.Close()
		})
		if lastErr = waitReady(cfg.Endpoint, exited); lastErr == nil {
			break
		}
		log, _ := os.ReadFile(logPath)
		lastErr = fmt.Errorf("%w; log:\n%s", lastErr, log)
	}
	if lastErr != nil {
		t.Fatalf("s3test: versitygw did not come up: %v", lastErr)
	}
	s3, err := store.NewS3(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s3.Client().MakeBucket(ctx, cfg.Bucket, minio.MakeBucketOptions{Region: cfg.Region}); err != nil {
		t.Fatalf("s3test: create bucket: %v", err)
	}
	return cfg
}

func waitReady(endpoint string, exited <-chan struct{}) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("versitygw exited")
		default:
		}
		resp, err := client.Get("http://" + endpoint + "/")
		if err == nil {
			_ = resp.Body.Close()
			return nil // any HTTP answer (403 without credentials) means it serves
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("no answer on %s within 20s", endpoint)
}

// startOnPinnedThread starts cmd from an OS thread kept until release is
// called (after the child has exited). Pdeathsig fires when the *thread*
// that forked the child ends, not the process: other code in a test binary
// (the container driver's user-namespace helpers) ends threads it has
// tainted with setfsuid or setns, and when the Go runtime had forked
// versitygw from one of them, versitygw was killed mid-test ("connection
// refused").
func startOnPinnedThread(cmd *exec.Cmd) (release func(), err error) {
	errc := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		goruntime.LockOSThread()
		defer goruntime.UnlockOSThread() // the thread itself is clean: it goes back to the runtime
		errc <- cmd.Start()
		<-done
	}()
	if err := <-errc; err != nil {
		close(done)
		return nil, err
	}
	return sync.OnceFunc(func() { close(done) }), nil
}
