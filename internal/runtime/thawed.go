package runtime

import "context"

type thawedKey struct{}

// WithThawed returns ctx carrying fn, which a WarmPooler's Take calls
// (once, synchronously, so fn must only start work) as soon as the pool
// capsule runs again and its envd answers at info.EnvdAddr(), before the
// rest of the take (hostname, network policy, files, state). The host
// agent starts envd's /init from it, so /init overlaps that rest.
// A driver that does not call it leaves /init after Take.
func WithThawed(ctx context.Context, fn func(Info)) context.Context {
	return context.WithValue(ctx, thawedKey{}, fn)
}

// Thawed calls the function WithThawed put in ctx, if any.
func Thawed(ctx context.Context, info Info) {
	if fn, ok := ctx.Value(thawedKey{}).(func(Info)); ok && fn != nil {
		fn(info)
	}
}
