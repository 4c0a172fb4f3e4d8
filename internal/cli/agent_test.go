package cli

import (
	"bytes"
	"strings"
	"testing"
)

func TestAgentFlags(t *testing.T) {
	cmd := newAgentCmd()
	tests := []struct{ flag, want string }{
		{"listen", ":50051"},
		{"default-template", "base"},
		{"default-timeout", "5m0s"},
		{"cpu-overcommit", "128"},
		{"memory-overcommit", "8"},
		{"disk-overcommit", "16"},
	}
	for _, tt := range tests {
		f := cmd.Flags().Lookup(tt.flag)
		if f == nil {
			t.Errorf("--%s missing", tt.flag)
			continue
		}
		if f.DefValue != tt.want {
			t.Errorf("--%s default: got %q, want %q", tt.flag, f.DefValue, tt.want)
		}
	}
	for _, name := range []string{"state-dir", "envd-path", "default-rootfs-size", "secret-file", "tls-cert", "tls-key", "client-ca"} {
		if cmd.Flags().Lookup(name) == nil {
			t.Errorf("--%s missing", name)
		}
	}
}

func TestAgentRejectsBadFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"bad size", []string{"--default-rootfs-size", "lots"}, "--default-rootfs-size"},
		{"bad log level", []string{"--log-level", "loud"}, "--log-level"},
		{"client CA without a certificate", []string{"--client-ca", "/nonexistent/ca.pem"}, "client CA needs a server certificate"},
		{"missing secret file", []string{"--secret-file", "/nonexistent/secret"}, "--secret-file"},
		{"overcommit below 1", []string{"--cpu-overcommit", "0.5"}, "cpu overcommit 0.5 must be between 1 and 1000"},
		{"overcommit too high", []string{"--memory-overcommit", "5000"}, "memory overcommit 5000 must be between 1 and 1000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := newAgentCmd()
			var out bytes.Buffer
			cmd.SetOut(&out)
			cmd.SetErr(&out)
			cmd.SetArgs(append(tt.args, "--home", t.TempDir()))
			err := cmd.Execute()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error mentioning %q", err, tt.want)
			}
		})
	}
}
