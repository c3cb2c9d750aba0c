package backstageproxy

import (
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// safeHeaders are the headers Backstage always forwards, in both directions
// (plugins/proxy-backend/src/service/router.ts, safeForwardHeaders).
// Canonical form.
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

// setAllowlists computes the handler's allowlists from its configuration.
func (h *Handler) setAllowlists() {
	h.reqAllow, h.respAllow = buildAllowlists(h.Credentials, h.AllowedHeaders, h.UpstreamHeaders, h.AllowUpgrade)
	h.reqAllowNames = slices.Sorted(maps.Keys(h.reqAllow))
	h.respAllowNames = slices.Sorted(maps.Keys(h.respAllow))
}

// filterRequestHeaders returns a new header map with only the allowed request
// headers. The values are shared with the original map, which is left intact
// for access logs; nobody downstream mutates value slices in place
// (reverse_proxy copies them into its own map).
func (h *Handler) filterRequestHeaders(in http.Header) http.Header {
	// No size hint: up to 8 entries fit the map's first group, one
	// allocation, and requests rarely keep more.
	out := make(http.Header)
	// Both sides use canonical names (Go's servers canonicalise request
	// header names, and the allowlist is canonical), so looking each allowed
	// name up is the same as testing each request header; it is cheaper than
	// iterating a map when the allowlist is not much longer than the request.
	if len(h.reqAllowNames) <= 2*len(in) {
		for _, name := range h.reqAllowNames {
			if values, ok := in[name]; ok {
				out[name] = values
			}
		}
	} else {
		for name, values := range in {
			if _, ok := h.reqAllow[name]; ok {
				out[name] = values
			}
		}
	}
	if h.upstreamAuthorization != "" {
		h.setUpstreamAuthorization(in, out)
	}
	if h.AllowUpgrade {
		// Divergence D11: never forward an h2c (or other non-WebSocket) upgrade.
		if up, ok := out["Upgrade"]; ok && (len(up) != 1 || !strings.EqualFold(up[0], "websocket")) {
			delete(out, "Upgrade")
		}
	}
	return out
}

// responseFilter passes back only allowed response headers. Handlers after
// this one (reverse_proxy) write their headers into a staged map, a copy of
// what was there before; when the status is written the filter copies the
// allowed ones to the real map, by looking each allowed name up: no iteration
// over, and no deletion from, everything the upstream sent. 1xx responses are
// informational and not final, and a 101 keeps its upgrade headers on upgrade
// endpoints. Headers set by handlers that ran before this one are kept: they
// are the server's own, not the upstream's; those the later handlers deleted
// (reverse_proxy deletes `Server`) are deleted.
type responseFilter struct {
	caddyhttp.ResponseWriterWrapper
	allow      map[string]struct{}
	allowNames []string
	upgrade    bool
	// staged is what Header returns until the final status is written.
	staged      http.Header
	wroteHeader bool
	status      int // the final status, once written
	// headersAtWrite is how many headers were left after filtering; more
	// later means trailers were added.
	headersAtWrite int
}

func newResponseFilter(w http.ResponseWriter, allow map[string]struct{}, upgrade bool) *responseFilter {
	rf := new(responseFilter)
	rf.init(w, allow, slices.Sorted(maps.Keys(allow)), upgrade, make(http.Header))
	return rf
}

// init sets the filter up in front of w; staged must be an empty map, which
// the filter uses until the final status is written.
func (rf *responseFilter) init(w http.ResponseWriter, allow map[string]struct{}, allowNames []string, upgrade bool, staged http.Header) {
	rf.ResponseWriterWrapper.ResponseWriter = w
	rf.allow = allow
	rf.allowNames = allowNames
	rf.upgrade = upgrade
	rf.staged = staged
	for k, v := range w.Header() {
		staged[k] = v
	}
}

// Header returns the staged map until the final status is written, then the
// real one (trailers are written there).
func (rf *responseFilter) Header() http.Header {
	if rf.wroteHeader {
		return rf.ResponseWriter.Header()
	}
	return rf.staged
}

// filter copies the allowed staged headers to the final map.
func (rf *responseFilter) filter(status int) {
	final := rf.ResponseWriter.Header()
	staged := rf.staged
	// What handlers before this one set, and the later ones deleted.
	for name := range final {
		if _, ok := staged[name]; !ok {
			delete(final, name)
		}
	}
	if status == http.StatusSwitchingProtocols && rf.upgrade {
		// The handshake headers, whatever their spelling (Caddy writes
		// Sec-WebSocket-Accept as RFC 6455 does): test every name.
		for name, values := range staged {
			if rf.allowed(name, status) {
				rf.copyAllowed(final, name, values)
			}
		}
		return
	}
	for _, name := range rf.allowNames {
		if values, ok := staged[name]; ok {
			rf.copyAllowed(final, name, values)
		}
	}
}

// copyAllowed sets an allowed header: the upstream's value replaces what a
// handler before this one set (reverse_proxy appends to it; Node's setHeader
// replaces).
func (rf *responseFilter) copyAllowed(final http.Header, name string, values []string) {
	if pre, had := final[name]; had && len(values) > len(pre) && slices.Equal(values[:len(pre)], pre) {
		values = values[len(pre):]
	}
	final[name] = values
}

// allowed reports whether a response header may pass. Names are normally in
// canonical form; some are not (Caddy writes `Sec-WebSocket-Accept` as the
// RFC spells it), so a miss is retried in canonical form.
func (rf *responseFilter) allowed(name string, status int) bool {
	if _, ok := rf.allow[name]; ok {
		return true
	}
	canonical := name
	// Go's client canonicalises the names it reads, so most misses are
	// canonical already and need no second lookup.
	if !isCanonicalHeaderName(name) {
		canonical = http.CanonicalHeaderKey(name)
		if _, ok := rf.allow[canonical]; ok {
			return true
		}
	}
	return status == http.StatusSwitchingProtocols && rf.upgrade && slices.Contains(upgradeResponseHeaders, canonical)
}

// isCanonicalHeaderName reports whether name is unchanged by
// http.CanonicalHeaderKey, for names of ASCII letters, digits and token
// punctuation; any other byte answers false, leaving the decision to
// CanonicalHeaderKey itself.
func isCanonicalHeaderName(name string) bool {
	upper := true
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z':
			if upper {
				return false
			}
		case 'A' <= c && c <= 'Z':
			if !upper {
				return false
			}
		case c == ' ' || c >= 0x7f || c < 0x21:
			return false
		}
		upper = c == '-'
	}
	return true
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

// WriteHeader filters the headers, then writes the status.
func (rf *responseFilter) WriteHeader(status int) {
	if rf.wroteHeader {
		return
	}
	if status >= 100 && status <= 199 && status != http.StatusSwitchingProtocols {
		// 1xx responses aren't final, just informational: send the allowed
		// headers with this one, then put the final map back as it was.
		final := rf.ResponseWriter.Header()
		saved := maps.Clone(final)
		rf.filter(status)
		rf.ResponseWriter.WriteHeader(status)
		clear(final)
		maps.Copy(final, saved)
		return
	}
	rf.filter(status)
	rf.wroteHeader = true
	rf.status = status
	rf.headersAtWrite = len(rf.ResponseWriter.Header())
	rf.ResponseWriter.WriteHeader(status)
}

// Flush writes the status (200 if none yet) through the filter before
// flushing, so that a flush can never send unfiltered headers.
func (rf *responseFilter) Flush() {
	_ = rf.FlushError()
}

// FlushError is Flush for http.ResponseController.
func (rf *responseFilter) FlushError() error {
	if !rf.wroteHeader {
		rf.WriteHeader(http.StatusOK)
	}
	return http.NewResponseController(rf.ResponseWriter).Flush()
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
	_ http.Flusher        = (*responseFilter)(nil)
	_ io.ReaderFrom       = (*responseFilter)(nil)
)
