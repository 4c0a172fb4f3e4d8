package e2b

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/credstrip"
	"github.com/wrenn-dev/wrenn/internal/hostagent"
	"github.com/wrenn-dev/wrenn/internal/relay"
	"github.com/wrenn-dev/wrenn/internal/store"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

type metric struct {
	Timestamp     time.Time `json:"timestamp"`
	TimestampUnix int64     `json:"timestampUnix"`
	CPUUsedPct    float64   `json:"cpuUsedPct"`
	CPUCount      int32     `json:"cpuCount"`
	MemUsed       uint64    `json:"memUsed"`
	MemTotal      uint64    `json:"memTotal"`
	DiskUsed      uint64    `json:"diskUsed"`
	DiskTotal     uint64    `json:"diskTotal"`
}

// metrics answers the sandbox's metrics over the last 10 minutes
// (filtered by the optional start and end, Unix seconds).
func (h *Handler) metrics(w http.ResponseWriter, r *http.Request) {
	var start, end int64
	for name, p := range map[string]*int64{"start": &start, "end": &end} {
		if s := r.URL.Query().Get(name); s != "" {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil || n < 0 {
				writeError(w, http.StatusBadRequest, name+" must be a Unix time in seconds")
				return
			}
			*p = n
		}
	}
	conn, err := h.cfg.Capsules.Connect(r.Context(), scope(r), chi.URLParam(r, "id"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	resp, err := conn.Agent.GetCapsuleMetrics(r.Context(), connect.NewRequest(&pb.GetCapsuleMetricsRequest{CapsuleId: conn.Capsule.ID}))
	if err != nil {
		h.fail(w, r, capsules.AgentError(err))
		return
	}
	out := []metric{}
	for _, p := range resp.Msg.GetPoints() {
		sec := p.GetTsMs() / 1000
		if (start > 0 && sec < start) || (end > 0 && sec > end) {
			continue
		}
		out = append(out, metric{
			Timestamp: time.UnixMilli(p.GetTsMs()).UTC(), TimestampUnix: sec, CPUUsedPct: p.GetCpuUsedPct(), CPUCount: p.GetCpuCount(),
			MemUsed: p.GetMemUsedBytes(), MemTotal: p.GetMemTotalBytes(), DiskUsed: p.GetDiskUsedBytes(), DiskTotal: p.GetDiskTotalBytes(),
		})
	}
	writeJSON(w, http.StatusOK, out)
}

func toTemplate(t store.Template) template {
	return template{
		TemplateID: t.ID, BuildID: t.ID, Public: t.Public, Aliases: []string{t.Name}, Names: []string{t.Name},
		CreatedAt: t.CreatedAt, UpdatedAt: t.UpdatedAt, EnvdVersion: EnvdVersion, BuildStatus: "ready",
	}
}

func (h *Handler) listTemplates(w http.ResponseWriter, r *http.Request) {
	ts, err := h.cfg.Store.ListTemplates(r.Context(), scope(r).TeamID)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := make([]template, 0, len(ts))
	for _, t := range ts {
		out = append(out, toTemplate(t))
	}
	writeJSON(w, http.StatusOK, out)
}

// getTemplate answers one template by id or name.
func (h *Handler) getTemplate(w http.ResponseWriter, r *http.Request) {
	id, team := chi.URLParam(r, "id"), scope(r).TeamID
	t, err := h.cfg.Store.GetTemplate(r.Context(), team, id)
	if errors.Is(err, store.ErrNotFound) {
		t, err = h.cfg.Store.GetTemplateByName(r.Context(), team, id)
	}
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, "template "+strconv.Quote(clip(id))+" not found")
		return
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toTemplate(t))
}

// Headers the SDK sends on envd calls.
const (
	sandboxIDHeader   = "E2b-Sandbox-Id"
	sandboxPortHeader = "E2b-Sandbox-Port"
	accessTokenHeader = "X-Access-Token"
	envdPort          = "49983"
)

// envd forwards an envd call (Connect RPC or HTTP, streams included) to
// the sandbox's envd through its host agent's envd route.
func (h *Handler) envd(w http.ResponseWriter, r *http.Request) {
	id := r.Header.Get(sandboxIDHeader)
	if id == "" {
		writeError(w, http.StatusBadRequest, "the "+sandboxIDHeader+" header is required")
		return
	}
	if p := r.Header.Get(sandboxPortHeader); p != "" && p != envdPort {
		writeError(w, http.StatusBadRequest, "only envd's port ("+envdPort+") is served here; use the capsule proxy for other ports")
		return
	}
	rest := strings.TrimPrefix(r.URL.EscapedPath(), Prefix+"/envd")
	if rest == "" {
		rest = "/"
	}
	if !h.envdAuthorized(r, id, rest) {
		writeError(w, http.StatusUnauthorized, "missing or invalid access token for sandbox "+strconv.Quote(clip(id)))
		return
	}
	tooLarge := "the request body is larger than " + strconv.FormatInt(h.cfg.MaxFileBytes, 10) + " bytes"
	if r.ContentLength > h.cfg.MaxFileBytes {
		writeError(w, http.StatusRequestEntityTooLarge, tooLarge)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, h.cfg.MaxFileBytes)
	conn, err := h.cfg.Capsules.Connect(r.Context(), capsules.SystemScope(), id)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	host, err := h.cfg.Store.GetHost(r.Context(), conn.Capsule.HostID)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	base, err := url.Parse(h.cfg.Agents.BaseURL(host.Address))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	secret := h.cfg.Agents.Credential(host.ID)
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = base.Scheme, base.Host
			pr.Out.Host = base.Host
			p := strings.TrimSuffix(base.Path, "/") + hostagent.EnvdRoutePrefix + conn.Capsule.ID + rest
			if u, err := url.Parse(p); err == nil {
				pr.Out.URL.Path, pr.Out.URL.RawPath = u.Path, u.RawPath
			}
			credstrip.Request(pr.Out)
			pr.Out.Header.Del(accessTokenHeader)
			pr.Out.Header.Del(sandboxIDHeader)
			pr.Out.Header.Del(sandboxPortHeader)
			pr.Out.Header.Set(hostagent.SecretHeader, secret)
		},
		Transport: h.transport,
		// Streaming responses (no Content-Length) are flushed on every
		// write; sized ones (file downloads) are not.
		BufferPool: copyBuffers{},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				writeError(w, http.StatusRequestEntityTooLarge, tooLarge)
				return
			}
			h.log.DebugContext(r.Context(), "e2b envd route: agent unreachable", "capsule_id", id, "err", err)
			writeError(w, http.StatusBadGateway, "the sandbox's host cannot be reached right now")
		},
	}
	// Full duplex: see internal/relay (a stream cut when the response
	// starts while the Transport still reads the request body).
	relay.FullDuplex(rp, h.log).ServeHTTP(w, r)
}

// envdAuthorized checks X-Access-Token for sandbox id, or, for a signed
// file URL (GET/POST /files without a token), its signature: base64 of
// SHA-256("path:operation:user:token[:expiration]") with prefix "v1_",
// not expired.
func (h *Handler) envdAuthorized(r *http.Request, id, rest string) bool {
	want := h.envdToken(id)
	if got := r.Header.Get(accessTokenHeader); got != "" {
		return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
	}
	q := r.URL.Query()
	sig := q.Get("signature")
	if sig == "" || rest != "/files" {
		return false
	}
	op := "read"
	if r.Method == http.MethodPost {
		op = "write"
	}
	raw := q.Get("path") + ":" + op + ":" + q.Get("username") + ":" + want
	if e := q.Get("signature_expiration"); e != "" {
		n, err := strconv.ParseInt(e, 10, 64)
		if err != nil || time.Now().Unix() > n {
			return false
		}
		raw += ":" + e
	}
	sum := sha256.Sum256([]byte(raw))
	expect := "v1_" + strings.TrimRight(base64.StdEncoding.EncodeToString(sum[:]), "=")
	return subtle.ConstantTimeCompare([]byte(sig), []byte(expect)) == 1
}

// copyBuffers lends the envd route's copy buffers (1 MiB).
type copyBuffers struct{}

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

func (copyBuffers) Get() []byte  { return *copyBufPool.Get().(*[]byte) }
func (copyBuffers) Put(b []byte) { copyBufPool.Put(&b) }
