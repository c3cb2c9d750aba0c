package backstageproxy

import (
	"github.com/caddy-backstage/caddy-backstage-proxy/internal/identity"
	"github.com/caddyserver/caddy/v2"
)

// The placeholders the handler sets (documented on Handler).
const (
	placeholderUserID          = "http.auth.user.id"
	placeholderPrincipalType   = "http.backstage_proxy.principal.type"
	placeholderPrincipalMethod = "http.backstage_proxy.principal.method"
	placeholderRoute           = "http.backstage_proxy.route"
	placeholderError           = "http.backstage_proxy.error"
)

// Most placeholders are given to the request's replacer as value providers
// (Replacer.Map), built once, rather than set one by one (Replacer.Set
// takes a mutex and writes a map: about 40 ns a value, where adding a
// provider costs 3 ns and no allocation). A provider answers only after
// the values set with Set: the subject, `{http.auth.user.id}`, which other
// authentication handlers set too and the access log shows as `user_id`,
// is set with Set so that the handler that verified last still wins.

// routePlaceholders provides `{http.backstage_proxy.route}`; nil when the
// route has no name.
func routePlaceholders(route string) caddy.ReplacerFunc {
	if route == "" {
		return nil
	}
	value := any(route)
	return func(key string) (any, bool) {
		if key == placeholderRoute {
			return value, true
		}
		return nil, false
	}
}

// principalPlaceholders provides `{http.backstage_proxy.principal.type}` and
// `{http.backstage_proxy.principal.method}`. The providers of the pairs
// that exist are built once.
func principalPlaceholders(typ, method string) caddy.ReplacerFunc {
	for i := range knownPrincipalPlaceholders {
		if k := &knownPrincipalPlaceholders[i]; k.typ == typ && k.method == method {
			return k.provider
		}
	}
	return newPrincipalPlaceholders(typ, method)
}

func newPrincipalPlaceholders(typ, method string) caddy.ReplacerFunc {
	typeValue, methodValue := any(typ), any(method)
	return func(key string) (any, bool) {
		switch key {
		case placeholderPrincipalType:
			return typeValue, true
		case placeholderPrincipalMethod:
			return methodValue, true
		}
		return nil, false
	}
}

// principalProvider is the placeholder provider of one type and method pair.
type principalProvider struct {
	typ, method string
	provider    caddy.ReplacerFunc
}

// knownPrincipalPlaceholders are the type and method pairs that
// authentication produces: user tokens, plugin tokens (a user's when they
// act on behalf of one), and the three kinds of external access.
var knownPrincipalPlaceholders = func() []principalProvider {
	known := []principalProvider{
		{typ: identity.PrincipalUser, method: "user"},
		{typ: identity.PrincipalService, method: "plugin"},
		{typ: identity.PrincipalUser, method: "plugin"},
		{typ: identity.PrincipalService, method: "static"},
		{typ: identity.PrincipalService, method: "legacy"},
		{typ: identity.PrincipalService, method: "jwks"},
	}
	for i := range known {
		known[i].provider = newPrincipalPlaceholders(known[i].typ, known[i].method)
	}
	return known
}()
