package fcsim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// The request bodies of Firecracker's API (src/firecracker/swagger/
// firecracker.yaml), as the simulator checks them. Firecracker deserialises
// with unknown fields denied, so an unknown field is an error here too.

type kind int

const (
	kString kind = iota
	kBool
	kUint // a JSON integer >= 0 (Firecracker's fields are unsigned)
	kObject
	kStringArray
	kObjectArray
	kAnyObject // free-form JSON object (MMDS contents)
)

type field struct {
	name     string
	kind     kind
	required bool
	enum     []string
	fold     bool // enum compared case-insensitively
	min, max int64
	hasRange bool
	pattern  *regexp.Regexp
	obj      *schema
}

type schema struct {
	name   string
	fields []field
}

func rng(f field, lo, hi int64) field { f.min, f.max, f.hasRange = lo, hi, true; return f }

var (
	macRe       = regexp.MustCompile(`^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$`)
	linkLocalRe = regexp.MustCompile(`^169\.254\.([1-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-4])\.([0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])$`)
)

const maxU32 = 1<<32 - 1

var (
	tokenBucket = &schema{"TokenBucket", []field{
		{name: "size", kind: kUint, required: true},
		{name: "refill_time", kind: kUint, required: true},
		{name: "one_time_burst", kind: kUint},
	}}
	rateLimiter = &schema{"RateLimiter", []field{
		{name: "bandwidth", kind: kObject, obj: tokenBucket},
		{name: "ops", kind: kObject, obj: tokenBucket},
	}}
	machineConfig = &schema{"MachineConfiguration", []field{
		rng(field{name: "vcpu_count", kind: kUint, required: true}, 1, 32),
		rng(field{name: "mem_size_mib", kind: kUint, required: true}, 1, 1<<40),
		{name: "smt", kind: kBool},
		{name: "track_dirty_pages", kind: kBool},
		{name: "cpu_template", kind: kString, enum: []string{"C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"}},
		{name: "huge_pages", kind: kString, enum: []string{"None", "Transparent", "2M"}},
	}}
	bootSource = &schema{"BootSource", []field{
		{name: "kernel_image_path", kind: kString, required: true},
		{name: "initrd_path", kind: kString},
		{name: "boot_args", kind: kString},
	}}
	drive = &schema{"Drive", []field{
		{name: "drive_id", kind: kString, required: true},
		{name: "is_root_device", kind: kBool, required: true},
		{name: "partuuid", kind: kString},
		{name: "cache_type", kind: kString, enum: []string{"Unsafe", "Writeback"}},
		{name: "is_read_only", kind: kBool},
		{name: "path_on_host", kind: kString},
		{name: "rate_limiter", kind: kObject, obj: rateLimiter},
		{name: "io_engine", kind: kString, enum: []string{"Sync", "Async"}},
		{name: "socket", kind: kString},
	}}
	netIface = &schema{"NetworkInterface", []field{
		{name: "iface_id", kind: kString, required: true},
		{name: "host_dev_name", kind: kString, required: true},
		{name: "guest_mac", kind: kString, pattern: macRe},
		rng(field{name: "mtu", kind: kUint}, 68, 65535),
		{name: "rx_rate_limiter", kind: kObject, obj: rateLimiter},
		{name: "tx_rate_limiter", kind: kObject, obj: rateLimiter},
	}}
	partialNetIface = &schema{"PartialNetworkInterface", []field{
		{name: "iface_id", kind: kString, required: true},
		{name: "rx_rate_limiter", kind: kObject, obj: rateLimiter},
		{name: "tx_rate_limiter", kind: kObject, obj: rateLimiter},
	}}
	vsock = &schema{"Vsock", []field{
		rng(field{name: "guest_cid", kind: kUint, required: true}, 3, maxU32),
		{name: "uds_path", kind: kString, required: true},
		{name: "vsock_id", kind: kString},
	}}
	balloon = &schema{"Balloon", []field{
		rng(field{name: "amount_mib", kind: kUint, required: true}, 0, maxU32),
		{name: "deflate_on_oom", kind: kBool, required: true},
		rng(field{name: "stats_polling_interval_s", kind: kUint}, 0, 1<<16-1),
		{name: "free_page_hinting", kind: kBool},
		{name: "free_page_reporting", kind: kBool},
	}}
	balloonUpdate = &schema{"BalloonUpdate", []field{
		rng(field{name: "amount_mib", kind: kUint, required: true}, 0, maxU32),
	}}
	balloonStatsUpdate = &schema{"BalloonStatsUpdate", []field{
		rng(field{name: "stats_polling_interval_s", kind: kUint, required: true}, 0, 1<<16-1),
	}}
	mmdsConfig = &schema{"MmdsConfig", []field{
		{name: "network_interfaces", kind: kStringArray, required: true},
		{name: "version", kind: kString, enum: []string{"V1", "V2"}},
		{name: "ipv4_address", kind: kString, pattern: linkLocalRe},
		{name: "imds_compat", kind: kBool},
	}}
	mmdsContents = &schema{"MmdsContentsObject", []field{{name: "", kind: kAnyObject}}}
	action       = &schema{"InstanceActionInfo", []field{
		{name: "action_type", kind: kString, required: true, enum: []string{"FlushMetrics", "InstanceStart", "SendCtrlAltDel"}},
	}}
	vmSchema = &schema{"Vm", []field{
		{name: "state", kind: kString, required: true, enum: []string{"Paused", "Resumed"}},
	}}
	snapshotCreate = &schema{"SnapshotCreateParams", []field{
		{name: "mem_file_path", kind: kString, required: true},
		{name: "snapshot_path", kind: kString, required: true},
		{name: "snapshot_type", kind: kString, enum: []string{"Full", "Diff"}},
	}}
	memBackend = &schema{"MemoryBackend", []field{
		{name: "backend_type", kind: kString, required: true, enum: []string{"File", "Uffd"}},
		{name: "backend_path", kind: kString, required: true},
	}}
	netOverride = &schema{"NetworkOverride", []field{
		{name: "iface_id", kind: kString, required: true},
		{name: "host_dev_name", kind: kString, required: true},
	}}
	vsockOverride = &schema{"VsockOverride", []field{
		{name: "uds_path", kind: kString, required: true},
	}}
	snapshotLoad = &schema{"SnapshotLoadParams", []field{
		{name: "snapshot_path", kind: kString, required: true},
		{name: "mem_file_path", kind: kString},
		{name: "mem_backend", kind: kObject, obj: memBackend},
		{name: "enable_diff_snapshots", kind: kBool},
		{name: "track_dirty_pages", kind: kBool},
		{name: "resume_vm", kind: kBool},
		{name: "network_overrides", kind: kObjectArray, obj: netOverride},
		{name: "vsock_override", kind: kObject, obj: vsockOverride},
		{name: "clock_realtime", kind: kBool},
	}}
	logger = &schema{"Logger", []field{
		{name: "level", kind: kString, enum: []string{"Error", "Warning", "Info", "Debug", "Trace", "Off"}, fold: true},
		{name: "log_path", kind: kString},
		{name: "show_level", kind: kBool},
		{name: "show_log_origin", kind: kBool},
		{name: "module", kind: kString},
	}}
	metrics = &schema{"Metrics", []field{
		{name: "metrics_path", kind: kString, required: true},
	}}
)

// decode parses body as one JSON object and checks it against s; the
// returned map has json.Number for numbers.
func decode(body []byte, s *schema) (map[string]any, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, fmt.Errorf("empty request body: %s is required", s.name)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("an error occurred when deserializing the json body of a request: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("an error occurred when deserializing the json body of a request: trailing data after the %s object", s.name)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("an error occurred when deserializing the json body of a request: %s must be a JSON object", s.name)
	}
	if len(s.fields) == 1 && s.fields[0].kind == kAnyObject {
		return m, nil
	}
	return m, check(m, s, "")
}

func check(m map[string]any, s *schema, prefix string) error {
	known := map[string]*field{}
	for i := range s.fields {
		known[s.fields[i].name] = &s.fields[i]
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if known[k] == nil {
			return fmt.Errorf("unknown field `%s%s`, expected one of %s", prefix, k, fieldNames(s))
		}
	}
	for _, f := range s.fields {
		v, ok := m[f.name]
		if !ok {
			if f.required {
				return fmt.Errorf("missing field `%s%s` (%s)", prefix, f.name, s.name)
			}
			continue
		}
		if err := checkValue(v, f, prefix+f.name); err != nil {
			return err
		}
	}
	return nil
}

func fieldNames(s *schema) string {
	var ns []string
	for _, f := range s.fields {
		ns = append(ns, "`"+f.name+"`")
	}
	return strings.Join(ns, ", ")
}

func checkValue(v any, f field, path string) error {
	switch f.kind {
	case kString:
		sv, ok := v.(string)
		if !ok {
			return fmt.Errorf("invalid type for `%s`: %s, expected a string", path, jsonType(v))
		}
		if len(f.enum) > 0 && !slices.ContainsFunc(f.enum, func(e string) bool {
			return e == sv || (f.fold && strings.EqualFold(e, sv))
		}) {
			return fmt.Errorf("unknown variant `%s` for `%s`, expected one of %s", sv, path, strings.Join(f.enum, ", "))
		}
		if f.pattern != nil && !f.pattern.MatchString(sv) {
			return fmt.Errorf("invalid value %q for `%s`", sv, path)
		}
	case kBool:
		if _, ok := v.(bool); !ok {
			return fmt.Errorf("invalid type for `%s`: %s, expected a boolean", path, jsonType(v))
		}
	case kUint:
		n, ok := v.(json.Number)
		if !ok {
			return fmt.Errorf("invalid type for `%s`: %s, expected an unsigned integer", path, jsonType(v))
		}
		i, err := n.Int64()
		if err != nil || i < 0 {
			return fmt.Errorf("invalid value %s for `%s`, expected an unsigned integer", n, path)
		}
		if f.hasRange && (i < f.min || i > f.max) {
			return fmt.Errorf("invalid value %d for `%s`: must be in [%d, %d]", i, path, f.min, f.max)
		}
	case kObject:
		o, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("invalid type for `%s`: %s, expected a %s object", path, jsonType(v), f.obj.name)
		}
		return check(o, f.obj, path+".")
	case kStringArray:
		a, ok := v.([]any)
		if !ok {
			return fmt.Errorf("invalid type for `%s`: %s, expected an array of strings", path, jsonType(v))
		}
		for i, e := range a {
			if _, ok := e.(string); !ok {
				return fmt.Errorf("invalid type for `%s[%d]`: %s, expected a string", path, i, jsonType(e))
			}
		}
	case kObjectArray:
		a, ok := v.([]any)
		if !ok {
			return fmt.Errorf("invalid type for `%s`: %s, expected an array", path, jsonType(v))
		}
		for i, e := range a {
			o, ok := e.(map[string]any)
			if !ok {
				return fmt.Errorf("invalid type for `%s[%d]`: %s, expected a %s object", path, i, jsonType(e), f.obj.name)
			}
			if err := check(o, f.obj, fmt.Sprintf("%s[%d].", path, i)); err != nil {
				return err
			}
		}
	case kAnyObject:
	}
	return nil
}

func jsonType(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "string"
	case bool:
		return "boolean"
	case json.Number:
		return "number"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return fmt.Sprintf("%T", v)
}

// Accessors for a checked body (fields are of the right type).
func str(m map[string]any, k string) string { s, _ := m[k].(string); return s }

func boolean(m map[string]any, k string) bool {
	b, _ := m[k].(bool)
	return b
}

func uint64v(m map[string]any, k string) int64 {
	n, _ := m[k].(json.Number)
	i, _ := n.Int64()
	return i
}

func obj(m map[string]any, k string) map[string]any { o, _ := m[k].(map[string]any); return o }
