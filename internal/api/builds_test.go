package api_test

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"mime/multipart"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/api"
	"github.com/wrenn-dev/wrenn/internal/api/apitest"
	"github.com/wrenn-dev/wrenn/internal/builds"
	"github.com/wrenn-dev/wrenn/internal/scheduler"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

type part struct{ name, value string }

// multipartBody encodes fields in order; a part named context or image is
// a file part.
func multipartBody(t *testing.T, parts ...part) ([]byte, string) {
	t.Helper()
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	for _, p := range parts {
		if p.name == "context" || p.name == "image" {
			w, _ := mw.CreateFormFile(p.name, p.name+".tar")
			_, _ = w.Write([]byte(p.value))
			continue
		}
		_ = mw.WriteField(p.name, p.value)
	}
	_ = mw.Close()
	return b.Bytes(), mw.FormDataContentType()
}

func tarWith(t *testing.T, hs ...tar.Header) string {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, h := range hs {
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
	}
	_ = tw.Close()
	return b.String()
}

// TestTeamBuildsAPI: the team builds routes with the real build runner
// and no host (every build fails with the reason, and logs it).
func TestTeamBuildsAPI(t *testing.T) {
	st := apitest.Stores()[0].Open(t)
	runner := builds.New(builds.Config{Store: st, Scheduler: scheduler.New(st), PollInterval: 50 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { runner.Run(ctx, time.Hour); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	testutil.Eventually(t, 5*time.Second, runner.Running, "runner did not start")
	e := newEnv(t, st, func(c *api.Config, _ string) {
		c.Builds = runner
		c.BuildDir = t.TempDir()
	})

	user := e.signup("builder@example.com")
	other := e.signup("other@example.com")
	post := func(cred string, parts ...part) resp {
		t.Helper()
		body, ct := multipartBody(t, parts...)
		return e.do("POST", "/v1/templates/builds", cred, body, "Content-Type", ct)
	}
	good := "FROM minimal\nRUN echo hi\n"

	for _, tc := range []struct {
		name  string
		parts []part
		want  int
		msg   string
	}{
		{"bad name", []part{{"name", "Bad Name"}, {"recipe", good}}, 400, "name must be a template name"},
		{"no recipe", []part{{"name", "t"}}, 400, "send a recipe"},
		{"parse error", []part{{"name", "t"}, {"recipe", "FROM minimal\n  RUNN x\n"}}, 400, "Wrennfile:2:3: unknown instruction"},
		{"unknown field", []part{{"name", "t"}, {"recipe", good}, {"color", "red"}}, 400, "unknown form field"},
		{"auth not JSON", []part{{"name", "t"}, {"recipe", good}, {"registry_auth", "bob:pw"}}, 400, "registry_auth must be JSON"},
		{"field after file", []part{{"name", "t"}, {"context", tarWith(t, tar.Header{Name: "a", Typeflag: tar.TypeReg})}, {"recipe", good}}, 400, "before the file part"},
		{"symlink escape", []part{{"name", "t"}, {"recipe", good}, {"context", tarWith(t, tar.Header{Name: "x", Typeflag: tar.TypeSymlink, Linkname: "../../etc"})}}, 400, "points outside the context"},
		{"not a tar", []part{{"name", "t"}, {"recipe", good}, {"context", "hello"}}, 400, "not a readable tar"},
		{"two files", []part{{"name", "t"}, {"image", "x"}, {"context", "y"}}, 400, "one file part"},
		{"recipe and image", []part{{"name", "t"}, {"recipe", good}, {"image", "x"}}, 400, "an import takes no recipe"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := post(user.token, tc.parts...)
			if r.status != tc.want || !strings.Contains(string(r.body), tc.msg) {
				t.Fatalf("status %d %s, want %d …%s…", r.status, r.body, tc.want, tc.msg)
			}
		})
	}
	if r := e.do("POST", "/v1/templates/builds", user.token, map[string]any{"name": "t"}); r.status != 415 {
		t.Errorf("JSON body: %d %s", r.status, r.body)
	}

	// A good build: accepted, then failed for want of a host, with a log.
	r := post(user.token, part{"name", "app"}, part{"recipe", good}, part{"registry_auth", `{"username":"u","password":"secret-pw"}`},
		part{"context", tarWith(t, tar.Header{Name: "a/", Typeflag: tar.TypeDir, Mode: 0o755})})
	if r.status != 201 {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	b := r.json(t)
	id := b["id"].(string)
	if b["kind"] != "recipe" || b["recipe"] != good || b["status"] != "pending" {
		t.Fatalf("build = %v", b)
	}
	if r := post(user.token, part{"name", "app"}, part{"recipe", good}); r.status != 409 && r.status != 201 {
		t.Errorf("second build of a name in flight: %d %s", r.status, r.body)
	}
	var got map[string]any
	testutil.Eventually(t, 10*time.Second, func() bool {
		got = e.do("GET", "/v1/templates/builds/"+id, user.token, nil).json(t)
		return got["status"] == "failed"
	}, "the build did not fail")
	if !strings.Contains(got["error"].(string), "no host can run the build") {
		t.Errorf("error = %v", got["error"])
	}
	// Logs: NDJSON, step 0 and the outcome, never the credential.
	lr := e.do("GET", "/v1/templates/builds/"+id+"/logs", user.token, nil)
	if lr.status != 200 || lr.header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("logs: %d %v %s", lr.status, lr.header, lr.body)
	}
	var recs []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(lr.body))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("record %q: %v", sc.Text(), err)
		}
		recs = append(recs, m)
	}
	if len(recs) < 2 || !strings.Contains(recs[0]["data"].(string), "step 0/") || !strings.Contains(recs[len(recs)-1]["data"].(string), "build failed") {
		t.Errorf("records = %v", recs)
	}
	if strings.Contains(string(lr.body), "secret-pw") {
		t.Error("the registry password is in the log")
	}
	// after= resumes; follow on an ended build returns at once.
	last := int64(recs[len(recs)-1]["seq"].(float64))
	if r := e.do("GET", "/v1/templates/builds/"+id+"/logs?follow=1&after=0", user.token, nil); r.status != 200 || len(r.body) != len(lr.body) {
		t.Errorf("follow of an ended build: %d, %d bytes vs %d", r.status, len(r.body), len(lr.body))
	}
	if r := e.do("GET", "/v1/templates/builds/"+id+"/logs?after="+strconv.FormatInt(last, 10), user.token, nil); r.status != 200 || len(r.body) != 0 {
		t.Errorf("after the last record: %d %q", r.status, r.body)
	}
	// Lists, other teams, cancel of a finished build.
	if l := e.do("GET", "/v1/templates/builds", user.token, nil).json(t)["builds"].([]any); len(l) == 0 {
		t.Error("list is empty")
	}
	if l := e.do("GET", "/v1/templates/builds", other.token, nil).json(t)["builds"].([]any); len(l) != 0 {
		t.Errorf("another team sees %d builds", len(l))
	}
	for _, p := range []string{"", "/logs"} {
		if r := e.do("GET", "/v1/templates/builds/"+id+p, other.token, nil); r.status != 404 {
			t.Errorf("other team GET %s: %d", p, r.status)
		}
	}
	if r := e.do("POST", "/v1/templates/builds/"+id+"/cancel", other.token, nil); r.status != 404 {
		t.Errorf("other team cancel: %d", r.status)
	}
	if r := e.do("POST", "/v1/templates/builds/"+id+"/cancel", user.token, nil); r.status != 409 {
		t.Errorf("cancel a finished build: %d %s", r.status, r.body)
	}
	if r := e.do("GET", "/v1/templates/builds/bld-nope", user.token, nil); r.status != 400 && r.status != 404 {
		t.Errorf("bad id: %d", r.status)
	}
	// Admins read any team's log.
	root := e.signup("root@example.com")
	e.makeAdmin(root)
	if r := e.do("GET", "/v1/admin/builds/"+id+"/logs", root.token, nil); r.status != 200 || len(r.body) == 0 {
		t.Errorf("admin logs: %d", r.status)
	}
}
