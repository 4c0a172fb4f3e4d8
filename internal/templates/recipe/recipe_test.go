package recipe

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseEveryInstruction(t *testing.T) {
	src := `# a comment
FROM python:3.12-slim

env A=1 B="two words" \
    C='$literal'
ENV PATH_EXTRA /opt/bin:/usr/bin
WORKDIR /srv
WORKDIR app
COPY --chown=app:app requirements.txt ./
COPY src/ lib/x.py /srv/app/code/
USER app
RUN pip install -r requirements.txt && \
    # a comment inside a continuation
    echo done
RUN ["python3", "-c", "print(1)"]
START python3 -m http.server 8000
READY --timeout=30s port 8000
`
	r, err := Parse(src)
	if err != nil {
		t.Fatal(err)
	}
	if r.FromKind != FromAuto || r.From != "python:3.12-slim" || r.FromLine != 2 {
		t.Errorf("from = %v %q line %d", r.FromKind, r.From, r.FromLine)
	}
	kinds := []Kind{}
	for _, s := range r.Steps {
		kinds = append(kinds, s.Kind)
	}
	want := []Kind{Env, Env, Workdir, Workdir, Copy, Copy, User, Run, Run}
	if !reflect.DeepEqual(kinds, want) {
		t.Fatalf("kinds = %v, want %v", kinds, want)
	}
	if got := r.Steps[0].Env; !reflect.DeepEqual(got, [][2]string{{"A", "1"}, {"B", "two words"}, {"C", "$literal"}}) {
		t.Errorf("env = %q", got)
	}
	if got := r.Steps[1].Env; !reflect.DeepEqual(got, [][2]string{{"PATH_EXTRA", "/opt/bin:/usr/bin"}}) {
		t.Errorf("env2 = %q", got)
	}
	if r.Steps[3].Dir != "/srv/app" {
		t.Errorf("workdir = %q", r.Steps[3].Dir)
	}
	if s := r.Steps[4]; s.Chown != "app:app" || !reflect.DeepEqual(s.Srcs, []string{"requirements.txt"}) || s.Dest != "/srv/app/" {
		t.Errorf("copy = %+v", s)
	}
	if s := r.Steps[5]; !reflect.DeepEqual(s.Srcs, []string{"src", "lib/x.py"}) || s.Dest != "/srv/app/code/" {
		t.Errorf("copy2 = %+v", s)
	}
	if r.Steps[6].User != "app" {
		t.Errorf("user = %q", r.Steps[6].User)
	}
	if s := r.Steps[7]; s.Shell != "pip install -r requirements.txt &&      echo done" || s.Line != 12 {
		t.Errorf("run = %q line %d", s.Shell, s.Line)
	}
	if s := r.Steps[8]; !reflect.DeepEqual(s.Argv, []string{"python3", "-c", "print(1)"}) {
		t.Errorf("run exec = %q", s.Argv)
	}
	if r.Start == nil || r.Start.Shell != "python3 -m http.server 8000" || r.Start.Line != 16 {
		t.Errorf("start = %+v", r.Start)
	}
	if r.Ready == nil || r.Ready.Port != 8000 || r.Ready.Timeout != 30*time.Second {
		t.Errorf("ready = %+v", r.Ready)
	}
	env, wd, user := r.Final()
	if wd != "/srv/app" || user != "app" || len(env) != 4 {
		t.Errorf("final = %v %q %q", env, wd, user)
	}
}

func TestParseFromKinds(t *testing.T) {
	for _, tc := range []struct {
		src  string
		kind FromKind
	}{
		{"FROM base", FromTemplate},
		{"FROM tpl-abc123", FromTemplate},
		{"FROM python:3.12", FromAuto},
		{"FROM docker.io/library/alpine:3.20", FromImage},
		{"FROM 127.0.0.1:5000/x/y@sha256:" + strings.Repeat("a", 64), FromImage},
	} {
		r, err := Parse(tc.src)
		if err != nil {
			t.Errorf("%q: %v", tc.src, err)
			continue
		}
		if r.FromKind != tc.kind {
			t.Errorf("%q: kind %v, want %v", tc.src, r.FromKind, tc.kind)
		}
	}
}

func TestParseReadyCmd(t *testing.T) {
	r, err := Parse("FROM base\nSTART sleep 100\nREADY test -f /tmp/up\n")
	if err != nil {
		t.Fatal(err)
	}
	if r.Ready.Cmd.Shell != "test -f /tmp/up" || r.Ready.Timeout != DefaultReady {
		t.Errorf("ready = %+v", r.Ready)
	}
	if got := r.Ready.Cmd.Args(); !reflect.DeepEqual(got, []string{"/bin/sh", "-c", "test -f /tmp/up"}) {
		t.Errorf("args = %q", got)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		line, col int
		msg       string
	}{
		{"empty", "# nothing\n", 1, 1, "empty recipe"},
		{"unknown", "FROM base\n  RUNN echo\n", 2, 3, `unknown instruction "RUNN"`},
		{"not from first", "RUN echo\n", 1, 1, "first instruction must be FROM"},
		{"two froms", "FROM base\nFROM minimal\n", 2, 1, "only once"},
		{"bad from", "FROM Bad Ref\n", 1, 6, "FROM takes one"},
		{"bad from chars", "FROM a$b\n", 1, 6, "neither a template"},
		{"copy escape", "FROM base\nCOPY ../secret /x\n", 2, 6, "leaves the build context"},
		{"copy escape deep", "FROM base\nCOPY --chown=1:1 a/../../x /x\n", 2, 18, "leaves the build context"},
		{"copy option", "FROM base\nCOPY --from=x a /b\n", 2, 6, "unknown COPY option"},
		{"copy chown", "FROM base\nCOPY --chown=a:b:c a /b\n", 2, 6, "--chown wants"},
		{"copy one arg", "FROM base\nCOPY a\n", 2, 6, "at least one source"},
		{"copy many to file", "FROM base\nCOPY a b /c\n", 2, 10, "destination directory"},
		{"env key", "FROM base\nENV 1A=x\n", 2, 5, "not KEY=VALUE"},
		{"env no value", "FROM base\nENV A\n", 2, 5, "needs a value"},
		{"quote", "FROM base\nENV A=\"x\n", 2, 7, "unterminated"},
		{"user", "FROM base\nUSER a b\n", 2, 6, "USER takes one"},
		{"workdir", "FROM base\nWORKDIR a b\n", 2, 9, "WORKDIR takes one"},
		{"no arg", "FROM base\nRUN\n", 2, 4, "RUN needs an argument"},
		{"two starts", "FROM base\nSTART a\nSTART b\n", 3, 1, "only once"},
		{"ready no start", "FROM base\nREADY port 80\n", 2, 1, "needs a START"},
		{"ready before start", "FROM base\nREADY port 80\nSTART x\n", 2, 1, "after START"},
		{"ready port", "FROM base\nSTART x\nREADY port 70000\n", 3, 12, "1 to 65535"},
		{"ready timeout", "FROM base\nSTART x\nREADY --timeout=forever port 1\n", 3, 7, "--timeout wants"},
		{"ready option", "FROM base\nSTART x\nREADY --every=1s port 1\n", 3, 7, "unknown READY option"},
		{"continued error", "FROM base\nRUN echo \\\n  ok\nCOPY \\\n  --x a b\n", 5, 3, "unknown COPY option"},
		{"nul", "FROM base\nRUN a\x00b\n", 2, 6, "NUL"},
		{"exec form empty", "FROM base\nRUN []\n", 2, 5, "needs a program"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.src)
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("err = %v, want *Error", err)
			}
			if pe.Line != tc.line || pe.Col != tc.col || !strings.Contains(pe.Msg, tc.msg) {
				t.Errorf("got %v, want %d:%d …%s…", pe, tc.line, tc.col, tc.msg)
			}
		})
	}
}

func TestParseBounds(t *testing.T) {
	if _, err := Parse("FROM base\n" + strings.Repeat("RUN true\n", MaxInstructions)); err == nil {
		t.Error("too many instructions accepted")
	}
	if _, err := Parse("FROM base\nRUN " + strings.Repeat("x", MaxLineBytes) + "\n"); err == nil {
		t.Error("long line accepted")
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"FROM base\nRUN echo hi\n",
		"FROM a/b:c\nCOPY --chown=1:2 x y /z/\nENV A=\"b c\" D='e'\nSTART x\nREADY --timeout=1s port 8\n",
		"FROM base\nRUN a \\\n# c\n b\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		r, err := Parse(src)
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) || pe.Line < 1 || pe.Col < 1 {
				t.Fatalf("error %v is not a positioned *Error", err)
			}
			return
		}
		for _, s := range r.Steps {
			for _, src := range s.Srcs {
				if strings.HasPrefix(src, "/") || src == ".." || strings.HasPrefix(src, "../") {
					t.Fatalf("source %q escapes", src)
				}
			}
			if s.Kind == Copy && !strings.HasPrefix(s.Dest, "/") {
				t.Fatalf("dest %q not absolute", s.Dest)
			}
		}
	})
}
