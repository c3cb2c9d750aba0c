package identity

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/testkit"
	"go.uber.org/zap/zapcore"
)

// Issue #15 item 1: 1,024 case variants of one plugin id are one plugin: one
// key set fetch, no table growth, and a genuine token of a new plugin still
// passes afterwards.
func TestPluginCaseVariantsAreOnePlugin(t *testing.T) {
	f := newPluginFixture(t, nil)
	// The forger uses the kid of scaffolder's key: a kid the key set lacks
	// would also cost the (separately rate-limited) forced refetches.
	forger := testkit.NewECKey(t, "scaffolder-key")
	f.plugins.Set("scaffolder", testkit.NewECKey(t, "scaffolder-key"))
	f.plugins.Set("search", f.catalog)
	variants := testkit.CaseVariants("scaffolder")
	if len(variants) != 1024 {
		t.Fatalf("%d variants", len(variants))
	}
	// Unsigned (alg none) tokens never cause a fetch.
	for _, id := range variants {
		tok := testkit.EncodeSegment(t, map[string]any{"alg": "none", "typ": TypePlugin}) + "." + testkit.EncodeSegment(t, f.claims(id)) + "."
		expectErr(t, f.auth, tok, 401, "Failed plugin token verification")
	}
	if n := f.plugins.All.Load(); n != 0 {
		t.Fatalf("unsigned tokens caused %d key set fetches, want 0", n)
	}
	// Forged ES256 tokens: one fetch, for the lower-case id.
	for _, id := range variants {
		expectErr(t, f.auth, forger.Sign(t, forger.Hdr(TypePlugin), f.claims(id)), 401, "Failed plugin token verification")
	}
	if n, all := f.plugins.HitsFor("scaffolder"), f.plugins.All.Load(); n != 1 || all != 1 {
		t.Fatalf("forged case variants: %d fetches of scaffolder, %d in all; want 1 and 1", n, all)
	}
	sets := f.auth.plugin.sets
	sets.mu.Lock()
	confirmed := len(sets.confirmed)
	sets.mu.Unlock()
	if confirmed != 1 {
		t.Fatalf("%d confirmed plugins, want 1", confirmed)
	}
	// A genuine token of a plugin not seen before passes, with one fetch.
	p := expectOK(t, f.auth, f.catalog.Sign(t, f.catalog.Hdr(TypePlugin), f.claims("search")))
	if p.Subject != "plugin:search" || f.plugins.HitsFor("search") != 1 {
		t.Fatalf("search: %+v, %d fetches", p, f.plugins.HitsFor("search"))
	}
	// The principal names the plugin in lower case whatever the token's case.
	p = expectOK(t, f.auth, f.catalog.Sign(t, f.catalog.Hdr(TypePlugin), testkit.With(f.claims("SeArCh"), "jti", "x")))
	if p.Subject != "plugin:search" || f.plugins.HitsFor("search") != 1 {
		t.Fatalf("SeArCh: %+v, %d fetches", p, f.plugins.HitsFor("search"))
	}
}

// Unknown ids: the same one repeated costs one fetch per pluginNegativeTTL;
// distinct ones at most pluginCheckBudget fetches per window; confirmed
// plugins are unaffected; the budget comes back.
func TestPluginCheckBudgetAndNegativeCache(t *testing.T) {
	f := newPluginFixture(t, nil)
	c := f.catalog
	expectOK(t, f.auth, c.Sign(t, c.Hdr(TypePlugin), f.claims("catalog")))
	base := f.plugins.All.Load()
	for range 50 {
		expectErr(t, f.auth, c.Sign(t, c.Hdr(TypePlugin), f.claims("unknown")), 401, PluginWithoutKeySet("unknown").Message)
	}
	if n := f.plugins.All.Load() - base; n != 1 {
		t.Fatalf("the same unknown id 50 times: %d fetches, want 1", n)
	}
	refused := 0
	for i := range 300 {
		_, err := f.auth.Authenticate(context.Background(), c.Sign(t, c.Hdr(TypePlugin), f.claims(fmt.Sprintf("made-up-%d", i))))
		if err == nil {
			t.Fatal("a made-up plugin passed")
		}
		if err.Message == "Failed plugin token verification" {
			refused++
		}
	}
	// catalog's and unknown's checks were charged to the budget too.
	fetched := f.plugins.All.Load() - base
	if fetched+1 != pluginCheckBudget || refused != 300-(pluginCheckBudget-2) {
		t.Fatalf("300 made-up ids: %d fetches (budget %d), %d refused without a fetch", fetched, pluginCheckBudget, refused)
	}
	// A confirmed plugin still passes, without a fetch.
	expectOK(t, f.auth, c.Sign(t, c.Hdr(TypePlugin), testkit.With(f.claims("catalog"), "jti", "2")))
	if n := f.plugins.All.Load() - base; n != fetched {
		t.Fatalf("a confirmed plugin caused a fetch")
	}
	// A new plugin waits for the next window (fail closed), then passes.
	f.plugins.Set("search", c)
	search := c.Sign(t, c.Hdr(TypePlugin), f.claims("search"))
	expectErr(t, f.auth, search, 401, "Failed plugin token verification")
	f.clk.Advance(pluginCheckWindow)
	expectOK(t, f.auth, search)
}

// A named plugin (allowlist) is never charged to the budget, and unknown ids
// never cause a fetch at all; the allowlist ignores case.
func TestPluginAllowlistFoldsCase(t *testing.T) {
	f := newPluginFixture(t, []string{"Catalog"})
	c := f.catalog
	for i := range 100 {
		expectErr(t, f.auth, c.Sign(t, c.Hdr(TypePlugin), f.claims(fmt.Sprintf("other-%d", i))), 401, "Failed plugin token verification")
	}
	if n := f.plugins.All.Load(); n != 0 {
		t.Fatalf("%d fetches for ids outside the allowlist", n)
	}
	p := expectOK(t, f.auth, c.Sign(t, c.Hdr(TypePlugin), f.claims("CATALOG")))
	if p.Subject != "plugin:catalog" {
		t.Fatalf("subject %q", p.Subject)
	}
}

// At most maxPluginChecksInFlight checks of unnamed ids run at once; the
// others are refused at once, without a connection.
func TestPluginChecksInFlightBounded(t *testing.T) {
	clk := useFakeClock(t)
	var inFlight, peak atomic.Int64
	gate := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		<-gate
		inFlight.Add(-1)
		http.NotFound(w, r)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		select {
		case <-gate:
		default:
			close(gate)
		}
	})
	auth := build(t, &Config{PluginTokens: &PluginTokens{JWKSURL: srv.URL + fmt.Sprintf("/n%d/api/{plugin}/jwks.json", testkit.Nonce.Add(1))}})
	k := testkit.NewECKey(t, "k")
	claims := func(id string) map[string]any {
		return map[string]any{"sub": id, "aud": "proxy", "iat": clk.Unix(), "exp": clk.At(time.Hour)}
	}
	var wg sync.WaitGroup
	var quick atomic.Int64
	for i := range 40 {
		tok := k.Sign(t, k.Hdr(TypePlugin), claims(fmt.Sprintf("forged-%d", i)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := auth.Authenticate(context.Background(), tok); err != nil && err.Message == "Failed plugin token verification" {
				quick.Add(1)
			}
		}()
	}
	waitFor(t, "the in-flight checks and the refusals", func() bool {
		return inFlight.Load() == maxPluginChecksInFlight && quick.Load() == 40-maxPluginChecksInFlight
	})
	close(gate)
	wg.Wait()
	if p := peak.Load(); p != maxPluginChecksInFlight {
		t.Fatalf("peak %d checks in flight, want %d", p, maxPluginChecksInFlight)
	}
}

// When the table is full, a new plugin evicts one whose tokens never
// verified; a plugin whose tokens verified stays.
func TestPluginTableEviction(t *testing.T) {
	clk := useFakeClock(t)
	genuine := testkit.NewECKey(t, "g")
	srv := testkit.NewJWKSServer(t, genuine) // serves the key set at any path: every id "exists"
	auth := build(t, &Config{PluginTokens: &PluginTokens{JWKSURL: srv.PluginTemplate()}})
	claims := func(id string) map[string]any {
		return map[string]any{"sub": id, "aud": "proxy", "iat": clk.Unix(), "exp": clk.At(24 * time.Hour)}
	}
	expectOK(t, auth, genuine.Sign(t, genuine.Hdr(TypePlugin), claims("catalog")))
	forger := testkit.NewECKey(t, "g")
	for i := range maxPluginKeySets + 10 {
		if i%pluginCheckBudget == 0 {
			clk.Advance(pluginCheckWindow)
		}
		expectErr(t, auth, forger.Sign(t, forger.Hdr(TypePlugin), claims(fmt.Sprintf("filler-%d", i))), 401, "Failed plugin token verification")
	}
	sets := auth.plugin.sets
	sets.mu.Lock()
	n, catalog := len(sets.confirmed), sets.confirmed["catalog"]
	sets.mu.Unlock()
	hasCatalog := catalog != nil
	if n != maxPluginKeySets || !hasCatalog {
		t.Fatalf("%d confirmed (limit %d), catalog kept: %v", n, maxPluginKeySets, hasCatalog)
	}
	clk.Advance(pluginCheckWindow)
	p := expectOK(t, auth, genuine.Sign(t, genuine.Hdr(TypePlugin), claims("search")))
	if p.Subject != "plugin:search" {
		t.Fatalf("search: %+v", p)
	}
	expectOK(t, auth, genuine.Sign(t, genuine.Hdr(TypePlugin), testkit.With(claims("catalog"), "jti", "2")))
	sets.mu.Lock()
	n, kept, search := len(sets.confirmed), sets.confirmed["catalog"] == catalog, sets.confirmed["search"] != nil
	sets.mu.Unlock()
	if n != maxPluginKeySets || !kept || !search {
		t.Fatalf("after search: %d confirmed, catalog's entry kept %v, search's present %v", n, kept, search)
	}
}

// Issue #15 item 2: key sets follow redirects only within their origin;
// https→http is another origin. Item 4: a configured CA is trusted.
func TestKeySetRedirectsAndCA(t *testing.T) {
	k := testkit.NewECKey(t, "k")
	other := testkit.NewJWKSServer(t, k)
	mux := http.NewServeMux()
	mux.HandleFunc("/cross", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, other.KeySetURL(), http.StatusFound) })
	mux.HandleFunc("/same", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/keys", http.StatusFound) })
	mux.HandleFunc("/keys", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"keys":[` + jwkJSON(t, k.JWK) + `]}`))
	})
	plain := httptest.NewServer(mux)
	defer plain.Close()
	tlsSrv := httptest.NewTLSServer(mux)
	defer tlsSrv.Close()
	ctx := context.Background()
	if _, _, _, err := fetchKeySet(ctx, nil, plain.URL+"/cross"); err == nil || !strings.Contains(err.Error(), "another origin") {
		t.Errorf("cross-origin redirect: %v", err)
	}
	if other.Hits.Load() != 0 {
		t.Errorf("the other origin was contacted")
	}
	if keys, _, _, err := fetchKeySet(ctx, nil, plain.URL+"/same"); err != nil || len(keys) != 1 {
		t.Errorf("same-origin redirect: %v", err)
	}

	// Without the CA the TLS server is not trusted; with it, it is.
	if _, _, _, err := fetchKeySet(ctx, nil, tlsSrv.URL+"/keys"); err == nil {
		t.Errorf("an unknown CA was trusted")
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	tlsConf, _, err := NewKeySetTLS([]string{caFile})
	if err != nil {
		t.Fatal(err)
	}
	client := newKeySetClient(tlsConf)
	if keys, _, _, err := fetchKeySet(ctx, client, tlsSrv.URL+"/keys"); err != nil || len(keys) != 1 {
		t.Errorf("with the CA: %v", err)
	}
	// https → http (another origin) is refused.
	down := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, plain.URL+"/keys", http.StatusFound)
	}))
	defer down.Close()
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: down.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	tlsConf, _, err = NewKeySetTLS([]string{caFile})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := fetchKeySet(ctx, newKeySetClient(tlsConf), down.URL+"/x"); err == nil || !strings.Contains(err.Error(), "another origin") {
		t.Errorf("https→http redirect: %v", err)
	}
	// The CA option end to end: a verifier built with it verifies tokens
	// from a key set served over https.
	clk := useFakeClock(t)
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	auth := build(t, &Config{UserTokens: &UserTokens{JWKSURL: tlsSrv.URL + "/keys"}, KeySetCAFiles: []string{caFile}})
	expectOK(t, auth, userToken(t, clk, k, "user:default/alice"))
	if _, _, err := newForTest(Config{KeySetCAFiles: []string{filepath.Join(t.TempDir(), "missing.pem")}}); err == nil {
		t.Error("a missing CA file was accepted")
	}
}

func jwkJSON(t *testing.T, m map[string]any) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("{")
	first := true
	for k, v := range m {
		if !first {
			b.WriteString(",")
		}
		first = false
		fmt.Fprintf(&b, "%q:%q", k, v)
	}
	b.WriteString("}")
	return b.String()
}

// Issue #15 item 4: oversized RSA moduli and large or even exponents are
// not usable keys.
func TestRSAKeyLimits(t *testing.T) {
	b64 := base64.RawURLEncoding
	randOdd := func(bits int) string {
		n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), uint(bits)))
		if err != nil {
			t.Fatal(err)
		}
		n.SetBit(n, bits-1, 1)
		n.SetBit(n, 0, 1)
		return b64.EncodeToString(n.Bytes())
	}
	e := func(v int64) string { return b64.EncodeToString(big.NewInt(v).Bytes()) }
	for _, tc := range []struct {
		name string
		n, e string
		ok   bool
	}{
		{"2048 bits, 65537", randOdd(2048), e(65537), true},
		{"8192 bits, 65537", randOdd(8192), e(65537), true},
		{"8193 bits", randOdd(8193), e(65537), false},
		{"90000 bits, 2^31-1", randOdd(90000), e(1<<31 - 1), false},
		{"2048 bits, 2^31-1", randOdd(2048), e(1<<31 - 1), false},
		{"2048 bits, even exponent", randOdd(2048), e(65536), false},
		{"2048 bits, e = 1", randOdd(2048), e(1), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, ok := parseVerifyKey([]byte(fmt.Sprintf(`{"kty":"RSA","n":%q,"e":%q,"kid":"x"}`, tc.n, tc.e)))
			if ok != tc.ok {
				t.Fatalf("usable %v, want %v", ok, tc.ok)
			}
		})
	}
}

// Issue #15 item 5: two different keys under one kid: tokens naming that
// kid are refused (as jose does), and the key set is warned about once.
func TestDuplicateKidRefused(t *testing.T) {
	logs := observeJWKSLogs(t)
	clk := useFakeClock(t)
	a, b, c := testkit.NewECKey(t, "dup"), testkit.NewECKey(t, "dup"), testkit.NewECKey(t, "solo")
	srv := testkit.NewJWKSServer(t, a, b, c)
	auth := build(t, &Config{UserTokens: &UserTokens{JWKSURL: srv.KeySetURL()}})
	expectErr(t, auth, userToken(t, clk, a, "user:default/a"), 401, "Failed user token verification")
	expectErr(t, auth, userToken(t, clk, b, "user:default/b"), 401, "Failed user token verification")
	expectOK(t, auth, userToken(t, clk, c, "user:default/c"))
	clk.Advance(jwksDefaultRefresh + time.Second)
	expectOK(t, auth, userToken(t, clk, c, "user:default/c2")) // starts a background refresh
	waitFor(t, "the refresh", func() bool { return srv.Hits.Load() >= 2 })
	waitFor(t, "the refresh to be recorded", func() bool {
		return auth.user.keys.fetches.Load() >= srv.Hits.Load()
	})
	warns := 0
	for _, e := range logs.All() {
		if e.Level == zapcore.WarnLevel && strings.Contains(e.Message, "under one kid") {
			warns++
		}
	}
	if warns != 1 {
		t.Fatalf("%d duplicate-kid warnings, want 1", warns)
	}
	// The same key listed twice under one kid is ambiguous too (jose
	// refuses any kid that matches more than one key), but not warned about.
	srv.SetKeys(c, c)
	auth2 := build(t, &Config{UserTokens: &UserTokens{JWKSURL: srv.KeySetURL() + "?2"}})
	expectErr(t, auth2, userToken(t, clk, c, "user:default/c3"), 401, "Failed user token verification")
}

// Issue #15 item 4: one token costs at most maxSignatureChecks signature
// checks across all external access entries.
func TestSignatureChecksPerTokenBounded(t *testing.T) {
	clk := useFakeClock(t)
	var keys []*testkit.Key
	for range jwksMaxCandidates {
		keys = append(keys, testkit.NewECKey(t, ""))
	}
	var jwks []map[string]any
	for _, k := range keys {
		jwks = append(jwks, testkit.Without(k.JWK, "kid"))
	}
	var entries []ExternalAccess
	for range 4 {
		srv := testkit.NewJWKSServer(t)
		srv.SetJWKs(jwks...)
		entries = append(entries, ExternalAccess{JWKS: &JWKSAccess{URL: srv.KeySetURL(), Issuers: []string{"attacker"}}})
	}
	auth := build(t, &Config{ExternalAccess: entries})
	forger := testkit.NewECKey(t, "")
	tok := forger.Sign(t, map[string]any{"alg": "ES256"}, map[string]any{"sub": "x", "iss": "attacker", "exp": clk.At(time.Hour)})
	before := SignatureChecks()
	expectErr(t, auth, tok, 401, "Illegal token")
	if n := SignatureChecks() - before; n != maxSignatureChecks {
		t.Fatalf("%d signature checks for one token, want %d", n, maxSignatureChecks)
	}
	// A genuine token within the budget still passes.
	expectOK(t, auth, keys[0].Sign(t, map[string]any{"alg": "ES256"}, map[string]any{"sub": "x", "iss": "attacker", "exp": clk.At(time.Hour)}))
}

// Per-plugin endpoints (discovery.endpoints naming plugins): the plugin's
// key set comes from its own URL; with no template, other ids never cause a
// fetch.
func TestPluginEndpoints(t *testing.T) {
	clk := useFakeClock(t)
	k := testkit.NewECKey(t, "cat")
	own := testkit.NewJWKSServer(t, k)
	tmpl := testkit.NewPluginServer(t)
	claims := func(id string) map[string]any {
		return map[string]any{"sub": id, "aud": "proxy", "iat": clk.Unix(), "exp": clk.At(time.Hour)}
	}
	only := build(t, &Config{PluginTokens: &PluginTokens{Endpoints: map[string]string{"Catalog": own.KeySetURL()}}})
	if p := expectOK(t, only, k.Sign(t, k.Hdr(TypePlugin), claims("catalog"))); p.Subject != "plugin:catalog" {
		t.Fatalf("subject %q", p.Subject)
	}
	before := own.Hits.Load()
	for i := range 100 {
		id := fmt.Sprintf("other-%d", i)
		expectErr(t, only, k.Sign(t, k.Hdr(TypePlugin), claims(id)), 401, PluginWithoutKeySet(id).Message)
	}
	if n := own.Hits.Load() - before; n != 0 {
		t.Fatalf("%d fetches for ids without an endpoint", n)
	}
	both := build(t, &Config{PluginTokens: &PluginTokens{JWKSURL: tmpl.Template(), Endpoints: map[string]string{"catalog": own.KeySetURL() + "?both"}}})
	expectOK(t, both, k.Sign(t, k.Hdr(TypePlugin), testkit.With(claims("catalog"), "jti", "both")))
	if n := tmpl.HitsFor("catalog"); n != 0 {
		t.Fatalf("catalog's key set was fetched from the template (%d)", n)
	}
	if _, _, err := newForTest(Config{PluginTokens: &PluginTokens{Endpoints: map[string]string{"bad id": own.KeySetURL()}}}); err == nil {
		t.Fatal("an invalid plugin id was accepted")
	}
}

// TestRedactURL: key-set URLs shown in logs and metric labels never carry a
// password, templates included (their `{plugin}` does not parse as a host).
func TestRedactURL(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"http://auth.internal:7007/api/auth/.well-known/jwks.json", "http://auth.internal:7007/api/auth/.well-known/jwks.json"},
		{"https://svc:hunter2@auth.internal/jwks.json", "https://auth.internal/jwks.json"},
		{"http://svc:hunter2@{plugin}-backend:7007/api/{plugin}/.well-known/jwks.json", "http://{plugin}-backend:7007/api/{plugin}/.well-known/jwks.json"},
		{"http://backend:7007/api/{plugin}/.backstage/auth/v1/jwks.json", "http://backend:7007/api/{plugin}/.backstage/auth/v1/jwks.json"},
		{"http://svc:hunter2@host:port/x", "<invalid URL>"},
	} {
		if got := redactURL(c.in); got != c.want {
			t.Errorf("redactURL(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
