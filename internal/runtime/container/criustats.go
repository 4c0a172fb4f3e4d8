package container

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// criuStats is what CRIU says of one dump or restore in its stats-dump or
// stats-restore image (criu/images/stats.proto; times in microseconds).
// Pause and resume log it, so where their time goes inside CRIU is known
// (docs/PERFORMANCE.md "Pause and resume to disk").
type criuStats struct {
	// Dump: freezing the tasks, the time they stayed frozen, collecting
	// their memory into page pipes, and writing the pipes to the images.
	Freezing, Frozen, MemDump, MemWrite time.Duration
	PagesScanned, PagesWritten          uint64
	// Restore: forking the task tree, and the whole restore.
	Forking, Restore time.Duration
	PagesRestored    uint64
}

// readCRIUStats reads the stats image name ("stats-dump" or
// "stats-restore") from the first of dirs that has it.
func readCRIUStats(name string, dirs ...string) (criuStats, error) {
	var st criuStats
	var b []byte
	var err error
	for _, d := range dirs {
		if b, err = os.ReadFile(filepath.Join(d, name)); err == nil {
			break
		}
	}
	if err != nil {
		return st, err
	}
	// Two magics (the stats images' service magic and their own), then
	// one length-prefixed stats_entry.
	if len(b) < 12 {
		return st, errors.New("truncated stats image")
	}
	b = b[8:]
	if len(b) < 4 {
		return st, errors.New("truncated stats image")
	}
	n := int(binary.LittleEndian.Uint32(b))
	b = b[4:]
	if n > len(b) {
		return st, errors.New("truncated stats entry")
	}
	us := func(v uint64) time.Duration { return time.Duration(v) * time.Microsecond }
	err = eachVarint(b[:n], func(num protowire.Number, v uint64, sub []byte) error {
		switch num {
		case 1: // dump
			return eachVarint(sub, func(num protowire.Number, v uint64, _ []byte) error {
				switch num {
				case 1:
					st.Freezing = us(v)
				case 2:
					st.Frozen = us(v)
				case 3:
					st.MemDump = us(v)
				case 4:
					st.MemWrite = us(v)
				case 5:
					st.PagesScanned = v
				case 7:
					st.PagesWritten = v
				}
				return nil
			})
		case 2: // restore
			return eachVarint(sub, func(num protowire.Number, v uint64, _ []byte) error {
				switch num {
				case 3:
					st.Forking = us(v)
				case 4:
					st.Restore = us(v)
				case 5:
					st.PagesRestored = v
				}
				return nil
			})
		}
		return nil
	})
	return st, err
}

// eachVarint calls f for every varint field (sub nil) and every
// length-delimited field (v 0) of the protobuf message b.
func eachVarint(b []byte, f func(num protowire.Number, v uint64, sub []byte) error) error {
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return errors.New("bad stats field")
		}
		b = b[l:]
		switch typ {
		case protowire.VarintType:
			v, l := protowire.ConsumeVarint(b)
			if l < 0 {
				return errors.New("bad stats varint")
			}
			b = b[l:]
			if err := f(num, v, nil); err != nil {
				return err
			}
		case protowire.BytesType:
			v, l := protowire.ConsumeBytes(b)
			if l < 0 {
				return errors.New("bad stats message")
			}
			b = b[l:]
			if err := f(num, 0, v); err != nil {
				return err
			}
		default:
			l := protowire.ConsumeFieldValue(num, typ, b)
			if l < 0 {
				return errors.New("bad stats field")
			}
			b = b[l:]
		}
	}
	return nil
}
