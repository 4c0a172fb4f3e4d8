package envd

import (
	"context"
	"os"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/envd/files"
	"github.com/wrenn-dev/wrenn/internal/envd/filesystem"
	"github.com/wrenn-dev/wrenn/internal/envd/process"
	"github.com/wrenn-dev/wrenn/proto/envd/filesystem/filesystemconnect"
)

// mountServices mounts the process and filesystem Connect services and the
// /files endpoint on the server's mux.
func (s *Server) mountServices() error {
	procs := process.NewService(s.log, s.defaults)
	s.mux.Handle(procs.Handler())
	s.closers = append(s.closers, procs.Close)
	if os.Getpid() == 1 {
		s.background = append(s.background, procs.ReapOrphans)
	}

	fs := filesystem.NewService(s.log, s.defaults)
	path, h := filesystemconnect.NewFilesystemHandler(fs, connect.WithCompressMinBytes(1<<10))
	s.mux.Handle(path, h)
	s.closers = append(s.closers, fs.Close)

	s.mux.Handle("/files", files.NewHandler(s.log, s.defaults))
	return nil
}

// backgroundTask runs until ctx is done.
type backgroundTask func(ctx context.Context)
