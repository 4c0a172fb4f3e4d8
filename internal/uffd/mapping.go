package uffd

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
)

// Mapping is one guest memory region as Firecracker describes it in the
// handshake: the guest memory at host address BaseHostVirtAddr, Size bytes
// long, holds the image bytes at [Offset, Offset+Size).
//
// Firecracker sends page_size in bytes. Older releases send only the
// misnamed page_size_kib, which also carries bytes; a value below 4096 there
// is read as KiB for robustness.
type Mapping struct {
	BaseHostVirtAddr uint64 `json:"base_host_virt_addr"`
	Size             uint64 `json:"size"`
	Offset           uint64 `json:"offset"`
	PageSize         uint64 `json:"page_size"`
	PageSizeKiB      uint64 `json:"page_size_kib,omitempty"`
}

// pageSize returns the mapping's page size in bytes.
func (m Mapping) pageSize() uint64 {
	switch {
	case m.PageSize != 0:
		return m.PageSize
	case m.PageSizeKiB != 0 && m.PageSizeKiB < 4096:
		return m.PageSizeKiB * 1024
	case m.PageSizeKiB != 0:
		return m.PageSizeKiB
	default:
		return uint64(os.Getpagesize())
	}
}

// ParseMappings decodes and validates the handshake JSON against an image of
// imageSize bytes: page sizes are powers of two no smaller than the system
// page, regions are page-aligned, do not overlap in memory and lie inside
// the image.
func ParseMappings(data []byte, imageSize int64) ([]Mapping, error) {
	var ms []Mapping
	if err := json.Unmarshal(data, &ms); err != nil {
		return nil, fmt.Errorf("decode mappings: %w", err)
	}
	if len(ms) == 0 {
		return nil, errors.New("decode mappings: empty list")
	}
	sysPage := uint64(os.Getpagesize())
	for i := range ms {
		m := &ms[i]
		ps := m.pageSize()
		m.PageSize, m.PageSizeKiB = ps, 0
		switch {
		case ps < sysPage || ps&(ps-1) != 0:
			return nil, fmt.Errorf("mapping %d: page size %d is not a power of two >= %d", i, ps, sysPage)
		case m.Size == 0 || m.Size%ps != 0:
			return nil, fmt.Errorf("mapping %d: size %d is not a positive multiple of page size %d", i, m.Size, ps)
		case m.BaseHostVirtAddr%ps != 0:
			return nil, fmt.Errorf("mapping %d: base %#x not aligned to page size %d", i, m.BaseHostVirtAddr, ps)
		case m.BaseHostVirtAddr+m.Size < m.BaseHostVirtAddr:
			return nil, fmt.Errorf("mapping %d: address range overflows", i)
		case m.Offset+m.Size < m.Offset || imageSize < 0 || m.Offset+m.Size > uint64(imageSize):
			return nil, fmt.Errorf("mapping %d: image range [%d, +%d) outside image of %d bytes", i, m.Offset, m.Size, imageSize)
		}
	}
	sorted := append([]Mapping(nil), ms...)
	sort.Slice(sorted, func(a, b int) bool { return sorted[a].BaseHostVirtAddr < sorted[b].BaseHostVirtAddr })
	for i := 1; i < len(sorted); i++ {
		prev := sorted[i-1]
		if sorted[i].BaseHostVirtAddr < prev.BaseHostVirtAddr+prev.Size {
			return nil, fmt.Errorf("mappings at %#x and %#x overlap", prev.BaseHostVirtAddr, sorted[i].BaseHostVirtAddr)
		}
	}
	return sorted, nil
}
