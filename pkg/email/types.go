// Package email is Wrenn's public mail interface: the Mailer that sends a
// message and the types that describe one. It lives in pkg/ so that other
// modules (an operator's own extensions) can send mail through the same
// Mailer the control plane uses. Implementations (SMTP, log) live in
// internal/email.
package email

import (
	"context"
	"errors"
	"fmt"
	"net/mail"
	"strings"
)

// Mailer sends one message. Implementations are safe for concurrent use and
// honour ctx for cancellation and deadlines.
type Mailer interface {
	Send(ctx context.Context, msg EmailData) error
}

// Button is a call to action rendered as a link button (and as a plain URL
// in the text part).
type Button struct {
	Text string
	URL  string
}

// EmailData describes one message. Paragraphs are plain text; they are
// HTML-escaped when rendered.
type EmailData struct {
	To         []string
	Subject    string
	Title      string
	Paragraphs []string
	Button     *Button
	// Footer is a short closing line (e.g. why the recipient got this mail).
	Footer string
}

// Validate reports whether the message can be sent.
func (d EmailData) Validate() error {
	if len(d.To) == 0 {
		return errors.New("email: no recipient")
	}
	for _, to := range d.To {
		if _, err := mail.ParseAddress(to); err != nil {
			return fmt.Errorf("email: bad recipient %q: %w", to, err)
		}
	}
	if strings.TrimSpace(d.Subject) == "" {
		return errors.New("email: empty subject")
	}
	if strings.ContainsAny(d.Subject, "\r\n") {
		return errors.New("email: subject contains a line break")
	}
	if d.Button != nil && !strings.HasPrefix(d.Button.URL, "https://") && !strings.HasPrefix(d.Button.URL, "http://") {
		return fmt.Errorf("email: button URL %q is not http(s)", d.Button.URL)
	}
	return nil
}
