package backstageproxy

// Integration tests of the identity layer through a real Caddy: every
// credentials policy × every kind of Backstage credential, loaded as JSON
// (`apps.backstage` + an `apps.http` route `backstage_proxy` → `reverse_proxy`)
// through the admin API. Key sets are served by httptest servers that count
// requests; tokens are signed with keys generated here.
//
// caddytest runs one Caddy per test binary (admin and listener on ports
// reserved per test binary: loadTestCaddy replaces the fixed ports of
// aiFixture.config), so these tests never use t.Parallel and are skipped
// with -short.

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/identity"
	"github.com/caddy-backstage/caddy-backstage-proxy/internal/testkit"
)

// aiUpstream records the headers of every request it receives.
type aiUpstream struct {
	recordingUpstream[http.Header]
}

func newAIUpstream(t *testing.T) *aiUpstream {
	u := &aiUpstream{}
	u.Server = newTestUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.record(r.Header.Clone())
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"ok":true}`)
	}))
	return u
}

// seen is the headers of the last request and how many requests came.
func (u *aiUpstream) seen() (http.Header, int) {
	rs := u.requests()
	if len(rs) == 0 {
		return nil, 0
	}
	return rs[len(rs)-1], len(rs)
}

// aiFixture holds the key servers, the keys and the upstream.
type aiFixture struct {
	userKey, catalogKey, extKey *testkit.Key
	users                       *testkit.JWKSServer
	plugins                     *testkit.PluginServer
	ext                         *testkit.JWKSServer
	upstream                    *aiUpstream
	legacySecret, keysSecret    []byte
}

func newAIFixture(t *testing.T) *aiFixture {
	t.Helper()
	skipIfShort(t)
	f := &aiFixture{
		userKey: testkit.NewECKey(t, "user-key"), catalogKey: testkit.NewECKey(t, "catalog-key"), extKey: testkit.NewRSAKey(t, "ext-key"),
		legacySecret: []byte("integration-legacy-secret"), keysSecret: []byte("integration-keys-secret"),
	}
	f.users = testkit.NewJWKSServer(t, f.userKey)
	f.plugins = testkit.NewPluginServer(t)
	f.plugins.Set("catalog", f.catalogKey)
	f.ext = testkit.NewJWKSServer(t, f.extKey)
	f.upstream = newAIUpstream(t)
	return f
}

// app is the `apps.backstage` JSON.
func (f *aiFixture) app(disableDefaultPolicy bool) map[string]any {
	app := map[string]any{
		"user_tokens":   map[string]any{"jwks_url": f.users.KeySetURL()},
		"plugin_tokens": map[string]any{"jwks_url": f.plugins.Template()},
		"external_access": []any{
			map[string]any{"static": map[string]any{"token": "static-token-123", "subject": "static-subject"}},
			map[string]any{"static": map[string]any{"token": "restricted-token-123", "subject": "r"},
				"access_restrictions": []any{map[string]any{"plugin": "catalog"}}},
			map[string]any{"legacy": map[string]any{"secret": base64.StdEncoding.EncodeToString(f.legacySecret), "subject": "legacy-subject"}},
			map[string]any{"jwks": map[string]any{
				"url": f.ext.KeySetURL(), "issuers": []string{"https://ext.example.com"}, "audiences": []string{"backstage-proxy"},
				"algorithms": []string{"RS256"}, "subject_prefix": "ext",
			}},
		},
		"keys": []any{map[string]any{"secret": base64.StdEncoding.EncodeToString(f.keysSecret)}},
	}
	if disableDefaultPolicy {
		app["dangerously_disable_default_auth_policy"] = true
	}
	return app
}

// config is the whole Caddy JSON config: one route per credentials policy.
func (f *aiFixture) config(t *testing.T, app map[string]any, routes ...string) string {
	t.Helper()
	var rs []aiRoute
	for _, r := range routes {
		name, creds, _ := strings.Cut(r, "=")
		rs = append(rs, aiRoute{name: name, handler: map[string]any{"credentials": creds}})
	}
	return f.configRoutes(t, app, rs...)
}

// aiRoute is one route of configRoutes: /api/proxy/<name>, with the
// backstage_proxy handler's settings, to upstream (default: the fixture's).
type aiRoute struct {
	name     string
	handler  map[string]any
	upstream string
}

// configRoutes is the whole Caddy JSON config for routes.
func (f *aiFixture) configRoutes(t *testing.T, app map[string]any, routes ...aiRoute) string {
	t.Helper()
	var rs []any
	for _, r := range routes {
		handler := map[string]any{"handler": "backstage_proxy", "route": "/" + r.name}
		for k, v := range r.handler {
			handler[k] = v
		}
		upstream := r.upstream
		if upstream == "" {
			upstream = f.upstream.Listener.Addr().String()
		}
		rs = append(rs, map[string]any{
			"match": []any{map[string]any{"path": []string{"/api/proxy/" + r.name, "/api/proxy/" + r.name + "/*"}}},
			"handle": []any{
				handler,
				map[string]any{
					"handler":   "reverse_proxy",
					"upstreams": []any{map[string]any{"dial": upstream}},
					"headers": map[string]any{"request": map[string]any{"set": map[string]any{
						"X-Principal":        []string{"{http.auth.user.id}"},
						"X-Principal-Type":   []string{"{http.backstage_proxy.principal.type}"},
						"X-Principal-Method": []string{"{http.backstage_proxy.principal.method}"},
					}}},
				},
			},
			"terminal": true,
		})
	}
	cfg := map[string]any{
		"admin": map[string]any{"listen": "localhost:2999"},
		"apps": map[string]any{
			"backstage": app,
			"http": map[string]any{
				"http_port": 9080, "https_port": 9443, "grace_period": 1,
				"servers": map[string]any{fmt.Sprintf("identity%d", testkit.Nonce.Add(1)): map[string]any{
					"listen":          []string{":9080"},
					"automatic_https": map[string]any{"disable": true},
					"routes":          rs,
					"errors":          map[string]any{"routes": []any{map[string]any{"handle": []any{map[string]any{"handler": "backstage_error"}}}}},
				}},
			},
			"pki": map[string]any{"certificate_authorities": map[string]any{"local": map[string]any{"install_trust": false}}},
		},
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func aiLoad(t *testing.T, cfg string) {
	t.Helper()
	loadTestCaddy(t, cfg, "json")
	// The ports are reserved per test binary, then freed for Caddy: another
	// process may have taken one in between and load its own config into
	// this Caddy. Say so when a test fails, rather than leave a puzzling
	// failure.
	var want struct {
		Apps struct {
			HTTP struct {
				Servers map[string]json.RawMessage `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	_ = json.Unmarshal([]byte(cfg), &want)
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		res, err := http.Get(testAdmin + "/config/apps/http/servers")
		if err != nil {
			return
		}
		defer res.Body.Close()
		var got map[string]json.RawMessage
		_ = json.NewDecoder(res.Body).Decode(&got)
		for name := range want.Apps.HTTP.Servers {
			if _, ok := got[name]; !ok {
				t.Logf("NOTE: the test's Caddy config was replaced during the test (server %q is gone): another process is using port %s or %s", name, testAdminPort, testListenPort)
			}
		}
	})
}

// aiGet sends GET <path> with the given Authorization header ("" = none).
func aiGet(t *testing.T, path, authorization string) (int, []byte) {
	t.Helper()
	header := http.Header{}
	if authorization != "" {
		header.Set("Authorization", authorization)
	}
	status, _, body := aiDo(t, path, header)
	return status, body
}

// aiDo sends GET <path> with header, and returns the answer.
func aiDo(t *testing.T, path string, header http.Header) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+testListen+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header = header
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, res.Header, body
}

// aiCase is one credential and what a protected route makes of it.
type aiCase struct {
	name   string
	header string
	status int                // on require/forward routes
	msg    string             // error message when status is not 200
	want   identity.Principal // when status is 200
}

func (f *aiFixture) cases(t *testing.T) []aiCase {
	now := time.Now().Unix()
	u, c, e := f.userKey, f.catalogKey, f.extKey
	user := map[string]any{"sub": "user:default/alice", "aud": "backstage", "iat": now, "exp": now + 3600, "ent": []string{"user:default/alice"}}
	limited := u.Sign(t, u.Hdr(identity.TypeLimitedUser), map[string]any{"sub": "user:default/alice", "iat": now, "exp": now + 3600})
	plugin := map[string]any{"sub": "catalog", "aud": "proxy", "iat": now, "exp": now + 3600}
	legacy := map[string]any{"sub": "backstage-server", "iat": now, "exp": now + 3600}
	ext := map[string]any{"sub": "svc-1", "iss": "https://ext.example.com", "aud": "backstage-proxy", "iat": now, "exp": now + 3600}
	hs := map[string]any{"alg": "HS256", "typ": "JWT"}
	svc := func(sub, method string) identity.Principal {
		return identity.Principal{Type: "service", Subject: sub, Method: method}
	}
	return []aiCase{
		{"no credentials", "", 401, "Missing credentials", identity.Principal{}},
		{"basic scheme", "Basic YWJjOmRlZg==", 401, "Missing credentials", identity.Principal{}},
		{"invalid token", "Bearer not-valid", 401, "Illegal token", identity.Principal{}},
		{"static", "Bearer static-token-123", 200, "", svc("static-subject", "static")},
		{"static lowercase scheme", "bearer  static-token-123", 200, "", svc("static-subject", "static")},
		{"static restricted", "Bearer restricted-token-123", 403, "This token's access is restricted to plugin(s) 'catalog'", identity.Principal{}},
		{"user", "Bearer " + u.Sign(t, u.Hdr(identity.TypeUser), user), 200, "", identity.Principal{Type: "user", Subject: "user:default/alice", Method: "user"}},
		{"user untyped", "Bearer " + u.Sign(t, u.Hdr(""), user), 200, "", identity.Principal{Type: "user", Subject: "user:default/alice", Method: "user"}},
		{"user expired", "Bearer " + u.Sign(t, u.Hdr(identity.TypeUser), testkit.With(user, "exp", now-60)), 401, "Failed user token verification", identity.Principal{}},
		{"user unknown key", "Bearer " + testkit.NewECKey(t, "other").Sign(t, map[string]any{"alg": "ES256", "kid": "other", "typ": identity.TypeUser}, user), 401, "Failed user token verification", identity.Principal{}},
		{"limited user", "Bearer " + limited, 401, "Illegal limited user token", identity.Principal{}},
		{"plugin", "Bearer " + c.Sign(t, c.Hdr(identity.TypePlugin), plugin), 200, "", svc("plugin:catalog", "plugin")},
		{"plugin obo", "Bearer " + c.Sign(t, c.Hdr(identity.TypePlugin), testkit.With(plugin, "obo", limited)), 200, "", identity.Principal{Type: "user", Subject: "user:default/alice", Method: "plugin"}},
		{"plugin for another target", "Bearer " + c.Sign(t, c.Hdr(identity.TypePlugin), testkit.With(plugin, "aud", "search")), 401, "Failed plugin token verification", identity.Principal{}},
		{"plugin forbidden subject", "Bearer " + c.Sign(t, c.Hdr(identity.TypePlugin), testkit.With(plugin, "sub", "ca talog")), 401, "Invalid plugin token: forbidden subject format", identity.Principal{}},
		{"plugin without JWKS", "Bearer " + c.Sign(t, c.Hdr(identity.TypePlugin), testkit.With(plugin, "sub", "nosuchplugin")), 401, identity.PluginWithoutKeySet("nosuchplugin").Message, identity.Principal{}},
		{"legacy", "Bearer " + testkit.HS256(t, f.legacySecret, hs, legacy), 200, "", svc("legacy-subject", "legacy")},
		{"legacy keys", "Bearer " + testkit.HS256(t, f.keysSecret, hs, legacy), 200, "", svc("external:backstage-plugin", "legacy")},
		{"legacy expired (D4)", "Bearer " + testkit.HS256(t, f.legacySecret, hs, testkit.With(legacy, "exp", now-60)), 401, "Failed legacy token verification", identity.Principal{}},
		{"legacy other key", "Bearer " + testkit.HS256(t, []byte("nope"), hs, legacy), 401, "Illegal token", identity.Principal{}},
		{"jwks", "Bearer " + e.Sign(t, e.Hdr(""), ext), 200, "", svc("external:ext:svc-1", "jwks")},
		{"jwks wrong audience", "Bearer " + e.Sign(t, e.Hdr(""), testkit.With(ext, "aud", "other")), 401, "Illegal token", identity.Principal{}},
	}
}

// checkError checks a Backstage JSON error body.
func checkError(t *testing.T, body []byte, status int, path, msg, header string) {
	t.Helper()
	var got struct {
		Error struct {
			Name    string `json:"name"`
			Message string `json:"message"`
		} `json:"error"`
		Request struct {
			Method string `json:"method"`
			URL    string `json:"url"`
		} `json:"request"`
		Response struct {
			StatusCode int `json:"statusCode"`
		} `json:"response"`
	}
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("error body %q: %v", body, err)
	}
	name := "AuthenticationError"
	if status == 403 {
		name = "NotAllowedError"
	}
	if got.Error.Name != name || got.Error.Message != msg || got.Response.StatusCode != status ||
		got.Request.Method != "GET" || got.Request.URL != strings.TrimPrefix(path, "/api/proxy") {
		t.Fatalf("error body %s, want %s %q for %s", body, name, msg, path)
	}
	if tok, ok := strings.CutPrefix(strings.ToLower(header), "bearer "); ok {
		testkit.AssertNoTokenContent(t, strings.TrimSpace(header[len(header)-len(tok):]), string(body))
	}
}

func TestIntegrationIdentityMatrix(t *testing.T) {
	f := newAIFixture(t)
	aiLoad(t, f.config(t, f.app(false), "require=require", "forward=forward", "open=dangerously-allow-unauthenticated"))
	for _, tc := range f.cases(t) {
		for _, mode := range []string{"require", "forward", "open"} {
			t.Run(mode+"/"+tc.name, func(t *testing.T) {
				path := "/api/proxy/" + mode + "/p"
				_, before := f.upstream.seen()
				status, body := aiGet(t, path, tc.header)
				want := tc.status
				if mode == "open" {
					want = 200
				}
				if status != want {
					t.Fatalf("status %d, want %d: %s", status, want, body)
				}
				got, after := f.upstream.seen()
				if want != 200 {
					checkError(t, body, want, path, tc.msg, tc.header)
					if after != before {
						t.Fatal("a rejected request reached the upstream")
					}
					return
				}
				if after != before+1 {
					t.Fatal("the upstream did not get the request")
				}
				authz := got.Get("Authorization")
				if mode == "forward" {
					if authz != tc.header {
						t.Fatalf("upstream Authorization %q, want %q", authz, tc.header)
					}
				} else if authz != "" {
					t.Fatalf("upstream got Authorization %q", authz)
				}
				if mode != "open" {
					if p := (identity.Principal{Type: got.Get("X-Principal-Type"), Subject: got.Get("X-Principal"), Method: got.Get("X-Principal-Method")}); p != (identity.Principal{Type: tc.want.Type, Subject: tc.want.Subject, Method: tc.want.Method}) {
						t.Fatalf("placeholders %+v, want %+v", p, tc.want)
					}
				}
			})
		}
	}
	// One fetch per key set for the whole matrix, plus, for the user key set,
	// at most one forced refetch per request carrying the unknown kid (two:
	// require and forward) if that token was issued after the last fetch.
	if n := f.users.Hits.Load(); n < 1 || n > 3 {
		t.Errorf("user key set fetched %d times, want 1 to 3", n)
	}
	if n := f.plugins.HitsFor("catalog"); n != 1 {
		t.Errorf("catalog key set fetched %d times, want 1", n)
	}
	if n := f.ext.Hits.Load(); n != 1 {
		t.Errorf("external key set fetched %d times, want 1", n)
	}
}

func TestIntegrationIdentityDisabledDefaultPolicy(t *testing.T) {
	// Conformance case 21: with dangerouslyDisableDefaultAuthPolicy, Backstage's
	// barrier (backend-defaults' createCredentialsBarrier.ts, in httpRouter) and
	// the proxy's own check (router.ts) let every request through.
	f := newAIFixture(t)
	aiLoad(t, f.config(t, f.app(true), "req=require", "fwd=forward"))
	for _, tc := range []struct {
		path, header, upstreamAuthz string
	}{
		{"/api/proxy/req/a", "Bearer garbage", ""},
		{"/api/proxy/fwd/a", "", ""},
		{"/api/proxy/fwd/a", "Bearer garbage", "Bearer garbage"},
	} {
		status, body := aiGet(t, tc.path, tc.header)
		if status != 200 {
			t.Fatalf("%s %q: %d %s", tc.path, tc.header, status, body)
		}
		if got, _ := f.upstream.seen(); got.Get("Authorization") != tc.upstreamAuthz {
			t.Fatalf("%s %q: upstream Authorization %q", tc.path, tc.header, got.Get("Authorization"))
		}
	}
	if n := f.users.Hits.Load() + f.ext.Hits.Load() + f.plugins.All.Load(); n != 0 {
		t.Fatalf("%d key set fetches with the default policy disabled", n)
	}
}

func TestIntegrationIdentityReload(t *testing.T) {
	f := newAIFixture(t)
	now := time.Now().Unix()
	u, c := f.userKey, f.catalogKey
	userTok := func(sub string) string {
		return "Bearer " + u.Sign(t, u.Hdr(identity.TypeUser), map[string]any{"sub": sub, "iat": now, "exp": now + 3600})
	}
	pluginTok := "Bearer " + c.Sign(t, c.Hdr(identity.TypePlugin), map[string]any{"sub": "catalog", "aud": "proxy", "iat": now, "exp": now + 3600})
	expect200 := func(path, header string) {
		t.Helper()
		if status, body := aiGet(t, path, header); status != 200 {
			t.Fatalf("%s: %d %s", path, status, body)
		}
	}

	aiLoad(t, f.config(t, f.app(false), "require=require"))
	expect200("/api/proxy/require/a", userTok("user:default/a"))
	expect200("/api/proxy/require/a", pluginTok)

	// A changed config (one more route) is a reload: the new config is
	// provisioned while the old one runs, so the key caches carry over.
	aiLoad(t, f.config(t, f.app(false), "require=require", "forward=forward"))
	expect200("/api/proxy/forward/b", userTok("user:default/b"))
	expect200("/api/proxy/require/b", pluginTok)
	if n := f.users.Hits.Load(); n != 1 {
		t.Fatalf("user key set fetched %d times across a reload, want 1", n)
	}
	if n := f.plugins.HitsFor("catalog"); n != 1 {
		t.Fatalf("catalog key set fetched %d times across a reload, want 1", n)
	}

	// A config that no longer uses a key set releases it.
	app := f.app(false)
	app["user_tokens"] = map[string]any{"jwks_url": f.users.KeySetURL() + "?v=2"}
	aiLoad(t, f.config(t, app, "require=require"))
	expect200("/api/proxy/require/c", userTok("user:default/c"))
	if n := f.users.Hits.Load(); n != 2 {
		t.Fatalf("user key set fetched %d times, want 2", n)
	}
	if _, ok := keyPool.References(identity.PoolKey{Kind: "jwks", URL: f.users.KeySetURL()}); ok {
		t.Fatal("the old key cache is still in the pool")
	}
}

func TestIntegrationIdentityKeyServerDown(t *testing.T) {
	// Loading a config never waits for key servers; without keys, tokens are
	// refused; once the server answers, they are accepted.
	f := newAIFixture(t)
	f.users.Fail(http.StatusServiceUnavailable, "down")
	gate := f.ext.Hold() // would hang a Provision that fetched
	defer close(gate)
	start := time.Now()
	aiLoad(t, f.config(t, f.app(false), "require=require"))
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("loading the config took %v", d)
	}
	now := time.Now().Unix()
	tok := "Bearer " + f.userKey.Sign(t, f.userKey.Hdr(identity.TypeUser), map[string]any{"sub": "user:default/a", "iat": now, "exp": now + 3600})
	status, body := aiGet(t, "/api/proxy/require/x", tok)
	if status != 401 {
		t.Fatalf("%d %s", status, body)
	}
	checkError(t, body, 401, "/api/proxy/require/x", "Failed user token verification", tok)
	if status, _ := aiGet(t, "/api/proxy/require/x", "Bearer static-token-123"); status != 200 {
		t.Fatalf("static token: %d", status)
	}
	f.users.Fail(0, "")
	time.Sleep(identity.KeySetRetryMin + 100*time.Millisecond) // the retry backoff after the failed fetch
	if status, body := aiGet(t, "/api/proxy/require/x", tok); status != 200 {
		t.Fatalf("after recovery: %d %s (key set requests: %d, paths %v)", status, body, f.users.Hits.Load(), f.users.RequestPaths())
	}
}

// TestIntegrationPluginImpersonation: a plugin that signs a token with its own
// key can never be taken for another plugin. The key set is chosen by the
// token's sub and the principal is named by the verified sub; both are read
// by one strict decoding (exact names, no duplicate members) and must agree.
// Before the fix, evil's key signing {"sub":"catalog","SUB":"evil"} went
// upstream as plugin:catalog (the real Backstage refuses it, 401).
func TestIntegrationPluginImpersonation(t *testing.T) {
	f := newAIFixture(t)
	evilKey := testkit.NewECKey(t, "evil-key")
	f.plugins.Set("evil", evilKey)
	aiLoad(t, f.config(t, f.app(false), "require=require"))

	now := time.Now().Unix()
	c := f.catalogKey
	limited := f.userKey.Sign(t, f.userKey.Hdr(identity.TypeLimitedUser), map[string]any{"sub": "user:default/alice", "iat": now, "exp": now + 3600})
	// claims is a raw JSON payload: maps cannot hold duplicate or case-variant
	// names in a chosen order.
	claims := func(subs string, obo bool) string {
		s := fmt.Sprintf(`{%s,"aud":"proxy","iat":%d,"exp":%d`, subs, now, now+3600)
		if obo {
			s += `,"obo":"` + limited + `"`
		}
		return s + "}"
	}
	type tc struct {
		name  string
		key   *testkit.Key
		hdr   any
		subs  string
		obo   bool
		want  int
		whom  string // the principal a 200 must name
		actor bool
	}
	cases := []tc{
		// Controls: each plugin's genuine token names that plugin.
		{"evil genuine", evilKey, evilKey.Hdr(identity.TypePlugin), `"sub":"evil"`, false, 200, "plugin:evil", false},
		{"catalog genuine", c, c.Hdr(identity.TypePlugin), `"sub":"catalog"`, false, 200, "plugin:catalog", false},
		{"evil genuine obo", evilKey, evilKey.Hdr(identity.TypePlugin), `"sub":"evil"`, true, 200, "user:default/alice", true},
		// Case variants: exact names pick catalog's keys, evil's signature fails.
		{"SUB after", evilKey, evilKey.Hdr(identity.TypePlugin), `"sub":"catalog","SUB":"evil"`, false, 401, "", false},
		{"Sub after", evilKey, evilKey.Hdr(identity.TypePlugin), `"sub":"catalog","Sub":"evil"`, false, 401, "", false},
		{"SUB before", evilKey, evilKey.Hdr(identity.TypePlugin), `"SUB":"evil","sub":"catalog"`, false, 401, "", false},
		{"SUB only", evilKey, evilKey.Hdr(identity.TypePlugin), `"SUB":"catalog"`, false, 401, "", false},
		// Exact duplicates are refused whichever comes first and whoever signs.
		{"duplicate, catalog first", evilKey, evilKey.Hdr(identity.TypePlugin), `"sub":"catalog","sub":"evil"`, false, 401, "", false},
		{"duplicate, catalog last", evilKey, evilKey.Hdr(identity.TypePlugin), `"sub":"evil","sub":"catalog"`, false, 401, "", false},
		{"duplicate, escaped name", evilKey, evilKey.Hdr(identity.TypePlugin), `"sub":"evil","s\u0075b":"catalog"`, false, 401, "", false},
		{"duplicate signed by catalog", c, c.Hdr(identity.TypePlugin), `"sub":"catalog","sub":"evil"`, false, 401, "", false},
		// The obo actor is named the same way.
		{"obo SUB after", evilKey, evilKey.Hdr(identity.TypePlugin), `"sub":"catalog","SUB":"evil"`, true, 401, "", false},
		{"obo Sub after", evilKey, evilKey.Hdr(identity.TypePlugin), `"sub":"catalog","Sub":"evil"`, true, 401, "", false},
		{"obo duplicate", evilKey, evilKey.Hdr(identity.TypePlugin), `"sub":"catalog","sub":"evil"`, true, 401, "", false},
		{"obo duplicate reversed", evilKey, evilKey.Hdr(identity.TypePlugin), `"sub":"evil","sub":"catalog"`, true, 401, "", false},
		// Header members are read by the same rule: a case variant or a
		// duplicate typ cannot change how the token is dispatched.
		{"header TYP", evilKey, `{"alg":"ES256","kid":"evil-key","TYP":"` + identity.TypePlugin + `"}`, `"sub":"evil"`, false, 401, "", false},
		{"header duplicate typ", evilKey, `{"alg":"ES256","kid":"evil-key","typ":"` + identity.TypeUser + `","typ":"` + identity.TypePlugin + `"}`, `"sub":"evil"`, false, 401, "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tok := tc.key.Sign(t, tc.hdr, claims(tc.subs, tc.obo))
			_, before := f.upstream.seen()
			status, body := aiGet(t, "/api/proxy/require/p", "Bearer "+tok)
			got, after := f.upstream.seen()
			if status != tc.want {
				t.Fatalf("status %d, want %d: %s", status, tc.want, body)
			}
			if tc.want != 200 {
				if after != before {
					t.Fatal("a refused token reached the upstream")
				}
				return
			}
			if who := got.Get("X-Principal"); who != tc.whom {
				t.Fatalf("principal %q, want %q", who, tc.whom)
			}
		})
	}
}
