package builds_test

import (
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/builds"
)

func TestParseSpec(t *testing.T) {
	for _, tc := range []struct {
		name, raw, wantErr string
	}{
		{"minimal", `{"run":["true"]}`, ""},
		{"full", `{"from":"tpl-abc","run":["a","b"],"env":{"A":"1"},"workdir":"/srv","vcpus":2,"memory_mb":256,"disk_size_mb":1024,"timeout_sec":60,"allow_internet":false}`, ""},
		{"unknown field", `{"run":["true"],"steps":[]}`, "unknown field"},
		{"two objects", `{"run":["true"]} {}`, "exactly one"},
		{"not an object", `["true"]`, "spec:"},
		{"no run", `{}`, "spec.run must hold"},
		{"too many steps", `{"run":[` + strings.Repeat(`"true",`, 100) + `"true"]}`, "spec.run must hold 1 to 100"},
		{"step too long", `{"run":["` + strings.Repeat("x", builds.MaxStepBytes+1) + `"]}`, "longer than"},
		{"blank step", `{"run":[" \n"]}`, "spec.run[0] is empty"},
		{"bad from", `{"from":"Base!","run":["true"]}`, "spec.from"},
		{"relative workdir", `{"run":["true"],"workdir":"srv"}`, "spec.workdir"},
		{"bad env key", `{"run":["true"],"env":{"A-B":"1"}}`, "spec.env"},
		{"zero vcpus", `{"run":["true"],"vcpus":0}`, "spec.vcpus"},
		{"disk too small", `{"run":["true"],"disk_size_mb":10}`, "spec.disk_size_mb"},
		{"timeout too long", `{"run":["true"],"timeout_sec":7201}`, "spec.timeout_sec"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := builds.ParseSpec([]byte(tc.raw))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			if s.From == "" || s.Workdir == "" || s.VCPUs == nil || s.MemoryMB == nil || s.DiskSizeMB == nil || s.TimeoutSec == nil || s.AllowInternet == nil {
				t.Fatalf("defaults not filled: %+v", s)
			}
		})
	}
}

func TestSpecDefaults(t *testing.T) {
	s, err := builds.ParseSpec([]byte(`{"run":["true"]}`))
	if err != nil {
		t.Fatal(err)
	}
	got := []any{s.From, s.Workdir, *s.VCPUs, *s.MemoryMB, *s.DiskSizeMB, *s.TimeoutSec, *s.AllowInternet}
	want := []any{"base", "/", int64(1), int64(512), int64(5120), int64(1800), true}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("default %d = %v, want %v", i, got[i], want[i])
		}
	}
}

func TestBuildOfCapsule(t *testing.T) {
	for _, tc := range []struct {
		labels    map[string]string
		id, team  string
		wantBuild bool
	}{
		{map[string]string{builds.LabelBuild: "bld-1", builds.LabelTeam: "team-a"}, "bld-1", "team-a", true},
		{map[string]string{builds.LabelTeam: "team-a"}, "", "team-a", false},
		{nil, "", "", false},
	} {
		id, team, ok := builds.BuildOfCapsule(tc.labels)
		if id != tc.id || team != tc.team || ok != tc.wantBuild {
			t.Errorf("BuildOfCapsule(%v) = %q %q %v, want %q %q %v", tc.labels, id, team, ok, tc.id, tc.team, tc.wantBuild)
		}
	}
}
