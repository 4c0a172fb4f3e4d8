package agents

import (
	"fmt"
	"sync"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// outputCodec is Connect's binary protobuf codec for agent clients, except
// that a large output message (an ExecStreamResponse holding only stdout
// or stderr, a PtyOutput holding only data) is decoded by hand into a
// pooled buffer. A consumer done with the bytes hands the buffer back with
// ReleaseOutput; one that does not simply leaves it to the garbage
// collector, so every caller of the clients stays correct.
//
// Why (issue 21): decoding each output chunk of a stream into fresh
// memory (allocation, zeroing, page faults, collection) cost the control
// plane more than the copy itself (docs/PERFORMANCE.md).
//
// The codec holds no per-stream state, so one is shared by all clients.
type outputCodec struct{}

// Pooled output buffers: chunks of at least pooledMin bytes and at most
// pooledCap (envd reads at most 1 MiB at a time; messages carry a little
// framing on top) are decoded into buffers of capacity pooledCap. Smaller
// ones get their own allocation, so a small chunk a consumer keeps never
// pins a large buffer.
const (
	pooledMin = 32 << 10
	pooledCap = 1<<20 + 4<<10
)

var outputPool = sync.Pool{New: func() any { b := make([]byte, pooledCap); return &b }}

// ReleaseOutput returns the buffer of an output chunk decoded by an agent
// client (ExecStreamResponse stdout/stderr, PtyOutput data) to the pool.
// Call it only when nothing references b any more; b may be any slice:
// only buffers of the pool's capacity are kept.
func ReleaseOutput(b []byte) {
	if cap(b) != pooledCap {
		return
	}
	b = b[:cap(b)]
	outputPool.Put(&b)
}

func (outputCodec) Name() string { return "proto" }

func (outputCodec) Marshal(m any) ([]byte, error) {
	pm, ok := m.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("agents: %T is not a protobuf message", m)
	}
	return proto.Marshal(pm)
}

// MarshalAppend lets Connect marshal requests into its pooled buffers.
func (outputCodec) MarshalAppend(dst []byte, m any) ([]byte, error) {
	pm, ok := m.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("agents: %T is not a protobuf message", m)
	}
	return proto.MarshalOptions{}.MarshalAppend(dst, pm)
}

// Field numbers of the output oneofs (proto/hostagent/v1).
const (
	execStdout = 2
	execStderr = 3
	ptyData    = 2
)

func (outputCodec) Unmarshal(b []byte, m any) error {
	switch r := m.(type) {
	case *pb.ExecStreamResponse:
		if num, out, ok := onlyBytes(b); ok && (num == execStdout || num == execStderr) {
			r.Reset()
			if num == execStdout {
				r.Event = &pb.ExecStreamResponse_Stdout{Stdout: pooledCopy(out)}
			} else {
				r.Event = &pb.ExecStreamResponse_Stderr{Stderr: pooledCopy(out)}
			}
			return nil
		}
	case *pb.PtyOutput:
		if num, out, ok := onlyBytes(b); ok && num == ptyData {
			r.Reset()
			r.Event = &pb.PtyOutput_Data{Data: pooledCopy(out)}
			return nil
		}
	}
	pm, ok := m.(proto.Message)
	if !ok {
		return fmt.Errorf("agents: %T is not a protobuf message", m)
	}
	return proto.Unmarshal(b, pm)
}

// onlyBytes reports the field number and payload of b when b is exactly
// one length-delimited field large enough to pool; anything else is
// decoded the general way.
func onlyBytes(b []byte) (protowire.Number, []byte, bool) {
	if len(b) < pooledMin {
		return 0, nil, false
	}
	num, typ, tl := protowire.ConsumeTag(b)
	if tl < 0 || typ != protowire.BytesType {
		return 0, nil, false
	}
	v, vl := protowire.ConsumeBytes(b[tl:])
	if vl < 0 || tl+vl != len(b) || len(v) > pooledCap {
		return 0, nil, false
	}
	return num, v, true
}

// pooledCopy copies out into a pooled buffer (out is at most pooledCap
// bytes).
func pooledCopy(out []byte) []byte {
	bp, _ := outputPool.Get().(*[]byte)
	buf := (*bp)[:len(out)]
	copy(buf, out)
	return buf
}
