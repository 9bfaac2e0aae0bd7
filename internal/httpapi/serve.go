package httpapi

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// serve wraps every request: security headers, the read deadline lifted
// once the request body has been read, and a log line for every server
// error with its cause.
func (a *api) serve(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		if a.opt.TLS {
			h.Set("Strict-Transport-Security", "max-age=31536000")
		}
		if strings.HasPrefix(r.URL.Path, "/api/") {
			h.Set("Cache-Control", "no-store") // bodies carry secrets
		}
		// The server's ReadTimeout bounds reading the request. Once the
		// body is in, the deadline must go: net/http cancels the request's
		// context when its background read hits it, which would end
		// every answer that takes longer to compute than the request took
		// to read (a synchronous RPC, the event stream).
		rc := http.NewResponseController(w)
		if r.Body == nil || r.Body == http.NoBody {
			_ = rc.SetReadDeadline(time.Time{})
		} else {
			r.Body = &liftOnEOF{ReadCloser: r.Body, rc: rc}
		}
		rec := &recorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		switch {
		case rec.status == http.StatusInternalServerError:
			a.log.Error("http request failed", "method", r.Method, "path", r.URL.Path, "status", rec.status, "error", rec.cause)
		case rec.status >= 500 && rec.cause != nil && rec.status != http.StatusNotImplemented &&
			rec.status != http.StatusBadGateway && rec.status != http.StatusGatewayTimeout:
			// 501, 502 and 504 are a device's answer or silence, not a
			// fault of the platform.
			a.log.Warn("http request failed", "method", r.Method, "path", r.URL.Path, "status", rec.status, "error", rec.cause)
		}
	})
}

// liftOnEOF lifts the connection's read deadline when the body has been
// read to its end.
type liftOnEOF struct {
	io.ReadCloser
	rc   *http.ResponseController
	once sync.Once
}

func (b *liftOnEOF) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.once.Do(func() { _ = b.rc.SetReadDeadline(time.Time{}) })
	}
	return n, err
}

// recorder remembers a response's status and, when writeError wrote it,
// its cause.
type recorder struct {
	http.ResponseWriter
	status int
	cause  error
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Flush implements http.Flusher for the event stream.
func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
