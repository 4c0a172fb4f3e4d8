package container_test

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/runtime/container"
)

func TestDirStore(t *testing.T) {
	s := container.DirStore{Dir: t.TempDir()}
	ctx := context.Background()
	if err := s.Put(ctx, "cl-a..b-1/upper.tar", strings.NewReader("data")); err != nil {
		t.Fatalf("Put: %v", err)
	}
	r, err := s.Get(ctx, "cl-a..b-1/upper.tar")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r)
	r.Close()
	if string(b) != "data" {
		t.Errorf("Get = %q", b)
	}
	if err := s.Delete(ctx, "cl-a..b-1/upper.tar"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "cl-a..b-1/upper.tar"); err == nil {
		t.Errorf("Get after Delete succeeded")
	}
	for _, bad := range []string{"", "../x", "a/../../x", "/abs", "a//b", "a/"} {
		if err := s.Put(ctx, bad, strings.NewReader("x")); err == nil {
			t.Errorf("Put(%q) accepted", bad)
		}
	}
}
