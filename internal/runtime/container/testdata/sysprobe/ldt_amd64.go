package main

import "golang.org/x/sys/unix"

func modifyLDT(buf uintptr) error {
	return raw(unix.SYS_MODIFY_LDT, 0, buf, 16)
}
