package backstageproxy

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/urlpath"
)

// rwApply provisions u and applies it to a request-target, split as the
// handler does (escaped path, raw query, whether a `?` was present).
func rwApply(t *testing.T, u UpstreamRewrite, target string) string {
	t.Helper()
	if err := u.provision(); err != nil {
		t.Fatalf("provision: %v", err)
	}
	r := httptest.NewRequest("GET", target, nil)
	path, query := u.apply(r.URL.EscapedPath(), r.URL.RawQuery, r.URL.ForceQuery || r.URL.RawQuery != "")
	if query != "" {
		return path + "?" + query
	}
	return path
}

// rwRoute is the rewrite route.go builds for a route key and target.
func rwRoute(route, targetPath, targetQuery string) UpstreamRewrite {
	if targetPath == "/" {
		targetPath = ""
	}
	prefix := DefaultMountPath + normalizeRouteKey(route)
	if normalizeRouteKey(route) == "/" {
		prefix = DefaultMountPath
	}
	return UpstreamRewrite{StripPrefix: prefix, TargetPath: targetPath, TargetQuery: targetQuery}
}

func rwRules(pairs ...string) []PathRewriteRule {
	rules := []PathRewriteRule{}
	for i := 0; i+1 < len(pairs); i += 2 {
		rules = append(rules, PathRewriteRule{Find: pairs[i], Replace: pairs[i+1]})
	}
	return rules
}

// Backstage's URL construction (http-proxy-middleware's path-rewriter.js, then
// http-proxy's urlJoin in lib/http-proxy/common.js) on observed cases,
// adjusted for D2 and D3, plus edges.
func TestUpstreamRewriteApply(t *testing.T) {
	customBase := func(rules ...string) UpstreamRewrite {
		u := rwRoute("/rewrite", "/base", "")
		u.PathRewrite = rwRules(rules...)
		if u.PathRewrite == nil {
			u.PathRewrite = []PathRewriteRule{}
		}
		return u
	}
	ordered := customBase(`^/api/proxy/rewrite/old`, "/new", `^/api/proxy/rewrite`, "/other")

	cases := []struct {
		name    string
		rewrite UpstreamRewrite
		target  string
		want    string
	}{
		// Backstage's results
		{"bare origin", rwRoute("/simple", "/", ""), "/api/proxy/simple/foo?x=1", "/foo?x=1"},
		{"route root", rwRoute("/open", "/", ""), "/api/proxy/open", "/"},
		{"route root slash", rwRoute("/open", "/", ""), "/api/proxy/open/", "/"},
		{"route root query", rwRoute("/open", "/", ""), "/api/proxy/open?a=1&b=2", "/?a=1&b=2"},
		{"route root slash query", rwRoute("/open", "/", ""), "/api/proxy/open/?a=1", "/?a=1"},
		{"trailing slash kept", rwRoute("/open", "/", ""), "/api/proxy/open/a/b/", "/a/b/"},
		{"slashes collapsed", rwRoute("/open", "/", ""), "/api/proxy/open//a//b", "/a/b"},
		{"encoding untouched", rwRoute("/open", "/", ""), "/api/proxy/open/a%20b/c%2Fd?q=%20x", "/a%20b/c%2Fd?q=%20x"},
		{"target path, route root", rwRoute("/withpath", "/api/v1", ""), "/api/proxy/withpath", "/api/v1/"},
		{"target path", rwRoute("/withpath", "/api/v1", ""), "/api/proxy/withpath/x/y?z=1", "/api/v1/x/y?z=1"},
		{"target path slash", rwRoute("/withpath-slash", "/api/v1/", ""), "/api/proxy/withpath-slash/x", "/api/v1/x"},
		{"target path slash, route root", rwRoute("/withpath-slash", "/api/v1/", ""), "/api/proxy/withpath-slash", "/api/v1/"},
		{"target query first (D3)", rwRoute("/withquery", "/api", "key=abc"), "/api/proxy/withquery/x?z=1", "/api/x?key=abc&z=1"},
		{"target query, route root (D3)", rwRoute("/withquery", "/api", "key=abc"), "/api/proxy/withquery", "/api/?key=abc"},
		{"target query, empty request query (D3)", rwRoute("/withquery", "/api", "key=abc"), "/api/proxy/withquery/x?", "/api/x?key=abc"},
		{"pathRewrite first rule", ordered, "/api/proxy/rewrite/old/thing?q=1", "/base/new/thing?q=1"},
		{"pathRewrite second rule", ordered, "/api/proxy/rewrite/zzz", "/base/other/zzz"},
		{"pathRewrite {} disables", customBase(), "/api/proxy/rewrite-empty/zzz?q=1", "/base/api/proxy/rewrite-empty/zzz?q=1"},
		{"ignorePath", func() UpstreamRewrite {
			u := rwRoute("/ignorepath", "/fixed", "k=v")
			u.IgnorePath = true
			return u
		}(), "/api/proxy/ignorepath/some/path?q=1", "/fixed?k=v"},
		{"ignorePath, no target query", func() UpstreamRewrite {
			u := rwRoute("/ignorepath", "/fixed", "")
			u.IgnorePath = true
			return u
		}(), "/api/proxy/ignorepath/some/path?q=1", "/fixed"},
		{"prependPath false", func() UpstreamRewrite {
			u := rwRoute("/noprepend", "/dropped", "")
			u.NoPrependPath = true
			return u
		}(), "/api/proxy/noprepend/some/path?q=1", "/some/path?q=1"},

		// D2: the matched prefix is stripped whatever its case
		{"upper-case route (D2)", rwRoute("/open", "/", ""), "/api/proxy/OPEN/a", "/a"},
		{"upper-case mount (D2)", rwRoute("/open", "/", ""), "/API/PROXY/open/a", "/a"},
		{"mixed-case key (D2)", rwRoute("/Mixed", "/", ""), "/api/proxy/mixed/a", "/a"},
		// 54: the default rule strips mount + route + one slash, with or
		// without a leading slash in the key (D6)
		{"54 route /test", rwRoute("/test", "/", ""), "/api/proxy/test/x", "/x"},
		{"54 route test", rwRoute("test", "/", ""), "/api/proxy/test/x", "/x"},
		{"54 route /test/", rwRoute("/test/", "/", ""), "/api/proxy/test/", "/"},
		// D6: keys are normalised
		{"key without leading slash (D6)", rwRoute("noslash", "/", ""), "/api/proxy/noslash/a", "/a"},
		{"key with trailing slash (D6)", rwRoute("/trail/", "/", ""), "/api/proxy/trail", "/"},
		{"key with trailing slash, sub-path (D6)", rwRoute("/trail/", "/", ""), "/api/proxy/trail/a", "/a"},
		// route `/`
		{"route /", rwRoute("/", "/", ""), "/api/proxy/x/y", "/x/y"},
		{"route /, mount itself", rwRoute("/", "/", ""), "/api/proxy", "/"},
		{"nested route", rwRoute("/nested/inner", "/inner", ""), "/api/proxy/nested/inner/x", "/inner/x"},
		// the prefix is only stripped on a segment boundary
		{"no segment boundary", rwRoute("/open", "/", ""), "/api/proxy/openx/a", "/api/proxy/openx/a"},
		// the query is never collapsed or re-encoded
		{"query untouched", rwRoute("/open", "/", ""), "/api/proxy/open/a?x=//y&q=a+b&r=%2f", "/a?x=//y&q=a+b&r=%2f"},
		{"target path collapsed with request", rwRoute("/w", "/api//v1/", ""), "/api/proxy/w//x", "/api/v1/x"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := rwApply(t, c.rewrite, c.target); got != c.want {
				t.Errorf("%s → %q, want %q", c.target, got, c.want)
			}
		})
	}
}

func TestUpstreamRewriteCustomRules(t *testing.T) {
	rw := func(targetPath string, rules ...string) UpstreamRewrite {
		u := rwRoute("/r", targetPath, "")
		u.PathRewrite = rwRules(rules...)
		if u.PathRewrite == nil {
			u.PathRewrite = []PathRewriteRule{}
		}
		return u
	}
	cases := []struct {
		name    string
		rewrite UpstreamRewrite
		target  string
		want    string
	}{
		{"first match wins, not re-applied to the result",
			rw("/", `^/api/proxy/r/old`, "/new", `^/new`, "/WRONG"), "/api/proxy/r/old/x", "/new/x"},
		{"later rules are not tried after a match",
			rw("/", `^/api/proxy/r`, "/one", `^/api/proxy/r`, "/two"), "/api/proxy/r/x", "/one/x"},
		{"no rule matches: the full path is appended",
			rw("/base", `^/nomatch`, "/x"), "/api/proxy/r/zzz?q=1", "/base/api/proxy/r/zzz?q=1"},
		{"only the first occurrence is replaced",
			rw("/", `a`, "b"), "/api/proxy/r/aaa", "/bpi/proxy/r/aaa"},
		{"case-sensitive patterns",
			rw("/", `^/api/proxy/R`, "/upper"), "/api/proxy/r/x", "/api/proxy/r/x"},
		{"applied to the full URL, query included",
			rw("/", `x=1`, "x=2"), "/api/proxy/r/p?x=1", "/api/proxy/r/p?x=2"},
		{"a rule can move the query",
			rw("/", `^/api/proxy/r/p\?(.*)$`, "/q/${1}"), "/api/proxy/r/p?k=v", "/q/k=v"},
		{"a rule can drop the query",
			rw("/", `\?.*$`, ""), "/api/proxy/r/p?k=v", "/api/proxy/r/p"},
		{"$1 groups",
			rw("/", `^/api/proxy/r/([^/]+)/([^/?]+)`, "/${2}/${1}"), "/api/proxy/r/aa/bb/cc?q=1", "/bb/aa/cc?q=1"},
		{"$1 groups followed by text",
			rw("/", `^/api/proxy/r/([^/]+)`, "/${1}x"), "/api/proxy/r/aa/b", "/aax/b"},
		{"$0 is the whole match",
			rw("/", `^/api/proxy/r`, "/pre${0}"), "/api/proxy/r/x", "/pre/api/proxy/r/x"},
		{"$$ is a literal $",
			rw("/", `^/api/proxy/r`, "/$$"), "/api/proxy/r/x", "/$/x"},
		{"named groups",
			rw("/", `^/api/proxy/r/(?P<id>[^/]+)`, "/items/${id}"), "/api/proxy/r/42/x", "/items/42/x"},
		{"empty replacement, target path prepended",
			rw("/base", `^/api/proxy/r/`, ""), "/api/proxy/r/x/y", "/base/x/y"},
		{"empty replacement, bare target",
			rw("/", `^/api/proxy/r/`, ""), "/api/proxy/r/x", "/x"},
		{"result collapsed",
			rw("/base/", `^/api/proxy/r`, "//a//"), "/api/proxy/r/b", "/base/a/b"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := rwApply(t, c.rewrite, c.target); got != c.want {
				t.Errorf("%s → %q, want %q", c.target, got, c.want)
			}
		})
	}
}

// An explicit `pathRewrite: {}` disables rewriting; with no rules (nil) the
// default rewrite applies.
func TestUpstreamRewriteEmptyRules(t *testing.T) {
	u := rwRoute("/r", "/base", "")
	u.PathRewrite = []PathRewriteRule{}
	if got := rwApply(t, u, "/api/proxy/r/x"); got != "/base/api/proxy/r/x" {
		t.Errorf("{}: got %q", got)
	}
	d := rwRoute("/r", "/base", "")
	if got := rwApply(t, d, "/api/proxy/r/x"); got != "/base/x" {
		t.Errorf("default: got %q", got)
	}
	// rules are custom
	c := rwRoute("/r", "/base", "")
	c.PathRewrite = rwRules(`^/api/proxy/r`, "/c")
	if got := rwApply(t, c, "/api/proxy/r/x"); got != "/base/c/x" {
		t.Errorf("rules: got %q", got)
	}
}

func TestUpstreamRewriteProvisionErrors(t *testing.T) {
	bad := UpstreamRewrite{PathRewrite: rwRules(`(`, "/x")}
	if err := bad.provision(); err == nil || !strings.Contains(err.Error(), "pathRewrite") {
		t.Errorf("invalid regexp: err = %v", err)
	}
	badQuery := UpstreamRewrite{TargetQuery: "a=%zz"}
	if err := badQuery.provision(); err == nil {
		t.Errorf("invalid target query: no error")
	}
}

func TestJoinCollapse(t *testing.T) {
	cases := []struct{ a, b, want string }{
		{"", "", "/"},
		{"/", "", "/"},
		{"", "/x", "/x"},
		{"", "x", "/x"},
		{"/api/v1", "/", "/api/v1/"},
		{"/api/v1", "", "/api/v1"},
		{"/api/v1/", "/x", "/api/v1/x"},
		{"/api/v1", "x", "/api/v1/x"},
		{"//a//", "//b//c", "/a/b/c"},
	}
	for _, c := range cases {
		if got, end := urlpath.JoinCollapse(c.a, c.b, "", "", ""); got != c.want || end != len(got) {
			t.Errorf("joinCollapse(%q, %q) = %q, want %q", c.a, c.b, got, c.want)
		}
	}
}

func TestJoinCollapseQuery(t *testing.T) {
	for _, c := range []struct{ a, b, q1, sep, q2, want string }{
		{"/api", "/x", "", "", "", "/api/x"},
		{"/api", "/x", "z=1", "", "", "/api/x?z=1"},
		{"/api", "/x", "key=abc", "&", "z=1", "/api/x?key=abc&z=1"},
		{"", "//a", "", "", "q", "/a?q"},
	} {
		got, end := urlpath.JoinCollapse(c.a, c.b, c.q1, c.sep, c.q2)
		if got != c.want {
			t.Errorf("joinCollapse(%q, %q, %q, %q, %q) = %q, want %q", c.a, c.b, c.q1, c.sep, c.q2, got, c.want)
		}
		if want := strings.IndexByte(c.want+"?", '?'); end != want {
			t.Errorf("path end of %q = %d, want %d", got, end, want)
		}
	}
}

// path_rewrites present (even empty) means custom rules, absent means the
// default rewrite; there is no separate flag in the JSON.
func TestUpstreamRewriteJSON(t *testing.T) {
	for in, want := range map[string]string{
		`{"strip_prefix":"/api/proxy/r"}`: `{"strip_prefix":"/api/proxy/r"}`,
		`{"path_rewrites":[]}`:            `{"path_rewrites":[]}`,
		`{"path_rewrites":null}`:          `{}`,
		`{"path_rewrites":[{"find":"^/a","replace":"/b"}],"target_path":"/t"}`: `{"target_path":"/t","path_rewrites":[{"find":"^/a","replace":"/b"}]}`,
	} {
		var u UpstreamRewrite
		if err := json.Unmarshal([]byte(in), &u); err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if out, _ := json.Marshal(u); string(out) != want {
			t.Errorf("%s: marshals as %s, want %s", in, out, want)
		}
		if err := u.provision(); err != nil {
			t.Fatal(err)
		}
		if u.custom != strings.Contains(in, "[") {
			t.Errorf("%s: custom = %v", in, u.custom)
		}
	}
	var u UpstreamRewrite
	if err := json.Unmarshal([]byte(`{"custom_rewrite":true}`), &u); err == nil {
		t.Error("custom_rewrite accepted")
	}
}
