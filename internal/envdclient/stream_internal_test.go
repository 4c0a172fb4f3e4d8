package envdclient

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	pb "github.com/wrenn-dev/wrenn/proto/envd/process"
)

func dataEvent(out any) *pb.ProcessEvent {
	de := &pb.ProcessEvent_DataEvent{}
	switch o := out.(type) {
	case *pb.ProcessEvent_DataEvent_Stdout:
		de.Output = o
	case *pb.ProcessEvent_DataEvent_Stderr:
		de.Output = o
	case *pb.ProcessEvent_DataEvent_Pty:
		de.Output = o
	}
	return &pb.ProcessEvent{Event: &pb.ProcessEvent_Data{Data: de}}
}

// TestReuseCodecMatchesProto: for every kind of response, decoding with
// reuseCodec gives what proto.Unmarshal gives, fast path or not.
func TestReuseCodecMatchesProto(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789"), 100_000)
	errText := "boom"
	events := []*pb.ProcessEvent{
		{Event: &pb.ProcessEvent_Start{Start: &pb.ProcessEvent_StartEvent{Pid: 42}}},
		dataEvent(&pb.ProcessEvent_DataEvent_Stdout{Stdout: []byte("hello\n")}),
		dataEvent(&pb.ProcessEvent_DataEvent_Stderr{Stderr: []byte("oops")}),
		dataEvent(&pb.ProcessEvent_DataEvent_Pty{Pty: []byte("\x1b[1mtty")}),
		dataEvent(&pb.ProcessEvent_DataEvent_Stdout{Stdout: big}),
		dataEvent(&pb.ProcessEvent_DataEvent_Stdout{Stdout: []byte{}}),
		{Event: &pb.ProcessEvent_End{End: &pb.ProcessEvent_EndEvent{ExitCode: -3, Exited: true, Status: "exit status 3", Error: &errText}}},
		{Event: &pb.ProcessEvent_Keepalive{Keepalive: &pb.ProcessEvent_KeepAlive{}}},
		{},
	}
	var wires [][]byte
	for _, ev := range events {
		for _, m := range []proto.Message{&pb.StartResponse{Event: ev}, &pb.ConnectResponse{Event: ev}} {
			b, err := proto.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			wires = append(wires, b)
		}
	}
	// Shapes the fast path must refuse: an unknown field after the event,
	// two data fields, a field in the wrong wire type.
	withUnknown := protowire.AppendTag(append([]byte(nil), wires[2]...), 9, protowire.VarintType)
	withUnknown = protowire.AppendVarint(withUnknown, 7)
	wires = append(wires, withUnknown)
	twice := append(append([]byte(nil), wires[2]...), wires[4]...)
	wires = append(wires, twice)
	wrongType := protowire.AppendTag(nil, fieldEvent, protowire.VarintType)
	wires = append(wires, protowire.AppendVarint(wrongType, 1))

	c := &reuseCodec{}
	for i, b := range wires {
		for _, mk := range []func() proto.Message{
			func() proto.Message { return &pb.StartResponse{} },
			func() proto.Message { return &pb.ConnectResponse{} },
		} {
			want, got := mk(), mk()
			if err := proto.Unmarshal(b, want); err != nil {
				t.Fatalf("wire %d: proto: %v", i, err)
			}
			if err := c.Unmarshal(b, got); err != nil {
				t.Fatalf("wire %d: reuseCodec: %v", i, err)
			}
			if !proto.Equal(want, got) {
				t.Errorf("wire %d: got %v, want %v", i, got, want)
			}
		}
	}
	// Damaged input fails as it does with proto.
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		b := append([]byte(nil), wires[r.IntN(len(wires))]...)
		if len(b) == 0 {
			continue
		}
		switch i % 3 {
		case 0:
			b = b[:r.IntN(len(b))]
		case 1:
			b[r.IntN(len(b))] ^= byte(1 + r.IntN(255))
		default:
			b = append(b, byte(r.IntN(256)))
		}
		want, got := &pb.StartResponse{}, &pb.StartResponse{}
		werr := proto.Unmarshal(b, want)
		gerr := c.Unmarshal(b, got)
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("case %d %x: proto err %v, reuseCodec err %v", i, b, werr, gerr)
		}
		if werr == nil && !proto.Equal(want, got) {
			t.Fatalf("case %d %x: got %v, want %v", i, b, got, want)
		}
	}
	// Other messages go through proto.
	lr := &pb.ListResponse{Processes: []*pb.ProcessInfo{{Pid: 7, Tag: proto.String("t")}}}
	b, _ := proto.Marshal(lr)
	var got pb.ListResponse
	if err := c.Unmarshal(b, &got); err != nil || !proto.Equal(lr, &got) {
		t.Fatalf("ListResponse = %v, %v", &got, err)
	}
	if err := c.Unmarshal(b, struct{}{}); err == nil {
		t.Fatal("non-protobuf target accepted")
	}
}

// TestReuseCodecReusesBuffer: output messages share one buffer (each
// valid until the next), so a stream's steady state allocates only the
// small message structs, not the data.
func TestReuseCodecReusesBuffer(t *testing.T) {
	mk := func(n int, fill byte) []byte {
		b, err := proto.Marshal(&pb.StartResponse{Event: dataEvent(&pb.ProcessEvent_DataEvent_Stdout{Stdout: bytes.Repeat([]byte{fill}, n)})})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	c := &reuseCodec{}
	first, second := &pb.StartResponse{}, &pb.StartResponse{}
	if err := c.Unmarshal(mk(1<<20, 'a'), first); err != nil {
		t.Fatal(err)
	}
	if err := c.Unmarshal(mk(1000, 'b'), second); err != nil {
		t.Fatal(err)
	}
	a, b := first.GetEvent().GetData().GetStdout(), second.GetEvent().GetData().GetStdout()
	if len(a) != 1<<20 || len(b) != 1000 || b[0] != 'b' || unsafe.SliceData(a) != unsafe.SliceData(b) {
		t.Fatalf("second message's data is not in the first one's buffer (len %d/%d)", len(a), len(b))
	}
	if cap(b) != len(b) {
		t.Errorf("data cap %d > len %d: an append by the caller would write into the shared buffer", cap(b), len(b))
	}
	wire := mk(1<<20, 'c')
	allocs := testing.AllocsPerRun(50, func() {
		var m pb.StartResponse
		if err := c.Unmarshal(wire, &m); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 6 {
		t.Errorf("%v allocations per 1 MiB message, want only the message structs", allocs)
	}
}
