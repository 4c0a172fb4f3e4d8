// Package limits holds the capsule defaults and bounds: the one value the
// API, the build spec, the runtime drivers, the host agent, the CLI's help
// and the SDK's documentation read. It imports nothing, so any package may
// depend on it.
package limits

// Capsule is the product's capsule defaults and the bounds of each
// setting a caller may choose.
type Capsule struct {
	VCPUs         int64
	MemoryMB      int64
	DiskSizeMB    int64
	TimeoutSec    int64
	Template      string
	AllowInternet bool

	MinVCPUs, MaxVCPUs           int64
	MinMemoryMB, MaxMemoryMB     int64
	MinDiskSizeMB, MaxDiskSizeMB int64
	MinTimeoutSec, MaxTimeoutSec int64
	// MaxEnvVars and MaxEnvValue bound a capsule's (or a command's)
	// environment.
	MaxEnvVars, MaxEnvValue int
}

// Defaults is the one value: 1 vCPU, 512 MB memory, 5120 MB disk, a 300 s
// timeout, template "base", outbound internet on.
var Defaults = Capsule{
	VCPUs:         1,
	MemoryMB:      512,
	DiskSizeMB:    5120,
	TimeoutSec:    300,
	Template:      "base",
	AllowInternet: true,

	MinVCPUs: 1, MaxVCPUs: 64,
	MinMemoryMB: 128, MaxMemoryMB: 256 * 1024,
	MinDiskSizeMB: 512, MaxDiskSizeMB: 1024 * 1024,
	MinTimeoutSec: 1, MaxTimeoutSec: 30 * 24 * 3600,
	MaxEnvVars: 200, MaxEnvValue: 32 * 1024,
}
