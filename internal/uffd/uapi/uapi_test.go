package uapi

import (
	"testing"
	"unsafe"
)

// The request numbers must match the values the C header produces on 64-bit
// Linux; a wrong struct size silently changes the number.
func TestIoctlNumbers(t *testing.T) {
	tests := []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"UFFDIO_API", IoctlAPI, 0xC018AA3F},
		{"UFFDIO_REGISTER", IoctlRegister, 0xC020AA00},
		{"UFFDIO_UNREGISTER", IoctlUnregister, 0x8010AA01},
		{"UFFDIO_WAKE", IoctlWake, 0x8010AA02},
		{"UFFDIO_COPY", IoctlCopy, 0xC028AA03},
		{"UFFDIO_ZEROPAGE", IoctlZeroPage, 0xC020AA04},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %#x, want %#x", tt.got, tt.want)
			}
		})
	}
}

func TestStructSizes(t *testing.T) {
	tests := []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"uffdio_api", unsafe.Sizeof(apiArg{}), 24},
		{"uffdio_range", unsafe.Sizeof(rangeArg{}), 16},
		{"uffdio_register", unsafe.Sizeof(registerArg{}), 32},
		{"uffdio_copy", unsafe.Sizeof(copyArg{}), 40},
		{"uffdio_zeropage", unsafe.Sizeof(zeroPageArg{}), 32},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %d, want %d", tt.got, tt.want)
			}
		})
	}
}

func TestParseMsg(t *testing.T) {
	pf := make([]byte, MsgSize)
	pf[0] = EventPagefault
	pf[8] = PagefaultFlagWrite
	copy(pf[16:], []byte{0x00, 0x10, 0x34, 0x12, 0, 0, 0, 0})
	pf[24] = 7
	rm := make([]byte, MsgSize)
	rm[0] = EventRemove
	rm[9] = 0x20
	rm[17] = 0x40
	tests := []struct {
		name    string
		in      []byte
		want    Msg
		wantErr bool
	}{
		{"pagefault", pf, Msg{Event: EventPagefault, Flags: PagefaultFlagWrite, Address: 0x12341000, PTID: 7}, false},
		{"remove", rm, Msg{Event: EventRemove, Start: 0x2000, End: 0x4000}, false},
		{"short", pf[:31], Msg{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseMsg(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}
