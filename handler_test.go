package backstageproxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/identity"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// htAuth accepts one token.
type htAuth struct{ calls int }

func (a *htAuth) Authenticate(_ context.Context, token string) (identity.Principal, *identity.Error) {
	a.calls++
	switch token {
	case "good":
		return identity.Principal{Type: identity.PrincipalService, Subject: "external:ci", Method: "static"}, nil
	case "restricted":
		return identity.Principal{}, identity.NotAllowed("This token's access is restricted to plugin(s) 'catalog'")
	}
	return identity.Principal{}, identity.ErrIllegalToken
}

// htHandler is a provisioned Handler without a Caddy context.
func htHandler(t *testing.T, h Handler, auth *htAuth, disable bool) *Handler {
	t.Helper()
	if auth == nil {
		auth = &htAuth{}
	}
	if err := h.setup(&App{authn: auth, DangerouslyDisableDefaultAuthPolicy: disable}, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	return &h
}

func TestWriteError(t *testing.T) {
	h := htHandler(t, Handler{}, nil, false)
	cases := []struct {
		name, method, uri string
		status            int
		errName, message  string
		want              string
	}{
		{"shape", "GET", "/api/proxy/simple/just-some-path", 401, "AuthenticationError", "Missing credentials",
			`{"error":{"name":"AuthenticationError","message":"Missing credentials"},"request":{"method":"GET","url":"/simple/just-some-path"},"response":{"statusCode":401}}`},
		{"query kept", "POST", "/api/proxy/a/b?x=1&y=%20", 403, "NotAllowedError", "no",
			`{"error":{"name":"NotAllowedError","message":"no"},"request":{"method":"POST","url":"/a/b?x=1\u0026y=%20"},"response":{"statusCode":403}}`},
		{"mount any case", "GET", "/API/Proxy/x", 401, "E", "m",
			`{"error":{"name":"E","message":"m"},"request":{"method":"GET","url":"/x"},"response":{"statusCode":401}}`},
		{"mount itself", "GET", "/api/proxy", 401, "E", "m",
			`{"error":{"name":"E","message":"m"},"request":{"method":"GET","url":"/"},"response":{"statusCode":401}}`},
		{"mount with query", "GET", "/api/proxy?a=b", 401, "E", "m",
			`{"error":{"name":"E","message":"m"},"request":{"method":"GET","url":"/?a=b"},"response":{"statusCode":401}}`},
		{"not under the mount", "GET", "/api/proxyx/a", 401, "E", "m",
			`{"error":{"name":"E","message":"m"},"request":{"method":"GET","url":"/api/proxyx/a"},"response":{"statusCode":401}}`},
		{"escaping", "GET", `/api/proxy/a"b\c<d>&e`, 502, `N"\`, "line\nbreak\ttab\x01\u2028\u2029é",
			`{"error":{"name":"N\"\\","message":"line\u000abreak\u0009tab\u0001\u2028\u2029é"},"request":{"method":"GET","url":"/a\"b\\c\u003cd\u003e\u0026e"},"response":{"statusCode":502}}`},
		{"invalid UTF-8", "GET", "/api/proxy/\xff\xfe", 400, "E", "\xc3",
			`{"error":{"name":"E","message":"\ufffd"},"request":{"method":"GET","url":"/\ufffd\ufffd"},"response":{"statusCode":400}}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := httptest.NewRequest(c.method, "/", nil)
			r.RequestURI = c.uri
			w := httptest.NewRecorder()
			if err := h.writeError(w, r, c.status, c.errName, c.message); err != nil {
				t.Fatal(err)
			}
			if w.Code != c.status {
				t.Errorf("status %d", w.Code)
			}
			if got := w.Body.String(); got != c.want {
				t.Errorf("body\n got %s\nwant %s", got, c.want)
			}
			if !json.Valid(w.Body.Bytes()) {
				t.Errorf("invalid JSON")
			}
			if ct := w.Header().Get("Content-Type"); ct != "application/json; charset=utf-8" {
				t.Errorf("Content-Type %q", ct)
			}
			if cl := w.Header().Get("Content-Length"); cl != strconv.Itoa(w.Body.Len()) {
				t.Errorf("Content-Length %s for %d bytes", cl, w.Body.Len())
			}
		})
	}

	t.Run("HEAD: headers, no body", func(t *testing.T) {
		r := httptest.NewRequest("HEAD", "/api/proxy/x", nil)
		w := httptest.NewRecorder()
		_ = h.writeError(w, r, 401, "AuthenticationError", "Missing credentials")
		want := `{"error":{"name":"AuthenticationError","message":"Missing credentials"},"request":{"method":"HEAD","url":"/x"},"response":{"statusCode":401}}`
		if w.Code != 401 || w.Body.Len() != 0 || w.Header().Get("Content-Length") != strconv.Itoa(len(want)) {
			t.Errorf("%d %q Content-Length %s", w.Code, w.Body, w.Header().Get("Content-Length"))
		}
	})

	t.Run("custom mount path", func(t *testing.T) {
		hm := htHandler(t, Handler{MountPath: "/proxy/"}, nil, false)
		r := httptest.NewRequest("GET", "/proxy/a?b", nil)
		w := httptest.NewRecorder()
		_ = hm.writeError(w, r, 401, "E", "m")
		if !strings.Contains(w.Body.String(), `"url":"/a?b"`) {
			t.Errorf("%s", w.Body)
		}
	})

	t.Run("absolute-form request target", func(t *testing.T) {
		r := httptest.NewRequest("GET", "http://backstage.example/api/proxy/a?b=1", nil)
		r.RequestURI = "http://backstage.example/api/proxy/a?b=1"
		w := httptest.NewRecorder()
		_ = h.writeError(w, r, 401, "E", "m")
		if !strings.Contains(w.Body.String(), `"url":"/a?b=1"`) {
			t.Errorf("%s", w.Body)
		}
	})
}

// appendJSONString decodes back to the input (invalid UTF-8 → U+FFFD per
// byte, as encoding/json does).
func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{
		"", "plain", `"quoted"`, `back\slash`, "<script>&amp;</script>", "\x00\x1f\x7f", "\r\n\t\b\f",
		"é ü 日本 🎉", "\u2028\u2029", "\xff", "a\xc3", "\xed\xa0\x80", "mixed\xffé\x00",
	} {
		got := appendJSONString(nil, s)
		var back string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Errorf("%q: invalid JSON %s: %v", s, got, err)
			continue
		}
		std, _ := json.Marshal(s)
		var want string
		_ = json.Unmarshal(std, &want)
		if back != want {
			t.Errorf("%q: round trip %q, want %q", s, back, want)
		}
		for _, b := range got {
			if b < 0x20 || b == '<' || b == '>' || b == '&' {
				t.Errorf("%q: unescaped byte %q in %s", s, b, got)
			}
		}
		if strings.Contains(string(got), "\u2028") || strings.Contains(string(got), "\u2029") {
			t.Errorf("%q: raw line separator in %s", s, got)
		}
	}
}

func TestNeedsCredentials(t *testing.T) {
	barrier := htHandler(t, Handler{barrier: true, unauthenticatedPaths: []string{"/open", "/trail/", "noslash", "/Mixed", "/a/b"}}, nil, false)
	root := htHandler(t, Handler{barrier: true, unauthenticatedPaths: []string{"/"}}, nil, false)
	mount := htHandler(t, Handler{barrier: true, MountPath: "/proxy", unauthenticatedPaths: []string{"/open"}}, nil, false)
	openRoute := htHandler(t, Handler{Credentials: CredentialsDangerouslyAllowUnauthenticated}, nil, false)
	requireRoute := htHandler(t, Handler{}, nil, false)
	disabled := htHandler(t, Handler{Credentials: CredentialsForward}, nil, true)

	cases := []struct {
		h    *Handler
		path string
		want bool
	}{
		{barrier, "/api/proxy/open", false},
		{barrier, "/api/proxy/open/", false},
		{barrier, "/api/proxy/open/x/y", false},
		{barrier, "/api/proxy/OPEN/x", false},
		{barrier, "/API/PROXY/open/x", false},
		{barrier, "/api/proxy/openx", true},
		{barrier, "/api/proxy/openx/a", true},
		{barrier, "/api/proxy/ope", true},
		{barrier, "/api/proxy/x/open", true},
		{barrier, "/api/proxy", true},
		{barrier, "/api/proxy/", true},
		{barrier, "/api/proxyopen", true},
		{barrier, "/api/proxy/trail", false},   // D6
		{barrier, "/api/proxy/trail/a", false}, // D6
		{barrier, "/api/proxy/trails", true},
		{barrier, "/api/proxy/noslash/a", false}, // D6
		{barrier, "/api/proxy/mixed/a", false},
		{barrier, "/api/proxy/a/b", false},
		{barrier, "/api/proxy/a/b/c", false},
		{barrier, "/api/proxy/a", true},
		{barrier, "/api/proxy/a/bc", true},
		{barrier, "/other/open", true},
		{root, "/api/proxy/anything", false},
		{root, "/api/proxy", false},
		{mount, "/proxy/open/x", false},
		{mount, "/api/proxy/open/x", true},
		{openRoute, "/api/proxy/x", false},
		{requireRoute, "/api/proxy/x", true},
		{disabled, "/api/proxy/x", false},
	}
	for _, c := range cases {
		if got := c.h.needsCredentials(c.path); got != c.want {
			t.Errorf("needsCredentials(%q) with %v = %v, want %v", c.path, c.h.unauthenticatedPaths, got, c.want)
		}
	}
}

// htNext records a copy of the request it gets, as reverse_proxy copies it
// (the handler puts the request back when next returns), and answers like
// reverse_proxy would.
type htNext struct {
	called int
	req    *http.Request // a copy, made during the call
	ptr    *http.Request // the request itself
	status int
	err    error
}

func (n *htNext) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	n.called++
	n.req, n.ptr = r.Clone(r.Context()), r
	if n.err != nil {
		if n.status != 0 {
			w.WriteHeader(n.status)
		}
		return n.err
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("X-Upstream", "1")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte("upstream"))
	return nil
}

func htRequest(method, target string, headers ...string) *http.Request {
	r := httptest.NewRequest(method, target, nil)
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Add(headers[i], headers[i+1])
	}
	repl := caddy.NewReplacer()
	return r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
}

func TestServeHTTP(t *testing.T) {
	route := func(cred string) Handler {
		return Handler{Credentials: cred, Route: "/r", Rewrite: &UpstreamRewrite{StripPrefix: "/api/proxy/r", TargetPath: "/base"}}
	}

	t.Run("proxied: filtered copy, rewritten URL, original intact", func(t *testing.T) {
		h := htHandler(t, route(CredentialsDangerouslyAllowUnauthenticated), nil, false)
		next := &htNext{}
		r := htRequest("GET", "/api/proxy/r/a%2Fb?q=1", "Authorization", "Bearer x", "Accept", "a", "Cookie", "c=d")
		w := httptest.NewRecorder()
		if err := serveWithErrors(h, w, r, next); err != nil {
			t.Fatal(err)
		}
		if next.called != 1 {
			t.Fatalf("next called %d times", next.called)
		}
		if got := next.req.URL.RequestURI(); got != "/base/a%2Fb?q=1" || next.req.RequestURI != got {
			t.Errorf("upstream URI %q / %q", got, next.req.RequestURI)
		}
		if !hdEqual(next.req.Header, http.Header{"Accept": {"a"}}) {
			t.Errorf("upstream headers %v", next.req.Header)
		}
		if r.Header.Get("Authorization") == "" || r.Header.Get("Cookie") == "" || r.URL.RequestURI() != "/api/proxy/r/a%2Fb?q=1" {
			t.Errorf("the original request was changed: %v %s", r.Header, r.URL)
		}
		if w.Code != 200 || w.Body.String() != "upstream" || w.Header().Get("X-Upstream") != "" {
			t.Errorf("response %d %q %v", w.Code, w.Body, w.Header())
		}
	})

	t.Run("the request is put back when next returns or panics", func(t *testing.T) {
		h := htHandler(t, route(CredentialsDangerouslyAllowUnauthenticated), nil, false)
		for _, panics := range []bool{false, true} {
			r := htRequest("GET", "/api/proxy/r/a?q=1", "Cookie", "c=d", "Accept", "a")
			r.Trailer = http.Header{"X-Sum": nil}
			header, trailer, u := r.Header, r.Trailer, r.URL
			var during string
			next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r2 *http.Request) error {
				during = fmt.Sprintf("%p %s %v %v", r2, r2.RequestURI, r2.Header, r2.Trailer)
				if panics {
					panic("next failed")
				}
				return nil
			})
			func() {
				defer func() { _ = recover() }()
				_ = serveWithErrors(h, httptest.NewRecorder(), r, next)
			}()
			if want := fmt.Sprintf("%p /base/a?q=1 map[Accept:[a]] map[]", r); during != want {
				t.Errorf("panics=%v: next saw %q, want %q", panics, during, want)
			}
			if !hdEqual(r.Header, http.Header{"Cookie": {"c=d"}, "Accept": {"a"}}) || fmt.Sprintf("%p", r.Header) != fmt.Sprintf("%p", header) ||
				fmt.Sprintf("%p", r.Trailer) != fmt.Sprintf("%p", trailer) || r.URL != u || r.URL.RequestURI() != "/api/proxy/r/a?q=1" || r.RequestURI != "/api/proxy/r/a?q=1" {
				t.Errorf("panics=%v: not put back: %v %v %s %q", panics, r.Header, r.Trailer, r.URL, r.RequestURI)
			}
		}
	})

	t.Run("require: missing, illegal, restricted, good", func(t *testing.T) {
		auth := &htAuth{}
		h := htHandler(t, route(CredentialsRequire), auth, false)
		for _, c := range []struct {
			auth   string
			status int
			body   string
		}{
			{"", 401, `{"error":{"name":"AuthenticationError","message":"Missing credentials"},"request":{"method":"GET","url":"/r/p"},"response":{"statusCode":401}}`},
			{"Basic Zm9v", 401, `{"error":{"name":"AuthenticationError","message":"Missing credentials"},"request":{"method":"GET","url":"/r/p"},"response":{"statusCode":401}}`},
			{"Bearer bad", 401, `{"error":{"name":"AuthenticationError","message":"Illegal token"},"request":{"method":"GET","url":"/r/p"},"response":{"statusCode":401}}`},
			{"Bearer restricted", 403, `{"error":{"name":"NotAllowedError","message":"This token's access is restricted to plugin(s) 'catalog'"},"request":{"method":"GET","url":"/r/p"},"response":{"statusCode":403}}`},
			{"bearer good", 200, "upstream"},
		} {
			next := &htNext{}
			r := htRequest("GET", "/api/proxy/r/p")
			if c.auth != "" {
				r.Header.Set("Authorization", c.auth)
			}
			w := httptest.NewRecorder()
			if err := serveWithErrors(h, w, r, next); err != nil {
				t.Fatal(err)
			}
			if w.Code != c.status || w.Body.String() != c.body {
				t.Errorf("%q: %d %s", c.auth, w.Code, w.Body)
			}
			if (next.called == 1) != (c.status == 200) {
				t.Errorf("%q: next called %d times", c.auth, next.called)
			}
			if c.status == 200 {
				if next.req.Header.Get("Authorization") != "" {
					t.Errorf("require forwarded the token")
				}
				repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
				for k, want := range map[string]string{
					"http.auth.user.id": "external:ci", "http.backstage_proxy.principal.type": "service",
					"http.backstage_proxy.principal.method": "static", "http.backstage_proxy.route": "/r",
				} {
					if got, _ := repl.GetString(k); got != want {
						t.Errorf("placeholder %s = %q, want %q", k, got, want)
					}
				}
			}
		}
	})

	t.Run("forward forwards the token verbatim", func(t *testing.T) {
		h := htHandler(t, route(CredentialsForward), nil, false)
		next := &htNext{}
		r := htRequest("GET", "/api/proxy/r/p", "Authorization", "Bearer  good")
		if err := serveWithErrors(h, httptest.NewRecorder(), r, next); err != nil {
			t.Fatal(err)
		}
		if next.called != 1 || next.req.Header.Get("Authorization") != "Bearer  good" {
			t.Errorf("called %d, Authorization %q", next.called, next.req.Header.Get("Authorization"))
		}
	})

	t.Run("path guard after credentials", func(t *testing.T) {
		h := htHandler(t, route(CredentialsRequire), nil, false)
		for _, c := range []struct {
			auth   string
			status int
		}{{"", 401}, {"Bearer good", 400}} {
			next := &htNext{}
			r := htRequest("GET", "/api/proxy/r/a/..;/b")
			if c.auth != "" {
				r.Header.Set("Authorization", c.auth)
			}
			w := httptest.NewRecorder()
			_ = serveWithErrors(h, w, r, next)
			if w.Code != c.status || next.called != 0 {
				t.Errorf("%q: %d, next called %d", c.auth, w.Code, next.called)
			}
			if c.status == 400 && (w.Body.String() != "Bad Request" || w.Header().Get("Content-Type") != "text/plain; charset=utf-8") {
				t.Errorf("400: %q %v", w.Body, w.Header())
			}
		}
	})

	t.Run("barrier passes the request unchanged", func(t *testing.T) {
		h := htHandler(t, Handler{barrier: true, unauthenticatedPaths: []string{"/open"}}, nil, false)
		next := &htNext{}
		r := htRequest("GET", "/api/proxy/open/x?y", "Cookie", "c", "Authorization", "Bearer bad")
		_ = serveWithErrors(h, httptest.NewRecorder(), r, next)
		if next.called != 1 || next.ptr != r || next.req.Header.Get("Cookie") != "c" || next.req.RequestURI != "/api/proxy/open/x?y" {
			t.Errorf("barrier: called %d, same request %v, saw %v %q", next.called, next.ptr == r, next.req.Header, next.req.RequestURI)
		}
		w := httptest.NewRecorder()
		next = &htNext{}
		_ = serveWithErrors(h, w, htRequest("GET", "/api/proxy/other/x"), next)
		if w.Code != 401 || next.called != 0 {
			t.Errorf("barrier, anonymous, unknown path: %d, next called %d", w.Code, next.called)
		}
	})

	t.Run("path outside the route's literal prefix", func(t *testing.T) {
		h := htHandler(t, route(CredentialsDangerouslyAllowUnauthenticated), nil, false)
		for _, target := range []string{"/api/proxy//r/a", "/api/proxy/./r/a", "/api/proxy/%72/a", "/api/proxy/r%2Fa"} {
			next := &htNext{}
			w := httptest.NewRecorder()
			if err := serveWithErrors(h, w, htRequest("GET", target), next); err != nil {
				t.Fatal(err)
			}
			if w.Code != 404 || w.Body.Len() != 0 || w.Header().Get("Content-Type") != "" || next.called != 0 {
				t.Errorf("%s: %d %q %v, next called %d", target, w.Code, w.Body, w.Header(), next.called)
			}
		}
	})

	t.Run("upstream errors", func(t *testing.T) {
		h := htHandler(t, route(CredentialsDangerouslyAllowUnauthenticated), nil, false)
		cause := errors.New("dial tcp 10.1.2.3:8080: connect: connection refused")
		for _, c := range []struct {
			err       error
			written   int
			status    int
			body      string
			returnErr bool
		}{
			{caddyhttp.Error(502, cause), 0, 502, `{"error":{"name":"BadGatewayError","message":"The upstream of this proxy route could not be reached"},"request":{"method":"GET","url":"/r/p?x=1"},"response":{"statusCode":502}}`, false},
			{caddyhttp.Error(503, cause), 0, 503, `{"error":{"name":"ServiceUnavailableError","message":"No upstream of this proxy route is available"},"request":{"method":"GET","url":"/r/p?x=1"},"response":{"statusCode":503}}`, false},
			{caddyhttp.Error(504, cause), 0, 504, `{"error":{"name":"GatewayTimeoutError","message":"The upstream of this proxy route did not answer in time"},"request":{"method":"GET","url":"/r/p?x=1"},"response":{"statusCode":504}}`, false},
			{caddyhttp.Error(499, cause), 0, 200, "", true},   // client went away: left to Caddy
			{caddyhttp.Error(500, cause), 0, 200, "", true},   // left to Caddy
			{cause, 0, 200, "", true},                         // not a HandlerError
			{caddyhttp.Error(502, cause), 200, 200, "", true}, // the response was already under way
		} {
			next := &htNext{err: c.err, status: c.written}
			w := httptest.NewRecorder()
			err := serveWithErrors(h, w, htRequest("GET", "/api/proxy/r/p?x=1"), next)
			if (err != nil) != c.returnErr {
				t.Errorf("%v (written %d): returned %v", c.err, c.written, err)
			}
			if c.returnErr {
				if !errors.Is(err, c.err) && err != c.err {
					t.Errorf("%v: returned a different error %v", c.err, err)
				}
				continue
			}
			if w.Code != c.status || w.Body.String() != c.body {
				t.Errorf("%v: %d %s", c.err, w.Code, w.Body)
			}
			if strings.Contains(w.Body.String(), "10.1.2.3") {
				t.Errorf("internal address leaked")
			}
		}
	})

	// Headers a later handler wrote before failing are the upstream's:
	// neither the JSON error nor Caddy's own error handling may show them.
	t.Run("headers staged before an upstream error do not leak", func(t *testing.T) {
		h := htHandler(t, route(CredentialsDangerouslyAllowUnauthenticated), nil, false)
		for _, err := range []error{caddyhttp.Error(502, errors.New("x")), caddyhttp.Error(500, errors.New("x"))} {
			w := httptest.NewRecorder()
			w.Header().Set("X-Own", "server")
			next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
				w.Header().Set("X-Upstream", "1")
				w.Header().Set("Set-Cookie", "a=b")
				return err
			})
			_ = serveWithErrors(h, w, htRequest("GET", "/api/proxy/r/p"), next)
			if got := w.Header(); got.Get("X-Upstream") != "" || got.Get("Set-Cookie") != "" || got.Get("X-Own") != "server" {
				t.Errorf("%v: headers %v", err, got)
			}
		}
	})
}

// A later handler may replace r.URL instead of changing it in place: the
// handler puts its own pointer back, and leaves the replacement alone.
func TestServeUpstreamRestoresURLPointer(t *testing.T) {
	h := htHandler(t, Handler{Credentials: CredentialsDangerouslyAllowUnauthenticated, Route: "/r",
		Rewrite: &UpstreamRewrite{StripPrefix: "/api/proxy/r", TargetPath: "/base"}}, nil, false)
	r := htRequest("GET", "/api/proxy/r/a?q=1")
	orig := r.URL
	var replacement *url.URL
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r2 *http.Request) error {
		replacement = &url.URL{Path: "/elsewhere", RawQuery: "z=9"}
		r2.URL = replacement
		return nil
	})
	if err := h.ServeHTTP(httptest.NewRecorder(), r, next); err != nil {
		t.Fatal(err)
	}
	if r.URL != orig {
		t.Errorf("r.URL is %p (%s), want the original pointer %p", r.URL, r.URL, orig)
	}
	if got := orig.RequestURI(); got != "/api/proxy/r/a?q=1" {
		t.Errorf("original URL %q", got)
	}
	if got := replacement.RequestURI(); got != "/elsewhere?z=9" {
		t.Errorf("the later handler's URL was overwritten: %q", got)
	}
}

// Nothing of a request is recycled: a handler that keeps the request (and
// its header map and URL) after it returned still sees the client's request
// once other requests went through the same handler. The response filter and
// its staged header map are recycled (SECURITY.md, guarantee 5), except for
// upgrades and CONNECT.
func TestNothingOfARequestIsRecycled(t *testing.T) {
	h := htHandler(t, Handler{Credentials: CredentialsDangerouslyAllowUnauthenticated, Route: "/r",
		AllowedHeaders: []string{"X-Id"}, Rewrite: &UpstreamRewrite{StripPrefix: "/api/proxy/r", TargetPath: "/base"}}, nil, false)
	type kept struct {
		r      *http.Request
		header http.Header
		url    *url.URL
		want   string
	}
	var all []kept
	for i := range 50 {
		id := fmt.Sprint(i)
		r := htRequest("GET", "/api/proxy/r/"+id+"?q="+id, "X-Id", id, "Cookie", "c="+id)
		var k kept
		next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r2 *http.Request) error {
			k = kept{r: r2, header: r2.Header, url: r2.URL, want: id}
			w.Header().Set("X-Id", id)
			w.WriteHeader(http.StatusOK)
			return nil
		})
		w := httptest.NewRecorder()
		var staged http.Header
		next2 := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r2 *http.Request) error {
			staged = w.Header()
			return next(w, r2)
		})
		if err := h.ServeHTTP(w, r, next2); err != nil {
			t.Fatal(err)
		}
		// The response side is recycled: the staged map next wrote to is
		// emptied for reuse, and the response kept the allowed header.
		if len(staged) != 0 || w.Header().Get("X-Id") != id {
			t.Fatalf("request %s: staged map %v after return, response headers %v", id, staged, w.Header())
		}
		all = append(all, k)
	}
	for _, k := range all {
		// The upstream header map next saw, and the client's request.
		if got := k.header.Get("X-Id"); got != k.want || len(k.header) != 1 {
			t.Errorf("request %s: the upstream header map kept by next now holds %v", k.want, k.header)
		}
		if got := k.r.Header.Get("Cookie"); got != "c="+k.want {
			t.Errorf("request %s: the request kept by next now has Cookie %q", k.want, got)
		}
		if got := k.url.RequestURI(); got != "/api/proxy/r/"+k.want+"?q="+k.want {
			t.Errorf("request %s: the URL kept by next is now %q", k.want, got)
		}
	}
}
