package rootfs_test

import (
	"testing"

	"github.com/wrenn-dev/wrenn/internal/rootfs"
)

func TestParseSizeMB(t *testing.T) {
	tests := []struct {
		in      string
		want    int
		wantErr bool
	}{
		{"5120", 5120, false},
		{"30Gi", 30720, false},
		{"30G", 30720, false},
		{"512Mi", 512, false},
		{"512MB", 512, false},
		{"1Ti", 1048576, false},
		{"1500K", 2, false},
		{" 2g ", 2048, false},
		{"", 0, true},
		{"0", 0, true},
		{"-5G", 0, true},
		{"5X", 0, true},
		{"99999999999999T", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := rootfs.ParseSizeMB(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("ParseSizeMB(%q) = %d, %v; want %d, err %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func FuzzParseSizeMB(f *testing.F) {
	for _, s := range []string{"30Gi", "5120", "1K", "9T"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		mb, err := rootfs.ParseSizeMB(s)
		if err == nil && (mb <= 0 || mb > 1<<40) {
			t.Errorf("ParseSizeMB(%q) = %d without error", s, mb)
		}
	})
}
