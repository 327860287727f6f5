package httpproxy

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/edge-tunnel/edge-tunnel/pkg/metrics"
)

// tokenAuth checks the Proxy-Authorization header against a shared token.
// Both sides are hashed before the constant-time compare, so neither the
// token's bytes nor its length leak through the time a check takes.
type tokenAuth struct {
	sum [sha256.Size]byte
}

func newTokenAuth(token string) *tokenAuth {
	if token == "" {
		return nil
	}
	return &tokenAuth{sum: sha256.Sum256([]byte(token))}
}

// ok accepts "Bearer TOKEN", and "Basic base64(USER:TOKEN)" with any user
// name: Go's and curl's proxy clients send only Basic, taken from the user
// information of the proxy URL (HTTPS_PROXY=http://edge:TOKEN@host:8099).
func (a *tokenAuth) ok(header string) bool {
	scheme, cred, found := strings.Cut(strings.TrimSpace(header), " ")
	if !found {
		return false
	}
	cred = strings.TrimSpace(cred)
	switch {
	case strings.EqualFold(scheme, "Bearer"):
	case strings.EqualFold(scheme, "Basic"):
		raw, err := base64.StdEncoding.DecodeString(cred)
		if err != nil {
			return false
		}
		_, password, found := strings.Cut(string(raw), ":")
		if !found {
			return false
		}
		cred = password
	default:
		return false
	}
	sum := sha256.Sum256([]byte(cred))
	return subtle.ConstantTimeCompare(sum[:], a.sum[:]) == 1
}

// unauthenticated answers 407 with the challenges a client needs to retry
// with credentials, and the reason on the status line like every refusal.
func (p *Proxy) unauthenticated(w http.ResponseWriter, r *http.Request) {
	if p.refused != nil {
		p.refused(metrics.RefusedProxyAuth)
	}
	why := "no Proxy-Authorization header"
	if r.Header.Get("Proxy-Authorization") != "" {
		why = "the Proxy-Authorization header does not carry the token"
	}
	reason := fmt.Sprintf("%s: proxy authentication required: %s; send Proxy-Authorization: Bearer TOKEN, or put the token in the proxy URL (http://edge:TOKEN@HOST:PORT), with the token of --proxy-token-file", p.name, why)
	p.log.V(2).Info("Refused", "method", r.Method, "target", r.RequestURI, "remote", r.RemoteAddr, "status", http.StatusProxyAuthRequired, "reason", why)
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, 64<<10))
	}
	const challenge = "Proxy-Authenticate: Bearer realm=\"edge-tunnel\"\r\nProxy-Authenticate: Basic realm=\"edge-tunnel\"\r\n"
	if hj, ok := w.(http.Hijacker); ok {
		if c, brw, err := hj.Hijack(); err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			body := reason + "\n"
			fmt.Fprintf(brw, "HTTP/1.1 407 %s: %s\r\n%sContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
				http.StatusText(http.StatusProxyAuthRequired), reason, challenge, len(body), body)
			brw.Flush()
			closeLingering(c)
			return
		}
	}
	w.Header().Add("Proxy-Authenticate", `Bearer realm="edge-tunnel"`)
	w.Header().Add("Proxy-Authenticate", `Basic realm="edge-tunnel"`)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Connection", "close")
	w.WriteHeader(http.StatusProxyAuthRequired)
	io.WriteString(w, reason+"\n")
}
