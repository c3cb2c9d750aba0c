package backstageproxy

import (
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/urlpath"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(ErrorHandler{})
}

// errorBody is the kind of body a proxyError is answered with.
type errorBody uint8

const (
	// bodyJSON is Backstage's JSON error (backend-defaults'
	// rootHttpRouter/http/MiddlewareFactory.ts, the error handler): the zero
	// value, so a proxyError answers with it unless it says otherwise.
	bodyJSON errorBody = iota //lint:ignore U1000 named for the reader; used as the zero value
	// bodyBadRequest is Express's plain-text `Bad Request` (the path guard).
	bodyBadRequest
	// bodyEmpty is a status without a body (a request outside the route).
	bodyEmpty
)

// proxyError is what `backstage_proxy` returns, wrapped in a
// caddyhttp.HandlerError carrying the status, when it refuses a request
// or its upstream fails. Its message is Backstage's, safe to show a client
// (`{http.error.message}`); the cause, if any, is only for logs.
type proxyError struct {
	name, message string
	mountPath     string
	body          errorBody
	cause         error
}

func (e *proxyError) Error() string { return e.message }
func (e *proxyError) Unwrap() error { return e.cause }

// ErrorHandler renders the errors of `backstage_proxy` the way Backstage
// answers them, byte for byte: its JSON error body
//
//	{"error":{"name":…,"message":…},"request":{"method":…,"url":…},"response":{"statusCode":…}}
//
// (request.url relative to the mount path), Express's plain-text `Bad
// Request` for path traversal, or an empty body. It belongs in a server's
// error routes (`errors.routes` in JSON, `handle_errors` in a Caddyfile);
// the config adapter and the `backstage_proxy` Caddyfile directive add it.
//
// Other error routes come first: the handler lets the rest of the error
// chain run, and writes Backstage's answer only if nothing after it wrote a
// body or another status. So a `handle_errors` block that responds (for example with
// `{http.error.status_code}` and `{http.error.message}`) overrides it,
// wherever it is written, and one that only sets headers or logs does not.
// Errors that are not from `backstage_proxy` are passed on untouched.
//
// Without it in the error routes, a refusal is answered by Caddy's default:
// the status code and an empty body. That fails closed, but is not what
// Backstage clients expect.
type ErrorHandler struct {
	// Backend also answers the 502, 503 and 504 of other handlers (the
	// config adapter's `caddy.backend` route, a `reverse_proxy` to the
	// Backstage backend) with Backstage's JSON error, with a message about
	// the backend and no internal address, rather than an empty body. The
	// cause is logged.
	Backend bool `json:"backend,omitempty"`

	logger *zap.Logger
}

// Provision implements caddy.Provisioner.
func (h *ErrorHandler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	return nil
}

// backendErrors are the answers to a failed Backstage backend, by status.
var backendErrors = map[int]*proxyError{
	http.StatusBadGateway:         {name: "BadGatewayError", message: "The Backstage backend could not be reached"},
	http.StatusServiceUnavailable: {name: "ServiceUnavailableError", message: "The Backstage backend is not available"},
	http.StatusGatewayTimeout:     {name: "GatewayTimeoutError", message: "The Backstage backend did not answer in time"},
}

// CaddyModule returns the Caddy module information.
func (ErrorHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.backstage_error",
		New: func() caddy.Module { return new(ErrorHandler) },
	}
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h ErrorHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	err, _ := r.Context().Value(caddyhttp.ErrorCtxKey).(error)
	var he caddyhttp.HandlerError
	var pe *proxyError
	if !errors.As(err, &he) {
		return next.ServeHTTP(w, r)
	}
	if !errors.As(err, &pe) {
		if pe = backendErrors[he.StatusCode]; !h.Backend || pe == nil {
			return next.ServeHTTP(w, r)
		}
		if h.logger != nil {
			h.logger.Error("the Backstage backend failed", zap.Int("status", he.StatusCode), zap.Error(he.Err))
		}
	}
	dw := deferWriters.Get().(*deferWriter)
	*dw = deferWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}}
	err = next.ServeHTTP(dw, r)
	answered, pending := dw.wrote, dw.pending
	*dw = deferWriter{}
	deferWriters.Put(dw)
	switch {
	case err != nil:
		return err
	case answered:
		// a later error route wrote a body
		return nil
	case pending != 0 && pending != he.StatusCode:
		// or another status
		w.WriteHeader(pending)
		return nil
	}
	// nothing, or the error's status alone (Caddy's last resort)
	return pe.write(w, r, he.StatusCode)
}

// deferWriter holds back the status written by the error routes after
// ErrorHandler until a body follows, so that Caddy's last resort (the status
// alone) does not preempt Backstage's answer.
type deferWriter struct {
	caddyhttp.ResponseWriterWrapper
	pending int
	wrote   bool
}

var deferWriters = sync.Pool{New: func() any { return new(deferWriter) }}

func (dw *deferWriter) WriteHeader(status int) {
	if dw.wrote || dw.pending != 0 {
		return
	}
	if status >= 100 && status <= 199 {
		dw.ResponseWriter.WriteHeader(status)
		return
	}
	dw.pending = status
}

// commit sends the held-back status: a body, or a flush, follows.
func (dw *deferWriter) commit() {
	if dw.wrote {
		return
	}
	dw.wrote = true
	if dw.pending != 0 {
		dw.ResponseWriter.WriteHeader(dw.pending)
	}
}

func (dw *deferWriter) Write(b []byte) (int, error) {
	dw.commit()
	return dw.ResponseWriter.Write(b)
}

// ReadFrom commits the status before the wrapped writer's ReadFrom.
func (dw *deferWriter) ReadFrom(r io.Reader) (int64, error) {
	dw.commit()
	return dw.ResponseWriterWrapper.ReadFrom(r)
}

// FlushError commits the status, then flushes.
func (dw *deferWriter) FlushError() error {
	dw.commit()
	return http.NewResponseController(dw.ResponseWriter).Flush()
}

// write writes the answer to e with the given status.
func (e *proxyError) write(w http.ResponseWriter, r *http.Request, status int) error {
	hdr := w.Header()
	switch e.body {
	case bodyEmpty:
		w.WriteHeader(status)
		return nil
	case bodyBadRequest:
		hdr.Set("Content-Type", "text/plain; charset=utf-8")
		hdr.Set("Content-Length", "11")
		w.WriteHeader(status)
		_, err := w.Write([]byte("Bad Request"))
		return err
	}
	buf := appendErrorJSON(nil, r, e.mountPath, status, e.name, e.message)
	hdr.Set("Content-Type", "application/json; charset=utf-8")
	hdr.Set("Content-Length", strconv.Itoa(len(buf)))
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return nil
	}
	_, err := w.Write(buf)
	return err
}

// appendErrorJSON appends Backstage's JSON error body (backend-defaults'
// rootHttpRouter/http/MiddlewareFactory.ts), where request.url is relative to mountPath.
func appendErrorJSON(buf []byte, r *http.Request, mountPath string, status int, name, message string) []byte {
	uri := r.RequestURI
	if uri == "" || uri[0] != '/' {
		uri = r.URL.RequestURI()
	}
	if urlpath.HasSegmentPrefixFold(uri, mountPath) || (len(uri) > len(mountPath) && uri[len(mountPath)] == '?' && strings.EqualFold(uri[:len(mountPath)], mountPath)) {
		uri = uri[len(mountPath):]
		if uri == "" || uri[0] == '?' {
			// Express mounts ensure a leading slash: /api/proxy?x=1 is /?x=1
			uri = "/" + uri
		}
	}
	if buf == nil {
		buf = make([]byte, 0, 160+len(uri))
	}
	buf = append(buf, `{"error":{"name":`...)
	buf = appendJSONString(buf, name)
	buf = append(buf, `,"message":`...)
	buf = appendJSONString(buf, message)
	buf = append(buf, `},"request":{"method":`...)
	buf = appendJSONString(buf, r.Method)
	buf = append(buf, `,"url":`...)
	buf = appendJSONString(buf, uri)
	buf = append(buf, `},"response":{"statusCode":`...)
	buf = strconv.AppendInt(buf, int64(status), 10)
	return append(buf, "}}"...)
}

// appendJSONString appends s as a JSON string literal; invalid UTF-8 becomes
// U+FFFD, as encoding/json does.
func appendJSONString(buf []byte, s string) []byte {
	const hex = "0123456789abcdef"
	buf = append(buf, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				buf = append(buf, '\\', c)
			case c < 0x20 || c == '<' || c == '>' || c == '&':
				buf = append(buf, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				buf = append(buf, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			buf = append(buf, `\ufffd`...)
		} else if r == '\u2028' || r == '\u2029' {
			buf = append(buf, '\\', 'u', '2', '0', '2', hex[r&0xf])
		} else {
			buf = append(buf, s[i:i+size]...)
		}
		i += size
	}
	return append(buf, '"')
}

// Interface guards
var (
	_ caddyhttp.MiddlewareHandler = (*ErrorHandler)(nil)
	_ caddy.Provisioner           = (*ErrorHandler)(nil)
	_ error                       = (*proxyError)(nil)
	_ io.ReaderFrom               = (*deferWriter)(nil)
)
