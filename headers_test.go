package backstageproxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

var hdSafe = []string{
	"Accept", "Accept-Language", "Cache-Control", "Content-Language", "Content-Length",
	"Content-Type", "Expires", "Host", "Last-Modified", "Pragma", "User-Agent",
}

func hdKeys(m map[string]struct{}) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func hdWith(extra ...string) []string {
	out := append(slices.Clone(hdSafe), extra...)
	sort.Strings(out)
	return out
}

// Request allowlist = SAFE ∪ headers: keys ∪ allowedHeaders ∪ (Authorization
// iff forward); response allowlist = SAFE ∪ allowedHeaders ∪ Content-Encoding
// (D5) (Backstage: plugins/proxy-backend/src/service/router.ts, the request
// filter and onProxyRes).
func TestBuildAllowlists(t *testing.T) {
	cases := []struct {
		name        string
		credentials string
		allowed     []string
		upstreamSet []string
		upgrade     bool
		req, resp   []string
	}{
		{name: "require", credentials: CredentialsRequire,
			req: hdWith(), resp: hdWith("Content-Encoding")},
		{name: "forward adds Authorization upstream only", credentials: CredentialsForward,
			req: hdWith("Authorization"), resp: hdWith("Content-Encoding")},
		{name: "open", credentials: CredentialsDangerouslyAllowUnauthenticated,
			req: hdWith(), resp: hdWith("Content-Encoding")},
		{name: "open + allowedHeaders authorization", credentials: CredentialsDangerouslyAllowUnauthenticated,
			allowed: []string{"authorization"},
			req:     hdWith("Authorization"), resp: hdWith("Authorization", "Content-Encoding")},
		{name: "require + allowedHeaders Authorization", credentials: CredentialsRequire,
			allowed: []string{"Authorization"},
			req:     hdWith("Authorization"), resp: hdWith("Authorization", "Content-Encoding")},
		{name: "allowedHeaders any case, both directions, * literal", credentials: CredentialsRequire,
			allowed: []string{"x-FOO", "SET-COOKIE", "*", "etag"},
			req:     hdWith("X-Foo", "Set-Cookie", "*", "Etag"), resp: hdWith("X-Foo", "Set-Cookie", "*", "Etag", "Content-Encoding")},
		{name: "headers: keys upstream only", credentials: CredentialsRequire,
			upstreamSet: []string{"X-Custom", "authorization"},
			req:         hdWith("X-Custom", "Authorization"), resp: hdWith("Content-Encoding")},
		{name: "duplicates collapse", credentials: CredentialsForward,
			allowed: []string{"accept", "Authorization"}, upstreamSet: []string{"ACCEPT"},
			req: hdWith("Authorization"), resp: hdWith("Authorization", "Content-Encoding")},
		{name: "ws: upgrade headers upstream", credentials: CredentialsRequire, upgrade: true,
			req: hdWith("Connection", "Upgrade", "Sec-Websocket-Key", "Sec-Websocket-Version",
				"Sec-Websocket-Protocol", "Sec-Websocket-Extensions"),
			resp: hdWith("Content-Encoding")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, resp := buildAllowlists(c.credentials, c.allowed, c.upstreamSet, c.upgrade)
			if got := hdKeys(req); !slices.Equal(got, c.req) {
				t.Errorf("request allowlist\n got %q\nwant %q", got, c.req)
			}
			if got := hdKeys(resp); !slices.Equal(got, c.resp) {
				t.Errorf("response allowlist\n got %q\nwant %q", got, c.resp)
			}
		})
	}

	// D1/D11: without ws, Upgrade never passes upstream, even when allowed.
	req, _ := buildAllowlists(CredentialsRequire, []string{"Upgrade", "Connection", "HTTP2-Settings"}, nil, false)
	for _, name := range []string{"Upgrade", "Http2-Settings"} {
		if _, ok := req[name]; ok {
			t.Errorf("%s allowed upstream without ws", name)
		}
	}
}

func hdHandler(credentials string, allowed, upstreamSet []string, upgrade bool) *Handler {
	h := &Handler{Credentials: credentials, AllowedHeaders: allowed, UpstreamHeaders: upstreamSet, AllowUpgrade: upgrade}
	h.setAllowlists()
	return h
}

func TestFilterRequestHeaders(t *testing.T) {
	in := http.Header{
		"Accept":          {"text/html"},
		"Authorization":   {"Bearer x"},
		"Cookie":          {"a=b", "c=d"},
		"X-Foo":           {"1", "2"},
		"X-Bar":           {"no"},
		"Accept-Encoding": {"gzip"},
		"Upgrade":         {"websocket"},
		"Connection":      {"Upgrade"},
	}
	orig := in.Clone()
	cases := []struct {
		name string
		h    *Handler
		in   http.Header
		want http.Header
	}{
		{"default", hdHandler(CredentialsRequire, nil, nil, false), in,
			http.Header{"Accept": {"text/html"}}},
		{"forward", hdHandler(CredentialsForward, nil, nil, false), in,
			http.Header{"Accept": {"text/html"}, "Authorization": {"Bearer x"}}},
		{"allowedHeaders, case-insensitive, all values", hdHandler(CredentialsRequire, []string{"x-foo", "COOKIE"}, nil, false), in,
			http.Header{"Accept": {"text/html"}, "X-Foo": {"1", "2"}, "Cookie": {"a=b", "c=d"}}},
		{"headers: keys", hdHandler(CredentialsRequire, nil, []string{"x-bar"}, false), in,
			http.Header{"Accept": {"text/html"}, "X-Bar": {"no"}}},
		{"ws keeps a websocket upgrade", hdHandler(CredentialsRequire, nil, nil, true), in,
			http.Header{"Accept": {"text/html"}, "Upgrade": {"websocket"}, "Connection": {"Upgrade"}}},
		{"ws keeps WebSocket in any case", hdHandler(CredentialsRequire, nil, nil, true),
			http.Header{"Upgrade": {"WebSocket"}, "Connection": {"upgrade"}},
			http.Header{"Upgrade": {"WebSocket"}, "Connection": {"upgrade"}}},
		{"ws drops an h2c upgrade (D11)", hdHandler(CredentialsRequire, nil, nil, true),
			http.Header{"Upgrade": {"h2c"}, "Connection": {"Upgrade, HTTP2-Settings"}, "Http2-Settings": {"AAA"}},
			http.Header{"Connection": {"Upgrade, HTTP2-Settings"}}},
		{"ws drops a doubled Upgrade", hdHandler(CredentialsRequire, nil, nil, true),
			http.Header{"Upgrade": {"websocket", "h2c"}},
			http.Header{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := c.h.filterRequestHeaders(c.in)
			if !hdEqual(got, c.want) {
				t.Errorf("got %v, want %v", got, c.want)
			}
		})
	}
	if !hdEqual(in, orig) {
		t.Errorf("the client's header map was modified: %v", in)
	}
}

func hdEqual(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

// hdServe runs next behind a responseFilter in a real HTTP server, so that
// 1xx, Flush and Hijack go through net/http. before runs on the real writer
// before the filter is installed (headers set by earlier handlers).
func hdServe(t *testing.T, allowed []string, upgrade bool, before func(http.ResponseWriter), next http.HandlerFunc) *httptest.Server {
	t.Helper()
	_, resp := buildAllowlists(CredentialsRequire, allowed, nil, upgrade)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if before != nil {
			before(w)
		}
		next(newResponseFilter(w, resp, upgrade), r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func hdUpstreamHeaders(h http.Header) {
	h.Set("Content-Type", "text/plain")
	h.Set("Cache-Control", "no-store")
	h.Add("Set-Cookie", "a=b")
	h.Set("X-Upstream", "1")
	h.Set("Location", "http://internal/x")
	h.Set("Content-Encoding", "identity")
}

func hdGet(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DisableCompression: true}, Timeout: 10 * time.Second,
		CheckRedirect: dontFollowRedirects}
	res, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

func hdAssertOnly(t *testing.T, h http.Header, want map[string]string, absent ...string) {
	t.Helper()
	for k, v := range want {
		if got := strings.Join(h[k], ","); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	for _, k := range absent {
		if v, ok := h[k]; ok {
			t.Errorf("%s = %q, want absent", k, v)
		}
	}
}

// Conformance 36 and 37: Backstage's unit tests of the response filter
// (plugins/proxy-backend/src/service/router.test.ts).
func TestResponseFilterConformance(t *testing.T) {
	cases := []struct {
		name     string
		allowed  []string
		upstream http.Header
		want     []string
	}{
		{"36 default response headers", nil, http.Header{
			"Cache-Control": {"x"}, "Content-Language": {"x"}, "Content-Length": {"0"}, "Content-Type": {"x"},
			"Expires": {"x"}, "Last-Modified": {"x"}, "Pragma": {"x"}, "Set-Cookie": {"x"},
		}, []string{"Cache-Control", "Content-Language", "Content-Length", "Content-Type", "Expires", "Last-Modified", "Pragma"}},
		{"37 allowedHeaders set-cookie", []string{"set-cookie"}, http.Header{
			"Set-Cookie": {}, "X-Auth-Request-User": {"asd"},
		}, []string{"Set-Cookie"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, resp := buildAllowlists(CredentialsRequire, c.allowed, nil, false)
			w := httptest.NewRecorder()
			rf := newResponseFilter(w, resp, false)
			for k, v := range c.upstream {
				rf.Header()[k] = v
			}
			rf.WriteHeader(http.StatusOK)
			var got []string
			for k := range w.Result().Header {
				got = append(got, k)
			}
			sort.Strings(got)
			if !slices.Equal(got, c.want) {
				t.Errorf("header keys %q, want %q", got, c.want)
			}
		})
	}
}

func TestResponseFilter(t *testing.T) {
	t.Run("implicit 200 on Write", func(t *testing.T) {
		srv := hdServe(t, nil, false, nil, func(w http.ResponseWriter, r *http.Request) {
			hdUpstreamHeaders(w.Header())
			_, _ = io.WriteString(w, "body")
		})
		res, body := hdGet(t, srv.URL)
		if res.StatusCode != 200 || body != "body" {
			t.Fatalf("%d %q", res.StatusCode, body)
		}
		hdAssertOnly(t, res.Header, map[string]string{"Content-Type": "text/plain", "Cache-Control": "no-store", "Content-Encoding": "identity"},
			"Set-Cookie", "X-Upstream", "Location")
	})
	t.Run("explicit status", func(t *testing.T) {
		srv := hdServe(t, []string{"location"}, false, nil, func(w http.ResponseWriter, r *http.Request) {
			hdUpstreamHeaders(w.Header())
			w.WriteHeader(http.StatusFound)
			w.WriteHeader(http.StatusTeapot) // ignored
			w.Header().Set("X-Late", "1")    // after the status: not sent
		})
		res, _ := hdGet(t, srv.URL)
		if res.StatusCode != http.StatusFound {
			t.Fatalf("status %d", res.StatusCode)
		}
		hdAssertOnly(t, res.Header, map[string]string{"Location": "http://internal/x"}, "Set-Cookie", "X-Upstream", "X-Late")
	})
	t.Run("ReadFrom filters first", func(t *testing.T) {
		srv := hdServe(t, nil, false, nil, func(w http.ResponseWriter, r *http.Request) {
			hdUpstreamHeaders(w.Header())
			rf, ok := w.(io.ReaderFrom)
			if !ok {
				t.Error("the filter is not an io.ReaderFrom")
				return
			}
			_, _ = rf.ReadFrom(strings.NewReader("copied"))
		})
		res, body := hdGet(t, srv.URL)
		if body != "copied" {
			t.Fatalf("body %q", body)
		}
		hdAssertOnly(t, res.Header, map[string]string{"Content-Type": "text/plain"}, "Set-Cookie", "X-Upstream", "Location")
	})
	t.Run("headers set before the filter are kept", func(t *testing.T) {
		srv := hdServe(t, nil, false, func(w http.ResponseWriter) {
			w.Header().Set("Server", "Caddy")
			w.Header().Set("X-Own", "server")
		}, func(w http.ResponseWriter, r *http.Request) {
			delete(w.Header(), "Server") // as reverse_proxy does, before copying the upstream's
			w.Header().Set("Server", "upstream")
			w.Header().Add("X-Own", "upstream")
			w.Header().Set("X-Upstream", "1")
			w.WriteHeader(200)
		})
		res, _ := hdGet(t, srv.URL)
		hdAssertOnly(t, res.Header, map[string]string{"Server": "Caddy", "X-Own": "server"}, "X-Upstream")
	})
	t.Run("103 then 200 keeps filtering", func(t *testing.T) {
		srv := hdServe(t, []string{"Link"}, false, nil, func(w http.ResponseWriter, r *http.Request) {
			h := w.Header()
			h.Set("Link", "</a.css>; rel=preload")
			h.Set("X-Hint", "1")
			w.WriteHeader(http.StatusEarlyHints)
			h.Set("X-Final", "1")
			h.Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(w, "ok")
		})
		var early []http.Header
		trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			if code == http.StatusEarlyHints {
				early = append(early, http.Header(h))
			}
			return nil
		}}
		req, _ := http.NewRequest("GET", srv.URL, nil)
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if len(early) != 1 {
			t.Fatalf("got %d 103 responses", len(early))
		}
		hdAssertOnly(t, early[0], map[string]string{"Link": "</a.css>; rel=preload"}, "X-Hint")
		if res.StatusCode != 200 || string(b) != "ok" {
			t.Fatalf("final %d %q", res.StatusCode, b)
		}
		hdAssertOnly(t, res.Header, map[string]string{"Content-Type": "text/plain", "Link": "</a.css>; rel=preload"}, "X-Hint", "X-Final")
	})
	for _, upgrade := range []bool{true, false} {
		name := "101 without allow_upgrade drops upgrade headers"
		if upgrade {
			name = "101 with allow_upgrade keeps upgrade headers"
		}
		t.Run(name, func(t *testing.T) {
			srv := hdServe(t, nil, upgrade, nil, func(w http.ResponseWriter, r *http.Request) {
				h := w.Header()
				h.Set("Connection", "Upgrade")
				h.Set("Upgrade", "websocket")
				h.Set("Sec-Websocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
				h.Set("X-Other", "1")
				w.WriteHeader(http.StatusSwitchingProtocols)
				rc := http.NewResponseController(w)
				if err := rc.Flush(); err != nil {
					t.Errorf("Flush: %v", err)
				}
				conn, brw, err := rc.Hijack()
				if err != nil {
					t.Errorf("Hijack: %v", err)
					return
				}
				defer conn.Close()
				_, _ = brw.WriteString("raw-after-101")
				_ = brw.Flush()
			})
			res, rest := hdRaw(t, srv, "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
			if res.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("status %d", res.StatusCode)
			}
			if rest != "raw-after-101" {
				t.Errorf("after the 101: %q", rest)
			}
			if upgrade {
				hdAssertOnly(t, res.Header, map[string]string{"Connection": "Upgrade", "Upgrade": "websocket",
					"Sec-Websocket-Accept": "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="}, "X-Other")
			} else {
				hdAssertOnly(t, res.Header, nil, "Upgrade", "Sec-Websocket-Accept", "X-Other")
				if strings.EqualFold(res.Header.Get("Connection"), "upgrade") {
					t.Errorf("Connection: %q", res.Header.Get("Connection"))
				}
			}
		})
	}
	t.Run("upgrade headers on a 200 are filtered even with allow_upgrade", func(t *testing.T) {
		srv := hdServe(t, nil, true, nil, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Upgrade", "websocket")
			w.Header().Set("Sec-Websocket-Accept", "x")
			w.WriteHeader(200)
		})
		res, _ := hdGet(t, srv.URL)
		hdAssertOnly(t, res.Header, nil, "Upgrade", "Sec-Websocket-Accept")
	})
	t.Run("Flush reaches the client", func(t *testing.T) {
		got := make(chan struct{})
		srv := hdServe(t, nil, false, nil, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Upstream", "1")
			_, _ = io.WriteString(w, "first;")
			if err := http.NewResponseController(w).Flush(); err != nil {
				t.Errorf("Flush: %v", err)
			}
			select {
			case <-got:
			case <-time.After(5 * time.Second):
				return
			}
			_, _ = io.WriteString(w, "second")
		})
		res, err := http.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		if res.Header.Get("X-Upstream") != "" {
			t.Errorf("X-Upstream not filtered")
		}
		br := bufio.NewReader(res.Body)
		done := make(chan string, 1)
		go func() {
			s, _ := br.ReadString(';')
			done <- s
		}()
		select {
		case s := <-done:
			if s != "first;" {
				t.Fatalf("first part %q", s)
			}
		case <-time.After(3 * time.Second):
			t.Fatal("flushed data did not reach the client")
		}
		close(got)
		rest, _ := io.ReadAll(br)
		if string(rest) != "second" {
			t.Errorf("rest %q", rest)
		}
	})
	t.Run("Flush before any write sends filtered headers", func(t *testing.T) {
		srv := hdServe(t, nil, false, nil, func(w http.ResponseWriter, r *http.Request) {
			hdUpstreamHeaders(w.Header())
			if err := http.NewResponseController(w).Flush(); err != nil {
				t.Errorf("Flush: %v", err)
			}
			w.Header().Set("X-Late", "1") // after the status: ignored
			_, _ = io.WriteString(w, "body")
		})
		res, body := hdGet(t, srv.URL)
		if res.StatusCode != 200 || body != "body" {
			t.Errorf("%d %q", res.StatusCode, body)
		}
		hdAssertOnly(t, res.Header, map[string]string{"Content-Type": "text/plain", "Cache-Control": "no-store"},
			"X-Upstream", "Set-Cookie", "Location", "X-Late")
	})
	t.Run("a header set before and deleted after is deleted", func(t *testing.T) {
		srv := hdServe(t, nil, false, func(w http.ResponseWriter) {
			w.Header().Set("Server", "Caddy")
		}, func(w http.ResponseWriter, r *http.Request) {
			delete(w.Header(), "Server") // as reverse_proxy does
			w.WriteHeader(204)
		})
		res, _ := hdGet(t, srv.URL)
		hdAssertOnly(t, res.Header, nil, "Server")
	})
	t.Run("Hijack reaches the connection", func(t *testing.T) {
		srv := hdServe(t, nil, false, nil, func(w http.ResponseWriter, r *http.Request) {
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Errorf("Hijack: %v", err)
				return
			}
			defer conn.Close()
			_, _ = brw.WriteString("HTTP/1.1 200 OK\r\nX-Raw: 1\r\nContent-Length: 6\r\nConnection: close\r\n\r\nraw-ok")
			_ = brw.Flush()
		})
		res, body := hdRaw(t, srv, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		if res.StatusCode != 200 || body != "raw-ok" || res.Header.Get("X-Raw") != "1" {
			t.Errorf("%d %q %v", res.StatusCode, body, res.Header)
		}
	})
}

// hdRaw sends a raw request and returns the response and everything after
// its header (the body, or the bytes after a 101).
func hdRaw(t *testing.T, srv *httptest.Server, raw string) (*http.Response, string) {
	t.Helper()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	var rest []byte
	if res.StatusCode == http.StatusSwitchingProtocols {
		rest, _ = io.ReadAll(br)
	} else {
		rest, _ = io.ReadAll(res.Body)
	}
	return res, string(rest)
}

// TestIsCanonicalHeaderName: whenever it answers true, CanonicalHeaderKey
// leaves the name unchanged (the filter then skips the second lookup).
func TestIsCanonicalHeaderName(t *testing.T) {
	cases := []struct {
		name string
		want bool
	}{
		{"Content-Type", true},
		{"X-Request-Id", true},
		{"Etag", true},
		{"Www-Authenticate", true},
		{"X-1a", true}, // after a digit, lower case
		{"", true},
		{"content-type", false},
		{"Content-type", false},
		{"ETag", false},
		{"Sec-WebSocket-Accept", false},
		{"X-1A", false},
		{"Content Type", false},
		{"Caf\xc3\xa9", false},
		{"X-\x00", false},
	}
	for _, c := range cases {
		got := isCanonicalHeaderName(c.name)
		if got != c.want {
			t.Errorf("isCanonicalHeaderName(%q) = %v, want %v", c.name, got, c.want)
		}
		if got && http.CanonicalHeaderKey(c.name) != c.name {
			t.Errorf("%q: true, but CanonicalHeaderKey gives %q", c.name, http.CanonicalHeaderKey(c.name))
		}
	}
}
