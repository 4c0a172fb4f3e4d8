package email

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net"
	netmail "net/mail"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	pub "github.com/wrenn-dev/wrenn/pkg/email"
)

// A real SMTP server (emersion/go-smtp) on loopback that keeps what it receives.
type received struct {
	from string
	to   []string
	data string
	user string
}

type backend struct {
	mu   sync.Mutex
	msgs []received
	user string
	pass string
}

func (b *backend) NewSession(*smtp.Conn) (smtp.Session, error) { return &session{b: b}, nil }

type session struct {
	b   *backend
	cur received
}

func (s *session) AuthMechanisms() []string { return []string{sasl.Plain} }

func (s *session) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if user != s.b.user || pass != s.b.pass {
			return errors.New("bad credentials")
		}
		s.cur.user = user
		return nil
	}), nil
}

func (s *session) Mail(from string, _ *smtp.MailOptions) error { s.cur.from = from; return nil }
func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.cur.to = append(s.cur.to, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.cur.data = string(b)
	s.b.mu.Lock()
	s.b.msgs = append(s.b.msgs, s.cur)
	s.b.mu.Unlock()
	return nil
}
func (s *session) Reset()        { s.cur = received{user: s.cur.user} }
func (s *session) Logout() error { return nil }

func startSMTP(t *testing.T, user, pass string) (*backend, int) {
	t.Helper()
	be := &backend{user: user, pass: pass}
	srv := smtp.NewServer(be)
	srv.Domain = "localhost"
	srv.AllowInsecureAuth = true
	srv.ReadTimeout, srv.WriteTimeout = 10*time.Second, 10*time.Second
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return be, ln.Addr().(*net.TCPAddr).Port
}

func TestSMTPMailerDelivers(t *testing.T) {
	be, port := startSMTP(t, "mailer", "pw")
	m, err := NewSMTP(SMTPConfig{Host: "127.0.0.1", Port: port, From: "Wrenn <noreply@wrenn.test>", Username: "mailer", Password: "pw", TLS: "none"})
	if err != nil {
		t.Fatal(err)
	}
	var mailer pub.Mailer = m // the public interface is what callers hold
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	msg := VerifyEmail("alice@example.test", "Alice <3", "https://wrenn.test/verify?token=abc")
	if err := mailer.Send(ctx, msg); err != nil {
		t.Fatal(err)
	}
	be.mu.Lock()
	defer be.mu.Unlock()
	if len(be.msgs) != 1 {
		t.Fatalf("server got %d messages, want 1", len(be.msgs))
	}
	got := be.msgs[0]
	if got.from != "noreply@wrenn.test" || len(got.to) != 1 || got.to[0] != "alice@example.test" || got.user != "mailer" {
		t.Fatalf("envelope = %+v", got)
	}
	subject, parts := decode(t, got.data)
	if subject != "Verify your email for Wrenn" {
		t.Errorf("subject = %q", subject)
	}
	html, text := parts["text/html"], parts["text/plain"]
	if !strings.Contains(html, `href="https://wrenn.test/verify?token=abc"`) || !strings.Contains(html, "Alice &lt;3") {
		t.Errorf("HTML part wrong (button link, escaping):\n%s", html)
	}
	if !strings.Contains(text, "Verify email: https://wrenn.test/verify?token=abc") {
		t.Errorf("text part wrong:\n%s", text)
	}
}

// decode parses a MIME message into its subject and its decoded parts by
// content type (walking nested multiparts).
func decode(t *testing.T, raw string) (string, map[string]string) {
	t.Helper()
	msg, err := netmail.ReadMessage(strings.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	parts := map[string]string{}
	var walk func(ct string, body io.Reader, cte string)
	walk = func(ct string, body io.Reader, cte string) {
		mt, params, err := mime.ParseMediaType(ct)
		if err != nil {
			t.Fatalf("content type %q: %v", ct, err)
		}
		if strings.HasPrefix(mt, "multipart/") {
			mr := multipart.NewReader(body, params["boundary"])
			for {
				p, err := mr.NextRawPart()
				if errors.Is(err, io.EOF) {
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				walk(p.Header.Get("Content-Type"), p, p.Header.Get("Content-Transfer-Encoding"))
			}
		}
		if strings.EqualFold(cte, "quoted-printable") {
			body = quotedprintable.NewReader(body)
		}
		b, err := io.ReadAll(body)
		if err != nil {
			t.Fatal(err)
		}
		parts[mt] = string(b)
	}
	walk(msg.Header.Get("Content-Type"), msg.Body, msg.Header.Get("Content-Transfer-Encoding"))
	subject, err := new(mime.WordDecoder).DecodeHeader(msg.Header.Get("Subject"))
	if err != nil {
		t.Fatal(err)
	}
	return subject, parts
}

func TestSMTPMailerErrors(t *testing.T) {
	_, port := startSMTP(t, "mailer", "pw")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	bad, _ := NewSMTP(SMTPConfig{Host: "127.0.0.1", Port: port, From: "noreply@wrenn.test", Username: "mailer", Password: "wrong", TLS: "none"})
	if err := bad.Send(ctx, PasswordReset("bob@example.test", "https://wrenn.test/r")); err == nil {
		t.Error("wrong password: send succeeded")
	}
	// Nothing listens on this port any more.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	down, _ := NewSMTP(SMTPConfig{Host: "127.0.0.1", Port: closed, From: "noreply@wrenn.test", TLS: "none", Timeout: 2 * time.Second})
	if err := down.Send(ctx, PasswordReset("bob@example.test", "https://wrenn.test/r")); err == nil {
		t.Error("server down: send succeeded")
	}
	if _, err := NewSMTP(SMTPConfig{Host: "", Port: 25, From: "x@y"}); err == nil {
		t.Error("empty host accepted")
	}
}

func TestValidate(t *testing.T) {
	ok := pub.EmailData{To: []string{"a@b.test"}, Subject: "hi"}
	cases := map[string]pub.EmailData{
		"no recipient":    {Subject: "hi"},
		"bad recipient":   {To: []string{"not an address"}, Subject: "hi"},
		"empty subject":   {To: []string{"a@b.test"}},
		"header inject":   {To: []string{"a@b.test"}, Subject: "hi\r\nBcc: x@y.test"},
		"javascript link": {To: []string{"a@b.test"}, Subject: "hi", Button: &pub.Button{Text: "x", URL: "javascript:alert(1)"}},
	}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid message rejected: %v", err)
	}
	for name, d := range cases {
		t.Run(name, func(t *testing.T) {
			if err := d.Validate(); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestLogMailer(t *testing.T) {
	var buf strings.Builder
	m := LogMailer{Log: slog.New(slog.NewTextHandler(&buf, nil))}
	if err := m.Send(context.Background(), PasswordReset("c@d.test", "https://wrenn.test/reset?t=1")); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "https://wrenn.test/reset?t=1") || !strings.Contains(buf.String(), "c@d.test") {
		t.Fatalf("log lacks link or recipient: %s", buf.String())
	}
	if err := m.Send(context.Background(), pub.EmailData{}); err == nil {
		t.Fatal("invalid message accepted by the log mailer")
	}
}
