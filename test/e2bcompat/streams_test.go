package e2bcompat

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/proto/envd/process"
	"github.com/wrenn-dev/wrenn/proto/envd/process/processconnect"
)

// sandboxHeaders adds the headers E2B's SDK sends on envd calls.
type sandboxHeaders struct{ id, token string }

func (h sandboxHeaders) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("E2b-Sandbox-Id", h.id)
	r.Header.Set("E2b-Sandbox-Port", "49983")
	r.Header.Set("X-Access-Token", h.token)
	return http.DefaultTransport.RoundTrip(r)
}

// checkManyStreams runs streams short commands with streamed output
// through <url>/e2b/envd, par at a time, on a fresh sandbox, and fails
// the test for any stream that does not arrive whole. It is the
// integration side of internal/relay's regression tests: before both hops
// of the route were full duplex, a few streams in a hundred were cut
// mid-answer on a busy host (the SDK's "terminated", issue 14).
func checkManyStreams(ctx context.Context, t *testing.T, url, key string, streams, par int) {
	t.Helper()
	api := func(method, path, body string) []byte {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, method, url+"/e2b"+path, strings.NewReader(body))
		req.Header.Set("X-API-Key", key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode >= 300 {
			t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
		}
		return b
	}
	var sbx struct{ SandboxID, EnvdAccessToken string }
	if err := json.Unmarshal(api("POST", "/sandboxes", `{"templateID":"minimal","timeout":300}`), &sbx); err != nil {
		t.Fatal(err)
	}
	defer api("DELETE", "/sandboxes/"+sbx.SandboxID, "")
	client := processconnect.NewProcessClient(&http.Client{Transport: sandboxHeaders{sbx.SandboxID, sbx.EnvdAccessToken}},
		url+"/e2b/envd", connect.WithProtoJSON())
	one := func(n int) error {
		want := fmt.Sprintf("s%d-1\ns%d-2\ns%d-3\n", n, n, n)
		st, err := client.Start(ctx, connect.NewRequest(&process.StartRequest{Process: &process.ProcessConfig{
			Cmd: "/bin/sh", Args: []string{"-c", fmt.Sprintf("for i in 1 2 3; do echo s%d-$i; done", n)},
		}}))
		if err != nil {
			return err
		}
		defer func() { _ = st.Close() }()
		var out bytes.Buffer
		ended := false
		for st.Receive() {
			ev := st.Msg().GetEvent()
			out.Write(ev.GetData().GetStdout())
			if e := ev.GetEnd(); e != nil {
				ended = e.GetExitCode() == 0
			}
		}
		if err := st.Err(); err != nil || !ended || out.String() != want {
			return fmt.Errorf("stream %d: output %q, ended cleanly %v, error %w", n, out.String(), ended, err)
		}
		return nil
	}
	errs := make(chan error, par)
	for g := range par {
		go func() {
			for i := g; i < streams; i += par {
				if err := one(i); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range par {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
