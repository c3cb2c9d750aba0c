package backstageproxy

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddy-backstage/caddy-backstage-proxy/internal/appconfig"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// routeSummary is what the route table says about one endpoint: the line
// logged at startup, the row of `caddy backstage routes`, and what the
// secure-route lint judges. It is read from the endpoint's Caddy route JSON
// (summarizeRoute), whichever front end wrote it, so that an app-config, a
// Caddyfile and hand-written JSON are judged alike. It holds header names,
// never their values.
type routeSummary struct {
	// Route is the route key.
	Route string `json:"route"`
	// Credentials is the endpoint's credentials policy.
	Credentials string `json:"credentials"`
	// Anonymous is true when callers without a Backstage token reach the
	// upstream: the policy is dangerously-allow-unauthenticated, or the
	// default auth policy is disabled for the whole proxy.
	Anonymous bool `json:"anonymous"`
	// Allow is the endpoint's allow list; null when any verified principal
	// may call it.
	Allow []string `json:"allow"`
	// Methods are the allowed methods; null when every method is.
	Methods []string `json:"methods"`
	// Target is the upstream origin, scheme://host[:port] (no path, query
	// or user info); with `router` entries, the default target's.
	Target string `json:"target"`
	// InjectedHeaders are the names of the headers the endpoint sets
	// upstream (`headers:`, HPM `auth` as Authorization), sorted.
	InjectedHeaders []string `json:"injected_headers"`
	// CredentialHeaders are those of InjectedHeaders that carry a
	// credential (isCredential).
	CredentialHeaders []string `json:"credential_headers"`
	// WebSocket is `ws: true`.
	WebSocket bool `json:"ws"`
	// RateLimit is the per-principal limit, or null.
	RateLimit *rateLimitSummary `json:"rate_limit"`
	// UpstreamAuthorization names the header whose value goes upstream as
	// Authorization, or is "".
	UpstreamAuthorization string `json:"upstream_authorization"`
	// AcknowledgeRisk is the operator's reason for an anonymous route with
	// an injected credential, or "".
	AcknowledgeRisk string `json:"acknowledge_risk"`
	// Flags are the secure-route lint's findings (the lintFlag* names).
	Flags []string `json:"flags"`

	allowedHeaders []string
	insecureTLS    bool
	findings       []lintFinding
}

// rateLimitSummary is a RateLimit with a readable window.
type rateLimitSummary struct {
	Requests int    `json:"requests"`
	Window   string `json:"window"`
}

func (r *rateLimitSummary) String() string {
	if r == nil {
		return ""
	}
	return fmt.Sprintf("%d/%s", r.Requests, r.Window)
}

// The secure-route lint's flags.
const (
	// lintFlagAnonymousCredential: the endpoint injects a credential and
	// lets anonymous callers in, without acknowledging it. The adapter and
	// the Caddyfile refuse it; only hand-written JSON gets this far.
	lintFlagAnonymousCredential = "anonymous-credential"
	// lintFlagAcknowledged: the same, with acknowledge_risk.
	lintFlagAcknowledged = "anonymous-credential-acknowledged"
	// lintFlagAnyMethod: an injected credential for every method, writes
	// included (no allowedMethods).
	lintFlagAnyMethod = "credential-any-method"
	// lintFlagTLSUnverified: the upstream's certificate is not verified
	// (secure: false).
	lintFlagTLSUnverified = "tls-unverified"
	// lintFlagAuthorizationUpstream: Authorization is in allowedHeaders of
	// an anonymous route, so callers' tokens go upstream.
	lintFlagAuthorizationUpstream = "anonymous-authorization-upstream"
	// lintFlagAnonymousWebSocket: anonymous callers can open WebSocket
	// connections that carry the injected credential.
	lintFlagAnonymousWebSocket = "anonymous-websocket-credential"
)

// lintFinding is one finding of the secure-route lint about an endpoint.
type lintFinding struct {
	flag string
	// refuse: a config error for the adapter and the Caddyfile.
	refuse bool
	// key is the app-config endpoint key the finding is about (for the
	// line of the message); "" for the endpoint itself.
	key     string
	message string
}

// lintTerms spell the options a lint message names in one front end.
type lintTerms struct {
	acknowledge, open, disabled, allowedMethods, allowedHeaders, ws, insecure string
}

var (
	appConfigTerms = lintTerms{
		acknowledge:    "caddy.acknowledgeRisk: <reason>",
		open:           "credentials: dangerously-allow-unauthenticated",
		disabled:       "backend.auth.dangerouslyDisableDefaultAuthPolicy",
		allowedMethods: "allowedMethods",
		allowedHeaders: "allowedHeaders",
		ws:             "ws: true",
		insecure:       "secure: false",
	}
	caddyfileTerms = lintTerms{
		acknowledge:    "acknowledge_risk <reason>",
		open:           "credentials dangerously-allow-unauthenticated",
		disabled:       "the backstage global option dangerously_disable_default_auth_policy",
		allowedMethods: "allowed_methods",
		allowedHeaders: "allowed_headers",
		ws:             "ws",
		insecure:       "insecure_skip_verify",
	}
	jsonTerms = lintTerms{
		acknowledge:    `"acknowledge_risk": "<reason>"`,
		open:           `"credentials": "dangerously-allow-unauthenticated"`,
		disabled:       "dangerously_disable_default_auth_policy in the backstage app",
		allowedMethods: "a method matcher",
		allowedHeaders: "allowed_headers",
		ws:             "allow_upgrade",
		insecure:       "insecure_skip_verify",
	}
)

// credentialHeaderNames are header names that carry a credential.
var credentialHeaderNames = []string{"authorization", "proxy-authorization", "cookie", "x-api-key"}

// credentialNameParts make any header name that contains one a credential.
var credentialNameParts = []string{"token", "key", "secret", "password", "auth"}

// isCredentialName reports whether a header's name says it carries a
// credential.
func isCredentialName(name string) bool {
	lower := strings.ToLower(name)
	if slices.Contains(credentialHeaderNames, lower) {
		return true
	}
	for _, part := range credentialNameParts {
		if strings.Contains(lower, part) {
			return true
		}
	}
	return false
}

// hasSecretPlaceholder reports whether a Caddy placeholder string reads the
// environment or a file ({env.*}, {file.*}), not counting escaped braces.
func hasSecretPlaceholder(v string) bool {
	for i := 0; i < len(v); i++ {
		if v[i] == '{' && (i == 0 || v[i-1] != '\\') &&
			(strings.HasPrefix(v[i+1:], "env.") || strings.HasPrefix(v[i+1:], "file.")) {
			return true
		}
	}
	return false
}

// handlerJSON is what the summary reads of a route's handlers, decoded in
// one pass whatever the handler: backstage_proxy's fields (as Handler
// names them), reverse_proxy's upstreams, transport and header ops, and a
// subroute's routes.
type handlerJSON struct {
	Handler string `json:"handler"`

	// backstage_proxy
	Route                 string     `json:"route"`
	Credentials           string     `json:"credentials"`
	AllowedHeaders        []string   `json:"allowed_headers"`
	UpstreamHeaders       []string   `json:"upstream_headers"`
	CredentialHeaders     []string   `json:"credential_headers"`
	AllowUpgrade          bool       `json:"allow_upgrade"`
	Allow                 []string   `json:"allow"`
	UpstreamAuthorization string     `json:"upstream_authorization"`
	RateLimit             *RateLimit `json:"rate_limit"`
	AcknowledgeRisk       string     `json:"acknowledge_risk"`

	// reverse_proxy
	Transport struct {
		TLS *struct {
			InsecureSkipVerify bool `json:"insecure_skip_verify"`
		} `json:"tls"`
		SetHeaders http.Header `json:"set_headers"`
		BasicAuth  string      `json:"basic_auth"`
	} `json:"transport"`
	Upstreams []struct {
		Dial string `json:"dial"`
	} `json:"upstreams"`
	Headers *struct {
		Request *struct {
			Set http.Header `json:"set"`
			Add http.Header `json:"add"`
		} `json:"request"`
	} `json:"headers"`

	// subroute
	Routes []struct {
		Handle []json.RawMessage `json:"handle"`
	} `json:"routes"`
}

// endpointHandlers finds the backstage_proxy handler of a route's handler
// chain and the reverse_proxy after it (nil if none); with HPM `router`
// variants (a subroute), those of the default variant, the last.
func endpointHandlers(raws []json.RawMessage) (policy, proxy *handlerJSON) {
	for _, raw := range raws {
		h := new(handlerJSON)
		if json.Unmarshal(raw, h) != nil {
			continue
		}
		switch h.Handler {
		case "backstage_proxy":
			if policy == nil {
				policy = h
			}
		case "reverse_proxy":
			if policy != nil {
				return policy, h
			}
		case "subroute":
			if policy == nil && len(h.Routes) > 0 {
				return endpointHandlers(h.Routes[len(h.Routes)-1].Handle)
			}
		}
	}
	return policy, nil
}

// summarizeRoute reads the summary of an endpoint's route from its JSON;
// false for a route without a backstage_proxy handler (the barrier). The
// lint (routeSummary.lint) completes it.
func summarizeRoute(r caddyhttp.Route) (routeSummary, bool) {
	policy, rp := endpointHandlers(r.HandlersRaw)
	if policy == nil {
		return routeSummary{}, false
	}
	s := routeSummary{
		Route:                 policy.Route,
		Credentials:           policy.Credentials,
		Allow:                 policy.Allow,
		WebSocket:             policy.AllowUpgrade,
		UpstreamAuthorization: policy.UpstreamAuthorization,
		AcknowledgeRisk:       policy.AcknowledgeRisk,
		InjectedHeaders:       []string{},
		CredentialHeaders:     []string{},
		Flags:                 []string{},
		allowedHeaders:        policy.AllowedHeaders,
	}
	if s.Credentials == "" {
		s.Credentials = CredentialsRequire
	}
	if rl := policy.RateLimit; rl != nil {
		s.RateLimit = &rateLimitSummary{Requests: rl.Requests, Window: time.Duration(rl.Window).String()}
	}
	if len(r.MatcherSetsRaw) > 0 { // the generated routes have one matcher set
		if raw, ok := r.MatcherSetsRaw[0]["method"]; ok {
			_ = json.Unmarshal(raw, &s.Methods)
			if s.Methods == nil {
				s.Methods = []string{}
			}
		}
	}

	// The injected headers, and which of them are credentials.
	credential := map[string]bool{}
	add := func(name string, values []string) {
		name = http.CanonicalHeaderKey(name)
		if !slices.Contains(s.InjectedHeaders, name) {
			s.InjectedHeaders = append(s.InjectedHeaders, name)
		}
		isCred := isCredentialName(name) || slices.ContainsFunc(policy.CredentialHeaders, func(c string) bool { return strings.EqualFold(c, name) })
		for _, v := range values {
			isCred = isCred || hasSecretPlaceholder(v)
		}
		credential[name] = credential[name] || isCred
	}
	if rp != nil {
		for name, values := range rp.Transport.SetHeaders {
			add(name, values)
		}
		if rp.Transport.BasicAuth != "" {
			add("Authorization", nil)
		}
		if rp.Headers != nil && rp.Headers.Request != nil {
			for _, ops := range []http.Header{rp.Headers.Request.Set, rp.Headers.Request.Add} {
				for name, values := range ops {
					switch http.CanonicalHeaderKey(name) {
					case "Host": // generated unless `headers:` sets it
						if !slices.ContainsFunc(policy.UpstreamHeaders, func(h string) bool { return strings.EqualFold(h, "Host") }) {
							continue
						}
					case "X-Forwarded-Port": // generated for xfwd
						if slices.Equal(values, []string{"{http.request.port}"}) {
							continue
						}
					}
					add(name, values)
				}
			}
		}
		if len(rp.Upstreams) > 0 {
			s.Target = upstreamOrigin(rp.Upstreams[0].Dial, rp.Transport.TLS != nil)
		}
		s.insecureTLS = rp.Transport.TLS != nil && rp.Transport.TLS.InsecureSkipVerify
	}
	slices.Sort(s.InjectedHeaders)
	for _, name := range s.InjectedHeaders {
		if credential[name] {
			s.CredentialHeaders = append(s.CredentialHeaders, name)
		}
	}
	return s, true
}

// upstreamOrigin is scheme://host[:port] for a reverse_proxy dial address,
// without the scheme's default port.
func upstreamOrigin(dial string, https bool) string {
	host, port, err := net.SplitHostPort(dial)
	if err != nil {
		return dial // a placeholder, or a unix socket
	}
	scheme, defaultPort := "http", "80"
	if https {
		scheme, defaultPort = "https", "443"
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port == defaultPort {
		return scheme + "://" + host
	}
	return scheme + "://" + host + ":" + port
}

// lint runs the secure-route lint on the summary: it sets Anonymous,
// findings and Flags. anonymousAll is the backstage app's
// dangerously_disable_default_auth_policy; the messages name the options as
// terms spells them.
func (s *routeSummary) lint(anonymousAll bool, terms lintTerms) {
	s.Anonymous = anonymousAll || s.Credentials == CredentialsDangerouslyAllowUnauthenticated
	s.findings = s.findings[:0]
	s.Flags = s.Flags[:0]
	found := func(f lintFinding) {
		s.findings = append(s.findings, f)
		s.Flags = append(s.Flags, f.flag)
	}
	creds := len(s.CredentialHeaders) > 0
	const credKey = "headers" // or `auth` (Basic credentials): lintPosition falls back to it
	what := "header " + strings.Join(s.CredentialHeaders, ", ")
	if len(s.CredentialHeaders) > 1 {
		what = "headers " + strings.Join(s.CredentialHeaders, ", ")
	}
	why, openKey := terms.open, "credentials"
	if anonymousAll && s.Credentials != CredentialsDangerouslyAllowUnauthenticated {
		why, openKey = terms.disabled+" is set", ""
	}
	if creds && s.Anonymous {
		if s.AcknowledgeRisk == "" {
			fix := "require a Backstage token (remove " + terms.open + ")"
			if openKey == "" {
				fix = "turn off " + terms.disabled
			}
			found(lintFinding{flag: lintFlagAnonymousCredential, refuse: true, key: credKey, message: fmt.Sprintf(
				"proxy route %s injects a credential (%s) and lets anonymous callers in (%s), so anyone who reaches the proxy can use it: %s, or, if that is intended, add %s to the endpoint",
				s.Route, what, why, fix, terms.acknowledge)})
		} else {
			found(lintFinding{flag: lintFlagAcknowledged, key: "caddy", message: fmt.Sprintf(
				"proxy route %s injects a credential (%s) that anonymous callers can use (%s); risk acknowledged: %q",
				s.Route, what, why, s.AcknowledgeRisk)})
		}
	}
	if creds && s.Methods == nil {
		found(lintFinding{flag: lintFlagAnyMethod, key: credKey, message: fmt.Sprintf(
			"proxy route %s injects a credential (%s) for every method, writes included: set %s to the methods the route needs",
			s.Route, what, terms.allowedMethods)})
	}
	if s.insecureTLS {
		found(lintFinding{flag: lintFlagTLSUnverified, key: "secure", message: fmt.Sprintf(
			"proxy route %s: TLS certificate verification of %s is off (%s)", s.Route, strings.TrimPrefix(s.Target, "https://"), terms.insecure)})
	}
	if s.Anonymous && slices.ContainsFunc(s.allowedHeaders, func(h string) bool { return strings.EqualFold(h, "Authorization") }) {
		found(lintFinding{flag: lintFlagAuthorizationUpstream, key: "allowedHeaders", message: fmt.Sprintf(
			"proxy route %s lets anonymous callers in (%s) and has Authorization in %s: the caller's token, a Backstage token included, is sent upstream",
			s.Route, why, terms.allowedHeaders)})
	}
	if creds && s.Anonymous && s.WebSocket {
		found(lintFinding{flag: lintFlagAnonymousWebSocket, key: "ws", message: fmt.Sprintf(
			"proxy route %s lets anonymous callers open WebSocket connections (%s) that carry its injected credential (%s)",
			s.Route, terms.ws, what)})
	}
}

// logFields are the summary as structured log fields (names only, never a
// header value).
func (s *routeSummary) logFields() []zap.Field {
	fields := []zap.Field{
		zap.String("route", s.Route),
		zap.String("credentials", s.Credentials),
		zap.Bool("anonymous", s.Anonymous),
		zap.Strings("allow", s.Allow),
		zap.Strings("methods", s.Methods),
		zap.String("target", s.Target),
		zap.Strings("injected_headers", s.InjectedHeaders),
		zap.Strings("credential_headers", s.CredentialHeaders),
		zap.Bool("ws", s.WebSocket),
	}
	if s.RateLimit != nil {
		fields = append(fields, zap.String("rate_limit", s.RateLimit.String()))
	}
	if s.UpstreamAuthorization != "" {
		fields = append(fields, zap.String("upstream_authorization", s.UpstreamAuthorization))
	}
	if s.AcknowledgeRisk != "" {
		fields = append(fields, zap.String("acknowledge_risk", s.AcknowledgeRisk))
	}
	return append(fields, zap.Strings("flags", s.Flags))
}

// summarizeRoutes summarizes the endpoint routes among routes, in order.
func summarizeRoutes(routes caddyhttp.RouteList) []routeSummary {
	var out []routeSummary
	for _, r := range routes {
		if s, ok := summarizeRoute(r); ok {
			out = append(out, s)
		}
	}
	return out
}

// lintAll lints every summary of table.
func lintAll(table []routeSummary, anonymousAll bool, terms lintTerms) {
	for i := range table {
		table[i].lint(anonymousAll, terms)
	}
}

// logRouteTable logs the route table of one mount: an info line per
// endpoint, a warning for each endpoint the adapter would have refused
// (only hand-written JSON has them), then one warning naming every route
// anonymous callers can reach.
func logRouteTable(logger *zap.Logger, mount string, table []routeSummary) {
	var open []string
	for i := range table {
		s := &table[i]
		logger.Info("proxy route", s.logFields()...)
		for _, f := range s.findings {
			if f.refuse {
				logger.Warn(f.message, zap.String("route", s.Route))
			}
		}
		if s.Anonymous {
			open = append(open, s.Route)
		}
	}
	if len(open) > 0 {
		logger.Warn("proxy routes anonymous callers can reach", zap.String("mount_path", mount), zap.Strings("routes", open))
	}
}

// lintEndpoint runs the secure-route lint on an endpoint's route as the
// adapter built it: an error at the line of the endpoint key it is about
// for a route it refuses, a warning for each other finding.
func (ad *adaptation) lintEndpoint(route caddyhttp.Route, n *appconfig.Node) error {
	s, ok := summarizeRoute(route)
	if !ok {
		return nil
	}
	s.lint(ad.anonymousAll, appConfigTerms)
	acknowledged := false
	for _, f := range s.findings {
		at := lintPosition(n, f.key)
		if f.refuse {
			return appconfig.ErrorAt(at, "%s", f.message)
		}
		acknowledged = acknowledged || f.flag == lintFlagAcknowledged
		directive := s.Route
		if f.key != "" {
			directive += "." + f.key
		}
		ad.warn(at, directive, "%s", f.message)
	}
	if s.AcknowledgeRisk != "" && !acknowledged {
		ad.warn(lintPosition(n, "caddy"), s.Route+".caddy", "proxy route %s: caddy.acknowledgeRisk has no effect: the route injects no credential that anonymous callers can use", s.Route)
	}
	return nil
}

// lintPosition is the node of the endpoint key a finding is about: key
// (for `headers`, else `auth`, the other way to inject one), or the
// endpoint.
func lintPosition(n *appconfig.Node, key string) *appconfig.Node {
	keys := []string{key}
	if key == "headers" {
		keys = append(keys, "auth")
	}
	if key == "caddy" {
		if v := n.Get("caddy").Get("acknowledgeRisk"); v != nil {
			return v
		}
	}
	for _, k := range keys {
		if v := n.Get(k); v != nil {
			return v
		}
	}
	return n
}

// logDispatchRoutes lints and logs the route table of a dispatcher
// (logRouteTable), judged with the backstage app's
// dangerously_disable_default_auth_policy.
func logDispatchRoutes(ctx caddy.Context, mount string, table []routeSummary) error {
	if len(table) == 0 {
		return nil
	}
	app, err := ctx.App("backstage")
	if err != nil {
		return fmt.Errorf("loading backstage identity app: %v", err)
	}
	lintAll(table, app.(*App).DangerouslyDisableDefaultAuthPolicy, jsonTerms)
	logRouteTable(ctx.Logger(), mount, table)
	return nil
}

// lintCaddyfileEndpoint runs the secure-route lint on an endpoint of a
// Caddyfile, whose `endpoint` (or `backstage_proxy`) line is at: an error
// for a route it refuses, a logged warning with the file and line for each
// other finding (a directive cannot add to the adapter's warnings).
func lintCaddyfileEndpoint(h httpcaddyfile.Helper, at caddyfile.Token, route caddyhttp.Route) error {
	anonymousAll := false
	if opt, ok := h.Option("backstage").(httpcaddyfile.App); ok {
		var app App
		if json.Unmarshal(opt.Value, &app) == nil {
			anonymousAll = app.DangerouslyDisableDefaultAuthPolicy
		}
	}
	s, ok := summarizeRoute(route)
	if !ok {
		return nil
	}
	s.lint(anonymousAll, caddyfileTerms)
	d := caddyfile.NewDispenser([]caddyfile.Token{at})
	d.Next()
	for _, f := range s.findings {
		if f.refuse {
			return d.Err(f.message)
		}
		caddy.Log().Named("caddyfile").Warn(f.message, zap.String("file", at.File), zap.Int("line", at.Line))
	}
	return nil
}
