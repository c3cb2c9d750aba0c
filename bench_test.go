package backstageproxy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/identity"
	"github.com/caddy-backstage/caddy-backstage-proxy/internal/urlpath"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// The benchmarks measure the request path of the handler alone, with a next
// handler standing in for reverse_proxy: nextUpstream writes a typical
// upstream's 12 headers and a body, so the response filter has real work
// (BenchmarkHandlerNoopNext uses a next handler that does nothing). Compare
// each against BenchmarkPassThrough, a middleware that only calls next. They assert
// nothing about time: run them with
//
//	go test -run '^$' -bench . -benchmem
//
// CI runs them once (-benchtime=1x) to prove they work.

// benchWriter is a reusable ResponseWriter, so that the benchmarks count the
// handler's allocations and not a recorder's.
type benchWriter struct {
	hdr    http.Header
	status int
}

func (w *benchWriter) Header() http.Header         { return w.hdr }
func (w *benchWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *benchWriter) WriteHeader(s int)           { w.status = s }

// upstreamHeaders is what a typical upstream answers: 12 headers, most of
// which the response filter drops.
var upstreamHeaders = http.Header{
	"Content-Type":                []string{"application/json"},
	"Content-Length":              []string{"1234"},
	"Cache-Control":               []string{"no-cache"},
	"Etag":                        []string{`"abc"`},
	"Set-Cookie":                  []string{"a=b"},
	"Server":                      []string{"upstream"},
	"X-Request-Id":                []string{"42"},
	"Vary":                        []string{"Accept"},
	"Access-Control-Allow-Origin": []string{"*"},
	"Date":                        []string{"Fri, 27 Nov 2026 15:00:00 GMT"},
	"X-Frame-Options":             []string{"DENY"},
	"Via":                         []string{"1.1 Caddy"},
}

var nextUpstream = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
	hdr := w.Header()
	for k, v := range upstreamHeaders {
		hdr[k] = v
	}
	w.WriteHeader(http.StatusOK)
	_, err := w.Write([]byte(`{}`))
	return err
})

// benchRequest is a typical browser request through the proxy, with a
// replacer as Caddy makes one for each request (with the HTTP variables).
// A benchmark that sends it again calls resetReplacer first, as the handler
// adds value providers to the replacer.
func benchRequest(authorization string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/api/proxy/catalog/entities/by-name/component/default/foo?fields=metadata", nil)
	for k, v := range map[string]string{
		"User-Agent": "Mozilla/5.0", "Accept": "application/json", "Accept-Encoding": "gzip, br",
		"Accept-Language": "en", "Cookie": "session=abc", "X-Request-Id": "42", "Traceparent": "00-abc",
		"Referer": "https://backstage.example.com/", "Origin": "https://backstage.example.com",
	} {
		r.Header.Set(k, v)
	}
	if authorization != "" {
		r.Header.Set("Authorization", authorization)
	}
	repl := caddyhttp.NewTestReplacer(r)
	pristine := *repl
	ctx := context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl)
	return r.WithContext(context.WithValue(ctx, pristineReplacerKey{}, &pristine))
}

type pristineReplacerKey struct{}

// resetReplacer gives r's replacer the state it had when r was made, at the
// cost of a copy and no allocation: the providers added since then are
// dropped (their slots are reused), the values set stay set.
func resetReplacer(r *http.Request) {
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	*repl = *r.Context().Value(pristineReplacerKey{}).(*caddy.Replacer)
}

func benchHandler(b *testing.B, credentials string, app *App) *Handler {
	b.Helper()
	h := &Handler{
		Credentials:     credentials,
		Route:           "/catalog",
		AllowedHeaders:  []string{"X-Request-Id"},
		UpstreamHeaders: []string{"Authorization"},
		Rewrite:         &UpstreamRewrite{StripPrefix: "/api/proxy/catalog", TargetPath: "/api/catalog"},
	}
	if err := h.setup(app, zap.NewNop()); err != nil {
		b.Fatal(err)
	}
	// Logging is off, as for the handler's own logger: the audit log of
	// a provisioned app is a development logger here (no Caddy config).
	// BenchmarkHandlerAudited measures an audit event.
	h.audit = nil
	return h
}

func benchProvisionApp(b *testing.B, app *App) *App {
	b.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	b.Cleanup(cancel)
	if err := app.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = app.Cleanup() })
	return app
}

func runHandlerBench(b *testing.B, h caddyhttp.MiddlewareHandler, r *http.Request) {
	b.Helper()
	w := &benchWriter{hdr: make(http.Header, 16)}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		clear(w.hdr)
		w.status = 0
		resetReplacer(r)
		if err := h.ServeHTTP(w, r, nextUpstream); err != nil {
			b.Fatal(err)
		}
		if w.status != http.StatusOK {
			b.Fatalf("status %d", w.status)
		}
	}
}

type passThrough struct{}

func (passThrough) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	return next.ServeHTTP(w, r)
}

// BenchmarkPassThrough is the baseline: a middleware that does nothing.
func BenchmarkPassThrough(b *testing.B) {
	runHandlerBench(b, passThrough{}, benchRequest(""))
}

// BenchmarkHandlerOpen: dangerously-allow-unauthenticated, both header
// filters, the default rewrite.
func BenchmarkHandlerOpen(b *testing.B) {
	h := benchHandler(b, CredentialsDangerouslyAllowUnauthenticated, &App{})
	runHandlerBench(b, h, benchRequest(""))
}

// BenchmarkHandlerStaticToken: require with a static external-access token.
func BenchmarkHandlerStaticToken(b *testing.B) {
	app := benchProvisionApp(b, &App{ExternalAccess: []identity.ExternalAccess{
		{Static: &identity.StaticAccess{Token: "static-token-0123456789", Subject: "ci"}},
	}})
	h := benchHandler(b, CredentialsRequire, app)
	runHandlerBench(b, h, benchRequest("Bearer static-token-0123456789"))
}

// userTokenFixture is an auth backend: an ES256 key and its JWKS server.
type userTokenFixture struct {
	key  jwk.Key
	jwks *httptest.Server
}

func newUserTokenFixture(b *testing.B) *userTokenFixture {
	b.Helper()
	return newMultiKeyFixture(b, 1, true)
}

func (f *userTokenFixture) token(b *testing.B, sub string) string {
	b.Helper()
	return f.tokenWithOwnership(b, sub, nil)
}

// tokenWithOwnership is a user token for sub with the `ent` claim ent (none
// if nil).
func (f *userTokenFixture) tokenWithOwnership(b *testing.B, sub string, ent []string) string {
	b.Helper()
	now := time.Now()
	builder := jwt.NewBuilder().Subject(sub).Audience([]string{"backstage"}).IssuedAt(now).
		Expiration(now.Add(time.Hour)).Issuer("http://localhost:7007/api/auth")
	if ent != nil {
		builder = builder.Claim("ent", ent)
	}
	tok, err := builder.Build()
	if err != nil {
		b.Fatal(err)
	}
	hdrs := jws.NewHeaders()
	_ = hdrs.Set(jws.TypeKey, "vnd.backstage.user")
	signed, err := jwt.Sign(tok, jwt.WithKey(jwa.ES256(), f.key, jws.WithProtectedHeaders(hdrs)))
	if err != nil {
		b.Fatal(err)
	}
	return string(signed)
}

// BenchmarkHandlerUserTokenCached: require with a Backstage user token (ES256)
// from a steady client: the verification cache answers.
func BenchmarkHandlerUserTokenCached(b *testing.B) {
	f := newUserTokenFixture(b)
	app := benchProvisionApp(b, &App{UserTokens: &identity.UserTokens{JWKSURL: f.jwks.URL}})
	h := benchHandler(b, CredentialsRequire, app)
	runHandlerBench(b, h, benchRequest("Bearer "+f.token(b, "user:default/alice")))
}

// noopNext is the "no-op next handler": it writes nothing, so what
// is measured is the handler's own work on the request and the set-up of its
// response filter. The Handler* benchmarks above use nextUpstream instead,
// which also makes the filter work on 12 upstream headers.
var noopNext = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })

// BenchmarkHandlerNoopNext: pass-through, open, static token and cached user
// token with a next handler that does nothing.
func BenchmarkHandlerNoopNext(b *testing.B) {
	f := newUserTokenFixture(b)
	app := benchUserAndStaticApp(b, f)
	for _, c := range []struct {
		name string
		h    caddyhttp.MiddlewareHandler
		r    *http.Request
	}{
		{"pass-through", passThrough{}, benchRequest("")},
		{"open", benchHandler(b, CredentialsDangerouslyAllowUnauthenticated, &App{}), benchRequest("")},
		{"static", benchHandler(b, CredentialsRequire, app), benchRequest("Bearer static-token-0123456789")},
		{"user-token-cached", benchHandler(b, CredentialsRequire, app), benchRequest("Bearer " + f.token(b, "user:default/alice"))},
	} {
		b.Run(c.name, func(b *testing.B) {
			w := &benchWriter{hdr: make(http.Header, 16)}
			// the credentials must pass: a refusal would write a status
			if err := c.h.ServeHTTP(w, c.r, noopNext); err != nil || w.status != 0 {
				b.Fatalf("status %d, %v", w.status, err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				resetReplacer(c.r)
				if err := c.h.ServeHTTP(w, c.r, noopNext); err != nil {
					b.Fatal(err)
				}
			}
			if w.status != 0 {
				b.Fatalf("status %d", w.status)
			}
		})
	}
}

// BenchmarkHandlerForward: credentials forward with a cached user token; the
// Authorization header is forwarded too.
func BenchmarkHandlerForward(b *testing.B) {
	f := newUserTokenFixture(b)
	app := benchProvisionApp(b, &App{UserTokens: &identity.UserTokens{JWKSURL: f.jwks.URL}})
	h := benchHandler(b, CredentialsForward, app)
	runHandlerBench(b, h, benchRequest("Bearer "+f.token(b, "user:default/alice")))
}

// BenchmarkHandlerUserTokenUncached: a new user token on every request, so
// every request costs an ES256 signature check.
func BenchmarkHandlerUserTokenUncached(b *testing.B) {
	f := newUserTokenFixture(b)
	app := benchProvisionApp(b, &App{UserTokens: &identity.UserTokens{JWKSURL: f.jwks.URL}})
	h := benchHandler(b, CredentialsRequire, app)
	tokens := make([]string, 512)
	for i := range tokens {
		tokens[i] = f.token(b, fmt.Sprintf("user:default/u%d", i))
	}
	reqs := make([]*http.Request, len(tokens))
	for i, tok := range tokens {
		reqs[i] = benchRequest("Bearer " + tok)
	}
	// fetch the key set once, with a token of its own
	runOnce(b, h, benchRequest("Bearer "+f.token(b, "user:default/warm-up")))
	w := &benchWriter{hdr: make(http.Header, 16)}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		clear(w.hdr)
		// a token is verified once, then cached: use each only the first time
		r := reqs[i%len(reqs)]
		if i >= len(reqs) {
			b.StopTimer()
			tok := f.token(b, fmt.Sprintf("user:default/n%d", i))
			r = benchRequest("Bearer " + tok)
			b.StartTimer()
		}
		if err := h.ServeHTTP(w, r, nextUpstream); err != nil || w.status != http.StatusOK {
			b.Fatalf("status %d, %v", w.status, err)
		}
	}
}

func runOnce(b *testing.B, h *Handler, r *http.Request) {
	b.Helper()
	w := &benchWriter{hdr: make(http.Header)}
	if err := h.ServeHTTP(w, r, nextUpstream); err != nil || w.status != http.StatusOK {
		b.Fatalf("warm-up: status %d, %v", w.status, err)
	}
}

// BenchmarkHandlerReject401: an anonymous request on a protected route,
// answered as the server's error route does (backstage_error).
func BenchmarkHandlerReject401(b *testing.B) {
	h := benchHandler(b, CredentialsRequire, &App{})
	r := benchRequest("")
	w := &benchWriter{hdr: make(http.Header, 4)}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		clear(w.hdr)
		resetReplacer(r)
		_ = serveWithErrors(h, w, r, nextUpstream)
		if w.status != http.StatusUnauthorized {
			b.Fatalf("status %d", w.status)
		}
	}
}

// BenchmarkRequestFilter: the request allowlist alone, by number of allowed
// headers.
func BenchmarkRequestFilter(b *testing.B) {
	for _, n := range []int{0, 10, 100} {
		b.Run(fmt.Sprintf("allowed=%d", n), func(b *testing.B) {
			var allowed []string
			for i := 0; i < n; i++ {
				allowed = append(allowed, fmt.Sprintf("X-Allowed-%d", i))
			}
			h := &Handler{AllowedHeaders: allowed}
			if err := h.setup(&App{}, zap.NewNop()); err != nil {
				b.Fatal(err)
			}
			hdr := benchRequest("Bearer x").Header
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				_ = h.filterRequestHeaders(hdr)
			}
		})
	}
}

// BenchmarkResponseFilter: the response allowlist on 12 upstream headers.
func BenchmarkResponseFilter(b *testing.B) {
	h := &Handler{AllowedHeaders: []string{"X-Request-Id"}}
	h.setAllowlists()
	w := &benchWriter{hdr: make(http.Header, 16)}
	var rf responseFilter
	staged := make(http.Header, 16) // recycled, as the handler's is
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		clear(w.hdr)
		clear(staged)
		rf = responseFilter{}
		rf.init(w, h.respAllow, h.respAllowNames, false, staged)
		hdr := rf.Header()
		for k, v := range upstreamHeaders {
			hdr[k] = v
		}
		rf.WriteHeader(http.StatusOK)
	}
}

// BenchmarkPathGuard: the traversal guard on a clean path and on one that
// needs decoding.
func BenchmarkPathGuard(b *testing.B) {
	for _, p := range []string{
		"/api/proxy/catalog/entities/by-name/component/default/foo",
		"/api/proxy/catalog/entities/a%2Fb/v1.2/x%20y",
	} {
		b.Run(p, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if !urlpath.IsSafe(p) {
					b.Fatal("unsafe")
				}
			}
		})
	}
}

// BenchmarkUpstreamRewrite: the default rewrite and a custom pathRewrite.
func BenchmarkUpstreamRewrite(b *testing.B) {
	for name, u := range map[string]*UpstreamRewrite{
		"default": {StripPrefix: "/api/proxy/catalog", TargetPath: "/api/catalog"},
		"custom": {StripPrefix: "/api/proxy/catalog", TargetPath: "/api", PathRewrite: []PathRewriteRule{
			{Find: "^/api/proxy/catalog/old", Replace: "/new"},
			{Find: `^/api/proxy/catalog/(\w+)`, Replace: "/items/${1}"},
		}},
	} {
		b.Run(name, func(b *testing.B) {
			if err := u.provision(); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				_, _ = u.apply("/api/proxy/catalog/entities/by-name/x", "fields=metadata", true)
			}
		})
	}
}

// BenchmarkAdapt200Routes: adapting an app-config.yaml with 200 endpoints.
func BenchmarkAdapt200Routes(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("backend:\n  auth:\n    externalAccess:\n      - type: static\n        options: {token: static-token-123, subject: s}\nproxy:\n  endpoints:\n")
	for i := 0; i < 200; i++ {
		fmt.Fprintf(&sb, "    /route-%d:\n      target: http://upstream-%d.internal:8080/api/v%d\n      allowedMethods: [GET, POST]\n      allowedHeaders: [X-Foo]\n      headers:\n        X-Token: abc%d\n", i, i, i%3, i)
	}
	body := []byte(sb.String())
	adapter := caddyconfig.GetAdapter("backstage")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, _, err := adapter.Adapt(body, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHandlerAudited: BenchmarkHandlerStaticToken with the audit log
// on (JSON, to io.Discard), so every request (the route injects a header)
// writes its audit event: the cost of one event.
func BenchmarkHandlerAudited(b *testing.B) {
	app := benchProvisionApp(b, &App{ExternalAccess: []identity.ExternalAccess{
		{Static: &identity.StaticAccess{Token: "static-token-0123456789", Subject: "ci"}},
	}})
	h := benchHandler(b, CredentialsRequire, app)
	h.audit = zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(io.Discard), zap.InfoLevel)).Named(AuditLoggerName)
	runHandlerBench(b, h, benchRequest("Bearer static-token-0123456789"))
}
