package agents

// DecodeForTest decodes b into m with the agent clients' codec.
func DecodeForTest(b []byte, m any) error { return outputCodec{}.Unmarshal(b, m) }
