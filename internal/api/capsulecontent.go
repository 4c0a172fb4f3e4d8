package api

import (
	"mime"
	"net/http"
	"path"
)

// capsuleContent marks every response of a capsule route as content a
// browser must not run on the API's origin: bytes from a capsule (file
// downloads, process output, names of files) are never sniffed into HTML
// (nosniff) and, if a browser renders them anyway, they run in a unique
// origin without scripts (CSP sandbox), so capsule code can never act as
// the API's user. Capsule ports are served on the port proxy's own listener
// instead.
func capsuleContent(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Content-Security-Policy", "sandbox")
		next.ServeHTTP(w, r)
	})
}

// attachment is the Content-Disposition of a file downloaded from a
// capsule: always an attachment, named after the file.
func attachment(filePath string) string {
	if v := mime.FormatMediaType("attachment", map[string]string{"filename": path.Base(filePath)}); v != "" {
		return v
	}
	return "attachment"
}
