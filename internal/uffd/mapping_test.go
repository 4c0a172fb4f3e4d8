package uffd

import (
	"os"
	"strings"
	"testing"
)

func TestParseMappings(t *testing.T) {
	ps := uint64(os.Getpagesize())
	tests := []struct {
		name    string
		json    string
		size    int64
		want    []Mapping
		wantErr string
	}{
		{
			name: "firecracker, sorted by address",
			json: `[{"base_host_virt_addr":2147483648,"size":8192,"offset":4096,"page_size":4096,"page_size_kib":4096},
			        {"base_host_virt_addr":1073741824,"size":4096,"offset":0,"page_size":4096,"page_size_kib":4096}]`,
			size: 3 * 4096,
			want: []Mapping{
				{BaseHostVirtAddr: 1 << 30, Size: 4096, Offset: 0, PageSize: 4096},
				{BaseHostVirtAddr: 2 << 30, Size: 8192, Offset: 4096, PageSize: 4096},
			},
		},
		{
			name: "legacy page_size_kib in bytes",
			json: `[{"base_host_virt_addr":2097152,"size":2097152,"offset":0,"page_size_kib":2097152}]`,
			size: 2 << 20,
			want: []Mapping{{BaseHostVirtAddr: 2 << 20, Size: 2 << 20, PageSize: 2 << 20}},
		},
		{
			name: "legacy page_size_kib in KiB",
			json: `[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size_kib":4}]`,
			size: 4096,
			want: []Mapping{{BaseHostVirtAddr: 4096, Size: 4096, PageSize: 4096}},
		},
		{
			name: "no page size means system page",
			json: `[{"base_host_virt_addr":4096,"size":4096,"offset":0}]`,
			size: 4096,
			want: []Mapping{{BaseHostVirtAddr: 4096, Size: 4096, PageSize: ps}},
		},
		{name: "empty", json: `[]`, size: 4096, wantErr: "empty"},
		{name: "not json", json: `{`, size: 4096, wantErr: "decode"},
		{name: "beyond image", json: `[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096}]`, size: 4096, wantErr: "outside image"},
		{name: "offset overflow", json: `[{"base_host_virt_addr":4096,"size":4096,"offset":18446744073709551615,"page_size":4096}]`, size: 4096, wantErr: "outside image"},
		{name: "unaligned base", json: `[{"base_host_virt_addr":100,"size":4096,"offset":0,"page_size":4096}]`, size: 4096, wantErr: "not aligned"},
		{name: "partial page", json: `[{"base_host_virt_addr":4096,"size":100,"offset":0,"page_size":4096}]`, size: 4096, wantErr: "multiple"},
		{name: "bad page size", json: `[{"base_host_virt_addr":4096,"size":12288,"offset":0,"page_size":12288}]`, size: 12288, wantErr: "power of two"},
		{
			name: "overlap",
			json: `[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096},{"base_host_virt_addr":8192,"size":4096,"offset":0,"page_size":4096}]`,
			size: 8192, wantErr: "overlap",
		},
		{name: "address overflow", json: `[{"base_host_virt_addr":18446744073709547520,"size":8192,"offset":0,"page_size":4096}]`, size: 8192, wantErr: "overflows"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseMappings([]byte(tt.json), tt.size)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("mapping %d: got %+v, want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

// FuzzParseMappings: the handshake comes from another process; whatever it
// sends, the parser must not panic and what it accepts must be safe to use.
func FuzzParseMappings(f *testing.F) {
	f.Add([]byte(`[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}]`), int64(4096))
	f.Add([]byte(`[{"base_host_virt_addr":0,"size":0}]`), int64(0))
	f.Add([]byte(`null`), int64(1))
	f.Fuzz(func(t *testing.T, data []byte, size int64) {
		ms, err := ParseMappings(data, size)
		if err != nil {
			return
		}
		sys := uint64(os.Getpagesize())
		for i, m := range ms {
			if m.PageSize < sys || m.PageSize&(m.PageSize-1) != 0 || m.Size == 0 || m.Size%m.PageSize != 0 ||
				m.BaseHostVirtAddr%m.PageSize != 0 || m.Offset+m.Size > uint64(size) || m.Offset+m.Size < m.Offset {
				t.Fatalf("accepted invalid mapping %+v", m)
			}
			if i > 0 && ms[i-1].BaseHostVirtAddr+ms[i-1].Size > m.BaseHostVirtAddr {
				t.Fatalf("accepted overlapping or unsorted mappings %+v", ms)
			}
		}
	})
}

func TestBitmap(t *testing.T) {
	b := newBitmap(130)
	if b.set(3) {
		t.Error("set(3) on empty bitmap reported already set")
	}
	if !b.set(3) {
		t.Error("second set(3) did not report already set")
	}
	if got := b.setRange(60, 70); got != 10 {
		t.Errorf("setRange(60,70) = %d newly set, want 10", got)
	}
	if got := b.setRange(65, 130); got != 60 {
		t.Errorf("setRange(65,130) = %d newly set, want 60", got)
	}
	b.clear(129)
	b.clear(3)
	tests := []struct {
		i    int
		want bool
	}{{0, false}, {3, false}, {59, false}, {60, true}, {63, true}, {64, true}, {128, true}, {129, false}}
	for _, tt := range tests {
		if got := b.get(tt.i); got != tt.want {
			t.Errorf("get(%d) = %v, want %v", tt.i, got, tt.want)
		}
	}
	if got, want := b.count(), 69; got != want {
		t.Errorf("count = %d, want %d", got, want)
	}
}

func TestFileSource(t *testing.T) {
	path := t.TempDir() + "/img"
	data := make([]byte, 3*4096+100)
	data[4096+17] = 1
	data[3*4096+5] = 9
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	src, err := OpenFile(path, 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if src.Size() != int64(len(data)) || src.BlockSize() != 4096 {
		t.Fatalf("size/block = %d/%d", src.Size(), src.BlockSize())
	}
	zeroTests := []struct {
		off  int64
		want bool
	}{{0, true}, {4095, true}, {4096, false}, {8191, false}, {8192, true}, {3 * 4096, false}, {int64(len(data)), false}, {-1, false}}
	for _, tt := range zeroTests {
		if got := src.IsZero(tt.off); got != tt.want {
			t.Errorf("IsZero(%d) = %v, want %v", tt.off, got, tt.want)
		}
	}
	buf := make([]byte, 200)
	n, err := src.ReadAt(buf, 3*4096)
	if n != 100 || err == nil || buf[5] != 9 {
		t.Errorf("ReadAt at tail = %d, %v, byte %d; want 100, EOF, 9", n, err, buf[5])
	}
	if _, err := OpenFile(path, 3000); err == nil {
		t.Error("OpenFile accepted block size 3000")
	}
	if err := os.WriteFile(path+"0", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenFile(path+"0", 0); err == nil {
		t.Error("OpenFile accepted an empty image")
	}
}
