package api_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/store"
)

// TestHostWarmPools: the warm pools a host reports (heartbeat or host
// info) show in GET /v1/admin/hosts capabilities and in /metrics.
func TestHostWarmPools(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		e := newEnv(t, st)
		admin := e.signup("pooladmin@example.com")
		e.makeAdmin(admin)
		hostID, _ := e.registerHost(admin, "127.0.0.1:50061", "")
		caps := `{"runtimes":["container"],"isolations":["runc"],"memory_snapshots":true,` +
			`"warm_pools":[{"template":"base","ready":1,"target":2,"auto":true,"max":8,"hits":5,"misses":2,"limit":"memory"}]}`
		if err := st.SetHostCapabilities(context.Background(), hostID, store.HostUsage{Capabilities: caps}); err != nil {
			t.Fatal(err)
		}
		h := e.want(e.do("GET", "/v1/admin/hosts/"+hostID, admin.token, nil), 200).json(t)
		c, _ := h["capabilities"].(map[string]any)
		pools, _ := c["warm_pools"].([]any)
		if len(pools) != 1 {
			t.Fatalf("capabilities = %v, want one warm pool", c)
		}
		p, _ := pools[0].(map[string]any)
		for k, want := range map[string]any{"template": "base", "ready": 1.0, "target": 2.0, "auto": true, "max": 8.0, "hits": 5.0, "misses": 2.0, "limit": "memory"} {
			if p[k] != want {
				t.Errorf("warm pool %s = %v, want %v", k, p[k], want)
			}
		}
		m := e.want(e.do("GET", "/metrics", "", nil), 200)
		for _, want := range []string{
			fmt.Sprintf(`wrenn_warm_pool_ready{host=%q,template="base"} 1`, hostID),
			fmt.Sprintf(`wrenn_warm_pool_target{host=%q,template="base"} 2`, hostID),
			fmt.Sprintf(`wrenn_warm_pool_hits_total{host=%q,template="base"} 5`, hostID),
			fmt.Sprintf(`wrenn_warm_pool_misses_total{host=%q,template="base"} 2`, hostID),
		} {
			if !strings.Contains(string(m.body), want) {
				t.Errorf("metrics lack %q", want)
			}
		}
	})
}
