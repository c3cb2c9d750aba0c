package backstageproxy

import (
	"context"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/identity"
)

// authenticator verifies a bearer token the way Backstage's
// AuthService.authenticate does: plugin tokens, then user tokens, then
// external access entries in order, else "Illegal token". The `backstage`
// app's is an *Verifier; handler unit tests give a stub.
type authenticator interface {
	Authenticate(ctx context.Context, token string) (identity.Principal, *identity.Error)
}

// keyPool holds the key caches shared across config reloads: a config that
// replaces another is provisioned before the old one is cleaned up, so the
// caches it shares (same URL) are never dropped and never refetched.
var keyPool = caddy.NewUsagePool()

// usagePool lends Caddy's UsagePool to the identity package, which does not
// import Caddy.
type usagePool struct{ *caddy.UsagePool }

func (p usagePool) LoadOrNew(key any, construct func() (identity.Destructor, error)) (any, bool, error) {
	return p.UsagePool.LoadOrNew(key, func() (caddy.Destructor, error) { return construct() })
}

// Interface guards
var (
	_ authenticator = (*identity.Verifier)(nil)
	_ identity.Pool = usagePool{}
)
