package controlplane_test

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/wrenn-dev/wrenn/internal/api/apitest"
	"github.com/wrenn-dev/wrenn/internal/controlplane"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/template"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// buildForm is a team build request: fields first, then a file part.
type buildForm struct {
	name, recipe, auth string
	timeout            int
	fileField          string
	file               []byte
}

func (c *cp) postBuild(tok string, f buildForm, want int) reply {
	c.t.Helper()
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	_ = mw.WriteField("name", f.name)
	if f.recipe != "" {
		_ = mw.WriteField("recipe", f.recipe)
	}
	if f.auth != "" {
		_ = mw.WriteField("registry_auth", f.auth)
	}
	if f.timeout > 0 {
		_ = mw.WriteField("timeout_sec", fmt.Sprint(f.timeout))
	}
	if f.fileField != "" {
		w, _ := mw.CreateFormFile(f.fileField, f.fileField+".tar")
		_, _ = w.Write(f.file)
	}
	_ = mw.Close()
	req, _ := http.NewRequestWithContext(context.Background(), "POST", c.url+"/v1/templates/builds", &b)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.Header.Set("Authorization", "Bearer "+tok)
	res, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != want {
		c.t.Fatalf("POST /v1/templates/builds: status %d, want %d: %s", res.StatusCode, want, body)
	}
	return reply{res.StatusCode, body, res.Header}
}

type logRec struct {
	Seq    int64  `json:"seq"`
	Step   int    `json:"step"`
	Stream string `json:"stream"`
	Data   string `json:"data"`
}

// followLogs reads GET …/logs?follow=1 to its end (the build's end).
func (c *cp) followLogs(tok, id string) ([]logRec, error) {
	req, _ := http.NewRequestWithContext(context.Background(), "GET", c.url+"/v1/templates/builds/"+id+"/logs?follow=1", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "application/x-ndjson" {
		return nil, fmt.Errorf("logs: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	var out []logRec
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r logRec
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("record %q: %w", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out, sc.Err()
}

func (c *cp) waitTeamBuild(tok, id string) map[string]any {
	c.t.Helper()
	var last map[string]any
	testutil.Eventually(c.t, 2*time.Minute, func() bool {
		last = c.call("GET", "/v1/templates/builds/"+id, tok, nil, 200).obj(c.t)
		return finished(last)
	}, "build "+id+" did not finish")
	return last
}

func contextTar(t *testing.T, files map[string]string, links map[string]string) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for n, body := range files {
		mode := int64(0o644)
		if strings.HasSuffix(n, ".sh") {
			mode = 0o755
		}
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: mode, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		_, _ = tw.Write([]byte(body))
	}
	for n, target := range links {
		if err := tw.WriteHeader(&tar.Header{Name: n, Linkname: target, Typeflag: tar.TypeSymlink, Mode: 0o777}); err != nil {
			t.Fatal(err)
		}
	}
	_ = tw.Close()
	return b.Bytes()
}

// execIn runs a shell command in a capsule and returns its stdout.
func (c *cp) execIn(tok, id, cmd string) string {
	c.t.Helper()
	r := c.call("POST", "/v1/capsules/"+id+"/exec", tok, map[string]any{"cmd": "/bin/sh", "args": []string{"-c", cmd}}, 200).obj(c.t)
	if r["exit_code"].(float64) != 0 {
		c.t.Fatalf("exec %q: %v", cmd, r)
	}
	return r["stdout"].(string)
}

// TestRecipeBuilds: a team member (not an admin) builds from a Wrennfile
// using every instruction, watches the log live, and creates a capsule
// whose START process answers through the port proxy; then failures,
// cancel, timeout, bad contexts and recipes; then OCI images from a real
// registry with basic auth, cached the second time.
func TestRecipeBuilds(t *testing.T) {
	testutil.RequireRoot(t)
	st := apitest.Stores()[0].Open(t) // SQLite: the store is not under test here
	c := startCP(t, st, func(cfg *controlplane.Config) {
		cfg.BuildInterval = 100 * time.Millisecond
		cfg.BuildPollInterval = 100 * time.Millisecond
	})
	ctx := testutil.Context(t, testutil.Long)
	adminTok, adminID, _ := c.signup("recipe-admin@example.com")
	if _, err := st.GrantUserAdmin(ctx, adminID); err != nil {
		t.Fatal(err)
	}
	// 10.130-134: this test's range.
	hostID, _ := startAgentOn(t, c, adminTok, netip.MustParsePrefix("10.130.0.0/16"))
	host, err := st.GetHost(ctx, hostID)
	if err != nil {
		t.Fatal(err)
	}
	agent := c.srvAgent(host)
	tok, _, team := c.signup("recipe-user@example.com")
	noBuildCapsules := func() bool {
		for _, id := range agentCapsules(t, agent) {
			if strings.HasPrefix(id, store.PrefixBuild+"-") {
				return false
			}
		}
		return true
	}

	t.Run("every instruction", func(t *testing.T) {
		recipe := `# a web app
FROM minimal
ENV GREETING="hello there" \
    MODE=test
WORKDIR /srv/app
COPY --chown=1000:1000 app/ ./
COPY tools/run.sh /usr/local/bin/
USER root
RUN echo "$GREETING" > greeting.txt && ls /srv/app
RUN ["/bin/sh", "-c", "echo exec-form >> greeting.txt; echo to-stderr >&2"]
START busybox httpd -f -p 8000 -h /srv/app
READY --timeout=30s port 8000
`
		ctxTar := contextTar(t, map[string]string{"app/index.html": "<h1>built</h1>", "app/sub/x.txt": "x", "tools/run.sh": "#!/bin/sh\necho run\n"},
			map[string]string{"app/link.html": "index.html"})
		b := c.postBuild(tok, buildForm{name: "web", recipe: recipe, fileField: "context", file: ctxTar}, 201).obj(t)
		if b["kind"] != "recipe" || b["recipe"] != recipe || b["team_id"] != team {
			t.Fatalf("build = %v", b)
		}
		id := b["id"].(string)
		recs, err := c.followLogs(tok, id)
		if err != nil {
			t.Fatal(err)
		}
		got := c.waitTeamBuild(tok, id)
		if got["status"] != "succeeded" {
			t.Fatalf("build = %v\nlog: %v", got, recs)
		}
		var all strings.Builder
		var sawStdout, sawStderr bool
		for _, r := range recs {
			all.WriteString(r.Data)
			sawStdout = sawStdout || (r.Stream == "stdout" && strings.Contains(r.Data, "index.html") && r.Step == 6)
			sawStderr = sawStderr || (r.Stream == "stderr" && strings.Contains(r.Data, "to-stderr") && r.Step == 7)
		}
		for _, want := range []string{"step 0/8: FROM minimal", "step 3/8: COPY --chown=1000:1000 app/ ./", "copied 2 files", "step 6/8: RUN echo", "step 6/8 done in", "step 8/8: START", "waiting for READY (port 8000", "snapshot into template web", "snapshot done in", "build succeeded"} {
			if !strings.Contains(all.String(), want) {
				t.Errorf("log lacks %q:\n%s", want, all.String())
			}
		}
		if !sawStdout || !sawStderr {
			t.Errorf("log: stdout of step 6 %v, stderr of step 7 %v:\n%s", sawStdout, sawStderr, all.String())
		}
		if !noBuildCapsules() {
			t.Fatal("build capsule left on the agent")
		}
		// A capsule of the template: files, owners, env, workdir, and the
		// START process answering on port 8000 through the port proxy
		// without anything started by hand.
		capsule := c.call("POST", "/v1/capsules", tok, map[string]any{"template": "web", "memory_mb": 128, "disk_size_mb": 512}, 201).obj(t)
		cid, ctok := capsule["id"].(string), capsule["access_token"].(string)
		defer c.call("DELETE", "/v1/capsules/"+cid, tok, nil, 0)
		r := c.callProxy("GET", "/proxy/"+cid+"/8000/index.html?wrenn_access_token="+ctok, "", 200)
		if !strings.Contains(string(r.body), "<h1>built</h1>") {
			t.Errorf("port 8000: %s", r.body)
		}
		for cmd, want := range map[string]string{
			"cat greeting.txt":                  "hello there\nexec-form\n",
			"pwd":                               "/srv/app\n",
			"echo $GREETING-$MODE":              "hello there-test\n",
			"stat -c %u:%g /srv/app/index.html": "1000:1000\n",
			"cat /srv/app/sub/x.txt":            "x",
			"readlink /srv/app/link.html":       "index.html\n",
			"test -x /usr/local/bin/run.sh && /usr/local/bin/run.sh": "run\n",
		} {
			if got := c.execIn(tok, cid, cmd); got != want {
				t.Errorf("%s = %q, want %q", cmd, got, want)
			}
		}

		// A template built FROM web inherits its START, READY, ENV and
		// WORKDIR (issue 16): its capsules answer on port 8000 too.
		b2 := c.postBuild(tok, buildForm{name: "web-more", recipe: "FROM web\nRUN echo more > /srv/app/more.txt\n"}, 201).obj(t)
		if got := c.waitTeamBuild(tok, b2["id"].(string)); got["status"] != "succeeded" {
			t.Fatalf("build FROM web = %v", got)
		}
		more := c.call("POST", "/v1/capsules", tok, map[string]any{"template": "web-more", "memory_mb": 128, "disk_size_mb": 512}, 201).obj(t)
		mid, mtok := more["id"].(string), more["access_token"].(string)
		defer c.call("DELETE", "/v1/capsules/"+mid, tok, nil, 0)
		if r := c.callProxy("GET", "/proxy/"+mid+"/8000/more.txt?wrenn_access_token="+mtok, "", 200); string(r.body) != "more\n" {
			t.Errorf("port 8000 of a capsule of the template built FROM web: %q", r.body)
		}
		if got := c.execIn(tok, mid, "echo $GREETING; pwd"); got != "hello there\n/srv/app\n" {
			t.Errorf("env and workdir inherited from web: %q", got)
		}
	})

	t.Run("failing step", func(t *testing.T) {
		b := c.postBuild(tok, buildForm{name: "fails", recipe: "FROM minimal\nRUN echo fine\nRUN echo out; echo boom >&2; exit 3\nRUN echo never\n"}, 201).obj(t)
		got := c.waitTeamBuild(tok, b["id"].(string))
		msg, _ := got["error"].(string)
		if got["status"] != "failed" || !strings.Contains(msg, "step 2/3 failed (exit code 3)") || !strings.Contains(msg, "(line 3)") || !strings.Contains(msg, "boom") {
			t.Fatalf("build = %v", got)
		}
		recs, err := c.followLogs(tok, b["id"].(string))
		if err != nil {
			t.Fatal(err)
		}
		last := recs[len(recs)-1]
		if last.Stream != "system" || !strings.Contains(last.Data, "build failed") {
			t.Errorf("last record = %+v", last)
		}
	})

	t.Run("cancel during a long step", func(t *testing.T) {
		b := c.postBuild(tok, buildForm{name: "long", recipe: "FROM minimal\nRUN echo started; sleep 300\n"}, 201).obj(t)
		id := b["id"].(string)
		testutil.Eventually(t, time.Minute, func() bool {
			m := c.call("GET", "/v1/templates/builds/"+id, tok, nil, 200).obj(t)
			e, _ := m["error"].(string)
			return strings.Contains(e, "step 1/1")
		}, "the long step did not start")
		c.call("POST", "/v1/templates/builds/"+id+"/cancel", tok, nil, 200)
		testutil.Eventually(t, 30*time.Second, noBuildCapsules, "the cancelled build's capsule was not destroyed")
		if got := c.waitTeamBuild(tok, id); got["status"] != "cancelled" {
			t.Fatalf("build = %v", got)
		}
		c.call("POST", "/v1/templates/builds/"+id+"/cancel", tok, nil, 409)
	})

	t.Run("timeout", func(t *testing.T) {
		b := c.postBuild(tok, buildForm{name: "slow", recipe: "FROM minimal\nRUN sleep 60\n", timeout: 3}, 201).obj(t)
		got := c.waitTeamBuild(tok, b["id"].(string))
		if msg, _ := got["error"].(string); got["status"] != "failed" || !strings.Contains(msg, "timed out") {
			t.Fatalf("build = %v", got)
		}
		testutil.Eventually(t, 30*time.Second, noBuildCapsules, "the timed-out build's capsule was not destroyed")
	})

	t.Run("bad input", func(t *testing.T) {
		escape := contextTar(t, map[string]string{"a": "a"}, map[string]string{"passwd": "/etc/passwd"})
		r := c.postBuild(tok, buildForm{name: "esc", recipe: "FROM minimal\nCOPY . /x/\n", fileField: "context", file: escape}, 400)
		if !strings.Contains(string(r.body), "points outside the context") {
			t.Errorf("symlink escape: %s", r.body)
		}
		r = c.postBuild(tok, buildForm{name: "unknown", recipe: "FROM minimal\nRUNN echo\n"}, 400)
		if !strings.Contains(string(r.body), "Wrennfile:2:1") {
			t.Errorf("unknown instruction: %s", r.body)
		}
		c.postBuild(tok, buildForm{name: "Bad Name", recipe: "FROM minimal\nRUN true\n"}, 400)
		c.postBuild(tok, buildForm{name: "web", recipe: "FROM minimal\nRUN true\n"}, 409) // taken
		b := c.postBuild(tok, buildForm{name: "nofrom", recipe: "FROM no-such-template\nRUN true\n"}, 201).obj(t)
		if got := c.waitTeamBuild(tok, b["id"].(string)); !strings.Contains(fmt.Sprint(got["error"]), `template "no-such-template" (FROM, line 1) not found`) {
			t.Errorf("unknown FROM: %v", got)
		}
		b = c.postBuild(tok, buildForm{name: "nocopy", recipe: "FROM minimal\nCOPY x /x\n"}, 201).obj(t)
		if got := c.waitTeamBuild(tok, b["id"].(string)); !strings.Contains(fmt.Sprint(got["error"]), "needs a build context") {
			t.Errorf("COPY without a context: %v", got)
		}
		// Another team sees none of it.
		other, _, _ := c.signup("recipe-other@example.com")
		c.call("GET", "/v1/templates/builds/"+b["id"].(string), other, nil, 404)
		c.call("GET", "/v1/templates/builds/"+b["id"].(string)+"/logs", other, nil, 404)
	})

	t.Run("OCI image", func(t *testing.T) {
		img := busyboxImage(t)
		var blobGets atomic.Int64
		srv := httptest.NewServer(registryWithAuth("bob", "pw-123", layerSet(t, img), &blobGets))
		defer srv.Close()
		ref := strings.TrimPrefix(srv.URL, "http://") + "/team/bb:1"
		r, _ := name.ParseReference(ref)
		if err := remote.Write(r, img, remote.WithAuth(authn.FromConfig(authn.AuthConfig{Username: "bob", Password: "pw-123"}))); err != nil {
			t.Fatal(err)
		}
		blobGets.Store(0)
		auth := `{"username":"bob","password":"pw-123"}`
		// Without credentials: a clear failure.
		b := c.postBuild(tok, buildForm{name: "noauth", recipe: "FROM " + ref + "\nRUN true\n"}, 201).obj(t)
		if got := c.waitTeamBuild(tok, b["id"].(string)); !strings.Contains(fmt.Sprint(got["error"]), "refused access") {
			t.Errorf("no credentials: %v", got)
		}
		// With them: the image's env/workdir and a RUN on top.
		b = c.postBuild(tok, buildForm{name: "img", recipe: "FROM " + ref + "\nRUN echo \"$FOO in $(pwd)\" > /work/foo\n", auth: auth}, 201).obj(t)
		first := time.Now()
		got := c.waitTeamBuild(tok, b["id"].(string))
		firstTook := time.Since(first)
		if got["status"] != "succeeded" {
			t.Fatalf("image build = %v", got)
		}
		pulled := blobGets.Load()
		if pulled == 0 {
			t.Fatal("no layer pulled")
		}
		recs, _ := c.followLogs(tok, b["id"].(string))
		for _, r := range recs {
			if strings.Contains(r.Data, "pw-123") {
				t.Fatalf("the registry password is in the build log: %q", r.Data)
			}
		}
		// A second build from the image pulls no layer; a bare FROM makes
		// the image itself the template (its config honoured).
		b = c.postBuild(tok, buildForm{name: "img2", recipe: "FROM " + ref + "\n", auth: auth}, 201).obj(t)
		second := time.Now()
		got = c.waitTeamBuild(tok, b["id"].(string))
		t.Logf("first image build %s, bare rebuild from the cached image %s", firstTook, time.Since(second))
		if got["status"] != "succeeded" || blobGets.Load() != pulled {
			t.Fatalf("second build = %v, layer downloads %d → %d", got, pulled, blobGets.Load())
		}
		for tmpl, cmds := range map[string]map[string]string{
			"img":  {"cat /work/foo": "bar in /work\n"},
			"img2": {"pwd": "/work\n", "echo $FOO": "bar\n", "test -e /etc/removed || echo gone": "gone\n"},
		} {
			capsule := c.call("POST", "/v1/capsules", tok, map[string]any{"template": tmpl, "memory_mb": 128, "disk_size_mb": 512}, 201).obj(t)
			cid := capsule["id"].(string)
			for cmd, want := range cmds {
				if got := c.execIn(tok, cid, cmd); got != want {
					t.Errorf("%s: %s = %q, want %q", tmpl, cmd, got, want)
				}
			}
			c.call("DELETE", "/v1/capsules/"+cid, tok, nil, 0)
		}
		// An import of the same image as a docker-save tarball.
		dir := t.TempDir()
		tagged, _ := name.NewTag("example.com/bb:1")
		file := filepath.Join(dir, "bb.tar")
		if err := tarball.WriteToFile(file, tagged, img); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		b = c.postBuild(tok, buildForm{name: "imported", fileField: "image", file: data}, 201).obj(t)
		if got := c.waitTeamBuild(tok, b["id"].(string)); got["status"] != "succeeded" || got["kind"] != "import" {
			t.Fatalf("import = %v", got)
		}
		// Not an image and not a rootfs: a failed build with the reason.
		b = c.postBuild(tok, buildForm{name: "garbage", fileField: "image", file: []byte("no tar here")}, 201).obj(t)
		if got := c.waitTeamBuild(tok, b["id"].(string)); got["status"] != "failed" || !strings.Contains(fmt.Sprint(got["error"]), "neither an image") {
			t.Fatalf("garbage import = %v", got)
		}
		if _, err := st.GetTemplateByName(ctx, team, "garbage"); err == nil {
			t.Error("a failed import left a template")
		}
	})
}

func layerSet(t *testing.T, img v1.Image) map[string]bool {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]bool{}
	for _, l := range ls {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		m[d.String()] = true
	}
	return m
}

// busyboxImage is an image of two layers built from the agent's minimal
// template (busybox) plus a layer that whites out a file, with env,
// workdir and cmd in its config.
func busyboxImage(t *testing.T) v1.Image {
	t.Helper()
	ts := template.Store{Dir: t.TempDir()}
	bb, err := ts.BuildBusybox(context.Background(), "bb", "")
	if err != nil {
		t.Fatal(err)
	}
	root := bb.Rootfs
	var b1, errb bytes.Buffer
	cmd := exec.Command("tar", "-C", root, "--numeric-owner", "-cf", "-", ".")
	cmd.Stdout, cmd.Stderr = &b1, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("tar minimal: %v %s", err, errb.String())
	}
	l1data := b1.Bytes()
	l2data := tarBytes(t, []tar.Header{{Name: "etc/removed", Typeflag: tar.TypeReg, Mode: 0o644}, {Name: "work/", Typeflag: tar.TypeDir, Mode: 0o755}})
	l3data := tarBytes(t, []tar.Header{{Name: "etc/.wh.removed", Typeflag: tar.TypeReg, Mode: 0o644}})
	var layers []v1.Layer
	for _, d := range [][]byte{l1data, l2data, l3data} {
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(d)), nil })
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, l)
	}
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config = v1.Config{Env: []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "FOO=bar"}, WorkingDir: "/work", Cmd: []string{"/bin/sh"}}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func tarBytes(t *testing.T, hs []tar.Header) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, h := range hs {
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
	}
	_ = tw.Close()
	return b.Bytes()
}

// registryWithAuth is an in-process registry behind basic auth that
// counts layer blob downloads.
func registryWithAuth(user, pass string, layers map[string]bool, blobGets *atomic.Int64) http.Handler {
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	var mu sync.Mutex
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || u != user || p != pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		if r.Method == http.MethodGet && layers[r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]] {
			mu.Lock()
			blobGets.Add(1)
			mu.Unlock()
		}
		reg.ServeHTTP(w, r)
	})
}
