package runtime_test

import (
	"net/netip"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/runtime"
)

func TestEnvdAddr(t *testing.T) {
	tests := []struct {
		ip   string
		want string
	}{
		{"10.200.0.2", "10.200.0.2:49983"},
		{"fd00::2", "[fd00::2]:49983"},
	}
	for _, tt := range tests {
		t.Run(tt.ip, func(t *testing.T) {
			got := runtime.Info{IP: netip.MustParseAddr(tt.ip)}.EnvdAddr()
			if got != tt.want {
				t.Errorf("EnvdAddr() = %q, want %q", got, tt.want)
			}
		})
	}
}
