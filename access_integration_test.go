package backstageproxy

// Integration tests of the access policy (issue #12: allow and
// upstream_authorization) through a real Caddy, with real tokens of every
// kind verified against real key-set servers (aiFixture).

import (
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/identity"
	"github.com/caddy-backstage/caddy-backstage-proxy/internal/testkit"
)

// accessAllowRoutes are the routes of TestIntegrationAllow: one per kind of
// allow pattern (and its variants), and one without allow.
var accessAllowRoutes = []struct {
	name  string
	allow []string
}{
	{"users", []string{"user"}},
	{"services", []string{"service"}},
	{"alice", []string{"user:default/alice"}},
	{"alice-short-case", []string{"User:ALICE"}},
	{"sre", []string{"group:default/sre"}},
	{"sre-short-case", []string{"Group:SRE"}},
	{"s-teams", []string{"group:default/s*"}},
	{"catalog", []string{"plugin:catalog"}},
	{"static", []string{"static-subject"}},
	{"legacy", []string{"legacy-subject"}},
	{"keys", []string{"external:backstage-plugin"}},
	{"jwks", []string{"external:ext:svc-1"}},
	{"jwks-wild", []string{"external:ext:*"}},
	{"mixed", []string{"group:default/platform", "plugin:search", "external:ci-*", "static-subject"}},
	{"plain", nil},
}

func TestIntegrationAllow(t *testing.T) {
	f := newAIFixture(t)
	f.plugins.Set("search", f.catalogKey)
	var routes []aiRoute
	for _, r := range accessAllowRoutes {
		h := map[string]any{}
		if r.allow != nil {
			h["allow"] = r.allow
		}
		routes = append(routes, aiRoute{name: r.name, handler: h})
	}
	aiLoad(t, f.configRoutes(t, f.app(false), routes...))

	now := time.Now().Unix()
	u, c, e := f.userKey, f.catalogKey, f.extKey
	userClaims := func(sub string, ent ...string) map[string]any {
		claims := map[string]any{"sub": sub, "aud": "backstage", "iat": now, "exp": now + 3600}
		if ent != nil {
			claims["ent"] = ent
		}
		return claims
	}
	user := func(sub string, ent ...string) string {
		return u.Sign(t, u.Hdr(identity.TypeUser), userClaims(sub, ent...))
	}
	limited := u.Sign(t, u.Hdr(identity.TypeLimitedUser), map[string]any{"sub": "user:default/alice", "iat": now, "exp": now + 3600})
	plugin := func(id string, obo string) string {
		claims := map[string]any{"sub": id, "aud": "proxy", "iat": now, "exp": now + 3600}
		if obo != "" {
			claims["obo"] = obo
		}
		return c.Sign(t, c.Hdr(identity.TypePlugin), claims)
	}
	hs := map[string]any{"alg": "HS256", "typ": "JWT"}
	legacy := map[string]any{"sub": "backstage-server", "iat": now, "exp": now + 3600}
	ext := func(sub string) string {
		return e.Sign(t, e.Hdr(""), map[string]any{"sub": sub, "iss": "https://ext.example.com", "aud": "backstage-proxy", "iat": now, "exp": now + 3600})
	}
	aliceFull := user("user:default/alice", "user:default/alice", "group:default/sre")

	// Each token and the routes it may call ("plain" is implied).
	tokens := []struct {
		name, token string
		allowed     []string
	}{
		{"user alice in sre", aliceFull, []string{"users", "alice", "alice-short-case", "sre", "sre-short-case", "s-teams"}},
		{"user alice, refs in mixed case", user("User:Default/Alice", "Group:Default/SRE"), []string{"users", "alice", "alice-short-case", "sre", "sre-short-case", "s-teams"}},
		{"user bob in dev", user("user:default/bob", "user:default/bob", "group:default/dev"), []string{"users"}},
		{"user carol in platform, short ent", user("user:default/carol", "group:platform"), []string{"users", "mixed"}},
		{"user without ent", user("user:default/dave"), []string{"users"}},
		{"plugin catalog", plugin("catalog", ""), []string{"services", "catalog"}},
		{"plugin search", plugin("search", ""), []string{"services", "mixed"}},
		{"obo catalog for alice (limited: no ent)", plugin("catalog", limited), []string{"users", "alice", "alice-short-case", "catalog"}},
		{"obo search for alice (full user token)", plugin("search", aliceFull), []string{"users", "alice", "alice-short-case", "sre", "sre-short-case", "s-teams", "mixed"}},
		{"static", "static-token-123", []string{"services", "static", "mixed"}},
		{"legacy", testkit.HS256(t, f.legacySecret, hs, legacy), []string{"services", "legacy"}},
		{"legacy keys", testkit.HS256(t, f.keysSecret, hs, legacy), []string{"services", "keys"}},
		{"jwks", ext("svc-1"), []string{"services", "jwks", "jwks-wild"}},
		{"jwks other subject", ext("svc-2"), []string{"services", "jwks-wild"}},
	}
	for _, tk := range tokens {
		for _, r := range accessAllowRoutes {
			t.Run(tk.name+"/"+r.name, func(t *testing.T) {
				path := "/api/proxy/" + r.name + "/p"
				header := "Bearer " + tk.token
				_, before := f.upstream.seen()
				status, body := aiGet(t, path, header)
				_, after := f.upstream.seen()
				if r.name == "plain" || slices.Contains(tk.allowed, r.name) {
					if status != 200 || after != before+1 {
						t.Fatalf("status %d (upstream requests %d → %d), want 200 and the request upstream: %s", status, before, after, body)
					}
					return
				}
				want := backstageErrorBody("NotAllowedError", notAllowedMessage, "GET", "/"+r.name+"/p", 403)
				if status != 403 || string(body) != want {
					t.Fatalf("got %d %s, want 403 %s", status, body, want)
				}
				if after != before {
					t.Fatal("a refused request reached the upstream")
				}
				testkit.AssertNoTokenContent(t, tk.token, string(body))
			})
		}
	}
	// Credentials are checked before allow: no token is 401, not 403.
	status, body := aiGet(t, "/api/proxy/sre/p", "")
	checkError(t, body, status, "/api/proxy/sre/p", "Missing credentials", "")
	if status != 401 {
		t.Fatalf("anonymous caller on an allow route: %d", status)
	}
}

// uaUpstream records the headers it gets, and answers 401 with its own body
// and WWW-Authenticate under /deny.
func newUAUpstream(t *testing.T) *aiUpstream {
	u := &aiUpstream{}
	u.Server = newTestUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.record(r.Header.Clone())
		w.Header().Set("Content-Type", "application/json")
		if strings.Contains(r.URL.Path, "/deny") {
			w.Header().Set("WWW-Authenticate", `Bearer realm="upstream"`)
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"message":"upstream says no"}`)
			return
		}
		_, _ = io.WriteString(w, `{"ok":true}`)
	}))
	return u
}

func TestIntegrationUpstreamAuthorization(t *testing.T) {
	f := newAIFixture(t)
	up := newUAUpstream(t)
	const named = "Backstage-Upstream-Authorization"
	aiLoad(t, f.configRoutes(t, f.app(false),
		aiRoute{name: "ua", upstream: up.hostport(), handler: map[string]any{"upstream_authorization": named, "allow": []string{"service"}}},
		aiRoute{name: "ua-open", upstream: up.hostport(), handler: map[string]any{"upstream_authorization": strings.ToLower(named), "credentials": CredentialsDangerouslyAllowUnauthenticated}},
		aiRoute{name: "plain", upstream: up.hostport(), handler: map[string]any{}},
	))
	const backstageToken = "static-token-123"
	for _, tc := range []struct {
		name          string
		path          string
		header        http.Header
		status        int
		body          string // exact; "" = the upstream's {"ok":true}
		upstreamAuthz string // "" = none; "-" = the upstream got nothing
	}{
		{"caller's upstream credential goes upstream as Authorization", "/ua/x",
			http.Header{"Authorization": {"Bearer " + backstageToken}, named: {"Token token=caller-123"}}, 200, "", "Token token=caller-123"},
		{"named header in other case", "/ua/x",
			http.Header{"Authorization": {"Bearer " + backstageToken}, "backstage-upstream-authorization": {"Basic Y2FsbGVyOnB3"}}, 200, "", "Basic Y2FsbGVyOnB3"},
		{"without the named header, no Authorization upstream", "/ua/x",
			http.Header{"Authorization": {"Bearer " + backstageToken}}, 200, "", ""},
		{"several named headers: none goes upstream", "/ua/x",
			http.Header{"Authorization": {"Bearer " + backstageToken}, named: {"Token a", "Token b"}}, 200, "", ""},
		{"the upstream's 401 passes through", "/ua/deny",
			http.Header{"Authorization": {"Bearer " + backstageToken}, named: {"Token token=wrong"}}, 401, `{"message":"upstream says no"}`, "Token token=wrong"},
		{"no Backstage token: the proxy's 401, nothing upstream", "/ua/x",
			http.Header{named: {"Token token=caller-123"}}, 401,
			backstageErrorBody("AuthenticationError", "Missing credentials", "GET", "/ua/x", 401), "-"},
		{"refused by allow: the proxy's 403, nothing upstream", "/ua/x",
			http.Header{"Authorization": {"Bearer " + f.userKey.Sign(t, f.userKey.Hdr(identity.TypeUser), map[string]any{"sub": "user:default/alice", "iat": time.Now().Unix(), "exp": time.Now().Unix() + 3600})}, named: {"Token token=caller-123"}}, 403,
			backstageErrorBody("NotAllowedError", notAllowedMessage, "GET", "/ua/x", 403), "-"},
		{"open route: the named header goes upstream as Authorization, the caller's Authorization does not", "/ua-open/x",
			http.Header{"Authorization": {"Bearer caller-backstage-token"}, named: {"Token token=caller-123"}}, 200, "", "Token token=caller-123"},
		{"open route without the named header", "/ua-open/x",
			http.Header{"Authorization": {"Bearer caller-backstage-token"}}, 200, "", ""},
		{"route without the option: the named header is not forwarded", "/plain/x",
			http.Header{"Authorization": {"Bearer " + backstageToken}, named: {"Token token=caller-123"}}, 200, "", ""},
		{"route without the option: the upstream's 401 passes through", "/plain/deny",
			http.Header{"Authorization": {"Bearer " + backstageToken}}, 401, `{"message":"upstream says no"}`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up.reset()
			status, header, body := aiDo(t, "/api/proxy"+tc.path, tc.header)
			want := tc.body
			if want == "" {
				want = `{"ok":true}`
			}
			if status != tc.status || string(body) != want {
				t.Fatalf("got %d %s, want %d %s", status, body, tc.status, want)
			}
			if header.Get("WWW-Authenticate") != "" {
				t.Error("WWW-Authenticate is not on the response allowlist, yet it came back")
			}
			got := up.requests()
			if tc.upstreamAuthz == "-" {
				if len(got) != 0 {
					t.Fatalf("the upstream got %d requests", len(got))
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("the upstream got %d requests, want 1", len(got))
			}
			h := got[0]
			if a := strings.Join(h.Values("Authorization"), ", "); a != tc.upstreamAuthz {
				t.Errorf("upstream Authorization %q, want %q", a, tc.upstreamAuthz)
			}
			if v := h.Values(named); len(v) != 0 {
				t.Errorf("the named header went upstream: %q", v)
			}
			for name, values := range h {
				for _, v := range values {
					if strings.Contains(v, backstageToken) || strings.Contains(v, "caller-backstage-token") || strings.Contains(v, "eyJ") {
						t.Errorf("the Backstage token went upstream in %s: %q", name, v)
					}
				}
			}
		})
	}
}
