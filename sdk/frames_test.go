package wrenn_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/coder/websocket"

	"github.com/wrenn-dev/wrenn/internal/testutil"
	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
)

// TestExecStreamFrames: exec/stream with frames=binary sends output as
// binary messages (a stream byte, 1 stdout / 2 stderr, then the raw
// bytes) and start/end as JSON text; without it (an older client) every
// event is a JSON text message, binary output base64-encoded.
func TestExecStreamFrames(t *testing.T) {
	c := client(t)
	ctx := testutil.Context(t, testutil.Long)
	capsule := newCapsule(t, c)
	base := strings.Replace(wrennURL, "http", "ws", 1) + "/v1/capsules/" + capsule.ID + "/exec/stream"
	req, _ := json.Marshal(wrennapi.Exec{Cmd: "sh", Args: []string{"-c", `printf 'out\377'; printf err >&2`}})
	run := func(query string) (texts []wrennapi.ExecEvent, bins [][]byte) {
		t.Helper()
		conn, _, err := websocket.Dial(ctx, base+query, &websocket.DialOptions{HTTPHeader: http.Header{"X-API-Key": {wrennKey}}})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.CloseNow()
		if err := conn.Write(ctx, websocket.MessageText, req); err != nil {
			t.Fatal(err)
		}
		for {
			typ, b, err := conn.Read(ctx)
			if err != nil {
				t.Fatalf("stream ended before the end event: %v", err)
			}
			if typ == websocket.MessageBinary {
				bins = append(bins, b)
				continue
			}
			var ev wrennapi.ExecEvent
			if err := json.Unmarshal(b, &ev); err != nil {
				t.Fatalf("text message %q is not a JSON event: %v", b, err)
			}
			texts = append(texts, ev)
			if ev.Type == "end" || ev.Type == "error" {
				return texts, bins
			}
		}
	}

	texts, bins := run("?frames=binary")
	var stdout, stderr []byte
	for _, b := range bins {
		switch b[0] {
		case 1:
			stdout = append(stdout, b[1:]...)
		case 2:
			stderr = append(stderr, b[1:]...)
		default:
			t.Errorf("binary frame with stream byte %d", b[0])
		}
	}
	if !bytes.Equal(stdout, []byte("out\377")) || string(stderr) != "err" {
		t.Errorf("binary frames: stdout %q stderr %q", stdout, stderr)
	}
	for _, ev := range texts {
		if ev.Type != "start" && ev.Type != "end" {
			t.Errorf("binary frames: text event %+v; want only start and end", ev)
		}
	}
	if last := texts[len(texts)-1]; last.Type != "end" || last.ExitCode == nil || *last.ExitCode != 0 {
		t.Errorf("binary frames: last event %+v; want end, exit 0", last)
	}

	texts, bins = run("")
	if len(bins) != 0 {
		t.Errorf("JSON form: %d binary messages", len(bins))
	}
	var out, errOut string
	for _, ev := range texts {
		switch ev.Type {
		case "stdout":
			if ev.DataB64 != "" {
				out += "b64:" + ev.DataB64
			} else {
				out += ev.Data
			}
		case "stderr":
			errOut += ev.Data
		}
	}
	if out != "b64:b3V0/w==" || errOut != "err" {
		t.Errorf("JSON form: stdout %q stderr %q; want base64 of out\\377 and err", out, errOut)
	}
}
