package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/pflag"

	"github.com/wrenn-dev/wrenn/internal/snapshot"
	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
)

// templateStoreFlags select the shared template store of `wrenn agent`
// (docs/TEMPLATES.md): where templates made on one host are published so
// that every host can run them.
type templateStoreFlags struct {
	spec       string
	snapSpec   string
	s3Endpoint string
	s3Region   string
	s3Insecure bool
}

func (f *templateStoreFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&f.spec, "template-store", "",
		"shared template store: a directory (all hosts mounting the same one) or s3://BUCKET[/PREFIX]; hosts fetch templates they lack from it. Empty: templates made here stay on this host. S3 keys: $WRENN_S3_ACCESS_KEY, $WRENN_S3_SECRET_KEY")
	fl.StringVar(&f.snapSpec, "snapshot-store", "",
		"where pause to disk keeps capsule snapshots: a directory or s3://BUCKET[/PREFIX] (a store all hosts share lets a paused capsule resume on another host). Empty: <state-dir>/container/snapshots on this host")
	fl.StringVar(&f.s3Endpoint, "s3-endpoint", "", "S3 API endpoint host[:port] for an s3:// --template-store or --snapshot-store")
	fl.StringVar(&f.s3Region, "s3-region", "", "S3 region (default: discovered)")
	fl.BoolVar(&f.s3Insecure, "s3-insecure", false, "talk plain HTTP to --s3-endpoint")
}

// open returns the shared store's snapshot engine, or nil when none is
// configured. tmpDir holds temp files of publishes.
func (f *templateStoreFlags) open(tmpDir, accessKey, secretKey string) (*snapshot.Manager, error) {
	m, err := f.openSpec(f.spec, tmpDir, accessKey, secretKey)
	if err != nil {
		return nil, fmt.Errorf("--template-store: %w", err)
	}
	return m, nil
}

// openSnapshots returns the capsule snapshot store of --snapshot-store, or
// nil (the driver's local default).
func (f *templateStoreFlags) openSnapshots(tmpDir, accessKey, secretKey string) (*snapshot.Manager, error) {
	m, err := f.openSpec(f.snapSpec, tmpDir, accessKey, secretKey)
	if err != nil {
		return nil, fmt.Errorf("--snapshot-store: %w", err)
	}
	return m, nil
}

func (f *templateStoreFlags) openSpec(spec, tmpDir, accessKey, secretKey string) (*snapshot.Manager, error) {
	if spec == "" {
		return nil, nil
	}
	var st store.Store
	if rest, ok := strings.CutPrefix(spec, "s3://"); ok {
		bucket, prefix, _ := strings.Cut(rest, "/")
		if bucket == "" || f.s3Endpoint == "" {
			return nil, fmt.Errorf("%q: an s3:// store needs a bucket and --s3-endpoint", spec)
		}
		if prefix != "" && !strings.HasSuffix(prefix, "/") {
			prefix += "/"
		}
		s3, err := store.NewS3(store.S3Config{
			Endpoint: f.s3Endpoint, Bucket: bucket, Prefix: prefix, Region: f.s3Region, Insecure: f.s3Insecure,
			AccessKey: accessKey, SecretKey: secretKey,
		})
		if err != nil {
			return nil, err
		}
		st = s3
	} else {
		l, err := store.OpenLocal(spec)
		if err != nil {
			return nil, err
		}
		st = l
	}
	if err := os.MkdirAll(tmpDir, 0o700); err != nil {
		return nil, err
	}
	return &snapshot.Manager{Store: st, TempDir: filepath.Clean(tmpDir)}, nil
}
