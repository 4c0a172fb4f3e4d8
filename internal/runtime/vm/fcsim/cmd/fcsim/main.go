// Command fcsim is the Firecracker API simulator (package fcsim) as a
// program: run as "firecracker" (any name containing it) it serves the API
// on --api-sock; run under a name containing "jailer" it is the fake jailer
// the backend's tests check. A test helper: it never runs a guest.
package main

import (
	"os"

	"github.com/wrenn-dev/wrenn/internal/runtime/vm/fcsim"
)

func main() {
	os.Exit(fcsim.Main(os.Args, os.Environ(), os.Stdout, os.Stderr))
}
