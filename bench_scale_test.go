package backstageproxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/identity"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"go.uber.org/zap"
)

// These benchmarks measure how the request path scales: with the size of the
// auth backend's key set, with the number of request headers, and with the
// number of proxy endpoints Caddy has to route through. Like those of
// bench_test.go, they assert results, not times.

// newMultiKeyFixture is newUserTokenFixture with n ES256 keys: its JWKS
// server publishes the n public keys (each with a kid), and tokens are signed
// with the LAST one, so that any search through the set is a worst case. With
// withKid false the signing key has no kid, so its tokens carry no kid header
// and the verifier cannot pick the key by id.
func newMultiKeyFixture(b *testing.B, n int, withKid bool) *userTokenFixture {
	b.Helper()
	set := jwk.NewSet()
	var signing jwk.Key
	for i := 0; i < n; i++ {
		raw, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		key, err := jwk.Import(raw)
		if err != nil {
			b.Fatal(err)
		}
		_ = key.Set(jwk.KeyIDKey, fmt.Sprintf("bench-key-%d", i))
		_ = key.Set(jwk.AlgorithmKey, jwa.ES256())
		pub, err := key.PublicKey()
		if err != nil {
			b.Fatal(err)
		}
		_ = set.AddKey(pub)
		signing = key
	}
	if !withKid {
		// jws puts the signing key's kid in the protected header: drop it
		// from the private key only, the published key keeps its kid.
		_ = signing.Remove(jwk.KeyIDKey)
	}
	body, err := json.Marshal(set)
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	b.Cleanup(srv.Close)
	return &userTokenFixture{key: signing, jwks: srv}
}

// runFreshTokenBench sends one request per iteration, each with a user token
// never seen before, so that the verification cache never answers. Tokens and
// their requests are minted in batches with the timer stopped. Every response
// must have status want. It reports the signature checks spent per request.
func runFreshTokenBench(b *testing.B, f *userTokenFixture, h *Handler, want int) {
	b.Helper()
	const batch = 256
	reqs := make([]*http.Request, 0, batch)
	mint := func(from int) {
		reqs = reqs[:0]
		for i := from; i < from+batch && i < b.N; i++ {
			reqs = append(reqs, benchRequest("Bearer "+f.token(b, fmt.Sprintf("user:default/u%d", i))))
		}
	}
	w := &benchWriter{hdr: make(http.Header, 16)}
	// fetch the key set once, with a token of its own
	if err := serveWithErrors(h, w, benchRequest("Bearer "+f.token(b, "user:default/warm-up")), nextUpstream); err != nil || w.status != want {
		b.Fatalf("warm-up: status %d (want %d), %v", w.status, want, err)
	}
	mint(0)
	checks := identity.SignatureChecks()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i > 0 && i%batch == 0 {
			b.StopTimer()
			mint(i)
			b.StartTimer()
		}
		clear(w.hdr)
		w.status = 0
		if err := serveWithErrors(h, w, reqs[i%batch], nextUpstream); err != nil || w.status != want {
			b.Fatalf("status %d (want %d), %v", w.status, want, err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(identity.SignatureChecks()-checks)/float64(b.N), "sigchecks/op")
}

// BenchmarkUserTokenUncachedKeys: a fresh ES256 user token on every request
// (no verification cache hit), verified against a real JWKS server publishing
// N keys, the signing key being the last one. It shows whether the size of
// the auth backend's key set costs anything per request.
//
//   - keys=N: the token names its key (kid), as Backstage's auth backend does;
//     the key is found by id and one signature is checked.
//   - keys=8/no-kid: no kid header, so every key of the right type is a
//     candidate and they are tried in order: eight signature checks, seven of
//     them failures, before the token is accepted.
//   - keys=100/no-kid-refused: no kid header and 100 keys. The candidates are
//     capped at jwksMaxCandidates (8, jwks.go keySet.match) to bound the work
//     an unauthenticated client can cause, so the signing key (the 100th) is
//     never tried and the token is refused (401) by design, after eight
//     failed signature checks. Refusals are not cached: this is the cost of
//     each forged kid-less token.
func BenchmarkUserTokenUncachedKeys(b *testing.B) {
	for _, c := range []struct {
		name    string
		keys    int
		withKid bool
		want    int
	}{
		{"keys=1", 1, true, http.StatusOK},
		{"keys=10", 10, true, http.StatusOK},
		{"keys=100", 100, true, http.StatusOK},
		{"keys=8/no-kid", 8, false, http.StatusOK}, // 8: the candidate keys tried per kid-less token
		{"keys=100/no-kid-refused", 100, false, http.StatusUnauthorized},
	} {
		b.Run(c.name, func(b *testing.B) {
			f := newMultiKeyFixture(b, c.keys, c.withKid)
			if hdr, _, _ := strings.Cut(f.token(b, "user:default/check"), "."); strings.Contains(string(mustDecodeSegment(b, hdr)), `"kid"`) != c.withKid {
				b.Fatalf("token has kid: %v, want %v", !c.withKid, c.withKid)
			}
			// A verifier without a logger: a refusal is logged at debug
			// level, and a server logging at info does not pay for writing
			// it, so neither does this benchmark.
			v, release, err := identity.New(identity.Config{UserTokens: &identity.UserTokens{JWKSURL: f.jwks.URL}}, identity.Options{Pool: usagePool{keyPool}})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(release)
			app := &App{authn: v}
			h := benchHandler(b, CredentialsRequire, app)
			runFreshTokenBench(b, f, h, c.want)
		})
	}
}

// BenchmarkRequestFilterHeaderCount: the request allowlist on requests with
// 5 to 40 headers, half of them allowed (SAFE names, then X-Allowed-N from
// allowedHeaders) and half not (X-Other-N). The allowlist is the same for
// every size, so this shows how the filter scales with what clients send
// rather than with the configuration (BenchmarkRequestFilter).
func BenchmarkRequestFilterHeaderCount(b *testing.B) {
	allowed := make([]string, 20)
	for i := range allowed {
		allowed[i] = fmt.Sprintf("X-Allowed-%d", i)
	}
	h := &Handler{AllowedHeaders: allowed}
	if err := h.setup(&App{}, zap.NewNop()); err != nil {
		b.Fatal(err)
	}
	safe := []string{"Accept", "Accept-Language", "User-Agent", "Content-Type", "Cache-Control", "Pragma"}
	for _, n := range []int{5, 10, 20, 40} {
		b.Run(fmt.Sprintf("headers=%d", n), func(b *testing.B) {
			keep := n / 2
			hdr := make(http.Header, n)
			for i := 0; i < keep; i++ {
				name := fmt.Sprintf("X-Allowed-%d", i-len(safe))
				if i < len(safe) {
					name = safe[i]
				}
				hdr[name] = []string{"v"}
			}
			for i := 0; i < n-keep; i++ {
				hdr[fmt.Sprintf("X-Other-%d", i)] = []string{"v"}
			}
			if len(hdr) != n {
				b.Fatalf("%d request headers, want %d", len(hdr), n)
			}
			if got := len(h.filterRequestHeaders(hdr)); got != keep {
				b.Fatalf("%d headers kept, want %d", got, keep)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if out := h.filterRequestHeaders(hdr); len(out) != keep {
					b.Fatalf("%d headers kept, want %d", len(out), keep)
				}
			}
		})
	}
}

// routeBenchConfig adapts an app-config with n open endpoints /route-0 …
// /route-<n-1> and returns the backstage app's JSON and the server's routes
// with each endpoint's reverse_proxy replaced by a 200 static_response, so
// that a request runs Caddy's matchers, our handler and nothing that dials.
func routeBenchConfig(b *testing.B, n int) (app json.RawMessage, routes caddyhttp.RouteList) {
	b.Helper()
	var sb strings.Builder
	sb.WriteString("proxy:\n  endpoints:\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&sb, "    /route-%d:\n      target: http://127.0.0.1:1\n      credentials: dangerously-allow-unauthenticated\n", i)
	}
	adapted, _, err := caddyconfig.GetAdapter("backstage").Adapt([]byte(sb.String()), nil)
	if err != nil {
		b.Fatal(err)
	}
	var cfg struct {
		Apps struct {
			Backstage json.RawMessage `json:"backstage"`
			HTTP      struct {
				Servers map[string]struct {
					Routes []map[string]json.RawMessage `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(adapted, &cfg); err != nil {
		b.Fatal(err)
	}
	if len(cfg.Apps.HTTP.Servers) != 1 {
		b.Fatalf("%d servers, want 1", len(cfg.Apps.HTTP.Servers))
	}
	var raw []map[string]json.RawMessage
	for _, srv := range cfg.Apps.HTTP.Servers {
		raw = srv.Routes
	}
	replaced := 0
	var replace func(raw []map[string]json.RawMessage)
	replace = func(raw []map[string]json.RawMessage) {
		for _, route := range raw {
			var handle []map[string]json.RawMessage
			if err := json.Unmarshal(route["handle"], &handle); err != nil {
				b.Fatal(err)
			}
			for i, hd := range handle {
				switch string(hd["handler"]) {
				case `"reverse_proxy"`:
					handle[i] = map[string]json.RawMessage{"handler": json.RawMessage(`"static_response"`), "status_code": json.RawMessage(`200`)}
					replaced++
				case `"backstage_dispatch"`:
					// the endpoints' routes, inside the mount's route
					var inner []map[string]json.RawMessage
					if err := json.Unmarshal(hd["routes"], &inner); err != nil {
						b.Fatal(err)
					}
					replace(inner)
					body, err := json.Marshal(inner)
					if err != nil {
						b.Fatal(err)
					}
					hd["routes"] = body
				}
			}
			var err error
			if route["handle"], err = json.Marshal(handle); err != nil {
				b.Fatal(err)
			}
		}
	}
	replace(raw)
	if replaced != n {
		b.Fatalf("replaced %d reverse_proxy handlers, want %d", replaced, n)
	}
	body, err := json.Marshal(raw)
	if err != nil {
		b.Fatal(err)
	}
	if err := json.Unmarshal(body, &routes); err != nil {
		b.Fatal(err)
	}
	return cfg.Apps.Backstage, routes
}

// BenchmarkRouteMatch: Caddy's routing over the adapted routes of an
// app-config with 1 to 1,000 endpoints, plus our handler and a 200
// static_response in place of reverse_proxy. The request is for the last
// endpoint: with a list of routes, every earlier route's matchers would run.
//
// Since issue #14 the endpoints sit in one backstage_dispatch route that
// indexes them by first segment: the cost is flat in the number of
// endpoints. routes=N/outside is a request outside the mount (Backstage's
// own API), which pays the mount's matcher only.
//
// routes=200/miss requests /api/proxy/unknown/x: no endpoint matches, and
// the credentials barrier answers. The endpoints are all
// open, but an unknown route is not one of them, so the barrier demands
// credentials like Backstage's does: 401 with an AuthenticationError body.
func BenchmarkRouteMatch(b *testing.B) {
	for _, c := range []struct {
		name   string
		routes int
		path   string
		want   int
	}{
		{"routes=1", 1, "/api/proxy/route-0/x", http.StatusOK},
		{"routes=10", 10, "/api/proxy/route-9/x", http.StatusOK},
		{"routes=200", 200, "/api/proxy/route-199/x", http.StatusOK},
		{"routes=200/miss", 200, "/api/proxy/unknown/x", http.StatusUnauthorized},
		{"routes=500", 500, "/api/proxy/route-499/x", http.StatusOK},
		{"routes=1000", 1000, "/api/proxy/route-999/x", http.StatusOK},
		{"routes=1000/case", 1000, "/API/Proxy/Route-999/x", http.StatusOK},
		{"routes=1000/miss", 1000, "/api/proxy/unknown/x", http.StatusUnauthorized},
		// Backstage's own API, outside the mount: the adapter's last route
		// (no caddy.backend here: a 404) after the mount's one matcher.
		{"routes=10/outside", 10, "/api/catalog/entities", http.StatusNotFound},
		{"routes=1000/outside", 1000, "/api/catalog/entities", http.StatusNotFound},
	} {
		b.Run(c.name, func(b *testing.B) {
			appRaw, routes := routeBenchConfig(b, c.routes)
			for _, r := range routes {
				// The request below is prepared once and reused: sound only
				// while no route uses groups (their state lives in the
				// request context).
				if r.Group != "" {
					b.Fatalf("route group %q: prepare a request per iteration", r.Group)
				}
			}
			// Handler provisioning loads the backstage app through the
			// context's config, which a bare caddy.NewContext lacks: provision
			// a config holding only that app, and the routes in a child
			// context of it.
			base, err := caddy.ProvisionContext(&caddy.Config{AppsRaw: caddy.ModuleMap{"backstage": appRaw}})
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := caddy.NewContext(base)
			b.Cleanup(cancel)
			if err := routes.ProvisionMatchers(ctx); err != nil {
				b.Fatal(err)
			}
			if err := routes.ProvisionHandlers(ctx, nil); err != nil {
				b.Fatal(err)
			}
			fellThrough := false
			stack := routes.Compile(caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
				fellThrough = true
				return nil
			}))

			w := &benchWriter{hdr: make(http.Header, 16)}
			r := httptest.NewRequest(http.MethodGet, c.path, nil)
			r.Header.Set("Accept", "application/json")
			r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, new(caddyhttp.Server))
			serve := func() {
				clear(w.hdr)
				w.status = 0
				if err := stack.ServeHTTP(w, r); err != nil {
					// a refusal: Caddy's error routes would answer it
					var he caddyhttp.HandlerError
					if !errors.As(err, &he) {
						b.Fatal(err)
					}
					w.status = he.StatusCode
				}
				if w.status != c.want || fellThrough {
					b.Fatalf("status %d (want %d), fell through all routes: %v", w.status, c.want, fellThrough)
				}
			}
			serve()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				serve()
			}
		})
	}
}

// mustDecodeSegment decodes one base64url segment of a compact JWS.
func mustDecodeSegment(b *testing.B, seg string) []byte {
	out, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		b.Fatal(err)
	}
	return out
}
