package backstageproxy

import (
	"fmt"
	"net/http"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/urlpath"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(MatchRoutePath{})
}

// MatchRoutePath matches requests whose path, as received (percent-encoding
// kept, nothing cleaned), equals one of the given paths or continues it after
// a `/`, ignoring ASCII case. This is how Express matches Backstage's proxy
// routes, and it is what every endpoint route uses.
//
// Caddy's `path` matcher lowercases and cleans the path again for every
// pattern of every route, which made routing cost grow steeply with the
// number of endpoints; this matcher compares a prefix in place and allocates
// nothing. A path that only reaches a route once cleaned (`/a/../b`, `//b`) is
// not under it as received: it falls through to the later routes and the
// credentials barrier, and the `backstage_proxy` handler's traversal guard
// refuses any `..` that does reach an endpoint.
//
// JSON: `"backstage_route": {"paths": ["/api/proxy/catalog"]}`.
type MatchRoutePath struct {
	// Paths are literal request-path prefixes, in their percent-encoded form
	// as sent on the wire. No wildcard or placeholder is expanded: `*`, `{`
	// and `%` are ordinary characters.
	Paths []string `json:"paths,omitempty"`

	// escaped[i] is true when Paths[i] has a character that Go writes
	// percent-encoded, so that the request path must be compared in its
	// escaped form rather than as Go decoded it.
	escaped []bool
}

// CaddyModule returns the Caddy module information.
func (MatchRoutePath) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.matchers.backstage_route",
		New: func() caddy.Module { return new(MatchRoutePath) },
	}
}

// Provision classifies the paths once, so that matching does no scanning of
// its own configuration.
func (m *MatchRoutePath) Provision(caddy.Context) error {
	m.escaped = make([]bool, len(m.Paths))
	for i, p := range m.Paths {
		m.escaped[i] = !isPlainPath(p)
	}
	return nil
}

// Validate refuses paths that could never match a request path.
func (m *MatchRoutePath) Validate() error {
	for _, p := range m.Paths {
		if p == "" || p[0] != '/' {
			return errInvalidRoutePath(p)
		}
	}
	return nil
}

func errInvalidRoutePath(p string) error {
	return fmt.Errorf("backstage_route: path %q must start with /", p)
}

// Match returns true if the request path is under one of the paths.
func (m MatchRoutePath) Match(r *http.Request) bool {
	// When Go's decoded Path and the received form differ, RawPath holds the
	// received form; otherwise Path is it, up to the characters isPlainPath
	// excludes, which are compared against the escaped form instead.
	view := r.URL.RawPath
	if view == "" {
		view = r.URL.Path
	}
	var escaped string
	for i, prefix := range m.Paths {
		p := view
		if i < len(m.escaped) && m.escaped[i] {
			if escaped == "" {
				escaped = urlpath.Escaped(r.URL)
			}
			p = escaped
		}
		if urlpath.HasSegmentPrefixFold(p, prefix) {
			return true
		}
	}
	return false
}

// MatchWithError returns true if the request path is under one of the paths.
func (m MatchRoutePath) MatchWithError(r *http.Request) (bool, error) {
	return m.Match(r), nil
}

// UnmarshalCaddyfile sets up the matcher from Caddyfile tokens:
//
//	backstage_route <paths...>
func (m *MatchRoutePath) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	for d.Next() {
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.ArgErr()
		}
		m.Paths = append(m.Paths, args...)
		if d.NextBlock(0) {
			return d.Err("malformed backstage_route matcher: blocks are not supported")
		}
	}
	return nil
}

// isPlainPath reports whether p has only characters that Go's URL parser
// keeps as they are in a path (RFC 3986 unreserved, `/` and the sub-delims Go
// does not escape), so that the decoded and the received forms agree on it.
func isPlainPath(p string) bool {
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '-', c == '_', c == '.', c == '~', c == '/',
			c == '$', c == '&', c == '+', c == ',', c == ':', c == ';', c == '=', c == '@':
		default:
			return false
		}
	}
	return true
}

// Interface guards
var (
	_ caddy.Provisioner                 = (*MatchRoutePath)(nil)
	_ caddy.Validator                   = (*MatchRoutePath)(nil)
	_ caddyhttp.RequestMatcherWithError = (*MatchRoutePath)(nil)
	_ caddyfile.Unmarshaler             = (*MatchRoutePath)(nil)
)
