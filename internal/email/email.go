// Package email renders Wrenn's messages and sends them: over SMTP in
// production, to the log by default (`wrenn up` has no mail server). The
// Mailer interface and message types are public in pkg/email; this package
// re-exports them as aliases so callers need one import.
package email

import (
	"bytes"
	"context"
	"fmt"
	htmltemplate "html/template"
	"log/slog"
	"strings"
	texttemplate "text/template"
	"time"

	mail "github.com/wneessen/go-mail"

	pub "github.com/wrenn-dev/wrenn/pkg/email"
)

// Aliases of the public types.
type (
	Mailer    = pub.Mailer
	EmailData = pub.EmailData
	Button    = pub.Button
)

var htmlTmpl = htmltemplate.Must(htmltemplate.New("html").Parse(`<!doctype html>
<html><body style="font-family:system-ui,sans-serif;color:#111;max-width:560px;margin:auto">
<h2>{{.Title}}</h2>
{{range .Paragraphs}}<p>{{.}}</p>
{{end}}{{with .Button}}<p><a href="{{.URL}}" style="display:inline-block;padding:10px 18px;background:#111;color:#fff;border-radius:6px;text-decoration:none">{{.Text}}</a></p>
{{end}}{{with .Footer}}<p style="color:#666;font-size:12px">{{.}}</p>{{end}}
</body></html>
`))

var textTmpl = texttemplate.Must(texttemplate.New("text").Parse(`{{.Title}}

{{range .Paragraphs}}{{.}}

{{end}}{{with .Button}}{{.Text}}: {{.URL}}

{{end}}{{with .Footer}}-- 
{{.}}
{{end}}`))

// Render returns the HTML and plain-text bodies of a message.
func Render(d EmailData) (html, text string, err error) {
	if d.Title == "" {
		d.Title = d.Subject
	}
	var h, t bytes.Buffer
	if err := htmlTmpl.Execute(&h, d); err != nil {
		return "", "", err
	}
	if err := textTmpl.Execute(&t, d); err != nil {
		return "", "", err
	}
	return h.String(), t.String(), nil
}

// SMTPConfig configures the SMTP mailer.
type SMTPConfig struct {
	Host     string
	Port     int
	Username string
	Password string
	From     string
	// TLS: "starttls" (default: opportunistic STARTTLS), "require-starttls",
	// "tls" (implicit TLS, e.g. port 465) or "none".
	TLS     string
	Timeout time.Duration
}

// SMTPMailer sends mail through an SMTP server.
type SMTPMailer struct {
	cfg SMTPConfig
}

// NewSMTP returns a Mailer that sends through cfg's server.
func NewSMTP(cfg SMTPConfig) (*SMTPMailer, error) {
	if cfg.Host == "" || cfg.Port <= 0 || cfg.From == "" {
		return nil, fmt.Errorf("email: SMTP needs host, port and from address")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	return &SMTPMailer{cfg: cfg}, nil
}

// Send renders and sends one message.
func (m *SMTPMailer) Send(ctx context.Context, d EmailData) error {
	if err := d.Validate(); err != nil {
		return err
	}
	html, text, err := Render(d)
	if err != nil {
		return err
	}
	msg := mail.NewMsg()
	if err := msg.From(m.cfg.From); err != nil {
		return fmt.Errorf("email: from: %w", err)
	}
	if err := msg.To(d.To...); err != nil {
		return fmt.Errorf("email: to: %w", err)
	}
	msg.Subject(d.Subject)
	msg.SetBodyString(mail.TypeTextPlain, text)
	msg.AddAlternativeString(mail.TypeTextHTML, html)

	opts := []mail.Option{mail.WithPort(m.cfg.Port), mail.WithTimeout(m.cfg.Timeout)}
	switch strings.ToLower(m.cfg.TLS) {
	case "", "starttls":
		opts = append(opts, mail.WithTLSPolicy(mail.TLSOpportunistic))
	case "require-starttls":
		opts = append(opts, mail.WithTLSPolicy(mail.TLSMandatory))
	case "tls":
		opts = append(opts, mail.WithSSL())
	case "none":
		opts = append(opts, mail.WithTLSPolicy(mail.NoTLS))
	default:
		return fmt.Errorf("email: unknown TLS mode %q", m.cfg.TLS)
	}
	if m.cfg.Username != "" {
		auth := mail.SMTPAuthAutoDiscover
		if strings.EqualFold(m.cfg.TLS, "none") {
			// The operator chose a plaintext link (e.g. a relay on loopback).
			auth = mail.SMTPAuthPlainNoEnc
		}
		opts = append(opts, mail.WithSMTPAuth(auth), mail.WithUsername(m.cfg.Username), mail.WithPassword(m.cfg.Password))
	}
	c, err := mail.NewClient(m.cfg.Host, opts...)
	if err != nil {
		return fmt.Errorf("email: client: %w", err)
	}
	if err := c.DialAndSendWithContext(ctx, msg); err != nil {
		return fmt.Errorf("email: send to %s: %w", strings.Join(d.To, ", "), err)
	}
	return nil
}

// LogMailer writes messages to the log instead of sending them. It is the
// default for `wrenn up`, so sign-up and reset links are visible to the
// operator without a mail server.
type LogMailer struct {
	Log *slog.Logger
}

// Send logs the message, including its button URL.
func (m LogMailer) Send(_ context.Context, d EmailData) error {
	if err := d.Validate(); err != nil {
		return err
	}
	attrs := []any{"to", strings.Join(d.To, ", "), "subject", d.Subject}
	if d.Button != nil {
		attrs = append(attrs, "link", d.Button.URL)
	}
	m.Log.Info("email (not sent: log mailer)", attrs...)
	return nil
}

// VerifyEmail is the sign-up verification message.
func VerifyEmail(to, name, link string) EmailData {
	return EmailData{
		To:         []string{to},
		Subject:    "Verify your email for Wrenn",
		Title:      "Welcome to Wrenn" + greetingName(name),
		Paragraphs: []string{"Confirm that this is your email address to finish setting up your account."},
		Button:     &Button{Text: "Verify email", URL: link},
		Footer:     "If you did not sign up for Wrenn, ignore this message.",
	}
}

// PasswordReset is the password-reset message.
func PasswordReset(to, link string) EmailData {
	return EmailData{
		To:         []string{to},
		Subject:    "Reset your Wrenn password",
		Title:      "Reset your password",
		Paragraphs: []string{"Someone asked to reset the password of your Wrenn account. The link below works once and expires in one hour."},
		Button:     &Button{Text: "Choose a new password", URL: link},
		Footer:     "If you did not ask for this, ignore this message; your password stays the same.",
	}
}

func greetingName(name string) string {
	if name == "" {
		return ""
	}
	return ", " + name
}
