package scheduler

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/controlplane/hostlink"
	"github.com/wrenn-dev/wrenn/internal/store"
)

func withCaps(h store.Host, c hostlink.Capabilities) store.Host {
	b, _ := json.Marshal(c)
	h.Capabilities = string(b)
	return h
}

func support(avail map[string]bool, reasons map[string]string) hostlink.Capabilities {
	var c hostlink.Capabilities
	for _, iso := range []string{"container", "gvisor", "microvm"} {
		if _, ok := avail[iso]; !ok {
			continue
		}
		c.IsolationSupport = append(c.IsolationSupport, hostlink.IsolationSupport{Name: iso, Available: avail[iso], Reason: reasons[iso]})
	}
	c.Isolations = c.Available()
	return c
}

// TestPlacementByIsolation: only hosts running the isolation a capsule
// asks for are candidates, however empty the others are; hosts reporting
// the pre-selection "runc" list or nothing run containers only.
func TestPlacementByIsolation(t *testing.T) {
	noGV := map[string]string{"gvisor": "runsc is not configured", "microvm": "the microVM driver is not enabled (--microvm)"}
	plain := withCaps(host("a-plain", 8, 65536, 0, 0), support(map[string]bool{"container": true, "gvisor": false, "microvm": false}, noGV))
	gv := withCaps(host("b-gvisor", 2, 8192, 1, 4096), support(map[string]bool{"container": true, "gvisor": true, "microvm": false}, noGV))
	vm := withCaps(host("c-vm", 2, 8192, 1, 4096), support(map[string]bool{"container": false, "gvisor": false, "microvm": true}, map[string]string{"container": "off", "gvisor": "off"}))
	legacy := withCaps(host("d-legacy", 16, 131072, 0, 0), hostlink.Capabilities{Runtimes: []string{"container"}, Isolations: []string{"runc"}})
	bare := host("e-bare", 16, 131072, 0, 0) // no capabilities reported at all
	all := []store.Host{plain, gv, vm, legacy, bare}

	for _, tc := range []struct {
		name      string
		hosts     []store.Host
		isolation string
		want      string
	}{
		{"no isolation: emptiest host", all, "", "d-legacy"},
		{"container: not the microVM-only host", []store.Host{vm, gv}, "container", "b-gvisor"},
		{"container on legacy hosts", []store.Host{legacy, bare}, "container", "d-legacy"},
		{"gvisor: the only gVisor host despite its load", all, "gvisor", "b-gvisor"},
		{"microvm", all, "microvm", "c-vm"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Choose(tc.hosts, Request{VCPUs: 1, MemoryMB: 512, Isolation: tc.isolation})
			if err != nil {
				t.Fatal(err)
			}
			if got.ID != tc.want {
				t.Fatalf("placed on %s, want %s", got.ID, tc.want)
			}
		})
	}
}

// TestIsolationUnavailable: when online hosts exist but none runs the
// isolation, the error names it, the hosts' reasons and what the fleet
// does run, and is not a capacity error; with no host online at all it
// stays ErrNoHosts.
func TestIsolationUnavailable(t *testing.T) {
	noGV := map[string]string{"gvisor": "runsc is not configured", "microvm": "/dev/kvm is missing"}
	a := withCaps(host("a", 2, 8192, 0, 0), support(map[string]bool{"container": true, "gvisor": false, "microvm": false}, noGV))
	legacy := withCaps(host("b", 2, 8192, 0, 0), hostlink.Capabilities{Isolations: []string{"runc"}})
	_, err := Choose([]store.Host{a, legacy}, Request{VCPUs: 1, MemoryMB: 512, Isolation: "gvisor"})
	var ie *IsolationError
	if !errors.As(err, &ie) || !errors.Is(err, ErrIsolationUnavailable) || errors.Is(err, ErrNoCapacity) {
		t.Fatalf("err = %v, want an *IsolationError", err)
	}
	for _, want := range []string{`"gvisor"`, "runsc is not configured", "available: container"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	// A gVisor host that is offline does not help, and does not hide the
	// reason of the online ones.
	off := withCaps(host("c", 2, 8192, 0, 0), support(map[string]bool{"gvisor": true}, nil))
	off.Status = store.HostUnavailable
	if _, err := Choose([]store.Host{a, off}, Request{VCPUs: 1, MemoryMB: 512, Isolation: "gvisor"}); !errors.Is(err, ErrIsolationUnavailable) {
		t.Fatalf("only the offline host runs gvisor: err = %v", err)
	}
	// Nothing online: the usual "try later".
	a.Status = store.HostUnavailable
	if _, err := Choose([]store.Host{a}, Request{VCPUs: 1, MemoryMB: 512, Isolation: "gvisor"}); !errors.Is(err, ErrNoHosts) {
		t.Fatalf("no host online: err = %v, want ErrNoHosts", err)
	}
	// The host runs it but is full: a capacity error, not an isolation one.
	full := withCaps(host("d", 1, 1024, 4, 1024), support(map[string]bool{"gvisor": true}, nil))
	if _, err := Choose([]store.Host{full}, Request{VCPUs: 1, MemoryMB: 512, Isolation: "gvisor"}); !errors.Is(err, ErrNoCapacity) {
		t.Fatalf("full gVisor host: err = %v, want ErrNoCapacity", err)
	}
}
