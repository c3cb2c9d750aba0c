package identity

// Test helpers for the identity tests: real keys, real signatures, real HTTP
// key-set servers. Nothing here uses the verification code under test.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/policy"
	"github.com/caddy-backstage/caddy-backstage-proxy/internal/testkit"
)

func useFakeClock(t testing.TB) *testkit.FakeClock {
	t.Helper()
	c := &testkit.FakeClock{}
	c.Set(time.Unix(1_900_000_000, 0))
	f := c.Now
	clock.Store(&f)
	t.Cleanup(func() { clock.Store(nil) })
	return c
}

// build provisions a verifier for cfg, with the tests' key cache pool and
// key-set logger, and releases it at the end of the test.
func build(t testing.TB, cfg *Config) *Verifier {
	t.Helper()
	v, release, err := newForTest(*cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(release)
	return v
}

// expectOK authenticates token and requires success.
func expectOK(t testing.TB, a authenticator, token string) Principal {
	t.Helper()
	p, err := a.Authenticate(context.Background(), token)
	if err != nil {
		t.Fatalf("authenticate: unexpected %d %s: %s", err.Status, err.Name, err.Message)
	}
	if p.subjectValue != nil && p.subjectValue != any(p.Subject) {
		t.Fatalf("boxed subject %v differs from subject %q", p.subjectValue, p.Subject)
	}
	p.subjectValue = nil // compared by value in the tests
	checkView(t, p)
	p.view = nil
	return p
}

// checkView requires p's policy view, which every verified principal
// carries, to name p.
func checkView(t testing.TB, p Principal) {
	t.Helper()
	v := p.view
	if v == nil {
		t.Fatalf("principal %+v has no policy view", p)
	}
	if v.User != (p.Type == PrincipalUser) || v.Subject != p.Subject || v.Actor != p.Actor {
		t.Fatalf("policy view %+v does not name principal %+v", *v, p)
	}
	if v.User && v.Ref != policy.FoldRef(p.Subject) {
		t.Fatalf("policy view ref %q, want %q", v.Ref, policy.FoldRef(p.Subject))
	}
}

// expectErr authenticates token and requires the given status and message.
func expectErr(t testing.TB, a authenticator, token string, status int, message string) {
	t.Helper()
	p, err := a.Authenticate(context.Background(), token)
	if err == nil {
		t.Fatalf("authenticate: accepted as %+v, want %d %q", p, status, message)
	}
	if err.Status != status || err.Message != message {
		t.Fatalf("authenticate: got %d %q, want %d %q", err.Status, err.Message, status, message)
	}
	wantName := "AuthenticationError"
	if status == http.StatusForbidden {
		wantName = "NotAllowedError"
	}
	if err.Name != wantName {
		t.Fatalf("error name %q, want %q", err.Name, wantName)
	}
	testkit.AssertNoTokenContent(t, token, err.Message)
}

// ---------------------------------------------------------------------------
// Credential extraction, as backend-defaults' httpAuth/httpAuthServiceFactory.ts
// does. Numbered cases are Backstage behaviours (its source, its tests, answers of a
// real backend) from the maintainers' conformance list: cases 1, 3, 12, 13, 14.
// ---------------------------------------------------------------------------

func TestBearerToken(t *testing.T) {
	tests := []struct {
		name   string
		values []string
		token  string
		errMsg string
	}{
		{"none", nil, "", "Missing credentials"},
		{"bearer", []string{"Bearer static-token-123"}, "static-token-123", ""},
		{"lowercase scheme (case 12a)", []string{"bearer static-token-123"}, "static-token-123", ""},
		{"uppercase scheme", []string{"BEARER abc"}, "abc", ""},
		{"two spaces (case 12b)", []string{"Bearer  static-token-123"}, "static-token-123", ""},
		{"trailing space trimmed", []string{"Bearer x "}, "x", ""},
		{"basic (case 13)", []string{"Basic abc"}, "", "Missing credentials"},
		{"bearer without token", []string{"Bearer"}, "", "Missing credentials"},
		{"bearer and spaces only", []string{"Bearer    "}, "", "Missing credentials"},
		{"tab separator", []string{"Bearer\tabc"}, "", "Missing credentials"},
		{"no separator", []string{"Bearerabc"}, "", "Missing credentials"},
		{"two tokens", []string{"Bearer a b"}, "", "Missing credentials"},
		{"tab inside token", []string{"Bearer a\tb"}, "", "Missing credentials"},
		{"nbsp inside token", []string{"Bearer a\xa0b"}, "", "Missing credentials"},
		{"empty header", []string{""}, "", "Missing credentials"},
		{"several headers", []string{"Bearer a", "Bearer b"}, "", "Multiple Authorization headers"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			if tc.values != nil {
				h["Authorization"] = tc.values
			}
			h.Set("Cookie", "backstage-auth=some-limited-token") // case 14: never read
			token, err := BearerToken(h)
			if tc.errMsg != "" {
				if err == nil || err.Message != tc.errMsg || err.Status != http.StatusUnauthorized {
					t.Fatalf("got token %q err %v, want %q", token, err, tc.errMsg)
				}
				return
			}
			if err != nil || token != tc.token {
				t.Fatalf("got %q, %v; want %q", token, err, tc.token)
			}
		})
	}
}

// ---------------------------------------------------------------------------
// User tokens: backend-defaults' auth/user/UserTokenHandler.ts (conformance cases 15, 16)
// ---------------------------------------------------------------------------

// userFixture is an auth backend key set and an authenticator using it.
type userFixture struct {
	clk  *testkit.FakeClock
	key  *testkit.Key
	srv  *testkit.JWKSServer
	auth *Verifier
}

func newUserFixture(t *testing.T, algorithms ...string) *userFixture {
	t.Helper()
	f := &userFixture{clk: useFakeClock(t), key: testkit.NewECKey(t, "user-key-1")}
	f.srv = testkit.NewJWKSServer(t, f.key)
	f.auth = build(t, &Config{UserTokens: &UserTokens{JWKSURL: f.srv.KeySetURL(), Algorithms: algorithms}})
	return f
}

// userClaims are the claims issueUserToken puts in a user token.
func (f *userFixture) userClaims(sub string) map[string]any {
	return map[string]any{
		"iss": "http://localhost:7007/api/auth", "sub": sub, "ent": []string{sub},
		"aud": "backstage", "iat": f.clk.Unix(), "exp": f.clk.At(time.Hour), "uip": "proof",
	}
}

func TestUserTokens(t *testing.T) {
	f := newUserFixture(t)
	k := f.key
	claims := f.userClaims("user:default/alice")
	other := testkit.NewECKey(t, "user-key-1") // same kid, different key
	unknownKid := testkit.NewECKey(t, "no-such-kid")
	rsaKey := testkit.NewRSAKey(t, "user-key-1")

	// HS256 "signed" with the public key's JSON: algorithm confusion.
	pubJSON, _ := json.Marshal(k.JWK)
	confused := testkit.HS256(t, pubJSON, map[string]any{"alg": "HS256", "typ": TypeUser, "kid": k.KID}, claims)
	unsigned := testkit.EncodeSegment(t, map[string]any{"alg": "none", "typ": TypeUser}) + "." + testkit.EncodeSegment(t, claims) + "."

	const failed = "Failed user token verification"
	tests := []struct {
		name    string
		token   string
		subject string // "" = rejected
		message string
	}{
		{"16a typed ES256", k.Sign(t, k.Hdr(TypeUser), claims), "user:default/alice", ""},
		{"16b expired", k.Sign(t, k.Hdr(TypeUser), testkit.With(claims, "exp", f.clk.At(-time.Second))), "", failed},
		{"expires now", k.Sign(t, k.Hdr(TypeUser), testkit.With(claims, "exp", f.clk.Unix())), "", failed},
		{"16c untyped aud backstage", k.Sign(t, k.Hdr(""), claims), "user:default/alice", ""},
		{"untyped typ JWT aud backstage", k.Sign(t, k.Hdr("JWT"), claims), "user:default/alice", ""},
		{"16d untyped aud other", k.Sign(t, k.Hdr(""), testkit.With(claims, "aud", "other")), "", "Illegal token"},
		{"untyped aud array is not dispatched", k.Sign(t, k.Hdr(""), testkit.With(claims, "aud", []string{"backstage"})), "", "Illegal token"},
		{"16e unknown kid", unknownKid.Sign(t, unknownKid.Hdr(TypeUser), claims), "", failed},
		{"typed with other aud is fine", k.Sign(t, k.Hdr(TypeUser), testkit.With(claims, "aud", "whatever")), "user:default/alice", ""},
		{"typed without aud is fine", k.Sign(t, k.Hdr(TypeUser), testkit.Without(claims, "aud")), "user:default/alice", ""},
		{"iss is not checked", k.Sign(t, k.Hdr(TypeUser), testkit.With(claims, "iss", "https://evil")), "user:default/alice", ""},
		{"future iat accepted (like jose)", k.Sign(t, k.Hdr(TypeUser), testkit.With(claims, "iat", f.clk.At(time.Hour))), "user:default/alice", ""},
		{"nbf in the future", k.Sign(t, k.Hdr(TypeUser), testkit.With(claims, "nbf", f.clk.At(time.Second))), "", failed},
		{"nbf now", k.Sign(t, k.Hdr(TypeUser), testkit.With(claims, "nbf", f.clk.Unix())), "user:default/alice", ""},
		{"typed missing iat", k.Sign(t, k.Hdr(TypeUser), testkit.Without(claims, "iat")), "", failed},
		{"typed missing exp", k.Sign(t, k.Hdr(TypeUser), testkit.Without(claims, "exp")), "", failed},
		{"typed missing sub", k.Sign(t, k.Hdr(TypeUser), testkit.Without(claims, "sub")), "", failed},
		{"untyped missing sub", k.Sign(t, k.Hdr(""), testkit.Without(claims, "sub")), "", "No user sub found in token"},
		{"untyped empty sub", k.Sign(t, k.Hdr(""), testkit.With(claims, "sub", "")), "", "No user sub found in token"},
		{"untyped missing exp", k.Sign(t, k.Hdr(""), testkit.Without(claims, "exp")), "", "User token is missing expiration"},
		{"untyped expired", k.Sign(t, k.Hdr(""), testkit.With(claims, "exp", f.clk.At(-time.Minute))), "", failed},
		{"wrong key, same kid", other.Sign(t, other.Hdr(TypeUser), claims), "", failed},
		{"alg none", unsigned, "", failed},
		{"alg confusion HS256 with public key", confused, "", failed},
		{"RS256 not in default allowlist", rsaKey.Sign(t, rsaKey.Hdr(TypeUser), claims), "", failed},
		{"tampered payload", k.Sign(t, k.Hdr(TypeUser), claims)[:20] + "x" + k.Sign(t, k.Hdr(TypeUser), claims)[21:], "", ""},
		{"15 limited user token", k.Sign(t, k.Hdr(TypeLimitedUser), map[string]any{"sub": "user:default/alice", "iat": f.clk.Unix(), "exp": f.clk.At(time.Hour)}), "", "Illegal limited user token"},
		{"limited user token bad signature", other.Sign(t, other.Hdr(TypeLimitedUser), map[string]any{"sub": "user:default/alice", "iat": f.clk.Unix(), "exp": f.clk.At(time.Hour)}), "", failed},
		{"crit header", k.Sign(t, map[string]any{"alg": "ES256", "kid": k.KID, "typ": TypeUser, "crit": []string{"exp"}, "exp": 1}, claims), "", failed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.subject == "" {
				p, err := f.auth.Authenticate(context.Background(), tc.token)
				if err == nil {
					t.Fatalf("accepted as %+v", p)
				}
				if tc.message != "" && err.Message != tc.message {
					t.Fatalf("got %q, want %q", err.Message, tc.message)
				}
				if err.Status != http.StatusUnauthorized {
					t.Fatalf("status %d", err.Status)
				}
				testkit.AssertNoTokenContent(t, tc.token, err.Message)
				return
			}
			p := expectOK(t, f.auth, tc.token)
			want := Principal{Type: "user", Subject: tc.subject, Method: "user"}
			if p != want {
				t.Fatalf("got %+v, want %+v", p, want)
			}
		})
	}
}

func TestUserTokenAlgorithms(t *testing.T) {
	clk := useFakeClock(t)
	ec, rs, ed := testkit.NewECKey(t, "ec"), testkit.NewRSAKey(t, "rs"), testkit.NewEdKey(t, "ed")
	srv := testkit.NewJWKSServer(t, ec, rs, ed)
	claims := map[string]any{"sub": "user:default/bob", "iat": clk.Unix(), "exp": clk.At(time.Hour)}

	auth := build(t, &Config{UserTokens: &UserTokens{JWKSURL: srv.KeySetURL(), Algorithms: []string{"RS256, EdDSA"}}})
	expectOK(t, auth, rs.Sign(t, rs.Hdr(TypeUser), claims))
	expectOK(t, auth, ed.Sign(t, ed.Hdr(TypeUser), claims))
	expectErr(t, auth, ec.Sign(t, ec.Hdr(TypeUser), claims), 401, "Failed user token verification")

	// An RSA key declared for RS256 cannot verify a PS256 token, and an ES256
	// header cannot be verified with an RSA key even if the kid says so.
	mislabeled := rs.Sign(t, map[string]any{"alg": "ES256", "kid": "rs", "typ": TypeUser}, claims)
	auth2 := build(t, &Config{UserTokens: &UserTokens{JWKSURL: srv.KeySetURL(), Algorithms: []string{"ES256", "PS256"}}})
	expectErr(t, auth2, mislabeled, 401, "Failed user token verification")
	expectErr(t, auth2, rs.Sign(t, map[string]any{"alg": "PS256", "kid": "rs", "typ": TypeUser}, claims), 401, "Failed user token verification")
}

func TestUserTokenWithoutKid(t *testing.T) {
	clk := useFakeClock(t)
	k1, k2 := testkit.NewECKey(t, "a"), testkit.NewECKey(t, "b")
	srv := testkit.NewJWKSServer(t, k1, k2)
	auth := build(t, &Config{UserTokens: &UserTokens{JWKSURL: srv.KeySetURL()}})
	claims := map[string]any{"sub": "user:default/c", "iat": clk.Unix(), "exp": clk.At(time.Hour)}
	// No kid: every compatible key is tried (jose's behaviour).
	expectOK(t, auth, k2.Sign(t, map[string]any{"alg": "ES256", "typ": TypeUser}, claims))
	// A kid that is not a string is ignored, as jose does.
	expectOK(t, auth, k2.Sign(t, map[string]any{"alg": "ES256", "typ": TypeUser, "kid": 7}, claims))
	// A key without kid does not match a token that names one.
	srv.SetJWKs(k1.JWKWithout("kid"))
	auth2 := build(t, &Config{UserTokens: &UserTokens{JWKSURL: srv.URL + "/other"}})
	expectErr(t, auth2, k1.Sign(t, k1.Hdr(TypeUser), claims), 401, "Failed user token verification")
	expectOK(t, auth2, k1.Sign(t, map[string]any{"alg": "ES256", "typ": TypeUser}, claims))
}

func TestUserTokensNotConfigured(t *testing.T) {
	clk := useFakeClock(t)
	k := testkit.NewECKey(t, "k")
	auth := build(t, &Config{})
	claims := map[string]any{"sub": "user:default/a", "iat": clk.Unix(), "exp": clk.At(time.Hour), "aud": "backstage"}
	expectErr(t, auth, k.Sign(t, k.Hdr(TypeUser), claims), 401, "Failed user token verification")
	expectErr(t, auth, k.Sign(t, k.Hdr(""), claims), 401, "Failed user token verification")
	expectErr(t, auth, k.Sign(t, k.Hdr(""), testkit.With(claims, "aud", "x")), 401, "Illegal token")
}

// ---------------------------------------------------------------------------
// Plugin tokens: backend-defaults' auth/plugin/PluginTokenHandler.ts (conformance case 17)
// ---------------------------------------------------------------------------

type pluginFixture struct {
	clk     *testkit.FakeClock
	userKey *testkit.Key
	catalog *testkit.Key
	users   *testkit.JWKSServer
	plugins *testkit.PluginServer
	auth    *Verifier
}

func newPluginFixture(t testing.TB, allow []string) *pluginFixture {
	t.Helper()
	f := &pluginFixture{clk: useFakeClock(t), userKey: testkit.NewECKey(t, "user-key"), catalog: testkit.NewECKey(t, "catalog-key")}
	f.users = testkit.NewJWKSServer(t, f.userKey)
	f.plugins = testkit.NewPluginServer(t)
	f.plugins.Set("catalog", f.catalog)
	f.plugins.Set("search", f.catalog)
	f.plugins.SetBody("nokeys", `{"other":[]}`)
	f.auth = build(t, &Config{
		UserTokens:   &UserTokens{JWKSURL: f.users.KeySetURL()},
		PluginTokens: &PluginTokens{JWKSURL: f.plugins.Template(), Plugins: allow},
	})
	return f
}

func (f *pluginFixture) claims(sub string) map[string]any {
	return map[string]any{"sub": sub, "aud": "proxy", "iat": f.clk.Unix(), "exp": f.clk.At(time.Hour)}
}

func (f *pluginFixture) limitedUserToken(t testing.TB, sub string, exp time.Duration) string {
	return f.userKey.Sign(t, f.userKey.Hdr(TypeLimitedUser), map[string]any{"sub": sub, "iat": f.clk.Unix(), "exp": f.clk.At(exp)})
}

func TestPluginTokens(t *testing.T) {
	f := newPluginFixture(t, nil)
	c := f.catalog
	hdr := c.Hdr(TypePlugin)
	obo := f.limitedUserToken(t, "user:default/alice", 30*time.Minute)
	fullUser := f.userKey.Sign(t, f.userKey.Hdr(TypeUser), map[string]any{"sub": "user:default/bob", "iat": f.clk.Unix(), "exp": f.clk.At(time.Hour)})
	badObo := testkit.NewECKey(t, "user-key").Sign(t, f.userKey.Hdr(TypeLimitedUser), map[string]any{"sub": "user:default/eve", "iat": f.clk.Unix(), "exp": f.clk.At(time.Hour)})
	noJWKS := func(id string) string {
		return "Received a plugin token where the source '" + id + "' plugin unexpectedly does not have a JWKS endpoint. The target plugin needs to be migrated to be installed in an app using the new backend system."
	}
	const failed = "Failed plugin token verification"
	tests := []struct {
		name    string
		token   string
		want    Principal
		message string
	}{
		{"17a service", c.Sign(t, hdr, f.claims("catalog")), Principal{Type: "service", Subject: "plugin:catalog", Method: "plugin"}, ""},
		{"17b aud search", c.Sign(t, hdr, testkit.With(f.claims("catalog"), "aud", "search")), Principal{}, failed},
		{"aud array with proxy", c.Sign(t, hdr, testkit.With(f.claims("catalog"), "aud", []string{"search", "proxy"})), Principal{Type: "service", Subject: "plugin:catalog", Method: "plugin"}, ""},
		{"17c obo limited user", c.Sign(t, hdr, testkit.With(f.claims("catalog"), "obo", obo)), Principal{Type: "user", Subject: "user:default/alice", Actor: "plugin:catalog", Method: "plugin"}, ""},
		{"obo full user token", c.Sign(t, hdr, testkit.With(f.claims("catalog"), "obo", fullUser)), Principal{Type: "user", Subject: "user:default/bob", Actor: "plugin:catalog", Method: "plugin"}, ""},
		{"obo garbage", c.Sign(t, hdr, testkit.With(f.claims("catalog"), "obo", "garbage")), Principal{}, "Invalid user token in plugin token obo claim"},
		{"obo not a string", c.Sign(t, hdr, testkit.With(f.claims("catalog"), "obo", 42)), Principal{}, "Invalid user token in plugin token obo claim"},
		{"obo untyped other aud", c.Sign(t, hdr, testkit.With(f.claims("catalog"), "obo", f.userKey.Sign(t, f.userKey.Hdr(""), map[string]any{"sub": "u", "aud": "x"}))), Principal{}, "Invalid user token in plugin token obo claim"},
		{"obo bad signature", c.Sign(t, hdr, testkit.With(f.claims("catalog"), "obo", badObo)), Principal{}, "Failed user token verification"},
		{"obo empty string is no obo", c.Sign(t, hdr, testkit.With(f.claims("catalog"), "obo", "")), Principal{Type: "service", Subject: "plugin:catalog", Method: "plugin"}, ""},
		{"17d forbidden subject", c.Sign(t, hdr, f.claims("ca talog")), Principal{}, "Invalid plugin token: forbidden subject format"},
		{"subject with slash", c.Sign(t, hdr, f.claims("../auth")), Principal{}, "Invalid plugin token: forbidden subject format"},
		{"subject with host", c.Sign(t, hdr, f.claims("x@evil.example")), Principal{}, "Invalid plugin token: forbidden subject format"},
		{"subject with query", c.Sign(t, hdr, f.claims("a?b")), Principal{}, "Invalid plugin token: forbidden subject format"},
		{"missing subject", c.Sign(t, hdr, testkit.Without(f.claims("catalog"), "sub")), Principal{}, "Invalid plugin token: missing subject"},
		{"17e no such plugin", c.Sign(t, hdr, f.claims("nosuchplugin")), Principal{}, noJWKS("nosuchplugin")},
		{"key set without keys", c.Sign(t, hdr, f.claims("nokeys")), Principal{}, noJWKS("nokeys")},
		{"case-insensitive id", c.Sign(t, hdr, f.claims("Search")), Principal{Type: "service", Subject: "plugin:search", Method: "plugin"}, ""},
		{"expired", c.Sign(t, hdr, testkit.With(f.claims("catalog"), "exp", f.clk.Unix())), Principal{}, failed},
		{"missing iat", c.Sign(t, hdr, testkit.Without(f.claims("catalog"), "iat")), Principal{}, failed},
		{"missing exp", c.Sign(t, hdr, testkit.Without(f.claims("catalog"), "exp")), Principal{}, failed},
		{"missing aud", c.Sign(t, hdr, testkit.Without(f.claims("catalog"), "aud")), Principal{}, failed},
		{"signed by another plugin's key", f.userKey.Sign(t, map[string]any{"alg": "ES256", "kid": c.KID, "typ": TypePlugin}, f.claims("catalog")), Principal{}, failed},
		{"malformed payload", testkit.EncodeSegment(t, hdr) + ".bm90IGpzb24." + "c2ln", Principal{}, failed},
		{"alg none", testkit.EncodeSegment(t, map[string]any{"alg": "none", "typ": TypePlugin}) + "." + testkit.EncodeSegment(t, f.claims("catalog")) + ".", Principal{}, failed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.message != "" {
				expectErr(t, f.auth, tc.token, 401, tc.message)
				return
			}
			if p := expectOK(t, f.auth, tc.token); p != tc.want {
				t.Fatalf("got %+v, want %+v", p, tc.want)
			}
		})
	}
	// The forbidden subjects never produced a request.
	for _, id := range f.plugins.Plugins() {
		if !validPluginID(id) {
			t.Errorf("a request was made for plugin id %q", id)
		}
	}
	// The positive key set check of catalog was made once and kept.
	if n := f.plugins.HitsFor("catalog"); n != 1 {
		t.Errorf("catalog key set fetched %d times, want 1", n)
	}
	// Negative checks are remembered for pluginNegativeTTL (Backstage
	// fetches again on every request), whatever the id's case.
	before := f.plugins.HitsFor("nosuchplugin")
	expectErr(t, f.auth, c.Sign(t, hdr, f.claims("nosuchplugin")), 401, noJWKS("nosuchplugin"))
	expectErr(t, f.auth, c.Sign(t, hdr, f.claims("NoSuchPlugin")), 401, noJWKS("NoSuchPlugin"))
	if n := f.plugins.HitsFor("nosuchplugin"); n != before {
		t.Errorf("nosuchplugin fetched %d times within the negative-cache window, want %d", n, before)
	}
	f.clk.Advance(pluginNegativeTTL)
	expectErr(t, f.auth, c.Sign(t, hdr, f.claims("nosuchplugin")), 401, noJWKS("nosuchplugin"))
	if n := f.plugins.HitsFor("nosuchplugin"); n != before+1 {
		t.Errorf("nosuchplugin fetched %d times after the negative-cache window, want %d", n, before+1)
	}
}

func TestPluginTokenOboExpiry(t *testing.T) {
	f := newPluginFixture(t, nil)
	obo := f.limitedUserToken(t, "user:default/alice", 10*time.Second)
	tok := f.catalog.Sign(t, f.catalog.Hdr(TypePlugin), testkit.With(f.claims("catalog"), "obo", obo))
	expectOK(t, f.auth, tok)
	f.clk.Advance(11 * time.Second) // the plugin token is still valid, its obo is not
	expectErr(t, f.auth, tok, 401, "Failed user token verification")
}

func TestPluginAllowlist(t *testing.T) {
	f := newPluginFixture(t, []string{"scaffolder"})
	f.plugins.Set("scaffolder", f.catalog)
	expectErr(t, f.auth, f.catalog.Sign(t, f.catalog.Hdr(TypePlugin), f.claims("catalog")), 401, "Failed plugin token verification")
	if n := f.plugins.All.Load(); n != 0 {
		t.Fatalf("%d key set requests for a plugin outside the allowlist", n)
	}
	expectOK(t, f.auth, f.catalog.Sign(t, f.catalog.Hdr(TypePlugin), f.claims("scaffolder")))
}

func TestPluginTokensNotConfigured(t *testing.T) {
	clk := useFakeClock(t)
	k := testkit.NewECKey(t, "k")
	auth := build(t, &Config{})
	tok := k.Sign(t, k.Hdr(TypePlugin), map[string]any{"sub": "catalog", "aud": "proxy", "iat": clk.Unix(), "exp": clk.At(time.Hour)})
	expectErr(t, auth, tok, 401, PluginWithoutKeySet("catalog").Message)
}

// ---------------------------------------------------------------------------
// External access: static, legacy, jwks, keys, accessRestrictions
// (backend-defaults' auth/external/*.ts; conformance cases 2, 3, 18, 19, 20)
// ---------------------------------------------------------------------------

func TestStaticTokens(t *testing.T) {
	useFakeClock(t)
	auth := build(t, &Config{ExternalAccess: []ExternalAccess{
		{Static: &StaticAccess{Token: "static-token-123", Subject: "static-subject"}},
		{Static: &StaticAccess{Token: "restricted-token-123", Subject: "r"}, AccessRestrictions: []AccessRestriction{{Plugin: "catalog"}}},
		{Static: &StaticAccess{Token: "two-plugins-token", Subject: "r2"}, AccessRestrictions: []AccessRestriction{{Plugin: "catalog"}, {Plugin: "search"}}},
		{Static: &StaticAccess{Token: "with-proxy-token", Subject: "r3"}, AccessRestrictions: []AccessRestriction{{Plugin: "catalog"}, {Plugin: "proxy", Permissions: []string{"x"}}}},
		{Static: &StaticAccess{Token: "empty-restrictions", Subject: "r4"}, AccessRestrictions: []AccessRestriction{}},
		{Static: &StaticAccess{Token: "static-token-123", Subject: "shadowed"}},
	}})
	if p := expectOK(t, auth, "static-token-123"); p != (Principal{Type: "service", Subject: "static-subject", Method: "static"}) {
		t.Fatalf("case 2: got %+v", p)
	}
	expectErr(t, auth, "not-valid", 401, "Illegal token")                                                       // case 3
	expectErr(t, auth, "static-token-12", 401, "Illegal token")                                                 // prefix
	expectErr(t, auth, "static-token-1234", 401, "Illegal token")                                               // longer
	expectErr(t, auth, "STATIC-TOKEN-123", 401, "Illegal token")                                                // case-sensitive
	expectErr(t, auth, "static-token-124", 401, "Illegal token")                                                // same length
	expectErr(t, auth, "restricted-token-123", 403, "This token's access is restricted to plugin(s) 'catalog'") // case 20
	expectErr(t, auth, "two-plugins-token", 403, "This token's access is restricted to plugin(s) 'catalog', 'search'")
	if p := expectOK(t, auth, "with-proxy-token"); p.Subject != "r3" {
		t.Fatalf("got %+v", p)
	}
	if p := expectOK(t, auth, "empty-restrictions"); p.Subject != "r4" {
		t.Fatalf("got %+v", p)
	}
	// Static results are not cached.
	if n := auth.cache.len(); n != 0 {
		t.Fatalf("%d cached entries after static tokens", n)
	}
	// The general path (taken when two tokens share a hash) decides the same.
	if auth.staticByHash == nil {
		t.Fatal("the static fast path is not set up")
	}
	auth.staticByHash = nil
	if p := expectOK(t, auth, "static-token-123"); p.Subject != "static-subject" {
		t.Fatalf("general path: got %+v", p)
	}
	expectErr(t, auth, "static-token-124", 401, "Illegal token")
	expectErr(t, auth, "restricted-token-123", 403, "This token's access is restricted to plugin(s) 'catalog'")
}

func TestLegacyTokens(t *testing.T) {
	clk := useFakeClock(t)
	secretA := []byte("peer-legacy-shared-secret-0123456789")
	secretB := []byte("another-secret-for-backend-auth-keys")
	auth := build(t, &Config{
		ExternalAccess: []ExternalAccess{
			{Legacy: &LegacyAccess{Secret: base64.StdEncoding.EncodeToString(secretA), Subject: "legacy-subject"}},
			{Static: &StaticAccess{Token: "static-after-legacy", Subject: "s"}},
		},
		Keys: []LegacyKey{
			{Secret: base64.RawURLEncoding.EncodeToString(secretB)},
			{Secret: base64.StdEncoding.EncodeToString([]byte("restricted-key")), AccessRestrictions: []AccessRestriction{{Plugin: "catalog"}}},
		},
	})
	hdr := map[string]any{"alg": "HS256", "typ": "JWT"}
	claims := map[string]any{"sub": "backstage-server", "iat": clk.Unix(), "exp": clk.At(time.Hour)}
	legacySvc := func(sub string) Principal { return Principal{Type: "service", Subject: sub, Method: "legacy"} }
	tests := []struct {
		name    string
		token   string
		want    Principal
		status  int
		message string
	}{
		{"18a signed with A", testkit.HS256(t, secretA, hdr, claims), legacySvc("legacy-subject"), 0, ""},
		{"18b signed with B (backend.auth.keys)", testkit.HS256(t, secretB, hdr, claims), legacySvc("external:backstage-plugin"), 0, ""},
		{"18c other key", testkit.HS256(t, []byte("other"), hdr, claims), Principal{}, 401, "Illegal token"},
		{"18d aud x", testkit.HS256(t, secretA, hdr, testkit.With(claims, "aud", "x")), Principal{}, 401, "Illegal token"},
		{"aud empty string is no aud", testkit.HS256(t, secretA, hdr, testkit.With(claims, "aud", "")), legacySvc("legacy-subject"), 0, ""},
		{"aud empty array is an aud", testkit.HS256(t, secretA, hdr, testkit.With(claims, "aud", []string{})), Principal{}, 401, "Illegal token"},
		{"18e expired (D4: 401, no payload)", testkit.HS256(t, secretA, hdr, testkit.With(claims, "exp", clk.At(-time.Second))), Principal{}, 401, "Failed legacy token verification"},
		{"expired, signed with B", testkit.HS256(t, secretB, hdr, testkit.With(claims, "exp", clk.Unix())), Principal{}, 401, "Failed legacy token verification"},
		{"nbf in the future", testkit.HS256(t, secretA, hdr, testkit.With(claims, "nbf", clk.At(time.Minute))), Principal{}, 401, "Failed legacy token verification"},
		{"18f no exp never expires", testkit.HS256(t, secretA, hdr, testkit.Without(claims, "exp")), legacySvc("legacy-subject"), 0, ""},
		{"other sub", testkit.HS256(t, secretA, hdr, testkit.With(claims, "sub", "someone")), Principal{}, 401, "Illegal token"},
		{"HS384 header", testkit.HS256(t, secretA, map[string]any{"alg": "HS384"}, claims), Principal{}, 401, "Illegal token"},
		{"restricted key", testkit.HS256(t, []byte("restricted-key"), hdr, claims), Principal{}, 403, "This token's access is restricted to plugin(s) 'catalog'"},
		{"static entry after legacy", "static-after-legacy", Principal{Type: "service", Subject: "s", Method: "static"}, 0, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.status != 0 {
				expectErr(t, auth, tc.token, tc.status, tc.message)
				return
			}
			if p := expectOK(t, auth, tc.token); p != tc.want {
				t.Fatalf("got %+v, want %+v", p, tc.want)
			}
		})
	}
}

type extFixture struct {
	clk  *testkit.FakeClock
	key  *testkit.Key
	srv  *testkit.JWKSServer
	auth *Verifier
}

func newExtFixture(t testing.TB, opts JWKSAccess, more ...ExternalAccess) *extFixture {
	t.Helper()
	f := &extFixture{clk: useFakeClock(t), key: testkit.NewRSAKey(t, "ext-1")}
	f.srv = testkit.NewJWKSServer(t, f.key)
	opts.URL = f.srv.KeySetURL()
	entries := append([]ExternalAccess{{JWKS: &opts}}, more...)
	f.auth = build(t, &Config{ExternalAccess: entries})
	return f
}

func TestJWKSExternalAccess(t *testing.T) {
	f := newExtFixture(t, JWKSAccess{
		Issuers: []string{"https://ext.example.com"}, Audiences: []string{"backstage-proxy"},
		Algorithms: []string{"RS256"}, SubjectPrefix: "ext",
	}, ExternalAccess{Static: &StaticAccess{Token: "static-after-jwks", Subject: "s"}})
	k := f.key
	claims := map[string]any{"iss": "https://ext.example.com", "aud": "backstage-proxy", "sub": "svc-1", "iat": f.clk.Unix(), "exp": f.clk.At(time.Hour)}
	ec := testkit.NewECKey(t, "ext-1")
	tests := []struct {
		name    string
		token   string
		subject string
	}{
		{"19a valid", k.Sign(t, k.Hdr(""), claims), "external:ext:svc-1"},
		{"aud array", k.Sign(t, k.Hdr(""), testkit.With(claims, "aud", []string{"x", "backstage-proxy"})), "external:ext:svc-1"},
		{"19b other aud", k.Sign(t, k.Hdr(""), testkit.With(claims, "aud", "other-aud")), ""},
		{"19c no sub", k.Sign(t, k.Hdr(""), testkit.Without(claims, "sub")), ""},
		{"other iss", k.Sign(t, k.Hdr(""), testkit.With(claims, "iss", "https://evil")), ""},
		{"no iss", k.Sign(t, k.Hdr(""), testkit.Without(claims, "iss")), ""},
		{"expired", k.Sign(t, k.Hdr(""), testkit.With(claims, "exp", f.clk.Unix())), ""},
		{"no exp is accepted (jose)", k.Sign(t, k.Hdr(""), testkit.Without(claims, "exp")), "external:ext:svc-1"},
		{"ES256 not allowed", ec.Sign(t, ec.Hdr(""), claims), ""},
		{"unknown kid", testkit.NewRSAKey(t, "x").Sign(t, map[string]any{"alg": "RS256", "kid": "x"}, claims), ""},
		{"static after jwks", "static-after-jwks", "s"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.subject == "" {
				expectErr(t, f.auth, tc.token, 401, "Illegal token")
				return
			}
			p := expectOK(t, f.auth, tc.token)
			wantMethod := "jwks"
			if tc.subject == "s" {
				wantMethod = "static"
			}
			if p != (Principal{Type: "service", Subject: tc.subject, Method: wantMethod}) {
				t.Fatalf("got %+v", p)
			}
		})
	}
}

func TestJWKSExternalAccessDefaults(t *testing.T) {
	// No issuer/audience/algorithm: any asymmetric algorithm, no iss/aud checks,
	// subject external:<sub>; lists given as one space/comma separated string.
	f := newExtFixture(t, JWKSAccess{})
	claims := map[string]any{"sub": "svc-2", "iat": f.clk.Unix(), "exp": f.clk.At(time.Hour)}
	if p := expectOK(t, f.auth, f.key.Sign(t, f.key.Hdr(""), claims)); p.Subject != "external:svc-2" {
		t.Fatalf("got %+v", p)
	}
	g := newExtFixture(t, JWKSAccess{Audiences: []string{"a, b c"}, Issuers: []string{"i1,i2"}})
	claims = map[string]any{"sub": "svc-3", "aud": "c", "iss": "i2", "exp": g.clk.At(time.Hour)}
	expectOK(t, g.auth, g.key.Sign(t, g.key.Hdr(""), claims))
	expectErr(t, g.auth, g.key.Sign(t, g.key.Hdr(""), testkit.With(claims, "aud", "a, b c")), 401, "Illegal token")
}

func TestJWKSRestricted(t *testing.T) {
	clk := useFakeClock(t)
	k := testkit.NewECKey(t, "r")
	srv := testkit.NewJWKSServer(t, k)
	auth := build(t, &Config{ExternalAccess: []ExternalAccess{{
		JWKS:               &JWKSAccess{URL: srv.KeySetURL()},
		AccessRestrictions: []AccessRestriction{{Plugin: "catalog", PermissionAttributes: map[string][]string{"action": {"read"}}}},
	}}})
	tok := k.Sign(t, k.Hdr(""), map[string]any{"sub": "s", "exp": clk.At(time.Hour)})
	expectErr(t, auth, tok, 403, "This token's access is restricted to plugin(s) 'catalog'")
	expectErr(t, auth, tok, 403, "This token's access is restricted to plugin(s) 'catalog'") // not cached as success
}

func TestJWKSEntryOrder(t *testing.T) {
	// Two jwks entries: a token for the second is "not mine" for the first.
	clk := useFakeClock(t)
	k1, k2 := testkit.NewECKey(t, "one"), testkit.NewECKey(t, "two")
	s1, s2 := testkit.NewJWKSServer(t, k1), testkit.NewJWKSServer(t, k2)
	auth := build(t, &Config{ExternalAccess: []ExternalAccess{
		{JWKS: &JWKSAccess{URL: s1.KeySetURL(), Issuers: []string{"one"}, SubjectPrefix: "one"}},
		{JWKS: &JWKSAccess{URL: s2.KeySetURL(), SubjectPrefix: "two"}},
	}})
	tok := k2.Sign(t, k2.Hdr(""), map[string]any{"sub": "x", "iss": "two", "exp": clk.At(time.Hour)})
	if p := expectOK(t, auth, tok); p.Subject != "external:two:x" {
		t.Fatalf("got %+v", p)
	}
	// The first entry's issuer did not match: its key set was never fetched.
	if n := s1.Hits.Load(); n != 0 {
		t.Fatalf("first entry's key set fetched %d times", n)
	}
}

// ---------------------------------------------------------------------------
// Dispatch order and malformed input
// ---------------------------------------------------------------------------

func TestDispatchOrder(t *testing.T) {
	clk := useFakeClock(t)
	userKey := testkit.NewECKey(t, "u")
	users := testkit.NewJWKSServer(t, userKey)
	ext := testkit.NewJWKSServer(t, userKey) // an external entry that would accept the user key
	auth := build(t, &Config{
		UserTokens:     &UserTokens{JWKSURL: users.KeySetURL()},
		ExternalAccess: []ExternalAccess{{JWKS: &JWKSAccess{URL: ext.KeySetURL()}}},
	})
	// A user token that fails verification is refused by the user handler:
	// the external entries are not tried.
	expired := userKey.Sign(t, userKey.Hdr(TypeUser), map[string]any{"sub": "user:default/a", "iat": clk.Unix(), "exp": clk.Unix()})
	expectErr(t, auth, expired, 401, "Failed user token verification")
	// A plugin token is handled by the plugin handler only.
	plugin := userKey.Sign(t, userKey.Hdr(TypePlugin), map[string]any{"sub": "catalog", "aud": "proxy", "iat": clk.Unix(), "exp": clk.At(time.Hour)})
	expectErr(t, auth, plugin, 401, PluginWithoutKeySet("catalog").Message)
	if n := ext.Hits.Load(); n != 0 {
		t.Fatalf("external key set fetched %d times", n)
	}
	// Anything else falls through to the external entries.
	other := userKey.Sign(t, userKey.Hdr("JWT"), map[string]any{"sub": "svc", "exp": clk.At(time.Hour)})
	if p := expectOK(t, auth, other); p.Subject != "external:svc" || p.Method != "jwks" {
		t.Fatalf("got %+v", p)
	}
}

func TestMalformedTokens(t *testing.T) {
	clk := useFakeClock(t)
	k := testkit.NewECKey(t, "k")
	srv := testkit.NewJWKSServer(t, k)
	auth := build(t, &Config{
		UserTokens:     &UserTokens{JWKSURL: srv.KeySetURL()},
		PluginTokens:   &PluginTokens{JWKSURL: srv.PluginTemplate()},
		ExternalAccess: []ExternalAccess{{JWKS: &JWKSAccess{URL: srv.KeySetURL()}}, {Legacy: &LegacyAccess{Secret: "c2VjcmV0", Subject: "l"}}},
	})
	good := k.Sign(t, k.Hdr(TypeUser), map[string]any{"sub": "user:default/a", "iat": clk.Unix(), "exp": clk.At(time.Hour)})
	parts := strings.Split(good, ".")
	tests := map[string]string{
		"empty":              "",
		"one part":           "abc",
		"two parts":          parts[0] + "." + parts[1],
		"four parts":         good + ".x",
		"JWE shape":          parts[0] + ".a.b.c.d",
		"padding":            parts[0] + "==." + parts[1] + "." + parts[2],
		"std alphabet":       strings.NewReplacer("-", "+", "_", "/").Replace(parts[0]) + "+/." + parts[1] + "." + parts[2],
		"header not json":    base64.RawURLEncoding.EncodeToString([]byte("not json")) + "." + parts[1] + "." + parts[2],
		"header array":       base64.RawURLEncoding.EncodeToString([]byte(`["alg"]`)) + "." + parts[1] + "." + parts[2],
		"header null":        base64.RawURLEncoding.EncodeToString([]byte(`null`)) + "." + parts[1] + "." + parts[2],
		"payload not json":   base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"ES256","aud":"backstage"}`)) + ".e30x." + parts[2],
		"huge":               strings.Repeat("a", maxTokenBytes+1),
		"huge jwt":           parts[0] + "." + strings.Repeat("A", maxTokenBytes) + "." + parts[2],
		"signature garbage":  parts[0] + "." + parts[1] + ".!!!",
		"empty signature":    parts[0] + "." + parts[1] + ".",
		"dots":               "..",
		"typ number":         base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"ES256","typ":5}`)) + "." + parts[1] + "." + parts[2],
		"legacy bad sig b64": testkit.HS256(t, []byte("x"), map[string]any{"alg": "HS256"}, map[string]any{"sub": "backstage-server"})[:40] + ".%%%",
	}
	for name, tok := range tests {
		t.Run(name, func(t *testing.T) {
			p, err := auth.Authenticate(context.Background(), tok)
			if err == nil {
				t.Fatalf("accepted as %+v", p)
			}
			if err.Status != 401 {
				t.Fatalf("status %d", err.Status)
			}
			testkit.AssertNoTokenContent(t, tok, err.Message)
		})
	}
	// A token over 16 KiB is refused before anything else happens.
	before := srv.Hits.Load()
	expectErr(t, auth, strings.Repeat("x", maxTokenBytes+1), 401, "Illegal token")
	if srv.Hits.Load() != before {
		t.Fatal("an oversized token caused a key set fetch")
	}
}

// ---------------------------------------------------------------------------
// Configuration errors (Provision)
// ---------------------------------------------------------------------------

func TestNewErrors(t *testing.T) {
	srv := testkit.NewJWKSServer(t)
	good := ExternalAccess{Static: &StaticAccess{Token: "good-token-123", Subject: "s"}}
	tests := []struct {
		name string
		app  Config
		want string
	}{
		{"no kind", Config{ExternalAccess: []ExternalAccess{good, {}}}, "external_access[1]: exactly one of 'static', 'legacy' and 'jwks' must be set"},
		{"two kinds", Config{ExternalAccess: []ExternalAccess{{Static: good.Static, Legacy: &LegacyAccess{Secret: "c2VjcmV0", Subject: "l"}}}}, "external_access[0]: exactly one of 'static', 'legacy' and 'jwks' must be set"},
		{"short token", Config{ExternalAccess: []ExternalAccess{{Static: &StaticAccess{Token: "short", Subject: "s"}}}}, "external_access[0] (type 'static'): Illegal token, must be at least 8 characters length"},
		{"token with space", Config{ExternalAccess: []ExternalAccess{{Static: &StaticAccess{Token: "a token with spaces", Subject: "s"}}}}, "external_access[0] (type 'static'): Illegal token, must be a set of non-space characters"},
		{"empty token", Config{ExternalAccess: []ExternalAccess{{Static: &StaticAccess{Subject: "s"}}}}, "Illegal token, must be a set of non-space characters"},
		{"static subject missing", Config{ExternalAccess: []ExternalAccess{{Static: &StaticAccess{Token: "good-token-123"}}}}, "Illegal subject, must be a set of non-space characters"},
		{"static subject with space", Config{ExternalAccess: []ExternalAccess{{Static: &StaticAccess{Token: "good-token-123", Subject: "a b"}}}}, "Illegal subject, must be a set of non-space characters"},
		{"legacy bad base64", Config{ExternalAccess: []ExternalAccess{{Legacy: &LegacyAccess{Secret: "not*base64!", Subject: "s"}}}}, "external_access[0] (type 'legacy'): Illegal secret, must be a valid base64 string"},
		{"legacy no secret", Config{ExternalAccess: []ExternalAccess{{Legacy: &LegacyAccess{Subject: "s"}}}}, "Illegal secret, must be a valid base64 string"},
		{"legacy no subject", Config{ExternalAccess: []ExternalAccess{{Legacy: &LegacyAccess{Secret: "c2VjcmV0"}}}}, "external_access[0] (type 'legacy'): Illegal subject, must be a set of non-space characters"},
		{"jwks no url", Config{ExternalAccess: []ExternalAccess{good, good, {JWKS: &JWKSAccess{}}}}, "external_access[2] (type 'jwks'): missing required option 'url'"},
		{"jwks relative url", Config{ExternalAccess: []ExternalAccess{{JWKS: &JWKSAccess{URL: "/jwks.json"}}}}, "external_access[0] (type 'jwks'): Illegal JWKS URL, must be an absolute http or https URL"},
		{"jwks url with space", Config{ExternalAccess: []ExternalAccess{{JWKS: &JWKSAccess{URL: "http://a b/"}}}}, "Illegal JWKS URL, must be a set of non-space characters"},
		{"jwks unknown algorithm", Config{ExternalAccess: []ExternalAccess{{JWKS: &JWKSAccess{URL: srv.KeySetURL(), Algorithms: []string{"ES256 XS256"}}}}}, "external_access[0] (type 'jwks'): algorithms: unknown algorithm 'XS256'"},
		{"jwks HMAC algorithm", Config{ExternalAccess: []ExternalAccess{{JWKS: &JWKSAccess{URL: srv.KeySetURL(), Algorithms: []string{"HS256"}}}}}, "algorithm 'HS256' is not allowed"},
		{"jwks none algorithm", Config{ExternalAccess: []ExternalAccess{{JWKS: &JWKSAccess{URL: srv.KeySetURL(), Algorithms: []string{"none"}}}}}, "algorithm 'none' is not allowed"},
		{"restriction without plugin", Config{ExternalAccess: []ExternalAccess{{Static: good.Static, AccessRestrictions: []AccessRestriction{{}}}}}, "external_access[0] (type 'static'): accessRestrictions: missing required value 'plugin'"},
		{"duplicate restriction", Config{ExternalAccess: []ExternalAccess{{Static: good.Static, AccessRestrictions: []AccessRestriction{{Plugin: "a"}, {Plugin: "a"}}}}}, "attempted to declare 'accessRestrictions' twice for plugin 'a'"},
		{"bad permission attribute", Config{ExternalAccess: []ExternalAccess{{Static: good.Static, AccessRestrictions: []AccessRestriction{{Plugin: "a", PermissionAttributes: map[string][]string{"action": {"write"}}}}}}}, "invalid value 'write' at 'action'"},
		{"bad permission attribute key", Config{ExternalAccess: []ExternalAccess{{Static: good.Static, AccessRestrictions: []AccessRestriction{{Plugin: "a", PermissionAttributes: map[string][]string{"kind": {"read"}}}}}}}, "invalid key 'kind' in 'permissionAttribute'"},
		{"keys bad secret", Config{Keys: []LegacyKey{{Secret: "c2VjcmV0"}, {Secret: "%%%"}}}, "keys[1] (type 'legacy'): Illegal secret, must be a valid base64 string"},
		{"keys empty secret", Config{Keys: []LegacyKey{{Secret: ""}}}, "keys[0] (type 'legacy'): Illegal secret"},
		{"user no url", Config{UserTokens: &UserTokens{}}, "user_tokens: jwks_url: must be a set of non-space characters"},
		{"user ftp url", Config{UserTokens: &UserTokens{JWKSURL: "ftp://x/jwks"}}, "user_tokens: jwks_url: must be an absolute http or https URL"},
		{"user HS256", Config{UserTokens: &UserTokens{JWKSURL: srv.KeySetURL(), Algorithms: []string{"HS256"}}}, "user_tokens: algorithms: algorithm 'HS256' is not allowed"},
		{"plugin template without placeholder", Config{PluginTokens: &PluginTokens{JWKSURL: srv.KeySetURL()}}, "plugin_tokens: jwks_url: must contain the placeholder {plugin}"},
		{"plugin bad allowlist", Config{PluginTokens: &PluginTokens{JWKSURL: srv.PluginTemplate(), Plugins: []string{"catalog", "../x"}}}, "plugin_tokens: plugins[1]: '../x' is not a valid plugin id"},
		{"plugin bad algorithm", Config{PluginTokens: &PluginTokens{JWKSURL: srv.PluginTemplate(), Algorithms: []string{"RS1"}}}, "plugin_tokens: algorithms: unknown algorithm 'RS1'"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			app := tc.app
			_, release, err := newForTest(app)
			if err == nil {
				release()
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestBuildFailureReleasesCaches(t *testing.T) {
	srv := testkit.NewJWKSServer(t)
	app := &Config{
		UserTokens:     &UserTokens{JWKSURL: srv.KeySetURL()},
		ExternalAccess: []ExternalAccess{{JWKS: &JWKSAccess{URL: srv.KeySetURL()}}, {}},
	}
	if _, _, err := newForTest(*app); err == nil {
		t.Fatal("no error")
	}
	if n, ok := testPool.References(PoolKey{Kind: "jwks", URL: srv.KeySetURL()}); ok {
		t.Fatalf("key cache still referenced %d times after a failed build", n)
	}
}

func TestAuthErrorsCarryNoTokenContent(t *testing.T) {
	// Every rejection message is one of a fixed set (plus the plugin id in
	// Backstage's JWKS message).
	fixed := map[string]bool{}
	for _, e := range []*Error{ErrMissingCredentials, ErrIllegalToken, ErrMultipleAuthHeaders, errFailedUser, errNoUserSub,
		errIllegalLimited, errUserMissingExp, errFailedPlugin, errPluginSubFormat, errPluginMissingSub, errInvalidObo, errFailedLegacy} {
		if e.Status != 401 || e.Name != "AuthenticationError" {
			t.Errorf("%q: %d %s", e.Message, e.Status, e.Name)
		}
		fixed[e.Message] = true
	}
	if len(fixed) != 12 {
		t.Fatalf("duplicate messages: %d", len(fixed))
	}
}

// ---------------------------------------------------------------------------
// Fuzzing: bearerToken + authenticate with arbitrary Authorization headers
// ---------------------------------------------------------------------------

// fuzzKey is a fixed ES256 key, so that the committed seed corpus
// (testdata/fuzz/FuzzBearerAndToken) holds validly signed tokens.
func fuzzKey(t testing.TB) *testkit.Key {
	t.Helper()
	d := sha256.Sum256([]byte("caddy-backstage-proxy FuzzBearerAndToken key"))
	priv, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d[:])
	if err != nil {
		t.Fatal(err)
	}
	return testkit.ECKeyFrom(t, priv, "fuzz")
}

var fuzzLegacySecret = []byte("fuzz-legacy-secret-0123456789")

// fuzzSeeds are Authorization header values covering every token type, valid
// and invalid, for the fixed fuzz key at the fuzz clock (1_900_000_000).
func fuzzSeeds(t testing.TB) []string {
	k := fuzzKey(t)
	const iat, exp = 1_900_000_000, 1_900_003_600
	user := map[string]any{"sub": "user:default/alice", "aud": "backstage", "iat": iat, "exp": exp, "ent": []string{"group:default/a"}}
	limited := k.Sign(t, k.Hdr(TypeLimitedUser), map[string]any{"sub": "user:default/alice", "iat": iat, "exp": exp})
	plugin := map[string]any{"sub": "catalog", "aud": "proxy", "iat": iat, "exp": exp}
	legacy := map[string]any{"sub": "backstage-server", "iat": iat, "exp": exp}
	ext := map[string]any{"sub": "svc-1", "iss": "fuzz-issuer", "aud": "fuzz-aud", "iat": iat, "exp": exp}
	pubJSON, _ := json.Marshal(k.JWK)
	return []string{
		"Bearer static-token-123",
		"bearer  restricted-token-123",
		"Basic YWxhZGRpbjpvcGVuc2VzYW1l",
		"Bearer",
		"Bearer a b",
		"Bearer a.b.c",
		"Bearer ..",
		"Bearer " + k.Sign(t, k.Hdr(TypeUser), user),
		"Bearer " + k.Sign(t, k.Hdr(""), user),
		"Bearer " + k.Sign(t, k.Hdr(TypeUser), testkit.With(user, "exp", iat)),
		"Bearer " + limited,
		"Bearer " + k.Sign(t, k.Hdr(TypePlugin), plugin),
		"Bearer " + k.Sign(t, k.Hdr(TypePlugin), testkit.With(plugin, "obo", limited)),
		"Bearer " + k.Sign(t, k.Hdr(TypePlugin), testkit.With(plugin, "sub", "../admin")),
		"Bearer " + testkit.HS256(t, fuzzLegacySecret, map[string]any{"alg": "HS256", "typ": "JWT"}, legacy),
		"Bearer " + testkit.HS256(t, fuzzLegacySecret, map[string]any{"alg": "HS256"}, testkit.With(legacy, "exp", iat-1)),
		"Bearer " + k.Sign(t, map[string]any{"alg": "ES256", "kid": "fuzz"}, ext),
		"Bearer " + testkit.EncodeSegment(t, map[string]any{"alg": "none", "typ": TypeUser}) + "." + testkit.EncodeSegment(t, user) + ".",
		"Bearer " + testkit.HS256(t, pubJSON, map[string]any{"alg": "HS256", "typ": TypeUser, "kid": "fuzz"}, user),
		"Bearer " + testkit.EncodeSegment(t, `{"alg":"ES256","typ":"vnd.backstage.user","kid":{"x":1}}`) + "." + testkit.EncodeSegment(t, `{"sub":1e999}`) + ".AAAA",
	}
}

// bytesContainAny is strings.ContainsAny on bytes (set may hold invalid UTF-8).
func bytesContainAny(s, set string) bool {
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(set, s[i]) >= 0 {
			return true
		}
	}
	return false
}

func FuzzBearerAndToken(f *testing.F) {
	useFakeClock(f)
	k := fuzzKey(f)
	srv := testkit.NewJWKSServer(f, k) // serves the key for the user, plugin (any id) and external URLs
	auth := build(f, &Config{
		UserTokens:   &UserTokens{JWKSURL: srv.KeySetURL()},
		PluginTokens: &PluginTokens{JWKSURL: srv.PluginTemplate()},
		ExternalAccess: []ExternalAccess{
			{Static: &StaticAccess{Token: "static-token-123", Subject: "static-subject"}},
			{Static: &StaticAccess{Token: "restricted-token-123", Subject: "r"}, AccessRestrictions: []AccessRestriction{{Plugin: "catalog"}}},
			{Legacy: &LegacyAccess{Secret: base64.StdEncoding.EncodeToString(fuzzLegacySecret), Subject: "legacy-subject"}},
			{JWKS: &JWKSAccess{URL: srv.URL + "/ext/jwks.json", Issuers: []string{"fuzz-issuer"}, Audiences: []string{"fuzz-aud"}, SubjectPrefix: "ext"}},
		},
		Keys: []LegacyKey{{Secret: base64.StdEncoding.EncodeToString([]byte("fuzz-keys-secret"))}},
	})
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	fixed := map[string]bool{}
	for _, e := range []*Error{ErrMissingCredentials, ErrIllegalToken, ErrMultipleAuthHeaders, errFailedUser, errNoUserSub,
		errIllegalLimited, errUserMissingExp, errFailedPlugin, errPluginSubFormat, errPluginMissingSub, errInvalidObo, errFailedLegacy} {
		fixed[e.Message] = true
	}
	noJWKSPrefix, noJWKSSuffix, _ := strings.Cut(PluginWithoutKeySet("\x00").Message, "\x00")
	methods := map[string]bool{"user": true, "plugin": true, "static": true, "legacy": true, "jwks": true}

	f.Fuzz(func(t *testing.T, header string) {
		token, aerr := BearerToken(http.Header{"Authorization": {header}})
		if aerr != nil {
			if aerr != ErrMissingCredentials {
				t.Fatalf("bearerToken: %v", aerr)
			}
			return
		}
		if token == "" || bytesContainAny(token, " \t\n\r\v\f\xa0") ||
			!strings.HasSuffix(strings.TrimRight(header, " \t"), token) {
			t.Fatalf("bearerToken(%q) = %q", header, token)
		}
		p, err := auth.Authenticate(context.Background(), token)
		p2, err2 := auth.Authenticate(context.Background(), token)
		p.subjectValue, p2.subjectValue = nil, nil
		if (err == nil) != (err2 == nil) || p != p2 || (err != nil && err.Message != err2.Message) {
			t.Fatalf("not deterministic: %+v %v, then %+v %v", p, err, p2, err2)
		}
		if err != nil {
			switch {
			case err.Status == 401 && err.Name == "AuthenticationError" && fixed[err.Message]:
			case err.Status == 401 && err.Name == "AuthenticationError" && strings.HasPrefix(err.Message, noJWKSPrefix) && strings.HasSuffix(err.Message, noJWKSSuffix):
				id := strings.TrimSuffix(strings.TrimPrefix(err.Message, noJWKSPrefix), noJWKSSuffix)
				if !validPluginID(id) {
					t.Fatalf("plugin id %q in a message", id)
				}
				return // the plugin id is the only token content an error may carry
			case err.Status == 403 && err.Name == "NotAllowedError" && err.Message == "This token's access is restricted to plugin(s) 'catalog'":
			default:
				t.Fatalf("unexpected rejection %d %s %q", err.Status, err.Name, err.Message)
			}
			if len(token) >= 16 && strings.Contains(err.Message, token) {
				t.Fatalf("message %q contains the token", err.Message)
			}
			return
		}
		if (p.Type != "user" && p.Type != "service") || p.Subject == "" || !methods[p.Method] {
			t.Fatalf("bad principal %+v", p)
		}
	})
}

// TestStaticTokenShapedLikeJWT: a static token with two dots takes the full
// dispatch path (it could be a JWT); others take the digest fast path. Both
// must give the same principal, and the first matching entry must win.
func TestStaticTokenShapedLikeJWT(t *testing.T) {
	auth := build(t, &Config{ExternalAccess: []ExternalAccess{
		{Static: &StaticAccess{Token: "part1.part2.part3", Subject: "dotted"}},
		{Static: &StaticAccess{Token: "plain-static-token", Subject: "plain"}},
		{Static: &StaticAccess{Token: "plain-static-token", Subject: "shadowed"}},
		{Static: &StaticAccess{Token: "q8w7e6r5.t4y3", Subject: "r"}, AccessRestrictions: []AccessRestriction{{Plugin: "catalog"}}},
	}})
	if p := expectOK(t, auth, "part1.part2.part3"); p != (Principal{Type: "service", Subject: "dotted", Method: "static"}) {
		t.Fatalf("dotted: got %+v", p)
	}
	if p := expectOK(t, auth, "plain-static-token"); p.Subject != "plain" {
		t.Fatalf("plain: got %+v", p)
	}
	expectErr(t, auth, "q8w7e6r5.t4y3", 403, "This token's access is restricted to plugin(s) 'catalog'")
	expectErr(t, auth, "plain-static-tokenx", 401, "Illegal token")
}

// FuzzPluginClaimsImpersonation signs arbitrary claim sets with one plugin's
// key ("evil") and authenticates them against a real key-set server that
// serves evil's and catalog's keys. The fuzzer writes the members of the
// payload (duplicate names, case variants, escaped names, obo); a fixed
// aud/iat/exp tail makes most of them otherwise valid. Property: a token
// evil signed yields evil (as the principal, or as the actor of an obo user)
// or nothing; never catalog, never any other plugin.
func FuzzPluginClaimsImpersonation(f *testing.F) {
	useFakeClock(f)
	evil := fuzzKey(f)
	catalog := testkit.NewECKey(f, "catalog-key")
	plugins := testkit.NewPluginServer(f)
	plugins.Set("evil", evil)
	plugins.Set("catalog", catalog)
	auth := build(f, &Config{
		UserTokens:   &UserTokens{JWKSURL: testkit.NewJWKSServer(f, evil).KeySetURL()},
		PluginTokens: &PluginTokens{JWKSURL: plugins.Template()},
	})
	const iat, exp = 1_900_000_000, 1_900_003_600
	limited := evil.Sign(f, evil.Hdr(TypeLimitedUser), map[string]any{"sub": "user:default/alice", "iat": iat, "exp": exp})
	for _, members := range []string{
		`"sub":"evil"`,
		`"sub":"catalog","SUB":"evil"`,
		`"sub":"catalog","Sub":"evil"`,
		`"SUB":"evil","sub":"catalog"`,
		`"sub":"catalog","sub":"evil"`,
		`"sub":"evil","sub":"catalog"`,
		`"sub":"evil","s\u0075b":"catalog"`,
		`"sub":"catalog","SUB":"evil","obo":"` + limited + `"`,
		`"sub":"evil","obo":"` + limited + `"`,
		`"sub":"evil","obo":"` + limited + `","OBO":"x"`,
		`"sub":"evil","aud":"search"`,
	} {
		f.Add(members)
	}
	f.Fuzz(func(t *testing.T, members string) {
		payload := "{" + members + fmt.Sprintf(`,"aud":"proxy","iat":%d,"exp":%d}`, iat, exp)
		if members == "" {
			payload = fmt.Sprintf(`{"aud":"proxy","iat":%d,"exp":%d}`, iat, exp)
		}
		tok := evil.Sign(t, evil.Hdr(TypePlugin), payload)
		p, err := auth.Authenticate(context.Background(), tok)
		if err != nil {
			return
		}
		switch {
		case p.Type == PrincipalService && p.Subject == "plugin:evil" && p.Actor == "":
		case p.Type == PrincipalUser && p.Actor == "plugin:evil":
		default:
			t.Fatalf("a token signed by evil's key yielded %+v (payload %s)", p, payload)
		}
	})
}

// TestPolicyView: every verified principal carries its policy view, with the
// user token's `ent` claim folded; a cached principal carries the same view,
// and the view of a cached principal costs no allocation.
func TestPolicyView(t *testing.T) {
	f := newPluginFixture(t, nil)
	u, c := f.userKey, f.catalog
	user := func(claims map[string]any) string { return u.Sign(t, u.Hdr(TypeUser), claims) }
	claims := map[string]any{"sub": "User:Default/Alice", "aud": "backstage", "iat": f.clk.Unix(), "exp": f.clk.At(time.Hour),
		"ent": []string{"user:default/alice", "Group:SRE", "group:team-a/Dev"}}
	full := user(claims)
	for _, tc := range []struct {
		name      string
		token     string
		want      policy.Principal
		ownership []string
	}{
		{"user with ent", full, policy.Principal{User: true, Subject: "User:Default/Alice", Ref: "user:default/alice"},
			[]string{"user:default/alice", "group:default/sre", "group:team-a/dev"}},
		{"user without ent", user(testkit.Without(claims, "ent")), policy.Principal{User: true, Subject: "User:Default/Alice", Ref: "user:default/alice"}, nil},
		{"ent not a list", user(testkit.With(claims, "ent", "group:default/sre")), policy.Principal{User: true, Subject: "User:Default/Alice", Ref: "user:default/alice"}, nil},
		{"ent with a non-string", user(testkit.With(claims, "ent", []any{"group:default/sre", 7})), policy.Principal{User: true, Subject: "User:Default/Alice", Ref: "user:default/alice"}, nil},
		{"plugin", c.Sign(t, c.Hdr(TypePlugin), f.claims("catalog")), policy.Principal{Subject: "plugin:catalog"}, nil},
		{"obo limited (no ent)", c.Sign(t, c.Hdr(TypePlugin), testkit.With(f.claims("catalog"), "obo", f.limitedUserToken(t, "user:default/bob", time.Hour))),
			policy.Principal{User: true, Subject: "user:default/bob", Actor: "plugin:catalog", Ref: "user:default/bob"}, nil},
		{"obo full user token", c.Sign(t, c.Hdr(TypePlugin), testkit.With(f.claims("catalog"), "obo", full)),
			policy.Principal{User: true, Subject: "User:Default/Alice", Actor: "plugin:catalog", Ref: "user:default/alice"},
			[]string{"user:default/alice", "group:default/sre", "group:team-a/dev"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for round := range 2 { // verified, then cached
				p, err := f.auth.Authenticate(context.Background(), tc.token)
				if err != nil {
					t.Fatal(err)
				}
				v := p.PolicyView()
				if v.User != tc.want.User || v.Subject != tc.want.Subject || v.Actor != tc.want.Actor || v.Ref != tc.want.Ref ||
					strings.Join(v.Ownership, ",") != strings.Join(tc.ownership, ",") {
					t.Fatalf("round %d: view %+v, want %+v with ownership %q", round, *v, tc.want, tc.ownership)
				}
			}
			if n := testing.AllocsPerRun(20, func() {
				p, _ := f.auth.Authenticate(context.Background(), tc.token)
				_ = p.PolicyView()
			}); n != 0 {
				t.Fatalf("a cached principal's view costs %v allocations", n)
			}
		})
	}
}
