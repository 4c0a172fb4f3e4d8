package wrenn_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/coder/websocket"

	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
	wrenn "github.com/wrenn-dev/wrenn/sdk"
)

// bigBinary uploads size random bytes to path in the capsule and returns
// them.
func bigBinary(t *testing.T, c *wrenn.Client, id, path string, size int) []byte {
	t.Helper()
	rng := rand.New(rand.NewPCG(21, uint64(size)))
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	if _, err := c.Files.Write(testutil.Context(t, testutil.Long), id, path, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	return data
}

// TestExecStreamLargeBinaryExact: a large stream of random bytes (every
// value, no line structure), with stderr written in between, arrives byte
// for byte through agent and control plane (binary frames), and the exit
// code after it is the command's (issue 21: the output path decodes into
// pooled buffers and calls the in-process agent without a socket).
func TestExecStreamLargeBinaryExact(t *testing.T) {
	c := client(t)
	ctx := testutil.Context(t, testutil.Long)
	capsule := newCapsule(t, c)
	data := bigBinary(t, c, capsule.ID, "/tmp/big.bin", 8<<20)
	var want, wantErr bytes.Buffer
	for i := range 4 {
		want.Write(data)
		wantErr.WriteString("pass " + string(rune('0'+i)) + "\n")
	}
	var stdout, stderr bytes.Buffer
	st, err := c.ExecStream(ctx, capsule.ID, wrenn.ExecRequest{
		Cmd: "sh", Args: []string{"-c", `for i in 0 1 2 3; do cat /tmp/big.bin; echo "pass $i" >&2; done; exit 5`},
	}, &stdout, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(stdout.Bytes(), want.Bytes()) {
		t.Fatalf("stdout: %d bytes, want %d (or the bytes differ)", stdout.Len(), want.Len())
	}
	if stderr.String() != wantErr.String() {
		t.Errorf("stderr %q, want %q", stderr.String(), wantErr.String())
	}
	if st.ExitCode != 5 || !st.Exited {
		t.Errorf("exit %+v after the stream; want exit code 5", st)
	}
}

// TestExecStreamLargeBinaryJSON: an older client (JSON events) gets the
// same large binary stream exactly, base64-encoded, then the exit code.
func TestExecStreamLargeBinaryJSON(t *testing.T) {
	c := client(t)
	ctx := testutil.Context(t, testutil.Long)
	capsule := newCapsule(t, c)
	data := bigBinary(t, c, capsule.ID, "/tmp/big.bin", 4<<20)
	u := strings.Replace(wrennURL, "http", "ws", 1) + "/v1/capsules/" + capsule.ID + "/exec/stream"
	conn, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: http.Header{"X-API-Key": {wrennKey}}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	conn.SetReadLimit(8 << 20)
	req, _ := json.Marshal(wrennapi.Exec{Cmd: "sh", Args: []string{"-c", "cat /tmp/big.bin /tmp/big.bin; exit 4"}})
	if err := conn.Write(ctx, websocket.MessageText, req); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	for {
		typ, msg, err := conn.Read(ctx)
		if err != nil {
			t.Fatalf("stream ended before the end event: %v", err)
		}
		if typ != websocket.MessageText {
			t.Fatal("a binary message to a client that did not ask for binary frames")
		}
		var ev wrennapi.ExecEvent
		if err := json.Unmarshal(msg, &ev); err != nil {
			t.Fatal(err)
		}
		switch ev.Type {
		case "stdout":
			if ev.DataB64 == "" {
				got.WriteString(ev.Data)
				continue
			}
			b, err := base64.StdEncoding.DecodeString(ev.DataB64)
			if err != nil {
				t.Fatal(err)
			}
			got.Write(b)
		case "end":
			if want := append(bytes.Clone(data), data...); !bytes.Equal(got.Bytes(), want) {
				t.Fatalf("stdout: %d bytes, want %d (or the bytes differ)", got.Len(), len(want))
			}
			if ev.ExitCode == nil || *ev.ExitCode != 4 {
				t.Fatalf("end %+v; want exit code 4", ev)
			}
			return
		case "error":
			t.Fatalf("error event %+v", ev)
		}
	}
}

// TestExecStreamInterleaving: stdout and stderr written alternately (each
// after the other was read) arrive in that order, each stream's bytes in
// order, before the end.
func TestExecStreamInterleaving(t *testing.T) {
	c := client(t)
	ctx := testutil.Context(t, testutil.Long)
	capsule := newCapsule(t, c)
	var mu sync.Mutex
	var seq []string
	rec := func(tag string) writerFunc {
		return func(b []byte) (int, error) {
			mu.Lock()
			defer mu.Unlock()
			for _, line := range strings.SplitAfter(string(b), "\n") {
				if line != "" {
					seq = append(seq, tag+strings.TrimSpace(line))
				}
			}
			return len(b), nil
		}
	}
	// A pause between writes: two pipes have no order between them
	// otherwise (envd reads them independently, as any reader would).
	st, err := c.ExecStream(ctx, capsule.ID, wrenn.ExecRequest{
		Cmd: "sh", Args: []string{"-c", `for i in 1 2 3 4 5 6; do echo o$i; sleep 0.1; echo e$i >&2; sleep 0.1; done; exit 9`},
	}, rec("out:"), rec("err:"))
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := 1; i <= 6; i++ {
		want = append(want, "out:o"+string(rune('0'+i)), "err:e"+string(rune('0'+i)))
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(seq, ",") != strings.Join(want, ",") {
		t.Errorf("order %v, want %v", seq, want)
	}
	if st.ExitCode != 9 {
		t.Errorf("exit %+v; want exit code 9", st)
	}
}
