package backstageproxy

// Integration tests: a real Caddy, configured through its admin API with the
// `backstage` adapter, in front of an httptest echo upstream. The cases are
// Backstage's behaviour (plugin-proxy-backend 0.6.20, backend-defaults 0.19.0:
// its source, its tests in plugins/proxy-backend/src/service/, and answers of
// a real Backstage backend); a number ("conformance 21") is the case's number
// in the maintainers' list of them. Where the README's "Differences from
// Backstage" row differs, our behaviour is asserted and the row is named.
//
// caddytest runs one Caddy per test binary (admin and listener on ports
// reserved per test binary, see testhelpers_test.go), so these tests never
// use t.Parallel and are skipped with -short.

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/testkit"
	"github.com/caddyserver/caddy/v2/caddytest"
)

const (
	ciToken       = "Bearer static-token-123"
	ciRestricted  = "Bearer restricted-token-123"
	ciWait        = 5 * time.Second
	ciPartOne     = `{"a":`
	ciPartTwo     = `1}`
	ciBigBodySize = 5128
)

// ---------------------------------------------------------------------------
// The echo upstream.

// ciSeen is what the echo upstream received; it is also its JSON answer.
type ciSeen struct {
	Echo             bool        `json:"echo"`
	Method           string      `json:"method"`
	URI              string      `json:"uri"`
	Host             string      `json:"host"`
	Header           http.Header `json:"headers"`
	TransferEncoding []string    `json:"transferEncoding"`
	ContentLength    int64       `json:"contentLength"`
	Body             string      `json:"body"`
}

// ciUpstream is an echo server. Every request is recorded; the answer is a
// JSON description of the request, with the response headers of the
// conformance "Common assumptions". Special paths (matched on the last path
// segment, so that they work under any target path):
//
//	/redirect     302, Location <U>/new-place?x=1
//	/status418    418
//	/gzipped      gzip-compressed echo, Content-Encoding: gzip
//	/slow         waits up to 5 s, or until the request is cancelled
//	/sse          text/event-stream: one event, flush, wait for sseRelease, a second event
//	/big          5128 bytes of JSON
//	/stream-body  reads the first request-body part, signals bodyFirst, then reads the rest
type ciUpstream struct {
	recordingUpstream[ciSeen]
	mu         sync.Mutex // guards gzipBody
	sseRelease chan struct{}
	bodyFirst  chan struct{}
	gzipBody   []byte
}

func ciNewUpstream(t *testing.T) *ciUpstream {
	t.Helper()
	u := &ciUpstream{sseRelease: make(chan struct{}), bodyFirst: make(chan struct{}, 1)}
	u.Server = newTestUpstream(t, http.HandlerFunc(u.serve))
	return u
}

func (u *ciUpstream) commonHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Language", "en")
	h.Set("Expires", "Thu, 01 Jan 1970 00:00:00 GMT")
	h.Set("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT")
	h.Set("Pragma", "no-cache")
	h.Add("Set-Cookie", "a=b; Domain=localhost; Path=/")
	h.Add("Set-Cookie", "c=d; Domain=upstream.example.com; Path=/x")
	h.Set("X-Upstream", "echo")
	h.Set("ETag", `"abc"`)
	h.Set("WWW-Authenticate", `Basic realm="upstream"`)
	h.Set("Access-Control-Allow-Origin", "*")
	h.Set("Vary", "Origin")
	h.Set("Server", "echo-upstream")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Location", u.URL+"/loc")
}

func (u *ciUpstream) serve(w http.ResponseWriter, r *http.Request) {
	seen := ciSeen{
		Echo:             true,
		Method:           r.Method,
		URI:              r.RequestURI,
		Host:             r.Host,
		Header:           r.Header.Clone(),
		TransferEncoding: r.TransferEncoding,
		ContentLength:    r.ContentLength,
	}
	last := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]

	if last == "stream-body" {
		first := make([]byte, len(ciPartOne))
		if _, err := io.ReadFull(r.Body, first); err != nil {
			http.Error(w, "short first part: "+err.Error(), http.StatusBadRequest)
			return
		}
		u.bodyFirst <- struct{}{}
		rest, _ := io.ReadAll(r.Body)
		seen.Body = string(first) + string(rest)
	} else {
		b, _ := io.ReadAll(r.Body)
		seen.Body = string(b)
	}
	u.record(seen)

	echo, _ := json.Marshal(seen)
	u.commonHeaders(w)
	h := w.Header()
	status := http.StatusOK
	switch last {
	case "redirect":
		h.Set("Location", u.URL+"/new-place?x=1")
		status = http.StatusFound
	case "status418":
		status = http.StatusTeapot
	case "gzipped":
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		_, _ = zw.Write(echo)
		_ = zw.Close()
		echo = buf.Bytes()
		u.mu.Lock()
		u.gzipBody = slices.Clone(echo)
		u.mu.Unlock()
		h.Set("Content-Encoding", "gzip")
	case "slow":
		select {
		case <-time.After(5 * time.Second):
		case <-r.Context().Done():
			return
		}
	case "big":
		prefix := []byte(`{"data":"`)
		suffix := []byte(`"}`)
		echo = append(prefix, bytes.Repeat([]byte("x"), ciBigBodySize-len(prefix)-len(suffix))...)
		echo = append(echo, suffix...)
	case "sse":
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-cache")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "data: one\n\n")
		_ = http.NewResponseController(w).Flush()
		select {
		case <-u.sseRelease:
		case <-r.Context().Done():
			return
		case <-time.After(2 * ciWait): // longer than the client waits for the first event
			return
		}
		_, _ = io.WriteString(w, "data: two\n\n")
		return
	}
	h.Set("Content-Length", strconv.Itoa(len(echo)))
	w.WriteHeader(status)
	_, _ = w.Write(echo)
}

// ---------------------------------------------------------------------------
// Caddy and the client side.

// ciLoad loads testdata/integration/<name>.yaml into the test Caddy, with
// @UPSTREAM@ and the other given tokens replaced.
func ciLoad(t *testing.T, name string, replace ...string) {
	t.Helper()
	skipIfShort(t)
	raw, err := os.ReadFile(filepath.Join("testdata", "integration", name+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	loadTestCaddy(t, strings.NewReplacer(replace...).Replace(string(raw)), "backstage")
}

// ciResponse is what the client got.
type ciResponse struct {
	Status int
	Header http.Header
	Body   []byte
	// Echo is the upstream's description of the request, when the body is one.
	Echo *ciSeen
}

func ciParse(res *http.Response, body []byte) *ciResponse {
	out := &ciResponse{Status: res.StatusCode, Header: res.Header, Body: body}
	var s ciSeen
	if json.Unmarshal(body, &s) == nil && s.Echo {
		out.Echo = &s
	}
	return out
}

// ciRaw sends one request over a fresh TCP connection, byte for byte: the
// request-target is not normalised, and the only headers are Host
// (localhost:7007 unless one is given), Content-Length when there is a body,
// and the given "Name: value" lines.
func ciRaw(t *testing.T, method, target string, headers []string, body string) *ciResponse {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\n", method, target)
	hasHost, hasLength := false, false
	for _, h := range headers {
		name, _, _ := strings.Cut(h, ":")
		switch strings.ToLower(name) {
		case "host":
			hasHost = true
		case "content-length", "transfer-encoding":
			hasLength = true
		}
	}
	if !hasHost {
		b.WriteString("Host: " + testClientHost + "\r\n")
	}
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	if body != "" && !hasLength {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	b.WriteString(body)
	conn, br := sendRawToListener(t, b.String(), 10*time.Second)
	defer conn.Close()
	res, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%s %s: reading response: %v", method, target, err)
	}
	defer res.Body.Close()
	rb, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, target, err)
	}
	return ciParse(res, rb)
}

// ciClient talks to the test Caddy whatever the URL's host: it dials the
// listener, never decompresses, and never follows redirects.
func ciClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext:        dialTestListener,
			DisableCompression: true,
			DisableKeepAlives:  true,
		},
		CheckRedirect: dontFollowRedirects,
		Timeout:       10 * time.Second,
	}
}

// ---------------------------------------------------------------------------
// Table-driven cases.

// ciCase is one request and what must happen.
type ciCase struct {
	name    string
	method  string // default GET
	target  string // request-target, sent as is
	headers []string
	body    string

	status int
	// upstream is the request-target the upstream must receive; "" means the
	// upstream must see no request at all.
	upstream string
	// upMethod is the method the upstream must see (default: method).
	upMethod string
	// upHeaders must be received with exactly these values (several values
	// joined with " | "); upOnly means no other header may arrive.
	upHeaders map[string]string
	upOnly    bool
	upAbsent  []string
	upHost    string // default: the upstream's host:port (changeOrigin)
	upBody    *string

	// errBody: the exact JSON error body; Content-Type must be
	// application/json; charset=utf-8.
	errBody string
	// empty404: no body and no Content-Type.
	empty404 bool
	// badRequest: Backstage's path guard answer, text "Bad Request".
	badRequest bool
	// respDefault: the response carries exactly the DEFAULT RESPONSE
	// HEADERS of the upstream, plus respAllowed, and nothing else of the
	// upstream's.
	respDefault bool
	respAllowed map[string]string

	check func(t *testing.T, res *ciResponse, seen []ciSeen)
}

func ciRun(t *testing.T, u *ciUpstream, cases []ciCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			method := c.method
			if method == "" {
				method = http.MethodGet
			}
			u.reset()
			res := ciRaw(t, method, c.target, c.headers, c.body)
			seen := u.requests()
			if res.Status != c.status {
				t.Errorf("status = %d, want %d; body %q", res.Status, c.status, res.Body)
			}
			ciCheckUpstream(t, u, c, method, seen)
			ciCheckResponse(t, u, c, res)
			if c.check != nil {
				c.check(t, res, seen)
			}
		})
	}
}

func ciCheckUpstream(t *testing.T, u *ciUpstream, c ciCase, method string, seen []ciSeen) {
	t.Helper()
	if c.upstream == "" {
		if len(seen) != 0 {
			t.Errorf("upstream must see no request, saw %d: first %s %s", len(seen), seen[0].Method, seen[0].URI)
		}
		return
	}
	if len(seen) != 1 {
		t.Fatalf("upstream saw %d requests, want 1", len(seen))
	}
	s := seen[0]
	wantMethod := c.upMethod
	if wantMethod == "" {
		wantMethod = method
	}
	if s.Method != wantMethod || s.URI != c.upstream {
		t.Errorf("upstream got %s %s, want %s %s", s.Method, s.URI, wantMethod, c.upstream)
	}
	wantHost := c.upHost
	if wantHost == "" {
		wantHost = u.hostport()
	}
	if s.Host != wantHost {
		t.Errorf("upstream Host = %q, want %q", s.Host, wantHost)
	}
	for name, want := range c.upHeaders {
		got, ok := s.Header[http.CanonicalHeaderKey(name)]
		if !ok {
			t.Errorf("upstream header %s missing, want %q", name, want)
		} else if strings.Join(got, " | ") != want {
			t.Errorf("upstream header %s = %q, want %q", name, strings.Join(got, " | "), want)
		}
	}
	for _, name := range c.upAbsent {
		if v, ok := s.Header[http.CanonicalHeaderKey(name)]; ok {
			t.Errorf("upstream header %s must be absent, got %q", name, v)
		}
	}
	if c.upOnly {
		for name, v := range s.Header {
			found := false
			for want := range c.upHeaders {
				if http.CanonicalHeaderKey(want) == name {
					found = true
				}
			}
			if !found {
				t.Errorf("upstream got unexpected header %s: %q", name, v)
			}
		}
	}
	if c.upBody != nil && s.Body != *c.upBody {
		t.Errorf("upstream body = %q, want %q", s.Body, *c.upBody)
	}
}

// ciDefaultResponse are the upstream response headers that reach a client by
// default (conformance "DEFAULT RESPONSE HEADERS"), without Content-Length
// which depends on the body.
var ciDefaultResponse = map[string]string{
	"Content-Type":     "application/json; charset=utf-8",
	"Cache-Control":    "no-store",
	"Content-Language": "en",
	"Expires":          "Thu, 01 Jan 1970 00:00:00 GMT",
	"Last-Modified":    "Wed, 21 Oct 2015 07:28:00 GMT",
	"Pragma":           "no-cache",
}

// ciServerHeaders are the response headers the server itself adds, with
// their value ("" for any).
var ciServerHeaders = map[string]string{"Date": "", "Server": "Caddy"}

func ciIsServerHeader(name string, values []string) bool {
	want, ok := ciServerHeaders[name]
	return ok && (want == "" || (len(values) == 1 && values[0] == want))
}

func ciCheckResponse(t *testing.T, u *ciUpstream, c ciCase, res *ciResponse) {
	t.Helper()
	switch {
	case c.errBody != "":
		if got := string(res.Body); got != c.errBody {
			t.Errorf("error body\n got %s\nwant %s", got, c.errBody)
		}
		if ct := res.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
			t.Errorf("error Content-Type = %q", ct)
		}
	case c.empty404:
		if len(res.Body) != 0 {
			t.Errorf("404 body = %q, want none", res.Body)
		}
		if ct, ok := res.Header["Content-Type"]; ok {
			t.Errorf("404 has Content-Type %q, want none", ct)
		}
	case c.badRequest:
		if string(res.Body) != "Bad Request" {
			t.Errorf("body = %q, want %q", res.Body, "Bad Request")
		}
		if ct := res.Header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
			t.Errorf("Content-Type = %q, want text/plain; charset=utf-8", ct)
		}
	}
	if c.respDefault {
		ciCheckResponseHeaders(t, res, c.respAllowed)
	}
}

// ciCheckResponseHeaders asserts that the response carries the upstream's
// DEFAULT RESPONSE HEADERS, the allowed ones with the given values, and no
// other header but the server's own.
func ciCheckResponseHeaders(t *testing.T, res *ciResponse, allowed map[string]string) {
	t.Helper()
	want := map[string]string{}
	for k, v := range ciDefaultResponse {
		want[k] = v
	}
	if res.Header.Get("Content-Type") == "text/event-stream" {
		delete(want, "Content-Type")
	}
	for k, v := range allowed {
		want[http.CanonicalHeaderKey(k)] = v
	}
	for name, v := range want {
		if got := strings.Join(res.Header[name], " | "); got != v {
			t.Errorf("response header %s = %q, want %q", name, got, v)
		}
	}
	if cl := res.Header.Get("Content-Length"); cl != "" && cl != strconv.Itoa(len(res.Body)) {
		t.Errorf("Content-Length = %s, body has %d bytes", cl, len(res.Body))
	}
	var extra []string
	for name := range res.Header {
		if _, ok := want[name]; ok || name == "Content-Length" || ciIsServerHeader(name, res.Header[name]) {
			continue
		}
		extra = append(extra, name+": "+strings.Join(res.Header[name], " | "))
	}
	sort.Strings(extra)
	if len(extra) > 0 {
		t.Errorf("response headers that must not reach the client: %q", extra)
	}
}

func ciPtr[T any](v T) *T { return &v }

// ---------------------------------------------------------------------------
// The smoke test.

func TestSmokeAdapterThroughCaddy(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Upstream", "1")
		_, _ = io.WriteString(w, r.Method+" "+r.RequestURI+" host="+r.Host+" auth="+r.Header.Get("Authorization"))
	}))
	defer upstream.Close()
	tester := caddytest.NewTester(t)
	tester.InitServer(withTestPorts(staticTokenConfig(testStaticToken, "static-subject", `    /simple: `+upstream.URL+`
    /open:
      target: `+upstream.URL+`/base
      credentials: dangerously-allow-unauthenticated
`)), "backstage")
	tester.AssertGetResponse("http://localhost:"+testListenPort+"/api/proxy/open/a%2Fb?q=%20x", 200,
		"GET /base/a%2Fb?q=%20x host="+strings.TrimPrefix(upstream.URL, "http://")+" auth=")
	req, _ := http.NewRequest("GET", "http://localhost:"+testListenPort+"/api/proxy/simple/just-some-path", nil)
	req.Header.Set("Authorization", "Bearer static-token-123")
	res, err := tester.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if !strings.HasPrefix(string(b), "GET /just-some-path host=127.0.0.1:") || strings.Contains(string(b), "Bearer") {
		t.Fatalf("unexpected upstream view: %s", b)
	}
	if res.Header.Get("X-Upstream") != "" {
		t.Fatalf("X-Upstream leaked")
	}
}

// ---------------------------------------------------------------------------
// A. Credentials policies (static tokens).

func TestIntegrationCredentials(t *testing.T) {
	u := ciNewUpstream(t)
	ciLoad(t, "credentials", "@UPSTREAM@", u.URL)

	missing := func(url string) string {
		return backstageErrorBody("AuthenticationError", "Missing credentials", "GET", url, 401)
	}
	illegal := func(url string) string {
		return backstageErrorBody("AuthenticationError", "Illegal token", "GET", url, 401)
	}
	tok := []string{"Authorization: " + ciToken}
	bad := []string{"Authorization: Bearer not-valid"}
	noAuth := []string{"Authorization"}

	ciRun(t, u, []ciCase{
		// 1–3: string target
		{name: "01 string target, no token", target: "/api/proxy/simple/just-some-path",
			status: 401, errBody: missing("/simple/just-some-path")},
		{name: "02 string target, token", target: "/api/proxy/simple/just-some-path", headers: tok,
			status: 200, upstream: "/just-some-path", upHeaders: map[string]string{}, upOnly: true, respDefault: true},
		{name: "03 string target, invalid token", target: "/api/proxy/simple/p", headers: bad,
			status: 401, errBody: illegal("/simple/p")},
		// 4: object without credentials = require
		{name: "04a default, no token", target: "/api/proxy/default/p", status: 401, errBody: missing("/default/p")},
		{name: "04b default, token", target: "/api/proxy/default/p", headers: tok,
			status: 200, upstream: "/p", upAbsent: noAuth, upOnly: true},
		{name: "04c default, invalid token", target: "/api/proxy/default/p", headers: bad,
			status: 401, errBody: illegal("/default/p")},
		// 5: require
		{name: "05a require, no token", target: "/api/proxy/require/p", status: 401, errBody: missing("/require/p")},
		{name: "05b require, token", target: "/api/proxy/require/p", headers: tok,
			status: 200, upstream: "/p", upAbsent: noAuth, upOnly: true},
		{name: "05c require, invalid token", target: "/api/proxy/require/p", headers: bad,
			status: 401, errBody: illegal("/require/p")},
		// 6–7: forward
		{name: "06 forward, token forwarded verbatim", target: "/api/proxy/forward/p", headers: tok,
			status: 200, upstream: "/p", upHeaders: map[string]string{"Authorization": ciToken}, upOnly: true},
		{name: "07a forward, no token", target: "/api/proxy/forward/p", status: 401, errBody: missing("/forward/p")},
		{name: "07b forward, invalid token", target: "/api/proxy/forward/p", headers: bad,
			status: 401, errBody: illegal("/forward/p")},
		// 8: dangerously-allow-unauthenticated
		{name: "08a open, no token", target: "/api/proxy/open/p", status: 200, upstream: "/p", upOnly: true},
		{name: "08b open, token not forwarded", target: "/api/proxy/open/p", headers: tok,
			status: 200, upstream: "/p", upOnly: true, upAbsent: noAuth},
		{name: "08c open, invalid token not forwarded", target: "/api/proxy/open/p", headers: bad,
			status: 200, upstream: "/p", upOnly: true, upAbsent: noAuth},
		// 9: open + allowedHeaders [Authorization]
		{name: "09a open-fwd, no token", target: "/api/proxy/open-fwd/p", status: 200, upstream: "/p", upOnly: true},
		{name: "09b open-fwd, token", target: "/api/proxy/open-fwd/p", headers: tok,
			status: 200, upstream: "/p", upHeaders: map[string]string{"Authorization": ciToken}, upOnly: true},
		{name: "09c open-fwd, non-Backstage token", target: "/api/proxy/open-fwd/p",
			headers: []string{"Authorization: Bearer not-valid-for-backstage-but-valid-for-target"},
			status:  200, upstream: "/p", upOnly: true,
			upHeaders: map[string]string{"Authorization": "Bearer not-valid-for-backstage-but-valid-for-target"}},
		// 10: require + allowedHeaders [Authorization]
		{name: "10a require-authz, token forwarded", target: "/api/proxy/require-authz/p", headers: tok,
			status: 200, upstream: "/p", upHeaders: map[string]string{"Authorization": ciToken}, upOnly: true},
		{name: "10b require-authz, no token", target: "/api/proxy/require-authz/p",
			status: 401, errBody: missing("/require-authz/p")},
		// 11: configured headers.Authorization overrides the forwarded one
		{name: "11a forward-hdr, token", target: "/api/proxy/forward-hdr/p", headers: tok,
			status: 200, upstream: "/p", upOnly: true,
			upHeaders: map[string]string{"Authorization": "Bearer configured-upstream-token"}},
		{name: "11b forward-hdr, no token", target: "/api/proxy/forward-hdr/p",
			status: 401, errBody: missing("/forward-hdr/p")},
		// 12: scheme case-insensitive, header forwarded verbatim
		{name: "12a lower-case bearer", target: "/api/proxy/forward/p",
			headers: []string{"Authorization: bearer static-token-123"},
			status:  200, upstream: "/p", upHeaders: map[string]string{"Authorization": "bearer static-token-123"}},
		{name: "12b two spaces", target: "/api/proxy/forward/p",
			headers: []string{"Authorization: Bearer  static-token-123"},
			status:  200, upstream: "/p", upHeaders: map[string]string{"Authorization": "Bearer  static-token-123"}},
		// 13: non-Bearer scheme = no credentials
		{name: "13 basic scheme", target: "/api/proxy/require/p", headers: []string{"Authorization: Basic abc"},
			status: 401, errBody: missing("/require/p")},
		// 14: the backstage-auth cookie is never accepted
		{name: "14 backstage-auth cookie", target: "/api/proxy/require/p",
			headers: []string{"Cookie: backstage-auth=static-token-123"},
			status:  401, errBody: missing("/require/p")},
		// 20: access-restricted external token
		{name: "20 restricted token", target: "/api/proxy/require/p", headers: []string{"Authorization: " + ciRestricted},
			status: 403, errBody: backstageErrorBody("NotAllowedError", "This token's access is restricted to plugin(s) 'catalog'", "GET", "/require/p", 403)},
		{name: "20 restricted token, forward route", target: "/api/proxy/forward/p?x=1", headers: []string{"Authorization: " + ciRestricted},
			status: 403, errBody: backstageErrorBody("NotAllowedError", "This token's access is restricted to plugin(s) 'catalog'", "GET", "/forward/p?x=1", 403)},
		{name: "20 restricted token, open route proxied", target: "/api/proxy/open/p", headers: []string{"Authorization: " + ciRestricted},
			status: 200, upstream: "/p", upAbsent: noAuth},

		// Error body details: request.url keeps the query and the case,
		// relative to the mount; the method is the request's.
		{name: "error url with query", target: "/api/proxy/simple/a%20b?x=1&y=%22", status: 401,
			errBody: missing("/simple/a%20b?x=1&y=%22")},
		{name: "error url upper-case mount", target: "/API/PROXY/simple/p", status: 401,
			errBody: missing("/simple/p")},
		{name: "error method POST", method: "POST", target: "/api/proxy/require/p", body: "hi", status: 401,
			errBody: backstageErrorBody("AuthenticationError", "Missing credentials", "POST", "/require/p", 401)},
		{name: "two Authorization headers refused", target: "/api/proxy/require/p",
			headers: []string{"Authorization: " + ciToken, "Authorization: " + ciToken}, status: 401,
			check: func(t *testing.T, res *ciResponse, _ []ciSeen) {
				if res.Header.Get("Content-Type") != "application/json; charset=utf-8" {
					t.Errorf("Content-Type = %q", res.Header.Get("Content-Type"))
				}
			}},
		{name: "HEAD 401 has no body", method: "HEAD", target: "/api/proxy/require/p", status: 401,
			check: func(t *testing.T, res *ciResponse, _ []ciSeen) {
				if len(res.Body) != 0 || res.Header.Get("Content-Type") != "application/json; charset=utf-8" {
					t.Errorf("HEAD 401: body %q, Content-Type %q", res.Body, res.Header.Get("Content-Type"))
				}
			}},
	})
}

// A.21: backend.auth.dangerouslyDisableDefaultAuthPolicy.
func TestIntegrationDisabledDefaultAuthPolicy(t *testing.T) {
	u := ciNewUpstream(t)
	ciLoad(t, "disabled-auth", "@UPSTREAM@", u.URL)
	garbage := []string{"Authorization: Bearer garbage"}
	ciRun(t, u, []ciCase{
		{name: "21a require, garbage token, not forwarded", target: "/api/proxy/req/a", headers: garbage,
			status: 200, upstream: "/a", upOnly: true, upAbsent: []string{"Authorization"}},
		{name: "21b forward, no token", target: "/api/proxy/fwd/a", status: 200, upstream: "/a", upOnly: true},
		{name: "21c forward, garbage token forwarded", target: "/api/proxy/fwd/a", headers: garbage,
			status: 200, upstream: "/a", upHeaders: map[string]string{"Authorization": "Bearer garbage"}, upOnly: true},
		// Unknown paths: nothing asks for credentials any more.
		{name: "unknown path anonymous", target: "/api/proxy/nope/x", status: 404, empty404: true},
	})
}

// ---------------------------------------------------------------------------
// B. Methods.

func TestIntegrationMethods(t *testing.T) {
	u := ciNewUpstream(t)
	ciLoad(t, "methods", "@UPSTREAM@", u.URL)
	tok := []string{"Authorization: " + ciToken}
	ciRun(t, u, []ciCase{
		// 22: [GET, DELETE]; default rewrite; changeOrigin true
		{name: "22 GET", target: "/api/proxy/test/x", status: 200, upstream: "/x"},
		{name: "22 DELETE", method: "DELETE", target: "/api/proxy/test/x", status: 200, upstream: "/x"},
		{name: "22 POST", method: "POST", target: "/api/proxy/test/x", body: "{}", status: 404, empty404: true},
		{name: "22 PUT", method: "PUT", target: "/api/proxy/test/x", body: "{}", status: 404, empty404: true},
		{name: "22 PATCH", method: "PATCH", target: "/api/proxy/test/x", body: "{}", status: 404, empty404: true},
		// 23
		{name: "23a GET", target: "/api/proxy/methods/a", status: 200, upstream: "/a"},
		{name: "23b POST", method: "POST", target: "/api/proxy/methods/a", body: "{}", status: 404, empty404: true},
		{name: "23c HEAD not implied by GET", method: "HEAD", target: "/api/proxy/methods/a", status: 404, empty404: true},
		// 24
		{name: "24a POST require, no token", method: "POST", target: "/api/proxy/methods-req/a", body: "{}",
			status: 401, errBody: backstageErrorBody("AuthenticationError", "Missing credentials", "POST", "/methods-req/a", 401)},
		{name: "24b POST require, token", method: "POST", target: "/api/proxy/methods-req/a", body: "{}", headers: tok,
			status: 404, empty404: true},
		{name: "24 GET require, token", target: "/api/proxy/methods-req/a", headers: tok, status: 200, upstream: "/a"},
		// 25
		{name: "25a GET first route wins", target: "/api/proxy/nested/inner/x", status: 200, upstream: "/outer/inner/x"},
		{name: "25b POST falls through", method: "POST", target: "/api/proxy/nested/inner/x", body: "hi",
			status: 200, upstream: "/inner/x", upBody: ciPtr("hi")},
	})
}

// ---------------------------------------------------------------------------
// C. Request headers.

func TestIntegrationRequestHeaders(t *testing.T) {
	const secret = "s3cr3t-value-9f2c"
	t.Setenv("CI_PROXY_SECRET", secret)
	u := ciNewUpstream(t)
	ciLoad(t, "request-headers", "@UPSTREAM@", u.URL)

	ciRun(t, u, []ciCase{
		// 26: the default request filter
		{name: "26 default filter", method: "POST", target: "/api/proxy/open/a", body: "hello",
			headers: []string{
				"Cache-Control: no-cache", "Content-Language: de", "Content-Type: text/plain", "Expires: 0",
				"Last-Modified: x", "Pragma: no-cache", "Accept: text/html", "Accept-Language: de",
				"User-Agent: probe/1", "Accept-Encoding: gzip", "Cookie: x=y", "X-Foo: bar",
				"X-Forwarded-For: 1.2.3.4", "Origin: http://evil", "Referer: http://ref",
				`If-None-Match: "abc"`, "Range: bytes=0-1", "Content-Length: 5",
				"X-Forwarded-Host: evil.example", "X-Forwarded-Proto: https", "Forwarded: for=1.2.3.4",
				"Via: 1.1 evil", "Traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
				"Upgrade: h2c", "Http2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
			},
			status: 200, upstream: "/a", upBody: ciPtr("hello"), upOnly: true,
			upHeaders: map[string]string{
				"Content-Length": "5", "User-Agent": "probe/1", "Accept-Language": "de", "Accept": "text/html",
				"Pragma": "no-cache", "Last-Modified": "x", "Expires": "0", "Content-Type": "text/plain",
				"Content-Language": "de", "Cache-Control": "no-cache",
			}},
		// 27: configured headers are allowed and override the client's
		{name: "27 configured headers override", target: "/api/proxy/headers/a",
			headers: []string{"Authorization: Bearer client", "X-Custom: client-value", "x-other: q"},
			status:  200, upstream: "/a", upOnly: true,
			upHeaders: map[string]string{"Authorization": "Bearer upstream-secret", "X-Custom": "configured"}},
		{name: "27 configured headers without client values", target: "/api/proxy/headers/a",
			status: 200, upstream: "/a", upOnly: true,
			upHeaders: map[string]string{"Authorization": "Bearer upstream-secret", "X-Custom": "configured"}},
		// 28: allowedHeaders, request direction, case-insensitive
		{name: "28 allowedHeaders", target: "/api/proxy/allowed/a",
			headers: []string{"x-foo: bar", "Cookie: x=y", "X-Bar: baz", "Authorization: Bearer zzz"},
			status:  200, upstream: "/a", upOnly: true,
			upHeaders: map[string]string{"Cookie": "x=y", "X-Foo": "bar"}},
		// 29–31: Host
		{name: "29 changeOrigin default", target: "/api/proxy/open/a", headers: []string{"Host: my.backstage.example:7007"},
			status: 200, upstream: "/a"},
		{name: "30 changeOrigin false", target: "/api/proxy/nochange/a", headers: []string{"Host: my.backstage.example:7007"},
			status: 200, upstream: "/a", upHost: "my.backstage.example:7007", upOnly: true},
		{name: "31 headers.Host wins", target: "/api/proxy/hosthdr/a", headers: []string{"Host: my.backstage.example:7007"},
			status: 200, upstream: "/a", upHost: "custom.example", upOnly: true},
		// 32: xfwd
		{name: "32 xfwd", target: "/api/proxy/xfwd/a", headers: []string{"X-Forwarded-For: 9.9.9.9"},
			status: 200, upstream: "/a", upOnly: true,
			upHeaders: map[string]string{
				"X-Forwarded-Host": "localhost:7007", "X-Forwarded-Proto": "http",
				"X-Forwarded-Port": "7007", "X-Forwarded-For": "127.0.0.1",
			}},
		{name: "no X-Forwarded-* or Via without xfwd", target: "/api/proxy/open/a",
			headers: []string{"X-Forwarded-For: 9.9.9.9", "X-Forwarded-Host: evil", "Via: 1.0 x"},
			status:  200, upstream: "/a", upOnly: true},
		// 33: DELETE without a body. Backstage (Node) adds Content-Length: 0;
		// Go's transport sends no Content-Length for a bodiless DELETE. Both
		// frame an empty body; what matters is that it is not chunked.
		{name: "33 DELETE without body", method: "DELETE", target: "/api/proxy/open/a",
			status: 200, upstream: "/a", upBody: ciPtr(""),
			check: func(t *testing.T, _ *ciResponse, seen []ciSeen) {
				if te := seen[0].TransferEncoding; len(te) != 0 {
					t.Errorf("upstream Transfer-Encoding = %q, want none", te)
				}
				if cl, ok := seen[0].Header["Content-Length"]; ok && !slices.Equal(cl, []string{"0"}) {
					t.Errorf("upstream Content-Length = %q, want 0 or none", cl)
				}
			}},
		// 34: chunked request body
		{name: "34 chunked body", method: "POST", target: "/api/proxy/open/chunked",
			headers: []string{"Transfer-Encoding: chunked", "Content-Type: application/json"},
			body:    "5\r\n" + ciPartOne + "\r\n2\r\n" + ciPartTwo + "\r\n0\r\n\r\n",
			status:  200, upstream: "/chunked", upBody: ciPtr(ciPartOne + ciPartTwo), upOnly: true,
			upHeaders: map[string]string{"Content-Type": "application/json"},
			check: func(t *testing.T, _ *ciResponse, seen []ciSeen) {
				if !slices.Equal(seen[0].TransferEncoding, []string{"chunked"}) {
					t.Errorf("upstream Transfer-Encoding = %q, want chunked", seen[0].TransferEncoding)
				}
			}},
		// 35: Accept-Encoding is stripped, nobody compresses
		{name: "35 Accept-Encoding stripped", target: "/api/proxy/open/big", headers: []string{"Accept-Encoding: gzip"},
			status: 200, upstream: "/big", upAbsent: []string{"Accept-Encoding"},
			check: func(t *testing.T, res *ciResponse, _ []ciSeen) {
				if ce := res.Header.Get("Content-Encoding"); ce != "" {
					t.Errorf("Content-Encoding = %q, want none", ce)
				}
				if cl := res.Header.Get("Content-Length"); cl != strconv.Itoa(ciBigBodySize) || len(res.Body) != ciBigBodySize {
					t.Errorf("Content-Length = %q, body %d bytes; want %d", cl, len(res.Body), ciBigBodySize)
				}
			}},
		// headers: with ${VAR} values reach the upstream
		{name: "env header values", target: "/api/proxy/envhdr/a", headers: []string{"Authorization: " + ciToken, "X-Api-Key: client"},
			status: 200, upstream: "/a", upOnly: true,
			upHeaders: map[string]string{"X-Api-Key": secret, "X-Mixed": "prefix-" + secret + "-suffix", "X-Literal": "{not-a-placeholder}"}},
		// HEAD goes upstream as HEAD; the response has headers but no body
		{name: "HEAD", method: "HEAD", target: "/api/proxy/open/a", status: 200, upstream: "/a", upOnly: true,
			check: func(t *testing.T, res *ciResponse, seen []ciSeen) {
				if len(res.Body) != 0 {
					t.Errorf("HEAD response body = %q", res.Body)
				}
				if res.Header.Get("Content-Type") != "application/json; charset=utf-8" || res.Header.Get("Content-Length") == "" {
					t.Errorf("HEAD response headers: %v", res.Header)
				}
				if res.Header.Get("Set-Cookie") != "" || res.Header.Get("X-Upstream") != "" {
					t.Errorf("HEAD response not filtered: %v", res.Header)
				}
			}},
	})

	// The adapted JSON holds the placeholder, never the secret.
	t.Run("env secret not in config", func(t *testing.T) {
		cfg := runningCaddyConfig(t)
		if strings.Contains(cfg, secret) {
			t.Errorf("the secret is in the running config")
		}
		for _, want := range []string{`"{env.CI_PROXY_SECRET}"`, `"prefix-{env.CI_PROXY_SECRET}-suffix"`} {
			if !strings.Contains(cfg, want) {
				t.Errorf("config lacks %s", want)
			}
		}
	})

	// Request bodies are streamed: the second part is sent only after the
	// upstream has read the first.
	t.Run("request body streams unbuffered", func(t *testing.T) {
		u.reset()
		pr, pw := io.Pipe()
		req, _ := http.NewRequest("POST", "http://"+testClientHost+"/api/proxy/open/stream-body", pr)
		req.Header.Set("Content-Type", "application/json")
		type result struct {
			res *ciResponse
			err error
		}
		done := make(chan result, 1)
		go func() {
			res, err := ciClient().Do(req)
			if err != nil {
				done <- result{err: err}
				return
			}
			defer res.Body.Close()
			b, err := io.ReadAll(res.Body)
			done <- result{ciParse(res, b), err}
		}()
		if _, err := io.WriteString(pw, ciPartOne); err != nil {
			t.Fatal(err)
		}
		select {
		case <-u.bodyFirst:
		case r := <-done:
			t.Fatalf("request ended before the upstream saw the first part: %v", r.err)
		case <-time.After(ciWait):
			_ = pw.CloseWithError(fmt.Errorf("timeout"))
			t.Fatal("the upstream did not get the first part before the second was sent: the body is buffered")
		}
		_, _ = io.WriteString(pw, ciPartTwo)
		_ = pw.Close()
		r := <-done
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.res.Status != 200 || r.res.Echo == nil || r.res.Echo.Body != ciPartOne+ciPartTwo {
			t.Fatalf("status %d, echo %+v", r.res.Status, r.res.Echo)
		}
		if !slices.Equal(r.res.Echo.TransferEncoding, []string{"chunked"}) {
			t.Errorf("upstream Transfer-Encoding = %q", r.res.Echo.TransferEncoding)
		}
	})
}

// ---------------------------------------------------------------------------
// D. Response headers.

func TestIntegrationResponseHeaders(t *testing.T) {
	u := ciNewUpstream(t)
	ciLoad(t, "response-headers", "@UPSTREAM@", u.URL)
	allowed := map[string]string{
		"Set-Cookie": "a=b; Domain=localhost; Path=/ | c=d; Domain=upstream.example.com; Path=/x",
		"ETag":       `"abc"`,
		"Location":   u.URL + "/loc",
	}
	ciRun(t, u, []ciCase{
		// 38 (and 36 end to end): only the default response headers
		{name: "38 default response headers", target: "/api/proxy/open/p", status: 200, upstream: "/p", respDefault: true},
		// 39 (and 37 end to end): allowedHeaders, response direction
		{name: "39 allowed response headers", target: "/api/proxy/allowed/a", status: 200, upstream: "/a",
			respDefault: true, respAllowed: allowed},
		// 40: a redirect loses its Location by default
		{name: "40 redirect without Location", target: "/api/proxy/open/redirect", status: 302, upstream: "/redirect",
			respDefault: true},
		{name: "40 redirect, Location allowed", target: "/api/proxy/allowed/redirect", status: 302, upstream: "/redirect",
			respDefault: true, respAllowed: map[string]string{
				"Location": u.URL + "/new-place?x=1", "Set-Cookie": allowed["Set-Cookie"], "ETag": allowed["ETag"]}},
		// 44: status passthrough
		{name: "44 status 418", target: "/api/proxy/open/status418", status: 418, upstream: "/status418", respDefault: true,
			check: func(t *testing.T, res *ciResponse, _ []ciSeen) {
				if res.Echo == nil || res.Echo.URI != "/status418" {
					t.Errorf("body is not the upstream's: %q", res.Body)
				}
			}},
		// 45 per D5: Content-Encoding always reaches the client
		{name: "45 gzip from upstream keeps Content-Encoding (D5)", target: "/api/proxy/open/gzipped",
			status: 200, upstream: "/gzipped", respDefault: true, respAllowed: map[string]string{"Content-Encoding": "gzip"},
			check: func(t *testing.T, res *ciResponse, _ []ciSeen) { ciCheckGzip(t, u, res) }},
		{name: "45 with allowedHeaders [Accept-Encoding, Content-Encoding]", target: "/api/proxy/encoding/gzipped",
			headers: []string{"Accept-Encoding: gzip"},
			status:  200, upstream: "/gzipped", upHeaders: map[string]string{"Accept-Encoding": "gzip"}, upOnly: true,
			respDefault: true, respAllowed: map[string]string{"Content-Encoding": "gzip"},
			check: func(t *testing.T, res *ciResponse, _ []ciSeen) { ciCheckGzip(t, u, res) }},
	})

	// 41–43: Location and cookie rewriting.
	t.Run("41-43 autoRewrite hostRewrite cookie*Rewrite", func(t *testing.T) {
		ciRun(t, u, []ciCase{
			{name: "41 autoRewrite", target: "/api/proxy/autorewrite/redirect", status: 302, upstream: "/redirect",
				respDefault: true, respAllowed: map[string]string{"Location": "http://" + testClientHost + "/new-place?x=1"}},
			{name: "41 autoRewrite only on 201/301/302/307/308", target: "/api/proxy/autorewrite/a", status: 200, upstream: "/a",
				respDefault: true, respAllowed: map[string]string{"Location": u.URL + "/loc"}},
			{name: "42 hostRewrite protocolRewrite", target: "/api/proxy/hostrw/redirect", status: 302, upstream: "/redirect",
				respDefault: true, respAllowed: map[string]string{"Location": "https://public.example.com/new-place?x=1"}},
			{name: "43a cookieDomainRewrite string", target: "/api/proxy/cookiedomain/a", status: 200, upstream: "/a",
				respDefault: true, respAllowed: map[string]string{
					"Set-Cookie": "a=b; Domain=cookies.example.com; Path=/ | c=d; Domain=cookies.example.com; Path=/x"}},
			{name: "43b cookiePathRewrite and cookieDomainRewrite maps", target: "/api/proxy/cookiepath/a", status: 200, upstream: "/a",
				respDefault: true, respAllowed: map[string]string{
					"Set-Cookie": "a=b; Path=/ | c=d; Domain=upstream.example.com; Path=/api/proxy/cookiepath/x"}},
		})
	})

	// Server-sent events are streamed: the first event reaches the client
	// while the upstream is still waiting to send the second.
	t.Run("SSE streams", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "http://"+testClientHost+"/api/proxy/open/sse", nil)
		req.Header.Set("Accept", "text/event-stream")
		res, err := ciClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		if res.StatusCode != 200 || res.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("status %d, Content-Type %q", res.StatusCode, res.Header.Get("Content-Type"))
		}
		if res.Header.Get("Cache-Control") != "no-cache" || res.Header.Get("Set-Cookie") != "" || res.Header.Get("X-Upstream") != "" {
			t.Errorf("SSE response headers not filtered: %v", res.Header)
		}
		br := bufio.NewReader(res.Body)
		first := make(chan string, 1)
		go func() {
			var b strings.Builder
			for {
				line, err := br.ReadString('\n')
				b.WriteString(line)
				if err != nil || line == "\n" {
					first <- b.String()
					return
				}
			}
		}()
		select {
		case ev := <-first:
			if ev != "data: one\n\n" {
				t.Fatalf("first event = %q", ev)
			}
		case <-time.After(ciWait):
			t.Fatal("the first event did not reach the client before the upstream finished: the response is buffered")
		}
		close(u.sseRelease) // only now may the upstream send the second event and finish
		rest, err := io.ReadAll(br)
		if err != nil {
			t.Fatal(err)
		}
		if string(rest) != "data: two\n\n" {
			t.Errorf("rest of stream = %q", rest)
		}
	})
}

// ciCheckGzip asserts the client got the upstream's gzip bytes unchanged.
func ciCheckGzip(t *testing.T, u *ciUpstream, res *ciResponse) {
	t.Helper()
	u.mu.Lock()
	want := u.gzipBody
	u.mu.Unlock()
	if !bytes.Equal(res.Body, want) {
		t.Fatalf("body is not the upstream's gzip bytes")
	}
	zr, err := gzip.NewReader(bytes.NewReader(res.Body))
	if err != nil {
		t.Fatal(err)
	}
	plain, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	var s ciSeen
	if err := json.Unmarshal(plain, &s); err != nil || !s.Echo {
		t.Fatalf("decompressed body is not the echo: %q", plain)
	}
}

// ---------------------------------------------------------------------------
// E. Path, query, trailing slash, target path; the path guard.

func TestIntegrationPaths(t *testing.T) {
	u := ciNewUpstream(t)
	ciLoad(t, "paths", "@UPSTREAM@", u.URL)
	tok := []string{"Authorization: " + ciToken}
	missing := func(url string) string {
		return backstageErrorBody("AuthenticationError", "Missing credentials", "GET", url, 401)
	}
	ok := func(name, target, upstream string) ciCase {
		return ciCase{name: name, target: target, status: 200, upstream: upstream, upOnly: true}
	}
	bad := func(name, target string) ciCase {
		return ciCase{name: name, target: target, status: 400, badRequest: true}
	}
	cases := []ciCase{
		ok("46 route root", "/api/proxy/open", "/"),
		ok("47a route root with query", "/api/proxy/open?a=1&b=2", "/?a=1&b=2"),
		ok("47b route root slash with query", "/api/proxy/open/?a=1", "/?a=1"),
		ok("48a trailing slash kept", "/api/proxy/open/a/b/", "/a/b/"),
		ok("48b slashes collapsed", "/api/proxy/open//a//b", "/a/b"),
		ok("48c encoding untouched", "/api/proxy/open/a%20b/c%2Fd?q=%20x", "/a%20b/c%2Fd?q=%20x"),
		ok("48 query bytes untouched", "/api/proxy/open/a?q=a+b&r=%2F%2f&s=//x&t=%C3%A9", "/a?q=a+b&r=%2F%2f&s=//x&t=%C3%A9"),
		ok("49a target path, slash appended", "/api/proxy/withpath", "/api/v1/"),
		ok("49b target path", "/api/proxy/withpath/x/y?z=1", "/api/v1/x/y?z=1"),
		ok("50a target with trailing slash", "/api/proxy/withpath-slash/x", "/api/v1/x"),
		ok("50b target with trailing slash, route root", "/api/proxy/withpath-slash", "/api/v1/"),
		ok("51a target query first (D3)", "/api/proxy/withquery/x?z=1", "/api/x?key=abc&z=1"),
		ok("51b target query, route root (D3)", "/api/proxy/withquery", "/api/?key=abc"),
		ok("52a pathRewrite first match only", "/api/proxy/rewrite/old/thing?q=1", "/base/new/thing?q=1"),
		ok("52b pathRewrite second rule", "/api/proxy/rewrite/zzz", "/base/other/zzz"),
		ok("53 empty pathRewrite", "/api/proxy/rewrite-empty/zzz?q=1", "/base/api/proxy/rewrite-empty/zzz?q=1"),
		ok("pathRewrite $n groups (JS $1x is group 1 then x)", "/api/proxy/groups/aa/bb/cc?q=1", "/bb/aax/cc?q=1"),
		ok("ignorePath", "/api/proxy/ignorepath/some/path?q=1", "/fixed?k=v"),
		ok("prependPath false", "/api/proxy/noprepend/some/path?q=1", "/some/path?q=1"),
		// 55 per D2: the matched prefix is stripped whatever its case
		ok("55a upper-case route (D2)", "/api/proxy/OPEN/a", "/a"),
		ok("55b upper-case mount (D2)", "/API/PROXY/open/a", "/a"),
		ok("55c lower-case request, mixed-case key (D2)", "/api/proxy/mixed/a", "/a"),
		ok("55d exact case", "/api/proxy/Mixed/a", "/a"),
		// 56 per D6: a leading slash is added to the key
		ok("56a key without leading slash, anonymous (D6)", "/api/proxy/noslash/a", "/a"),
		{name: "56b key without leading slash, token (D6)", target: "/api/proxy/noslash/a", headers: tok,
			status: 200, upstream: "/a", upOnly: true},
		// 57 per D6: a trailing slash in the key is ignored, for matching and auth
		ok("57a trailing-slash key, anonymous, slash", "/api/proxy/trail/", "/"),
		ok("57b trailing-slash key, anonymous (D6)", "/api/proxy/trail/a", "/a"),
		{name: "57c trailing-slash key, token", target: "/api/proxy/trail/a", headers: tok,
			status: 200, upstream: "/a", upOnly: true},
		{name: "57d trailing-slash key, no slash, token", target: "/api/proxy/trail", headers: tok,
			status: 200, upstream: "/", upOnly: true},
		// 58: segment boundary
		{name: "58a prefix-similar, anonymous", target: "/api/proxy/openx/a", status: 401, errBody: missing("/openx/a")},
		{name: "58b prefix-similar, token", target: "/api/proxy/openx/a", headers: tok, status: 404, empty404: true},
		// 59: unknown route and the plugin root
		{name: "59a unknown, anonymous", target: "/api/proxy/nope/x", status: 401, errBody: missing("/nope/x")},
		{name: "59b unknown, token", target: "/api/proxy/nope/x", headers: tok, status: 404, empty404: true},
		{name: "59c plugin root, anonymous", target: "/api/proxy", status: 401, errBody: missing("/")},
		{name: "59c plugin root slash, anonymous", target: "/api/proxy/", status: 401, errBody: missing("/")},
		{name: "59c plugin root with query, anonymous", target: "/api/proxy?x=1", status: 401, errBody: missing("/?x=1")},
		{name: "59c plugin root, token", target: "/api/proxy", headers: tok, status: 404, empty404: true},
		{name: "outside the mount", target: "/api/catalog/x", status: 404, empty404: true},
		{name: "mount prefix without boundary", target: "/api/proxyx/open/a", status: 404, empty404: true},
		// 60: the traversal guard
		bad("60a ..", "/api/proxy/open/a/../b"),
		bad("60b %2e%2e", "/api/proxy/open/a/%2e%2e/b"),
		bad("60b %2E%2E", "/api/proxy/open/a/%2E%2E/b"),
		bad("60b .%2e", "/api/proxy/open/a/.%2e/b"),
		bad("60c ..%2f", "/api/proxy/open/a/..%2fb"),
		bad("60d ..%5c", "/api/proxy/open/a/..%5cb"),
		bad("60 trailing ..", "/api/proxy/open/a/.."),
		bad("60 raw backslash", `/api/proxy/open/a\..\b`),
		bad("D10 ..;", "/api/proxy/open/a/..;/b"),
		bad("D10 ..;/..; escaping the target path", "/api/proxy/withpath/..;/..;/x"),
		bad("D10 ..;jsessionid", "/api/proxy/open/a/..;jsessionid=1/b"),
		bad("D10 %2e%2e%3b", "/api/proxy/open/a/%2e%2e%3b/b"),
		bad("D10 double-encoded %252e%252e", "/api/proxy/open/a/%252e%252e/b"),
		bad("D10 double-encoded ..%252f", "/api/proxy/open/a/..%252fb"),
		bad("D10 ..%5c at the end", "/api/proxy/open/a/..%5c"),
		bad("D10 %00", "/api/proxy/open/a/%00"),
		bad("D10 %0d%0a", "/api/proxy/open/a/%0d%0aX-Injected:%201"),
		bad("D10 overlong UTF-8 dots", "/api/proxy/open/a/%c0%ae%c0%ae/b"),
		bad("D10 invalid UTF-8", "/api/proxy/open/a/%ff"),
		// 60e: a malformed escape. Go's HTTP server refuses the request line
		// itself (400 "400 Bad Request"), before any handler.
		{name: "60e malformed escape", target: "/api/proxy/open/a%zz", status: 400,
			check: func(t *testing.T, res *ciResponse, _ []ciSeen) {
				if ct := res.Header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
					t.Errorf("Content-Type = %q", ct)
				}
			}},
		// 61: non-triggers
		ok("61a .. in the query", "/api/proxy/open/a?x=../..", "/a?x=../.."),
		ok("61b ... segment", "/api/proxy/open/a/.../b", "/a/.../b"),
		ok("61 encoded .. in the query", "/api/proxy/open/a?x=%2e%2e%2f", "/a?x=%2e%2e%2f"),
		ok("61 ..x and x.. segments", "/api/proxy/open/..x/x../.;/b", "/..x/x../.;/b"),
		// 62: the barrier runs before the guard
		{name: "62 require, anonymous traversal", target: "/api/proxy/require/a/../b", status: 401,
			errBody: missing("/require/a/../b")},
		{name: "62 require, token traversal", target: "/api/proxy/require/a/../b", headers: tok, status: 400, badRequest: true},
		{name: "62 unknown route, token traversal", target: "/api/proxy/nope/%2e%2e/x", headers: tok, status: 400, badRequest: true},
		// Traversal out of the route, into another one or out of the mount.
		// Routes match the path as received, as Express does: these are under
		// /open, which needs no credentials, and its guard answers 400, as
		// Backstage's does.
		{name: "traversal into a require route, anonymous", target: "/api/proxy/open/../require/p", status: 400,
			badRequest: true},
		{name: "traversal into a require route, token", target: "/api/proxy/open/../require/p", headers: tok,
			status: 400, badRequest: true},
		{name: "traversal out of the mount", target: "/api/proxy/open/../../x", headers: tok, status: 400, badRequest: true},
		{name: "traversal out of a require route, anonymous", target: "/api/proxy/require/../open/p", status: 401,
			errBody: missing("/require/../open/p")},
		// Paths that only match a route after Caddy's normalisation are not
		// that route's (Backstage matches the path as received): the
		// upstream must never get the mount path.
		{name: "// before the route key", target: "/api/proxy//open/a", headers: tok, status: 404, empty404: true},
		{name: "// before the route key, anonymous", target: "/api/proxy//open/a", status: 401,
			errBody: missing("//open/a")},
		{name: "/./ before the route key", target: "/api/proxy/./open/a", headers: tok, status: 404, empty404: true},
		{name: "encoded letter in the route key", target: "/api/proxy/op%65n/a", headers: tok, status: 404, empty404: true},
		{name: "encoded slash after the route key", target: "/api/proxy/open%2Fa", headers: tok, status: 404, empty404: true},
		{name: "encoded slash, require route, anonymous", target: "/api/proxy/require%2Fa", status: 401,
			errBody: missing("/require%2Fa")},
	}
	ciRun(t, u, cases)

	// 63: the plugin's own JWKS is answered, never proxied, without auth.
	t.Run("63 jwks.json", func(t *testing.T) {
		u.reset()
		res := ciRaw(t, "GET", "/api/proxy/.backstage/auth/v1/jwks.json", nil, "")
		if res.Status != 200 || string(res.Body) != `{"keys":[]}` {
			t.Errorf("got %d %q", res.Status, res.Body)
		}
		if ct := res.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
			t.Errorf("Content-Type = %q", ct)
		}
		head := ciRaw(t, "HEAD", "/api/proxy/.backstage/auth/v1/jwks.json", nil, "")
		if head.Status != 200 || len(head.Body) != 0 {
			t.Errorf("HEAD: %d %q", head.Status, head.Body)
		}
		post := ciRaw(t, "POST", "/api/proxy/.backstage/auth/v1/jwks.json", nil, "x")
		if post.Status != 401 {
			t.Errorf("POST: %d %q, want 401 (barrier)", post.Status, post.Body)
		}
		if n := len(u.requests()); n != 0 {
			t.Errorf("upstream saw %d requests", n)
		}
	})
}

// ---------------------------------------------------------------------------
// F. Upstream failures (D8: 502/504 as JSON, no internal address).

func TestIntegrationUpstreamFailures(t *testing.T) {
	u := ciNewUpstream(t)
	// A port nothing listens on.
	dead := closedLoopbackAddr(t)
	ciLoad(t, "failures", "@UPSTREAM@", u.URL, "@DEAD@", "http://"+dead)
	_, deadPort, _ := net.SplitHostPort(dead)

	noLeak := func(t *testing.T, res *ciResponse, _ []ciSeen) {
		for _, secret := range []string{dead, deadPort, "127.0.0.1", "internal", "dial", "refused"} {
			if bytes.Contains(res.Body, []byte(secret)) {
				t.Errorf("error body leaks %q: %s", secret, res.Body)
			}
		}
	}
	ciRun(t, u, []ciCase{
		{name: "64 connection refused (D8)", target: "/api/proxy/dead/a", status: 502,
			errBody: backstageErrorBody("BadGatewayError", msgBadGateway, "GET", "/dead/a", 502), check: noLeak},
		{name: "64 connection refused, target path and query", target: "/api/proxy/dead-path/a?b=1", status: 502,
			errBody: backstageErrorBody("BadGatewayError", msgBadGateway, "GET", "/dead-path/a?b=1", 502), check: noLeak},
		{name: "64 connection refused, POST", method: "POST", target: "/api/proxy/dead/a", body: "x", status: 502,
			errBody: backstageErrorBody("BadGatewayError", msgBadGateway, "POST", "/dead/a", 502), check: noLeak},
		{name: "64 connection refused, HEAD", method: "HEAD", target: "/api/proxy/dead/a", status: 502,
			check: func(t *testing.T, res *ciResponse, _ []ciSeen) {
				if len(res.Body) != 0 || res.Header.Get("Content-Type") != "application/json; charset=utf-8" {
					t.Errorf("HEAD 502: body %q, Content-Type %q", res.Body, res.Header.Get("Content-Type"))
				}
			}},
	})

	t.Run("65 proxyTimeout (D8)", func(t *testing.T) {
		u.reset()
		start := time.Now()
		res := ciRaw(t, "GET", "/api/proxy/timeout/slow", nil, "")
		elapsed := time.Since(start)
		want := backstageErrorBody("GatewayTimeoutError", msgGatewayTimeout, "GET", "/timeout/slow", 504)
		if res.Status != 504 || string(res.Body) != want {
			t.Errorf("got %d %s\nwant 504 %s", res.Status, res.Body, want)
		}
		if ct := res.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
			t.Errorf("Content-Type = %q", ct)
		}
		if elapsed < 300*time.Millisecond || elapsed > 3*time.Second {
			t.Errorf("answered after %v, want about 300ms", elapsed)
		}
		if seen := u.requests(); len(seen) != 1 || seen[0].URI != "/slow" {
			t.Errorf("upstream saw %+v", seen)
		}
		// the response headers were not yet sent: the upstream's own headers
		// never leak into the error
		if res.Header.Get("X-Upstream") != "" || res.Header.Get("Set-Cookie") != "" {
			t.Errorf("upstream headers in the error response: %v", res.Header)
		}
	})

	// 66: the redirect is followed server-side; the client gets the final
	// response.
	t.Run("66 followRedirects", func(t *testing.T) {
		u.reset()
		res := ciRaw(t, "GET", "/api/proxy/follow/redirect", nil, "")
		seen := u.requests()
		var uris []string
		for _, s := range seen {
			uris = append(uris, s.Method+" "+s.URI)
		}
		if want := []string{"GET /redirect", "GET /new-place?x=1"}; !slices.Equal(uris, want) {
			t.Errorf("upstream saw %q, want %q", uris, want)
		}
		if res.Status != 200 || res.Echo == nil || res.Echo.URI != "/new-place?x=1" {
			t.Errorf("client got %d %q, want the final response", res.Status, res.Body)
		}
		if res.Header.Get("Location") != "" {
			t.Errorf("Location %q", res.Header.Get("Location"))
		}
	})
}

// TestIntegrationRequestInPlace: the handler turns the request into the
// upstream request in place, as Caddy's rewrite does, and puts it back when
// reverse_proxy returns. So reverse_proxy's placeholders read the upstream
// request (the rewritten URI, only allowed headers), `orig_uri` and the
// access log read the client's, and the principal placeholders reach both.
func TestIntegrationRequestInPlace(t *testing.T) {
	skipIfShort(t)
	type seen struct {
		uri    string
		header http.Header
	}
	up := &recordingUpstream[seen]{}
	up.Server = newTestUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		up.record(seen{r.RequestURI, r.Header.Clone()})
	}))
	logFile := filepath.Join(t.TempDir(), "access.log")
	cfg, err := json.Marshal(map[string]any{
		"admin":   map[string]any{"listen": "localhost:2999"},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"writer": map[string]any{"output": "file", "filename": logFile}}}},
		"apps": map[string]any{
			"backstage": map[string]any{"external_access": []any{map[string]any{
				"static": map[string]any{"token": testStaticToken, "subject": "ci"}}}},
			"http": map[string]any{"grace_period": 1, "servers": map[string]any{
				fmt.Sprintf("inplace%d", testkit.Nonce.Add(1)): map[string]any{
					"listen": []string{":9080"}, "automatic_https": map[string]any{"disable": true}, "logs": map[string]any{},
					"routes": []any{map[string]any{
						"match": []any{map[string]any{"backstage_route": map[string]any{"paths": []string{"/api/proxy/r"}}}},
						"handle": []any{
							map[string]any{"handler": "backstage_proxy", "route": "/r", "rewrite": map[string]any{"strip_prefix": "/api/proxy/r", "target_path": "/base"}},
							map[string]any{"handler": "reverse_proxy", "upstreams": []any{map[string]any{"dial": up.hostport()}},
								"headers": map[string]any{"request": map[string]any{"set": map[string]any{
									"X-Seen-Uri":      []string{"{http.request.uri}"},
									"X-Seen-Orig-Uri": []string{"{http.request.orig_uri}"},
									"X-Seen-Cookie":   []string{"{http.request.header.Cookie}"},
									"X-Seen-User":     []string{"{http.auth.user.id}"},
									"X-Seen-Route":    []string{"{http.backstage_proxy.route}"},
								}}}},
						},
						"terminal": true,
					}},
				}}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	loadTestCaddy(t, string(cfg), "json")

	res := ciRaw(t, "GET", "/api/proxy/r/a%2Fb?q=1", []string{"Authorization: " + ciToken, "Cookie: session=c00k1e", "Accept: text/plain"}, "")
	if res.Status != 200 {
		t.Fatalf("status %d %s", res.Status, res.Body)
	}
	got := up.take()
	if len(got) != 1 {
		t.Fatalf("the upstream got %d requests", len(got))
	}
	for name, want := range map[string]string{
		"X-Seen-Uri": "/base/a%2Fb?q=1", "X-Seen-Orig-Uri": "/api/proxy/r/a%2Fb?q=1", "X-Seen-Cookie": "",
		"X-Seen-User": "ci", "X-Seen-Route": "/r", "Accept": "text/plain", "Cookie": "", "Authorization": "",
	} {
		if v := got[0].header.Get(name); v != want {
			t.Errorf("upstream %s = %q, want %q", name, v, want)
		}
	}
	if got[0].uri != "/base/a%2Fb?q=1" {
		t.Errorf("upstream URI %q", got[0].uri)
	}

	// The access log: the client's request, and who it was.
	var entry struct {
		UserID  string `json:"user_id"`
		Request struct {
			URI     string              `json:"uri"`
			Headers map[string][]string `json:"headers"`
		} `json:"request"`
	}
	deadline := time.Now().Add(ciWait)
	for {
		raw, _ := os.ReadFile(logFile)
		for line := range strings.Lines(string(raw)) {
			if strings.Contains(line, `"handled request"`) && strings.Contains(line, "/api/proxy/r/") {
				if err := json.Unmarshal([]byte(line), &entry); err != nil {
					t.Fatal(err)
				}
			}
		}
		if entry.Request.URI != "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if entry.Request.URI != "/api/proxy/r/a%2Fb?q=1" || entry.UserID != "ci" {
		t.Errorf("access log: uri %q, user_id %q", entry.Request.URI, entry.UserID)
	}
	for _, name := range []string{"Cookie", "Authorization", "Accept"} {
		if _, ok := entry.Request.Headers[name]; !ok {
			t.Errorf("the access log lacks the client's %s header: %v", name, entry.Request.Headers)
		}
	}
}
