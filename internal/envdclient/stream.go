package envdclient

import (
	"fmt"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	pb "github.com/wrenn-dev/wrenn/proto/envd/process"
	"github.com/wrenn-dev/wrenn/proto/envd/process/processconnect"
)

// OneStream returns a Process client for one Start or Connect stream at a
// time whose output messages do not allocate: the output bytes of a
// received message (stdout, stderr or pty data) live in a buffer the
// client reuses, so they are valid only until the next Receive on the
// stream. Copy them (or send them on) before receiving again. Create one
// per stream; its unary calls work as on Client.Process.
//
// Why: a stream of large output otherwise allocates a fresh buffer per
// message, and touching new memory (page faults, zeroing) costs more than
// moving the bytes (see docs/BENCHMARKS.md).
func (c *Client) OneStream() processconnect.ProcessClient {
	return processconnect.NewProcessClient(c.stream, c.base, c.opts, connect.WithCodec(&reuseCodec{}))
}

// reuseCodec is connect's binary protobuf codec, except that it decodes a
// StartResponse or ConnectResponse carrying only output data by hand,
// copying the data into one buffer it reuses. Anything else goes through
// proto.Unmarshal.
type reuseCodec struct {
	buf []byte
}

func (*reuseCodec) Name() string { return "proto" }

func (*reuseCodec) Marshal(m any) ([]byte, error) {
	pm, ok := m.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("envdclient: %T is not a protobuf message", m)
	}
	return proto.Marshal(pm)
}

func (c *reuseCodec) Unmarshal(b []byte, m any) error {
	var ev **pb.ProcessEvent
	switch r := m.(type) {
	case *pb.StartResponse:
		ev = &r.Event
	case *pb.ConnectResponse:
		ev = &r.Event
	}
	if ev != nil {
		if e, ok := c.decodeData(b); ok {
			*ev = e
			return nil
		}
	}
	pm, ok := m.(proto.Message)
	if !ok {
		return fmt.Errorf("envdclient: %T is not a protobuf message", m)
	}
	return proto.Unmarshal(b, pm)
}

// Field numbers of the output path: Start/ConnectResponse.event,
// ProcessEvent.data, DataEvent.{stdout,stderr,pty}.
const (
	fieldEvent  = 1
	fieldData   = 2
	fieldStdout = 1
	fieldStderr = 2
	fieldPty    = 3
)

// only returns the payload of b when b is exactly one length-delimited
// field numbered num.
func only(b []byte, num protowire.Number) ([]byte, bool) {
	n, typ, tl := protowire.ConsumeTag(b)
	if tl < 0 || n != num || typ != protowire.BytesType {
		return nil, false
	}
	v, vl := protowire.ConsumeBytes(b[tl:])
	if vl < 0 || tl+vl != len(b) {
		return nil, false
	}
	return v, true
}

// decodeData decodes b when it is a response holding exactly one output
// data event and nothing else; otherwise it reports false and b is
// decoded the general way.
func (c *reuseCodec) decodeData(b []byte) (*pb.ProcessEvent, bool) {
	event, ok := only(b, fieldEvent)
	if !ok {
		return nil, false
	}
	data, ok := only(event, fieldData)
	if !ok {
		return nil, false
	}
	num, typ, tl := protowire.ConsumeTag(data)
	if tl < 0 || typ != protowire.BytesType || num < fieldStdout || num > fieldPty {
		return nil, false
	}
	out, ok := only(data, num)
	if !ok {
		return nil, false
	}
	if cap(c.buf) < len(out) {
		c.buf = make([]byte, len(out))
	}
	buf := c.buf[:len(out):len(out)]
	copy(buf, out)
	de := &pb.ProcessEvent_DataEvent{}
	switch num {
	case fieldStdout:
		de.Output = &pb.ProcessEvent_DataEvent_Stdout{Stdout: buf}
	case fieldStderr:
		de.Output = &pb.ProcessEvent_DataEvent_Stderr{Stderr: buf}
	default:
		de.Output = &pb.ProcessEvent_DataEvent_Pty{Pty: buf}
	}
	return &pb.ProcessEvent{Event: &pb.ProcessEvent_Data{Data: de}}, true
}
