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
		hostID, cred := e.registerHost(admin, "127.0.0.1:50061", "")
		// As `wrenn up` reports them: with its heartbeat.
		hb := map[string]any{"vcpus": 8, "memory_mb": 16384, "capabilities": map[string]any{
			"runtimes": []string{"container"}, "isolations": []string{"runc"}, "memory_snapshots": true,
			"warm_pools": []map[string]any{{"template": "base", "ready": 1, "target": 2, "auto": true, "max": 8, "hits": 5, "misses": 2, "limit": "memory"}},
		}}
		e.want(e.do("POST", "/v1/hosts/"+hostID+"/heartbeat", cred, hb), 200)
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
		// As an agent's GetHostInfo gives them (the reconciler records them).
		caps := `{"runtimes":["container"],"warm_pools":[{"template":"minimal","ready":3,"target":3,"max":3,"hits":0,"misses":0}]}`
		other, _ := e.registerHost(admin, "127.0.0.1:50062", "")
		if err := st.SetHostCapabilities(context.Background(), other, store.HostUsage{Capabilities: caps}); err != nil {
			t.Fatal(err)
		}
		m := e.want(e.do("GET", "/metrics", "", nil), 200)
		for _, want := range []string{
			fmt.Sprintf(`wrenn_warm_pool_ready{host=%q,template="base"} 1`, hostID),
			fmt.Sprintf(`wrenn_warm_pool_target{host=%q,template="base"} 2`, hostID),
			fmt.Sprintf(`wrenn_warm_pool_hits_total{host=%q,template="base"} 5`, hostID),
			fmt.Sprintf(`wrenn_warm_pool_misses_total{host=%q,template="base"} 2`, hostID),
			fmt.Sprintf(`wrenn_warm_pool_ready{host=%q,template="minimal"} 3`, other),
		} {
			if !strings.Contains(string(m.body), want) {
				t.Errorf("metrics lack %q", want)
			}
		}
	})
}
