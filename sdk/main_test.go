package wrenn_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/up/uptest"
)

// The tests and examples run against a real in-process Wrenn (control
// plane, SQLite, host agent, container driver) started here. It needs
// root; without it the package's tests are skipped as a whole.
var wrennURL, wrennKey string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Println("skipping the SDK tests: they run a real Wrenn, which needs root (CI runs as root)")
		return 0
	}
	dir, err := os.MkdirTemp("", "wrenn-sdk-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	in, err := uptest.Start(ctx, uptest.Options{
		Dir: dir, Instance: fmt.Sprintf("wsdk%d", os.Getpid()%100000), Subnet: "10.251.0.0/16", Log: os.Stderr,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start wrenn:", err)
		return 1
	}
	wrennURL, wrennKey = in.URL, in.Key
	// The examples read these, as a user's program would.
	_ = os.Setenv("WRENN_URL", in.URL)
	_ = os.Setenv("WRENN_API_KEY", in.Key)
	code := m.Run()
	if err := in.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stop wrenn:", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}
