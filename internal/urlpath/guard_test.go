package urlpath

import (
	"net/http/httptest"
	"net/url"
	"testing"
)

func TestPathIsSafe(t *testing.T) {
	cases := []struct {
		path string
		safe bool
		why  string
	}{
		// Backstage's guard (plugins/proxy-backend/src/service/router.ts)
		{"/a/../b", false, "a .. segment"},
		{"/..", false, ".. alone"},
		{"..", false, ".. without a slash"},
		{"/a/..", false, "trailing .."},
		{"/../a", false, "leading .."},
		{"/a/%2e%2e/b", false, "%2e%2e"},
		{"/a/%2E%2E/b", false, "%2E%2E"},
		{"/a/.%2e/b", false, ".%2e"},
		{"/a/%2e./b", false, "%2e."},
		{"/a/..%2fb", false, "..%2f"},
		{"/a/..%2Fb", false, "..%2F"},
		{"/a/b%2f..%2fc", false, "%2f..%2f"},
		{"/a/..%5cb", false, "..%5c"},
		{"/a/..%5Cb", false, "..%5C"},
		{`/a/..\b`, false, `raw ..\`},
		{`/a\..`, false, `raw \..`},
		{"/a%zz", false, "malformed escape"},
		{"/a%", false, "truncated escape"},
		{"/a%2", false, "truncated escape"},
		{"/a%g0", false, "non-hex escape"},
		// D10: `;` parameters, double encoding, control bytes, overlong UTF-8
		{"/a/..;/b", false, "..;"},
		{"/a/..;/..;/x", false, "..;/..;"},
		{"/a/..;jsessionid=1/b", false, "..;param"},
		{"/a/..;", false, "trailing ..;"},
		{"/a/%2e%2e;/b", false, "%2e%2e;"},
		{"/a/%2e%2e%3b/b", false, "%2e%2e%3b"},
		{"/a/..%3bx/b", false, "..%3b"},
		{"/a/%252e%252e/b", false, "%252e%252e"},
		{"/a/%252E%252E/b", false, "%252E%252E"},
		{"/a/..%252fb", false, "..%252f"},
		{"/a/..%255cb", false, "..%255c"},
		{"/a/%25252e%25252e/b", false, "triple encoding"},
		{"/a/..%5c", false, "..%5c at the end"},
		{"/a/%00", false, "%00"},
		{"/a/%00b", false, "%00 inside a segment"},
		{"/a/%2500", false, "double-encoded %00"},
		{"/a/%0a", false, "%0a"},
		{"/a/%0d%0aX:%201", false, "CRLF"},
		{"/a/%1f", false, "%1f"},
		{"/a/%7f", false, "%7f"},
		{"/a/\x00", false, "raw NUL"},
		{"/a/\t", false, "raw tab"},
		{"/a/\x7f", false, "raw DEL"},
		{"/a/%c0%ae%c0%ae/b", false, "overlong UTF-8 dots"},
		{"/a/%c0%af", false, "overlong UTF-8 slash"},
		{"/a/%e0%80%ae", false, "3-byte overlong dot"},
		{"/a/%ff", false, "invalid UTF-8"},
		{"/a/%ed%a0%80", false, "UTF-16 surrogate"},

		// allowed, as in Backstage
		{"", true, "empty"},
		{"/", true, "root"},
		{"/a/b", true, "plain"},
		{"/a/.../b", true, "... segment"},
		{"/a/..x/y..", true, "..x and y.."},
		{"/a/./b", true, ". segment"},
		{"/a/.", true, "trailing ."},
		{"/a/.;/b", true, ".; is ."},
		{"/a/;../b", true, "params before .. leave an empty segment"},
		{"/a/%2e/b", true, "%2e is ."},
		{"/a/%2e%2e%2e/b", true, "%2e%2e%2e is ..."},
		{"/a%20b/c%2Fd", true, "encoded space and slash"},
		{"/a/%25", true, "encoded %"},
		{"/a/%2525", true, "double-encoded %"},
		{"/a/%25zz", true, "a literal % after decoding is not malformed"},
		{"/caf%C3%A9", true, "valid UTF-8"},
		{"/a;b=c/d", true, "path parameters"},
		{"/a/.../..../b", true, "dots that are not .."},
	}
	for _, c := range cases {
		if got := IsSafe(c.path); got != c.safe {
			t.Errorf("pathIsSafe(%q) = %v, want %v (%s)", c.path, got, c.safe, c.why)
		}
	}
}

// The guard only ever sees the escaped path: `..` in the query is allowed.
func TestPathIsSafeIgnoresQuery(t *testing.T) {
	for _, target := range []string{
		"/api/proxy/open/a?x=../..",
		"/api/proxy/open/a?x=%2e%2e%2f%2e%2e",
		"/api/proxy/open/a?x=..;/..%5c",
		"/api/proxy/open/a/.../b?x=..",
	} {
		r := httptest.NewRequest("GET", target, nil)
		if !IsSafe(r.URL.EscapedPath()) {
			t.Errorf("%s: refused, but only the query has ..", target)
		}
	}
}

func TestSetEscapedPath(t *testing.T) {
	cases := []struct {
		escaped, path, rawPath, requestURI string
	}{
		{"/a/b", "/a/b", "/a/b", "/a/b"},
		{"/a%2Fb", "/a/b", "/a%2Fb", "/a%2Fb"},
		{"/a%20b/c%2fd", "/a b/c/d", "/a%20b/c%2fd", "/a%20b/c%2fd"},
		{"/caf%C3%A9", "/café", "/caf%C3%A9", "/caf%C3%A9"},
		{"/a%zz", "/a%zz", "", "/a%25zz"}, // not decodable: kept as a literal path
	}
	for _, c := range cases {
		var u url.URL
		SetEscaped(&u, c.escaped)
		if u.Path != c.path || u.RawPath != c.rawPath {
			t.Errorf("setEscapedPath(%q): Path %q RawPath %q, want %q %q", c.escaped, u.Path, u.RawPath, c.path, c.rawPath)
		}
		if got := u.RequestURI(); got != c.requestURI {
			t.Errorf("setEscapedPath(%q): RequestURI %q, want %q", c.escaped, got, c.requestURI)
		}
	}
}

// TestEscapedPathOf: the fast path agrees with net/url for every byte, in
// paths Go parsed from the wire (with and without RawPath) and in paths a
// handler set.
func TestEscapedPathOf(t *testing.T) {
	var cases []*url.URL
	for c := 0; c < 256; c++ {
		cases = append(cases, &url.URL{Path: "/a" + string([]byte{byte(c)}) + "b"})
	}
	for _, raw := range []string{
		"/api/proxy/catalog/x", "/a%2Fb", "/a%2fb", "/a%7eb", "/a~b", "/caf%C3%A9", "/a%20b", "/a;b=c",
		"/a:b@c$d&e+f,g", "/a!b'c(d)e*f", "/a%21b", "*", "/%2e%2e/x", "/a%zz",
	} {
		u, err := url.ParseRequestURI(raw)
		if err != nil {
			continue // not a request-target Go accepts
		}
		cases = append(cases, u)
	}
	cases = append(cases, &url.URL{Path: "*"}, &url.URL{Path: ""}, &url.URL{Path: "/a b", RawPath: "/a%20b"})
	for _, u := range cases {
		if got, want := Escaped(u), u.EscapedPath(); got != want {
			t.Errorf("escapedPathOf(Path %q RawPath %q) = %q, want %q", u.Path, u.RawPath, got, want)
		}
	}
}
