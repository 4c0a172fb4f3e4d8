package api

// Email flows: sign-up verification and password reset. Tokens are
// one-time, random (160 bits), stored only as their SHA-256 in the
// store's user tokens, and expire; the mail carries a link to the
// dashboard, which posts the token back here. Answers never reveal
// whether an email address has an account.

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/email"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
)

// Token lifetimes and the dashboard pages the mailed links open.
const (
	VerifyTokenTTL    = 48 * time.Hour
	ResetTokenTTL     = time.Hour
	verifyTokenPrefix = "wev_"
	resetTokenPrefix  = "wpr_"
	verifyPage        = "/verify-email"
	resetPage         = "/reset-password"
	// defaultPublicURL is used for links when Config.PublicURL is empty
	// (the control plane's default address). The request's Host header is
	// never used: it is client-controlled.
	defaultPublicURL = "http://127.0.0.1:9725"
)

// mountEmailFlows adds the verification and password-reset routes to the
// /v1 router (unauthenticated, except resend).
func (a *API) mountEmailFlows(r chi.Router) {
	r.Post("/auth/verify", a.verifyEmail)
	r.With(a.requireAuth).Post("/auth/verify/resend", a.resendVerification)
	r.Post("/auth/password/forgot", a.forgotPassword)
	r.Post("/auth/password/reset", a.resetPassword)
}

// mailer is the Mailer the flows send through: the log mailer on the API's
// logger, the default for `wrenn up`.
func (a *API) mailer() email.Mailer {
	if a.cfg.Mailer != nil {
		return a.cfg.Mailer
	}
	return email.LogMailer{Log: a.log}
}

// link returns the dashboard URL page?token=tok.
func (a *API) link(page, tok string) string {
	base := a.cfg.PublicURL
	if base == "" {
		base = defaultPublicURL
	}
	return strings.TrimSuffix(base, "/") + page + "?token=" + url.QueryEscape(tok)
}

// issueUserToken replaces the user's tokens of kind with a fresh one and
// returns it in clear (the store keeps its hash).
func (a *API) issueUserToken(ctx context.Context, userID string, kind store.TokenKind, prefix string, ttl time.Duration) (string, error) {
	if err := a.cfg.Store.DeleteUserTokens(ctx, userID, kind); err != nil {
		return "", err
	}
	tok := auth.RandomToken(prefix)
	now := store.Now()
	if err := a.cfg.Store.CreateUserToken(ctx, store.UserToken{
		TokenHash: auth.HashToken(tok), UserID: userID, Kind: kind, CreatedAt: now, ExpiresAt: now.Add(ttl),
	}); err != nil {
		return "", err
	}
	return tok, nil
}

// sendVerification mails u a fresh verification link (earlier links stop
// working). Resend uses it; sign-up of an email account should too.
func (a *API) sendVerification(ctx context.Context, u store.User) error {
	tok, err := a.issueUserToken(ctx, u.ID, store.TokenEmailVerify, verifyTokenPrefix, VerifyTokenTTL)
	if err != nil {
		return err
	}
	return a.mailer().Send(ctx, email.VerifyEmail(u.Email, u.Name, a.link(verifyPage, tok)))
}

// validToken checks a mailed token's shape before it reaches the store.
func validToken(tok, prefix string) error {
	if !strings.HasPrefix(tok, prefix) || len(tok) > 128 {
		return errorf(CodeInvalidArgument, "the link is invalid or has expired; ask for a new one")
	}
	return nil
}

func (a *API) verifyEmail(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.Token
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	if err := validToken(req.Token, verifyTokenPrefix); err != nil {
		a.writeError(w, r, err)
		return
	}
	ctx := context.WithoutCancel(r.Context())
	tok, err := a.cfg.Store.ConsumeUserToken(ctx, auth.HashToken(req.Token), store.TokenEmailVerify)
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrConflict) {
		a.writeError(w, r, validToken("", verifyTokenPrefix))
		return
	}
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if err := a.cfg.Store.SetUserEmailVerified(ctx, tok.UserID, true); err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, wrennapi.EmailVerification{EmailVerified: true})
}

func (a *API) resendVerification(w http.ResponseWriter, r *http.Request) {
	p := caller(r.Context())
	if p.UserID == "" {
		a.writeError(w, r, errorf(CodeInvalidArgument, "this credential does not belong to a user"))
		return
	}
	if p.User.EmailVerified {
		writeJSON(w, http.StatusOK, wrennapi.EmailVerification{EmailVerified: true})
		return
	}
	if err := a.sendVerification(r.Context(), p.User); err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, wrennapi.EmailVerification{EmailVerified: false, Sent: true})
}

// forgotPassword mails a reset link when the address belongs to an active
// account. It answers 202 either way.
func (a *API) forgotPassword(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.Email
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	addr, err := validEmail(req.Email)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	// Limited per address asked for, account or not, so the answer still
	// says nothing about which addresses have accounts.
	if wait := a.limits.resetMail.wait(accountKey(addr)); wait > 0 {
		a.tooMany(w, r, wait, "reset requests for this address")
		return
	}
	a.limits.resetMail.spend(accountKey(addr))
	ctx := context.WithoutCancel(r.Context())
	accepted := wrennapi.Message{Message: "if an account uses this address, a reset link is on its way"}
	u, err := a.cfg.Store.GetUserByEmail(ctx, addr)
	if errors.Is(err, store.ErrNotFound) {
		writeJSON(w, http.StatusAccepted, accepted)
		return
	}
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if u.DeletedAt != nil || u.Status != store.UserActive {
		writeJSON(w, http.StatusAccepted, accepted)
		return
	}
	tok, err := a.issueUserToken(ctx, u.ID, store.TokenPasswordReset, resetTokenPrefix, ResetTokenTTL)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if err := a.mailer().Send(ctx, email.PasswordReset(u.Email, a.link(resetPage, tok))); err != nil {
		// Not the caller's business (and not a hint either): log it.
		a.log.ErrorContext(ctx, "password reset mail not sent", "user_id", u.ID, "err", err)
	}
	writeJSON(w, http.StatusAccepted, accepted)
}

// resetPassword sets a new password with a reset token. It also ends the
// user's refresh sessions and marks the email verified (the link proved
// the mailbox).
func (a *API) resetPassword(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.PasswordReset
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	if n := len(req.Password); n < auth.MinPasswordLen || n > auth.MaxPasswordLen {
		a.writeError(w, r, errorf(CodeInvalidArgument, "password must be %d to %d bytes long", auth.MinPasswordLen, auth.MaxPasswordLen))
		return
	}
	if err := validToken(req.Token, resetTokenPrefix); err != nil {
		a.writeError(w, r, err)
		return
	}
	hash, err := auth.HashPassword(req.Password)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	ctx := context.WithoutCancel(r.Context())
	tok, err := a.cfg.Store.ConsumeUserToken(ctx, auth.HashToken(req.Token), store.TokenPasswordReset)
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrConflict) {
		a.writeError(w, r, validToken("", resetTokenPrefix))
		return
	}
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if _, err := a.activeUser(ctx, tok.UserID); err != nil {
		a.writeError(w, r, errorf(CodeInvalidArgument, "the link is invalid or has expired; ask for a new one"))
		return
	}
	if err := a.cfg.Store.SetUserPassword(ctx, tok.UserID, hash); err != nil {
		a.writeError(w, r, err)
		return
	}
	if err := a.cfg.Store.DeleteUserTokens(ctx, tok.UserID, store.TokenRefresh); err != nil {
		a.writeError(w, r, err)
		return
	}
	if err := a.cfg.Store.SetUserEmailVerified(ctx, tok.UserID, true); err != nil {
		a.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
