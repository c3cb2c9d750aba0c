package backstageproxy

import (
	"encoding/base64"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/identity"
	"github.com/caddy-backstage/caddy-backstage-proxy/internal/testkit"
)

// Issue #15, through a real Caddy with real key-set servers.

// getAll sends the tokens to path with a few workers and returns how many
// answers had each status.
func getAll(t *testing.T, path string, tokens []string) map[int]int {
	t.Helper()
	var mu sync.Mutex
	counts := map[int]int{}
	work := make(chan string)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for tok := range work {
				status, _ := aiGet(t, path, "Bearer "+tok)
				mu.Lock()
				counts[status]++
				mu.Unlock()
			}
		}()
	}
	for _, tok := range tokens {
		work <- tok
	}
	close(work)
	wg.Wait()
	return counts
}

// Item 1: 1,024 plugin tokens naming case variants of one plugin, unsigned
// and forged, neither fill the plugin table nor cost more than one fetch;
// a genuine token from a plugin not seen before passes afterwards. Made-up
// ids cost at most the per-minute budget of fetches, a repeated one a single
// fetch, and confirmed plugins keep passing.
func TestIntegrationPluginLockout(t *testing.T) {
	f := newAIFixture(t)
	scaffolder, search := testkit.NewECKey(t, "scaffolder-key"), testkit.NewECKey(t, "search-key")
	f.plugins.Set("scaffolder", scaffolder)
	f.plugins.Set("search", search)
	aiLoad(t, f.config(t, f.app(false), "require=require"))
	now := time.Now().Unix()
	claims := func(sub string) map[string]any {
		return map[string]any{"sub": sub, "aud": "proxy", "iat": now, "exp": now + 3600}
	}
	variants := testkit.CaseVariants("scaffolder")
	var unsigned, forged []string
	forger := testkit.NewECKey(t, "scaffolder-key")
	for _, id := range variants {
		unsigned = append(unsigned, testkit.EncodeSegment(t, map[string]any{"alg": "none", "typ": identity.TypePlugin})+"."+testkit.EncodeSegment(t, claims(id))+".")
		forged = append(forged, forger.Sign(t, forger.Hdr(identity.TypePlugin), claims(id)))
	}
	if got := getAll(t, "/api/proxy/require/x", unsigned); got[401] != len(variants) {
		t.Fatalf("unsigned case variants: %v", got)
	}
	if n := f.plugins.All.Load(); n != 0 {
		t.Fatalf("unsigned tokens caused %d key set fetches, want 0", n)
	}
	if got := getAll(t, "/api/proxy/require/x", forged); got[401] != len(variants) {
		t.Fatalf("forged case variants: %v", got)
	}
	if n, all := f.plugins.HitsFor("scaffolder"), f.plugins.All.Load(); n != 1 || all != 1 {
		t.Fatalf("forged case variants: %d fetches of scaffolder, %d in all; want 1 and 1", n, all)
	}
	// A genuine token from a plugin not seen before passes.
	status, body := aiGet(t, "/api/proxy/require/x", "Bearer "+search.Sign(t, search.Hdr(identity.TypePlugin), claims("search")))
	if h, _ := f.upstream.seen(); status != 200 || h.Get("X-Principal") != "plugin:search" {
		t.Fatalf("genuine search token: %d %s", status, body)
	}
	if n := f.plugins.HitsFor("search"); n != 1 {
		t.Fatalf("search key set fetched %d times", n)
	}
	// The same unknown id 50 times: one fetch.
	base := f.plugins.All.Load()
	same := make([]string, 50)
	for i := range same {
		same[i] = forger.Sign(t, forger.Hdr(identity.TypePlugin), claims("nosuchplugin"))
	}
	if got := getAll(t, "/api/proxy/require/x", same); got[401] != 50 {
		t.Fatalf("repeated unknown id: %v", got)
	}
	if n := f.plugins.All.Load() - base; n != 1 {
		t.Fatalf("the same unknown id 50 times: %d fetches, want 1", n)
	}
	// catalog is confirmed before the flood below.
	if status, body := aiGet(t, "/api/proxy/require/x", "Bearer "+f.catalogKey.Sign(t, f.catalogKey.Hdr(identity.TypePlugin), claims("catalog"))); status != 200 {
		t.Fatalf("catalog: %d %s", status, body)
	}
	// 300 made-up ids: at most the budget.
	var madeUp []string
	for i := range 300 {
		madeUp = append(madeUp, forger.Sign(t, forger.Hdr(identity.TypePlugin), claims(fmt.Sprintf("made-up-%d", i))))
	}
	base = f.plugins.All.Load()
	if got := getAll(t, "/api/proxy/require/x", madeUp); got[401] != 300 {
		t.Fatalf("made-up ids: %v", got)
	}
	if n := f.plugins.All.Load() - base; n > 60 {
		t.Fatalf("300 made-up ids: %d fetches, want at most 60 a minute", n)
	}
	// Confirmed plugins keep passing, without a fetch.
	base = f.plugins.All.Load()
	status, body = aiGet(t, "/api/proxy/require/x", "Bearer "+f.catalogKey.Sign(t, f.catalogKey.Hdr(identity.TypePlugin), testkit.With(claims("catalog"), "jti", "2")))
	if status != 200 {
		t.Fatalf("catalog after the flood: %d %s", status, body)
	}
	status, body = aiGet(t, "/api/proxy/require/x", "Bearer "+search.Sign(t, search.Hdr(identity.TypePlugin), testkit.With(claims("SEARCH"), "jti", "2")))
	if h, _ := f.upstream.seen(); status != 200 || h.Get("X-Principal") != "plugin:search" {
		t.Fatalf("SEARCH after the flood: %d %s", status, body)
	}
	if n := f.plugins.All.Load() - base; n != 0 {
		t.Fatalf("%d fetches for confirmed plugins after the flood, want 0", n)
	}

	// With a `plugins` allowlist, made-up ids never cause a fetch, and a
	// named plugin not seen before passes even right after a flood (the
	// budget, spent above, does not apply to it).
	app := f.app(false)
	app["plugin_tokens"].(map[string]any)["plugins"] = []string{"catalog", "search", "newplugin"}
	aiLoad(t, f.config(t, app, "require=require"))
	newKey := testkit.NewECKey(t, "new-key")
	f.plugins.Set("newplugin", newKey)
	base = f.plugins.All.Load()
	var more []string
	for i := range 300 {
		more = append(more, forger.Sign(t, forger.Hdr(identity.TypePlugin), claims(fmt.Sprintf("other-%d", i))))
	}
	if got := getAll(t, "/api/proxy/require/x", more); got[401] != 300 {
		t.Fatalf("made-up ids with an allowlist: %v", got)
	}
	if n := f.plugins.All.Load() - base; n != 0 {
		t.Fatalf("made-up ids with an allowlist: %d fetches, want 0", n)
	}
	status, body = aiGet(t, "/api/proxy/require/x", "Bearer "+newKey.Sign(t, newKey.Hdr(identity.TypePlugin), claims("newplugin")))
	if h, _ := f.upstream.seen(); status != 200 || h.Get("X-Principal") != "plugin:newplugin" {
		t.Fatalf("a named new plugin after the flood: %d %s", status, body)
	}
}

// extApp is the backstage app with one jwks external-access entry at url.
func extApp(url string) map[string]any {
	return map[string]any{"external_access": []any{map[string]any{"jwks": map[string]any{"url": url}}}}
}

func extToken(t *testing.T, k *testkit.Key) string {
	now := time.Now().Unix()
	return k.Sign(t, k.Hdr(""), map[string]any{"sub": "svc", "iat": now, "exp": now + 3600})
}

// Item 2: a key set URL that redirects to another origin supplies no key.
func TestIntegrationKeySetCrossOriginRedirect(t *testing.T) {
	f := newAIFixture(t)
	evil := testkit.NewRSAKey(t, "evil")
	elsewhere := testkit.NewJWKSServer(t, evil)
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/same" {
			http.Redirect(w, r, f.ext.KeySetURL(), http.StatusFound) // f.ext: another port too
			return
		}
		http.Redirect(w, r, elsewhere.KeySetURL(), http.StatusFound)
	}))
	t.Cleanup(redirector.Close)
	aiLoad(t, f.config(t, extApp(redirector.URL+fmt.Sprintf("/n%d/jwks.json", testkit.Nonce.Add(1))), "require=require"))
	if status, body := aiGet(t, "/api/proxy/require/x", "Bearer "+extToken(t, evil)); status != 401 {
		t.Fatalf("a token signed with a key from a cross-origin redirect: %d %s", status, body)
	}
	if n := elsewhere.Hits.Load(); n != 0 {
		t.Fatalf("the other origin was asked %d times", n)
	}
	// Control: the same key served directly is accepted.
	aiLoad(t, f.config(t, extApp(elsewhere.KeySetURL()), "require=require"))
	if status, body := aiGet(t, "/api/proxy/require/x", "Bearer "+extToken(t, evil)); status != 200 {
		t.Fatalf("control: %d %s", status, body)
	}
}

// Item 4: an oversized RSA key in a key set is never used: the token is
// refused without a signature check.
func TestIntegrationOversizedRSAKey(t *testing.T) {
	f := newAIFixture(t)
	b64 := base64.RawURLEncoding
	n := new(big.Int).Lsh(big.NewInt(1), 16383)
	n.Add(n, big.NewInt(12345))
	e := big.NewInt(1<<31 - 1)
	big1 := map[string]any{"kty": "RSA", "n": b64.EncodeToString(n.Bytes()), "e": b64.EncodeToString(e.Bytes()), "kid": "big", "alg": "RS256"}
	srv := testkit.NewJWKSServer(t)
	srv.SetJWKs(big1)
	aiLoad(t, f.config(t, extApp(srv.KeySetURL()), "require=require"))
	now := time.Now().Unix()
	input := testkit.EncodeSegment(t, map[string]any{"alg": "RS256", "kid": "big"}) + "." + testkit.EncodeSegment(t, map[string]any{"sub": "svc", "exp": now + 3600})
	tok := input + "." + b64.EncodeToString(n.Bytes()[:len(n.Bytes())-1]) // a modulus-sized signature
	before := identity.SignatureChecks()
	start := time.Now()
	status, body := aiGet(t, "/api/proxy/require/x", "Bearer "+tok)
	if status != 401 {
		t.Fatalf("token for an oversized key: %d %s", status, body)
	}
	if d := identity.SignatureChecks() - before; d != 0 {
		t.Fatalf("%d signature checks with an oversized RSA key", d)
	}
	if srv.Hits.Load() == 0 {
		t.Fatal("the key set was never fetched: the test proves nothing")
	}
	t.Logf("refused in %v", time.Since(start))
}

// Item 5: two different keys under one kid: tokens signed by either are
// refused, like Backstage; a key with a kid of its own still works.
func TestIntegrationDuplicateKid(t *testing.T) {
	f := newAIFixture(t)
	a, b, solo := testkit.NewECKey(t, "dup"), testkit.NewECKey(t, "dup"), testkit.NewECKey(t, "solo")
	srv := testkit.NewJWKSServer(t, a, b, solo)
	aiLoad(t, f.config(t, extApp(srv.KeySetURL()), "require=require"))
	for name, k := range map[string]*testkit.Key{"first": a, "second": b} {
		if status, body := aiGet(t, "/api/proxy/require/x", "Bearer "+extToken(t, k)); status != 401 {
			t.Errorf("%s key under a duplicate kid: %d %s", name, status, body)
		}
	}
	if status, body := aiGet(t, "/api/proxy/require/x", "Bearer "+extToken(t, solo)); status != 200 {
		t.Fatalf("control: %d %s", status, body)
	}
}

// TestIntegrationDiscoveryPerPluginKeySets: a split deployment, with the
// catalog and search plugins on two different hosts named by
// discovery.endpoints: each plugin's token keys are fetched from its own
// host, through the adapter and a real Caddy (#13).
func TestIntegrationDiscoveryPerPluginKeySets(t *testing.T) {
	skipIfShort(t)
	catalogKey, searchKey := testkit.NewECKey(t, "catalog-key"), testkit.NewECKey(t, "search-key")
	hostA, hostB := testkit.NewPluginServer(t), testkit.NewPluginServer(t)
	hostA.Set("catalog", catalogKey)
	hostB.Set("search", searchKey)
	base := func(s *testkit.PluginServer) string {
		return strings.TrimSuffix(s.Template(), "/{plugin}/.backstage/auth/v1/jwks.json") + "/{{pluginId}}"
	}
	up := newAIUpstream(t)
	loadTestCaddy(t, `
caddy:
  admin: localhost:2999
backend:
  listen: {port: 9080}
discovery:
  endpoints:
    - target: '`+base(hostA)+`'
      plugins: [catalog]
    - target: {internal: '`+base(hostB)+`', external: 'https://search.example.com/api/{{pluginId}}'}
      plugins: [search]
proxy:
  endpoints:
    /svc:
      target: `+up.URL+`
`, "backstage")
	now := time.Now().Unix()
	token := func(k *testkit.Key, sub string) string {
		return "Bearer " + k.Sign(t, k.Hdr(identity.TypePlugin), map[string]any{"sub": sub, "aud": "proxy", "iat": now, "exp": now + 3600})
	}
	for _, tc := range []struct {
		name, auth string
		want       int
	}{
		{"catalog from host A", token(catalogKey, "catalog"), 200},
		{"search from host B", token(searchKey, "search"), 200},
		{"search signed with catalog's key", token(catalogKey, "search"), 401},
		{"a plugin discovery does not name", token(catalogKey, "scaffolder"), 401},
	} {
		status, body := aiGet(t, "/api/proxy/svc/x", tc.auth)
		if status != tc.want {
			t.Errorf("%s: %d %s, want %d", tc.name, status, body, tc.want)
		}
	}
	if a, b := hostA.HitsFor("catalog"), hostB.HitsFor("search"); a != 1 || b < 1 {
		t.Errorf("key set fetches: catalog on host A %d, search on host B %d", a, b)
	}
	if n := hostA.HitsFor("search") + hostB.HitsFor("catalog") + hostA.HitsFor("scaffolder") + hostB.HitsFor("scaffolder"); n != 0 {
		t.Errorf("%d fetches from the wrong host or for an unnamed plugin", n)
	}
}
