package cli

import (
	"maps"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/runtime"
)

func TestWarmPoolsFlag(t *testing.T) {
	auto := runtime.WarmPoolAuto
	tests := []struct {
		name    string
		args    []string
		want    map[string]int
		wantErr bool
	}{
		{name: "default", want: map[string]int{"base": auto, "minimal": auto}},
		{name: "off", args: []string{"off"}, want: nil},
		{name: "replaces the default", args: []string{"minimal=2"}, want: map[string]int{"minimal": 2}},
		{name: "auto and sizes", args: []string{"minimal=auto,base=3", "py=1"}, want: map[string]int{"minimal": auto, "base": 3, "py": 1}},
		{name: "zero disables", args: []string{"base=0,minimal=auto"}, want: map[string]int{"minimal": auto}},
		{name: "all zero", args: []string{"base=0"}, want: nil},
		{name: "bad size", args: []string{"base=x"}, wantErr: true},
		{name: "negative", args: []string{"base=-1"}, wantErr: true},
		{name: "no name", args: []string{"=2"}, wantErr: true},
		{name: "no size", args: []string{"base"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newWarmPoolsFlag()
			var err error
			for _, a := range tt.args {
				if err = f.Set(a); err != nil {
					break
				}
			}
			if (err != nil) != tt.wantErr {
				t.Fatalf("Set error = %v, wantErr %v", err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			if got := f.pools(); !maps.Equal(got, tt.want) {
				t.Errorf("pools = %v, want %v (String %q)", got, tt.want, f.String())
			}
		})
	}
	if got := newWarmPoolsFlag().String(); got != "base=auto,minimal=auto" {
		t.Errorf("default String = %q", got)
	}
}
