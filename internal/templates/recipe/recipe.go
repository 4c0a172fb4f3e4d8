// Package recipe parses Wrennfiles: the recipe a template build follows.
//
// A Wrennfile holds one instruction a line. Blank lines and lines whose
// first non-blank character is '#' are ignored; a line ending in '\'
// continues on the next one (comment lines inside a continuation are
// skipped, as in a Dockerfile). Keywords are case-insensitive.
//
//	FROM <template> | FROM <oci image ref>     first instruction, exactly once
//	RUN <shell command> | RUN ["exe", "arg"]    run in the build capsule
//	COPY [--chown=user[:group]] <src>... <dest> from the build context
//	ENV KEY=VALUE [KEY=VALUE...] | ENV KEY VALUE
//	WORKDIR <dir>                              absolute, or relative to the last
//	USER <user>[:<group>]
//	START <cmd> | START ["exe", "arg"]         a process left running, at most once
//	READY [--timeout=DUR] <cmd> | READY [--timeout=DUR] port <n>
//
// Invariants: Parse never panics on any input (fuzzed); every error is an
// *Error naming the 1-based line and column of the offending text; a
// parsed Recipe's COPY sources are clean relative paths that cannot climb
// out of the context; WORKDIR and COPY destinations are absolute.
package recipe

import (
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Bounds of a recipe.
const (
	MaxBytes        = 1 << 20
	MaxInstructions = 200
	MaxLineBytes    = 64 << 10
	DefaultReady    = 60 * time.Second
	MaxReady        = 30 * time.Minute
)

// Kind is an instruction keyword.
type Kind string

// Instructions.
const (
	From    Kind = "FROM"
	Run     Kind = "RUN"
	Copy    Kind = "COPY"
	Env     Kind = "ENV"
	Workdir Kind = "WORKDIR"
	User    Kind = "USER"
	Start   Kind = "START"
	Ready   Kind = "READY"
)

// FromKind says what a FROM names.
type FromKind string

// FROM kinds. A bare name (no '/', ':' or '@') is a template; anything
// else is an OCI image reference, unless the builder finds a template of
// that exact name first (FromAuto).
const (
	FromTemplate FromKind = "template"
	FromImage    FromKind = "image"
	FromAuto     FromKind = "auto"
)

// Error is a parse error at a position.
type Error struct {
	Line, Col int
	Msg       string
}

func (e *Error) Error() string { return fmt.Sprintf("Wrennfile:%d:%d: %s", e.Line, e.Col, e.Msg) }

// Step is one build step in recipe order (RUN, COPY, ENV, WORKDIR, USER).
type Step struct {
	Kind Kind
	Line int
	// Text is the instruction as written (one line, for logs).
	Text string
	// RUN: Argv (exec form) or Shell (shell form).
	Argv  []string
	Shell string
	// COPY.
	Srcs  []string
	Dest  string
	Chown string
	// ENV.
	Env [][2]string
	// WORKDIR (absolute, resolved against the previous one) and USER.
	Dir  string
	User string
}

// Command is a process to run: exec form (Argv) or a shell command.
type Command struct {
	Argv  []string
	Shell string
	Line  int
}

// Args returns the command's argv (a shell command as /bin/sh -c).
func (c Command) Args() []string {
	if c.Argv != nil {
		return c.Argv
	}
	return []string{"/bin/sh", "-c", c.Shell}
}

// String is the command as one line.
func (c Command) String() string {
	if c.Argv != nil {
		b, _ := json.Marshal(c.Argv)
		return string(b)
	}
	return c.Shell
}

// ReadyCheck says when a START process counts as started.
type ReadyCheck struct {
	// Port, when > 0: a TCP connect to this port inside the capsule works.
	Port int
	// Cmd otherwise: the command exits 0 (retried until the timeout).
	Cmd     Command
	Timeout time.Duration
	Line    int
}

// Recipe is a parsed Wrennfile.
type Recipe struct {
	FromKind FromKind
	From     string
	FromLine int
	Steps    []Step
	Start    *Command
	Ready    *ReadyCheck
}

// Final returns the environment, working directory and user in force
// after every step (what capsules of the template inherit).
func (r Recipe) Final() (env [][2]string, workdir, user string) {
	workdir = ""
	for _, s := range r.Steps {
		switch s.Kind {
		case Env:
			env = mergeEnv(env, s.Env)
		case Workdir:
			workdir = s.Dir
		case User:
			user = s.User
		}
	}
	return env, workdir, user
}

func mergeEnv(env, add [][2]string) [][2]string {
	out := append([][2]string(nil), env...)
	for _, kv := range add {
		replaced := false
		for i := range out {
			if out[i][0] == kv[0] {
				out[i][1] = kv[1]
				replaced = true
			}
		}
		if !replaced {
			out = append(out, kv)
		}
	}
	return out
}

// logical is one instruction after joining continuations; pos maps each
// byte of text to its physical line and column.
type logical struct {
	text string
	pos  []position
}

type position struct{ line, col int }

func (l logical) at(i int) (int, int) {
	if len(l.pos) == 0 {
		return 1, 1
	}
	if i >= len(l.pos) {
		p := l.pos[len(l.pos)-1]
		return p.line, p.col + 1
	}
	return l.pos[i].line, l.pos[i].col
}

func (l logical) errAt(i int, format string, args ...any) *Error {
	line, col := l.at(i)
	return &Error{Line: line, Col: col, Msg: fmt.Sprintf(format, args...)}
}

// split turns the source into logical lines.
func split(src string) ([]logical, error) {
	var (
		out  []logical
		cur  logical
		cont bool
	)
	lines := strings.Split(src, "\n")
	for n, raw := range lines {
		lineNo := n + 1
		raw = strings.TrimSuffix(raw, "\r")
		if len(raw) > MaxLineBytes {
			return nil, &Error{Line: lineNo, Col: 1, Msg: fmt.Sprintf("line longer than %d bytes", MaxLineBytes)}
		}
		if !utf8.ValidString(raw) {
			return nil, &Error{Line: lineNo, Col: 1, Msg: "line is not valid UTF-8"}
		}
		if i := strings.IndexByte(raw, 0); i >= 0 {
			return nil, &Error{Line: lineNo, Col: i + 1, Msg: "NUL byte"}
		}
		trimmed := strings.TrimLeftFunc(raw, unicode.IsSpace)
		if strings.HasPrefix(trimmed, "#") || trimmed == "" {
			continue // comments and blank lines, also inside a continuation
		}
		body := raw
		next := false
		if t := strings.TrimRightFunc(body, unicode.IsSpace); strings.HasSuffix(t, `\`) {
			body = t[:len(t)-1]
			next = true
		}
		for i := 0; i < len(body); i++ {
			cur.pos = append(cur.pos, position{lineNo, i + 1})
		}
		cur.text += body
		cont = next
		if !next {
			if strings.TrimSpace(cur.text) != "" {
				out = append(out, cur)
			}
			cur = logical{}
		} else {
			// The joined text gets a space where the newline was.
			cur.pos = append(cur.pos, position{lineNo, len(body) + 1})
			cur.text += " "
		}
	}
	if cont && strings.TrimSpace(cur.text) != "" {
		out = append(out, cur)
	}
	return out, nil
}

// Parse parses a Wrennfile.
func Parse(src string) (Recipe, error) {
	if len(src) > MaxBytes {
		return Recipe{}, &Error{Line: 1, Col: 1, Msg: fmt.Sprintf("recipe larger than %d bytes", MaxBytes)}
	}
	lines, err := split(src)
	if err != nil {
		return Recipe{}, err
	}
	if len(lines) == 0 {
		return Recipe{}, &Error{Line: 1, Col: 1, Msg: "empty recipe: it needs at least a FROM instruction"}
	}
	if len(lines) > MaxInstructions {
		line, col := lines[MaxInstructions].at(0)
		return Recipe{}, &Error{Line: line, Col: col, Msg: fmt.Sprintf("more than %d instructions", MaxInstructions)}
	}
	var r Recipe
	workdir := ""
	for i, l := range lines {
		kwStart := len(l.text) - len(strings.TrimLeftFunc(l.text, unicode.IsSpace))
		rest := l.text[kwStart:]
		kwEnd := strings.IndexFunc(rest, unicode.IsSpace)
		if kwEnd < 0 {
			kwEnd = len(rest)
		}
		kw := Kind(strings.ToUpper(rest[:kwEnd]))
		argOff := kwStart + kwEnd
		for argOff < len(l.text) && unicode.IsSpace(rune(l.text[argOff])) {
			argOff++
		}
		arg := strings.TrimRightFunc(l.text[argOff:], unicode.IsSpace)
		line, _ := l.at(kwStart)
		text := strings.Join(strings.Fields(l.text), " ")
		if i == 0 && kw != From {
			return Recipe{}, l.errAt(kwStart, "the first instruction must be FROM, not %s", clip(string(kw)))
		}
		if arg == "" && kw != "" {
			switch kw {
			case From, Run, Copy, Env, Workdir, User, Start, Ready:
				return Recipe{}, l.errAt(kwStart+kwEnd, "%s needs an argument", kw)
			}
		}
		switch kw {
		case From:
			if i != 0 {
				return Recipe{}, l.errAt(kwStart, "FROM may appear only once, as the first instruction")
			}
			k, ref, err := parseFrom(arg)
			if err != nil {
				return Recipe{}, l.errAt(argOff, "%v", err)
			}
			r.FromKind, r.From, r.FromLine = k, ref, line
		case Run:
			cmd, err := parseCommand(l, argOff, arg)
			if err != nil {
				return Recipe{}, err
			}
			r.Steps = append(r.Steps, Step{Kind: Run, Line: line, Text: text, Argv: cmd.Argv, Shell: cmd.Shell})
		case Copy:
			s, err := parseCopy(l, argOff, arg, workdir)
			if err != nil {
				return Recipe{}, err
			}
			s.Line, s.Text = line, text
			r.Steps = append(r.Steps, s)
		case Env:
			env, err := parseEnv(l, argOff, arg)
			if err != nil {
				return Recipe{}, err
			}
			r.Steps = append(r.Steps, Step{Kind: Env, Line: line, Text: text, Env: env})
		case Workdir:
			words, err := words(l, argOff, arg)
			if err != nil {
				return Recipe{}, err
			}
			if len(words) != 1 {
				return Recipe{}, l.errAt(argOff, "WORKDIR takes one directory")
			}
			d := words[0].s
			if !path.IsAbs(d) {
				base := workdir
				if base == "" {
					base = "/"
				}
				d = path.Join(base, d)
			}
			d = path.Clean(d)
			if len(d) > 4096 {
				return Recipe{}, l.errAt(argOff, "WORKDIR longer than 4096 bytes")
			}
			workdir = d
			r.Steps = append(r.Steps, Step{Kind: Workdir, Line: line, Text: text, Dir: d})
		case User:
			words, err := words(l, argOff, arg)
			if err != nil {
				return Recipe{}, err
			}
			if len(words) != 1 || !userRE.MatchString(words[0].s) {
				return Recipe{}, l.errAt(argOff, "USER takes one user name or uid, optionally :group")
			}
			r.Steps = append(r.Steps, Step{Kind: User, Line: line, Text: text, User: words[0].s})
		case Start:
			if r.Start != nil {
				return Recipe{}, l.errAt(kwStart, "START may appear only once (the first is on line %d)", r.Start.Line)
			}
			cmd, err := parseCommand(l, argOff, arg)
			if err != nil {
				return Recipe{}, err
			}
			cmd.Line = line
			r.Start = &cmd
		case Ready:
			if r.Ready != nil {
				return Recipe{}, l.errAt(kwStart, "READY may appear only once (the first is on line %d)", r.Ready.Line)
			}
			rc, err := parseReady(l, argOff, arg)
			if err != nil {
				return Recipe{}, err
			}
			rc.Line = line
			r.Ready = &rc
		default:
			return Recipe{}, l.errAt(kwStart, "unknown instruction %q (want FROM, RUN, COPY, ENV, WORKDIR, USER, START or READY)", clip(rest[:kwEnd]))
		}
	}
	if r.Ready != nil && r.Start == nil {
		return Recipe{}, &Error{Line: r.Ready.Line, Col: 1, Msg: "READY needs a START instruction"}
	}
	if r.Start != nil && r.Ready != nil && r.Ready.Line < r.Start.Line {
		return Recipe{}, &Error{Line: r.Ready.Line, Col: 1, Msg: "READY must come after START"}
	}
	return r, nil
}

var (
	templateNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	templateIDRE   = regexp.MustCompile(`^tpl-[0-9a-z]{1,64}$`)
	imageRefRE     = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._/:@+-]{0,511}$`)
	userRE         = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?$`)
	envKeyRE       = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,255}$`)
)

func parseFrom(arg string) (FromKind, string, error) {
	f := strings.Fields(arg)
	if len(f) != 1 {
		return "", "", fmt.Errorf("FROM takes one template name or image reference")
	}
	ref := f[0]
	switch {
	case templateNameRE.MatchString(ref) || templateIDRE.MatchString(ref):
		return FromTemplate, ref, nil
	case imageRefRE.MatchString(ref) && !strings.Contains(ref, "//") && !strings.HasSuffix(ref, ":") && !strings.HasSuffix(ref, "/"):
		if !strings.ContainsAny(ref, "/@") && templateNameRE.MatchString(strings.SplitN(ref, ":", 2)[0]) {
			return FromAuto, ref, nil // name:tag is a template tag or a Docker Hub image
		}
		return FromImage, ref, nil
	}
	return "", "", fmt.Errorf("%q is neither a template name nor an image reference", clip(ref))
}

// parseCommand reads a shell command or a JSON array (exec form).
func parseCommand(l logical, off int, arg string) (Command, error) {
	if strings.HasPrefix(arg, "[") {
		var argv []string
		if err := json.Unmarshal([]byte(arg), &argv); err == nil {
			if len(argv) == 0 || argv[0] == "" {
				return Command{}, l.errAt(off, "the exec form needs a program")
			}
			return Command{Argv: argv}, nil
		}
		// Not JSON: a shell command that starts with '[' (e.g. `[ -f x ]`).
	}
	return Command{Shell: arg}, nil
}

type word struct {
	s   string
	off int // byte offset in the logical line
}

// words splits arg into words with shell-like quoting: '…' literally,
// "…" with \" and \\ escapes, and \x outside quotes.
func words(l logical, off int, arg string) ([]word, error) {
	var (
		out   []word
		cur   strings.Builder
		in    bool
		start int
		quote byte
		qpos  int
	)
	flush := func() {
		if in {
			out = append(out, word{cur.String(), start})
			cur.Reset()
			in = false
		}
	}
	for i := 0; i < len(arg); i++ {
		c := arg[i]
		switch {
		case quote == '\'':
			if c == '\'' {
				quote = 0
			} else {
				cur.WriteByte(c)
			}
		case quote == '"':
			switch {
			case c == '"':
				quote = 0
			case c == '\\' && i+1 < len(arg) && (arg[i+1] == '"' || arg[i+1] == '\\'):
				i++
				cur.WriteByte(arg[i])
			default:
				cur.WriteByte(c)
			}
		case c == ' ' || c == '\t':
			flush()
		default:
			if !in {
				in, start = true, off+i
			}
			switch {
			case c == '\'' || c == '"':
				quote, qpos = c, off+i
			case c == '\\' && i+1 < len(arg):
				i++
				cur.WriteByte(arg[i])
			default:
				cur.WriteByte(c)
			}
		}
	}
	if quote != 0 {
		return nil, l.errAt(qpos, "unterminated %c quote", quote)
	}
	flush()
	return out, nil
}

func parseCopy(l logical, off int, arg, workdir string) (Step, error) {
	ws, err := words(l, off, arg)
	if err != nil {
		return Step{}, err
	}
	s := Step{Kind: Copy}
	for len(ws) > 0 && strings.HasPrefix(ws[0].s, "--") {
		w := ws[0]
		v, ok := strings.CutPrefix(w.s, "--chown=")
		if !ok {
			return Step{}, l.errAt(w.off, "unknown COPY option %q (COPY takes --chown=user[:group])", clip(w.s))
		}
		if !userRE.MatchString(v) {
			return Step{}, l.errAt(w.off, "--chown wants user[:group] (names or ids)")
		}
		s.Chown = v
		ws = ws[1:]
	}
	if len(ws) < 2 {
		return Step{}, l.errAt(off, "COPY needs at least one source and a destination")
	}
	for _, w := range ws[:len(ws)-1] {
		src := w.s
		if strings.HasPrefix(src, "/") {
			src = strings.TrimLeft(src, "/") // relative to the context root
		}
		c := path.Clean("/" + src)[1:]
		for p := range strings.SplitSeq(src, "/") {
			if p == ".." {
				return Step{}, l.errAt(w.off, "COPY source %q leaves the build context", clip(w.s))
			}
		}
		if c == "" {
			c = "."
		}
		s.Srcs = append(s.Srcs, c)
	}
	d := ws[len(ws)-1]
	dest := d.s
	dir := strings.HasSuffix(dest, "/")
	if !path.IsAbs(dest) {
		base := workdir
		if base == "" {
			base = "/"
		}
		dest = path.Join(base, dest)
	}
	dest = path.Clean(dest)
	if dir && dest != "/" {
		dest += "/"
	}
	if len(s.Srcs) > 1 && !strings.HasSuffix(dest, "/") {
		return Step{}, l.errAt(d.off, "COPY with several sources needs a destination directory ending in /")
	}
	s.Dest = dest
	return s, nil
}

func parseEnv(l logical, off int, arg string) ([][2]string, error) {
	ws, err := words(l, off, arg)
	if err != nil {
		return nil, err
	}
	if len(ws) == 0 {
		return nil, l.errAt(off, "ENV needs KEY=VALUE")
	}
	if !strings.Contains(ws[0].s, "=") {
		// ENV KEY VALUE…: the rest of the line is the value.
		if !envKeyRE.MatchString(ws[0].s) {
			return nil, l.errAt(ws[0].off, "%q is not a valid variable name", clip(ws[0].s))
		}
		if len(ws) < 2 {
			return nil, l.errAt(ws[0].off, "ENV %s needs a value (ENV KEY VALUE or ENV KEY=VALUE)", ws[0].s)
		}
		vals := make([]string, 0, len(ws)-1)
		for _, w := range ws[1:] {
			vals = append(vals, w.s)
		}
		return [][2]string{{ws[0].s, strings.Join(vals, " ")}}, nil
	}
	var env [][2]string
	for _, w := range ws {
		k, v, ok := strings.Cut(w.s, "=")
		if !ok || !envKeyRE.MatchString(k) {
			return nil, l.errAt(w.off, "%q is not KEY=VALUE with a valid variable name", clip(w.s))
		}
		env = append(env, [2]string{k, v})
	}
	return env, nil
}

func parseReady(l logical, off int, arg string) (ReadyCheck, error) {
	rc := ReadyCheck{Timeout: DefaultReady}
	for strings.HasPrefix(arg, "--") {
		end := strings.IndexFunc(arg, unicode.IsSpace)
		if end < 0 {
			end = len(arg)
		}
		opt := arg[:end]
		v, ok := strings.CutPrefix(opt, "--timeout=")
		if !ok {
			return rc, l.errAt(off, "unknown READY option %q (READY takes --timeout=DURATION)", clip(opt))
		}
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 || d > MaxReady {
			return rc, l.errAt(off, "--timeout wants a duration between 1s and %s, like 30s", MaxReady)
		}
		rc.Timeout = d
		rest := arg[end:]
		trimmed := strings.TrimLeftFunc(rest, unicode.IsSpace)
		off += end + len(rest) - len(trimmed)
		arg = trimmed
	}
	if arg == "" {
		return rc, l.errAt(off, "READY needs a command or `port N`")
	}
	if f := strings.Fields(arg); len(f) >= 1 && strings.EqualFold(f[0], "port") {
		if len(f) != 2 {
			return rc, l.errAt(off, "READY port takes one port number")
		}
		n, err := strconv.Atoi(f[1])
		if err != nil || n < 1 || n > 65535 {
			return rc, l.errAt(off+strings.Index(arg, f[1]), "READY port wants a number from 1 to 65535")
		}
		rc.Port = n
		return rc, nil
	}
	cmd, err := parseCommand(l, off, arg)
	if err != nil {
		return rc, err
	}
	rc.Cmd = cmd
	return rc, nil
}

func clip(s string) string {
	if len(s) > 64 {
		cut := 64
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		return s[:cut] + "…"
	}
	return s
}
