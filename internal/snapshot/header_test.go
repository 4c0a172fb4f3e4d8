package snapshot

import (
	"errors"
	"reflect"
	"testing"

	"pgregory.net/rapid"
)

// genHeader draws a random valid header.
func genHeader(t *rapid.T) *Header {
	bs := rapid.SampledFrom([]int64{DefaultBlockSize, 16384, HugeBlockSize}).Draw(t, "bs")
	nblocks := rapid.Int64Range(0, 200).Draw(t, "nblocks")
	size := nblocks * bs
	if nblocks > 0 {
		size -= rapid.Int64Range(0, bs-1).Draw(t, "short")
	}
	h := &Header{BlockSize: bs, Size: size, BuildID: NewBuildID()}
	if rapid.Bool().Draw(t, "diff") {
		h.Generation = rapid.Uint64Range(1, 1<<40).Draw(t, "gen")
		h.BaseBuildID = NewBuildID()
	}
	ids := []BuildID{h.BuildID, NewBuildID(), NewBuildID()}
	next := map[BuildID]int64{}
	for blk := int64(0); blk < nblocks; {
		c := rapid.Int64Range(1, nblocks-blk).Draw(t, "count")
		m := Mapping{Start: blk, Count: c}
		if k := rapid.IntRange(0, len(ids)).Draw(t, "kind"); k == len(ids) {
			m.Zero = true
		} else {
			m.Build = ids[k]
			m.DataBlock = next[m.Build] + rapid.Int64Range(0, 3).Draw(t, "gap")
			next[m.Build] = m.DataBlock + c
		}
		h.Mappings = append(h.Mappings, m)
		blk += c
	}
	if h.Mappings == nil {
		h.Mappings = []Mapping{}
	}
	for id, n := range next {
		h.Builds = append(h.Builds, BuildRef{ID: id, DataLen: dataFileLen(n+rapid.Int64Range(0, 2).Draw(t, "slack"), bs)})
	}
	sortBuilds(h.Builds)
	if h.Builds == nil {
		h.Builds = []BuildRef{}
	}
	if nblocks > 0 {
		h.PrefetchOrder = rapid.SliceOfN(rapid.Int64Range(0, nblocks-1), 0, 50).Draw(t, "prefetch")
		if len(h.PrefetchOrder) == 0 {
			h.PrefetchOrder = nil
		}
	}
	h.Metadata = rapid.MapOfN(rapid.StringMatching(`[a-z_]{1,12}`), rapid.String(), 0, 4).Draw(t, "meta")
	if len(h.Metadata) == 0 {
		h.Metadata = nil
	}
	return h
}

func TestHeaderRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		h := genHeader(t)
		b, err := h.Marshal()
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		got, err := ParseHeader(b)
		if err != nil {
			t.Fatalf("ParseHeader: %v", err)
		}
		if !reflect.DeepEqual(got, h) {
			t.Fatalf("round trip differs:\n got %+v\nwant %+v", got, h)
		}
		// O(log n) lookup agrees with a linear scan.
		for blk := int64(-1); blk <= h.Blocks(); blk++ {
			m, ok := got.Lookup(blk)
			var want Mapping
			wantOK := false
			for _, x := range h.Mappings {
				if blk >= x.Start && blk < x.End() {
					want, wantOK = x, true
				}
			}
			if ok != wantOK || m != want {
				t.Fatalf("Lookup(%d) = %+v,%v want %+v,%v", blk, m, ok, want, wantOK)
			}
		}
		// Every truncation and every single-bit flip is rejected.
		for i := range b {
			if _, err := ParseHeader(b[:i]); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("truncated to %d bytes: err = %v", i, err)
			}
		}
		i := rapid.IntRange(0, len(b)-1).Draw(t, "flipByte")
		bit := rapid.IntRange(0, 7).Draw(t, "flipBit")
		bad := append([]byte(nil), b...)
		bad[i] ^= 1 << bit
		if _, err := ParseHeader(bad); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("flipped bit %d of byte %d: err = %v", bit, i, err)
		}
	})
}

func TestValidateRejects(t *testing.T) {
	id, other := NewBuildID(), NewBuildID()
	good := func() *Header {
		return &Header{
			BlockSize: 4096, Size: 3 * 4096, BuildID: id,
			Builds:   []BuildRef{{ID: id, DataLen: dataFileLen(2, 4096)}},
			Mappings: []Mapping{{Start: 0, Count: 1, Zero: true}, {Start: 1, Count: 2, Build: id}},
		}
	}
	if err := good().Validate(); err != nil {
		t.Fatalf("good header: %v", err)
	}
	for _, tc := range []struct {
		name string
		mut  func(h *Header)
	}{
		{"block size not power of two", func(h *Header) { h.BlockSize = 5000 }},
		{"block size too big", func(h *Header) { h.BlockSize = 4 << 20 }},
		{"zero build id", func(h *Header) { h.BuildID = BuildID{} }},
		{"gap", func(h *Header) { h.Mappings[1].Start = 2 }},
		{"overlap", func(h *Header) { h.Mappings[0].Count = 2 }},
		{"short coverage", func(h *Header) { h.Size = 4 * 4096 }},
		{"unknown build", func(h *Header) { h.Mappings[1].Build = other }},
		{"data past end of build", func(h *Header) { h.Mappings[1].DataBlock = 1 }},
		{"unused build", func(h *Header) {
			h.Builds = append(h.Builds, BuildRef{ID: BuildID{0xff}, DataLen: dataFileLen(1, 4096)})
		}},
		{"zero mapping with location", func(h *Header) { h.Mappings[0].DataBlock = 3 }},
		{"prefetch out of range", func(h *Header) { h.PrefetchOrder = []int64{3} }},
		{"base on generation 0", func(h *Header) { h.BaseBuildID = other }},
		{"empty metadata key", func(h *Header) { h.Metadata = map[string]string{"": "x"} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := good()
			tc.mut(h)
			if err := h.Validate(); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Validate() = %v, want ErrCorrupt", err)
			}
			if _, err := h.Marshal(); err == nil {
				t.Fatal("Marshal accepted an invalid header")
			}
		})
	}
}

func FuzzParseHeader(f *testing.F) {
	id := NewBuildID()
	seeds := []*Header{
		{BlockSize: 4096, Size: 0, BuildID: id, Builds: []BuildRef{}, Mappings: []Mapping{}},
		{
			BlockSize: 4096, Size: 5*4096 - 7, Generation: 3, BuildID: id, BaseBuildID: NewBuildID(),
			Builds:        []BuildRef{{ID: id, DataLen: dataFileLen(4, 4096)}},
			Mappings:      []Mapping{{Start: 0, Count: 2, Build: id}, {Start: 2, Count: 1, Zero: true}, {Start: 3, Count: 2, Build: id, DataBlock: 2}},
			PrefetchOrder: []int64{4, 0, 1},
			Metadata:      map[string]string{"template_id": "base"},
		},
	}
	for _, h := range seeds {
		b, err := h.Marshal()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("WRNSNAP\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		// Anything accepted is valid, re-encodes, and parses back the same.
		if err := h.Validate(); err != nil {
			t.Fatalf("accepted an invalid header: %v", err)
		}
		b2, err := h.Marshal()
		if err != nil {
			t.Fatalf("Marshal of a parsed header: %v", err)
		}
		h2, err := ParseHeader(b2)
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if !reflect.DeepEqual(h, h2) {
			t.Fatalf("re-parse differs")
		}
	})
}
