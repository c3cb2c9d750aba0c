package backstageproxy

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// TestErrorHandling: refusals are handler errors (caddyhttp.Error), so
// Caddy's error handling sees them: {http.error.*} placeholders are set, a
// user's handle_errors can answer them, and the generated error route
// renders Backstage's body when nothing else does.
func TestErrorHandling(t *testing.T) {
	skipIfShort(t)
	up := newTestUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	const backstage401 = `{"error":{"name":"AuthenticationError","message":"Missing credentials"},"request":{"method":"GET","url":"/r/x"},"response":{"statusCode":401}}`
	site := func(extra string) string {
		return `{
	admin localhost:` + testAdminPort + `
	http_port ` + testListenPort + `
	grace_period 1ns
	backstage {
		static_token ` + testStaticToken + ` ci
	}
}
:` + testListenPort + ` {
	backstage_proxy /r ` + up.URL + `
` + extra + `}
`
	}
	cases := []struct {
		name, extra, body string
		header            map[string]string
	}{
		{"generated error route", "", backstage401,
			map[string]string{"Content-Type": "application/json; charset=utf-8", "Content-Length": strconv.Itoa(len(backstage401))}},
		{"handle_errors answers first", "\thandle_errors {\n\t\trespond \"{http.error.status_code} {http.error.message}\"\n\t}\n",
			"401 Missing credentials", nil},
		{"handle_errors for another status", "\thandle_errors 404 {\n\t\trespond \"not found\"\n\t}\n", backstage401, nil},
		{"handle_errors that only adds a header", "\thandle_errors {\n\t\theader X-Error \"{http.error.status_code}\"\n\t}\n", backstage401,
			map[string]string{"X-Error": "401", "Content-Type": "application/json; charset=utf-8"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			loadTestCaddy(t, site(c.extra), "caddyfile")
			res := ciRaw(t, "GET", "/api/proxy/r/x", nil, "")
			if res.Status != 401 || string(res.Body) != c.body {
				t.Errorf("got %d %q, want 401 %q", res.Status, res.Body, c.body)
			}
			for k, v := range c.header {
				if got := res.Header.Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
		})
	}

	t.Run("hand-written JSON without the error route fails closed", func(t *testing.T) {
		loadTestCaddy(t, `{"admin": {"listen": "localhost:2999"}, "apps": {"http": {"grace_period": 1, "servers": {"bare": {
			"listen": [":9080"], "automatic_https": {"disable": true},
			"routes": [{"match": [{"backstage_route": {"paths": ["/api/proxy/r"]}}], "terminal": true, "handle": [
				{"handler": "backstage_proxy", "route": "/r"},
				{"handler": "reverse_proxy", "upstreams": [{"dial": "`+strings.TrimPrefix(up.URL, "http://")+`"}]}]}]}}}}}`, "json")
		res := ciRaw(t, "GET", "/api/proxy/r/x", nil, "")
		if res.Status != 401 || len(res.Body) != 0 {
			t.Errorf("got %d %q, want 401 and no body", res.Status, res.Body)
		}
	})
}

// TestErrorHandlerPassesOtherErrors: errors that are not backstage_proxy's
// go on down the error chain.
func TestErrorHandlerPassesOtherErrors(t *testing.T) {
	called := false
	r := httptest.NewRequest("GET", "/", nil)
	err := ErrorHandler{}.ServeHTTP(httptest.NewRecorder(), r, caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		called = true
		return nil
	}))
	if err != nil || !called {
		t.Errorf("err %v, next called %v", err, called)
	}
}

// TestErrorHandlerDefersToLaterRoutes: a later error route that writes a body
// or another status answers; one that writes only the error's status (as
// Caddy's last resort does) leaves the answer to Backstage's body.
func TestErrorHandlerDefersToLaterRoutes(t *testing.T) {
	h := &Handler{MountPath: DefaultMountPath}
	cases := []struct {
		name   string
		later  func(w http.ResponseWriter)
		status int
		body   string
	}{
		{"status only", func(w http.ResponseWriter) { w.WriteHeader(401) }, 401,
			`{"error":{"name":"AuthenticationError","message":"Missing credentials"},"request":{"method":"GET","url":"/r"},"response":{"statusCode":401}}`},
		{"nothing", func(http.ResponseWriter) {}, 401,
			`{"error":{"name":"AuthenticationError","message":"Missing credentials"},"request":{"method":"GET","url":"/r"},"response":{"statusCode":401}}`},
		{"another status", func(w http.ResponseWriter) { w.WriteHeader(418) }, 418, ""},
		{"a body", func(w http.ResponseWriter) { _, _ = w.Write([]byte("mine")) }, 200, "mine"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := h.refuse(401, "AuthenticationError", "Missing credentials")
			r := httptest.NewRequest("GET", "/api/proxy/r", nil)
			r = r.WithContext(context.WithValue(r.Context(), caddyhttp.ErrorCtxKey, err))
			w := httptest.NewRecorder()
			if err := (ErrorHandler{}).ServeHTTP(w, r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
				c.later(w)
				return nil
			})); err != nil {
				t.Fatal(err)
			}
			if w.Code != c.status || w.Body.String() != c.body {
				t.Errorf("got %d %q, want %d %q", w.Code, w.Body, c.status, c.body)
			}
		})
	}
}

// TestIntegrationBackendDownJSON: with caddy.backend down, a request that
// is not for the proxy gets Backstage's JSON error shape, as proxy routes
// do, with no internal address; the proxy's own refusals are unchanged.
func TestIntegrationBackendDownJSON(t *testing.T) {
	skipIfShort(t)
	down := closedLoopbackAddr(t)
	loadTestCaddy(t, `
caddy:
  admin: localhost:2999
  backend: http://`+down+`
backend:
  listen: {port: 9080}
proxy:
  endpoints:
    /a: http://`+down+`
`, "backstage")
	for _, tc := range []struct {
		path, want string
		status     int
	}{
		{"/api/catalog/entities?x=1", backstageErrorBody("BadGatewayError", "The Backstage backend could not be reached", "GET", "/api/catalog/entities?x=1", 502), 502},
		{"/api/proxy/a/x", backstageErrorBody("AuthenticationError", "Missing credentials", "GET", "/a/x", 401), 401},
	} {
		res, err := http.Get("http://" + testListen + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != tc.status || string(body) != tc.want || res.Header.Get("Content-Type") != "application/json; charset=utf-8" {
			t.Errorf("%s: %d %q %s, want %d %s", tc.path, res.StatusCode, res.Header.Get("Content-Type"), body, tc.status, tc.want)
		}
		if strings.Contains(string(body), down) {
			t.Errorf("%s: the body names the backend's address", tc.path)
		}
	}
}
