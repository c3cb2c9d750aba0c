package backstageproxy

import (
	"errors"
	"net/http"
	"sync"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/identity"
	"github.com/caddy-backstage/caddy-backstage-proxy/internal/urlpath"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// ServeHTTP enforces the endpoint's policy and calls next with the request turned
// into the upstream request (serveUpstream).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl != nil && h.routePlaceholders != nil {
		repl.Map(h.routePlaceholders)
	}
	escapedPath := urlpath.Escaped(r.URL)

	// 1. Credentials, before the path guard: Backstage's barrier runs first, so
	// anonymous traversal attempts on protected routes get 401.
	var p identity.Principal
	if h.needsCredentials(escapedPath) {
		token, authErr := identity.BearerToken(r.Header)
		if authErr == nil {
			p, authErr = h.identity.authn.Authenticate(r.Context(), token)
		}
		if authErr != nil {
			if c := h.logger.Check(zapcore.DebugLevel, "credentials rejected"); c != nil {
				c.Write(zap.String("route", h.Route), zap.Int("status", authErr.Status), zap.String("reason", authErr.Message))
			}
			if repl != nil {
				repl.Set(placeholderError, authErr.Message)
			}
			h.record(r, outcomeOfStatus(authErr.Status), authErr.Status, "", authErr.Message)
			return h.refuse(authErr.Status, authErr.Name, authErr.Message)
		}
		if repl != nil {
			repl.Set(placeholderUserID, p.SubjectValue())
			repl.Map(principalPlaceholders(p.Type, p.Method))
		}
		if h.allow != nil {
			if err := h.checkAllow(r, repl, &p); err != nil {
				return err
			}
		}
	}

	// 2. Path guard (Backstage's router.ts guard; README Differences D10).
	if !urlpath.IsSafe(escapedPath) {
		if repl != nil {
			repl.Set(placeholderError, "path traversal")
		}
		h.record(r, outcomeBadPath, http.StatusBadRequest, p.Subject, "path traversal")
		return caddyhttp.Error(http.StatusBadRequest, &proxyError{message: "Bad Request", body: bodyBadRequest})
	}

	// Rate limit (ratelimit.go): after the credentials, so refused callers
	// spend no budget, and after the path guard, so only requests that can
	// reach the upstream are counted.
	if err := h.limitRate(w, r, repl, p.Subject); err != nil {
		return err
	}

	// The barrier just decides; the next handler answers.
	if h.barrier {
		if h.passed != nil {
			h.passed(r)
		}
		return next.ServeHTTP(w, r)
	}

	// Backstage matches the path as received: `/api/proxy//open/a`,
	// `/api/proxy/./open/a` or `/api/proxy/op%65n/a` are not under `/open`,
	// and rewriting them here would send the mount path upstream. The
	// generated routes match that way (MatchRoutePath); this check holds
	// for hand-written ones too (Caddy's `path` matcher cleans and decodes).
	if h.Rewrite != nil && !urlpath.HasSegmentPrefixFold(escapedPath, h.Rewrite.StripPrefix) {
		return caddyhttp.Error(http.StatusNotFound, &proxyError{message: "Not Found", body: bodyEmpty})
	}

	// 3. The upstream request, and the response filter.
	rf := responseFilters.Get().(*responseFilter)
	rf.init(w, h.respAllow, h.respAllowNames, h.AllowUpgrade, rf.staged)
	err := h.serveUpstream(rf, r, escapedPath, next)
	if rf.wroteHeader {
		rf.filterTrailers()
	} else if err != nil {
		err = h.upstreamError(err)
	}
	h.recordUpstream(r, rf, err, p.Subject)
	rf.release(r.Method)
	return err
}

// serveUpstream calls next with r turned into the upstream request: the
// filtered headers, no trailers (none is on any allowlist's terms; Backstage
// drops them), and the rewritten URI. Like Caddy's own rewrite and headers
// handlers, it changes the request in place rather than copying it (a copy
// costs an allocation and its garbage collection on every request), so the
// placeholders of later handlers read the upstream request, as they do
// after a rewrite: `{http.request.uri}` is the upstream URI and
// `{http.request.orig_uri}` the client's. Unlike those handlers, it puts the
// request back when next returns, or panics, so that the access log and the
// error routes see what the client sent. Nothing is recycled: a handler that
// keeps the request after it returned sees the client's request, intact.
func (h *Handler) serveUpstream(w http.ResponseWriter, r *http.Request, escapedPath string, next caddyhttp.Handler) error {
	header, trailer, requestURI, urlp, u := r.Header, r.Trailer, r.RequestURI, r.URL, *r.URL
	defer func() {
		// The pointer too: a later handler may have replaced r.URL (rather
		// than changed it in place), and what it points to is not ours.
		r.Header, r.Trailer, r.RequestURI, r.URL = header, trailer, requestURI, urlp
		*r.URL = u
	}()
	r.Header = h.filterRequestHeaders(header)
	r.Trailer = nil
	if h.Rewrite != nil {
		uri, pathEnd := h.Rewrite.applyURI(escapedPath, u.RawQuery, u.ForceQuery || u.RawQuery != "")
		urlpath.SetEscaped(r.URL, uri[:pathEnd])
		r.URL.RawQuery = ""
		if pathEnd < len(uri) {
			r.URL.RawQuery = uri[pathEnd+1:]
		}
		r.URL.ForceQuery = false
		r.RequestURI = uri
	}
	return next.ServeHTTP(w, r)
}

// responseFilters recycles response filters and their staged header maps,
// which would otherwise cost a map and its growth per request. A
// ResponseWriter may not be used once the handler has returned (net/http's
// contract), and reverse_proxy finishes with it before returning.
var responseFilters = sync.Pool{New: func() any {
	return &responseFilter{staged: make(http.Header, 16)}
}}

// maxPooledHeaders bounds the maps kept for reuse, so that one response with
// a thousand headers does not keep a thousand-slot map alive.
const maxPooledHeaders = 64

// release gives rf back for reuse. Upgraded connections and CONNECT requests
// are never recycled, out of caution: their streams outlive the status.
func (rf *responseFilter) release(method string) {
	if method == http.MethodConnect || rf.status == http.StatusSwitchingProtocols || len(rf.staged) > maxPooledHeaders {
		return
	}
	staged := rf.staged
	clear(staged)
	*rf = responseFilter{staged: staged}
	responseFilters.Put(rf)
}

// needsCredentials reports whether a request for escapedPath must carry valid
// credentials. The unauthenticated paths are matched against the path as
// received, as the routes are (MatchRoutePath): `/api/proxy/op%65n` is not
// under `/open`.
func (h *Handler) needsCredentials(escapedPath string) bool {
	if h.Credentials == CredentialsDangerouslyAllowUnauthenticated || h.identity.DangerouslyDisableDefaultAuthPolicy {
		return false
	}
	if len(h.openPaths) > 0 {
		rel, ok := h.relativePath(escapedPath)
		if ok {
			for _, p := range h.openPaths {
				if urlpath.HasSegmentPrefixFold(rel, p) {
					return false
				}
			}
		}
	}
	return true
}

// relativePath returns p relative to the mount path, or false if p is not
// under it.
func (h *Handler) relativePath(p string) (string, bool) {
	if !urlpath.HasSegmentPrefixFold(p, h.MountPath) {
		return "", false
	}
	rel := p[len(h.MountPath):]
	if rel == "" {
		rel = "/"
	}
	return rel, true
}

// upstreamError turns a reverse_proxy failure into a Backstage-shaped error
// (divergence D8: 502 for connection failures, 504 for timeouts, and no
// internal address in the body or in `{http.error.message}`). The cause is
// logged here, at error level: with error routes, Caddy logs handler errors
// at debug level only, and its log line has only the message.
func (h *Handler) upstreamError(err error) error {
	var he caddyhttp.HandlerError
	if !errors.As(err, &he) {
		return err
	}
	var name, msg string
	switch he.StatusCode {
	case http.StatusBadGateway:
		name, msg = "BadGatewayError", "The upstream of this proxy route could not be reached"
	case http.StatusServiceUnavailable:
		name, msg = "ServiceUnavailableError", "No upstream of this proxy route is available"
	case http.StatusGatewayTimeout:
		name, msg = "GatewayTimeoutError", "The upstream of this proxy route did not answer in time"
	default:
		return err
	}
	h.logger.Error("proxying to upstream failed",
		zap.String("route", h.Route), zap.Int("status", he.StatusCode), zap.Error(he.Err))
	return caddyhttp.Error(he.StatusCode, &proxyError{name: name, message: msg, mountPath: h.MountPath, cause: he.Err})
}

// refuse returns the error for a refusal: Caddy's error handling answers it
// (ErrorHandler renders Backstage's body).
func (h *Handler) refuse(status int, name, message string) error {
	return caddyhttp.Error(status, &proxyError{name: name, message: message, mountPath: h.MountPath})
}
