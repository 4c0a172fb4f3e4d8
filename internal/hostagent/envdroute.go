package hostagent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/wrenn-dev/wrenn/internal/credstrip"
	"github.com/wrenn-dev/wrenn/internal/envdclient"
	"github.com/wrenn-dev/wrenn/internal/relay"
)

// EnvdRoutePrefix is the agent route the control plane forwards a
// capsule's envd calls through (the E2B-compatible envd route): a request
// to /envd/{capsule}/{rest} reaches http://{capsule ip}:49983/{rest} with
// the capsule's own envd access token. It is mounted behind the host
// secret, next to (never under) the public port proxy's /proxy/, which
// keeps refusing envd's port.
const EnvdRoutePrefix = "/envd/"

type envdTarget struct {
	addr, token string
}

type envdTargetKey struct{}

// newEnvdRoute returns the handler of EnvdRoutePrefix. The caller (the
// control plane) has authorized the request; the client's own
// X-Access-Token is replaced by the capsule's token, and Wrenn
// credentials are stripped.
func (a *Agent) newEnvdRoute() http.Handler {
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	var protos http.Protocols
	protos.SetHTTP1(true)
	tr := &http.Transport{
		Proxy: nil, DialContext: d.DialContext, Protocols: &protos,
		MaxIdleConns: 256, MaxIdleConnsPerHost: 32, IdleConnTimeout: 90 * time.Second,
		// Large transfers (file uploads and downloads) cost fewer
		// syscalls with larger buffers.
		WriteBufferSize: 1 << 20, ReadBufferSize: 1 << 20,
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			t, _ := pr.In.Context().Value(envdTargetKey{}).(envdTarget)
			pr.SetURL(&url.URL{Scheme: "http", Host: t.addr})
			pr.Out.URL.Path, pr.Out.URL.RawPath = pr.In.URL.Path, pr.In.URL.RawPath
			pr.Out.Header.Del(envdclient.AccessTokenHeader)
			if t.token != "" {
				pr.Out.Header.Set(envdclient.AccessTokenHeader, t.token)
			}
		},
		Transport: tr,
		// Streaming responses (no Content-Length: Connect streams, watch)
		// are flushed on every write anyway; sized ones are not.
		BufferPool: envdBuffers{},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if !errors.Is(err, context.Canceled) {
				a.log.Debug("envd route upstream error", "err", err)
			}
			writeAgentError(w, http.StatusBadGateway, "unavailable", "the capsule's envd cannot be reached right now")
		},
	}
	// Full duplex: see internal/relay (a stream cut when the response
	// starts while the Transport still reads the request body).
	fwd := relay.FullDuplex(rp, a.log)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rest, _ := strings.CutPrefix(r.URL.EscapedPath(), EnvdRoutePrefix)
		id, tail, _ := strings.Cut(rest, "/")
		c, err := a.lookup(id)
		if err != nil {
			writeAgentError(w, http.StatusNotFound, "not_found", "no such running capsule")
			return
		}
		rec, info, _ := c.snapshot()
		if rec.Phase != phaseRunning || !info.IP.IsValid() {
			writeAgentError(w, http.StatusNotFound, "not_found", "no such running capsule")
			return
		}
		u, err := url.Parse("/" + tail)
		if err != nil {
			writeAgentError(w, http.StatusBadRequest, "invalid_argument", "bad path")
			return
		}
		out := r.Clone(context.WithValue(r.Context(), envdTargetKey{}, envdTarget{addr: info.EnvdAddr(), token: rec.AccessToken}))
		out.URL.Path, out.URL.RawPath = u.Path, u.RawPath
		credstrip.Request(out)
		if r.Method == http.MethodGet && u.Path == "/files" && r.TLS == nil {
			a.envdDownload(w, out, info.EnvdAddr(), rec.AccessToken)
			return
		}
		if hj, ok := w.(http.Hijacker); ok && r.Method == http.MethodPost && u.Path == "/files" && spliceableUpload(r) {
			a.envdUpload(w, hj, out, info.EnvdAddr(), rec.AccessToken)
			return
		}
		fwd.ServeHTTP(w, out)
	})
}

// hopHeaders are not forwarded by envdDownload (RFC 9110 7.6.1).
var hopHeaders = []string{
	"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// envdDownload forwards a file download (GET /files, already stripped of
// Wrenn credentials) to envd on a connection of its own, so that the body
// goes from envd's socket to the control plane's with splice(2)
// (relay.RawResponse.CopyBody) instead of through the reverse proxy's
// buffer. Only for a plain-TCP request (the caller checks r.TLS).
func (a *Agent) envdDownload(w http.ResponseWriter, r *http.Request, addr, token string) {
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, "http://"+addr+r.URL.RequestURI(), nil)
	if err != nil {
		writeAgentError(w, http.StatusBadRequest, "invalid_argument", "bad path")
		return
	}
	req.Header = r.Header.Clone()
	for _, h := range hopHeaders {
		req.Header.Del(h)
	}
	req.Header.Del(envdclient.AccessTokenHeader)
	if token != "" {
		req.Header.Set(envdclient.AccessTokenHeader, token)
	}
	resp, err := relay.RoundTripRaw(req, addr, 5*time.Second, 5*time.Minute)
	if err != nil {
		if !errors.Is(err, context.Canceled) {
			a.log.Debug("envd route upstream error", "err", err)
		}
		writeAgentError(w, http.StatusBadGateway, "unavailable", "the capsule's envd cannot be reached right now")
		return
	}
	defer func() { _ = resp.Close() }()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	for _, h := range hopHeaders {
		w.Header().Del(h)
	}
	w.WriteHeader(resp.StatusCode)
	buf := envdBuffers{}.Get()
	defer envdBuffers{}.Put(buf)
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusPartialContent {
		_, _ = io.CopyBuffer(w, io.LimitReader(resp.Body, 1<<20), buf)
		return
	}
	if missing, err := resp.CopyBody(w, true, buf); missing > 0 || err != nil {
		// The client must see a cut body, not a short file.
		panic(http.ErrAbortHandler)
	}
}

// spliceUploadMin is the smallest upload envdUpload takes over (smaller
// ones keep the connection for the next request).
const spliceUploadMin = 1 << 20

// spliceableUpload reports whether envdUpload can forward r's body: a
// plain-TCP HTTP/1.x request of a known, large length.
func spliceableUpload(r *http.Request) bool {
	return r.ProtoMajor == 1 && r.TLS == nil && r.ContentLength >= spliceUploadMin && len(r.TransferEncoding) == 0
}

// envdUpload forwards a large upload (POST /files, already stripped of
// Wrenn credentials) to envd with splice(2): it takes over the client's
// connection (the control plane's), sends the request head to envd on a
// connection of its own, moves the body socket to socket in the kernel
// (envd splices it on into the file) and relays envd's answer with
// "Connection: close", as a hijacked connection cannot return to the
// server's keep-alive pool.
func (a *Agent) envdUpload(w http.ResponseWriter, hj http.Hijacker, r *http.Request, addr, token string) {
	d := net.Dialer{Timeout: 5 * time.Second}
	up, err := d.DialContext(r.Context(), "tcp", addr)
	if err != nil {
		a.log.Debug("envd route upstream error", "err", err)
		writeAgentError(w, http.StatusBadGateway, "unavailable", "the capsule's envd cannot be reached right now")
		return
	}
	defer func() { _ = up.Close() }()
	conn, brw, err := hj.Hijack()
	if err != nil {
		a.log.Error("hijack for upload", "err", err)
		return
	}
	defer func() { _ = conn.Close() }()
	_ = conn.SetDeadline(time.Time{})
	answer := func(status int, code, msg string) {
		body := `{"code":"` + code + `","message":"` + msg + `"}` + "\n"
		_, _ = fmt.Fprintf(conn, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
			status, http.StatusText(status), len(body), body)
	}
	if strings.EqualFold(r.Header.Get("Expect"), "100-continue") {
		if _, err := brw.WriteString("HTTP/1.1 100 Continue\r\n\r\n"); err != nil || brw.Flush() != nil {
			return
		}
	}
	h := r.Header.Clone()
	for _, k := range hopHeaders {
		h.Del(k)
	}
	h.Del("Expect")
	h.Del("Content-Length")
	h.Del(envdclient.AccessTokenHeader)
	if token != "" {
		h.Set(envdclient.AccessTokenHeader, token)
	}
	var head bytes.Buffer
	fmt.Fprintf(&head, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\nConnection: close\r\n", r.URL.RequestURI(), addr, r.ContentLength)
	_ = h.Write(&head)
	head.WriteString("\r\n")
	buffered, _ := brw.Peek(int(min(int64(brw.Reader.Buffered()), r.ContentLength)))
	head.Write(buffered)
	rest := &io.LimitedReader{R: conn, N: r.ContentLength - int64(len(buffered))}
	if _, err := up.Write(head.Bytes()); err == nil {
		// *net.TCPConn.ReadFrom of a limited *net.TCPConn: splice(2).
		_, _ = io.Copy(up, rest)
	}
	if rest.N > 0 {
		// The sender stopped short: envd gets EOF, fails the upload and
		// answers now rather than wait for bytes that will not come.
		if tc, ok := up.(interface{ CloseWrite() error }); ok {
			_ = tc.CloseWrite()
		}
	}
	// envd's answer, also when the body did not all go through (envd may
	// have answered early, e.g. the path is a directory).
	_ = up.SetReadDeadline(time.Now().Add(5 * time.Minute))
	resp, err := http.ReadResponse(bufio.NewReader(up), nil)
	if err != nil {
		a.log.Debug("envd upload: no answer", "err", err)
		answer(http.StatusBadGateway, "unavailable", "the capsule's envd cannot be reached right now")
		return
	}
	defer func() { _ = resp.Body.Close() }()
	for _, k := range hopHeaders {
		resp.Header.Del(k)
	}
	resp.Close = true
	_ = resp.Write(conn)
	if rest.N > 0 {
		// The sender may still be sending: closing with unread data would
		// reset the connection before it reads the answer. Drop what
		// still comes, within bounds.
		_ = conn.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
		_, _ = io.Copy(io.Discard, io.LimitReader(rest, 64<<20))
	}
	if tc, ok := conn.(interface{ CloseWrite() error }); ok {
		_ = tc.CloseWrite()
	}
}

func writeAgentError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(`{"code":"` + code + `","message":"` + msg + `"}` + "\n"))
}

// envdBuffers lends the envd route's copy buffers (1 MiB).
type envdBuffers struct{}

var envdBufPool = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

func (envdBuffers) Get() []byte  { return *envdBufPool.Get().(*[]byte) }
func (envdBuffers) Put(b []byte) { envdBufPool.Put(&b) }
