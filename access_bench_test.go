package backstageproxy

import (
	"fmt"
	"testing"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/identity"
	"go.uber.org/zap"
)

// BenchmarkHandlerAllow: require with a 20-entry allow list of every kind,
// for a cached user token that passes by its last ownership ref, and for a
// static token that passes by the last subject: the allow check's share of
// a request (compare BenchmarkHandlerUserTokenCached and
// BenchmarkHandlerStaticToken).
func BenchmarkHandlerAllow(b *testing.B) {
	f := newUserTokenFixture(b)
	app := benchUserAndStaticApp(b, f)
	var allow []string
	for i := range 4 {
		allow = append(allow, fmt.Sprintf("user:default/user-%d", i), fmt.Sprintf("group:default/team-%d", i),
			fmt.Sprintf("plugin:plugin-%d", i), fmt.Sprintf("external:idp:bot-%d", i))
	}
	// the matching entries last
	allow = append(allow, "group:team-x/*", "external:ci-*", "group:default/oncall", "ci")
	h := benchHandler(b, CredentialsRequire, app)
	h.Allow = allow
	if err := h.setup(app, zap.NewNop()); err != nil {
		b.Fatal(err)
	}
	h.audit = nil // as in benchHandler
	if len(h.Allow) != 20 {
		b.Fatalf("%d entries", len(h.Allow))
	}
	b.Run("user-token-cached", func(b *testing.B) {
		tok := f.tokenWithOwnership(b, "user:default/alice", []string{"user:default/alice", "group:default/dev", "group:default/oncall"})
		runHandlerBench(b, h, benchRequest("Bearer "+tok))
	})
	b.Run("static", func(b *testing.B) {
		runHandlerBench(b, h, benchRequest("Bearer static-token-0123456789"))
	})
}

// benchUserAndStaticApp is an identity app that verifies f's user tokens
// and the static token `static-token-0123456789` (subject `ci`).
func benchUserAndStaticApp(b *testing.B, f *userTokenFixture) *App {
	b.Helper()
	return benchProvisionApp(b, &App{
		UserTokens:     &identity.UserTokens{JWKSURL: f.jwks.URL},
		ExternalAccess: []identity.ExternalAccess{{Static: &identity.StaticAccess{Token: "static-token-0123456789", Subject: "ci"}}},
	})
}
