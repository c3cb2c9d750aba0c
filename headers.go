package backstageproxy

import (
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// safeHeaders are the headers Backstage always forwards, in both directions
// (plugins/proxy-backend/src/service/router.ts, safeForwardHeaders;
// backstage-proxy.md §1.8.1). Canonical form.
var safeHeaders = []string{
	// https://fetch.spec.whatwg.org/#cors-safelisted-request-header
	"Cache-Control",
	"Content-Language",
	"Content-Length",
	"Content-Type",
	"Expires",
	"Last-Modified",
	"Pragma",
	// host is overridden by default; with changeOrigin false the client's is kept
	"Host",
	// other headers Backstage assumes to be ok
	"Accept",
	"Accept-Language",
	"User-Agent",
}

// upgradeRequestHeaders pass on endpoints with AllowUpgrade (divergence D1:
// Backstage needs them listed in allowedHeaders, and then breaks other routes).
var upgradeRequestHeaders = []string{
	"Connection", "Upgrade", "Sec-Websocket-Key", "Sec-Websocket-Version",
	"Sec-Websocket-Protocol", "Sec-Websocket-Extensions",
}

// upgradeResponseHeaders pass back on a 101 response of an upgrade endpoint.
var upgradeResponseHeaders = []string{
	"Connection", "Upgrade", "Sec-Websocket-Accept", "Sec-Websocket-Protocol",
	"Sec-Websocket-Extensions",
}

// buildAllowlists computes, once at provision time, the request allowlist
// (SAFE ∪ configured header names ∪ allowedHeaders ∪ authorization iff
// forward) and the response allowlist (SAFE ∪ allowedHeaders ∪
// Content-Encoding), keyed by canonical header name.
func buildAllowlists(credentials string, allowed, upstreamSet []string, upgrade bool) (req, resp map[string]struct{}) {
	req = make(map[string]struct{}, len(safeHeaders)+len(allowed)+len(upstreamSet)+8)
	resp = make(map[string]struct{}, len(safeHeaders)+len(allowed)+8)
	for _, name := range safeHeaders {
		req[name] = struct{}{}
		resp[name] = struct{}{}
	}
	for _, name := range allowed {
		req[http.CanonicalHeaderKey(name)] = struct{}{}
		resp[http.CanonicalHeaderKey(name)] = struct{}{}
	}
	for _, name := range upstreamSet {
		req[http.CanonicalHeaderKey(name)] = struct{}{}
	}
	if credentials == CredentialsForward {
		req["Authorization"] = struct{}{}
	}
	// Divergence D5: an upstream that compresses anyway must not have its
	// Content-Encoding stripped, or the client gets a corrupt body.
	resp["Content-Encoding"] = struct{}{}
	if upgrade {
		for _, name := range upgradeRequestHeaders {
			req[name] = struct{}{}
		}
	} else {
		// Divergence D1/D11: only upgrade endpoints upgrade, whatever
		// allowedHeaders says.
		delete(req, "Upgrade")
		delete(req, "Http2-Settings")
	}
	return req, resp
}

// filterRequestHeaders returns a new header map with only the allowed request
// headers. The values are shared with the original map, which is left intact
// for access logs; nobody downstream mutates value slices in place (reverse_proxy
// copies them into its own map).
func (h *Handler) filterRequestHeaders(in http.Header) http.Header {
	// No size hint: up to 8 entries fit the map's first group, one
	// allocation, and requests rarely keep more.
	out := make(http.Header)
	for name, values := range in {
		if _, ok := h.reqAllow[name]; ok {
			out[name] = values
		}
	}
	if h.AllowUpgrade {
		// Divergence D11: never forward an h2c (or other non-WebSocket) upgrade.
		if up, ok := out["Upgrade"]; ok && (len(up) != 1 || !strings.EqualFold(up[0], "websocket")) {
			delete(out, "Upgrade")
		}
	}
	return out
}

// responseFilter passes back only allowed response headers. It filters when the
// status is written: 1xx responses are informational and not final, and a 101
// keeps its upgrade headers on upgrade endpoints. Headers set by handlers that
// ran before this one (present when the filter was installed) are kept: they
// are the server's own, not the upstream's.
type responseFilter struct {
	caddyhttp.ResponseWriterWrapper
	allow       map[string]struct{}
	upgrade     bool
	preexisting map[string][]string
	wroteHeader bool
	// headersAtWrite is how many headers were left after filtering; more
	// later means trailers were added.
	headersAtWrite int
}

func newResponseFilter(w http.ResponseWriter, allow map[string]struct{}, upgrade bool) *responseFilter {
	rf := new(responseFilter)
	rf.init(w, allow, upgrade)
	return rf
}

func (rf *responseFilter) init(w http.ResponseWriter, allow map[string]struct{}, upgrade bool) {
	rf.ResponseWriterWrapper.ResponseWriter = w
	rf.allow = allow
	rf.upgrade = upgrade
	if hdr := w.Header(); len(hdr) > 0 {
		rf.preexisting = make(map[string][]string, len(hdr))
		for k, v := range hdr {
			rf.preexisting[k] = v
		}
	}
}

func (rf *responseFilter) filter(status int) {
	hdr := rf.ResponseWriter.Header()
	for name, values := range hdr {
		pre, hadPre := rf.preexisting[name]
		if rf.allowed(name, status) {
			// An allowed upstream header replaces what a handler before this
			// one set (reverse_proxy appends to it; Node's setHeader replaces).
			if hadPre && len(values) > len(pre) && slices.Equal(values[:len(pre)], pre) {
				hdr[name] = values[len(pre):]
			}
			continue
		}
		if hadPre {
			hdr[name] = pre
			continue
		}
		delete(hdr, name)
	}
}

// allowed reports whether a response header may pass. Names are normally in
// canonical form; some are not (Caddy writes `Sec-WebSocket-Accept` as the
// RFC spells it), so a miss is retried in canonical form.
func (rf *responseFilter) allowed(name string, status int) bool {
	if _, ok := rf.allow[name]; ok {
		return true
	}
	canonical := http.CanonicalHeaderKey(name)
	if canonical != name {
		if _, ok := rf.allow[canonical]; ok {
			return true
		}
	}
	return status == http.StatusSwitchingProtocols && rf.upgrade && isUpgradeResponseHeader(canonical)
}

// filterTrailers removes trailers the upstream sent without declaring them
// (Go's http.TrailerPrefix convention) unless their names are allowed:
// trailers are headers too.
func (rf *responseFilter) filterTrailers() {
	hdr := rf.ResponseWriter.Header()
	if len(hdr) == rf.headersAtWrite {
		return // nothing was added after the status: no trailers
	}
	for name := range hdr {
		if len(name) > len(http.TrailerPrefix) && strings.HasPrefix(name, http.TrailerPrefix) &&
			!rf.allowed(name[len(http.TrailerPrefix):], 0) {
			delete(hdr, name)
		}
	}
}

func isUpgradeResponseHeader(name string) bool {
	for _, n := range upgradeResponseHeaders {
		if n == name {
			return true
		}
	}
	return false
}

// WriteHeader filters the headers, then writes the status.
func (rf *responseFilter) WriteHeader(status int) {
	if rf.wroteHeader {
		return
	}
	rf.filter(status)
	// 1xx responses aren't final; just informational
	if status < 100 || status > 199 || status == http.StatusSwitchingProtocols {
		rf.wroteHeader = true
		rf.headersAtWrite = len(rf.ResponseWriter.Header())
	}
	rf.ResponseWriter.WriteHeader(status)
}

// Write writes the body, with an implicit 200 first if needed.
func (rf *responseFilter) Write(p []byte) (int, error) {
	if !rf.wroteHeader {
		rf.WriteHeader(http.StatusOK)
	}
	return rf.ResponseWriter.Write(p)
}

// ReadFrom makes sure the headers are filtered before the underlying writer's
// ReadFrom (which would write them itself) copies the body.
func (rf *responseFilter) ReadFrom(r io.Reader) (int64, error) {
	if !rf.wroteHeader {
		rf.WriteHeader(http.StatusOK)
	}
	return rf.ResponseWriterWrapper.ReadFrom(r)
}

// Interface guards
var (
	_ http.ResponseWriter = (*responseFilter)(nil)
	_ io.ReaderFrom       = (*responseFilter)(nil)
)
