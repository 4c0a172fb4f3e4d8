package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/wrenn-dev/wrenn/internal/api/apitest"
	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/store/sqlite"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// clientRoot is a root with the client commands, as NewRoot wires them.
func clientRoot() *cobra.Command {
	root := &cobra.Command{Use: "wrenn", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(newLoginCmd(), newCapsuleCmd(), newTemplateCmd(), newUpCmd(), newTeamCmd())
	root.AddCommand(newEventsCmd(), newWebhookCmd())
	root.AddCommand(newVolumeCmd())
	root.AddCommand(newBenchCmd(), newAdminCmd())
	return root
}

// runCLI runs the client commands in-process like Main does and returns
// what they printed and the exit code.
func runCLI(t *testing.T, stdin *os.File, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	root := clientRoot()
	var o, e bytes.Buffer
	root.SetArgs(args)
	root.SetOut(&o)
	root.SetErr(&e)
	if stdin != nil {
		root.SetIn(stdin)
	} else {
		root.SetIn(strings.NewReader(""))
	}
	if err := root.ExecuteContext(testutil.Context(t, testutil.Long)); err != nil {
		fmt.Fprintln(&e, "wrenn:", err)
		code = 1
		var ec interface{ ExitCode() int }
		if errors.As(err, &ec) {
			code = ec.ExitCode()
		}
	}
	return o.String(), e.String(), code
}

// isolate points the client config at a fresh file and clears the
// environment overrides.
func isolate(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "wrenn", "config")
	t.Setenv("WRENN_CONFIG", path)
	t.Setenv("WRENN_URL", "")
	t.Setenv("WRENN_API_KEY", "")
	t.Setenv("WRENN_HOME", "")
	return path
}

func TestHelpGolden(t *testing.T) {
	isolate(t)
	for _, path := range []string{
		"login", "up", "bench",
		"capsule", "capsule create", "capsule ls", "capsule get", "capsule exec", "capsule shell",
		"capsule cp", "capsule pause", "capsule resume", "capsule rm", "capsule logs", "capsule network set", "capsule snapshot",
		"template", "template ls", "template import", "template build", "template prepare", "template set-isolation",
		"team", "team set-isolation", "admin host", "admin host drain",
		"events", "webhook", "webhook create",
		"volume", "volume create",
	} {
		t.Run(path, func(t *testing.T) {
			got, errOut, code := runCLI(t, nil, append(strings.Fields(path), "--help")...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			golden := filepath.Join("testdata", "help", strings.ReplaceAll(path, " ", "_")+".golden")
			if *update {
				if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -run TestHelpGolden -update)", err)
			}
			if got != string(want) {
				t.Errorf("wrenn %s --help differs from %s (run with -update if intended):\n--- got\n%s\n--- want\n%s", path, golden, got, want)
			}
		})
	}
}

// closedURL is the URL of a port nothing listens on.
func closedURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "http://" + ln.Addr().String()
	_ = ln.Close()
	return u
}

func TestStoppedServerErrors(t *testing.T) {
	isolate(t)
	u := closedURL(t)
	key := "wrn_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	want := "no Wrenn at " + u + ": is `wrenn up` running?"
	for _, args := range [][]string{
		{"capsule", "ls"},
		{"capsule", "create", "-t", "minimal"},
		{"capsule", "get", "cl-abc"},
		{"capsule", "exec", "cl-abc", "--", "echo", "hi"},
		{"capsule", "rm", "cl-abc"},
		{"capsule", "cp", "cl-abc:/etc/hostname", t.TempDir()},
		{"template", "ls"},
	} {
		t.Run(strings.Join(args[:2], " "), func(t *testing.T) {
			full := append([]string{args[0], args[1], "--url", u, "--api-key", key}, args[2:]...)
			_, errOut, code := runCLI(t, nil, full...)
			if code == 0 || !strings.Contains(errOut, want) {
				t.Errorf("exit %d, stderr %q; want an error containing %q", code, errOut, want)
			}
		})
	}
	t.Run("login", func(t *testing.T) {
		_, errOut, code := runCLI(t, nil, "login", "--url", u, "--key", key)
		if code == 0 || !strings.Contains(errOut, want) {
			t.Errorf("exit %d, stderr %q; want %q", code, errOut, want)
		}
	})
}

func TestNotLoggedIn(t *testing.T) {
	isolate(t)
	_, errOut, code := runCLI(t, nil, "capsule", "ls")
	if code != 1 || !strings.Contains(errOut, "not logged in: run `wrenn login") {
		t.Errorf("exit %d, stderr %q; want a hint to log in", code, errOut)
	}
}

// controlPlane starts a real control plane on SQLite (no host) and
// returns its URL and an admin API key.
func controlPlane(t *testing.T) (url, key string) {
	t.Helper()
	ctx := testutil.Context(t, testutil.Long)
	st, err := sqlite.Open(ctx, sqlite.Options{Path: filepath.Join(t.TempDir(), "wrenn.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	srv, err := controlplane.New(ctx, controlplane.Config{Store: st, Secret: bytes.Repeat([]byte("s"), 32)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	hs := httptest.NewServer(apitest.ValidateResponses(t, srv.Handler()))
	t.Cleanup(hs.Close)
	u, err := st.CreateUser(ctx, store.User{Email: "ada@example.com", Name: "Ada", IsAdmin: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.AddTeamMember(ctx, store.PlatformTeamID, u.ID, store.RoleOwner); err != nil {
		t.Fatal(err)
	}
	nk := auth.GenerateAPIKey()
	if _, err := st.CreateAPIKey(ctx, store.APIKey{TeamID: store.PlatformTeamID, Name: "t", Prefix: nk.Prefix, Hash: nk.Hash, CreatedBy: u.ID}); err != nil {
		t.Fatal(err)
	}
	return hs.URL, nk.Plain
}

func TestLoginAndJSONAgainstControlPlane(t *testing.T) {
	cfgPath := isolate(t)
	url, key := controlPlane(t)

	_, errOut, code := runCLI(t, nil, "login", "--url", url, "--key", "wrn_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
	if code == 0 || !strings.Contains(errOut, "refused the key") {
		t.Errorf("login with a bad key: exit %d, %q", code, errOut)
	}
	if _, err := os.Stat(cfgPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused login wrote the config (%v)", err)
	}

	keyFile := filepath.Join(t.TempDir(), "admin.key")
	if err := os.WriteFile(keyFile, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runCLI(t, nil, "login", "--url", url+"/", "--key-file", keyFile)
	if code != 0 || !strings.Contains(out, "Logged in to "+url+" as ada@example.com (team Platform)") {
		t.Fatalf("login: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	st, err := os.Stat(cfgPath)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("config %s: %v, mode %v; want 0600", cfgPath, err, st.Mode())
	}
	var saved clientConfig
	b, _ := os.ReadFile(cfgPath)
	if err := json.Unmarshal(b, &saved); err != nil || saved.URL != url || saved.APIKey != key {
		t.Errorf("saved config = %+v (%v); want url %s and the key", saved, err, url)
	}

	// Key on standard input.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(w, key)
	_ = w.Close()
	if _, errOut, code := runCLI(t, r, "login", "--url", url); code != 0 {
		t.Errorf("login from stdin: exit %d, %s", code, errOut)
	}
	_ = r.Close()

	tests := []struct {
		args []string
		want string
	}{
		{[]string{"capsule", "ls", "--json"}, "[]\n"},
		{[]string{"capsule", "ls"}, "ID  STATUS  TEMPLATE  VCPUS  MEMORY  CREATED  EXPIRES\n"},
	}
	for _, tt := range tests {
		got, errOut, code := runCLI(t, nil, tt.args...)
		if code != 0 || got != tt.want {
			t.Errorf("wrenn %v: exit %d, stdout %q (stderr %q); want %q", tt.args, code, got, errOut, tt.want)
		}
	}
	out, _, code = runCLI(t, nil, "template", "ls", "--json")
	var tmpls []struct {
		ID, Name string
		Public   bool
	}
	if err := json.Unmarshal([]byte(out), &tmpls); err != nil || code != 0 {
		t.Fatalf("template ls --json: exit %d, %q: %v", code, out, err)
	}
	names := map[string]bool{}
	for _, tp := range tmpls {
		names[tp.Name] = tp.Public
	}
	if !names["minimal"] || !names["base"] {
		t.Errorf("template ls --json = %s; want the public minimal and base", out)
	}

	// No host registered: a friendly 503, no internal detail.
	_, errOut, code = runCLI(t, nil, "capsule", "create", "-t", "minimal")
	if code == 0 || !strings.Contains(errOut, "no capacity is available") || !strings.Contains(errOut, "(unavailable)") {
		t.Errorf("create without hosts: exit %d, %q; want the friendly unavailable message", code, errOut)
	}
	_, errOut, code = runCLI(t, nil, "capsule", "get", "cl-nope")
	if code == 0 || !strings.Contains(errOut, `capsule "cl-nope" not found (not_found)`) {
		t.Errorf("get unknown: exit %d, %q", code, errOut)
	}
	_, errOut, code = runCLI(t, nil, "capsule", "ls", "--api-key", "wrn_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")
	if code == 0 || !strings.Contains(errOut, "invalid API key at "+url+": run `wrenn login`") {
		t.Errorf("ls with a bad key: exit %d, %q; want the login hint", code, errOut)
	}
	t.Setenv("WRENN_API_KEY", "wrn_cccccccccccccccccccccccccccccccc")
	if _, errOut, code = runCLI(t, nil, "capsule", "ls"); code == 0 || !strings.Contains(errOut, "run `wrenn login`") {
		t.Errorf("$WRENN_API_KEY did not override the config: exit %d, %q", code, errOut)
	}
}

func TestSplitRemote(t *testing.T) {
	tests := []struct {
		in       string
		id, path string
		ok       bool
	}{
		{"cl-abc:/tmp/x", "cl-abc", "/tmp/x", true},
		{"cl-abc:", "cl-abc", "", true},
		{"cl-abc:/a:b", "cl-abc", "/a:b", true},
		{"./cl-abc:/x", "", "", false},
		{"/tmp/file", "", "", false},
		{"C:/file", "", "", false},
		{"-", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			id, p, ok := splitRemote(tt.in)
			if id != tt.id || p != tt.path || ok != tt.ok {
				t.Errorf("splitRemote(%q) = %q, %q, %v; want %q, %q, %v", tt.in, id, p, ok, tt.id, tt.path, tt.ok)
			}
		})
	}
}

func TestExitStatus(t *testing.T) {
	tests := []struct {
		code     int
		msg      string
		wantCode int
		wantNil  bool
	}{
		{0, "", 0, true},
		{3, "", 3, false},
		{0, "killed by a signal", 1, false},
		{137, "signal: killed", 137, false},
	}
	for _, tt := range tests {
		err := exitStatus(tt.code, tt.msg)
		if tt.wantNil {
			if err != nil {
				t.Errorf("exitStatus(%d, %q) = %v; want nil", tt.code, tt.msg, err)
			}
			continue
		}
		var ee *exitError
		if !errors.As(err, &ee) || ee.ExitCode() != tt.wantCode {
			t.Errorf("exitStatus(%d, %q) = %v; want exit code %d", tt.code, tt.msg, err, tt.wantCode)
		}
	}
}

func TestShellNeedsTerminal(t *testing.T) {
	isolate(t)
	url, key := controlPlane(t)
	_, errOut, code := runCLI(t, nil, "capsule", "shell", "cl-abc", "--url", url, "--api-key", key)
	if code == 0 || !strings.Contains(errOut, "needs a terminal") {
		t.Errorf("shell without a terminal: exit %d, %q", code, errOut)
	}
}

func TestUpRefusesBadFlags(t *testing.T) {
	isolate(t)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"up", "--on-exit", "explode"}, "--on-exit must be pause or destroy"},
		{[]string{"up", "--subnet", "nonsense"}, "--subnet"},
		{[]string{"up", "--log-level", "loud"}, "--log-level"},
		{[]string{"up", "--default-rootfs-size", "lots"}, "--default-rootfs-size"},
	} {
		_, errOut, code := runCLI(t, nil, tt.args...)
		if code == 0 || !strings.Contains(errOut, tt.want) {
			t.Errorf("wrenn %v: exit %d, %q; want %q", tt.args, code, errOut, tt.want)
		}
	}
}

func TestTemplateImportChecks(t *testing.T) {
	isolate(t)
	_, errOut, code := runCLI(t, nil, "template", "import", "bad name!", "/tmp")
	if code == 0 || !strings.Contains(errOut, "not a valid template name") {
		t.Errorf("bad name: exit %d, %q", code, errOut)
	}
	if os.Geteuid() == 0 {
		_, errOut, code = runCLI(t, nil, "template", "import", "x", "/tmp", "--home", t.TempDir())
		if code == 0 || !strings.Contains(errOut, "no Wrenn home at") {
			t.Errorf("empty home: exit %d, %q", code, errOut)
		}
	}
}

// TestRootHasClientCommands checks that NewRoot wires the client commands.
func TestRootHasClientCommands(t *testing.T) {
	root := NewRoot()
	for _, name := range []string{"login", "capsule", "template", "up"} {
		if c, _, err := root.Find([]string{name}); err != nil || c.Name() != name {
			t.Errorf("wrenn %s is not wired into NewRoot (internal/cli/cli.go): %v", name, err)
		}
	}
}
