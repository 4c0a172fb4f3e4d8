package e2b

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"
)

// TestE2BNetwork: E2B's create "network" object maps onto Wrenn's egress
// policy and public flag; unsupported and unknown keys are refused.
func TestE2BNetwork(t *testing.T) {
	parse := func(s string) map[string]any {
		var m map[string]any
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	nw, public, _, status := e2bNetwork(parse(`{"denyOut":["0.0.0.0/0"],"allowOut":["1.1.1.1","*.example.com"],"allowPublicTraffic":true}`))
	if status != 0 || !public || !slices.Equal(nw.DenyOut, []string{"0.0.0.0/0"}) || !slices.Equal(nw.AllowOut, []string{"1.1.1.1", "*.example.com"}) {
		t.Fatalf("mapped %+v public=%v status=%d", nw, public, status)
	}
	if nw, _, _, status := e2bNetwork(nil); nw != nil || status != 0 {
		t.Fatalf("no network: %+v %d", nw, status)
	}
	for body, want := range map[string]int{
		`{"maskRequestHost":"x"}`:    http.StatusNotImplemented,
		`{"allowOut":"1.1.1.1"}`:     http.StatusBadRequest,
		`{"allowOut":[1]}`:           http.StatusBadRequest,
		`{"allowPublicTraffic":"y"}`: http.StatusBadRequest,
		`{"egress":1}`:               http.StatusBadRequest,
	} {
		if _, _, msg, status := e2bNetwork(parse(body)); status != want || msg == "" {
			t.Errorf("%s: %d %q, want %d", body, status, msg, want)
		}
	}
}
