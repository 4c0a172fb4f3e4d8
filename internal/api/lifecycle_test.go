package api_test

import (
	"context"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/store"
)

// TestLifecycleDefaultsAPI: a team admin sets the team's and a template's
// on_timeout/auto_resume defaults with PATCH (a template's null clears
// one, a field not given is kept); a bad value is 400 and changes nothing.
func TestLifecycleDefaultsAPI(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		e := newEnv(t, st)
		u := e.signup("lc-defaults@example.com")
		ctx := context.Background()
		team := "/v1/teams/" + u.team
		got := e.want(e.do("PATCH", team, u.token, map[string]any{"on_timeout": "pause"}), 200).json(t)
		if got["on_timeout"] != "pause" || got["auto_resume"] != nil {
			t.Fatalf("team patch = %v", got)
		}
		got = e.want(e.do("PATCH", team, u.token, map[string]any{"auto_resume": true}), 200).json(t)
		if got["on_timeout"] != "pause" || got["auto_resume"] != true {
			t.Fatalf("team patch kept on_timeout? %v", got)
		}
		e.want(e.do("PATCH", team, u.token, map[string]any{"on_timeout": "sleep"}), 400)

		tpl, err := st.CreateTemplate(ctx, store.Template{TeamID: u.team, Name: "lctpl"})
		if err != nil {
			t.Fatal(err)
		}
		path := "/v1/templates/" + tpl.ID
		got = e.want(e.do("PATCH", path, u.token, map[string]any{"on_timeout": "kill", "auto_resume": false}), 200).json(t)
		if got["on_timeout"] != "kill" || got["auto_resume"] != false {
			t.Fatalf("template patch = %v", got)
		}
		e.want(e.do("PATCH", path, u.token, map[string]any{"on_timeout": "sleep"}), 400)
		e.want(e.do("PATCH", path, u.token, map[string]any{"auto_resume": "yes"}), 400)
		got = e.want(e.do("PATCH", path, u.token, map[string]any{"on_timeout": nil}), 200).json(t)
		if _, ok := got["on_timeout"]; ok || got["auto_resume"] != false {
			t.Fatalf("template on_timeout cleared, auto_resume kept? %v", got)
		}
		after, err := st.GetTemplate(ctx, u.team, tpl.ID)
		if err != nil || after.Lifecycle.OnTimeout != nil || after.Lifecycle.AutoResume == nil || *after.Lifecycle.AutoResume {
			t.Fatalf("stored template lifecycle = %+v, %v", after.Lifecycle, err)
		}
	})
}
