package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/testkit"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// observeJWKSLogs captures the key caches' log output for the test. It must be
// called before the caches are built.
func observeJWKSLogs(t *testing.T) *observer.ObservedLogs {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	l := zap.New(core)
	prev := testKeySetLog.Swap(l)
	t.Cleanup(func() { testKeySetLog.Store(prev) })
	return logs
}

func countLevel(logs *observer.ObservedLogs, level zapcore.Level) int {
	n := 0
	for _, e := range logs.All() {
		if e.Level == level {
			n++
		}
	}
	return n
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// authenticateConcurrently authenticates n tokens at once, each in its own
// goroutine, token(i) minting the i-th. The returned wait blocks until all
// are done and fails the test for each one refused.
func authenticateConcurrently(t *testing.T, auth *Verifier, n int, token func(i int) string) (wait func()) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for i := range n {
		tok := token(i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := auth.Authenticate(context.Background(), tok); err != nil {
				errs <- err.Message
			}
		}()
	}
	return func() {
		t.Helper()
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Errorf("request failed: %s", e)
		}
	}
}

// userToken mints a typed user token for key k, issued at the clock's now.
func userToken(t testing.TB, clk *testkit.FakeClock, k *testkit.Key, sub string) string {
	return k.Sign(t, k.Hdr(TypeUser), map[string]any{"sub": sub, "iat": clk.Unix(), "exp": clk.At(time.Hour)})
}

func TestKeyRotationNoFailedRequests(t *testing.T) {
	clk := useFakeClock(t)
	current := testkit.NewECKey(t, "key-0")
	srv := testkit.NewJWKSServer(t, current)
	auth := build(t, &Config{UserTokens: &UserTokens{JWKSURL: srv.KeySetURL()}})
	published := []*testkit.Key{current}
	rotations := 0
	for i := range 300 {
		clk.Advance(time.Second)
		if i%20 == 19 {
			// The auth backend creates a key, publishes it, and signs with
			// it right away; the previous keys stay published for a while.
			current = testkit.NewECKey(t, fmt.Sprintf("key-%d", i))
			published = append(published, current)
			if len(published) > 3 {
				published = published[1:]
			}
			srv.SetKeys(published...)
			rotations++
		}
		tok := userToken(t, clk, current, fmt.Sprintf("user:default/u%d", i))
		if _, err := auth.Authenticate(context.Background(), tok); err != nil {
			t.Fatalf("request %d after %d rotations failed: %s", i, rotations, err.Message)
		}
	}
	// One fetch at first use plus one per rotation (300 s < the refresh interval).
	if h, want := srv.Hits.Load(), int64(1+rotations); h != want {
		t.Fatalf("%d fetches, want %d", h, want)
	}
}

func TestRotationRightAfterFetch(t *testing.T) {
	clk := useFakeClock(t)
	k1 := testkit.NewECKey(t, "k1")
	srv := testkit.NewJWKSServer(t, k1)
	auth := build(t, &Config{UserTokens: &UserTokens{JWKSURL: srv.KeySetURL()}})
	expectOK(t, auth, userToken(t, clk, k1, "user:default/a"))
	clk.Advance(2 * time.Second) // well within jwksForcedMinGap
	k2 := testkit.NewECKey(t, "k2")
	srv.SetKeys(k1, k2)
	expectOK(t, auth, userToken(t, clk, k2, "user:default/a")) // issued after the last fetch: refetched
	if h := srv.Hits.Load(); h != 2 {
		t.Fatalf("%d fetches, want 2", h)
	}
}

func TestForcedRefreshRateLimit(t *testing.T) {
	clk := useFakeClock(t)
	k := testkit.NewECKey(t, "k")
	srv := testkit.NewJWKSServer(t, k)
	auth := build(t, &Config{UserTokens: &UserTokens{JWKSURL: srv.KeySetURL()}})
	expectOK(t, auth, userToken(t, clk, k, "user:default/a")) // fetch 1
	stranger := testkit.NewECKey(t, "unknown")
	oldToken := func() string {
		return stranger.Sign(t, stranger.Hdr(TypeUser), map[string]any{"sub": "u", "iat": clk.At(-time.Hour), "exp": clk.At(time.Hour)})
	}

	// An unknown kid in a token issued before the last fetch: at most one
	// refetch per jwksForcedMinGap.
	clk.Advance(time.Second)
	for range 5 {
		expectErr(t, auth, oldToken(), 401, "Failed user token verification")
	}
	if h := srv.Hits.Load(); h != 1 {
		t.Fatalf("%d fetches within the gap, want 1", h)
	}
	clk.Advance(jwksForcedMinGap)
	for range 5 {
		expectErr(t, auth, oldToken(), 401, "Failed user token verification")
	}
	if h := srv.Hits.Load(); h != 2 {
		t.Fatalf("%d fetches after the gap, want 2", h)
	}

	// Unknown kids in fresh tokens: at most jwksForcedMax per jwksForcedWindow.
	clk.Advance(jwksForcedWindow + time.Second)
	for range 3 * jwksForcedMax {
		clk.Advance(time.Second)
		expectErr(t, auth, userToken(t, clk, stranger, "u"), 401, "Failed user token verification")
	}
	if h, want := srv.Hits.Load(), int64(2+jwksForcedMax); h != want {
		t.Fatalf("%d fetches, want %d", h, want)
	}
	clk.Advance(jwksForcedWindow)
	expectErr(t, auth, userToken(t, clk, stranger, "u"), 401, "Failed user token verification")
	if h, want := srv.Hits.Load(), int64(3+jwksForcedMax); h != want {
		t.Fatalf("%d fetches after the window, want %d", h, want)
	}
}

func TestOutageKeepsLastGoodKeys(t *testing.T) {
	logs := observeJWKSLogs(t)
	clk := useFakeClock(t)
	k := testkit.NewECKey(t, "k")
	srv := testkit.NewJWKSServer(t, k)
	auth := build(t, &Config{UserTokens: &UserTokens{JWKSURL: srv.KeySetURL()}})
	kc := auth.user.keys
	expectOK(t, auth, userToken(t, clk, k, "user:default/a"))

	failures := []struct {
		status int
		body   string
	}{
		{500, "oops"},
		{200, "<html>not json</html>"},
		{200, `{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`},
		{200, `{"no":"keys"}`},
		{404, ""},
	}
	for i, fail := range failures {
		srv.Fail(fail.status, fail.body)
		clk.Advance(jwksMaxRefresh) // stale (and past any backoff): the next use refreshes in the background
		fetches := kc.fetches.Load()
		expectOK(t, auth, userToken(t, clk, k, fmt.Sprintf("user:default/outage%d", i)))
		waitFor(t, "the background refresh", func() bool { return kc.fetches.Load() > fetches })
		// Still the last good keys.
		expectOK(t, auth, userToken(t, clk, k, fmt.Sprintf("user:default/outage%d-again", i)))
	}
	if n := countLevel(logs, zapcore.WarnLevel); n != 1 {
		t.Fatalf("%d warnings for one outage, want 1: %v", n, logs.All())
	}
	if n := countLevel(logs, zapcore.InfoLevel); n != 0 {
		t.Fatalf("%d info messages during the outage", n)
	}

	// Recovery: one Info, and a rotated key is picked up again.
	srv.Fail(0, "")
	k2 := testkit.NewECKey(t, "k2")
	srv.SetKeys(k2)
	clk.Advance(jwksMaxRefresh)
	expectOK(t, auth, userToken(t, clk, k2, "user:default/back"))
	if n := countLevel(logs, zapcore.InfoLevel); n != 1 {
		t.Fatalf("%d info messages after recovery, want 1", n)
	}
	for _, e := range logs.All() {
		for _, f := range e.Context {
			if f.Key == "url" && f.String != srv.KeySetURL() {
				t.Errorf("logged url %q", f.String)
			}
		}
	}

	// A second outage warns again, once.
	srv.Fail(503, "")
	clk.Advance(jwksMaxRefresh)
	fetches := kc.fetches.Load()
	expectOK(t, auth, userToken(t, clk, k2, "user:default/second"))
	waitFor(t, "the background refresh", func() bool { return kc.fetches.Load() > fetches })
	if n := countLevel(logs, zapcore.WarnLevel); n != 2 {
		t.Fatalf("%d warnings after two outages, want 2", n)
	}
}

func TestNoKeysFailClosed(t *testing.T) {
	logs := observeJWKSLogs(t)
	clk := useFakeClock(t)
	k := testkit.NewECKey(t, "k")
	srv := testkit.NewJWKSServer(t, k)
	srv.Fail(502, "bad gateway")
	auth := build(t, &Config{UserTokens: &UserTokens{JWKSURL: srv.KeySetURL()}})

	expectErr(t, auth, userToken(t, clk, k, "user:default/a"), 401, "Failed user token verification")
	// Backoff: no new attempt right away.
	expectErr(t, auth, userToken(t, clk, k, "user:default/a"), 401, "Failed user token verification")
	if h := srv.Hits.Load(); h != 1 {
		t.Fatalf("%d fetches, want 1", h)
	}
	clk.Advance(jwksRetryMin)
	expectErr(t, auth, userToken(t, clk, k, "user:default/a"), 401, "Failed user token verification")
	if h := srv.Hits.Load(); h != 2 {
		t.Fatalf("%d fetches, want 2", h)
	}
	if n := countLevel(logs, zapcore.WarnLevel); n != 1 {
		t.Fatalf("%d warnings, want 1", n)
	}
	if msg := logs.FilterLevelExact(zapcore.WarnLevel).All()[0].Message; !strings.Contains(msg, "refused") {
		t.Fatalf("warning %q", msg)
	}
	srv.Fail(0, "")
	clk.Advance(2 * jwksRetryMin)
	expectOK(t, auth, userToken(t, clk, k, "user:default/a"))
}

func TestCacheMaxAge(t *testing.T) {
	tests := []struct {
		values []string
		want   time.Duration
	}{
		{nil, jwksDefaultRefresh},
		{[]string{"public"}, jwksDefaultRefresh},
		{[]string{"max-age=300"}, 5 * time.Minute},
		{[]string{"public, max-age=5"}, jwksMinRefresh},
		{[]string{"max-age=999999"}, jwksMaxRefresh},
		{[]string{"no-store"}, jwksMinRefresh},
		{[]string{"no-cache", "max-age=300"}, jwksMinRefresh},
		{[]string{`max-age="600"`}, 10 * time.Minute},
		{[]string{"max-age=abc"}, jwksDefaultRefresh},
		{[]string{"max-age=-5"}, jwksDefaultRefresh},
	}
	for _, tc := range tests {
		if got := refreshInterval(cacheMaxAge(tc.values)); got != tc.want {
			t.Errorf("%q: %v, want %v", tc.values, got, tc.want)
		}
	}
}

func TestRefreshLoop(t *testing.T) {
	k := testkit.NewECKey(t, "k")
	srv := testkit.NewJWKSServer(t, k)
	c := newKeyCache(context.Background(), srv.KeySetURL(), testKeySetLogger, nil)
	defer c.Destruct()
	c.mu.Lock()
	c.interval, c.timerOn = 10*time.Millisecond, true
	c.mu.Unlock()
	go c.refreshLoop()
	waitFor(t, "a periodic refresh", func() bool { return c.fetches.Load() >= 1 })
	if c.keys.Load() == nil {
		t.Fatal("no keys after the periodic refresh")
	}
	c.mu.Lock()
	interval := c.interval
	c.mu.Unlock()
	if interval != jwksDefaultRefresh {
		t.Fatalf("interval %v after a fetch without Cache-Control", interval)
	}
}

func TestFetchKeySetLimits(t *testing.T) {
	k := testkit.NewECKey(t, "k")
	big := `{"keys":[` + strings.Repeat(" ", jwksMaxBodyBytes) + `]}`
	mux := http.NewServeMux()
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(big)) })
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/redirect", http.StatusFound) })
	mux.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ok", http.StatusFound) })
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": []any{k.JWK}})
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	ctx := context.Background()
	if _, _, _, err := fetchKeySet(ctx, nil, srv.URL+"/big"); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("big: %v", err)
	}
	if _, _, _, err := fetchKeySet(ctx, nil, srv.URL+"/redirect"); err == nil || !strings.Contains(err.Error(), "redirects") {
		t.Errorf("redirect loop: %v", err)
	}
	if keys, _, _, err := fetchKeySet(ctx, nil, srv.URL+"/moved"); err != nil || len(keys) != 1 {
		t.Errorf("one redirect: %v", err)
	}
	if _, _, _, err := fetchKeySet(ctx, nil, srv.URL+"/status"); err == nil || !strings.Contains(err.Error(), "418") {
		t.Errorf("status: %v", err)
	}
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	defer hang.Close()
	start := time.Now()
	if _, _, _, err := fetchKeySet(cctx, nil, hang.URL); err == nil || time.Since(start) > 2*time.Second {
		t.Errorf("hanging server: %v after %v", err, time.Since(start))
	}
	if jwksHTTPClient.Timeout == 0 || jwksHTTPClient.Timeout > 10*time.Second {
		t.Errorf("client timeout %v", jwksHTTPClient.Timeout)
	}
}

func TestParseKeySet(t *testing.T) {
	ec, rs, ed := testkit.NewECKey(t, "ec"), testkit.NewRSAKey(t, "rs"), testkit.NewEdKey(t, "ed")
	js := func(v any) string { b, _ := json.Marshal(v); return string(b) }
	keys := func(list ...any) string { return js(map[string]any{"keys": list}) }
	ecPriv := ec.JWKWithout()
	ecdhPriv, err := ec.Priv.(*ecdsa.PrivateKey).ECDH()
	if err != nil {
		t.Fatal(err)
	}
	ecPriv["d"] = base64.RawURLEncoding.EncodeToString(ecdhPriv.Bytes())
	tests := []struct {
		name string
		body string
		n    int // usable keys; -1 = error
	}{
		{"three", keys(ec.JWK, rs.JWK, ed.JWK), 3},
		{"empty list", `{"keys":[]}`, 0},
		{"no keys member", `{}`, -1},
		{"keys null", `{"keys":null}`, -1},
		{"not an object", `[]`, -1},
		{"not json", `nope`, -1},
		{"single JWK", js(ec.JWK), -1},
		{"symmetric skipped", keys(map[string]any{"kty": "oct", "k": "c2VjcmV0"}, ec.JWK), 1},
		{"only symmetric", keys(map[string]any{"kty": "oct", "k": "c2VjcmV0"}), -1},
		{"use enc skipped", keys(testkit.With(ec.JWK, "use", "enc"), rs.JWK), 1},
		{"key_ops sign only skipped", keys(testkit.With(ec.JWK, "key_ops", []string{"sign"}), rs.JWK), 1},
		{"key_ops verify kept", keys(testkit.With(ec.JWK, "key_ops", []string{"verify"})), 1},
		{"private key reduced to public", keys(ecPriv), 1},
		{"garbage entries skipped", keys("x", 5, map[string]any{"kty": "EC"}, ec.JWK), 1},
		{"small RSA skipped", keys(smallRSAJWK(t), ec.JWK), 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseKeySet([]byte(tc.body))
			if tc.n < 0 {
				if err == nil {
					t.Fatalf("no error, %d keys", len(got))
				}
				return
			}
			if err != nil || len(got) != tc.n {
				t.Fatalf("%d keys, %v; want %d", len(got), err, tc.n)
			}
		})
	}
	// Private parts never survive: the stored key is public.
	got, _ := parseKeySet([]byte(keys(ecPriv)))
	if _, ok := got[0].key.(*ecdsa.PublicKey); !ok {
		t.Fatalf("stored a %T", got[0].key)
	}
	// At most jwksMaxKeys entries are looked at.
	list := make([]any, jwksMaxKeys+10)
	for i := range list {
		list[i] = testkit.With(ec.JWK, "kid", fmt.Sprint(i))
	}
	got, err = parseKeySet([]byte(keys(list...)))
	if err != nil || len(got) != jwksMaxKeys {
		t.Fatalf("%d keys, %v", len(got), err)
	}
}

func smallRSAJWK(t *testing.T) map[string]any {
	t.Helper()
	priv, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]any{"kty": "RSA", "n": base64.RawURLEncoding.EncodeToString(priv.N.Bytes()), "e": "AQAB", "kid": "small"}
}

func TestKeySelection(t *testing.T) {
	clk := useFakeClock(t)
	ec := testkit.NewECKey(t, "same")
	rs := testkit.NewRSAKey(t, "same")
	srv := testkit.NewJWKSServer(t, rs, ec) // two keys with one kid, different types
	auth := build(t, &Config{UserTokens: &UserTokens{JWKSURL: srv.KeySetURL(), Algorithms: []string{"ES256", "RS256"}}})
	expectOK(t, auth, userToken(t, clk, ec, "user:default/a"))
	expectOK(t, auth, userToken(t, clk, rs, "user:default/a"))
	// A key that declares its alg is only used with that alg.
	srv2 := testkit.NewJWKSServer(t)
	srv2.SetJWKs(testkit.With(rs.JWK, "alg", "PS256"))
	auth2 := build(t, &Config{UserTokens: &UserTokens{JWKSURL: srv2.KeySetURL(), Algorithms: []string{"RS256", "PS256"}}})
	expectErr(t, auth2, userToken(t, clk, rs, "user:default/a"), 401, "Failed user token verification")
}

func TestUsagePoolAcrossReload(t *testing.T) {
	clk := useFakeClock(t)
	k := testkit.NewECKey(t, "k")
	srv := testkit.NewJWKSServer(t, k)
	plugins := testkit.NewPluginServer(t)
	plugins.Set("catalog", k)
	cfg := func() Config {
		return Config{
			UserTokens:     &UserTokens{JWKSURL: srv.KeySetURL()},
			PluginTokens:   &PluginTokens{JWKSURL: plugins.Template()},
			ExternalAccess: []ExternalAccess{{JWKS: &JWKSAccess{URL: srv.KeySetURL()}}},
		}
	}
	userKey := PoolKey{Kind: "jwks", URL: srv.KeySetURL()}
	pluginKey := PoolKey{Kind: "plugin-jwks", URL: plugins.Template()}
	pluginToken := func() string {
		return k.Sign(t, k.Hdr(TypePlugin), map[string]any{"sub": "catalog", "aud": "proxy", "iat": clk.Unix(), "exp": clk.At(time.Hour)})
	}

	// Config A.
	authA, releaseA, err := newForTest(cfg())
	if err != nil {
		t.Fatal(err)
	}
	expectOK(t, authA, userToken(t, clk, k, "user:default/a"))
	expectOK(t, authA, pluginToken())
	if srv.Hits.Load() != 1 || plugins.All.Load() != 1 {
		t.Fatalf("fetches: %d user, %d plugin", srv.Hits.Load(), plugins.All.Load())
	}
	if n, _ := testPool.References(userKey); n != 2 { // user_tokens and the jwks entry share the URL
		t.Fatalf("%d references", n)
	}
	kc := authA.user.keys

	// Reload: B is provisioned before A is cleaned up.
	authB, releaseB, err := newForTest(cfg())
	if err != nil {
		t.Fatal(err)
	}
	releaseA()
	releaseA() // idempotent
	if n, _ := testPool.References(userKey); n != 2 {
		t.Fatalf("%d references after reload", n)
	}
	expectOK(t, authB, userToken(t, clk, k, "user:default/b"))
	expectOK(t, authB, pluginToken())
	if srv.Hits.Load() != 1 || plugins.All.Load() != 1 {
		t.Fatalf("reload refetched: %d user, %d plugin", srv.Hits.Load(), plugins.All.Load())
	}
	if kc.ctx.Err() != nil {
		t.Fatal("shared cache destroyed by the old config's cleanup")
	}

	// Last user gone: the caches are destroyed.
	releaseB()
	if _, ok := testPool.References(userKey); ok {
		t.Fatal("user key cache still in the pool")
	}
	if _, ok := testPool.References(pluginKey); ok {
		t.Fatal("plugin key caches still in the pool")
	}
	if kc.ctx.Err() == nil {
		t.Fatal("cache context not cancelled")
	}

	// A new config starts from scratch.
	authC, releaseC, err := newForTest(cfg())
	if err != nil {
		t.Fatal(err)
	}
	defer releaseC()
	expectOK(t, authC, userToken(t, clk, k, "user:default/c"))
	if h := srv.Hits.Load(); h != 2 {
		t.Fatalf("%d fetches, want 2", h)
	}
}

// ---------------------------------------------------------------------------
// Verification cache
// ---------------------------------------------------------------------------

func TestVerificationCache(t *testing.T) {
	clk := useFakeClock(t)
	k := testkit.NewECKey(t, "k")
	srv := testkit.NewJWKSServer(t, k)
	secret := []byte("legacy-secret-0123456789")
	auth := build(t, &Config{
		UserTokens: &UserTokens{JWKSURL: srv.KeySetURL()},
		ExternalAccess: []ExternalAccess{
			{Legacy: &LegacyAccess{Secret: base64.RawURLEncoding.EncodeToString(secret), Subject: "legacy"}},
			{JWKS: &JWKSAccess{URL: srv.KeySetURL()}, AccessRestrictions: []AccessRestriction{{Plugin: "catalog"}}},
		},
	})
	checks := func() int64 { return signatureChecks.Load() }

	short := k.Sign(t, k.Hdr(TypeUser), map[string]any{"sub": "user:default/a", "iat": clk.Unix(), "exp": clk.At(30 * time.Second)})
	before := checks()
	for range 10 {
		expectOK(t, auth, short)
	}
	if n := checks() - before; n != 1 {
		t.Fatalf("%d signature checks for 10 uses of one token, want 1", n)
	}
	// Never served past its exp.
	clk.Advance(30 * time.Second)
	expectErr(t, auth, short, 401, "Failed user token verification")

	// A long-lived token is re-verified after verifiedCacheTTL.
	long := userToken(t, clk, k, "user:default/b")
	before = checks()
	expectOK(t, auth, long)
	clk.Advance(verifiedCacheTTL - time.Second)
	expectOK(t, auth, long)
	if n := checks() - before; n != 1 {
		t.Fatalf("%d checks within the TTL", n)
	}
	clk.Advance(time.Second)
	expectOK(t, auth, long)
	if n := checks() - before; n != 2 {
		t.Fatalf("%d checks after the TTL, want 2", n)
	}

	// Legacy tokens are cached too.
	leg := testkit.HS256(t, secret, map[string]any{"alg": "HS256"}, map[string]any{"sub": "backstage-server", "exp": clk.At(time.Hour)})
	before = checks()
	expectOK(t, auth, leg)
	expectOK(t, auth, leg)
	if n := checks() - before; n != 1 {
		t.Fatalf("%d checks for a legacy token used twice", n)
	}

	// Rejections are not cached: a restricted jwks token costs a check each time.
	restricted := k.Sign(t, k.Hdr(""), map[string]any{"sub": "svc", "exp": clk.At(time.Hour)})
	before = checks()
	expectErr(t, auth, restricted, 403, "This token's access is restricted to plugin(s) 'catalog'")
	expectErr(t, auth, restricted, 403, "This token's access is restricted to plugin(s) 'catalog'")
	if n := checks() - before; n != 2 {
		t.Fatalf("%d checks for a rejected token used twice, want 2", n)
	}
}

func TestVerifiedCacheEviction(t *testing.T) {
	c := newVerifiedCache(3)
	t0 := time.Unix(1_900_000_000, 0)
	key := func(i byte) (k [32]byte) { k[0] = i; return }
	for i := range byte(5) {
		c.put(key(i), Principal{Subject: fmt.Sprint(i)}, time.Time{}, t0)
	}
	if c.len() != 3 {
		t.Fatalf("%d entries", c.len())
	}
	for i := range byte(5) {
		_, ok := c.get(key(i), t0)
		if want := i >= 2; ok != want {
			t.Errorf("entry %d cached=%v, want %v", i, ok, want)
		}
	}
	// Expiry: exp before the TTL wins; an already expired token is not stored.
	c.put(key(9), Principal{}, t0.Add(time.Second), t0)
	if _, ok := c.get(key(9), t0.Add(time.Second)); ok {
		t.Error("served at exp")
	}
	c.put(key(8), Principal{}, t0, t0)
	if _, ok := c.get(key(8), t0.Add(-time.Second)); ok {
		t.Error("stored an expired token")
	}
	// Size 0 disables the cache.
	z := newVerifiedCache(0)
	z.put(key(1), Principal{}, time.Time{}, t0)
	if z.len() != 0 {
		t.Error("size-0 cache stored an entry")
	}
}

func TestConcurrentAuthenticate(t *testing.T) {
	clk := useFakeClock(t)
	k := testkit.NewECKey(t, "k")
	srv := testkit.NewJWKSServer(t, k)
	auth := build(t, &Config{
		UserTokens:     &UserTokens{JWKSURL: srv.KeySetURL()},
		ExternalAccess: []ExternalAccess{{Static: &StaticAccess{Token: "static-token-123", Subject: "s"}}},
	})
	tokens := []string{"static-token-123", "garbage"}
	for i := range 8 {
		tokens = append(tokens, userToken(t, clk, k, fmt.Sprintf("user:default/u%d", i)))
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				tok := tokens[(g+i)%len(tokens)]
				_, err := auth.Authenticate(context.Background(), tok)
				if (tok == "garbage") != (err != nil) {
					t.Errorf("token %d: %v", (g+i)%len(tokens), err)
					return
				}
				if i%50 == 0 {
					clk.Advance(time.Second)
				}
			}
		}()
	}
	wg.Wait()
}

// ---------------------------------------------------------------------------
// Benchmarks
// ---------------------------------------------------------------------------

func benchAuth(b *testing.B, k *testkit.Key, algs []string) (*Verifier, *testkit.FakeClock) {
	clk := useFakeClock(b)
	srv := testkit.NewJWKSServer(b, k)
	return build(b, &Config{
		UserTokens:     &UserTokens{JWKSURL: srv.KeySetURL(), Algorithms: algs},
		ExternalAccess: []ExternalAccess{{Static: &StaticAccess{Token: "static-token-123", Subject: "s"}}},
	}), clk
}

func BenchmarkAuthenticate(b *testing.B) {
	run := func(b *testing.B, auth authenticator, tok string) {
		b.Helper()
		expectOK(b, auth, tok)
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if _, err := auth.Authenticate(context.Background(), tok); err != nil {
				b.Fatal(err.Message)
			}
		}
	}
	b.Run("ES256-uncached", func(b *testing.B) {
		k := testkit.NewECKey(b, "k")
		auth, clk := benchAuth(b, k, nil)
		auth.cache = newVerifiedCache(0)
		run(b, auth, userToken(b, clk, k, "user:default/a"))
	})
	b.Run("ES256-cached", func(b *testing.B) {
		k := testkit.NewECKey(b, "k")
		auth, clk := benchAuth(b, k, nil)
		run(b, auth, userToken(b, clk, k, "user:default/a"))
	})
	b.Run("RS256-uncached", func(b *testing.B) {
		k := testkit.NewRSAKey(b, "k")
		auth, clk := benchAuth(b, k, []string{"RS256"})
		auth.cache = newVerifiedCache(0)
		run(b, auth, userToken(b, clk, k, "user:default/a"))
	})
	b.Run("static", func(b *testing.B) {
		k := testkit.NewECKey(b, "k")
		auth, _ := benchAuth(b, k, nil)
		run(b, auth, "static-token-123")
	})
	// Plugin tokens: the plugin's key set comes from its own JWKS URL.
	for _, cached := range []bool{false, true} {
		name := map[bool]string{false: "plugin-ES256-uncached", true: "plugin-ES256-cached"}[cached]
		b.Run(name, func(b *testing.B) {
			f := newPluginFixture(b, nil)
			if !cached {
				f.auth.cache = newVerifiedCache(0)
			}
			run(b, f.auth, f.catalog.Sign(b, f.catalog.Hdr(TypePlugin), f.claims("catalog")))
		})
	}
	// A plugin token on behalf of a user: two signatures to check.
	b.Run("plugin-obo-uncached", func(b *testing.B) {
		f := newPluginFixture(b, nil)
		f.auth.cache = newVerifiedCache(0)
		obo := f.limitedUserToken(b, "user:default/alice", 30*time.Minute)
		run(b, f.auth, f.catalog.Sign(b, f.catalog.Hdr(TypePlugin), testkit.With(f.claims("catalog"), "obo", obo)))
	})
	// Legacy (HS256 shared secret) tokens.
	for _, cached := range []bool{false, true} {
		name := map[bool]string{false: "legacy-HS256-uncached", true: "legacy-HS256-cached"}[cached]
		b.Run(name, func(b *testing.B) {
			clk := useFakeClock(b)
			secret := []byte("peer-legacy-shared-secret-0123456789")
			auth := build(b, &Config{ExternalAccess: []ExternalAccess{
				{Legacy: &LegacyAccess{Secret: base64.StdEncoding.EncodeToString(secret), Subject: "legacy-subject"}},
			}})
			if !cached {
				auth.cache = newVerifiedCache(0)
			}
			run(b, auth, testkit.HS256(b, secret, map[string]any{"alg": "HS256", "typ": "JWT"},
				map[string]any{"sub": "backstage-server", "iat": clk.Unix(), "exp": clk.At(time.Hour)}))
		})
	}
	// External access through a JWKS (RS256).
	b.Run("external-jwks-RS256-uncached", func(b *testing.B) {
		f := newExtFixture(b, JWKSAccess{Issuers: []string{"https://ext.example.com"}, Algorithms: []string{"RS256"}})
		f.auth.cache = newVerifiedCache(0)
		run(b, f.auth, f.key.Sign(b, f.key.Hdr(""), map[string]any{"iss": "https://ext.example.com", "sub": "svc-1", "iat": f.clk.Unix(), "exp": f.clk.At(time.Hour)}))
	})
}
