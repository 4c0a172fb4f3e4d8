package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3Config configures an S3-compatible backend.
type S3Config struct {
	// Endpoint is host[:port] of the S3 API, without scheme.
	Endpoint string
	// Bucket holds the objects; it must exist.
	Bucket string
	// Prefix is prepended to every key (e.g. "wrenn/"); may be empty.
	Prefix    string
	AccessKey string
	SecretKey string
	// Region is optional ("" lets the client discover it).
	Region string
	// Insecure selects plain HTTP instead of HTTPS.
	Insecure bool
}

// S3 is a Store in an S3-compatible bucket:
//
//	PREFIX/headers/NAME   headers
//	PREFIX/builds/ID      data files
//
// S3 makes a PUT visible only when it completes (single or multipart), so a
// crashed or cancelled upload never leaves a partial object under its key;
// abandoned multipart uploads are invisible and are best cleaned by a bucket
// lifecycle rule (AbortIncompleteMultipartUpload).
type S3 struct {
	client *minio.Client
	cfg    S3Config
}

// NewS3 returns an S3 store. It does not contact the server.
func NewS3(cfg S3Config) (*S3, error) {
	if cfg.Endpoint == "" || cfg.Bucket == "" {
		return nil, errors.New("store: s3 needs an endpoint and a bucket")
	}
	c, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:  credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
		Secure: !cfg.Insecure,
		Region: cfg.Region,
	})
	if err != nil {
		return nil, fmt.Errorf("store: s3 client: %w", err)
	}
	return &S3{client: c, cfg: cfg}, nil
}

// Client returns the underlying minio client (for bucket administration).
func (s *S3) Client() *minio.Client { return s.client }

func (s *S3) dataKey(id string) string     { return s.cfg.Prefix + "builds/" + id }
func (s *S3) headerKey(name string) string { return s.cfg.Prefix + "headers/" + name }

func s3Err(op, key string, err error) error {
	if resp := minio.ToErrorResponse(err); resp.Code == "NoSuchKey" || resp.StatusCode == http.StatusNotFound {
		return fmt.Errorf("store: s3 %s %s: %w", op, key, ErrNotFound)
	}
	return fmt.Errorf("store: s3 %s %s: %w", op, key, err)
}

// PutData implements Store.
func (s *S3) PutData(ctx context.Context, id string, r io.Reader, size int64) error {
	if err := ValidName(id); err != nil {
		return err
	}
	_, err := s.client.PutObject(ctx, s.cfg.Bucket, s.dataKey(id), r, size, minio.PutObjectOptions{
		ContentType: "application/octet-stream",
	})
	if err != nil {
		return s3Err("put", s.dataKey(id), err)
	}
	return nil
}

// s3Blob reads an object with one ranged GET per ReadAt.
type s3Blob struct {
	ctx  context.Context
	s    *S3
	key  string
	size int64
}

func (b *s3Blob) Size() int64  { return b.size }
func (b *s3Blob) Close() error { return nil }

func (b *s3Blob) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("store: s3 read %s: negative offset", b.key)
	}
	if off >= b.size {
		return 0, io.EOF
	}
	want := len(p)
	if int64(want) > b.size-off {
		p = p[:b.size-off]
	}
	if len(p) == 0 {
		return 0, nil
	}
	var opts minio.GetObjectOptions
	if err := opts.SetRange(off, off+int64(len(p))-1); err != nil {
		return 0, fmt.Errorf("store: s3 read %s: %w", b.key, err)
	}
	obj, err := b.s.client.GetObject(b.ctx, b.s.cfg.Bucket, b.key, opts)
	if err != nil {
		return 0, s3Err("get", b.key, err)
	}
	defer obj.Close()
	n, err := io.ReadFull(obj, p)
	if err != nil {
		return n, s3Err("get", b.key, err)
	}
	if n < want {
		return n, io.EOF
	}
	return n, nil
}

// OpenData implements Store. Every ReadAt is one ranged GET; wrap the store
// in a Cache to fetch in chunks and keep them on local disk.
func (s *S3) OpenData(ctx context.Context, id string) (Blob, error) {
	if err := ValidName(id); err != nil {
		return nil, err
	}
	info, err := s.client.StatObject(ctx, s.cfg.Bucket, s.dataKey(id), minio.StatObjectOptions{})
	if err != nil {
		return nil, s3Err("stat", s.dataKey(id), err)
	}
	return &s3Blob{ctx: ctx, s: s, key: s.dataKey(id), size: info.Size}, nil
}

func (s *S3) list(ctx context.Context, prefix string) ([]Object, error) {
	var out []Object
	for o := range s.client.ListObjects(ctx, s.cfg.Bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			return nil, fmt.Errorf("store: s3 list %s: %w", prefix, o.Err)
		}
		name := strings.TrimPrefix(o.Key, prefix)
		if ValidName(name) != nil {
			continue
		}
		out = append(out, Object{Name: name, Size: o.Size, ModTime: o.LastModified})
	}
	return out, nil
}

// ListData implements Store.
func (s *S3) ListData(ctx context.Context) ([]Object, error) {
	return s.list(ctx, s.cfg.Prefix+"builds/")
}

// DeleteData implements Store.
func (s *S3) DeleteData(ctx context.Context, id string) error {
	if err := ValidName(id); err != nil {
		return err
	}
	if err := s.client.RemoveObject(ctx, s.cfg.Bucket, s.dataKey(id), minio.RemoveObjectOptions{}); err != nil {
		if errors.Is(s3Err("", "", err), ErrNotFound) {
			return nil
		}
		return s3Err("delete", s.dataKey(id), err)
	}
	return nil
}

// PutHeader implements Store. A single PUT replaces the object atomically.
func (s *S3) PutHeader(ctx context.Context, name string, b []byte) error {
	if err := ValidName(name); err != nil {
		return err
	}
	_, err := s.client.PutObject(ctx, s.cfg.Bucket, s.headerKey(name), strings.NewReader(string(b)), int64(len(b)),
		minio.PutObjectOptions{ContentType: "application/octet-stream", DisableMultipart: true})
	if err != nil {
		return s3Err("put", s.headerKey(name), err)
	}
	return nil
}

// GetHeader implements Store.
func (s *S3) GetHeader(ctx context.Context, name string) ([]byte, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	obj, err := s.client.GetObject(ctx, s.cfg.Bucket, s.headerKey(name), minio.GetObjectOptions{})
	if err != nil {
		return nil, s3Err("get", s.headerKey(name), err)
	}
	defer obj.Close()
	b, err := io.ReadAll(io.LimitReader(obj, maxHeaderSize+1))
	if err != nil {
		return nil, s3Err("get", s.headerKey(name), err)
	}
	if len(b) > maxHeaderSize {
		return nil, fmt.Errorf("store: s3 header %s exceeds %d bytes", name, maxHeaderSize)
	}
	return b, nil
}

// ListHeaders implements Store.
func (s *S3) ListHeaders(ctx context.Context) ([]string, error) {
	objs, err := s.list(ctx, s.cfg.Prefix+"headers/")
	if err != nil {
		return nil, err
	}
	out := make([]string, len(objs))
	for i, o := range objs {
		out[i] = o.Name
	}
	return out, nil
}

// DeleteHeader implements Store.
func (s *S3) DeleteHeader(ctx context.Context, name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	if err := s.client.RemoveObject(ctx, s.cfg.Bucket, s.headerKey(name), minio.RemoveObjectOptions{}); err != nil {
		if errors.Is(s3Err("", "", err), ErrNotFound) {
			return nil
		}
		return s3Err("delete", s.headerKey(name), err)
	}
	return nil
}
