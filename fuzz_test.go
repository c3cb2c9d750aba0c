package backstageproxy

// Fuzz targets for the parts of the proxy that see hostile input: the config
// adapter (config authors), the path guard and the upstream rewrite (request
// paths), and the header filters (request and response headers). Seed corpora
// are committed under testdata/fuzz/<Name>/; `go test` runs them as ordinary
// tests, and `go test -run '^$' -fuzz '^FuzzX$' -fuzztime 2m .` explores.

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/urlpath"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// FuzzAdapt runs the `backstage` adapter on arbitrary input. Properties: it
// never panics and returns within a bound; it is deterministic; on success
// the output is valid JSON whose `backstage_proxy` handlers pass the checks
// Caddy runs when it loads them (Validate, and the rewrite's provisioning), so
// that a config the adapter accepts is one Caddy accepts.
func FuzzAdapt(f *testing.F) {
	// No extra config files: only the input is read.
	f.Setenv("CADDY_BACKSTAGE_CONFIG_FILES", "")
	adapter := caddyconfig.GetAdapter("backstage")
	if adapter == nil {
		f.Fatal("no backstage adapter")
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if fzMayReadFiles(body) {
			t.Skip("may name $file or $include: the fuzzer must not read arbitrary host files")
		}
		type result struct {
			out []byte
			err error
		}
		run := func() result {
			done := make(chan result, 1)
			go func() {
				out, _, err := adapter.Adapt(body, nil)
				done <- result{out, err}
			}()
			select {
			case r := <-done:
				return r
			case <-time.After(10 * time.Second):
				t.Fatalf("Adapt did not return within 10 s on %d bytes", len(body))
			}
			return result{}
		}
		r1, r2 := run(), run()
		if (r1.err == nil) != (r2.err == nil) || (r1.err != nil && r1.err.Error() != r2.err.Error()) || !bytes.Equal(r1.out, r2.out) {
			t.Fatalf("Adapt is not deterministic:\n%v %.200s\n%v %.200s", r1.err, r1.out, r2.err, r2.out)
		}
		if r1.err != nil {
			if r1.err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		var doc any
		if err := json.Unmarshal(r1.out, &doc); err != nil {
			t.Fatalf("Adapt returned invalid JSON: %v", err)
		}
		fzWalkHandlers(doc, func(raw map[string]any) {
			b, _ := json.Marshal(raw)
			var h Handler
			if err := json.Unmarshal(b, &h); err != nil {
				t.Fatalf("backstage_proxy handler does not decode: %v\n%s", err, b)
			}
			if h.Credentials == "" {
				h.Credentials = CredentialsRequire
			}
			if h.MountPath == "" {
				h.MountPath = DefaultMountPath
			}
			if err := h.Validate(); err != nil {
				t.Fatalf("the adapter accepted a handler Caddy refuses: %v\n%s", err, b)
			}
			if h.Rewrite != nil {
				if err := h.Rewrite.provision(); err != nil {
					t.Fatalf("the adapter accepted a rewrite Caddy refuses: %v\n%s", err, b)
				}
			}
		})
	})
}

// fzMayReadFiles reports whether a YAML input could make the adapter read a
// host file: the $file or $include directives, or HPM's `ca` option (a PEM
// file path), literally or through double-quoted escapes.
func fzMayReadFiles(body []byte) bool {
	lower := bytes.ToLower(body)
	for _, s := range []string{"file", "include", "/dev", "/proc", "/sys"} {
		if bytes.Contains(lower, []byte(s)) {
			return true
		}
	}
	if fzCAKey.Match(body) {
		return true
	}
	return bytes.Contains(body, []byte(`"`)) &&
		(bytes.Contains(body, []byte(`\x`)) || bytes.Contains(body, []byte(`\u`)) || bytes.Contains(body, []byte(`\U`)))
}

var fzCAKey = regexp.MustCompile(`(?i)(^|[^a-z0-9_])ca['"]?\s*:`)

// fzWalkHandlers calls fn for every JSON object with "handler":"backstage_proxy".
func fzWalkHandlers(v any, fn func(map[string]any)) {
	switch v := v.(type) {
	case map[string]any:
		if v["handler"] == "backstage_proxy" {
			fn(v)
		}
		for _, c := range v {
			fzWalkHandlers(c, fn)
		}
	case []any:
		for _, c := range v {
			fzWalkHandlers(c, fn)
		}
	}
}

// FuzzPathGuard checks the path-traversal guard against an independent
// oracle: when pathIsSafe accepts an escaped path, no `/`- or `\`-separated
// segment of it, as given or decoded up to three times (leniently: valid
// escapes decoded, invalid ones kept, as many upstreams do) and with `;`
// parameters removed, is `..`; and its first decoding has no control byte.
func FuzzPathGuard(f *testing.F) {
	f.Fuzz(func(t *testing.T, p string) {
		if u := (&url.URL{Path: p}); urlpath.Escaped(u) != u.EscapedPath() {
			t.Fatalf("escapedPathOf(Path %q) = %q, EscapedPath %q", p, urlpath.Escaped(u), u.EscapedPath())
		}
		if !urlpath.IsSafe(p) {
			return
		}
		if secTraversal(p) {
			t.Fatalf("pathIsSafe(%q) = true, but it has a .. segment once decoded", p)
		}
		for _, c := range []byte(secLenientUnescape(p)) {
			if c < 0x20 || c == 0x7f {
				t.Fatalf("pathIsSafe(%q) = true, but it decodes to a control byte %#x", p, c)
			}
		}
	})
}

// FuzzUpstreamRewrite builds an UpstreamRewrite from arbitrary parts and
// applies it to an arbitrary request path. Properties: apply never panics;
// the upstream path starts with `/`, never contains `//` and starts with the
// target path (unless prependPath is off); the target's query comes first.
func FuzzUpstreamRewrite(f *testing.F) {
	f.Fuzz(func(t *testing.T, strip, targetPath, targetQuery, find, replace, escapedPath, rawQuery string, flags uint8) {
		u := &UpstreamRewrite{
			StripPrefix:   strip,
			TargetPath:    targetPath,
			TargetQuery:   targetQuery,
			IgnorePath:    flags&2 != 0,
			NoPrependPath: flags&4 != 0,
		}
		if flags&1 != 0 {
			u.PathRewrite = []PathRewriteRule{}
			if flags&8 != 0 {
				u.PathRewrite = []PathRewriteRule{{Find: find, Replace: replace}}
			}
		}
		if err := u.provision(); err != nil {
			return // Caddy refuses such a handler
		}
		hasQuery := flags&16 != 0 || rawQuery != ""
		path, query := u.apply(escapedPath, rawQuery, hasQuery)
		if !strings.HasPrefix(path, "/") {
			t.Fatalf("path %q does not start with /", path)
		}
		if strings.Contains(path, "//") {
			t.Fatalf("path %q contains //", path)
		}
		if !u.NoPrependPath {
			target := fzCollapse(u.TargetPath)
			if target != "/" && path != target && !strings.HasPrefix(path, strings.TrimSuffix(target, "/")+"/") {
				t.Fatalf("path %q is not under the target path %q", path, u.TargetPath)
			}
		}
		if u.TargetQuery != "" && !strings.HasPrefix(query, u.TargetQuery) {
			t.Fatalf("query %q does not start with the target's %q", query, u.TargetQuery)
		}
	})
}

// fzCollapse collapses runs of `/` and makes sure of a leading one.
func fzCollapse(p string) string {
	for strings.Contains(p, "//") {
		p = strings.ReplaceAll(p, "//", "/")
	}
	if !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	return p
}

// FuzzRequestFilter checks the header allowlists of a handler built from
// arbitrary allowedHeaders, configured headers, credentials policy and ws
// flag, against an independent oracle (Backstage's filters in
// plugins/proxy-backend/src/service/router.ts; README Differences D1, D5,
// D11): a header reaches the upstream only if it is SAFE,
// configured, allowed, Authorization on a forward route, or a WebSocket
// header on a ws route (Upgrade only as a single "websocket", never
// Http2-Settings unless allowed on a ws route); every such header does reach
// it, values unchanged. In the response direction, only SAFE, allowed,
// Content-Encoding and, on a 101 of a ws route, the upgrade headers pass,
// plus what the server set before the proxy ran.
func FuzzRequestFilter(f *testing.F) {
	f.Fuzz(func(t *testing.T, allowed, configured, headers string, flags uint8, status uint16) {
		credentials := []string{CredentialsRequire, CredentialsForward, CredentialsDangerouslyAllowUnauthenticated}[int(flags&3)%3]
		upgrade := flags&4 != 0
		h := &Handler{
			Credentials:     credentials,
			MountPath:       DefaultMountPath,
			AllowedHeaders:  fzList(allowed),
			UpstreamHeaders: fzList(configured),
			AllowUpgrade:    upgrade,
		}
		if err := h.Validate(); err != nil {
			return // Caddy refuses such a handler
		}
		h.setAllowlists()

		in := http.Header{}
		for _, line := range strings.Split(headers, "\n") {
			name, value, ok := strings.Cut(line, ":")
			if !ok || !headerNameRE.MatchString(name) {
				continue // Go's server refuses invalid names
			}
			// as Go's server stores them
			in[textproto.CanonicalMIMEHeaderKey(name)] = append(in[textproto.CanonicalMIMEHeaderKey(name)], strings.TrimSpace(value))
		}

		inList := func(name string, lists ...[]string) bool {
			for _, l := range lists {
				for _, n := range l {
					if strings.EqualFold(n, name) {
						return true
					}
				}
			}
			return false
		}
		wsRequest := []string{"Connection", "Upgrade", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions"}
		reqAllowed := func(name string, values []string) bool {
			switch {
			case strings.EqualFold(name, "Upgrade"):
				return upgrade && len(values) == 1 && strings.EqualFold(values[0], "websocket")
			case strings.EqualFold(name, "Http2-Settings"):
				return upgrade && inList(name, h.AllowedHeaders)
			}
			return inList(name, fzSafe, h.AllowedHeaders, h.UpstreamHeaders) ||
				(credentials == CredentialsForward && strings.EqualFold(name, "Authorization")) ||
				(upgrade && inList(name, wsRequest))
		}
		out := h.filterRequestHeaders(in)
		for name, values := range out {
			if !reqAllowed(name, values) {
				t.Fatalf("request header %s: %q passed (allowed %q, configured %q, %s, ws %v)", name, values, h.AllowedHeaders, h.UpstreamHeaders, credentials, upgrade)
			}
			if strings.Join(values, "\x00") != strings.Join(in[name], "\x00") {
				t.Fatalf("request header %s changed: %q → %q", name, in[name], values)
			}
		}
		for name, values := range in {
			if _, ok := out[name]; !ok && reqAllowed(name, values) {
				t.Fatalf("allowed request header %s: %q was dropped", name, values)
			}
		}

		// Response direction.
		code := []int{101, 103, 200, 204, 302, 404, 502}[int(status)%7]
		rec := httptest.NewRecorder()
		rec.Header().Set("X-Server-Own", "kept") // set by a handler before the proxy
		rf := newResponseFilter(rec, h.respAllow, h.AllowUpgrade)
		for name, values := range in {
			rf.Header()[name] = values
		}
		rf.WriteHeader(code)
		if code == 103 {
			rf.WriteHeader(200)
		}
		wsResponse := []string{"Connection", "Upgrade", "Sec-WebSocket-Accept", "Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions"}
		for name := range rec.Result().Header {
			ok := name == "X-Server-Own" || inList(name, fzSafe, h.AllowedHeaders) || name == "Content-Encoding" ||
				(code == 101 && upgrade && inList(name, wsResponse))
			if !ok {
				t.Fatalf("response header %s passed with status %d (allowed %q, ws %v)", name, code, h.AllowedHeaders, upgrade)
			}
		}
		if rec.Result().Header.Get("X-Server-Own") != "kept" {
			t.Fatalf("the server's own response header was lost")
		}
	})
}

// fzSafe is Backstage's safeForwardHeaders (router.ts), written out
// independently of headers.go.
var fzSafe = []string{"cache-control", "content-language", "content-length", "content-type", "expires",
	"last-modified", "pragma", "host", "accept", "accept-language", "user-agent"}

// fzList splits a comma-separated list, dropping empty items.
func fzList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item != "" {
			out = append(out, item)
		}
	}
	return out
}
