package runtime

import (
	"fmt"
	"regexp"
)

// idRE is the shape of a capsule ID every driver accepts (it names host
// objects: directories, cgroups, network namespaces).
var idRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)

// ValidID reports whether id is a capsule ID drivers accept.
func ValidID(id string) bool { return idRE.MatchString(id) }

// Defaults are a driver's values for a Spec's zero resources.
type Defaults struct {
	VCPUs, MemoryMB, DiskSizeMB int
}

// Normalize is the first step of every driver's create: it checks spec's
// ID (ErrInvalidSpec), looks its template up with get (ErrNoTemplate) and
// fills its zero resources from def. Each driver then checks its own
// bounds.
func Normalize[T any](spec Spec, def Defaults, get func(name string) (T, error)) (Spec, T, error) {
	var tmpl T
	if !ValidID(spec.ID) {
		return spec, tmpl, fmt.Errorf("%w: id %q", ErrInvalidSpec, spec.ID)
	}
	tmpl, err := get(spec.Template)
	if err != nil {
		return spec, tmpl, fmt.Errorf("%w: %q: %w", ErrNoTemplate, spec.Template, err)
	}
	if spec.VCPUs == 0 {
		spec.VCPUs = def.VCPUs
	}
	if spec.MemoryMB == 0 {
		spec.MemoryMB = def.MemoryMB
	}
	if spec.DiskSizeMB == 0 {
		spec.DiskSizeMB = def.DiskSizeMB
	}
	return spec, tmpl, nil
}
