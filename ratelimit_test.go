package backstageproxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/identity"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// provisionHandlerJSON provisions a backstage_proxy handler from its JSON
// the way Caddy does (Provision, Validate; Cleanup at the end of the test),
// in a context whose `backstage` app is app.
func provisionHandlerJSON(tb testing.TB, app *App, handler string) (*Handler, error) {
	tb.Helper()
	appJSON, err := json.Marshal(app)
	if err != nil {
		tb.Fatal(err)
	}
	pctx, err := caddy.ProvisionContext(&caddy.Config{AppsRaw: caddy.ModuleMap{"backstage": appJSON}})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(pctx)
	tb.Cleanup(cancel)
	m, err := ctx.LoadModuleByID("http.handlers.backstage_proxy", json.RawMessage(handler))
	if err != nil {
		return nil, err
	}
	return m.(*Handler), nil
}

// TestRateLimitRefusal: the refusal is the handler's own 429 error
// (TooManyRequestsError), with Retry-After on the response and
// {http.backstage_proxy.error} set; the next handler is not called.
func TestRateLimitRefusal(t *testing.T) {
	app := &App{ExternalAccess: []identity.ExternalAccess{{Static: &identity.StaticAccess{Token: "static-token-0123456789", Subject: "ci"}}}}
	h, err := provisionHandlerJSON(t, app, `{"route":"/refusal-test","rate_limit":{"requests":1,"window":60000000000}}`)
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { calls++; return nil })
	serve := func() (*httptest.ResponseRecorder, *caddy.Replacer, error) {
		r := httptest.NewRequest(http.MethodGet, "/api/proxy/refusal-test/x", nil)
		r.Header.Set("Authorization", "Bearer static-token-0123456789")
		repl := caddyhttp.NewTestReplacer(r)
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
		w := httptest.NewRecorder()
		return w, repl, h.ServeHTTP(w, r, next)
	}
	if _, _, err := serve(); err != nil || calls != 1 {
		t.Fatalf("first request: %v, next called %d times", err, calls)
	}
	w, repl, err := serve()
	var he caddyhttp.HandlerError
	var pe *proxyError
	if !errors.As(err, &he) || he.StatusCode != http.StatusTooManyRequests || !errors.As(err, &pe) || pe.name != "TooManyRequestsError" {
		t.Fatalf("second request: %v, want the handler's 429 TooManyRequestsError", err)
	}
	if calls != 1 {
		t.Errorf("next called %d times, want 1", calls)
	}
	if ra := w.Header().Get("Retry-After"); ra != "60" {
		t.Errorf("Retry-After %q, want 60", ra)
	}
	if v, _ := repl.GetString(placeholderError); v != rateLimitMessage {
		t.Errorf("{%s} = %q, want %q", placeholderError, v, rateLimitMessage)
	}
}

// TestRateLimitProvisionErrors: bad values in the handler JSON are refused
// when the config is loaded.
func TestRateLimitProvisionErrors(t *testing.T) {
	for _, c := range []struct{ handler, want string }{
		{`{"route":"/a","rate_limit":{"requests":0,"window":1000000000}}`, "route /a: rate_limit: requests must be a positive number, got 0"},
		{`{"route":"/a","rate_limit":{"requests":-1,"window":1000000000}}`, "requests must be a positive number, got -1"},
		{`{"route":"/a","rate_limit":{"requests":10001,"window":1000000000}}`, "requests must be at most 10000"},
		{`{"route":"/a","rate_limit":{"requests":5}}`, "route /a: rate_limit: window must be a positive duration, got 0s"},
		{`{"route":"/a","rate_limit":{"requests":5,"window":"-1s"}}`, "window must be a positive duration, got -1s"},
		{`{"rate_limit":{"requests":5,"window":"1s"}}`, "rate_limit needs the route"},
	} {
		_, err := provisionHandlerJSON(t, &App{}, c.handler)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error containing %q", c.handler, err, c.want)
		}
	}
}

// TestClientAddressKey: anonymous callers are counted by client_ip (which
// honours the server's trusted_proxies), IPv6 by /64.
func TestClientAddressKey(t *testing.T) {
	for _, c := range []struct{ clientIP, remote, want string }{
		{"203.0.113.7", "10.0.0.1:5000", "203.0.113.7"},
		{"2001:db8:1:2:3:4:5:6", "[::1]:5000", "2001:db8:1:2::/64"},
		{"2001:db8:1:2:ffff::1", "[::1]:5000", "2001:db8:1:2::/64"},
		{"fe80::1%eth0", "[::1]:5000", "fe80::/64"},
		{"::ffff:192.0.2.1", "[::1]:5000", "::ffff:192.0.2.1"},
		{"", "192.0.2.9:5000", "192.0.2.9"},
		{"", "[2001:db8::9]:5000", "2001:db8::/64"},
	} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = c.remote
		vars := map[string]any{}
		if c.clientIP != "" {
			vars[caddyhttp.ClientIPVarKey] = c.clientIP
		}
		r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, vars))
		if got := clientAddressKey(r); got != c.want {
			t.Errorf("client_ip %q, remote %q: key %q, want %q", c.clientIP, c.remote, got, c.want)
		}
	}
}

// BenchmarkHandlerRateLimit: the handler of BenchmarkHandlerUserTokenCached
// and BenchmarkHandlerOpen with a rate limit the requests stay under, and
// without (the same JSON, provisioned the same way), for a paired
// comparison in one run.
func BenchmarkHandlerRateLimit(b *testing.B) {
	f := newUserTokenFixture(b)
	app := &App{UserTokens: &identity.UserTokens{JWKSURL: f.jwks.URL}}
	const handler = `{"route":"/catalog","credentials":"%s","allowed_headers":["X-Request-Id"],"upstream_headers":["Authorization"],
		"rewrite":{"strip_prefix":"/api/proxy/catalog","target_path":"/api/catalog"}%s}`
	const limit = `,"rate_limit":{"requests":10000,"window":1000000}`
	for _, c := range []struct {
		name, credentials, authorization, limit string
	}{
		{"user-token-cached", CredentialsRequire, "Bearer " + f.token(b, "user:default/alice"), ""},
		{"user-token-cached+rate-limit", CredentialsRequire, "Bearer " + f.token(b, "user:default/alice"), limit},
		{"open", CredentialsDangerouslyAllowUnauthenticated, "", ""},
		{"open+rate-limit", CredentialsDangerouslyAllowUnauthenticated, "", limit},
	} {
		b.Run(c.name, func(b *testing.B) {
			h, err := provisionHandlerJSON(b, app, fmt.Sprintf(handler, c.credentials, c.limit))
			if err != nil {
				b.Fatal(err)
			}
			h.audit = nil // as in benchHandler: BenchmarkHandlerAudited measures the audit event
			r := benchRequest(c.authorization)
			// as Caddy's server does for every request
			r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: "192.0.2.1"}))
			runHandlerBench(b, h, r)
		})
	}
}

// BenchmarkRateLimitCount: the rate limit alone (caddy-ratelimit's zone
// lookup and counter), for a principal under its limit.
func BenchmarkRateLimitCount(b *testing.B) {
	h, err := provisionHandlerJSON(b, &App{}, `{"route":"/catalog","rate_limit":{"requests":10000,"window":1000000}}`)
	if err != nil {
		b.Fatal(err)
	}
	r := benchRequest("")
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	repl.Set(placeholderUserID, "user:default/alice")
	w := &benchWriter{hdr: make(http.Header, 16)}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := h.limitRate(w, r, repl, ""); err != nil {
			b.Fatal(err)
		}
	}
}

// TestRateLimitZoneConflict: two endpoints with the same mount path and
// route share caddy-ratelimit's counters, so in one config they must carry
// the same limit (the library would give each caller the limit of whichever
// handler saw it first).
func TestRateLimitZoneConflict(t *testing.T) {
	appJSON, _ := json.Marshal(&App{})
	pctx, err := caddy.ProvisionContext(&caddy.Config{AppsRaw: caddy.ModuleMap{"backstage": appJSON}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(pctx)
	t.Cleanup(cancel)
	for _, tc := range []struct {
		name, handler, wantErr string
	}{
		{"first", `{"route":"/zone-conflict","rate_limit":{"requests":2,"window":60000000000}}`, ""},
		{"same limit again (a router variant)", `{"route":"/zone-conflict","rate_limit":{"requests":2,"window":60000000000}}`, ""},
		{"another limit", `{"route":"/zone-conflict","rate_limit":{"requests":100,"window":60000000000}}`,
			"route /zone-conflict: rate_limit: another endpoint with the same mount path and route counts 2 requests per 1m0s"},
		{"another window", `{"route":"/zone-conflict","rate_limit":{"requests":2,"window":1000000000}}`, "counts 2 requests per 1m0s"},
		{"another mount path", `{"route":"/zone-conflict","mount_path":"/other","rate_limit":{"requests":100,"window":60000000000}}`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ctx.LoadModuleByID("http.handlers.backstage_proxy", json.RawMessage(tc.handler))
			if tc.wantErr == "" && err != nil {
				t.Fatal(err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("got %v, want %q", err, tc.wantErr)
			}
		})
	}
}
