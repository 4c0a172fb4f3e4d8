// Package buildinfo carries the wrenn binary's version, set with -ldflags.
package buildinfo

// Set by the Makefile with -ldflags -X.
var (
	Version = "dev"
	Commit  = "unknown"
)
