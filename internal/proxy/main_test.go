package proxy_test

import (
	"testing"

	"go.uber.org/goleak"
)

// No goroutine may outlive the proxies, servers and sockets the tests
// closed: hung upstreams must not leak.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
