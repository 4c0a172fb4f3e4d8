package webhooks

import (
	"errors"
	"testing"
	"time"

	wrenn "github.com/wrenn-dev/wrenn/sdk"
)

// TestSDKVerifyMatchesSigner: the Go SDK's VerifyWebhook accepts what the
// dispatcher signs and refuses a wrong secret, a changed body and an old
// timestamp (the Python and TypeScript recipes are tested in their SDKs).
func TestSDKVerifyMatchesSigner(t *testing.T) {
	body := []byte(`{"id":"42","type":"capsule.created"}`)
	h := Sign("whsec_abc", time.Now(), body)
	if err := wrenn.VerifyWebhook("whsec_abc", h, body, 0); err != nil {
		t.Fatalf("good delivery refused: %v", err)
	}
	if err := wrenn.VerifyWebhook("whsec_other", h, body, 0); !errors.Is(err, wrenn.ErrWebhookSignature) {
		t.Fatalf("wrong secret: %v", err)
	}
	if err := wrenn.VerifyWebhook("whsec_abc", h, append(body, ' '), 0); !errors.Is(err, wrenn.ErrWebhookSignature) {
		t.Fatalf("changed body: %v", err)
	}
	old := Sign("whsec_abc", time.Now().Add(-time.Hour), body)
	if err := wrenn.VerifyWebhook("whsec_abc", old, body, 0); !errors.Is(err, wrenn.ErrWebhookTimestamp) {
		t.Fatalf("old: %v", err)
	}
	if err := wrenn.VerifyWebhook("whsec_abc", "garbage", body, 0); !errors.Is(err, wrenn.ErrWebhookHeader) {
		t.Fatalf("garbage: %v", err)
	}
}
