package backstageproxy

import (
	"fmt"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/identity"
	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(App{})
}

// App is the `backstage` app: the Backstage identity configuration, that is,
// which credentials are valid. It is declared once per Caddy config and shared by
// every `backstage_proxy` handler, like `backend.auth` in a Backstage
// `app-config.yaml`. Key caches (JWKS) are shared across config reloads, so a
// reload costs no key fetch and no failed request.
//
// With no `backstage` app configured, no credential is valid: every route whose
// credentials policy is not `dangerously-allow-unauthenticated` answers 401.
type App struct {
	// UserTokens verifies Backstage user tokens (`typ: vnd.backstage.user`, or
	// untyped with `aud: backstage`), issued by the auth backend.
	UserTokens *identity.UserTokens `json:"user_tokens,omitempty"`

	// PluginTokens verifies plugin-to-plugin tokens (`typ: vnd.backstage.plugin`,
	// `aud: proxy`), signed by the calling plugin.
	PluginTokens *identity.PluginTokens `json:"plugin_tokens,omitempty"`

	// ExternalAccess lists the `backend.auth.externalAccess` entries, tried in
	// order: `static`, `legacy` and `jwks`.
	ExternalAccess []identity.ExternalAccess `json:"external_access,omitempty"`

	// Keys are the deprecated `backend.auth.keys` shared secrets: legacy HS256
	// tokens with subject `external:backstage-plugin`.
	Keys []identity.LegacyKey `json:"keys,omitempty"`

	// KeySetCAFiles are PEM files of CA certificates to trust, in addition to
	// the system's, when key sets (user, plugin and `jwks` external access)
	// are fetched over https: for auth backends behind a private CA.
	// Placeholders ({env.VAR}) are resolved once.
	KeySetCAFiles []string `json:"key_set_ca_files,omitempty"`

	// DangerouslyDisableDefaultAuthPolicy mirrors
	// `backend.auth.dangerouslyDisableDefaultAuthPolicy`: when true, every route
	// behaves like `dangerously-allow-unauthenticated` for access, while header
	// forwarding still follows each route's policy.
	DangerouslyDisableDefaultAuthPolicy bool `json:"dangerously_disable_default_auth_policy,omitempty"`

	// RateLimit holds the settings shared by every endpoint's `rate_limit`:
	// distributed mode.
	RateLimit *RateLimitSettings `json:"rate_limit,omitempty"`

	// Watch reloads the config when the files it was adapted from change.
	// The `backstage` adapter sets it for a config loaded from files.
	Watch *WatchConfig `json:"watch,omitempty"`

	authn authenticator
	// metrics are the collectors in this config's metrics registry; audit
	// is the audit log (AuditLoggerName). Nil until provisioned.
	metrics *proxyMetrics
	audit   *zap.Logger
	watcher *watcher
	release func()
	logger  *zap.Logger
	// rateLimitZones are the rate limits of this config's endpoints, by
	// caddy-ratelimit zone (checkRateLimitZone).
	rateLimitZones map[string]rateLimitZone
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "backstage",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision builds the verifiers. It never blocks on the network: key sets are
// fetched in the background and on demand.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	a.audit = a.logger.Named(auditLoggerSuffix)
	reg := ctx.GetMetricsRegistry()
	if reg != nil {
		m, err := newProxyMetrics(reg)
		if err != nil {
			return fmt.Errorf("backstage metrics: %v", err)
		}
		a.metrics = m
	}
	var observer identity.Observer
	if a.metrics != nil {
		observer = a.metrics
	}
	repl := caddy.NewReplacer()
	authn, release, err := identity.New(identity.Config{
		UserTokens:     a.UserTokens,
		PluginTokens:   a.PluginTokens,
		ExternalAccess: a.ExternalAccess,
		Keys:           a.Keys,
		KeySetCAFiles:  a.KeySetCAFiles,
	}, identity.Options{
		Pool:         usagePool{keyPool},
		Logger:       a.logger,
		KeySetLogger: func() *zap.Logger { return caddy.Log().Named("backstage.jwks") },
		// Placeholders ({env.STATIC_TOKEN}) are resolved once, here, so that
		// secrets need not appear in the JSON.
		Resolve:  func(s string) string { return repl.ReplaceKnown(s, "") },
		Observer: observer,
	})
	if err != nil {
		return fmt.Errorf("backstage identity: %v", err)
	}
	a.authn, a.release = authn, release
	if reg != nil {
		if err := registerKeySets(reg, authn); err != nil {
			release()
			a.release = nil
			return fmt.Errorf("backstage metrics: %v", err)
		}
	}
	return nil
}

// Start implements caddy.App: it starts watching the config files.
func (a *App) Start() error {
	if a.Watch != nil && a.Watch.ConfigFile != "" {
		a.watcher = startWatcher(*a.Watch, a.logger.Named("watch"))
	}
	return nil
}

// Stop implements caddy.App. It does not wait for the watcher: a reload the
// watcher started is what stops this app.
func (a *App) Stop() error {
	if a.watcher != nil {
		a.watcher.stop()
		a.watcher = nil
	}
	return nil
}

// Cleanup releases shared key caches. It is safe after a failed Provision.
func (a *App) Cleanup() error {
	if a.release != nil {
		a.release()
		a.release = nil
	}
	return nil
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
