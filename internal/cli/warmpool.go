package cli

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/wrenn-dev/wrenn/internal/runtime"
)

// warmPoolsFlag is --warm-pool of `wrenn up` and `wrenn agent`:
// "off", or template=N|auto pairs (comma-separated, the flag repeatable).
// Its default is runtime.DefaultWarmPools; the first use replaces it,
// later ones add to it; template=0 or off disables.
type warmPoolsFlag struct {
	m       map[string]int
	changed bool
}

func newWarmPoolsFlag() *warmPoolsFlag { return &warmPoolsFlag{m: runtime.DefaultWarmPools()} }

func (f *warmPoolsFlag) Type() string { return "pools" }

func (f *warmPoolsFlag) String() string {
	if len(f.m) == 0 {
		return "off"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(f.m)) {
		v := strconv.Itoa(f.m[k])
		if f.m[k] == runtime.WarmPoolAuto {
			v = "auto"
		}
		parts = append(parts, k+"="+v)
	}
	return strings.Join(parts, ",")
}

func (f *warmPoolsFlag) Set(s string) error {
	if !f.changed {
		f.m, f.changed = map[string]int{}, true
	}
	s = strings.TrimSpace(s)
	if s == "off" || s == "" {
		clear(f.m)
		return nil
	}
	for part := range strings.SplitSeq(s, ",") {
		name, val, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || name == "" {
			return fmt.Errorf("%q: want off or template=N|auto", part)
		}
		n := runtime.WarmPoolAuto
		if val != "auto" {
			var err error
			if n, err = strconv.Atoi(val); err != nil || n < 0 || n > 64 {
				return fmt.Errorf("%q: the size must be auto or 0 to 64", part)
			}
		}
		f.m[name] = n
	}
	return nil
}

// pools is the configuration to pass on (nil when every pool is off).
func (f *warmPoolsFlag) pools() map[string]int {
	out := map[string]int{}
	for k, v := range f.m {
		if v != 0 {
			out[k] = v
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}
