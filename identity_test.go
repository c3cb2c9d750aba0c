package backstageproxy

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/identity"
	"github.com/caddy-backstage/caddy-backstage-proxy/internal/testkit"
	"github.com/caddyserver/caddy/v2"
)

// appJSON is the complete `apps.backstage` JSON shape, as the adapter emits it.
const appJSON = `{
	"user_tokens": {
		"jwks_url": "http://localhost:7007/api/auth/.well-known/jwks.json",
		"algorithms": ["ES256"]
	},
	"plugin_tokens": {
		"jwks_url": "http://localhost:7007/api/{plugin}/.backstage/auth/v1/jwks.json",
		"plugins": ["catalog", "scaffolder"],
		"algorithms": ["ES256"]
	},
	"external_access": [
		{"static": {"token": "{env.STATIC_TOKEN}", "subject": "ci"},
		 "access_restrictions": [{"plugin": "proxy"}, {"plugin": "catalog", "permissions": ["catalog.entity.read"], "permission_attributes": {"action": ["read"]}}]},
		{"legacy": {"secret": "c2VjcmV0LXNlY3JldA==", "subject": "legacy-caller"}},
		{"jwks": {"url": "https://idp.example.com/jwks.json", "issuers": ["https://idp.example.com"],
		 "audiences": ["backstage"], "algorithms": ["RS256", "ES256"], "subject_prefix": "idp"}}
	],
	"keys": [{"secret": "a2V5LXNlY3JldA==", "access_restrictions": [{"plugin": "proxy"}]}],
	"dangerously_disable_default_auth_policy": true
}`

func TestAppJSONShape(t *testing.T) {
	// Caddy decodes module JSON strictly: every field above must exist.
	dec := json.NewDecoder(strings.NewReader(appJSON))
	dec.DisallowUnknownFields()
	var app App
	if err := dec.Decode(&app); err != nil {
		t.Fatal(err)
	}
	want := App{
		UserTokens: &identity.UserTokens{JWKSURL: "http://localhost:7007/api/auth/.well-known/jwks.json", Algorithms: []string{"ES256"}},
		PluginTokens: &identity.PluginTokens{
			JWKSURL: "http://localhost:7007/api/{plugin}/.backstage/auth/v1/jwks.json",
			Plugins: []string{"catalog", "scaffolder"}, Algorithms: []string{"ES256"},
		},
		ExternalAccess: []identity.ExternalAccess{
			{Static: &identity.StaticAccess{Token: "{env.STATIC_TOKEN}", Subject: "ci"}, AccessRestrictions: []identity.AccessRestriction{
				{Plugin: "proxy"},
				{Plugin: "catalog", Permissions: []string{"catalog.entity.read"}, PermissionAttributes: map[string][]string{"action": {"read"}}},
			}},
			{Legacy: &identity.LegacyAccess{Secret: "c2VjcmV0LXNlY3JldA==", Subject: "legacy-caller"}},
			{JWKS: &identity.JWKSAccess{
				URL: "https://idp.example.com/jwks.json", Issuers: []string{"https://idp.example.com"}, Audiences: []string{"backstage"},
				Algorithms: []string{"RS256", "ES256"}, SubjectPrefix: "idp",
			}},
		},
		Keys:                                []identity.LegacyKey{{Secret: "a2V5LXNlY3JldA==", AccessRestrictions: []identity.AccessRestriction{{Plugin: "proxy"}}}},
		DangerouslyDisableDefaultAuthPolicy: true,
	}
	if !reflect.DeepEqual(app, want) {
		t.Fatalf("decoded\n%+v\nwant\n%+v", app, want)
	}
	// Round trip: marshalling gives the same JSON back.
	out, err := json.Marshal(app)
	if err != nil {
		t.Fatal(err)
	}
	var a, b any
	_ = json.Unmarshal(out, &a)
	_ = json.Unmarshal([]byte(appJSON), &b)
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("round trip:\n%s", out)
	}
	// The zero config marshals to {}.
	if out, _ := json.Marshal(App{}); !bytes.Equal(out, []byte("{}")) {
		t.Fatalf("empty app: %s", out)
	}
}

func TestAppModule(t *testing.T) {
	info, err := caddy.GetModule("backstage")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := info.New().(*App); !ok {
		t.Fatalf("module backstage is %T", info.New())
	}
}

func TestAppProvisionAndCleanup(t *testing.T) {
	t.Setenv("BACKSTAGE_TEST_TOKEN", "token-from-env-123")
	clk := useFakeClock(t)
	k := testkit.NewECKey(t, "k")
	srv := testkit.NewJWKSServer(t, k)
	newApp := func() *App {
		return &App{
			UserTokens:     &identity.UserTokens{JWKSURL: srv.KeySetURL()},
			ExternalAccess: []identity.ExternalAccess{{Static: &identity.StaticAccess{Token: "{env.BACKSTAGE_TEST_TOKEN}", Subject: "env"}}},
		}
	}
	a := newApp()
	if err := a.Provision(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if srv.Hits.Load() != 0 {
		t.Fatal("Provision fetched keys")
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	expectOK(t, a.authn, "token-from-env-123")
	expectOK(t, a.authn, userToken(t, clk, k, "user:default/a"))

	// Reload: the new app is provisioned before the old one is cleaned up.
	b := newApp()
	if err := b.Provision(testContext(t)); err != nil {
		t.Fatal(err)
	}
	_ = a.Stop()
	if err := a.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if err := a.Cleanup(); err != nil { // twice is fine
		t.Fatal(err)
	}
	expectOK(t, b.authn, userToken(t, clk, k, "user:default/b"))
	if h := srv.Hits.Load(); h != 1 {
		t.Fatalf("%d fetches across a reload, want 1", h)
	}
	if err := b.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if _, ok := keyPool.References(identity.PoolKey{Kind: "jwks", URL: srv.KeySetURL()}); ok {
		t.Fatal("key cache left in the pool")
	}
}

func TestAppProvisionError(t *testing.T) {
	a := &App{ExternalAccess: []identity.ExternalAccess{{Static: &identity.StaticAccess{Token: "short", Subject: "s"}}}}
	err := a.Provision(testContext(t))
	if err == nil || !strings.HasPrefix(err.Error(), "backstage identity: external_access[0] (type 'static'): ") {
		t.Fatalf("error %v", err)
	}
	if err := a.Cleanup(); err != nil { // after a failed Provision
		t.Fatal(err)
	}
}

func TestAppWithoutCredentials(t *testing.T) {
	useFakeClock(t)
	a := &App{}
	if err := a.Provision(testContext(t)); err != nil {
		t.Fatal(err)
	}
	defer a.Cleanup()
	expectErr(t, a.authn, "anything-at-all", 401, "Illegal token")
}

// TestAppResolvesPlaceholders: the app resolves {env.*} placeholders in the
// identity options once, at provision, and leaves other braces alone.
func TestAppResolvesPlaceholders(t *testing.T) {
	t.Setenv("BACKSTAGE_TEST_STATIC_TOKEN", "from-the-environment")
	a := &App{ExternalAccess: []identity.ExternalAccess{
		{Static: &identity.StaticAccess{Token: "{env.BACKSTAGE_TEST_STATIC_TOKEN}", Subject: "env-subject"}},
		{Static: &identity.StaticAccess{Token: "literal{braces}token", Subject: "braces"}},
	}}
	if err := a.Provision(testContext(t)); err != nil {
		t.Fatal(err)
	}
	defer a.Cleanup()
	if p := expectOK(t, a.authn, "from-the-environment"); p.Subject != "env-subject" {
		t.Fatalf("got %+v", p)
	}
	expectOK(t, a.authn, "literal{braces}token")
	expectErr(t, a.authn, "{env.BACKSTAGE_TEST_STATIC_TOKEN}", 401, "Illegal token")

	// An unset variable resolves to nothing: the token is refused as empty.
	unset := &App{ExternalAccess: []identity.ExternalAccess{{Static: &identity.StaticAccess{Token: "{env.BACKSTAGE_TEST_SURELY_UNSET}", Subject: "s"}}}}
	err := unset.Provision(testContext(t))
	if err == nil || !strings.Contains(err.Error(), "Illegal token, must be a set of non-space characters") {
		t.Fatalf("unset variable: error %v", err)
	}
	_ = unset.Cleanup()
}
