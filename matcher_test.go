package backstageproxy

import (
	"bufio"
	"net/http"
	"strings"
	"testing"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/urlpath"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// readRequest parses a raw request line as Go's server does, so that
// Path/RawPath are what a real request would have.
func readRequest(t *testing.T, target string) *http.Request {
	t.Helper()
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader("GET " + target + " HTTP/1.1\r\nHost: x\r\n\r\n")))
	if err != nil {
		t.Fatalf("%q: %v", target, err)
	}
	return r
}

func TestMatchRoutePath(t *testing.T) {
	cases := []struct {
		paths  []string
		target string
		want   bool
	}{
		{[]string{"/api/proxy/open"}, "/api/proxy/open", true},
		{[]string{"/api/proxy/open"}, "/api/proxy/open/", true},
		{[]string{"/api/proxy/open"}, "/api/proxy/open/a/b?x=1", true},
		{[]string{"/api/proxy/open"}, "/api/proxy/open?x=1", true},
		{[]string{"/api/proxy/open"}, "/API/Proxy/OPEN/a", true},
		{[]string{"/api/proxy/open"}, "http://h/api/proxy/open/a", true},
		{[]string{"/api/proxy/open"}, "/api/proxy/opener", false},
		{[]string{"/api/proxy/open"}, "/api/proxy/ope", false},
		{[]string{"/api/proxy/open"}, "/api/proxy", false},
		// as received: nothing is cleaned or decoded
		{[]string{"/api/proxy/open"}, "/api/proxy//open/a", false},
		{[]string{"/api/proxy/open"}, "//api/proxy/open/a", false},
		{[]string{"/api/proxy/open"}, "/api/proxy/./open/a", false},
		{[]string{"/api/proxy/open"}, "/api/proxy/x/../open/a", false},
		{[]string{"/api/proxy/open"}, "/api/proxy/op%65n/a", false},
		{[]string{"/api/proxy/open"}, "/api/proxy/open%2Fa", false},
		{[]string{"/api/proxy/open"}, "/api/proxy/open/../secret", true},
		{[]string{"/api/proxy/x"}, "/api/proxy/x%2Fy", false},
		// keys with characters Go escapes are compared in escaped form
		{[]string{"/api/proxy/a%20b"}, "/api/proxy/a%20b/c", true},
		{[]string{"/api/proxy/a%20b"}, "/api/proxy/A%20B/c", true},
		{[]string{"/api/proxy/a%20b"}, "/api/proxy/a+b/c", false},
		{[]string{"/api/proxy/a b"}, "/api/proxy/a%20b/c", false},
		{[]string{"/api/proxy/caf%C3%A9"}, "/api/proxy/caf%c3%a9/x", true},
		{[]string{"/api/proxy/café"}, "/api/proxy/caf%C3%A9/x", false},
		// D9: no wildcards or placeholders
		{[]string{"/api/proxy/a*"}, "/api/proxy/ab", false},
		{[]string{"/api/proxy/a*"}, "/api/proxy/a*/x", true},
		{[]string{"/api/proxy/{x}"}, "/api/proxy/y", false},
		// Go does not keep a raw `{` as received (it is not valid in a
		// path), its escaped form is %7B: as in the handler's check
		{[]string{"/api/proxy/{x}"}, "/api/proxy/{x}/y", false},
		{[]string{"/api/proxy/%7Bx%7D"}, "/api/proxy/{x}/y", true},
		{[]string{"/api/proxy/:id"}, "/api/proxy/1", false},
		{[]string{"/api/proxy/:id"}, "/api/proxy/:id", true},
		// sub-delimiters Go keeps as they are
		{[]string{"/api/proxy/a;b=c"}, "/api/proxy/a;b=c/x", true},
		{[]string{"/api/proxy/a@b"}, "/api/proxy/a@b", true},
		// a raw form that differs from Go's default escaping (RawPath set)
		{[]string{"/api/proxy/open"}, "/api/proxy/open/%41", true},
		{[]string{"/api/proxy/a%41"}, "/api/proxy/a%41", true},
		{[]string{"/api/proxy/a%41"}, "/api/proxy/aA", false},
		// several paths: any
		{[]string{"/api/proxy/a", "/api/proxy/b"}, "/api/proxy/b/x", true},
		{[]string{"/api/proxy/a", "/api/proxy/b"}, "/api/proxy/c/x", false},
		// the mount itself
		{[]string{"/api/proxy"}, "/api/proxy", true},
		{[]string{"/api/proxy"}, "/api/proxy/../x", true},
		{[]string{"/api/proxy"}, "/api/proxyx", false},
		{[]string{"/"}, "/anything", true},
		{[]string{"/api/proxy/open"}, "*", false},
	}
	for _, c := range cases {
		m := MatchRoutePath{Paths: c.paths}
		if err := m.Provision(caddy.Context{}); err != nil {
			t.Fatal(err)
		}
		if err := m.Validate(); err != nil {
			t.Fatal(err)
		}
		r := readRequest(t, c.target)
		got, err := m.MatchWithError(r)
		if err != nil || got != c.want {
			t.Errorf("%v on %q (Path %q, RawPath %q) = %v, %v; want %v", c.paths, c.target, r.URL.Path, r.URL.RawPath, got, err, c.want)
		}
	}
}

// TestMatchRoutePathAgreesWithHandler: whatever the matcher sends to an
// endpoint passes the handler's own as-received prefix check, and whatever it
// refuses would fail it, so the two never disagree.
func TestMatchRoutePathAgreesWithHandler(t *testing.T) {
	prefixes := []string{"/api/proxy/open", "/api/proxy/a%20b", "/api/proxy/a*", "/api/proxy/a;b"}
	targets := []string{
		"/api/proxy/open/x", "/api/proxy/OPEN", "/api/proxy/op%65n", "/api/proxy//open", "/api/proxy/open%2f",
		"/api/proxy/a%20b", "/api/proxy/a%20B/x", "/api/proxy/a*/x", "/api/proxy/a%2A/x", "/api/proxy/a;b/c",
		"/api/proxy/a%3Bb", "/api/proxy/open/%7e", "/api/proxy/open/é",
	}
	for _, prefix := range prefixes {
		m := MatchRoutePath{Paths: []string{prefix}}
		_ = m.Provision(caddy.Context{})
		for _, target := range targets {
			r := readRequest(t, target)
			if got, want := m.Match(r), urlpath.HasSegmentPrefixFold(r.URL.EscapedPath(), prefix); got != want {
				t.Errorf("%s on %q: matcher %v, handler check %v", prefix, target, got, want)
			}
		}
	}
}

func TestMatchRoutePathConfig(t *testing.T) {
	var m MatchRoutePath
	d := caddyfile.NewTestDispenser("backstage_route /api/proxy/a /api/proxy/b")
	if err := m.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if strings.Join(m.Paths, " ") != "/api/proxy/a /api/proxy/b" {
		t.Errorf("paths = %v", m.Paths)
	}
	for _, bad := range []string{"backstage_route", "backstage_route /a {\n x\n}"} {
		var m MatchRoutePath
		if err := m.UnmarshalCaddyfile(caddyfile.NewTestDispenser(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	for _, bad := range []string{"", "api/proxy"} {
		m := MatchRoutePath{Paths: []string{bad}}
		if err := m.Validate(); err == nil {
			t.Errorf("path %q: no error", bad)
		}
	}
}
