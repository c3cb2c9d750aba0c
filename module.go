// Package backstageproxy runs a Backstage `app-config.yaml` `proxy:` section on
// Caddy: the `backstage_proxy` HTTP handler enforces Backstage's credentials
// policies and header allowlists in front of Caddy's standard `reverse_proxy`,
// the `backstage` config adapter turns a Backstage config into Caddy JSON, and
// the `backstage_proxy` Caddyfile directive produces the same routes.
package backstageproxy

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/policy"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
	caddy.RegisterModule(Barrier{})
}

// Credentials policies, as Backstage spells them.
const (
	CredentialsRequire                         = "require"
	CredentialsForward                         = "forward"
	CredentialsDangerouslyAllowUnauthenticated = "dangerously-allow-unauthenticated"
)

// DefaultMountPath is where Backstage mounts its proxy plugin.
const DefaultMountPath = "/api/proxy"

// Handler is the policy half of one Backstage proxy endpoint. Placed before
// Caddy's `reverse_proxy`, it:
//
//   - checks the caller's Backstage credentials (401/403) according to the
//     credentials policy;
//   - refuses path traversal (400 `Bad Request`);
//   - passes on only the allowed request headers;
//   - rewrites the upstream path exactly as Backstage does (default: strip the
//     mount path and route, prepend the target's path);
//   - passes back only the allowed response headers;
//   - turns upstream failures into Backstage's errors (502/503/504) that
//     never name an internal address.
//
// Refusals and upstream failures are returned as handler errors
// (`caddyhttp.Error`) with the status and Backstage's message, so Caddy's
// error handling sees them (`handle_errors`, `{http.error.*}`, metrics);
// `backstage_error` (ErrorHandler), in the server's error routes, renders
// Backstage's bodies. Without it, Caddy answers with the status alone.
//
// It never reads the request body. Like Caddy's `rewrite`, it changes the
// request in place for the handlers after it, so their placeholders read the
// upstream request (`{http.request.uri}` is the upstream URI, filtered-out
// headers are gone; `{http.request.orig_uri}` is the client's URI); unlike
// `rewrite`, it puts the request back when they return, so the access log and
// error routes show what the client sent.
//
// The credentials barrier in front of all of `/api/proxy` is a module of
// its own, `backstage_barrier` (Barrier).
//
// This handler sets these placeholders (the first three after a credential was
// verified, the route on every request, the error when the handler itself
// refuses the request):
//
// Placeholder | Description
// ------------|-------------
// `{http.auth.user.id}` | The verified subject (user entity ref, `plugin:<id>`, external subject); shown as `user_id` in access logs
// `{http.backstage_proxy.principal.type}` | `user` or `service`
// `{http.backstage_proxy.principal.method}` | How it was verified: `user`, `plugin`, `static`, `legacy`, `jwks`
// `{http.backstage_proxy.route}` | The route key of this endpoint
// `{http.backstage_proxy.error}` | Why this handler refused the request: the message of its 401/403/429 JSON error (never the token), or `path traversal` (400); unset when the request reached the next handler
// `{http.backstage_proxy.rate_limit_key}` | On an endpoint with `rate_limit` and no credentials check: the client address its budget is counted under (IPv6: the /64)
//
// The principal and route placeholders come from value providers, which answer
// after values set by other handlers under the same names.
type Handler struct {
	// Credentials is the Backstage credentials policy: `require` (default: a
	// valid Backstage token is needed and not forwarded), `forward` (needed and
	// forwarded upstream verbatim) or `dangerously-allow-unauthenticated` (no
	// token needed).
	Credentials string `json:"credentials,omitempty"`

	// Route is the route key, e.g. `/catalog`. It is informational (logs and the
	// `{http.backstage_proxy.route}` placeholder).
	Route string `json:"route,omitempty"`

	// MountPath is the path under which the proxy is mounted; error bodies give
	// the request URL relative to it, as Backstage does. Default: `/api/proxy`.
	MountPath string `json:"mount_path,omitempty"`

	// AllowedHeaders are extra header names allowed in both directions
	// (Backstage `allowedHeaders`), matched case-insensitively. `*` is a literal
	// name, not a wildcard, as in Backstage.
	AllowedHeaders []string `json:"allowed_headers,omitempty"`

	// UpstreamHeaders are the names of the headers this endpoint sets upstream
	// (the keys of Backstage `headers:`); they are allowed in the request
	// direction. Their values are set by `reverse_proxy`, overriding the client's.
	UpstreamHeaders []string `json:"upstream_headers,omitempty"`

	// CredentialHeaders are the names, among UpstreamHeaders, of headers
	// whose values are credentials although the JSON does not show it: the
	// content of a `$file`, or an environment value that could not stay an
	// `{env.*}` placeholder. The secure-route lint and the route table
	// treat them as injected credentials, like headers whose values read
	// `{env.*}` or `{file.*}` placeholders and headers whose names say they
	// carry one (Authorization, Cookie, X-Api-Key, *token*, *key*, …).
	CredentialHeaders []string `json:"credential_headers,omitempty"`

	// AllowUpgrade lets WebSocket upgrades through this endpoint (Backstage
	// `ws: true`): `Upgrade`, `Connection` and `Sec-WebSocket-*` pass in both
	// directions, after the credentials check. Without it, upgrade requests are
	// proxied as plain requests without their upgrade headers.
	AllowUpgrade bool `json:"allow_upgrade,omitempty"`

	// Rewrite computes the upstream path and query. Without it the request URI
	// is passed on unchanged.
	Rewrite *UpstreamRewrite `json:"rewrite,omitempty"`

	// Allow lists who may call this endpoint (app-config `caddy.allow`). A
	// request passes when its verified principal matches any entry; without
	// it, any verified principal passes, as in Backstage. Entries: `user`
	// (any user), `service` (any plugin or external caller), a user entity
	// ref matched against the token's `sub`, an ownership ref such as
	// `group:default/sre` matched against a user token's `ent` claim,
	// `plugin:<id>` (for an on-behalf-of token: the acting plugin), or an
	// external subject as Backstage names it (`external:<prefix>:<sub>` for
	// `jwks`, a static or legacy entry's `subject`). A trailing `*` matches
	// any suffix; entity refs compare case-insensitively, and one without a
	// namespace is in `default` (`group:sre` is `group:default/sre`); any
	// other word is a static or legacy entry's subject, compared exactly.
	// Refused principals get 403 (NotAllowedError) and nothing goes
	// upstream. Not allowed on `dangerously-allow-unauthenticated`
	// endpoints, nor with the app's `dangerously_disable_default_auth_policy`:
	// there is no principal to check.
	Allow []string `json:"allow,omitempty"`

	// UpstreamAuthorization names a request header that carries the caller's
	// own upstream credential (app-config `caddy.upstreamAuthorization`).
	// After the Backstage check, its value is sent upstream as
	// `Authorization`; the named header itself and the Backstage token are
	// never sent upstream. Without the header (or with several values of
	// it), no Authorization is sent. It also works on
	// `dangerously-allow-unauthenticated` endpoints. It cannot be combined
	// with `forward` credentials, an injected `Authorization` header, or
	// `Authorization` or the named header in AllowedHeaders.
	UpstreamAuthorization string `json:"upstream_authorization,omitempty"`

	// RateLimit limits how often each principal may call this endpoint
	// (app-config `caddy.rateLimit`), counted after authentication and keyed
	// by the verified subject (anonymous callers: the client IP). Over the
	// limit: 429 with `Retry-After` and Backstage's JSON error, and nothing
	// is sent upstream.
	RateLimit *RateLimit `json:"rate_limit,omitempty"`

	// AcknowledgeRisk is the operator's reason for letting anonymous callers
	// use a credential this endpoint injects (app-config
	// `caddy.acknowledgeRisk`). Without it, such an endpoint is refused when
	// the configuration is adapted; with it, the reason is quoted in a
	// warning and in the route table logged at startup.
	AcknowledgeRisk string `json:"acknowledge_risk,omitempty"`

	// barrier makes the handler only check credentials (honouring
	// unauthenticatedPaths) and the path, then call the next handler with the
	// request unchanged: the Barrier module.
	barrier bool
	// unauthenticatedPaths, relative to MountPath, are path prefixes for
	// which the barrier checks no credentials.
	unauthenticatedPaths []string

	identity *App
	// allow is the compiled Allow; nil: any verified principal.
	allow *policy.Allow
	// upstreamAuthorization is UpstreamAuthorization, canonical; "": none.
	upstreamAuthorization string
	// routePlaceholders provides {http.backstage_proxy.route}.
	routePlaceholders caddy.ReplacerFunc
	reqAllow          map[string]struct{}
	// reqAllowNames and respAllowNames are the allowlists' keys, for
	// filtering by lookup.
	reqAllowNames  []string
	respAllowNames []string
	respAllow      map[string]struct{}
	logger         *zap.Logger
	openPaths      []string
	observability
	// rateLimiter counts requests per principal (RateLimit); nil without.
	rateLimiter *rateLimiter
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.backstage_proxy",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets up the handler: it precomputes the header allowlists and the
// rewrite, and attaches the shared `backstage` identity app.
func (h *Handler) Provision(ctx caddy.Context) error {
	app, err := ctx.App("backstage")
	if err != nil {
		return fmt.Errorf("loading backstage identity app: %v", err)
	}
	if err := h.setup(app.(*App), ctx.Logger()); err != nil {
		return err
	}
	return h.provisionRateLimit(ctx)
}

// setup derives the handler's request-time state from its configuration.
func (h *Handler) setup(identity *App, logger *zap.Logger) error {
	h.logger = logger
	h.identity = identity
	h.routePlaceholders = routePlaceholders(h.Route)
	if h.Credentials == "" {
		h.Credentials = CredentialsRequire
	}
	if h.MountPath == "" {
		h.MountPath = DefaultMountPath
	}
	h.MountPath = strings.TrimRight(h.MountPath, "/")
	h.setAllowlists()
	h.setupObservability(identity)
	h.openPaths = h.openPaths[:0]
	for _, p := range h.unauthenticatedPaths {
		h.openPaths = append(h.openPaths, strings.ToLower(normalizeRouteKey(p)))
	}
	if h.Rewrite != nil {
		if err := h.Rewrite.provision(); err != nil {
			return fmt.Errorf("route %s: %v", h.Route, err)
		}
	}
	return h.provisionAccess()
}

var headerNameRE = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

// Validate checks the configuration.
func (h *Handler) Validate() error {
	switch h.Credentials {
	case CredentialsRequire, CredentialsForward, CredentialsDangerouslyAllowUnauthenticated:
	default:
		return fmt.Errorf("unknown credentials policy '%s' for proxy route '%s'; expected one of '%s', '%s', '%s'",
			h.Credentials, h.Route, CredentialsRequire, CredentialsForward, CredentialsDangerouslyAllowUnauthenticated)
	}
	if !strings.HasPrefix(h.MountPath, "/") {
		return fmt.Errorf("mount_path must start with '/': %q", h.MountPath)
	}
	for _, list := range [][]string{h.AllowedHeaders, h.UpstreamHeaders} {
		for _, name := range list {
			if !headerNameRE.MatchString(name) {
				return fmt.Errorf("route %s: invalid header name %q", h.Route, name)
			}
		}
	}
	return h.validateAccess()
}

// RateLimit is a per-principal request budget of one endpoint, counted by
// caddy-ratelimit in a zone named `backstage_proxy <mount_path><route>`
// (so `route` is required), keyed by `{http.auth.user.id}`, or on
// endpoints that check no credentials by
// `{http.backstage_proxy.rate_limit_key}`. The `backstage` app's
// `rate_limit` makes it distributed.
type RateLimit struct {
	// Requests is the number of requests allowed per Window: 1 to 10000.
	Requests int `json:"requests,omitempty"`
	// Window is the sliding window the requests are counted in.
	Window caddy.Duration `json:"window,omitempty"`
}

// Barrier is the credentials barrier that Backstage puts in front of its
// whole proxy mount path. Placed before a 404 response after all endpoints
// (the config adapter and the Caddyfile's `backstage_proxy` block put it
// there), it makes unknown paths under the mount path answer 401 with
// Backstage's JSON error to anonymous callers, and 404 to authenticated ones.
// It checks the credentials (except under UnauthenticatedPaths) and refuses
// path traversal, then calls the next handler with the request unchanged.
// It sets the same placeholders as `backstage_proxy`, and its refusals are
// handler errors, rendered by `backstage_error`.
type Barrier struct {
	// MountPath is where the proxy is mounted. Default: `/api/proxy`.
	MountPath string `json:"mount_path,omitempty"`

	// UnauthenticatedPaths, relative to MountPath, are the route keys of the
	// endpoints whose policy is `dangerously-allow-unauthenticated`: path
	// prefixes (on a segment boundary, case-insensitive, as received) for
	// which no credentials are checked.
	UnauthenticatedPaths []string `json:"unauthenticated_paths,omitempty"`

	policy Handler
}

// CaddyModule returns the Caddy module information.
func (Barrier) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.backstage_barrier",
		New: func() caddy.Module { return new(Barrier) },
	}
}

// Provision sets up the barrier's credentials check.
func (b *Barrier) Provision(ctx caddy.Context) error {
	b.policy = Handler{MountPath: b.MountPath, barrier: true, unauthenticatedPaths: b.UnauthenticatedPaths}
	return b.policy.Provision(ctx)
}

// Validate checks the configuration.
func (b *Barrier) Validate() error { return b.policy.Validate() }

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (b *Barrier) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	return b.policy.ServeHTTP(w, r, next)
}

// normalizeRouteKey gives a route key a leading slash and no trailing slash
// (divergence D6: Backstage silently ignores keys without a leading slash and
// demands credentials on most paths under a trailing-slash key).
func normalizeRouteKey(key string) string {
	if !strings.HasPrefix(key, "/") {
		key = "/" + key
	}
	for len(key) > 1 && strings.HasSuffix(key, "/") {
		key = key[:len(key)-1]
	}
	return key
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddy.Provisioner           = (*Barrier)(nil)
	_ caddy.Validator             = (*Barrier)(nil)
	_ caddyhttp.MiddlewareHandler = (*Barrier)(nil)
)
