package rootfs

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseSizeMB parses a disk size such as WRENN_DEFAULT_ROOTFS_SIZE ("30Gi",
// "5G", "512M", "2048Mi", or a bare number of MiB) into MiB, rounding up.
// Decimal and binary suffixes are both read as binary units, as disk sizes
// in Wrenn are always MiB-based.
func ParseSizeMB(s string) (int, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "i")
	mult := int64(1) // MiB
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K', 'k':
			mult = -1024 // divide
			t = t[:n-1]
		case 'M', 'm':
			t = t[:n-1]
		case 'G', 'g':
			mult = 1024
			t = t[:n-1]
		case 'T', 't':
			mult = 1024 * 1024
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseInt(strings.TrimSpace(t), 10, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("rootfs: invalid size %q", s)
	}
	var mb int64
	if mult < 0 {
		mb = (v + 1023) / 1024
	} else {
		if v > (1<<40)/mult {
			return 0, fmt.Errorf("rootfs: size %q too large", s)
		}
		mb = v * mult
	}
	return int(mb), nil
}
