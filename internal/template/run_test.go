package template

import (
	"reflect"
	"testing"
)

func TestRunConfig(t *testing.T) {
	for in, want := range map[string]string{"": "", "app": "app", "app:staff": "app", "0": "root", "0:0": "root", "1000": "1000", "1000:1001": "1000:1001", "1000:staff": "1000", "0:5": "0:5"} {
		if got := ProcessUser(in); got != want {
			t.Errorf("ProcessUser(%q) = %q, want %q", in, got, want)
		}
	}
	s := Store{Dir: t.TempDir()}
	if _, err := s.Build("t", "", func(string) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if rc, err := s.RunConfigOf("t"); err != nil || !rc.IsZero() {
		t.Fatalf("no run.json: %+v %v", rc, err)
	}
	rc := RunConfig{Env: map[string]string{"A": "1", "B": "2"}, Workdir: "/srv", User: "app", Start: []string{"sleep", "1"}, ReadyPort: 80}
	if err := s.SetRunConfig("t", rc); err != nil {
		t.Fatal(err)
	}
	got, err := s.RunConfigOf("t")
	if err != nil || !reflect.DeepEqual(got, rc) {
		t.Fatalf("run config = %+v %v", got, err)
	}
	env, user, wd := got.Apply(map[string]string{"B": "req"}, "", "/req")
	if !reflect.DeepEqual(env, map[string]string{"A": "1", "B": "req"}) || user != "app" || wd != "/req" {
		t.Errorf("apply = %v %q %q", env, user, wd)
	}
	if err := s.SetRunConfig("missing", rc); err == nil {
		t.Error("run config for a missing template accepted")
	}
}

// A template made from a capsule of another keeps that one's START (with
// its READY), environment, working directory and user unless it sets its
// own (issue 16).
func TestRunConfigInherit(t *testing.T) {
	base := RunConfig{Env: map[string]string{"A": "1", "B": "2"}, Workdir: "/srv", User: "app", Start: []string{"web"}, ReadyPort: 80, ReadyTimeoutSec: 5}
	got := RunConfig{Env: map[string]string{"B": "x"}}.Inherit(base)
	want := RunConfig{Env: map[string]string{"A": "1", "B": "x"}, Workdir: "/srv", User: "app", Start: []string{"web"}, ReadyPort: 80, ReadyTimeoutSec: 5}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Inherit = %+v, want %+v", got, want)
	}
	own := RunConfig{Workdir: "/w", User: "u", Start: []string{"other"}, ReadyCmd: []string{"true"}}
	got = own.Inherit(base)
	want = RunConfig{Env: map[string]string{"A": "1", "B": "2"}, Workdir: "/w", User: "u", Start: []string{"other"}, ReadyCmd: []string{"true"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("own START: Inherit = %+v, want %+v", got, want)
	}
	if got := (RunConfig{}).Inherit(RunConfig{}); !got.IsZero() {
		t.Errorf("zero Inherit zero = %+v", got)
	}
}
