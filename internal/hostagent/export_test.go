package hostagent

// SamplerRunning reports whether the capsule's metrics sampler runs.
func SamplerRunning(a *Agent, id string) bool {
	c, err := a.lookup(id)
	if err != nil {
		return false
	}
	c.mu.Lock()
	s := c.sampler
	c.mu.Unlock()
	return s != nil && s.Running()
}
