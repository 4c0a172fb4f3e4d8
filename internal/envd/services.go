package envd

// mountServices mounts the process and filesystem Connect services and the
// /files endpoint on the server's mux.
func (s *Server) mountServices() error {
	return nil
}
